# Copyright (c) CaGNet-D2 contributors.
"""Adding classes to a trained model (cagnet.vocabulary.add_classes, tools/add_classes.py), evaluation
by class name, and the held-out-class experiment (tools/analysis/add_class_experiment.py) on a tiny run."""
import copy
import json

import numpy as np
import pytest
import torch

from cagnet.data.datasets.register_synthetic_scenes import CLASS_SET
from cagnet.modeling import build_model_from_checkpoint
from cagnet.vocabulary.add_classes import (
    class_embeddings_for,
    extend_classes,
    finetune_on_generated,
    fit_rows_on_real_features,
)
from cagnet.vocabulary.class_names import LogitsByClassName, labels_to_model_classes
from cagnet.utils.cli import load_config, run_main

from _tool_helpers import lively_model, load_tool, save_lively_checkpoint, tiny_config_file, single_thread  # noqa: F401
from conftest import TINY_CONFIG


class _FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, batched_inputs):
        return [{"sem_seg": self.logits.clone()} for _ in batched_inputs]


def test_logits_by_class_name_reorders_selects_and_blanks():
    logits = torch.arange(3.0).view(3, 1, 1).expand(3, 2, 2)  # model classes a, b, c score 0, 1, 2
    model = _FixedLogits(logits).eval()
    out = LogitsByClassName(model, ["c", "x", "a"], model_names=["a", "b", "c"])([{}])[0]["sem_seg"]
    assert out.shape == (3, 2, 2)
    assert torch.equal(out[0], logits[2]) and torch.equal(out[2], logits[0])
    assert (out[1] == torch.finfo(out.dtype).min).all()  # "x" unknown to the model: never the arg-max
    assert (out.argmax(0) == 0).all()  # "b" (model's 1) is not a dataset class: left out
    wrapped = LogitsByClassName(model, ["a", "b", "c"], model_names=["a", "b", "c"])
    assert not wrapped.training  # wrapping keeps the model's mode
    with pytest.raises(ValueError, match="share no name"):
        LogitsByClassName(model, ["y"], model_names=["a", "b", "c"])


def test_dataset_without_a_class_ignores_its_pixels(tiny_scenes, tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from cagnet.data.dataset_mapper import training_label_lut
    from cagnet.data.embeddings import load_class_embeddings
    from cagnet.vocabulary.class_names import register_without_classes

    base = MetadataCatalog.get("synthetic_scenes_mini_val")
    meta = register_without_classes("synthetic_scenes_mini_val", "mini_val_minus_test", ["cow"], str(tmp_path))
    names = list(base.stuff_classes)
    h = names.index("cow")
    assert list(meta.stuff_classes) == names[:h] + names[h + 1:]
    assert [meta.stuff_classes[i] for i in meta.unseen_class_ids] == [names[i] for i in base.unseen_class_ids]
    lut = list(meta.label_lut)
    assert lut[h] == 255 and lut[h - 1] == h - 1 and lut[h + 1] == h and lut[255] == 255
    train_lut = training_label_lut([meta])  # what the mapper applies: also unseen -> ignore
    assert train_lut[h] == 255 and all(train_lut[names.index(n)] == 255 for n in (names[i] for i in base.unseen_class_ids))
    table = load_class_embeddings(meta.class_embeddings_file, expected_names=meta.stuff_classes)
    full = load_class_embeddings(base.class_embeddings_file)
    assert (table["vectors"] == full["vectors"][[i for i in range(len(names)) if i != h]]).all()
    assert DatasetCatalog.get("mini_val_minus_test") == DatasetCatalog.get("synthetic_scenes_mini_val")
    # label files of the full dataset, read with a model's class list (by name)
    model_names = list(meta.stuff_classes)[::-1]
    mapped = labels_to_model_classes(np.array([[h, h + 1, 0, 255]]), "synthetic_scenes_mini_val", model_names)
    assert mapped.tolist() == [[255, model_names.index(names[h + 1]), model_names.index(names[0]), 255]]


@pytest.fixture
def model(tiny_scenes):
    return lively_model(seed=2)


def test_extend_classes_keeps_old_outputs_and_adds_an_unseen_class(model):
    k, d = model.num_classes, model.class_embeddings.shape[1]
    image = torch.rand(3, 40, 48, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        before = model([{"image": image}])[0]["sem_seg"]
    old_weight = model.heads.classifier.weight.clone()
    new_vec = torch.nn.functional.normalize(torch.randn(1, d), dim=1)
    ids = extend_classes(model, ["green striped"], new_vec)
    assert ids == [k] and model.num_classes == k + 1 and model.heads.num_classes == k + 1
    assert model.class_names[-1] == "green striped" and k in model.unseen_ids.tolist()
    assert torch.equal(model.class_embeddings[-1], new_vec[0])
    assert torch.equal(model.heads.classifier.weight[:k], old_weight)
    new_row = model.heads.classifier.weight[k]
    assert torch.isfinite(new_row).all() and new_row.norm() > 0
    with torch.no_grad():
        after = model.eval()([{"image": image}])[0]["sem_seg"]
    assert after.shape[0] == k + 1 and torch.equal(after[:k], before)
    with pytest.raises(ValueError, match="already"):
        extend_classes(model, ["sky"], new_vec)
    with pytest.raises(ValueError, match="embeddings"):
        extend_classes(model, ["violet"], torch.randn(1, d + 1))


def test_finetuning_trains_only_generator_and_classifier(model):
    extend_classes(model, ["green striped"], torch.nn.functional.normalize(torch.randn(1, 50), dim=1))
    state = copy.deepcopy(model.state_dict())
    history = finetune_on_generated(model, iters=3, lr=1e-3, pixels=512, log_period=0)
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    now = model.state_dict()
    for key, value in state.items():
        same = torch.equal(value, now[key])
        if key.startswith(("backbone.", "contextual_module.", "heads.discriminator.")) or "_ids" in key:
            assert same, f"{key} changed"
        if key.startswith(("generator.mlp.0.", "heads.shared.", "heads.classifier.")):
            assert not same, f"{key} did not learn"
    # only the new row learns: every old class keeps its logits exactly
    k = model.num_classes - 1
    state = copy.deepcopy(model.state_dict())
    finetune_on_generated(model, iters=3, lr=1e-3, pixels=512, trainable_rows=[k], log_period=0)
    now = model.state_dict()
    assert torch.equal(now["heads.classifier.weight"][:k], state["heads.classifier.weight"][:k])
    assert torch.equal(now["heads.classifier.bias"][:k], state["heads.classifier.bias"][:k])
    assert torch.equal(now["heads.shared.weight"], state["heads.shared.weight"])
    assert not torch.equal(now["heads.classifier.weight"][k], state["heads.classifier.weight"][k])
    assert not torch.equal(now["generator.mlp.0.weight"], state["generator.mlp.0.weight"])
    old_rows = model.heads.classifier.weight[:k].detach().clone()
    finetune_on_generated(model, iters=1, lr=1e-3, pixels=512, log_period=0)  # the row mask is gone again
    assert not torch.equal(model.heads.classifier.weight[:k], old_rows)


def test_fitting_a_row_on_real_features_changes_only_that_row(model):
    torch.manual_seed(0)
    k = model.num_classes
    extend_classes(model, ["green striped"], torch.randn(1, model.class_embeddings.shape[1]), init="mean")
    before_w = model.heads.classifier.weight.detach().clone()
    before_b = model.heads.classifier.bias.detach().clone()
    shared = model.heads.shared.weight.detach().clone()
    # real features: the new class is a separate cluster; the others keep their own labels
    features = torch.randn(600, model.heads.shared.in_channels)
    labels = torch.randint(0, k, (600,))
    labels[:200] = k
    features[:200] += 5.0
    fit_rows_on_real_features(model, [k], features, labels, iters=200, lr=1e-2)
    w, b = model.heads.classifier.weight.detach(), model.heads.classifier.bias.detach()
    assert torch.equal(w[:k], before_w[:k]) and torch.equal(b[:k], before_b[:k])
    assert torch.equal(model.heads.shared.weight, shared)
    with torch.no_grad():
        pred = model.heads.classify(features).argmax(1)
    assert (pred[:200] == k).float().mean() > 0.9  # the row learned its class
    assert (pred[200:] == k).float().mean() < 0.1


def test_new_embeddings_come_from_the_models_source(model):
    table, names = model.class_embeddings, model.class_names  # the shipped GloVe-50 table
    new = class_embeddings_for(["green striped"], ["glove50"], table, names)
    assert new.shape == (1, 50) and torch.allclose(new.norm(dim=1), torch.ones(1))
    with pytest.raises(ValueError, match="50-d but the model's class embeddings are 60-d"):
        class_embeddings_for(["green striped"], ["glove50"], torch.zeros(len(names), 60), names, check_source=False)
    with pytest.raises(ValueError, match="not built from"):
        class_embeddings_for(["green striped"], ["glove50"], table.roll(1, dims=0), names)


def test_add_classes_tool_errors_are_one_line(tiny_scenes, tmp_path, capsys):
    weights = tmp_path / "model.pth"
    save_lively_checkpoint(weights, seed=3)
    tool = load_tool("add_classes")

    def run(names):  # what `python tools/add_classes.py ...` does: sys.exit(run_main(main))
        argv = ["--config-file", tiny_config_file(tmp_path), "--weights", str(weights), "--names", names,
                "--output", str(tmp_path / "plus.pth"), "--iters", "1"]
        assert run_main(lambda: tool.main(argv)) == 2
        return capsys.readouterr().err

    err = run("green xqzvbnm")
    assert err.startswith("error: Class 'green xqzvbnm': word 'xqzvbnm' is not in the vocabulary of 'glove50'")
    assert err.count("\n") == 1 and not (tmp_path / "plus.pth").exists()
    weights.write_bytes(weights.read_bytes()[:1000])  # a damaged checkpoint: one line naming it
    err = run("green striped")
    assert err.startswith(f"error: {weights} (1000 bytes) cannot be read as a checkpoint") and err.count("\n") == 1
    assert 'if __name__ == "__main__":\n    sys.exit(run_main(main))' in open(tool.__file__).read()


def test_add_classes_tool_writes_a_model_with_the_new_names(tiny_scenes, tmp_path):
    weights = tmp_path / "model.pth"
    save_lively_checkpoint(weights, seed=3)
    config = tiny_config_file(tmp_path)
    out = tmp_path / "plus.pth"
    rc = load_tool("add_classes").main(["--config-file", config, "--weights", str(weights), "--names",
                                        "green striped, purple spotted", "--output", str(out), "--iters", "2",
                                        "--pixels", "256"])
    assert rc == 0
    cfg = load_config(config)
    model = build_model_from_checkpoint(cfg, str(out))  # the checkpoint's own class list
    assert model.class_names[-2:] == ["green striped", "purple spotted"]
    k = len(model.class_names) - 2
    assert model.num_classes == k + 2 and model.heads.num_classes == k + 2
    assert {k, k + 1} <= set(model.unseen_ids.tolist())
    saved = torch.load(out, map_location="cpu", weights_only=True)
    assert saved["added_classes"]["embedding_sources"] == ["glove50"]


SMALL = [
    "DATASETS.TRAIN", '("synthetic_scenes_mini_train",)',
    "DATASETS.TEST", '("synthetic_scenes_mini_val",)',
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.MAX_ITER", "8",
    "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", "4",
    "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", "2",
    "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", "2",
    "DATALOADER.NUM_WORKERS", "0",
    "MODEL.ASPP_L.OUT_CHANNELS", "16",
    "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", "[32]",
    "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", "32",
    "MODEL.CAGNET.FINETUNE_PIXELS", "512",
]


def test_held_out_class_experiment_mechanism(tiny_scenes, tmp_path, capsys):
    holdout = "cow"  # present in the miniature train and val sets
    rc = load_tool("tools/analysis/add_class_experiment").main(
        ["--config-file", TINY_CONFIG, "--holdout", holdout, "--output-dir", str(tmp_path), "--add-iters", "30",
         "--add-lr", "1e-3", "--add-pixels", "1024", *SMALL, "OUTPUT_DIR", str(tmp_path / "unused")]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "IoU before" in printed and f"held-out class {holdout!r}" in printed
    result = json.loads((tmp_path / "add_class_experiment.json").read_text())
    summary = result["summary"]
    assert summary["holdout_iou_before"] == 0.0  # present in the ground truth, impossible to predict
    row = next(r for r in result["rows"] if r["class"] == holdout)
    assert row["group"] == "held out" and row["iou_after"] is not None

    before_file, after_file = tmp_path / "train" / "model_final.pth", tmp_path / "model_added.pth"
    cfg = load_config(TINY_CONFIG, SMALL)
    before = build_model_from_checkpoint(cfg, str(before_file))
    after = build_model_from_checkpoint(cfg, str(after_file))
    k = before.num_classes
    assert holdout not in before.class_names and k == len(CLASS_SET.class_names) - 1
    assert after.num_classes == k + 1 and after.class_names == before.class_names + [holdout]
    assert k in after.unseen_ids.tolist()
    # by default only the new row of C learns: everything else is bit-identical
    sd_before = torch.load(before_file, map_location="cpu", weights_only=True)["model"]
    sd_after = torch.load(after_file, map_location="cpu", weights_only=True)["model"]
    for key, value in sd_before.items():
        if key in ("heads.classifier.weight", "heads.classifier.bias"):
            assert torch.equal(value, sd_after[key][:k]), key
            assert not torch.equal(sd_after[key][k], sd_after[key][:k].mean(0)), "the new row did not learn"
        elif key not in ("class_embeddings", "unseen_ids"):
            assert torch.equal(value, sd_after[key]), key
    # before finetuning, extending keeps every old row of C
    extend_classes(before, [holdout], after.class_embeddings[k:])
    assert torch.equal(before.heads.classifier.weight[:k], sd_before["heads.classifier.weight"])
    assert torch.equal(before.heads.classifier.bias[:k], sd_before["heads.classifier.bias"])
    # the new model recognises generated features of the added class
    torch.manual_seed(0)
    with torch.no_grad():
        labels = torch.full((256,), k, dtype=torch.long)
        pred = after.heads.classify(after.generate_features(labels)).argmax(1)
    assert (pred == k).float().mean() > 0.5

    # --reuse-training refuses a model trained without another class (same size: it would load)
    with pytest.raises(SystemExit, match="trained on .*minus_cow.*minus_lemon"):
        load_tool("tools/analysis/add_class_experiment").main(
            ["--config-file", TINY_CONFIG, "--holdout", "lemon", "--output-dir", str(tmp_path),
             "--reuse-training", *SMALL, "OUTPUT_DIR", str(tmp_path / "unused")]
        )


def test_a_class_added_by_name_is_recognised_on_a_tiny_run(tmp_path):
    """The add-class tool on a small but real run (about a minute on 2 cores): the built-in config
    trained on 300 48-px scenes without "cow" (its pixels ignored, no row in C), then the class
    added by name. The class must be predicted where it is (IoU above 0), the other classes' mean
    IoU must stay within a few points, and a row fitted on real cow features must recognise it."""
    import os

    from cagnet.data.datasets.register_synthetic_scenes import MINI_GENERATION, register_synthetic_scenes

    generation = dict(MINI_GENERATION, num_train=300, num_val=40, image_size=48)
    register_synthetic_scenes(os.path.join(os.environ["DETECTRON2_DATASETS"], "synthetic_scenes_small"),
                              prefix="synthetic_scenes_small", generation=generation)
    holdout = "cow"
    rc = load_tool("tools/analysis/add_class_experiment").main(
        ["--config-file", TINY_CONFIG, "--holdout", holdout, "--output-dir", str(tmp_path), "--real-row-check", "60",
         "DATASETS.TRAIN", '("synthetic_scenes_small_train",)', "DATASETS.TEST", '("synthetic_scenes_small_val",)',
         "SOLVER.IMS_PER_BATCH", "8", "SOLVER.MAX_ITER", "600", "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", "300",
         "SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", "50", "SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", "50",
         "SOLVER.CHECKPOINT_PERIOD", "100000", "MODEL.CAGNET.FINETUNE_PIXELS", "1152",  # 8 x 12 x 12
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "unused")]
    )
    assert rc == 0
    summary = json.loads((tmp_path / "add_class_experiment.json").read_text())["summary"]
    assert summary["holdout_iou_before"] == 0.0
    # Measured on version 3 of the built-in dataset (seed 0, AMD EPYC, 2 threads): cow 0.0 -> 2.8 IoU,
    # the other classes' mean 32.2 -> 30.9, real-row check 13.1. At this size the seen things
    # themselves reach only 0-65 IoU, and the new row takes pixels from single classes (snow -36 on
    # that run), so no bound on the largest single drop is asserted here.
    assert summary["holdout_iou_after"] > 0.5, summary
    assert summary["other_classes_miou_after"] > summary["other_classes_miou_before"] - 5.0, summary
    # the same row fitted on real features of the class (the upper bound) recognises it too
    assert summary["holdout_iou_real_row"] > 5.0, summary
