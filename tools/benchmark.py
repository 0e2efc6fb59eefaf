#!/usr/bin/env python
"""Seconds per training iteration, per finetuning iteration and per inference image.

  python tools/benchmark.py --config-file configs/pascal_voc/cagnet_R101_os8_bs8_crop368_46k_voc20.yaml \
      --batch-size 2 --crop 368

A benchmark, not a test: it prints numbers. Batches are random images and labels of the crop
size (no dataset needed; the config's training dataset only provides the class list). Each
figure is the median over --iters timed iterations after --warmup untimed ones, on the CPU
threads torch uses (--threads), or on the GPU with its peak memory. The learning rates are set to
0 (the optimisers do the same arithmetic): the model here is randomly initialised and trained on
random labels, and from random initialisation even the stable paper configs diverge (inf at
iteration 49 in ``dev/check_paper_config.py --random-init``), while the timed iterations must all
compute on finite numbers. ``dev/check_paper_config.py`` trains them from a pretrained start.
"""
import argparse
import resource
import statistics
import time

import torch

from detectron2.utils.events import EventStorage

from cagnet.data.random_batch import random_training_batch
from cagnet.engine import AlternatingStepTrainer, CaGNetTrainer, FINETUNING, TRAINING
from cagnet.engine.cpu_allocator import describe_allocator, tune_cpu_allocator
from cagnet.utils.cli import load_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--batch-size", type=int, default=2, help="images per training iteration")
    p.add_argument("--crop", type=int, default=None, help="square training crop (default: the config's)")
    p.add_argument("--test-size", type=int, default=None, help="square inference image (default: crop)")
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn, iters, warmup, device=torch.device("cpu")):
    times = []
    for i in range(warmup + iters):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _peak_memory(device) -> str:
    """Peak GPU memory since the last reset (CUDA only), and reset it."""
    if device.type != "cuda":
        return ""
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return f", peak GPU memory {peak:.2f} GiB (torch.cuda.max_memory_allocated)"


def main(argv=None):
    args = parse_args(argv)
    malloc = tune_cpu_allocator()  # as in tools/train_net.py, so that the step times are training's
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts, freeze=False)
    crop = args.crop or cfg.INPUT.CROP.SIZE[0]
    cfg.SOLVER.IMS_PER_BATCH = args.batch_size
    cfg.INPUT.CROP.SIZE = (crop, crop)
    # Learning rates 0: the optimisers do all their arithmetic, but random weights trained on
    # random labels cannot diverge to NaN between timed iterations (from random initialisation
    # the paper configs do, see the module docstring).
    cfg.SOLVER.BASE_LR = 0.0
    cfg.SOLVER.D_BASE_LR = 0.0
    cfg.freeze()

    torch.manual_seed(0)
    model = CaGNetTrainer.build_model(cfg)
    seen = model.seen_ids.tolist()
    batch = random_training_batch(args.batch_size, crop, crop, seen)
    cells = -(-crop // model.backbone.size_divisibility)  # feature pixels per side
    model.finetune_pixels = args.batch_size * cells * cells

    def batches(seed, start):
        while True:
            yield batch

    step = AlternatingStepTrainer.from_config(cfg, model, CaGNetTrainer.build_optimizers(cfg, model), batches)
    phases = step.phases
    train_iter = next(i for i in range(10**6) if phases.phase(i) == TRAINING)
    ft_iter = next((i for i in range(10**6) if phases.phase(i) == FINETUNING), None)

    def run(iteration):
        step.iter = iteration
        with EventStorage(iteration) as storage:
            step.storage = storage
            step.run_step()

    device = model.device
    precision = step.mixed_precision.precision
    print(f"config: {args.config_file}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} torch threads"
    print(f"device: {device} ({name}), channels_last: {cfg.MODEL.CAGNET.CHANNELS_LAST}, training precision: "
          f"{precision.name}{' + GradScaler' if precision.grad_scaler else ''} (SOLVER.AMP.ENABLED "
          f"{cfg.SOLVER.AMP.ENABLED}: {precision.reason})")
    print(describe_allocator(malloc))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = _median_time(lambda: run(train_iter), args.iters, args.warmup, device)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (args.iters + args.warmup)
    print(f"training iteration (batch {args.batch_size}, crop {crop}): {t:.3f} s{_peak_memory(device)}, "
          f"{faults:.0f} minor page faults (cagnet/engine/cpu_allocator.py)")
    # The loss guard's own work per optimiser step (already inside the times above): the loss
    # terms and the norm of the gradients left by the last step, read with one sync.
    step.loss_guard.growth_factor = 0.0  # what is timed here is not a run
    guard_s = sum(
        _median_time(lambda: step.loss_guard.check("benchmark", 0, {f"loss_{i}": torch.tensor(1.0) for i in range(n)},
                                                   optimizer), 20, 2, device)
        for n, optimizer in ((2, step.optimizer_d), (6, step.optimizer))
    )
    print(f"loss guard (its two checks of a training step: D's and the main optimiser's): {guard_s * 1e3:.2f} ms "
          f"= {100 * guard_s / t:.3f}% of a training iteration")
    if ft_iter is not None:
        t = _median_time(lambda: run(ft_iter), args.iters, args.warmup, device)
        print(f"finetuning iteration ({model.finetune_pixels} generated pixels): {t:.3f} s{_peak_memory(device)}")
    size = args.test_size or crop
    image = [{"image": random_training_batch(1, size, size, seen)[0]["image"]}]
    model.eval()
    with torch.no_grad():
        t = _median_time(lambda: model(image), args.iters, args.warmup, device)
        print(f"inference ({size}x{size} image, float32): {t:.3f} s{_peak_memory(device)}")


if __name__ == "__main__":
    main()
