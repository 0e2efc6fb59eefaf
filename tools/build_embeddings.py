#!/usr/bin/env python
"""Build class-embedding tables (.npz) for the registered class sets.

Examples:
  # the shipped GloVe-50 tables of every class set (offline)
  python tools/build_embeddings.py --all --source glove50
  # the paper's 600-d table (fastText first, then word2vec) for Pascal-VOC
  python tools/build_embeddings.py --class-set pascal_voc_20 \
      --source fasttext:crawl-300d-2M-subword.bin --source word2vec:GoogleNews-vectors-negative300.bin

A class name is the mean of its words' vectors per source (after aliases), the sources are
concatenated in the given order and each row is L2-normalised. An out-of-vocabulary word is an
error that names the class and the word.
"""
import argparse

from cagnet.data.catalog import CLASS_SETS, get_class_set
from cagnet.data.embeddings import (
    build_class_embeddings,
    load_word_vectors,
    save_class_embeddings,
    shipped_embeddings_file,
)
import cagnet.data  # noqa: F401  (defines every class set)


def source_tag(sources):
    return "+".join(s.partition(":")[0] if ":" in s else s for s in sources)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--class-set", action="append", help=f"one of: {', '.join(sorted(CLASS_SETS))}")
    which.add_argument("--all", action="store_true", help="every registered class set")
    parser.add_argument("--source", action="append", required=True,
                        help="glove50 | word2vec:PATH | glove:PATH | fasttext:PATH (repeat to concatenate)")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=WORDS",
                        help="extra alias, e.g. 'playingfield=playing field'")
    parser.add_argument("--output", help="output .npz (one class set only); default: the package's "
                        "embeddings directory, <class set>_<sources>.npz")
    args = parser.parse_args(argv)

    keys = sorted(CLASS_SETS) if args.all else args.class_set
    if args.output and len(keys) != 1:
        parser.error("--output needs exactly one --class-set")
    extra = {}
    for item in args.alias:
        name, sep, words = item.partition("=")
        if not sep or not words.strip():
            parser.error(f"--alias expects NAME=WORDS, got {item!r}")
        extra[name] = words
    sources = [load_word_vectors(s) for s in args.source]
    tag = source_tag(args.source)
    for key in keys:
        class_set = get_class_set(key)
        aliases = {**class_set.aliases, **extra}
        vectors = build_class_embeddings(class_set.class_names, sources, aliases)
        out = args.output or shipped_embeddings_file(key, tag)
        save_class_embeddings(out, class_set.class_names, vectors, args.source, aliases)
        print(f"{key}: {len(class_set.class_names)} classes x {vectors.shape[1]} -> {out}")


if __name__ == "__main__":
    main()
