# Copyright (c) CaGNet-D2 contributors.
"""The built-in dataset: deterministic generation, looks decoded from names, variants, and the
pretrained trunk that every built-in config starts from."""
import hashlib
import json
import os
import pickle

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog

from cagnet.data import synthetic_scenes as scenes
from cagnet.data.datasets.register_synthetic_scenes import (
    CLASS_SET,
    apply_synthetic_scenes_variant,
    synthetic_scenes_class_set,
)
from cagnet.modeling import CaGNet

from conftest import TINY_CONFIG, load_cpu_config, run_tool


def _tree_digest(root):
    h = hashlib.sha256()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            path = os.path.join(dirpath, name)
            h.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def test_generation_is_deterministic_by_seed(tmp_path):
    a = scenes.generate(str(tmp_path / "a"), seed=3, num_train=6, num_val=2, image_size=48)
    b = scenes.generate(str(tmp_path / "b"), seed=3, num_train=6, num_val=2, image_size=48)
    c = scenes.generate(str(tmp_path / "c"), seed=4, num_train=6, num_val=2, image_size=48)
    assert _tree_digest(a) == _tree_digest(b)
    assert _tree_digest(a) != _tree_digest(c)
    with open(os.path.join(a, "meta.json")) as f:
        meta = json.load(f)
    assert meta["version"] == scenes.VERSION and meta["classes"] == list(scenes.CLASS_NAMES)


def test_scenes_hold_stuff_and_things_with_context():
    looks = scenes.world_looks()
    rng = np.random.default_rng(0)
    image, label, ctx = scenes.render_scene(rng, 96, looks, with_context=True)
    again = scenes.render_scene(np.random.default_rng(0), 96, looks)
    np.testing.assert_array_equal(image, again[0])  # the context costs no random draws
    assert image.shape == (96, 96, 3) and image.dtype == np.uint8 and label.shape == (96, 96)
    things = [i for i, n in enumerate(scenes.CLASS_NAMES) if n in scenes.THINGS]
    on_things = np.isin(label, things)
    assert on_things.any() and (~on_things).any()
    # Every thing pixel belongs to an instance of its class, with a distance to its rim.
    assert ((ctx["instance"] >= 0) == on_things).all()
    for j, inst in enumerate(ctx["instances"]):
        m = ctx["instance"] == j
        if m.any():
            assert set(np.unique(label[m])) == {inst["class"]}
            assert scenes.CLASS_NAMES[inst["ground"]] in scenes.STUFF
    assert ctx["boundary_distance"][on_things].min() > 0.9 and 0 <= ctx["lighting"] < len(scenes.LIGHTINGS)


def test_a_look_depends_on_its_name_only():
    full = dict(zip(scenes.CLASS_NAMES, scenes.world_looks()))
    subset = ("road", "tiger", "sky", "car")
    for name, look in zip(subset, scenes.world_looks(subset)):
        if name in scenes.THINGS:  # a habitat is over the vocabulary's grounds
            look = type(look)(**{**look.__dict__, "habitat": full[name].habitat})
        assert look == full[name]
    # Names that GloVe puts close together look more alike than names it puts apart.
    v = {n: scenes.look_vector(full[n]) for n in ("car", "truck", "banana")}
    assert np.linalg.norm(v["car"] - v["truck"]) < np.linalg.norm(v["car"] - v["banana"])
    # Things stand where their names say: a boat on water more often than on the road.
    grounds = [n for n in scenes.STUFF if n != "sky"]
    boat = dict(zip(grounds, full["boat"].habitat))
    assert abs(sum(full["boat"].habitat) - 1) < 1e-9 and boat["water"] > boat["snow"]


def test_unseen_split_variants_are_checked():
    cs = synthetic_scenes_class_set(["tiger", "road"])
    assert [cs.class_names[i] for i in cs.unseen_ids] == ["road", "tiger"] and cs.key == CLASS_SET.key
    assert synthetic_scenes_class_set([]) is CLASS_SET
    with pytest.raises(ValueError, match="unicorn"):
        synthetic_scenes_class_set(["unicorn"])


def test_variant_registers_and_trains_a_few_iterations(tmp_path):
    """Another seed, size and unseen split through config keys, as a user passes them."""
    unseen = ["grass", "dog", "bus", "apple", "kite"]
    opts = [
        "DATASETS.SYNTHETIC_SCENES.SEED", "5", "DATASETS.SYNTHETIC_SCENES.NUM_TRAIN", "8",
        "DATASETS.SYNTHETIC_SCENES.NUM_VAL", "4", "DATASETS.SYNTHETIC_SCENES.IMAGE_SIZE", "48",
        "DATASETS.SYNTHETIC_SCENES.UNSEEN_CLASSES", str(unseen),
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", "2",
        "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", "1", "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", "1", "MODEL.CAGNET.FINETUNE_PIXELS", "64",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "run"),
    ]
    out = run_tool("train_net.py", "--config-file", TINY_CONFIG, *opts)
    assert "Zero-shot results on synthetic_scenes_val" in out
    with open(tmp_path / "run" / "inference" / "synthetic_scenes_val" / "zs_sem_seg_results.json") as f:
        res = json.load(f)
    assert np.isfinite(res["mIoU"])
    data_root = os.environ["DETECTRON2_DATASETS"]
    variant = os.path.join(data_root, "synthetic_scenes_seed5_8-4_48px")
    assert len(os.listdir(os.path.join(variant, "images", "train"))) == 8
    # The same keys in this process: the split reaches the metadata and the model.
    cfg = load_cpu_config(TINY_CONFIG)
    cfg.merge_from_list(opts)
    try:
        apply_synthetic_scenes_variant(cfg)
        meta = MetadataCatalog.get("synthetic_scenes_train")
        assert [meta.stuff_classes[i] for i in meta.unseen_class_ids] == sorted(unseen, key=scenes.CLASS_NAMES.index)
        assert len(DatasetCatalog.get("synthetic_scenes_train")) == 8
        model = CaGNet(cfg)
        assert sorted(model.unseen_ids.tolist()) == sorted(scenes.CLASS_NAMES.index(n) for n in unseen)
    finally:  # back to the shipped registration for the other tests
        cfg.merge_from_list(["DATASETS.SYNTHETIC_SCENES.SEED", "0", "DATASETS.SYNTHETIC_SCENES.NUM_TRAIN", "2000",
                             "DATASETS.SYNTHETIC_SCENES.NUM_VAL", "300", "DATASETS.SYNTHETIC_SCENES.IMAGE_SIZE", "96",
                             "DATASETS.SYNTHETIC_SCENES.UNSEEN_CLASSES", "[]"])
        from cagnet.data.datasets.register_synthetic_scenes import register_synthetic_scenes, variant_root, GENERATION

        register_synthetic_scenes(variant_root(GENERATION), replace=True)


def _loaded_keys(model, path):
    checkpointer = DetectionCheckpointer(model)
    incompatible = checkpointer._load_model(checkpointer._load_file(checkpointer.path_manager.get_local_path(path)))
    return incompatible


def test_shipped_pretrained_trunk_loads_like_r101_pkl():
    cfg = load_cpu_config(TINY_CONFIG)
    weights = cfg.MODEL.WEIGHTS
    assert weights.startswith("cagnet://") and weights.endswith(".pkl")
    model = CaGNet(cfg)
    incompatible = _loaded_keys(model, weights)
    trunk = [k for k in model.state_dict() if k.startswith("backbone.resnet.")]
    assert trunk and not [k for k in incompatible.missing_keys if k.startswith("backbone.resnet.")]
    assert not incompatible.unexpected_keys and not incompatible.incorrect_shapes
    # Everything else (ASPP-L, CM, G, D, C) starts fresh, as on top of R-101.pkl.
    assert any(k.startswith("backbone.aspp.") for k in incompatible.missing_keys)
    from cagnet.utils.path_handler import resolve_package_path

    with open(resolve_package_path(weights), "rb") as f:
        data = pickle.load(f)
    assert data["matching_heuristics"] and data["provenance"]["renderer_version"] == scenes.VERSION
    for k, v in data["model"].items():
        np.testing.assert_array_equal(model.state_dict()["backbone.resnet." + k].numpy(), v)


def test_every_builtin_config_starts_from_the_pretrained_trunk():
    folder = os.path.dirname(TINY_CONFIG)
    for name in sorted(os.listdir(folder)):
        cfg = load_cpu_config(os.path.join(folder, name))
        if cfg.MODEL.SELF_TRAINING.ENABLED:
            continue  # continues its base run's model
        assert cfg.MODEL.WEIGHTS == load_cpu_config(TINY_CONFIG).MODEL.WEIGHTS, name


def test_pretrain_tool_writes_a_trunk_that_loads(tmp_path):
    out = tmp_path / "trunk.pkl"
    run_tool("dev/pretrain_backbone.py", "--config-file", TINY_CONFIG, "--output", str(out),
             "PRETRAIN.MAX_ITER", "3", "PRETRAIN.NUM_IMAGES", "8", "PRETRAIN.IMS_PER_BATCH", "2",
             "PRETRAIN.NUM_STUFF", "6", "PRETRAIN.NUM_TOP_STUFF", "1", "PRETRAIN.NUM_THINGS", "10",
             "OUTPUT_DIR", str(tmp_path / "log"))
    cfg = load_cpu_config(TINY_CONFIG)
    model = CaGNet(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    incompatible = _loaded_keys(model, str(out))
    assert not [k for k in incompatible.missing_keys if k.startswith("backbone.resnet.")]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(k.startswith("backbone.resnet.") for k in changed)
    assert os.path.isfile(tmp_path / "log" / "last_checkpoint")  # resumable
