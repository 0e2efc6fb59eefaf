#!/usr/bin/env python
"""How well G's features stand for their classes, on real pixels of a dataset.

  python tools/analysis/probe_generator.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \
      MODEL.WEIGHTS output/demo/model_final.pth

For the labelled pixels of seen classes in the first --images images of the config's test set,
prints how often C assigns the right class to the real feature, to G(z ~ N(0, I), w) (what the
finetuning step trains C on), to G(mu, w) with the pixel's own latent code, and to G(mu', w) with
another class's latent code (low: G ignores w), and G's reconstruction error for z = mu and
z ~ N(0, I) (see cagnet.analysis.generator_probe). Classes are matched by name, so a model trained
without some class can be probed on the full dataset.
"""
import json
import sys

from cagnet.modeling import build_model_from_checkpoint
from cagnet.utils.cli import load_config, model_on_dataset_args, run_main, setup_logging
from cagnet.analysis.generator_probe import collect_pixel_features, generator_probe


def parse_args(argv=None):
    return model_on_dataset_args(__doc__, argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging("cagnet.probe_generator")
    cfg = load_config(args.config_file, args.opts)
    model = build_model_from_checkpoint(cfg, cfg.MODEL.WEIGHTS).eval()
    if not hasattr(model, "generator"):
        raise SystemExit(f"{cfg.MODEL.META_ARCHITECTURE} has no feature generator G to probe")
    dataset = args.dataset or (cfg.DATASETS.TEST or cfg.DATASETS.TRAIN)[0]
    try:
        pixels = collect_pixel_features(cfg, model, dataset, args.images)
    except ValueError as e:
        raise SystemExit(str(e))
    result = generator_probe(model, *pixels, seed=args.seed)
    result.update(dataset=dataset, images=args.images, weights=cfg.MODEL.WEIGHTS)
    print(f"\nGenerator probe on {result['pixels']} labelled pixels of seen classes ({dataset}, {args.images} images):")
    print("  C's accuracy on the real features            {:6.1%}".format(result["acc_real"]))
    print("  ... on G(z ~ N(0, I), w), finetuning step    {:6.1%}".format(result["acc_generated_prior"]))
    print("  ... on G(mu, w), the pixel's own latent code {:6.1%}".format(result["acc_generated_own_code"]))
    print("  ... on G(mu', w), another class's code       {:6.1%}".format(result["acc_generated_other_code"]))
    print("  reconstruction error ||G(z, w) - x||^2: z = mu {:.1f}, z ~ N(0, I) {:.1f}".format(
        result["rec_error_own_code"], result["rec_error_prior"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
