# Copyright (c) CaGNet-D2 contributors.
"""Calibration statistics, the seen/unseen accuracy curve and its area (AUSUC)."""
import numpy as np
import pytest
import torch

from cagnet.evaluation.calibration import (
    ScoreHistogram, ScoreStatistics, area_under_curve, calibration_curve, candidate_gammas, load_score_statistics,
    pixel_statistics,
)
from cagnet.modeling import calibrate_scores

SEEN, UNSEEN = (0, 1), (2,)


def _stats(margin, best_seen, best_unseen, gt):
    a = lambda x, t: np.asarray(x, dtype=t)  # noqa: E731
    return ScoreStatistics(a(margin, np.float32), a(best_seen, np.int16), a(best_unseen, np.int16), a(gt, np.int16),
                           3, SEEN, UNSEEN)


def test_ausuc_against_a_hand_computed_case():
    # Seen class 0: two pixels (margins 2 and -1, best seen class 0), seen class 1: one pixel
    # (margin 0.5), unseen class 2: two pixels (margins -2 and 0.5, best unseen class 2). Mean seen
    # accuracy = (acc_0 + acc_1) / 2, unseen = acc_2; a pixel is predicted seen iff margin >= gamma.
    #   gamma <= -2: S = 1,    U = 0
    #   gamma  = -1: S = 1,    U = 0.5   (the unseen pixel at -2 flips to unseen)
    #   gamma = 0.5: S = 0.75, U = 0.5   (class 0's pixel at -1 is lost)
    #   gamma =   2: S = 0.25, U = 1     (class 1's pixel and the unseen one at 0.5 flip together)
    #   gamma > 2:   S = 0,    U = 1
    # Area = 0.5 * 1 + 0.5 * (0.75 + 0.25) / 2 = 0.75 (the tie is a sloped segment).
    stats = _stats([2, -1, 0.5, -2, 0.5], [0, 0, 1, 0, 1], [2, 2, 2, 2, 2], [0, 0, 1, 2, 2])
    gammas, seen, unseen = calibration_curve(stats)
    assert gammas.tolist() == [-2, -1, 0.5, 2, np.inf]
    assert seen.tolist() == pytest.approx([1, 1, 0.75, 0.25, 0])
    assert unseen.tolist() == pytest.approx([0, 0.5, 0.5, 1, 1])
    assert area_under_curve(unseen, seen) == pytest.approx(0.75)
    # The curve's accuracies are those of the confusion matrix at that gamma.
    for g, s, u in zip(gammas[:-1], seen, unseen):
        res = stats.metrics(float(g))
        assert res["mACC-seen"] == pytest.approx(100 * s) and res["mACC-unseen"] == pytest.approx(100 * u)


def test_wrong_best_class_is_never_right():
    # A seen pixel whose best seen class is wrong never counts, whatever gamma.
    stats = _stats([3, -3], [1, 0], [2, 2], [0, 2])
    _, seen, unseen = calibration_curve(stats)
    assert seen.max() == 0 and unseen.max() == 1
    assert area_under_curve(unseen, seen) == 0


def test_statistics_reproduce_argmax_of_calibrated_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 16, 16, generator=g) * 3
    seen, unseen = (0, 1, 3), (2, 4)
    gt = torch.randint(0, 5, (16, 16), generator=g).numpy()
    gt[0, :4] = 255
    stats = pixel_statistics(logits, gt, seen, unseen)
    keep = gt != 255
    assert stats.gt.size == keep.sum()
    for gamma in (-2.0, -0.3, 0.0, 0.7, 4.0):
        pred = calibrate_scores(logits[None], torch.as_tensor(seen), gamma)[0].argmax(0).numpy()
        assert np.array_equal(stats.predictions(gamma), pred[keep])
        cm = stats.confusion(gamma)
        assert cm.sum() == keep.sum() and np.trace(cm) == (pred[keep] == gt[keep]).sum()


def _synthetic_statistics(num_images=6, k=12, size=40, seed=0):
    """Per-pixel statistics of logits that look like a trained model's: the true class scores
    higher, seen classes are favoured (the seen bias), some pixels are ignored."""
    g = torch.Generator().manual_seed(seed)
    seen, unseen = tuple(i for i in range(k) if i % 4), tuple(range(0, k, 4))
    parts = []
    for _ in range(num_images):
        gt = torch.randint(0, k, (size, size), generator=g)
        logits = torch.randn(k, size, size, generator=g) * 2.5
        logits += 4.0 * torch.nn.functional.one_hot(gt, k).permute(2, 0, 1)
        logits[list(seen)] += 2.0
        gt = gt.numpy()
        gt[:3] = 255
        parts.append(pixel_statistics(logits, gt, seen, unseen))
    return ScoreStatistics.concatenate(parts)


def _ausuc(stats):
    _, seen, unseen = calibration_curve(stats)
    return 100 * area_under_curve(unseen, seen)


def test_histogram_matches_per_pixel_statistics(tmp_path):
    exact = _synthetic_statistics()
    gamma = 1.2345
    hist = ScoreHistogram.empty(exact.num_classes, exact.seen_ids, exact.unseen_ids, extra_edges=(gamma,))
    for part in np.array_split(np.arange(exact.num_pixels), 5):  # added image by image
        hist.add(exact.subset(part))
    assert hist.num_pixels == exact.num_pixels
    keys = ["hIoU", "mIoU", "mIoU-seen", "mIoU-unseen", "pACC", "pACC-seen", "pACC-unseen", "mACC-seen", "mACC-unseen"]
    # Exact at the edges: 0, the extra one, any grid edge, and the candidates of the selection.
    for g in [0.0, gamma, float(hist.edges[1800]), -np.inf, np.inf] + list(candidate_gammas(hist, 21)):
        assert hist.is_exact_at(g)
        a, b = exact.metrics(g), hist.metrics(g)
        assert all(a[k] == pytest.approx(b[k], abs=1e-9, nan_ok=True) for k in keys), g
    # Between edges: within a bin's pixels.
    a, b = exact.metrics(0.7771), hist.metrics(0.7771)
    assert all(abs(a[k] - b[k]) < 0.05 for k in keys)
    assert abs(_ausuc(exact) - _ausuc(hist)) < 0.005
    assert 20 < _ausuc(exact) < 95  # a curve with something to get wrong
    # Candidates: quantiles of the margins, rounded to the edge above (a fraction >= q below it).
    q = np.linspace(0, 1, 21)
    below = (exact.margin[None] < hist.margin_quantiles(q)[:, None]).mean(axis=1)
    assert np.all(below >= q - 1e-9) and np.all(below[:-1] < q[:-1] + 0.01)
    # Bounded: the size does not grow with the pixels.
    bigger = ScoreHistogram.empty(exact.num_classes, exact.seen_ids, exact.unseen_ids, extra_edges=(gamma,))
    for _ in range(3):
        bigger.add(exact)
    assert bigger.nbytes == hist.nbytes and bigger.num_pixels == 3 * exact.num_pixels
    # Save and load; per-pixel files of earlier versions load as a histogram.
    hist.save(str(tmp_path / "h.npz"))
    exact.save(str(tmp_path / "e.npz"))
    for path in ("h.npz", "e.npz"):
        loaded = load_score_statistics(str(tmp_path / path), extra_edges=(gamma,))
        assert isinstance(loaded, ScoreHistogram)
        assert loaded.metrics(gamma)["hIoU"] == pytest.approx(exact.metrics(gamma)["hIoU"], abs=1e-9)
    with pytest.raises(ValueError, match="different margin edges"):
        hist.merge(ScoreHistogram.empty(exact.num_classes, exact.seen_ids, exact.unseen_ids))


def test_group_maxima_equal_the_per_group_argmax_with_ties():
    from cagnet.evaluation.calibration import _group_maxima

    g = torch.Generator().manual_seed(1)
    logits = torch.randint(0, 4, (9, 12, 12), generator=g).float()  # many ties
    for a, b in (([0, 2, 3, 5, 6, 8], [1, 4, 7]), ([1, 4], [0, 2, 3, 5, 6, 7, 8])):
        (av, aa), (bv, ba) = _group_maxima(logits, torch.tensor(a), torch.tensor(b))
        for ids, val, arg in ((a, av, aa), (b, bv, ba)):
            ev, ea = logits[ids].max(dim=0)
            assert torch.equal(val, ev) and torch.equal(arg, torch.tensor(ids)[ea])
