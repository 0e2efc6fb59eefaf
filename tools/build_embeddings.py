#!/usr/bin/env python
"""Build class-embedding tables (.npz) for the registered class sets.

Examples:
  # the shipped GloVe-50 tables of every class set (offline)
  python tools/build_embeddings.py --all --source glove50
  # the paper's 600-d tables (fastText first, then word2vec) of every class set
  python tools/build_embeddings.py --all \
      --source fasttext:crawl-300d-2M-subword.bin --source word2vec:GoogleNews-vectors-negative300.bin \
      --output-dir datasets/embeddings      # -> datasets/embeddings/<class set>_fasttext+word2vec.npz

A class name is the mean of its words' vectors per source (after aliases), the sources are
concatenated in the given order and each row is L2-normalised. An out-of-vocabulary word is an
error that names the class and the word. A table whose file already holds the same content is
left untouched.
"""
import argparse
import os
import sys

import numpy as np

import cagnet.data  # noqa: F401  (defines every class set)
from cagnet.data.catalog import CLASS_SETS, get_class_set
from cagnet.data.embeddings import (
    build_class_embeddings,
    class_words,
    load_word_vectors,
    save_class_embeddings,
    shipped_embeddings_file,
)


def source_tag(sources):
    return "+".join(s.partition(":")[0] if ":" in s else s for s in sources)


def same_table(path, names, vectors, sources, aliases) -> bool:
    """Whether ``path`` already holds exactly this table."""
    if not os.path.isfile(path):
        return False
    with np.load(path, allow_pickle=False) as data:
        if set(data.files) != {"names", "vectors", "sources", "aliases"}:
            return False
        return (
            [str(n) for n in data["names"]] == list(names)
            and [str(s) for s in data["sources"]] == list(sources)
            and [str(a) for a in data["aliases"]] == [" ".join(class_words(n, aliases)) for n in names]
            and data["vectors"].dtype == np.float32
            and np.array_equal(data["vectors"], vectors)
        )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--class-set", action="append", help=f"one of: {', '.join(sorted(CLASS_SETS))}")
    which.add_argument("--all", action="store_true", help="every registered class set")
    parser.add_argument("--source", action="append", required=True,
                        help="glove50 | word2vec:PATH | glove:PATH | fasttext:PATH (repeat to concatenate)")
    parser.add_argument("--alias", action="append", default=[], metavar="NAME=WORDS",
                        help="extra alias, e.g. 'playingfield=playing field'")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--output", help="output .npz (one class set only); default: the package's "
                       "embeddings directory, <class set>_<sources>.npz")
    where.add_argument("--output-dir", help="write <class set>_<sources>.npz files here instead of the "
                       "package's embeddings directory")
    args = parser.parse_args(argv)

    keys = sorted(CLASS_SETS) if args.all else args.class_set
    unknown = [k for k in keys if k not in CLASS_SETS]
    if unknown:
        parser.error(f"unknown class set(s) {unknown}; known: {', '.join(sorted(CLASS_SETS))}")
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
    written = {}
    for key in keys:
        class_set = get_class_set(key)
        aliases = {**class_set.aliases, **extra}
        try:
            vectors = build_class_embeddings(class_set.class_names, sources, aliases)
        except KeyError as e:
            sys.exit(f"error: class set {key!r}: {e.args[0]}")
        if args.output:
            out = args.output
        elif args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            out = os.path.join(args.output_dir, os.path.basename(shipped_embeddings_file(key, tag)))
        else:
            out = shipped_embeddings_file(key, tag)
        if same_table(out, class_set.class_names, vectors, args.source, aliases):
            print(f"{key}: {len(class_set.class_names)} classes x {vectors.shape[1]}: {out} is up to date")
        else:
            save_class_embeddings(out, class_set.class_names, vectors, args.source, aliases)
            print(f"{key}: {len(class_set.class_names)} classes x {vectors.shape[1]} -> {out}")
        written[key] = out
    return written


if __name__ == "__main__":
    main()
