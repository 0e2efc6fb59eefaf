#!/usr/bin/env python
"""Add classes to a trained model, from their names only (no images).

  python tools/add_classes.py --config-file configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml \
      --weights output/demo/model_final.pth --names "goat,orange" \
      --output output/demo/model_plus2.pth

The new names get word embeddings from the source(s) the model's class table was built from
(default: those recorded in the config's table, else glove50; --embeddings to choose, repeated
to concatenate; the dimension must match the model's). They join the unseen classes; C's last
1x1 conv gets one row per new class, and the new rows learn from generated features for --iters
iterations with the model's own finetuning loss (C's cross-entropy on G(z ~ N(0, I), w) of
random seen, unseen and new classes). The old rows, G, E and CM stay as they were, so the old
classes' logits do not change (--retrain-all-classes and --train-generator undo that). The output
checkpoint carries the new class list, so tools/demo.py (MODEL.WEIGHTS OUT) shows the new names.
Names that are not words of the vocabulary need --alias NAME=WORDS.
"""
import argparse
import sys

import torch

from cagnet.vocabulary.add_classes import add_classes_from_config
from cagnet.utils.cli import load_config, run_main, setup_logging


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", required=True, help="the trained model (.pth)")
    p.add_argument("--names", required=True, help="comma-separated class names to add")
    p.add_argument("--embeddings", action="append", metavar="SOURCE",
                   help="word-vector source (glove50 | word2vec:PATH | glove:PATH | fasttext:PATH); repeat to "
                        "concatenate; default: the sources of the config's class table, else glove50")
    p.add_argument("--alias", action="append", default=[], metavar="NAME=WORDS",
                   help="words to look up for a name, e.g. 'tvmonitor=tv monitor'")
    p.add_argument("--output", required=True, help="the new model (.pth)")
    p.add_argument("--iters", type=int, default=1000, help="finetuning iterations on generated features")
    p.add_argument("--pixels", type=int, default=None,
                   help="generated pixels per iteration (default: the model's MODEL.CAGNET.FINETUNE_PIXELS)")
    p.add_argument("--lr", type=float, default=1e-3, help="finetuning learning rate (Adam)")
    p.add_argument("--init", choices=("mean", "imprint"), default="mean",
                   help="initial rows of the new classes: the mean old row, or imprinted from generated features")
    p.add_argument("--retrain-all-classes", action="store_true",
                   help="train all rows of C (and the conv C shares with D), not only the new ones: the paper's "
                        "finetuning step; the old classes' logits change")
    p.add_argument("--train-generator", action="store_true",
                   help="with --retrain-all-classes, G learns too (C's cross-entropy and G's adversarial term)")
    p.add_argument("--no-source-check", action="store_true",
                   help="do not check that the source reproduces the model's own class embeddings")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def parse_aliases(items):
    aliases = {}
    for item in items:
        name, sep, words = item.partition("=")
        if not sep or not name.strip() or not words.strip():
            raise SystemExit(f"--alias expects NAME=WORDS, got {item!r}")
        aliases[name.strip()] = words.strip()
    return aliases


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging("cagnet.add_classes")
    names = [n.strip() for n in args.names.split(",") if n.strip()]
    if not names:
        raise SystemExit("--names is empty")
    if args.train_generator and not args.retrain_all_classes:
        raise SystemExit("--train-generator needs --retrain-all-classes (G only matters to C's old rows)")
    cfg = load_config(args.config_file, args.opts)
    torch.manual_seed(args.seed)
    add_classes_from_config(
        cfg, args.weights, names, args.output, sources=args.embeddings, aliases=parse_aliases(args.alias),
        iters=args.iters, lr=args.lr, init=args.init, train_generator=args.train_generator,
        check_source=not args.no_source_check, seed=args.seed, pixels=args.pixels,
        keep_old_classes=not args.retrain_all_classes,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
