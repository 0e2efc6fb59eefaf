#!/usr/bin/env python
"""The checks to run the moment a GPU is at hand (``make gpu-check``; about 5 minutes on one GPU).

  python dev/gpu_check.py [--weights R-101.pkl] [--output output/gpu_check]
  python dev/gpu_check.py --device cpu --dry-run      # the same steps, tiny sizes, on the CPU

1. ``tools/benchmark.py`` on the paper config (VOC; ResNet-101 os8, ASPP-L 600) at batch 8, crop
   368, in float32 and with SOLVER.AMP (what "auto" picks on this GPU), inference on a 513x513
   image: seconds per training / finetuning iteration and per image, and the peak GPU memory
   (torch.cuda.max_memory_allocated) of each.
2. The paper config trained for 200 iterations (100 training steps, then 50 finetuning / 50
   training) through ``tools/train_net.py`` on the built-in dataset (its 20 classes and
   embeddings in place of VOC's) at crop 368, then evaluated on its val set: every logged loss
   must be finite. The built-in images are 96 px: the random rescale (0.5-1.5) and the crop pad
   each to 368 with ignore (FixedSizeCrop, pad=True), so an iteration costs what a 368 crop costs
   while about a tenth of its pixels carry labels. MODEL.WEIGHTS: --weights, else the stand-in
   pretrained trunk of dev/check_paper_config.py (made on first use, cached).
3. With two or more GPUs: the same training for 20 iterations with ``--num-gpus 2`` (DDP).

Prints every figure and a summary; exits 1 if a step fails, 2 without a GPU (unless --device cpu).
--dry-run shrinks everything (tiny ResNet, batch 1, crop 64 on the miniature built-in dataset,
a few iterations) so that a unit test can run the whole script on the CPU.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_CONFIG = os.path.join(REPO, "configs", "pascal_voc", "cagnet_R101_os8_bs8_crop368_46k_voc20.yaml")
TINY_MODEL_OPTS = [  # the tests' tiny paper model (tests/_dataset_helpers.py)
    "MODEL.RESNETS.DEPTH", "50", "MODEL.DILATED_RESNET.NUM_BLOCKS", "[1,1,1,1]",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16", "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8", "MODEL.ASPP_L.OUT_CHANNELS", "32",
    "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", "[32]", "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", "32",
    "MODEL.CAGNET.CHANNELS_LAST", "False",
]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--dry-run", action="store_true", help="tiny sizes (for tests on the CPU)")
    p.add_argument("--weights", default="", help="MODEL.WEIGHTS of the training check (default: the stand-in)")
    p.add_argument("--output", default=os.path.join(REPO, "output", "gpu_check"))
    p.add_argument("--train-iters", type=int, default=200)
    return p.parse_args(argv)


def _run(cmd, env, log_path):
    """Run a command, echo and keep its output; (return code, output)."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    with open(log_path, "w") as f:
        f.write(out)
    print(f"  ({time.perf_counter() - start:.0f} s, exit {proc.returncode}, log {log_path})", flush=True)
    return proc.returncode, out


def _losses(metrics_json):
    """{loss name: [values]} over the lines of a metrics.json."""
    out = {}
    with open(metrics_json) as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            for k, v in row.items():
                if k.startswith("loss_") or k == "total_loss":
                    out.setdefault(k, []).append(v)
    return out


def benchmark_step(args, env, sizes, failures):
    lines = []
    for amp in ("False", "True"):
        cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--config-file", PAPER_CONFIG,
               "--batch-size", str(sizes["batch"]), "--crop", str(sizes["crop"]), "--test-size", str(sizes["test"]),
               "--iters", str(sizes["bench_iters"]), "--warmup", "1", "MODEL.DEVICE", args.device,
               "SOLVER.AMP.ENABLED", amp, *sizes["model_opts"]]
        code, out = _run(cmd, env, os.path.join(args.output, f"benchmark_amp_{amp}.log"))
        if code != 0:
            failures.append(f"benchmark (SOLVER.AMP.ENABLED {amp}) failed: {out.strip().splitlines()[-1:]}")
            continue
        keep = [line for line in out.splitlines() if line.startswith(("device:", "training", "finetuning", "inference"))]
        print("\n".join("  " + line for line in keep), flush=True)
        lines += [f"AMP {amp}: " + line for line in keep]
    return lines


def training_step(args, env, sizes, weights, failures, num_gpus=1, iters=None, name="train"):
    iters = iters or sizes["train_iters"]
    out_dir = os.path.join(args.output, name)
    first = max(1, iters // 2)
    block = max(1, (iters - first) // 2)
    cmd = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", PAPER_CONFIG,
           "--num-gpus", str(num_gpus), "MODEL.DEVICE", args.device, "MODEL.WEIGHTS", weights,
           "DATASETS.TRAIN", f"('{sizes['dataset']}_train',)", "DATASETS.TEST", f"('{sizes['dataset']}_val',)",
           "INPUT.CROP.SIZE", f"({sizes['crop']},{sizes['crop']})", "SOLVER.IMS_PER_BATCH", str(sizes["batch"]),
           "SOLVER.MAX_ITER", str(iters), "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", str(first),
           "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", str(block), "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", str(block),
           "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS",
           str(sizes["workers"]), "OUTPUT_DIR", out_dir, *sizes["model_opts"]]
    code, out = _run(cmd, env, os.path.join(args.output, f"{name}.log"))
    if code != 0:
        failures.append(f"{name}: train_net failed: {out.strip().splitlines()[-1:]}")
        return []
    losses = _losses(os.path.join(out_dir, "metrics.json"))
    bad = sorted(k for k, v in losses.items() if not all(math.isfinite(x) for x in v))
    if bad or not losses:
        failures.append(f"{name}: non-finite (or no) losses: {bad}")
    lines = out.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith("Zero-shot results on")]
    table = [line for line in lines[marks[-1]:] if line.startswith(("Zero-shot", "|", "hIoU", "Wall time"))] if marks else []
    speed = [line.split("]:", 1)[-1].strip() for line in out.splitlines() if "Overall training speed" in line]
    summary = [f"{name} ({num_gpus} process(es), {iters} iterations, batch {sizes['batch']}, crop {sizes['crop']}): "
               f"losses finite: {not bad}; loss_cls {losses.get('loss_cls', [float('nan')])[0]:.3f} -> "
               f"{losses.get('loss_cls', [float('nan')])[-1]:.3f}"] + speed + table
    print("\n".join("  " + line for line in summary), flush=True)
    return summary


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU is available (torch.cuda.is_available() is False, torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU machine, or "
              "`--device cpu --dry-run` to check the script itself.", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    num_gpus = torch.cuda.device_count() if args.device == "cuda" else 0
    if args.dry_run:
        sizes = {"batch": 1, "crop": 64, "test": 65, "bench_iters": 1, "train_iters": 4, "workers": 0,
                 "dataset": "synthetic_scenes_mini", "model_opts": TINY_MODEL_OPTS}
        env["OMP_NUM_THREADS"] = "1"
    else:
        sizes = {"batch": 8, "crop": 368, "test": 513, "bench_iters": 3, "train_iters": args.train_iters,
                 "workers": 4, "dataset": "synthetic_scenes", "model_opts": []}
    start = time.perf_counter()
    if args.device == "cuda":
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(num_gpus))
        print(f"GPUs: {num_gpus} ({names}); torch {torch.__version__}, CUDA {torch.version.cuda}, bfloat16 "
              f"supported: {torch.cuda.is_bf16_supported()}", flush=True)
    failures = []
    print("\n== 1. benchmark of the paper config ==", flush=True)
    report = benchmark_step(args, env, sizes, failures)
    weights = args.weights
    if not weights:
        from cagnet.analysis.paper_config_check import stand_in_pretrained_trunk

        weights = stand_in_pretrained_trunk(PAPER_CONFIG, os.path.join(args.output, "stand_in_trunk.pth"),
                                            device=args.device, opts=sizes["model_opts"], tiny=args.dry_run)
    print(f"\n== 2. training the paper config on the built-in data (MODEL.WEIGHTS {weights}) ==", flush=True)
    report += training_step(args, env, sizes, weights, failures)
    print("\n== 3. DDP ==", flush=True)
    if num_gpus >= 2:
        report += training_step(args, env, sizes, weights, failures, num_gpus=2, iters=20, name="train_ddp")
    else:
        report.append(f"DDP: skipped ({num_gpus} GPU(s))")
        print("  " + report[-1])
    print(f"\n== summary ({time.perf_counter() - start:.0f} s) ==\n" + "\n".join(report), flush=True)
    if failures:
        print("FAILED:\n" + "\n".join("  " + f for f in failures), flush=True)
        return 1
    print("gpu_check: all steps passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
