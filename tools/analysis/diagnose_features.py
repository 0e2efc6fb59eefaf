#!/usr/bin/env python
"""Why a trained generative model (CaGNet, ZS3Net) transfers to unseen classes or not.

  python tools/analysis/diagnose_features.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \\
      MODEL.WEIGHTS output/demo/model_final.pth

On the labelled pixels of the first --images test images it prints per class: the distance of
the generated class mean (G(z ~ N(0, I), w)) from the real one next to the class's separation from
its nearest neighbour, the real class nearest to the generated mean, C's accuracy on real and on
generated features, and for unseen classes C's seen bias (how often the true logit beats every
seen logit, and how often it is the best among the unseen ones); with a contextual module also
the latent code's KL per element at the class's pixels and G fed with that code instead of
N(0, I) noise (distance of its mean from the real one, C's accuracy on it); then summaries over
seen and unseen classes (cagnet/analysis/feature_diagnostics.py says how each is computed).
"""
import json
import sys

from tabulate import tabulate

from cagnet.modeling import build_model_from_checkpoint
from cagnet.utils.cli import load_config, model_on_dataset_args, setup_logging
from cagnet.analysis.feature_diagnostics import collect_real_features, feature_diagnostics


def parse_args(argv=None):
    return model_on_dataset_args(__doc__, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging("cagnet.diagnose_features")
    cfg = load_config(args.config_file, args.opts)
    if not cfg.MODEL.WEIGHTS:
        raise SystemExit("MODEL.WEIGHTS is empty: pass the trained model to diagnose (MODEL.WEIGHTS path/model_final.pth)")
    model = build_model_from_checkpoint(cfg, cfg.MODEL.WEIGHTS).eval()
    dataset = args.dataset or (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0]
    try:
        real, labels, latent = collect_real_features(cfg, model, dataset, args.images)
        result = feature_diagnostics(model, real, labels, seed=args.seed, latent=latent)
    except ValueError as e:
        raise SystemExit(str(e))
    rows = [[r["class"] + ("" if r["seen"] else "*"), r["pixels"], r["gen_to_real"], r["separation"], r["nearest_real"],
             100 * r["acc_real"], 100 * r["acc_generated"],
             100 * r["true_above_all_seen"] if "true_above_all_seen" in r else "",
             100 * r["best_among_unseen"] if "best_among_unseen" in r else ""]
            + ([r["kl"], r["gen_to_real_context"], 100 * r["acc_generated_context"]] if latent is not None else [])
            for r in result["classes"]]
    print(f"\nFeature diagnostics of {cfg.MODEL.WEIGHTS} on {dataset} ({args.images} images, {result['pixels']} "
          "labelled feature pixels; * unseen):")
    print(tabulate(rows, headers=["class", "pixels", "|gen - real|", "separation", "real class nearest to gen",
                                  "C acc. real %", "C acc. gen %", "true > all seen %", "best of unseen %"]
                   + (["KL/elem", "|gen(ctx) - real|", "C acc. gen(ctx) %"] if latent is not None else []),
                   floatfmt=".1f", tablefmt="pipe"))
    for group in ("seen", "unseen"):
        s = result[group]
        if s:
            print(f"{group}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()))
    result.update(dataset=dataset, images=args.images, weights=cfg.MODEL.WEIGHTS)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
