# Copyright (c) CaGNet-D2 contributors.
"""SOLVER.AMP: the precision that fits the device (CPU capability probe faked), float16 loss
scaling with both optimisers, and the grad scaler across --resume."""
import logging

import pytest
import torch

from cagnet.engine import CaGNetTrainer, ZeroShotStagedTrainer
from cagnet.engine import precision as precision_module
from cagnet.engine.precision import resolve_precision

from _crash_helpers import train_until_crash
from conftest import tiny_cfg
from test_model import _step

AVX2_ONLY = {"fpu", "sse2", "avx", "avx2", "fma"}
WITH_AMX = AVX2_ONLY | {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}


@pytest.fixture
def cpu_flags(monkeypatch):
    def fake(flags):
        monkeypatch.setattr(precision_module, "_cpu_flags", lambda: set(flags))

    return fake


@pytest.fixture
def precision_log():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger(precision_module.__name__)
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def _backbone_dtypes(trainer):
    dtypes = []
    trainer.model.backbone.register_forward_hook(lambda m, i, o: dtypes.append(o["aspp"].dtype))
    return dtypes


def test_resolution_on_cpus(cpu_flags):
    cpu_flags(AVX2_ONLY)
    p = resolve_precision(True, "auto", "cpu")
    assert p.dtype is None and not p.grad_scaler and "neither avx512_bf16 nor amx_bf16" in p.reason
    assert resolve_precision(True, "float16", "cpu").grad_scaler
    assert resolve_precision(True, "bfloat16", "cpu").dtype == torch.bfloat16  # forced: a warning, not float32
    cpu_flags(WITH_AMX)
    p = resolve_precision(True, "auto", "cpu")
    assert p.dtype == torch.bfloat16 and not p.grad_scaler and "amx_bf16" in p.reason
    assert resolve_precision(False, "auto", "cpu").dtype is None
    with pytest.raises(ValueError, match="SOLVER.AMP.PRECISION"):
        resolve_precision(True, "fp8", "cpu")


def test_amp_on_a_cpu_without_native_bf16_trains_in_float32_and_says_so(tiny_scenes, tmp_path, cpu_flags,
                                                                        precision_log):
    cpu_flags(AVX2_ONLY)
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", True))
    dtypes = _backbone_dtypes(trainer)
    _step(trainer, 0)
    assert dtypes == [torch.float32]
    assert trainer._trainer.mixed_precision.scaler is None
    warnings = [r.getMessage() for r in precision_log if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "float32" in warnings[0] and "without native bfloat16" in warnings[0]


def test_amp_on_a_cpu_with_native_bf16_trains_in_bfloat16(tiny_scenes, tmp_path, cpu_flags, precision_log):
    cpu_flags(WITH_AMX)
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", True))
    dtypes = _backbone_dtypes(trainer)
    _step(trainer, 0)
    assert dtypes == [torch.bfloat16]
    assert any("bfloat16" in r.getMessage() and r.levelno == logging.INFO for r in precision_log)


def test_staged_trainer_trains_with_amp(tiny_scenes, tmp_path, cpu_flags):
    cpu_flags(WITH_AMX)
    cfg = tiny_cfg(tmp_path, "MODEL.META_ARCHITECTURE", "SPNet", "SOLVER.AMP.ENABLED", True, "DATASETS.TEST", ())
    trainer = ZeroShotStagedTrainer(cfg)
    model = trainer.model
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dtypes = []
    model.backbone.register_forward_hook(lambda m, i, o: dtypes.append(o["aspp"].dtype))
    _step(trainer, 0)
    assert dtypes == [torch.bfloat16]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


def _float16_run(output_dir, crash=False, resume=False):
    torch.manual_seed(0 if not resume else 1)  # a resumed run must not depend on its own init
    cfg = tiny_cfg(output_dir, "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "float16", "SOLVER.MAX_ITER", 10,
                   "SOLVER.CHECKPOINT_PERIOD", 4, "TEST.EVAL_PERIOD", 0, "SEED", 3)
    trainer = CaGNetTrainer(cfg)
    trainer.test = lambda *a, **k: {}
    # A small growth interval, so that the scale changes within the run and a scaler that restarted
    # from scratch would end elsewhere.
    trainer._trainer.mixed_precision.scaler._growth_interval = 3
    trainer.resume_or_load(resume=resume)
    return train_until_crash(trainer, 6 if crash else None)


def test_float16_grad_scaler_steps_both_optimizers_and_is_restored_on_resume(tiny_scenes, tmp_path):
    full = _float16_run(tmp_path / "full")
    scaler = full._trainer.mixed_precision.scaler
    assert scaler is not None and scaler.get_scale() != 65536.0  # it moved during the run
    ckpt = torch.load(tmp_path / "full" / "model_final.pth", weights_only=False)
    assert ckpt["trainer"]["_trainer"]["grad_scaler"] == scaler.state_dict()
    assert ckpt["trainer"]["_trainer"]["optimizer_d"]["state"]  # D's optimiser stepped through the scaler
    _float16_run(tmp_path / "stopped", crash=True)
    resumed = _float16_run(tmp_path / "stopped", resume=True)
    assert resumed.start_iter == 4
    assert resumed._trainer.mixed_precision.scaler.state_dict() == scaler.state_dict()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_builds_the_autocast_path(tiny_scenes, tmp_path):
    trainer = CaGNetTrainer(tiny_cfg(tmp_path, "SOLVER.AMP.ENABLED", True, "MODEL.DEVICE", "cuda"))
    mp = trainer._trainer.mixed_precision
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert mp.precision.dtype == expected and (mp.scaler is not None) == (expected == torch.float16)
    dtypes = _backbone_dtypes(trainer)
    _step(trainer, 0)
    _step(trainer, 4)  # a finetuning step
    assert dtypes == [expected]
    forced = CaGNetTrainer(tiny_cfg(tmp_path / "fp16", "SOLVER.AMP.ENABLED", True, "SOLVER.AMP.PRECISION", "float16",
                                    "MODEL.DEVICE", "cuda"))
    assert forced._trainer.mixed_precision.scaler is not None
    _step(forced, 0)
