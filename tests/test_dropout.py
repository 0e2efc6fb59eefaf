# Copyright (c) CaGNet-D2 contributors.
"""The word-mask dropout of G and C: nn.Dropout's distribution and semantics, seeded by torch."""
import pytest
import torch
from torch import nn

from cagnet.modeling import DiscriminatorClassifier, FeatureGenerator
from cagnet.modeling.dropout import WordMaskDropout, bernoulli_keep_mask


@pytest.mark.parametrize("p", [0.5, 0.25, 0.3, 0.1])
def test_keep_mask_has_the_right_rate_and_no_neighbour_correlation(p):
    torch.manual_seed(0)
    keep = bernoulli_keep_mask((400, 1000), p).float()
    assert keep.shape == (400, 1000)
    # 4e5 Bernoulli draws: the standard error of the rate is <= 0.0008.
    assert abs(keep.mean().item() - (1 - p)) < 0.004
    flat = keep.flatten() - keep.mean()
    for lag in (1, 2, 3, 7, 8):  # within a word and across words (7 bytes or 3 halves per word)
        corr = (flat[:-lag] * flat[lag:]).mean() / flat.var()
        assert abs(corr.item()) < 0.01, lag
    # Every column and row is random, not a fixed pattern cut from the word layout.
    assert keep.mean(0).std() > 0 and keep.mean(1).std() > 0


def test_keep_mask_uses_the_byte_path_for_multiples_of_1_256():
    torch.manual_seed(0)
    keep = bernoulli_keep_mask((7 * 1000,), 0.5)
    torch.manual_seed(0)
    words = torch.empty(1000, dtype=torch.int64).random_()
    assert torch.equal(keep, (words.view(torch.uint8).view(-1, 8)[:, :7] >= 128).reshape(-1))


def test_word_mask_dropout_matches_nn_dropout_semantics():
    x = torch.randn(64, 300, requires_grad=True)
    drop = WordMaskDropout(0.5)
    assert isinstance(drop, nn.Dropout) and drop.extra_repr() == nn.Dropout(0.5).extra_repr()
    torch.manual_seed(3)
    y = drop.train()(x)
    kept = y != 0
    # Kept elements are scaled by 1 / (1 - p), the others are zero; the gradient is the mask too.
    torch.testing.assert_close(y[kept], 2 * x[kept])
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * 2)
    # Same seed, same mask (the trainers seed torch per iteration, so resume is exact).
    torch.manual_seed(3)
    assert torch.equal(drop(x) != 0, kept)
    # Eval mode and p = 0 are the identity; p = 1 drops everything.
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(WordMaskDropout(0.0).train()(x), x)
    assert not WordMaskDropout(1.0).train()(x).any()


def test_generator_and_classifier_use_the_word_mask_dropout():
    g = FeatureGenerator(latent_dim=4, embedding_dim=3, out_dim=4, hidden_dims=(8, 8), dropout=0.5)
    dc = DiscriminatorClassifier(in_channels=4, num_classes=3, hidden_dim=8, dropout=0.5)
    drops = [m for m in (*g.modules(), *dc.modules()) if isinstance(m, nn.Dropout)]
    assert len(drops) == 3 and all(type(m) is WordMaskDropout and m.p == 0.5 for m in drops)
