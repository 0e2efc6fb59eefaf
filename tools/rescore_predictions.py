#!/usr/bin/env python
"""Score a folder of written predictions again, with the evaluator's metrics.

  python tools/train_net.py --config-file C --eval-only MODEL.WEIGHTS W TEST.SAVE_PREDICTIONS True
  python tools/rescore_predictions.py --dataset synthetic_scenes_val \\
      --predictions output/synthetic_scenes/cagnet_tiny/inference/synthetic_scenes_val/predictions

The folder holds one class-index PNG per image, named by its image id (the stem of its file), with
class indices of the dataset's setting (for pascal_voc_20 index k is VOC value k + 1: the dataset's
label_lut maps the label files, never the predictions). Prints the zero-shot table that train_net
printed for the same predictions; --output writes the metrics as JSON.
"""
import argparse
import json
import sys

import cagnet  # noqa: F401  (registers the datasets)
from cagnet.evaluation import format_zero_shot_table, rescore_predictions
from cagnet.utils.cli import setup_logging


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="registered dataset name, e.g. synthetic_scenes_val")
    p.add_argument("--predictions", required=True, help="folder of <image_id>.png predictions")
    p.add_argument("--output", help="write the metrics here (JSON)")
    args = p.parse_args(argv)
    setup_logging("cagnet")
    try:
        res = rescore_predictions(args.dataset, args.predictions)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"\nZero-shot results on {args.dataset} (rescored from {args.predictions}):\n{format_zero_shot_table(res)}\n")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({k: (None if v != v else v) for k, v in res.items()}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
