# Copyright (c) CaGNet-D2 contributors.
"""Tables of precomputed vectors, one per class name: the ``table:FILE`` source, and the checked
reading of ``.npz`` files that class-embedding tables share.

A table source brings vectors made by any text encoder (CLIP, a sentence encoder, ...) elsewhere:

* ``.npz`` with ``names`` (K,) str and ``vectors`` (K, d) (the format of our own tables);
* ``.npy`` (K, d) with the names beside it, one per line, in the same path with ``.txt``
  (``clip.npy`` + ``clip.txt``);
* ``.csv``: one row ``name,v1,...,vd`` per class (a first row whose values are not numbers is
  a header and skipped; names with commas are quoted).

Its names must be exactly the class set's names: a missing or an extra name is an error that
lists them, so that a table made for another class list or spelling is never used by position.
"""
import csv
import os
import zipfile
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["VectorTableError", "read_npz", "read_vector_table", "TableSource"]

# Class tables are small (171 x 600 floats is 0.4 MB); this bounds what a damaged or hostile
# archive can make us allocate.
MAX_TABLE_BYTES = 1 << 30


class VectorTableError(ValueError):
    def __init__(self, path: str, what: str):
        super().__init__(f"{path}: {what}")
        self.path = path


def read_npz(path: str, required: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file (no pickles), with the path in every error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
        if total > MAX_TABLE_BYTES:
            raise VectorTableError(path, f"its arrays would take {total} bytes, more than the {MAX_TABLE_BYTES} "
                                         "a vector table may have")
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except VectorTableError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise VectorTableError(path, f"not a readable .npz archive ({type(e).__name__}: {e}): truncated or "
                                     "damaged; rebuild it (tools/build_embeddings.py)") from None
    missing = sorted(set(required) - set(arrays))
    if missing:
        raise VectorTableError(path, f"lacks the arrays {missing} (it has {sorted(arrays)})")
    return arrays


def _check(path: str, names: Sequence[str], vectors: np.ndarray) -> Tuple[list, np.ndarray]:
    names = [str(n) for n in names]
    if vectors.ndim != 2 or vectors.shape[0] != len(names) or vectors.shape[1] < 1:
        raise VectorTableError(path, f"vectors of shape {vectors.shape} for {len(names)} names: expected "
                                     f"({len(names)}, d)")
    if not np.issubdtype(vectors.dtype, np.number):
        raise VectorTableError(path, f"vectors of type {vectors.dtype}: expected numbers")
    vectors = vectors.astype(np.float32)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise VectorTableError(path, f"names occur more than once: {dup}")
    bad = [names[i] for i in np.flatnonzero(~np.isfinite(vectors).all(axis=1))]
    if bad:
        raise VectorTableError(path, f"non-finite values in the vectors of {bad[:10]}")
    zero = [names[i] for i in np.flatnonzero(np.linalg.norm(vectors, axis=1) == 0)]
    if zero:
        raise VectorTableError(path, f"zero vectors for {zero[:10]}")
    return names, vectors


def _read_csv(path: str) -> Tuple[list, np.ndarray]:
    names, rows = [], []
    with open(path, newline="", encoding="utf-8") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            try:
                values = [float(v) for v in row[1:]]
            except ValueError:
                if lineno == 1 and not names:
                    continue  # a header row
                raise VectorTableError(path, f"line {lineno}: values that are not numbers (row {row[:3]}...)") from None
            if rows and len(values) != len(rows[0]):
                raise VectorTableError(path, f"line {lineno} has {len(values)} values, the first row {len(rows[0])}")
            names.append(row[0].strip())
            rows.append(values)
    if not rows:
        raise VectorTableError(path, "holds no rows 'name,v1,...,vd'")
    return names, np.asarray(rows, dtype=np.float64)


def read_vector_table(path: str) -> Tuple[list, np.ndarray]:
    """(names, (K, d) float32) of a table file in one of the module's formats."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Vector table {path!r} does not exist")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npz":
        data = read_npz(path, required=("names", "vectors"))
        return _check(path, data["names"].tolist(), data["vectors"])
    if ext == ".npy":
        names_file = os.path.splitext(path)[0] + ".txt"
        if not os.path.isfile(names_file):
            raise VectorTableError(path, f"a .npy table needs its names, one per line, in {names_file}")
        try:
            vectors = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as e:
            raise VectorTableError(path, f"not a readable .npy array ({type(e).__name__}: {e}): truncated or "
                                         "damaged") from None
        with open(names_file, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
        if vectors.ndim == 2 and len(names) != len(vectors):
            raise VectorTableError(path, f"{len(vectors)} vectors but {len(names)} names in {names_file}")
        return _check(path, names, vectors)
    if ext == ".csv":
        return _check(path, *_read_csv(path))
    raise VectorTableError(path, "unknown table format: expected .npz (names, vectors), .npy + .txt names, or .csv")


class TableSource:
    """``table:FILE``: one precomputed vector per class name."""

    def __init__(self, path: str):
        self.path = path
        self.name = f"table:{path}"
        self.names, self.vectors = read_vector_table(path)
        self.dim = self.vectors.shape[1]

    def embed_classes(self, names: Sequence[str], aliases: Optional[Mapping[str, str]] = None) -> np.ndarray:
        """Rows for ``names`` in their order; the table must hold exactly these names."""
        own, wanted = set(self.names), set(names)
        missing = [n for n in names if n not in own]
        extra = [n for n in self.names if n not in wanted]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)} class name(s) {missing}")
            if extra:
                parts.append(f"{len(extra)} name(s) that are not classes of the set {extra}")
            raise VectorTableError(self.path, "; ".join(parts) + f". It must hold exactly the {len(names)} class "
                                              "names (tools/build_embeddings.py --class-set KEY --print-names)")
        row = {n: i for i, n in enumerate(self.names)}
        return self.vectors[[row[n] for n in names]].astype(np.float64)
