#!/usr/bin/env python
"""Train and evaluate CaGNet (and the project's other zero-shot models) with detectron2.

  python tools/train_net.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml
  python tools/train_net.py --config-file C --eval-only MODEL.WEIGHTS output/model_final.pth
  python tools/train_net.py --config-file C --resume             # continue from the last checkpoint
  python tools/train_net.py --config-file C --num-gpus 2         # two workers (GPUs, or CPU/gloo)

Exit status: 0 done; 1 an error (printed as "error: ..."); 75 preempted by a signal of
SOLVER.PREEMPTION.SIGNALS after saving a checkpoint: run the printed command (--resume) to continue
(docs/CLUSTER.md).

With TEST.AUG.ENABLED True, --eval-only (and the end of training) also evaluates with multi-scale /
flip test-time augmentation (TEST.AUG.MIN_SIZES, MAX_SIZE, FLIP), results under keys ending "_TTA"
and in OUTPUT_DIR/inference_TTA; TEST.SAVE_PREDICTIONS True writes each image's prediction there
too (see tools/rescore_predictions.py).
"""
import logging
import sys
import time
from datetime import timedelta

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser, default_setup, hooks
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from cagnet import add_cagnet_config
from cagnet.config import renamed_config_file
from cagnet.config_validation import ConfigValueError, validate_config
from cagnet.data import apply_dataset_options
from cagnet.data.file_checks import ImageReadError, InvalidLabelError
from cagnet.engine import trainer_class
from cagnet.engine.cpu_allocator import describe_allocator, tune_cpu_allocator
from cagnet.engine.launch import WorkerFailedError, launch
from cagnet.engine.loss_guard import NonFiniteLossError
from cagnet.engine.output_dir import OutputDirInUseError, check_output_dir
from cagnet.engine.preemption import PREEMPTED_EXIT_STATUS, Preempted
from cagnet.evaluation import format_zero_shot_table
from cagnet.modeling import CheckpointMismatchError, DamagedCheckpointError, build_model_from_checkpoint
from cagnet.utils.atomic_file import FileSaveError

# Errors about the user's input or the run's state: printed as one line, without a traceback.
USER_ERRORS = (ConfigValueError, OutputDirInUseError, DamagedCheckpointError, CheckpointMismatchError,
               NonFiniteLossError, ImageReadError, InvalidLabelError, FileSaveError, WorkerFailedError)


def load_cfg(args):
    cfg = get_cfg()
    add_cagnet_config(cfg)
    # A config file's name before this release: its new name (warned), also for default_setup.
    args.config_file = renamed_config_file(args.config_file)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("cagnet").warning("CUDA is not available: running on the CPU")
        cfg.MODEL.DEVICE = "cpu"
    apply_dataset_options(cfg)
    validate_config(cfg)
    cfg.freeze()
    return cfg


def setup(args):
    cfg = load_cfg(args)
    if not args.eval_only:
        check_output_dir(cfg, args.resume)  # before default_setup writes config.yaml there
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="cagnet")
    return cfg


def check_classes_match(model, dataset_names):
    """A checkpoint with another class list (e.g. from tools/add_classes.py) cannot be scored with
    a dataset's confusion matrix by index: fail clearly instead of loading mismatched shapes."""
    for name in dataset_names:
        expected = list(MetadataCatalog.get(name).stuff_classes)
        if model.class_names is not None and list(model.class_names) != expected:
            raise ValueError(
                f"The checkpoint's {len(model.class_names)} classes differ from the "
                f"{len(expected)} classes of {name!r}; evaluate it on a dataset with the same class list"
            )


def print_tables(results):
    for dataset, res in results.items():
        for key, metrics in res.items():
            if key.startswith("sem_seg") and "hIoU" in metrics:
                tta = " with test-time augmentation" if key.endswith("_TTA") or dataset.endswith("_TTA") else ""
                name = dataset[: -len("_TTA")] if dataset.endswith("_TTA") else dataset
                print(f"\nZero-shot results on {name}{tta}:\n{format_zero_shot_table(metrics)}\n", flush=True)


def per_dataset(cfg, results):
    """{dataset: {"sem_seg": ..., "sem_seg_TTA": ...}} whether there is one test set or several."""
    if len(cfg.DATASETS.TEST) > 1:
        return results
    return {cfg.DATASETS.TEST[0]: results}


def main(args):
    start = time.perf_counter()
    tuned = tune_cpu_allocator()  # in every worker launch() starts, before the big allocations
    cfg = setup(args)
    if tuned:
        logging.getLogger("cagnet").info(describe_allocator(tuned))
    if args.eval_only:
        weights = cfg.MODEL.WEIGHTS
        if args.resume:
            weights = DetectionCheckpointer(None, save_dir=cfg.OUTPUT_DIR).get_checkpoint_file() or weights
        model = build_model_from_checkpoint(cfg, weights)
        check_classes_match(model, cfg.DATASETS.TEST)
        trainer = trainer_class(cfg)
        results = trainer.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            results.update(trainer.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, results)
            print_tables(per_dataset(cfg, results))
        return results

    trainer = trainer_class(cfg)(cfg)  # chosen by MODEL.META_ARCHITECTURE
    trainer.resume_or_load(resume=args.resume)
    if cfg.TEST.AUG.ENABLED:
        def test_with_tta():
            res = trainer.test_with_TTA(cfg, trainer.model)
            trainer._last_eval_results = {**(getattr(trainer, "_last_eval_results", None) or {}), **res}
            return res

        trainer.register_hooks([hooks.EvalHook(0, test_with_tta)])
    trainer.train()
    results = getattr(trainer, "_last_eval_results", None)
    if comm.is_main_process() and results:
        print_tables(per_dataset(cfg, results))
    if comm.is_main_process():
        print(f"Wall time (setup, training, evaluation): {time.perf_counter() - start:.0f} s", flush=True)
    return results


def cli(argv=None):
    args = default_argument_parser().parse_args(argv)
    logging.getLogger(__name__).info("Command line arguments: %s", args)
    try:
        # Config and OUTPUT_DIR are checked once here, before any worker starts.
        cfg = load_cfg(args)
        if not args.eval_only:
            check_output_dir(cfg, args.resume)
        return launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
            timeout=timedelta(minutes=cfg.SOLVER.COLLECTIVE_TIMEOUT_MINUTES),
            signals=cfg.SOLVER.PREEMPTION.SIGNALS,
        )
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Preempted as e:
        print(str(e), file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT_STATUS)


if __name__ == "__main__":
    cli()
