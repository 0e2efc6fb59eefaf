# Copyright (c) CaGNet-D2 contributors.
"""The baselines (SPNet, SPNet-c, ZS3Net) and the staged trainer, on the tiny built-in config."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from cagnet.engine import StageSchedule, ZeroShotStagedTrainer, trainer_class
from cagnet.engine.staged_trainer import StagedStepTrainer, held_out_class_ids
from cagnet.modeling import CaGNet, calibrate_scores

from conftest import tiny_cfg

from cagnet.data.datasets.register_synthetic_scenes import CLASS_SET

SEEN, UNSEEN = CLASS_SET.seen_ids, CLASS_SET.unseen_ids
K = CLASS_SET.num_classes


def _batch(n=2, h=40, w=48, classes=SEEN, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.as_tensor(classes + [255])
    return [
        {
            "image": torch.randint(0, 256, (3, h, w), generator=g).float(),
            "sem_seg": ids[torch.randint(len(ids), (h // 8, w // 8), generator=g)].repeat_interleave(8, 0).repeat_interleave(8, 1),
        }
        for _ in range(n)
    ]


def _model(arch, *opts):
    torch.manual_seed(0)
    return build_model(tiny_cfg(None, "MODEL.META_ARCHITECTURE", arch, *opts))


def test_spnet_scores_are_dot_products_with_the_fixed_embeddings(tiny_scenes):
    model = _model("SPNet").eval()
    assert model.unseen_ids.tolist() == UNSEEN
    images = model.preprocess_image(_batch())
    with torch.no_grad():
        feats = model.features(images)
        scores = model.segment(images)
        embedded = model.projection(feats)  # (N, d, h, w)
    emb = model.class_embeddings
    assert emb.shape == (K, 50) and scores.shape[1] == K
    for k in (0, 5, 19):  # a seen class, an unseen one, the last one
        expected = (embedded * emb[k].view(1, -1, 1, 1)).sum(dim=1)
        assert torch.allclose(scores[:, k], expected, atol=1e-5)
    # The embeddings are fixed: not parameters, and a training step leaves them unchanged.
    assert all("class_embeddings" not in n for n, _ in model.named_parameters())
    before = emb.clone()
    model.train()
    loss = model(_batch())["loss_cls"]
    loss.backward()
    assert torch.equal(model.class_embeddings, before) and torch.isfinite(loss)


def test_spnet_training_softmax_is_over_seen_classes_only(tiny_scenes):
    model = _model("SPNet").train()
    batch = _batch()
    with torch.no_grad():
        model.projection.bias.zero_()
    loss = model(batch)["loss_cls"]
    images = model.preprocess_image(batch)
    scores = model.segment(images)
    labels = model.feature_labels(batch, images.tensor.shape[-2:], scores.shape[-2:])
    valid = labels != 255
    pix = scores.permute(0, 2, 3, 1)[valid]
    seen_pos = {c: i for i, c in enumerate(SEEN)}
    target = torch.as_tensor([seen_pos[int(c)] for c in labels[valid]])
    expected = torch.nn.functional.cross_entropy(pix[:, SEEN], target)
    assert torch.allclose(loss, expected, atol=1e-5)
    assert not torch.allclose(loss, torch.nn.functional.cross_entropy(pix, labels[valid]), atol=1e-3)
    bad = _batch(classes=UNSEEN)
    with pytest.raises(ValueError, match="unseen"):
        model(bad)


@pytest.mark.parametrize("arch", ["SPNet", "ZS3Net"])
def test_calibration_lowers_exactly_the_seen_scores_by_gamma(tiny_scenes, arch):
    model = _model(arch).eval()
    batch = [{"image": torch.rand(3, 37, 45) * 255}]
    with torch.no_grad():
        raw = model(batch)[0]["sem_seg"]
        model.set_calibration(1.75)
        calibrated = model(batch)[0]["sem_seg"]
    drop = raw - calibrated
    assert torch.allclose(drop[SEEN], torch.full_like(drop[SEEN], 1.75), atol=1e-4)
    assert torch.equal(calibrated[UNSEEN], raw[UNSEEN])
    # gamma travels with the weights
    assert model.state_dict()["calibration"].item() == 1.75
    # and the helper on its own
    s = torch.randn(2, K, 3, 3)
    c = calibrate_scores(s, torch.as_tensor(SEEN), -0.5)
    assert torch.allclose(c[:, SEEN], s[:, SEEN] + 0.5) and torch.equal(c[:, UNSEEN], s[:, UNSEEN])


def test_stage_schedule():
    s = StageSchedule((("segmentation", 3), ("generator", 0), ("classifier", 2)))
    assert [s.stage(i) for i in range(5)] == [("segmentation", 0), ("segmentation", 1), ("segmentation", 2),
                                              ("classifier", 0), ("classifier", 1)]
    assert s.total == 5
    with pytest.raises(IndexError):
        s.stage(5)
    cfg = tiny_cfg(None, "MODEL.META_ARCHITECTURE", "ZS3Net", "SOLVER.MAX_ITER", 10,
                   "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 3, "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 4)
    assert StageSchedule.from_config(cfg, ("segmentation", "generator", "classifier")).stages == (
        ("segmentation", 3), ("generator", 3), ("classifier", 4))
    cfg.SOLVER.MAX_ITER = 6
    with pytest.raises(ValueError, match="MAX_ITER"):
        StageSchedule.from_config(cfg, ("segmentation", "generator", "classifier"))


def _snap(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module, before):
    return [k for k, v in module.state_dict().items() if not torch.equal(v, before[k])]


def test_zs3net_stages_train_only_their_modules(tiny_scenes):
    cfg = tiny_cfg(None, "MODEL.META_ARCHITECTURE", "ZS3Net", "MODEL.ZS3NET.NOISE_DIM", 8,
                   "SOLVER.MAX_ITER", 3, "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 1, "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 1)
    torch.manual_seed(0)
    model = build_model(cfg)
    schedule = StageSchedule.from_config(cfg, model.STAGES)
    optimizers = {n: ZeroShotStagedTrainer.build_stage_optimizer(cfg, model, n) for n, _ in schedule.stages}
    batch = _batch()
    step = StagedStepTrainer(model, model, optimizers, schedule, 0, lambda seed, start: iter(lambda: batch, None))
    expected = {0: {"backbone", "classifier"}, 1: {"generator"}, 2: {"classifier"}}
    step.steps_per_batch = {"generator": 3}
    calls = []
    model.backbone.register_forward_hook(lambda *a: calls.append(1))
    for it in range(3):
        parts = {"backbone": model.backbone, "classifier": model.classifier, "generator": model.generator}
        before = {k: _snap(m) for k, m in parts.items()}
        step.iter = it
        with EventStorage(it) as storage:
            step.storage = storage
            step.run_step()
        changed = {k for k, m in parts.items() if _changed(m, before[k])}
        # E is frozen after the first stage, BN statistics included.
        assert changed == expected[it], (it, changed)
    # Three generator steps on one batch: E ran once per batch.
    assert len(calls) == 3 and step.optimizers["generator"].state_dict()["state"][0]["step"] == 3


def test_zs3net_classifier_stage_adds_generated_unseen_pixels(tiny_scenes, monkeypatch):
    model = _model("ZS3Net", "MODEL.ZS3NET.NOISE_DIM", 8, "MODEL.ZS3NET.GENERATED_UNSEEN_FRACTION", 0.5).train()
    seen_labels = []
    orig = torch.nn.functional.cross_entropy

    def spy(logits, labels, *a, **k):
        seen_labels.append(labels.clone())
        return orig(logits, labels, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    model(_batch(), stage="classifier")
    labels = seen_labels[-1]
    unseen = torch.isin(labels, torch.as_tensor(UNSEEN))
    assert unseen.sum() == (~unseen).sum() > 0  # real seen pixels and as many generated unseen ones


def test_generators_condition_pseudo_labelled_pixels_on_their_class_embedding(tiny_scenes):
    """A pseudo-labelled (unseen) pixel is generated from w of its class, not a zero vector."""
    u1, u2 = UNSEEN[:2]
    batch = _batch(classes=[SEEN[0], u1, u2])  # unseen: as pseudo labels are
    for arch in ("ZS3Net", "CaGNet"):
        model = _model(arch, "MODEL.ZS3NET.NOISE_DIM", 8).train()
        captured = []
        hook = model.generator.register_forward_hook(lambda m, inp, out: captured.append(inp))
        if arch == "ZS3Net":
            torch.manual_seed(0)
            model(batch, stage="generator")
            (_, w), = captured
            emb = model.class_embeddings
            # one block of rows per class present, each the class's own embedding
            rows = {tuple(r.tolist()) for r in w}
            assert rows == {tuple(emb[c].tolist()) for c in (SEEN[0], u1, u2)}
        else:
            feats = model.extract_features(batch)
            (_, w), = captured
            assert torch.isin(feats.labels, torch.as_tensor([u1, u2])).any()
            assert torch.equal(w, model.class_embeddings[feats.labels])
            assert (w.abs().sum(dim=1) > 0).all()
        hook.remove()


def test_held_out_classes_for_calibration():
    cfg = tiny_cfg(None)
    names = [str(i) for i in range(K)]
    ids = held_out_class_ids(cfg, SEEN, UNSEEN, names)
    assert len(ids) == len(UNSEEN) and set(ids) <= set(SEEN)
    cfg.MODEL.CALIBRATION.HELD_OUT_CLASSES = [str(SEEN[1]), str(SEEN[2])]
    assert held_out_class_ids(cfg, SEEN, UNSEEN, names) == [SEEN[1], SEEN[2]]
    cfg.MODEL.CALIBRATION.HELD_OUT_CLASSES = [str(UNSEEN[0])]
    with pytest.raises(ValueError, match="seen"):
        held_out_class_ids(cfg, SEEN, UNSEEN, names)


def test_trainer_is_chosen_by_meta_architecture():
    from cagnet.engine import CaGNetSelfTrainingTrainer, CaGNetTrainer

    cfg = tiny_cfg(None)
    assert trainer_class(cfg) is CaGNetTrainer
    cfg.MODEL.SELF_TRAINING.ENABLED = True
    assert trainer_class(cfg) is CaGNetSelfTrainingTrainer
    for arch in ("SPNet", "ZS3Net"):
        cfg.MODEL.META_ARCHITECTURE = arch
        assert trainer_class(cfg) is ZeroShotStagedTrainer


def test_staged_trainer_checkpoints_every_stage_optimizer_and_resumes(tiny_scenes, tmp_path):
    opts = ["MODEL.META_ARCHITECTURE", "ZS3Net", "MODEL.ZS3NET.NOISE_DIM", 8, "SOLVER.MAX_ITER", 6,
            "SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", 2, "SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", 2, "SOLVER.CHECKPOINT_PERIOD", 3,
            "SEED", 1, "DATASETS.TEST", ()]
    full = ZeroShotStagedTrainer(tiny_cfg(tmp_path / "full", *opts))
    full.resume_or_load(resume=False)
    full.train()
    ckpt = torch.load(tmp_path / "full" / "model_final.pth", weights_only=False)
    assert set(ckpt["trainer"]["_trainer"]["optimizers"]) == {"segmentation", "generator", "classifier"}
    assert set(ckpt["trainer"]["hooks"]["StageLRSchedulers"]) == {"segmentation", "generator", "classifier"}
    # Resume from the checkpoint at iteration 2 (end of the segmentation stage): same final weights.
    part = tmp_path / "part"
    part.mkdir()
    torch.save(torch.load(tmp_path / "full" / "model_0000002.pth", weights_only=False), part / "model_0000002.pth")
    (part / "last_checkpoint").write_text("model_0000002.pth")
    torch.manual_seed(99)
    resumed = ZeroShotStagedTrainer(tiny_cfg(part, *opts))
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
    resumed.train()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
