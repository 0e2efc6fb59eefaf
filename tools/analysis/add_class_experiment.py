#!/usr/bin/env python
"""Open-vocabulary check: train without a class, add it by name afterwards, compare per-class IoU.

  python tools/analysis/add_class_experiment.py \
      --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \
      --holdout "lemon" --output-dir output/add_class_experiment_lemon

The default held-out class of the built-in data, "lemon", is one of its unseen classes: left out
of the vocabulary it is a class the model never hears of, while the seen classes stay those of the
zero-shot benchmark. Holding out a seen class (e.g. "cow") instead also takes a class from training.

1. Registers a copy of the config's training and test datasets whose vocabulary lacks the
   held-out class (its pixels are ``ignore`` through the copy's label table, in training and
   evaluation; its embedding row is removed, so C has no output for it).
2. Trains the config's model on that copy (OUTPUT_DIR/train; --reuse-training keeps an existing
   model_final.pth, and the training config saved beside it).
3. Evaluates it on the config's full test set, matching classes by name: the held-out class
   cannot be predicted, its IoU is 0.
4. Adds the class by name (tools/add_classes.py logic: its word embedding from the model's
   embedding source, a new row of C learned from generated features for --add-iters iterations,
   the old rows kept) and writes OUTPUT_DIR/model_added.pth.
5. Evaluates again and prints per-class IoU before / after (also OUTPUT_DIR/add_class_experiment.json).

--figures N draws the first N test images with both models (OUTPUT_DIR/figures/{before,after}).
--real-row-check N also fits the added row on *real* features of the held-out class in the first N
training images (which adding by name cannot use) and reports its IoU: the upper bound for the
row learned from generated features, to tell a backbone limit from a generator limit.
KEY VALUE pairs at the end override the config (e.g. SOLVER.MAX_ITER 500).
"""
import argparse
import json
import math
import os
import sys
import time

import cv2
import numpy as np
import torch
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.env import seed_all_rng

from cagnet.engine import CaGNetTrainer
from cagnet.vocabulary.add_classes import add_classes_from_config, fit_rows_on_real_features
from cagnet.vocabulary.class_names import LogitsByClassName, evaluate_by_class_name, register_without_classes, slug
from cagnet.modeling import build_model_from_checkpoint
from cagnet.utils.cli import load_config, setup_logging
from cagnet.analysis.generator_probe import collect_pixel_features
from cagnet.visualization.drawing import render_segmentation

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tools/analysis/../..
DEFAULT_CONFIG = os.path.join(REPO, "configs", "synthetic_scenes", "cagnet_tiny_synthetic_scenes.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--holdout", default="lemon", help="the class left out of training and added afterwards")
    p.add_argument("--output-dir", default=None,
                   help="default: output/add_class_experiment_<held-out class, spaces as underscores>")
    p.add_argument("--add-iters", type=int, default=1000, help="finetuning iterations of add_classes")
    p.add_argument("--add-pixels", type=int, default=None,
                   help="generated pixels per add_classes iteration (default: the model's finetuning step's)")
    p.add_argument("--add-lr", type=float, default=1e-3, help="finetuning learning rate of add_classes (Adam)")
    p.add_argument("--retrain-all-classes", action="store_true",
                   help="add_classes trains all rows of C, not only the new one (see tools/add_classes.py)")
    p.add_argument("--add-init", choices=("mean", "imprint"), default="mean", help="initial row of the added class")
    p.add_argument("--train-generator", action="store_true", help="with --retrain-all-classes, G learns too")
    p.add_argument("--reuse-training", action="store_true", help="keep OUTPUT_DIR/train/model_final.pth if it exists")
    p.add_argument("--figures", type=int, default=0, help="draw this many test images with both models")
    p.add_argument("--real-row-check", type=int, default=0, metavar="N",
                   help="also fit the added row on real features of N training images (an upper bound)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def _iou(res, name):
    v = res.get(f"IoU-{name}")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def comparison(before, after, names, seen_ids, holdout):
    """Rows (class, group, IoU before, IoU after, change) and a summary."""
    rows = []
    for i, name in enumerate(names):
        group = "held out" if name == holdout else ("seen" if i in seen_ids else "unseen")
        b, a = _iou(before, name), _iou(after, name)
        rows.append({"class": name, "group": group, "iou_before": b, "iou_after": a,
                     "change": None if a is None or b is None else a - b})
    others = [r for r in rows if r["group"] != "held out" and r["change"] is not None]

    def mean(key, group=None):
        vals = [r[key] for r in others if group is None or r["group"] == group]
        return float(np.mean(vals)) if vals else None

    held = next(r for r in rows if r["group"] == "held out")
    summary = {
        "holdout": holdout,
        "holdout_iou_before": held["iou_before"],
        "holdout_iou_after": held["iou_after"],
        "other_classes_miou_before": mean("iou_before"),
        "other_classes_miou_after": mean("iou_after"),
        "other_seen_miou_before": mean("iou_before", "seen"),
        "other_seen_miou_after": mean("iou_after", "seen"),
        "other_unseen_miou_before": mean("iou_before", "unseen"),
        "other_unseen_miou_after": mean("iou_after", "unseen"),
        "largest_drop": min((r["change"] for r in others), default=None),
        "largest_drop_class": min(others, key=lambda r: r["change"])["class"] if others else None,
    }
    return rows, summary


def format_table(rows, summary):
    def f(v):
        return "-" if v is None else f"{v:.2f}"

    table = tabulate(
        [[r["class"], r["group"], f(r["iou_before"]), f(r["iou_after"]), f(r["change"])] for r in rows],
        headers=["class", "group", "IoU before", "IoU after", "change"], tablefmt="pipe", disable_numparse=True,
    )
    lines = [
        table,
        "",
        f"held-out class {summary['holdout']!r}: IoU {f(summary['holdout_iou_before'])} -> {f(summary['holdout_iou_after'])}",
        f"other classes, mean IoU: {f(summary['other_classes_miou_before'])} -> {f(summary['other_classes_miou_after'])} "
        f"(seen {f(summary['other_seen_miou_before'])} -> {f(summary['other_seen_miou_after'])}, "
        f"unseen {f(summary['other_unseen_miou_before'])} -> {f(summary['other_unseen_miou_after'])}); "
        f"largest drop {f(summary['largest_drop'])} ({summary['largest_drop_class']})",
    ]
    return "\n".join(lines)


@torch.no_grad()
def draw_figures(cfg, models, dataset, out_dir, count):
    """Overlays of the first ``count`` images of ``dataset`` by each model ({tag: model})."""
    records = DatasetCatalog.get(dataset)[:count]
    for tag, model in models.items():
        model.eval()
        os.makedirs(os.path.join(out_dir, tag), exist_ok=True)
        for rec in records:
            image = utils.read_image(rec["file_name"], format=cfg.INPUT.FORMAT)
            tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))
            pred = model([{"image": tensor}])[0]["sem_seg"].argmax(0).cpu().numpy()
            rgb = utils.convert_image_to_rgb(image, cfg.INPUT.FORMAT).astype(np.uint8)
            canvas, legend = render_segmentation(rgb, pred, model.class_names, model.unseen_ids.tolist(),
                                                 scale=max(1.0, 480.0 / max(image.shape[:2])))
            stem = os.path.splitext(os.path.basename(rec["file_name"]))[0]
            cv2.imwrite(os.path.join(out_dir, tag, stem + ".png"), canvas[:, :, ::-1])
            with open(os.path.join(out_dir, tag, stem + ".json"), "w") as f:
                json.dump({"input": rec["file_name"], "legend": legend}, f, indent=1)


def count_predicted(cfg, model, dataset, class_name):
    """Pixels of ``dataset`` predicted as ``class_name`` (after mapping to the dataset's classes)."""
    names = list(MetadataCatalog.get(dataset).stuff_classes)
    wrapped = LogitsByClassName(model, names).eval()
    target, total = names.index(class_name), 0
    with torch.no_grad():
        for batch in CaGNetTrainer.build_test_loader(cfg, dataset):
            for out in wrapped(batch):
                total += int((out["sem_seg"].argmax(0) == target).sum())
    return total


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_generator and not args.retrain_all_classes:
        raise SystemExit("--train-generator needs --retrain-all-classes (G only matters to C's old rows)")
    logger = setup_logging("cagnet.add_class_experiment")
    start = time.perf_counter()
    cfg = load_config(args.config_file, args.opts, freeze=False)
    out = os.path.abspath(args.output_dir or os.path.join("output", f"add_class_experiment_{slug(args.holdout)}"))
    base_train, base_test = cfg.DATASETS.TRAIN[0], cfg.DATASETS.TEST[0]
    base_names = list(MetadataCatalog.get(base_test).stuff_classes)
    if args.holdout not in base_names:
        raise SystemExit(f"--holdout {args.holdout!r} is not a class of {base_test}: {base_names}")
    tag = f"minus_{slug(args.holdout)}"
    emb_dir = os.path.join(out, "embeddings")
    train_name, test_name = f"{base_train}_{tag}", f"{base_test}_{tag}"
    register_without_classes(base_train, train_name, [args.holdout], emb_dir)
    register_without_classes(base_test, test_name, [args.holdout], emb_dir)

    # ---- 1. train without the class (no evaluation inside: it is done below, by name)
    train_dir = os.path.join(out, "train")
    weights = os.path.join(train_dir, "model_final.pth")
    saved_cfg = os.path.join(train_dir, "config.yaml")
    if args.reuse_training and os.path.isfile(weights) and os.path.isfile(saved_cfg):
        # The model as it was trained, even if the config file has changed since.
        logger.info(f"Reusing {weights} (trained with {saved_cfg})")
        cfg = load_config(saved_cfg, freeze=False)
        if tuple(cfg.DATASETS.TRAIN) != (train_name,):
            # Another held-out class: its model has as many outputs, so it would load silently.
            raise SystemExit(f"--reuse-training: {saved_cfg} trained on {tuple(cfg.DATASETS.TRAIN)}, not on "
                             f"{(train_name,)}; use another --output-dir for --holdout {args.holdout!r}")
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (base_train,), (base_test,)
    train_cfg = cfg.clone()
    train_cfg.DATASETS.TRAIN = (train_name,)
    train_cfg.DATASETS.TEST = ()
    train_cfg.OUTPUT_DIR = train_dir
    train_cfg.OVERWRITE_OUTPUT_DIR = True  # without --reuse-training this tool trains again, by design
    train_cfg.freeze()
    # As tools/train_net.py (default_setup) does: the same SEED gives the same model.
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED)
    if not (args.reuse_training and os.path.isfile(weights)):
        os.makedirs(train_dir, exist_ok=True)
        with open(saved_cfg, "w") as f:
            f.write(train_cfg.dump())
        trainer = CaGNetTrainer(train_cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        del trainer
    train_time = time.perf_counter() - start

    # ---- 2. evaluate on the full test set, by class name
    eval_cfg = cfg.clone()
    eval_cfg.freeze()
    before_model = build_model_from_checkpoint(train_cfg, weights)
    assert args.holdout not in before_model.class_names
    before = evaluate_by_class_name(eval_cfg, before_model, base_test, os.path.join(out, "eval_before"))["sem_seg"]

    # ---- 3. add the class by name, 4. evaluate again
    added = os.path.join(out, "model_added.pth")
    after_model, summary_add = add_classes_from_config(
        train_cfg, weights, [args.holdout], added, iters=args.add_iters, lr=args.add_lr,
        train_generator=args.train_generator, pixels=args.add_pixels, init=args.add_init,
        keep_old_classes=not args.retrain_all_classes,
    )
    after_model.eval()
    after = evaluate_by_class_name(eval_cfg, after_model, base_test, os.path.join(out, "eval_after"))["sem_seg"]

    meta = MetadataCatalog.get(base_test)
    rows, summary = comparison(before, after, base_names, set(meta.seen_class_ids), args.holdout)
    summary["holdout_pixels_predicted_after"] = count_predicted(eval_cfg, after_model, base_test, args.holdout)
    summary.update(
        {f"{k}_{when}": res[k] for when, res in (("before", before), ("after", after))
         for k in ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU")}
    )
    if args.real_row_check > 0:
        real_model = build_model_from_checkpoint(train_cfg, added).eval()
        real, _, labels = collect_pixel_features(eval_cfg, real_model, base_train, args.real_row_check)
        fit_rows_on_real_features(real_model, [real_model.class_names.index(args.holdout)], real, labels)
        checked = evaluate_by_class_name(eval_cfg, real_model, base_test, os.path.join(out, "eval_real_row"))["sem_seg"]
        summary["holdout_iou_real_row"] = _iou(checked, args.holdout)
        summary["other_classes_miou_real_row"] = float(np.mean(
            [v for v in (_iou(checked, n) for n in base_names if n != args.holdout) if v is not None]))
    summary["train_seconds"] = train_time
    summary["total_seconds"] = time.perf_counter() - start
    result = {"config_file": args.config_file, "opts": list(args.opts), "add_iters": args.add_iters,
              "add_classes": summary_add, "rows": rows, "summary": summary,
              "weights_before": weights, "weights_after": added}
    with open(os.path.join(out, "add_class_experiment.json"), "w") as f:
        json.dump(result, f, indent=1)
    if args.figures > 0:
        draw_figures(eval_cfg, {"before": before_model, "after": after_model}, base_test,
                     os.path.join(out, "figures"), args.figures)
    print(f"\nPer-class IoU on {base_test} (percent), before and after adding {args.holdout!r}:\n", flush=True)
    print(format_table(rows, summary), flush=True)
    if "holdout_iou_real_row" in summary:
        print(f"real-row check: the added row fitted on real features of {args.real_row_check} training images "
              f"instead: IoU {summary['holdout_iou_real_row']:.2f}, other classes' mean IoU "
              f"{summary['other_classes_miou_real_row']:.2f}", flush=True)
    print(f"\nWall time: {summary['total_seconds']:.0f} s (training {train_time:.0f} s). Results: "
          f"{os.path.join(out, 'add_class_experiment.json')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
