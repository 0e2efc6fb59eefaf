#!/usr/bin/env python
"""Build class-embedding tables (.npz) for the registered class sets.

Examples:
  # the shipped GloVe-50 tables of every class set (offline)
  python tools/build_embeddings.py --all --source glove50
  # the paper's 600-d tables (fastText first, then word2vec) of every class set, from the files
  # as distributed (the word2vec file may stay gzipped)
  python tools/build_embeddings.py --all \\
      --source fasttext:crawl-300d-2M-subword.bin --source word2vec:GoogleNews-vectors-negative300.bin.gz \\
      --output-dir datasets/embeddings      # -> datasets/embeddings/<class set>_fasttext+word2vec.npz
  # whole class names through the packaged all-MiniLM-L6-v2 sentence encoder (offline), plain or in
  # prompt templates (averaged)
  python tools/build_embeddings.py --class-set synthetic_scenes --source minilm
  python tools/build_embeddings.py --class-set pascal_voc_20 --source minilm \\
      --prompt-template "a photo of a {}." --prompt-template "a photo of the {}."
  # vectors made elsewhere (e.g. CLIP's text encoder), one per class name; list the names to embed first
  python tools/build_embeddings.py --class-set pascal_voc_20 --print-names
  python tools/build_embeddings.py --class-set pascal_voc_20 --source table:clip_voc20.npz

A class name is the mean of its words' vectors per word-vector source (after aliases); a sentence
encoder or a table gives one vector per whole name. The sources are concatenated in the given order
and each row is L2-normalised. A word outside a word2vec / GloVe vocabulary is an error that names
the class and the word; a fastText model composes it from its character n-grams, and the tool says
which words it composed (also stored in the table, array ``subword_words``); --strict-vocabulary
makes those an error too. Vector files are read once for all class sets, keeping only the class
words. A table whose file already holds the same content is left untouched.
"""
import argparse
import os
import sys
import time

import numpy as np

import cagnet.data  # noqa: F401  (defines every class set)
from cagnet.data.catalog import CLASS_SETS, get_class_set
from cagnet.data.embeddings import (
    build_class_embeddings,
    class_words,
    load_word_vectors,
    lookup_words,
    save_class_embeddings,
    shipped_embeddings_file,
    subword_words,
)


def source_tag(sources):
    tags = []
    for s in sources:
        kind, sep, arg = s.partition(":")
        if not sep:
            tags.append(s if s in ("glove50", "minilm") else "vectors")
        else:
            tags.append("minilm_prompts" if kind == "minilm" and arg else kind)
    return "+".join(tags)


def same_table(path, names, vectors, sources, aliases, composed) -> bool:
    """Whether ``path`` already holds exactly this table."""
    if not os.path.isfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            files = set(data.files)
            expected = {"names", "vectors", "sources", "aliases"} | ({"subword_words"} if any(composed) else set())
            if files != expected:
                return False
            return (
                [str(n) for n in data["names"]] == list(names)
                and [str(s) for s in data["sources"]] == list(sources)
                and [str(a) for a in data["aliases"]] == [" ".join(class_words(n, aliases)) for n in names]
                and ("subword_words" not in files or [str(c) for c in data["subword_words"]] == list(composed))
                and data["vectors"].dtype == np.float32
                and np.array_equal(data["vectors"], vectors)
            )
    except Exception:  # a damaged file is rewritten
        return False


def with_templates(source: str, templates) -> str:
    """``minilm`` + --prompt-template T... -> ``minilm:T|T``; other sources unchanged."""
    if source != "minilm" or not templates:
        return source
    bad = [t for t in templates if "|" in t]
    if bad:
        raise ValueError(f"--prompt-template {bad[0]!r}: a template must not contain '|'")
    return "minilm:" + "|".join(templates)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--class-set", action="append", help=f"one of: {', '.join(sorted(CLASS_SETS))}")
    which.add_argument("--all", action="store_true", help="every registered class set")
    parser.add_argument("--source", action="append", default=[],
                        help="glove50 | minilm | word2vec:PATH | glove:PATH | fasttext:PATH | table:FILE | PATH "
                             "(repeat to concatenate)")
    parser.add_argument("--prompt-template", action="append", default=[], metavar="TEMPLATE",
                        help="for --source minilm: embed each name inside this sentence ('{}' is the name), "
                             "averaged over the templates given (repeat)")
    parser.add_argument("--strict-vocabulary", action="store_true",
                        help="a word outside a fastText vocabulary is an error instead of a subword vector")
    parser.add_argument("--print-names", action="store_true",
                        help="print each class name and the phrase it is embedded as (after aliases), tab-separated, "
                             "and exit: the names a table:FILE source must hold")
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
    class_sets = {k: get_class_set(k) for k in keys}
    if args.print_names:
        for key, cs in class_sets.items():
            for name in cs.class_names:
                print(f"{key}\t{name}\t{' '.join(class_words(name, {**cs.aliases, **extra}))}")
        return {}
    if not args.source:
        parser.error("--source is required (or --print-names)")
    if args.prompt_template and "minilm" not in args.source:
        parser.error("--prompt-template applies to --source minilm")
    try:
        source_names = [with_templates(s, args.prompt_template) for s in args.source]
    except ValueError as e:
        parser.error(str(e))

    # Every word any class set needs, so that each vector file is read once and only those are kept.
    needed = sorted({w for cs in class_sets.values() for w in lookup_words(cs.class_names, {**cs.aliases, **extra})})
    sources = []
    for s in source_names:
        start = time.perf_counter()
        try:
            sources.append(load_word_vectors(s, words=needed, subwords=not args.strict_vocabulary))
        except (ValueError, OSError, ImportError) as e:
            sys.exit(f"error: source {s!r}: {e}")
        print(f"{s}: {sources[-1].dim}-d, loaded in {time.perf_counter() - start:.1f} s", flush=True)
    tag = source_tag(source_names)
    written = {}
    for key, class_set in class_sets.items():
        aliases = {**class_set.aliases, **extra}
        try:
            vectors = build_class_embeddings(class_set.class_names, sources, aliases)
        except KeyError as e:
            sys.exit(f"error: class set {key!r}: {e.args[0]}")
        except ValueError as e:
            sys.exit(f"error: class set {key!r}: {e}")
        composed = subword_words(class_set.class_names, sources, aliases)
        if args.output:
            out = args.output
        elif args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            out = os.path.join(args.output_dir, os.path.basename(shipped_embeddings_file(key, tag)))
        else:
            out = shipped_embeddings_file(key, tag)
        if same_table(out, class_set.class_names, vectors, source_names, aliases, composed):
            print(f"{key}: {len(class_set.class_names)} classes x {vectors.shape[1]}: {out} is up to date")
        else:
            save_class_embeddings(out, class_set.class_names, vectors, source_names, aliases, composed)
            print(f"{key}: {len(class_set.class_names)} classes x {vectors.shape[1]} -> {out}")
        for name, words in zip(class_set.class_names, composed):
            if words:
                print(f"  {name!r}: {words!r} not in the fastText vocabulary, composed from character n-grams")
        written[key] = out
    return written


if __name__ == "__main__":
    main()
