#!/usr/bin/env python
"""Time and peak memory of reading word-vector files, extrapolated to GoogleNews' size.

Writes synthetic word2vec binary files (random words and float32 vectors, the class words of every
registered class set among them) of two sizes, plain and gzipped, and loads each in a fresh process:

* ``class words``: what tools/build_embeddings.py does, ``load_word_vectors(..., words=class words)``
  (one pass, only the class words kept);
* ``all words``: ``load_word_vectors(...)`` keeping every vector;
* ``gensim``: ``KeyedVectors.load_word2vec_format(binary=True)``, the full load.

Each row gives the seconds (the fastest of --repeats loads) and the peak resident memory added by the load (the process's peak RSS,
VmHWM, minus its peak after the imports); the last rows extrapolate both linearly (a + b * words, through the
two sizes) to 3,000,000 x 300 (GoogleNews-vectors-negative300). Random floats barely compress, so
the gzipped files are larger than a real .gz of that many vectors; the work per decompressed byte is
the same.

  python tools/analysis/benchmark_embeddings.py --sizes 100000,300000 --dim 300 --workdir /tmp/cagnet_w2v_bench
"""
import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

TARGET = 3_000_000

CHILD = r"""
import json, sys, time
mode, path, words_file = sys.argv[1:4]

def high_water_mib():  # this process's peak RSS (VmHWM: per address space, fresh after exec)
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024

import numpy as np
if mode == "gensim":
    from gensim.models import KeyedVectors
else:
    from cagnet.data.embeddings import load_word_vectors
words = json.load(open(words_file))
base = high_water_mib()
start = time.perf_counter()
if mode == "gensim":
    kv = KeyedVectors.load_word2vec_format(path, binary=True)
    found = sum(w in kv.key_to_index for w in words)
else:
    src = load_word_vectors("word2vec:" + path, words=words if mode == "class words" else None)
    found = sum(w in src for w in words)
seconds = time.perf_counter() - start
peak = high_water_mib()
print(json.dumps({"seconds": seconds, "peak_mib": peak, "added_mib": peak - base, "found": found}))
"""


def class_words():
    import cagnet.data  # noqa: F401
    from cagnet.data.catalog import CLASS_SETS
    from cagnet.data.embeddings import lookup_words

    return sorted({w for cs in CLASS_SETS.values() for w in lookup_words(cs.class_names, cs.aliases)})


def write_word2vec(path: str, n: int, dim: int, needed, seed: int = 0) -> None:
    """n random words (the ``needed`` ones among them, spread over the file) in word2vec binary."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", np.uint8)
    positions = dict(zip(rng.choice(n, size=len(needed), replace=False).tolist(), needed))
    with open(path, "wb") as f:
        f.write(f"{n} {dim}\n".encode())
        for start in range(0, n, 10000):
            k = min(10000, n - start)
            vecs = rng.standard_normal((k, dim), dtype=np.float32) * 0.1
            lengths = rng.integers(4, 14, size=k)
            chars = letters[rng.integers(0, 26, size=(k, 14))]
            parts = []
            for i in range(k):
                word = positions.get(start + i)
                # "_<index>" keeps the random words unique and apart from the real ones
                word = word.encode() if word else chars[i, :lengths[i]].tobytes() + b"_%d" % (start + i)
                parts.append(word + b" " + vecs[i].tobytes() + b"\n")
            f.write(b"".join(parts))


def measure(mode: str, path: str, words_file: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", CHILD, mode, path, words_file], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,300000", help="two numbers of words")
    p.add_argument("--dim", type=int, default=300)
    p.add_argument("--workdir", default="/tmp/cagnet_w2v_bench")
    p.add_argument("--repeats", type=int, default=3, help="loads per case; the fastest is reported (a shared "
                   "machine's noise only slows a load down)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if len(sizes) != 2 or sizes[0] >= sizes[1]:
        p.error("--sizes takes two increasing numbers")
    os.makedirs(args.workdir, exist_ok=True)
    needed = class_words()
    words_file = os.path.join(args.workdir, "class_words.json")
    with open(words_file, "w") as f:
        json.dump(needed, f)
    modes = ["class words", "all words", "gensim"]
    results = {}
    for n in sizes:
        path = os.path.join(args.workdir, f"w2v_{n}x{args.dim}.bin")
        t = time.perf_counter()
        write_word2vec(path, n, args.dim, needed)
        with open(path, "rb") as src, gzip.open(path + ".gz", "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
        print(f"wrote {n} x {args.dim} ({os.path.getsize(path) / 2**20:.0f} MiB, gzipped "
              f"{os.path.getsize(path + '.gz') / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s", flush=True)
        for file in (path, path + ".gz"):
            for mode in modes:
                runs = [measure(mode, file, words_file) for _ in range(max(1, args.repeats))]
                r = min(runs, key=lambda x: x["seconds"])
                r["added_mib"] = max(x["added_mib"] for x in runs)
                assert r["found"] == len(needed), (mode, file, r)
                results[(os.path.basename(file).endswith(".gz"), mode, n)] = r
                print(f"  {os.path.basename(file):24s} {mode:12s} {r['seconds']:7.2f} s  +{r['added_mib']:8.1f} MiB "
                      f"(peak RSS {r['peak_mib']:.0f} MiB)", flush=True)
        if not args.keep:
            os.remove(path)
            os.remove(path + ".gz")
    print(f"\nExtrapolated linearly to {TARGET:,} x {args.dim} (through {sizes[0]:,} and {sizes[1]:,} words); "
          f"{len(needed)} class words of {len(set(needed))} kept by 'class words':")
    print("| file | reader | s (measured at " + f"{sizes[0] // 1000}k / {sizes[1] // 1000}k" + ") | s at 3M | "
          "added MiB (measured) | added MiB at 3M |")
    print("|---|---|---|---|---|---|")
    for gz in (False, True):
        for mode in modes:
            a, b = results[(gz, mode, sizes[0])], results[(gz, mode, sizes[1])]

            def at(key):
                slope = (b[key] - a[key]) / (sizes[1] - sizes[0])
                return a[key] + slope * (TARGET - sizes[0])

            print(f"| {'.bin.gz' if gz else '.bin'} | {mode} | {a['seconds']:.1f} / {b['seconds']:.1f} | "
                  f"{at('seconds'):.0f} | {a['added_mib']:.0f} / {b['added_mib']:.0f} | {at('added_mib'):.0f} |")


if __name__ == "__main__":
    main()
