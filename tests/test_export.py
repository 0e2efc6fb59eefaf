# Copyright (c) CaGNet-D2 contributors.
"""tools/export_model.py: torch.export (dynamic H, W) and TorchScript (fixed size) against the
eager model's logits."""
import json

import pytest
import torch

from cagnet.export import InferenceGraph, compare_with_eager, load_exported

from _tool_helpers import load_tool, save_lively_checkpoint, tiny_config_file, single_thread  # noqa: F401


@pytest.fixture(scope="module")
def setup(tiny_scenes, tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    model = save_lively_checkpoint(d / "model.pth", seed=1)
    return {"dir": d, "weights": str(d / "model.pth"), "config": tiny_config_file(d), "model": model}


def test_exported_program_matches_eager_logits_on_two_sizes(setup):
    out = setup["dir"] / "model.pt2"
    rc = load_tool("export_model").main(["--config-file", setup["config"], "--output", str(out), "--check",
                                         "MODEL.WEIGHTS", setup["weights"]])
    assert rc == 0
    info = json.loads((setup["dir"] / "model.json").read_text())
    assert info["class_names"] == setup["model"].class_names and "dynamic" in info["sizes"]
    exported = load_exported(str(out))
    model = setup["model"]
    g = torch.Generator().manual_seed(5)
    for h, w in [(48, 48), (37, 70)]:  # the second is not a multiple of the stride
        image = torch.rand(3, h, w, generator=g) * 255
        with torch.no_grad():
            eager = model([{"image": image}])[0]["sem_seg"]
            logits = exported(image)
        assert logits.shape == (model.num_classes, h, w)
        assert eager.std() > 0.1  # logits that vary, so 1e-4 is a real bound
        assert (logits - eager).abs().max().item() < 1e-4
        assert torch.equal(logits.argmax(0), eager.argmax(0))


def test_comparison_detects_a_wrong_graph(setup):
    model = setup["model"]
    graph = InferenceGraph(model).eval()
    with torch.no_grad():
        good = compare_with_eager(model, graph, [(40, 48), (33, 41)])
        assert max(d for _, d in good) < 1e-5

        def without_normalisation(image):
            return graph(image * graph.pixel_std + graph.pixel_mean)

        bad = compare_with_eager(model, without_normalisation, [(40, 48)])
    assert bad[0][1] > 1e-2


def test_torchscript_trace_fixed_size_batched(setup):
    out = setup["dir"] / "model.ts"
    rc = load_tool("export_model").main(["--config-file", setup["config"], "--output", str(out), "--check",
                                         "--batched", "--trace-size", "40x56", "MODEL.WEIGHTS", setup["weights"]])
    assert rc == 0
    traced = load_exported(str(out))
    image = torch.rand(1, 3, 40, 56) * 255
    with torch.no_grad():
        eager = setup["model"]([{"image": image[0]}])[0]["sem_seg"]
        assert (traced(image)[0] - eager).abs().max().item() < 1e-4
        with pytest.raises(Exception, match="traced for 40x56"):
            traced(torch.rand(1, 3, 48, 48))
