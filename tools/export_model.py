#!/usr/bin/env python
"""Export the inference graph of a trained model (E -> CM with Z = mu -> C, normalisation,
padding and upsampling included) for use without detectron2.

  python tools/export_model.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \
      --output output/demo/model.pt2 --check MODEL.WEIGHTS output/demo/model_final.pth

Input: a float tensor (3, H, W) in the model's input format (INPUT.FORMAT channel order, 0..255),
or (1, 3, H, W) with --batched. Output: class logits (K, H, W) (or (1, K, H, W)) at the input
resolution, classes in the order of the JSON written next to the file (also stored inside it).

* ``.pt2``: ``torch.export`` with H and W dynamic (--min-size to --max-size); load with
  ``torch.export.load(path).module()``.
* ``.ts``: TorchScript trace; it supports exactly the traced size (--trace-size, default 96x96),
  since the padding and output sizes are recorded as constants (other sizes raise an error).
  Load with ``torch.jit.load``.

--check reloads the written file and compares its logits with the eager model's
(``model.inference``) on random images of two sizes (--check-sizes), failing above --tolerance.
"""
import argparse
import json
import os
import sys
import warnings

import torch

from cagnet.modeling import build_model_from_checkpoint
from cagnet.utils.cli import load_config, run_main, setup_logging
from cagnet.export import InferenceGraph, compare_with_eager, export_program, load_exported, trace_module


def _size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, e.g. 96x128, got {text!r}")
    return h, w


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="model.pt2 (torch.export) or model.ts (TorchScript trace)")
    p.add_argument("--batched", action="store_true", help="input (1, 3, H, W), output (1, K, H, W)")
    p.add_argument("--example-size", type=_size, default=(96, 96), help="HxW of the example input of torch.export")
    p.add_argument("--min-size", type=int, default=None, help="smallest H and W of a .pt2 (default: 2 x stride)")
    p.add_argument("--max-size", type=int, default=4096, help="largest H and W of a .pt2")
    p.add_argument("--trace-size", type=_size, default=None, help="HxW a .ts is traced at (default: --example-size)")
    p.add_argument("--check", action="store_true", help="compare the written file with the eager model")
    p.add_argument("--check-sizes", type=_size, nargs=2, default=None,
                   help="two HxW sizes for --check (default: 96x96 and 75x122; a .ts: two images of its traced size)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |exported - eager| logit")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides, e.g. MODEL.WEIGHTS W")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logger = setup_logging("cagnet.export_model")
    ext = os.path.splitext(args.output)[1]
    if ext not in (".pt2", ".ts"):
        raise SystemExit(f"--output must end in .pt2 or .ts, got {args.output!r}")
    cfg = load_config(args.config_file, args.opts)
    model = build_model_from_checkpoint(cfg, cfg.MODEL.WEIGHTS).cpu().eval()
    graph = InferenceGraph(model).eval()
    info = {
        "class_names": list(model.class_names or []),
        "unseen_class_ids": model.unseen_ids.tolist(),
        "input_format": cfg.INPUT.FORMAT,
        "input": "(1, 3, H, W)" if args.batched else "(3, H, W)",
        "output": "(1, K, H, W) logits" if args.batched else "(K, H, W) logits",
        "weights": cfg.MODEL.WEIGHTS,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    if ext == ".pt2":
        min_size = args.min_size or 2 * graph.stride
        program = export_program(graph, args.example_size, args.batched, dynamic=True, min_size=min_size,
                                 max_size=args.max_size)
        info["sizes"] = f"H and W dynamic in [{min_size}, {args.max_size}]"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No complete tensor found")  # harmless, CPU weights
            torch.export.save(program, args.output, extra_files={"cagnet.json": json.dumps(info)})
        default_check = [(96, 96), (75, 122)]
    else:
        size = args.trace_size or args.example_size
        traced = trace_module(graph, size, args.batched)
        info["sizes"] = f"exactly {size[0]}x{size[1]} (traced)"
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
            torch.jit.save(traced, args.output, _extra_files={"cagnet.json": json.dumps(info)})
        default_check = [size, size]
    with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
        json.dump(info, f, indent=1)
    logger.info(f"Wrote {args.output} ({info['sizes']}; {len(info['class_names'])} classes)")
    if not args.check:
        return 0
    sizes = [tuple(s) for s in (args.check_sizes or default_check)]
    diffs = compare_with_eager(model, load_exported(args.output), sizes, batched=args.batched)
    worst = max(d for _, d in diffs)
    for (h, w), d in diffs:
        print(f"check {h}x{w}: max |exported - eager| = {d:.3g}", flush=True)
    if worst > args.tolerance:
        logger.error(f"Exported logits differ from the eager model's by {worst:.3g} > {args.tolerance}")
        return 1
    print(f"check passed: within {args.tolerance} on {len(sizes)} image sizes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
