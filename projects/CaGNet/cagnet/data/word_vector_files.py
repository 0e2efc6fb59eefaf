# Copyright (c) CaGNet-D2 contributors.
"""Readers of word-vector files in the forms they are distributed in, checked before they parse.

* word2vec binary (``GoogleNews-vectors-negative300.bin``, also gzipped): a ``"<count> <dim>"``
  header line, then per word ``word<space>`` and ``dim`` float32;
* word2vec text (``.txt`` / ``.vec`` with that header, also gzipped) and GloVe text (no header);
* fastText ``.bin`` models (``crawl-300d-2M-subword.bin``, ``cc.en.300.bin[.gz]``): a word outside
  the vocabulary gets the mean of its character n-gram vectors, as fastText and gensim compute it.

Every reader checks the header against the file first (fastText's magic number, format version and
sizes; word2vec's header line and the size it implies), reads entries one at a time, and with
``words`` keeps only those words: memory follows what is kept (a few hundred class words), never
what a header claims, and a damaged file ends in :class:`WordVectorFileError` naming the path and
the place, never in a hang. gzip is recognised by its magic bytes, not by the file name.
"""
import gzip
import os
import re
import struct
import zlib
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple

import numpy as np

__all__ = [
    "WordVectorFileError",
    "VectorTable",
    "FastTextModel",
    "sniff_format",
    "read_word2vec_binary",
    "read_text_vectors",
    "read_fasttext",
]

FASTTEXT_MAGIC = 793712314  # int32 at the start of every fastText .bin since 2017
FASTTEXT_VERSIONS = (11, 12)
MAX_DIM = 10_000
MAX_WORD_BYTES = 4096  # longer "words" mean a wrong dimension in the header, or another format
MAX_LINE_BYTES = 1 << 20
CHUNK = 1 << 22
_W2V_HEADER = re.compile(rb"^\s*(\d+)\s+(\d+)\s*$")
_CONTROL_BYTES = bytes(range(0, 32))


class WordVectorFileError(ValueError):
    """A word-vector file that is not what its source says; the message names the path."""

    def __init__(self, path: str, what: str):
        super().__init__(f"{path}: {what}")
        self.path = path


class VectorTable:
    """word -> row of a (n, dim) float32 matrix."""

    def __init__(self, index: Dict[str, int], vectors: np.ndarray):
        self.index, self.vectors = index, vectors

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def __contains__(self, word: str) -> bool:
        return word in self.index

    def __getitem__(self, word: str) -> np.ndarray:
        return self.vectors[self.index[word]]


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _open(path: str):
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb", buffering=CHUNK)


def _read_errors(path: str):
    """gzip / OS errors while reading, with the path."""

    class _Wrap:
        def __enter__(self):
            return self

        def __exit__(self, kind, exc, tb):
            if kind is not None and issubclass(kind, (EOFError, gzip.BadGzipFile, zlib.error, OSError)) \
                    and not isinstance(exc, WordVectorFileError):
                raise WordVectorFileError(path, f"cannot be read to the end ({kind.__name__}: {exc}): "
                                                "truncated or damaged") from exc
            return False

    return _Wrap()


def sniff_format(path: str) -> str:
    """'fasttext', 'word2vec_binary', 'word2vec_text' or 'glove' from the first bytes of the file
    (decompressed when gzipped), for a bare PATH source."""
    with _read_errors(path), _open(path) as f:
        head = f.read(4096)
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] == FASTTEXT_MAGIC:
        return "fasttext"
    first = head.split(b"\n", 1)[0]
    if _W2V_HEADER.match(first):
        rest = head[len(first) + 1:]
        # Binary entries hold raw float bytes, which soon include control bytes; text does not.
        text = rest.translate(None, b"\t\r\n")
        return "word2vec_text" if len(text.translate(None, _CONTROL_BYTES)) == len(text) else "word2vec_binary"
    return "glove"


def _word2vec_header(path: str, line: bytes) -> Tuple[int, int]:
    m = _W2V_HEADER.match(line)
    if not m:
        raise WordVectorFileError(
            path, f"the first line {line[:40]!r} is not a word2vec header '<count> <dim>' (a GloVe file has "
                  "no header: use glove:PATH; a fastText model: fasttext:PATH)")
    count, dim = int(m.group(1)), int(m.group(2))
    if count < 1 or not 1 <= dim <= MAX_DIM:
        raise WordVectorFileError(path, f"word2vec header '{count} {dim}': expected at least one vector "
                                        f"of 1..{MAX_DIM} dimensions")
    return count, dim


class _Reader:
    """Buffered reads from a binary stream, with the position in the (decompressed) file."""

    def __init__(self, f, path: str):
        self.f, self.path = f, path
        self.buf, self.pos, self.offset = b"", 0, 0  # offset: file position of buf[0]

    def _fill(self, need: int) -> bool:
        """At least ``need`` bytes after pos, or False at the end of the file."""
        while len(self.buf) - self.pos < need:
            more = self.f.read(max(CHUNK, need))
            if not more:
                return False
            self.offset += self.pos
            self.buf = self.buf[self.pos:] + more
            self.pos = 0
        return True

    def take(self, n: int, what: str) -> bytes:
        if not self._fill(n):
            raise WordVectorFileError(self.path, f"ends inside {what} (byte {self.offset + len(self.buf)}): truncated, "
                                                 "or its header does not describe it")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def skip(self, n: int, what: str) -> None:
        while n > 0:
            if not self._fill(1):
                raise WordVectorFileError(self.path, f"ends inside {what}: truncated, or its header does not "
                                                     "describe it")
            step = min(n, len(self.buf) - self.pos)
            self.pos += step
            n -= step

    def until(self, sep: bytes, limit: int, what: str) -> bytes:
        """Bytes up to ``sep`` (consumed, not returned), at most ``limit`` of them."""
        while True:
            i = self.buf.find(sep, self.pos, self.pos + limit + 1)
            if i >= 0:
                out = self.buf[self.pos:i]
                self.pos = i + 1
                return out
            if len(self.buf) - self.pos > limit:
                raise WordVectorFileError(self.path, f"{what} at byte {self.offset + self.pos}: no {sep!r} within "
                                                     f"{limit} bytes")
            if not self._fill(len(self.buf) - self.pos + 1):
                raise WordVectorFileError(self.path, f"ends inside {what} (byte {self.offset + len(self.buf)}): "
                                                     "truncated")

    def rest_is_blank(self) -> bool:
        while True:
            if self.buf[self.pos:].strip():
                return False
            if not self._fill(len(self.buf) - self.pos + 1):
                return True


def _keep_fn(words: Optional[Iterable[str]]) -> Optional[Set[bytes]]:
    return None if words is None else {w.encode("utf-8") for w in words}


class _Kept:
    """The kept entries: words in file order (the first of duplicates wins, as in gensim) and
    their vectors' bytes in one growing buffer (no per-word objects, no copy at the end)."""

    def __init__(self, dim: int):
        self.dim, self.words, self.seen, self.data = dim, [], set(), bytearray()

    def wants(self, word: bytes, keep: Optional[Set[bytes]]) -> bool:
        return (keep is None or word in keep) and word not in self.seen

    def add(self, word: bytes, vector_bytes: bytes) -> None:
        self.seen.add(word)
        self.words.append(word)
        self.data += vector_bytes

    def table(self, path: str) -> VectorTable:
        vectors = np.frombuffer(self.data, dtype=np.float32).reshape(len(self.words), self.dim)
        index = {w.decode("utf-8", "backslashreplace"): i for i, w in enumerate(self.words)}
        for start in range(0, len(vectors), 65536):  # in blocks: no full-size temporary
            bad = np.flatnonzero(~np.isfinite(vectors[start:start + 65536]).all(axis=1))
            if bad.size:
                raise WordVectorFileError(path, f"non-finite values in the vector of "
                                                f"{self.words[start + bad[0]]!r}: damaged file")
        return VectorTable(index, vectors)


def read_word2vec_binary(path: str, words: Optional[Iterable[str]] = None) -> VectorTable:
    """word2vec binary format; with ``words``, only those are kept."""
    keep = _keep_fn(words)
    with _read_errors(path), _open(path) as f:
        r = _Reader(f, path)
        try:
            line = r.until(b"\n", 200, "the header line")
        except WordVectorFileError:
            line = r.buf[:60]
        count, dim = _word2vec_header(path, line)
        if not _is_gzip(path):
            need = count * (dim * 4 + 2)
            have = os.path.getsize(path) - r.offset - r.pos
            if have < need:
                raise WordVectorFileError(
                    path, f"the header says {count} vectors of {dim} dimensions, which need at least {need} "
                          f"bytes, but the file has {have} after it: truncated, or not a word2vec binary file")
        nbytes, kept = dim * 4, _Kept(dim)
        for i in range(count):
            word = r.until(b" ", MAX_WORD_BYTES, f"the word of entry {i + 1} of {count}")
            word = word.lstrip(b"\n")
            if not word or len(word.translate(None, _CONTROL_BYTES)) != len(word):
                raise WordVectorFileError(
                    path, f"entry {i + 1} of {count} has no word or a word with control bytes ({word[:20]!r}): "
                          f"the dimension in the header ({dim}) is wrong, or this is not a word2vec binary file")
            if kept.wants(word, keep):
                kept.add(word, r.take(nbytes, f"the vector of entry {i + 1}"))
            else:
                r.skip(nbytes, f"the vector of entry {i + 1}")
        if not r.rest_is_blank():
            raise WordVectorFileError(path, f"holds more data after the {count} entries its header announces: "
                                            "the header is wrong, or this is not a word2vec binary file")
    return kept.table(path)


def read_text_vectors(path: str, words: Optional[Iterable[str]] = None, header: bool = True) -> VectorTable:
    """word2vec text (``header``: a ``"<count> <dim>"`` first line) or GloVe text (no header)."""
    keep = _keep_fn(words)
    kept, count, dim, n = None, None, None, 0
    with _read_errors(path), _open(path) as f:
        for lineno, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(line) > MAX_LINE_BYTES:
                raise WordVectorFileError(path, f"line {lineno} is longer than {MAX_LINE_BYTES} bytes: not a "
                                                "text vector file")
            if header and lineno == 1:
                count, dim = _word2vec_header(path, line)
                kept = _Kept(dim)
                continue
            line = line.rstrip(b"\r\n").rstrip(b" ")
            if not line:
                continue
            n += 1
            first = line.find(b" ")
            word = line[:first] if first > 0 else line
            if dim is None or keep is None or word in keep:
                fields = line.split(b" ")
                if dim is None:
                    dim = len(fields) - 1
                    kept = _Kept(dim)
                    if not 1 <= dim <= MAX_DIM:
                        raise WordVectorFileError(path, f"line {lineno} holds {dim} values, expected 1..{MAX_DIM}: "
                                                        "not a GloVe / word2vec text file")
                if len(fields) < dim + 1:
                    raise WordVectorFileError(path, f"line {lineno} has {len(fields) - 1} values, expected {dim}: "
                                                    "truncated line, or a wrong header")
                try:
                    vec = np.array(fields[-dim:], dtype=np.float32)
                except ValueError as e:
                    raise WordVectorFileError(path, f"line {lineno}: {e}: not a text vector file") from None
                # A few GloVe files have words with spaces: all but the last dim fields.
                word = b" ".join(fields[:-dim])
                if kept.wants(word, keep):
                    kept.add(word, vec.tobytes())
            elif line.count(b" ") < dim:
                raise WordVectorFileError(path, f"line {lineno} has fewer than {dim} values: truncated line, or "
                                                "a wrong header")
    if header and count is None:
        raise WordVectorFileError(path, "is empty")
    if header and n != count:
        raise WordVectorFileError(path, f"holds {n} vectors but its header announces {count}: truncated, or a "
                                        "wrong header")
    if dim is None:
        raise WordVectorFileError(path, "holds no vectors")
    return kept.table(path)


# ---------------------------------------------------------------------------------- fastText
_FT_ARGS = struct.Struct("<12id")  # dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate t
_FT_DICT = struct.Struct("<3iqq")  # size nwords nlabels ntokens pruneidx_size


class FastTextModel:
    """The input matrix of a fastText model and its dictionary (all words, or those asked for).

    ``vector(word)`` is what fastText's ``getWordVector`` and gensim return: the mean of the
    word's own row (when it is in the vocabulary) and its character n-gram rows.
    """

    def __init__(self, path: str, dim: int, minn: int, maxn: int, bucket: int, nwords: int,
                 word_ids: Dict[str, int], rows: Callable[[List[int]], np.ndarray]):
        self.path, self.dim, self.minn, self.maxn, self.bucket, self.nwords = path, dim, minn, maxn, bucket, nwords
        self.word_ids, self._rows = word_ids, rows

    def ngram_rows(self, word: str) -> List[int]:
        if self.bucket == 0 or self.maxn == 0:
            return []
        from gensim.models.fasttext import ft_ngram_hashes  # fastText's hash, as gensim computes it

        return [self.nwords + h for h in ft_ngram_hashes(word, self.minn, self.maxn, self.bucket)]

    def in_vocabulary(self, word: str) -> bool:
        return word in self.word_ids

    def vector(self, word: str, subwords: bool = True) -> np.ndarray:
        """KeyError for a word outside the vocabulary when ``subwords`` is off or it has no n-grams."""
        own = [self.word_ids[word]] if word in self.word_ids else []
        if not own and not subwords:
            raise KeyError(word)
        rows = own + self.ngram_rows(word)
        if not rows:
            raise KeyError(word)
        return self._rows(rows).astype(np.float64).mean(axis=0)


def read_fasttext(path: str, words: Optional[Iterable[str]] = None) -> FastTextModel:
    """A fastText ``.bin`` model (also gzipped). Plain files are memory-mapped; with ``words``
    only those words' rows (own and n-gram) are read from a gzipped one."""
    words = None if words is None else list(words)
    keep = _keep_fn(words)
    gz = _is_gzip(path)
    size = None if gz else os.path.getsize(path)
    with _read_errors(path), _open(path) as f:
        r = _Reader(f, path)
        magic, version = struct.unpack("<2i", r.take(8, "the fastText header"))
        if magic != FASTTEXT_MAGIC:
            raise WordVectorFileError(path, f"not a fastText .bin model: magic number {magic}, expected "
                                            f"{FASTTEXT_MAGIC} (models saved before 2017 are not supported)")
        if version not in FASTTEXT_VERSIONS:
            raise WordVectorFileError(path, f"fastText format version {version}; known: {FASTTEXT_VERSIONS}")
        (dim, ws, epoch, min_count, neg, word_ngrams, loss, model, bucket, minn, maxn, _lr_rate, t) = \
            _FT_ARGS.unpack(r.take(_FT_ARGS.size, "the fastText arguments"))
        problems = [k for k, ok in (
            ("dim", 1 <= dim <= MAX_DIM), ("ws", ws >= 0), ("epoch", epoch >= 0), ("minCount", min_count >= 0),
            ("neg", neg >= 0), ("wordNgrams", word_ngrams >= 0), ("loss", 1 <= loss <= 4), ("model", 1 <= model <= 3),
            ("bucket", bucket >= 0), ("minn/maxn", 0 <= minn <= 64 and 0 <= maxn <= 64), ("t", np.isfinite(t)))
            if not ok]
        if problems:
            raise WordVectorFileError(path, f"implausible fastText arguments {problems} (dim {dim}, bucket {bucket}, "
                                            f"minn {minn}, maxn {maxn}): damaged file")
        n_entries, nwords, nlabels, ntokens, prune = _FT_DICT.unpack(r.take(_FT_DICT.size, "the dictionary header"))
        if n_entries < 0 or nwords < 0 or nlabels < 0 or nwords + nlabels != n_entries or ntokens < 0:
            raise WordVectorFileError(path, f"dictionary header of {n_entries} entries = {nwords} words + {nlabels} "
                                            "labels does not add up: damaged file")
        if nlabels:
            raise WordVectorFileError(path, f"a supervised fastText model ({nlabels} labels): use an unsupervised "
                                            "model (word vectors), e.g. crawl-300d-2M-subword.bin")
        if prune > 0:
            raise WordVectorFileError(path, "a pruned (quantized) fastText model: use the full .bin model")
        if size is not None and n_entries * 10 > size:
            raise WordVectorFileError(path, f"the dictionary announces {n_entries} words, more than a file of "
                                            f"{size} bytes can hold: damaged file")
        word_ids: Dict[str, int] = {}
        for i in range(n_entries):
            word = r.until(b"\x00", MAX_WORD_BYTES, f"word {i + 1} of {n_entries} of the dictionary")
            _count, kind = struct.unpack("<qb", r.take(9, f"dictionary entry {i + 1}"))
            if kind != 0:
                raise WordVectorFileError(path, f"dictionary entry {i + 1} has type {kind}, expected 0 (word): "
                                                "damaged file")
            if keep is None or word in keep:
                word_ids.setdefault(word.decode("utf-8", "backslashreplace"), i)
        quant, = struct.unpack("<?", r.take(1, "the matrix header"))
        if quant:
            raise WordVectorFileError(path, "a quantized fastText model (.ftz): use the full .bin model")
        m, n = struct.unpack("<2q", r.take(16, "the matrix header"))
        if n != dim or m != nwords + bucket:
            raise WordVectorFileError(path, f"input matrix of {m} x {n}, expected (words + buckets = "
                                            f"{nwords} + {bucket}) x {dim}: damaged file")
        start = r.offset + r.pos
        if size is not None:
            need = start + m * n * 4 + 17
            if size < need:
                raise WordVectorFileError(path, f"has {size} bytes, its header's input matrix needs {need}: truncated")
            matrix = np.memmap(path, dtype="<f4", mode="r", offset=start, shape=(m, n))
            with open(path, "rb") as g:
                g.seek(start + m * n * 4)
                out_quant, m2, n2 = struct.unpack("<?2q", g.read(17))
            if out_quant or size != start + m * n * 4 + 17 + m2 * n2 * 4:
                raise WordVectorFileError(path, f"has {size} bytes, but its matrices need "
                                                f"{start + m * n * 4 + 17 + max(m2 * n2, 0) * 4}: truncated or damaged")
            return FastTextModel(path, dim, minn, maxn, bucket, nwords, word_ids, lambda rows: matrix[rows])
        # gzipped: one pass over the matrix, keeping the rows the asked-for words need.
        model = FastTextModel(path, dim, minn, maxn, bucket, nwords, word_ids, None)
        rows_per_read = max(1, CHUNK // (4 * n))
        blocks, kept = [], {}
        wanted = None
        if words is not None:
            wanted = set(word_ids.values())
            for w in words:
                wanted.update(model.ngram_rows(w))
        for first in range(0, m, rows_per_read):
            k = min(rows_per_read, m - first)
            block = np.frombuffer(r.take(k * n * 4, f"the input matrix (row {first} of {m})"), "<f4").reshape(k, n)
            if wanted is None:
                blocks.append(block)
            else:
                kept.update((i, block[i - first].copy()) for i in wanted if first <= i < first + k)
    if wanted is None:
        matrix = np.concatenate(blocks)
        model._rows = lambda rows: matrix[rows]
    else:
        model._rows = lambda rows: np.stack([kept[i] for i in rows])
    return model
