# Copyright (c) CaGNet-D2 contributors.
"""Helpers of the tool tests (demo, visualize_features, add_classes, export): a tiny model with
non-trivial weights saved as a checkpoint, its config as a file, and tools run in-process."""
import importlib.util
import logging
import os

import pytest
import torch
from torch import nn

from detectron2.modeling import build_model

from cagnet.vocabulary.add_classes import save_model

from conftest import REPO, tiny_cfg


def load_tool(name: str):
    """A tool as a module (its ``main(argv)`` returns the exit status): ``tools/<name>.py`` for a
    plain name ("demo"), else the path from the repository root ("tools/analysis/probe_generator")."""
    path = os.path.join(REPO, *(name.split("/") if "/" in name else ["tools", name])) + ".py"
    spec = importlib.util.spec_from_file_location("cagnet_tool_" + name.replace("/", "_"), path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_config_file(directory) -> str:
    """The tests' tiny config (``conftest.tiny_cfg``) as a YAML file for the tools."""
    path = os.path.join(str(directory), "tiny.yaml")
    with open(path, "w") as f:
        f.write(tiny_cfg(str(directory)).dump())
    return path


def lively_model(seed: int = 0) -> nn.Module:
    """A tiny untrained model whose logits are O(1) and vary over the image (the default init
    gives near-zero logits), so that comparisons at 1e-4 and legends mean something."""
    torch.manual_seed(seed)
    model = build_model(tiny_cfg())
    with torch.no_grad():
        for m in (model.heads.shared, model.heads.classifier):
            nn.init.normal_(m.weight, std=0.5)
            nn.init.normal_(m.bias, std=0.5)
        for m in model.contextual_module.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(3.0)
        for conv in model.backbone.aspp.convs:
            nn.init.normal_(conv.weight, std=0.05)
    return model.eval()


def save_lively_checkpoint(path, seed: int = 0) -> nn.Module:
    model = lively_model(seed)
    save_model(model, str(path))
    return model


class LogRecords(logging.Handler):
    """Collects the records of a logger (detectron2's setup_logger stops propagation to root,
    so pytest's caplog does not see them)."""

    def __init__(self, logger_name: str = "cagnet"):
        super().__init__(logging.DEBUG)
        self.records, self._logger = [], logging.getLogger(logger_name)

    def emit(self, record):
        self.records.append(record)

    def __enter__(self):
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        self._logger.removeHandler(self)

    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread for the module (restored after): on a loaded 2-core machine, two
    OpenMP threads make these tiny convolutions many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
