# Copyright (c) CaGNet-D2 contributors.
"""cagnet.analysis.generator_probe and tools/analysis/probe_generator.py."""
from types import SimpleNamespace

import pytest
import torch

from cagnet.analysis.generator_probe import generator_probe

from _tool_helpers import load_tool, save_lively_checkpoint, tiny_config_file


def _toy(generator):
    """3 classes (0, 1 seen; 2 unseen) whose real features are 5 x one-hot; C reads the argmax."""
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 2] * 40)
    real = 5.0 * torch.eye(3)[labels] + 0.1 * torch.randn(120, 3)
    model = SimpleNamespace(seen_ids=torch.tensor([0, 1]), class_embeddings=torch.eye(3),
                            heads=SimpleNamespace(classify=lambda x: x), generator=generator)
    return model, real, labels


def test_a_generator_that_ignores_the_word_embedding_is_exposed():
    model, real, labels = _toy(lambda z, w: z)  # G copies the latent code, which carries the class
    out = generator_probe(model, real, real.clone(), labels)
    assert out["pixels"] == 80  # the unseen class's 40 pixels do not count
    assert out["acc_real"] == 1.0 and out["acc_generated_own_code"] == 1.0
    assert out["acc_generated_other_code"] == 0.0  # another class's code gives that class
    assert out["rec_error_own_code"] == 0.0 and out["rec_error_prior"] > 10.0


def test_a_generator_that_follows_the_word_embedding_passes():
    model, real, labels = _toy(lambda z, w: 5.0 * w + 0.01 * z)
    out = generator_probe(model, real, real.clone(), labels)
    assert out["acc_generated_prior"] == out["acc_generated_own_code"] == out["acc_generated_other_code"] == 1.0
    assert out["rec_error_own_code"] == pytest.approx(out["rec_error_prior"], abs=0.1)


def test_no_seen_pixels_is_an_error():
    model, real, labels = _toy(lambda z, w: z)
    keep = labels == 2
    with pytest.raises(ValueError, match="seen classes"):
        generator_probe(model, real[keep], real[keep], labels[keep])


def test_probe_tool_prints_and_writes_the_numbers(tiny_scenes, tmp_path, capsys):
    weights = tmp_path / "model.pth"
    save_lively_checkpoint(weights, seed=1)
    out = tmp_path / "probe.json"
    rc = load_tool("tools/analysis/probe_generator").main(["--config-file", tiny_config_file(tmp_path), "--images", "4",
                                            "--json", str(out), "MODEL.WEIGHTS", str(weights)])
    assert rc == 0
    assert "another class's code" in capsys.readouterr().out
    import json

    result = json.loads(out.read_text())
    assert result["pixels"] > 0 and result["images"] == 4
    for key in ("acc_real", "acc_generated_prior", "acc_generated_own_code"):
        assert 0.0 <= result[key] <= 1.0


def test_diagnose_tool_shares_the_command_line_and_writes_per_class_numbers(tiny_scenes, tmp_path, capsys):
    """tools/analysis/diagnose_features.py takes the same arguments (cagnet.utils.cli.model_on_dataset_args),
    a leading ``--`` before the overrides included."""
    import json

    weights = tmp_path / "model.pth"
    save_lively_checkpoint(weights, seed=1)
    out = tmp_path / "diagnostics.json"
    tool = load_tool("tools/analysis/diagnose_features")
    rc = tool.main(["--config-file", tiny_config_file(tmp_path), "--images", "4", "--json", str(out),
                    "--", "MODEL.WEIGHTS", str(weights)])
    assert rc == 0 and "Feature diagnostics of" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["images"] == 4 and result["weights"] == str(weights) and result["classes"]
    assert all(0.0 <= c["acc_real"] <= 1.0 for c in result["classes"])
    with pytest.raises(SystemExit, match="MODEL.WEIGHTS is empty"):
        tool.main(["--config-file", tiny_config_file(tmp_path), "MODEL.WEIGHTS", ""])
