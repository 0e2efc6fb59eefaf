# Copyright (c) CaGNet-D2 contributors.
"""Self-training's pseudo labels: ignored pixels only, unseen classes only, top p% per class."""
import numpy as np
import pytest
import torch

from cagnet.engine.self_training import pixel_confidence, score_keys, select_pseudo_labels

UNSEEN = [2, 3]  # of 5 classes; 255 = ignore


def _case(seed=0, n=4, size=12):
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(5, size, size, generator=g) * 2 for _ in range(n)]
    labels = []
    for _ in range(n):
        lab = torch.randint(0, 2, (size, size), generator=g).numpy().astype(np.uint8)  # seen classes 0, 1, 4
        lab[lab == 1] = 4
        lab[torch.rand(size, size, generator=g).numpy() < 0.5] = 255  # half the pixels ignored
        labels.append(lab)
    return labels, logits


def _softmax_confidence(logit):
    p = torch.softmax(logit.double(), dim=0)
    return p.max(dim=0).values.numpy(), p.argmax(dim=0).numpy()


@pytest.mark.parametrize("p", [0.0, 30.0, 50.0, 100.0])
def test_pseudo_labels_fill_only_ignored_pixels_with_confident_unseen_predictions(p):
    labels, logits = _case()
    out = select_pseudo_labels(labels, logits, UNSEEN, p)
    candidates = {u: [] for u in UNSEEN}
    for lab, logit, new in zip(labels, logits, out):
        conf, pred = _softmax_confidence(logit)
        labelled = lab != 255
        assert np.array_equal(new[labelled], lab[labelled])  # labelled pixels untouched
        changed = new != lab
        assert set(np.unique(new[changed]).tolist()) <= set(UNSEEN)  # only unseen classes
        assert np.array_equal(new[changed], pred[changed])  # the model's prediction
        for u in UNSEEN:
            cand = (lab == 255) & (pred == u)
            candidates[u] += list(zip(conf[cand], new[cand] == u))
    for u, cands in candidates.items():
        assert len(cands) > 10
        k = int(np.floor(p / 100 * len(cands)))
        chosen = [c for c, picked in cands if picked]
        assert len(chosen) == k  # p percent of that class's candidates (distinct scores here)
        if 0 < k < len(cands):  # ... and the most confident ones (ZS3Net: softmax confidence)
            assert min(chosen) > max(c for c, picked in cands if not picked)


def test_pseudo_labels_never_exceed_p_with_tied_scores():
    labels, logits = _case(seed=1)
    logits = [torch.round(lg) for lg in logits]  # many exact ties
    for p in (10.0, 25.0, 60.0):
        out = select_pseudo_labels(labels, logits, UNSEEN, p)
        for u in UNSEEN:
            preds = [pixel_confidence(lg)[0].numpy() for lg in logits]
            n = sum(((lab == 255) & (pr == u)).sum() for lab, pr in zip(labels, preds))
            picked = sum(((new == u) & (lab == 255)).sum() for new, lab in zip(out, labels))
            assert picked <= np.floor(p / 100 * n)


def test_confidence_keys_preserve_order():
    x = np.array([-1e6, -3.5, -1e-4, 0.0, 1e-4, 0.2, 7.0, 80.0, 1e9], dtype=np.float32)
    assert np.all(np.diff(score_keys(x)) > 0)
    logits = torch.tensor([[[2.0]], [[0.0]], [[0.0]]])
    pred, score = pixel_confidence(logits)
    # log-odds of the softmax probability of the predicted class
    prob = torch.softmax(logits[:, 0, 0], 0)[0]
    assert pred.item() == 0 and score.item() == pytest.approx(torch.log(prob / (1 - prob)).item(), abs=1e-5)
