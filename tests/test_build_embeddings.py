# Copyright (c) CaGNet-D2 contributors.
"""tools/build_embeddings.py on tiny word2vec (binary and text) and fastText models made here:
the paper's recipe (mean of a name's words per source, fastText then word2vec, L2-normalised)
computed by hand, and clear errors for unknown words."""
import importlib.util
import os

import numpy as np
import pytest

from cagnet.data.catalog import CLASS_SETS, ZeroShotClassSet
from cagnet.data.embeddings import build_class_embeddings, load_class_embeddings, load_word_vectors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [
    "the potted plant stands by the sheep".split(),
    "a concrete wall and a sheep".split(),
    "the plant and the wall".split(),
] * 5
KEY = "tiny_embedding_test"
CLASS_SET = ZeroShotClassSet(KEY, ("pottedplant", "sheep", "wall-concrete"), ("sheep",),
                             aliases={"pottedplant": "potted plant"})


def _tool():
    # Loaded by path: a package named "tools" elsewhere on sys.path must not shadow ours.
    path = os.path.join(REPO, "tools", "build_embeddings.py")
    spec = importlib.util.spec_from_file_location("build_embeddings_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from gensim.models import FastText, Word2Vec
    from gensim.models.fasttext import save_facebook_model

    d = tmp_path_factory.mktemp("vectors")
    w2v = Word2Vec(SENTENCES, vector_size=8, min_count=1, window=2, seed=1, workers=1, epochs=2)
    w2v.wv.save_word2vec_format(str(d / "w2v.bin"), binary=True)
    w2v.wv.save_word2vec_format(str(d / "w2v.txt"), binary=False)
    ft = FastText(SENTENCES, vector_size=6, min_count=1, window=2, min_n=3, max_n=4, bucket=20000, seed=1,
                  workers=1, epochs=2)
    save_facebook_model(ft, str(d / "ft.bin"))
    return {"w2v": w2v.wv, "ft": ft.wv, "dir": d}


@pytest.fixture
def tiny_class_set(monkeypatch):
    monkeypatch.setitem(CLASS_SETS, KEY, CLASS_SET)  # removed again after the test
    return CLASS_SET


def _by_hand(word_lists, *sources):
    rows = []
    for words in word_lists:
        row = np.concatenate([np.mean([np.asarray(src[w], np.float64) for w in words], axis=0) for src in sources])
        rows.append(row / np.linalg.norm(row))
    return np.stack(rows)


WORDS = [["potted", "plant"], ["sheep"], ["wall", "concrete"]]


def test_fasttext_then_word2vec_binary(models, tiny_class_set, tmp_path):
    d = models["dir"]
    written = _tool().main(["--class-set", KEY, "--source", f"fasttext:{d / 'ft.bin'}", "--source",
                            f"word2vec:{d / 'w2v.bin'}", "--output-dir", str(tmp_path)])
    out = str(tmp_path / f"{KEY}_fasttext+word2vec.npz")
    assert written == {KEY: out}
    table = load_class_embeddings(out, expected_names=CLASS_SET.class_names)
    assert table["vectors"].shape == (3, 6 + 8) and table["vectors"].dtype == np.float32
    assert table["sources"] == [f"fasttext:{d / 'ft.bin'}", f"word2vec:{d / 'w2v.bin'}"]
    np.testing.assert_allclose(table["vectors"], _by_hand(WORDS, models["ft"], models["w2v"]), atol=1e-6)
    # fastText first: the first 6 dims are the fastText part (up to the common norm).
    ft_part = np.mean([models["ft"]["potted"], models["ft"]["plant"]], axis=0)
    cos = ft_part @ table["vectors"][0, :6] / np.linalg.norm(ft_part) / np.linalg.norm(table["vectors"][0, :6])
    assert cos == pytest.approx(1.0, abs=1e-6)
    with np.load(out) as data:
        assert [str(a) for a in data["aliases"]] == ["potted plant", "sheep", "wall concrete"]


def test_word2vec_text(models, tiny_class_set, tmp_path):
    out = str(tmp_path / "table.npz")
    _tool().main(["--class-set", KEY, "--source", f"word2vec:{models['dir'] / 'w2v.txt'}", "--output", out])
    vectors = load_class_embeddings(out)["vectors"]
    np.testing.assert_allclose(vectors, _by_hand(WORDS, models["w2v"]), atol=1e-6)
    # Text and binary files give the same table; a rerun leaves the file alone.
    src = load_word_vectors(f"word2vec:{models['dir'] / 'w2v.bin'}")
    np.testing.assert_allclose(build_class_embeddings(CLASS_SET.class_names, [src], CLASS_SET.aliases), vectors,
                               atol=1e-6)
    mtime = os.stat(out).st_mtime_ns
    _tool().main(["--class-set", KEY, "--source", f"word2vec:{models['dir'] / 'w2v.txt'}", "--output", out])
    assert os.stat(out).st_mtime_ns == mtime


def test_unknown_word_names_the_class(models, monkeypatch, tmp_path):
    d = models["dir"]
    bad = ZeroShotClassSet("tiny_bad_words", ("sheep", "unicornfish"), ("sheep",))
    monkeypatch.setitem(CLASS_SETS, bad.key, bad)
    for source in (f"word2vec:{d / 'w2v.bin'}", f"fasttext:{d / 'ft.bin'}"):
        # fastText could compose a vector from character n-grams; a class word must be known.
        with pytest.raises(SystemExit, match="unicornfish"):
            _tool().main(["--class-set", bad.key, "--source", source, "--output", str(tmp_path / "x.npz")])
    assert not os.path.exists(tmp_path / "x.npz")
    with pytest.raises(KeyError, match="Class 'unicornfish'"):
        build_class_embeddings(bad.class_names, [load_word_vectors(f"word2vec:{d / 'w2v.txt'}")])
    # An alias on the command line fixes it.
    out = str(tmp_path / "fixed.npz")
    _tool().main(["--class-set", bad.key, "--source", f"word2vec:{d / 'w2v.bin'}", "--alias", "unicornfish=wall",
                  "--output", out])
    np.testing.assert_allclose(load_class_embeddings(out)["vectors"][1], _by_hand([["wall"]], models["w2v"])[0],
                               atol=1e-6)
