# Copyright (c) CaGNet-D2 contributors.
"""Mixed precision that fits the device (``SOLVER.AMP``), shared by CaGNet's and the staged trainer.

``SOLVER.AMP.PRECISION "auto"`` resolves, when ``SOLVER.AMP.ENABLED``, to
* CUDA: bfloat16 autocast where ``torch.cuda.is_bf16_supported()`` (no loss scaling: bfloat16 has
  float32's range), else float16 autocast with a ``torch.amp.GradScaler`` (detectron2's AMPTrainer);
* CPU with native bfloat16 (``avx512_bf16`` or ``amx_bf16`` in /proc/cpuinfo): bfloat16 autocast,
  which oneDNN runs about twice as fast as float32;
* any other CPU: float32, with a warning saying why -- there bfloat16 is emulated and was measured
  hundreds of times slower than float32 (AVX2-only machines).
"bfloat16" and "float16" force that type (float16 always with a GradScaler, also on the CPU).
Losses are computed in float32 either way (``cagnet.modeling.losses``), parameters stay float32.
"""
import contextlib
import logging
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

__all__ = ["Precision", "MixedPrecision", "cpu_native_bf16", "resolve_precision", "precision_from_config", "log_precision"]

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "float16", "bfloat16")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def _cpu_flags() -> Optional[set]:
    """The CPU flags of /proc/cpuinfo (Linux), or None where there is no such file."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def cpu_native_bf16() -> Tuple[bool, str]:
    """(whether this CPU computes bfloat16 natively, the reason in words)."""
    flags = _cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    if flags is None:
        return False, f"its flags are unknown (no /proc/cpuinfo; torch CPU capability {capability})"
    native = sorted(set(NATIVE_BF16_FLAGS) & flags)
    if native:
        return True, f"it has {' and '.join(native)}"
    return False, f"it has neither {' nor '.join(NATIVE_BF16_FLAGS)} (torch CPU capability {capability})"


@dataclass(frozen=True)
class Precision:
    """What a training step runs in: autocast ``dtype`` on ``device_type`` (None: float32)."""

    device_type: str
    dtype: Optional[torch.dtype]
    grad_scaler: bool
    reason: str

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).replace("torch.", "")


def resolve_precision(enabled: bool, precision: str, device) -> Precision:
    """The precision of training steps for ``SOLVER.AMP.ENABLED`` / ``PRECISION`` on ``device``."""
    device_type = torch.device(device).type
    if precision not in PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {PRECISIONS}, got {precision!r}")
    if not enabled:
        return Precision(device_type, None, False, "SOLVER.AMP.ENABLED is False")
    if device_type == "cuda":
        if precision == "auto":
            precision = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
            why = "auto on a GPU " + ("with" if precision == "bfloat16" else "without") + " bfloat16 support"
        else:
            why = f"SOLVER.AMP.PRECISION {precision!r}"
        if precision == "bfloat16" and not torch.cuda.is_bf16_supported():
            raise ValueError("SOLVER.AMP.PRECISION 'bfloat16': this GPU does not support bfloat16; use 'float16' or 'auto'")
        return Precision("cuda", getattr(torch, precision), precision == "float16", why)
    if device_type != "cpu":
        raise ValueError(f"SOLVER.AMP.ENABLED: no mixed precision for device {device!r} (cuda or cpu)")
    native, why = cpu_native_bf16()
    if precision == "auto":
        if native:
            return Precision("cpu", torch.bfloat16, False, f"auto on a CPU with native bfloat16: {why}")
        return Precision("cpu", None, False, f"auto on a CPU without native bfloat16 ({why}), where bfloat16 "
                                             "autocast runs far slower than float32")
    if precision == "bfloat16" and not native:
        logger.warning(f"SOLVER.AMP.PRECISION 'bfloat16' on a CPU without native bfloat16 ({why}): expect it to "
                       "be much slower than float32")
    return Precision("cpu", getattr(torch, precision), precision == "float16", f"SOLVER.AMP.PRECISION {precision!r}")


def precision_from_config(cfg, device=None) -> Precision:
    return resolve_precision(cfg.SOLVER.AMP.ENABLED, cfg.SOLVER.AMP.PRECISION, device or cfg.MODEL.DEVICE)


def log_precision(precision: Precision, amp_enabled: bool) -> None:
    """One log line: what the training steps run in and why (a warning when AMP was asked for
    and float32 is what fits)."""
    scaler = " with a GradScaler" if precision.grad_scaler else ""
    msg = f"Training steps run in {precision.name}{scaler} on {precision.device_type}: {precision.reason}"
    if amp_enabled and precision.dtype is None:
        logger.warning("SOLVER.AMP.ENABLED is True, but " + msg[0].lower() + msg[1:])
    else:
        logger.info(msg)


class MixedPrecision:
    """Autocast and, for float16, loss scaling for one or more optimisers.

    Per iteration: ``backward(loss)`` and ``step(optimizer)`` for each optimiser that steps, then
    ``update()`` once (torch's recipe for several optimisers with one GradScaler). Without
    autocast or scaler every call is the plain float32 one.
    """

    def __init__(self, precision: Precision):
        self.precision = precision
        self.scaler = torch.amp.GradScaler(precision.device_type) if precision.grad_scaler else None

    def autocast(self):
        if self.precision.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.precision.device_type, dtype=self.precision.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is not None:
            self.scaler.step(optimizer)  # unscales first (gradient clipping sees true gradients)
        else:
            optimizer.step()

    def checked(self, optimizer: torch.optim.Optimizer):
        """The optimiser whose gradients the loss guard may check: none under float16 loss scaling,
        where a non-finite gradient is the scaler's normal signal to skip the step and shrink."""
        return optimizer if self.scaler is None else None

    def update(self) -> None:
        if self.scaler is not None:
            self.scaler.update()

    def scale(self) -> Optional[float]:
        return float(self.scaler.get_scale()) if self.scaler is not None else None

    def state_dict(self):
        return {"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}

    def load_state_dict(self, state_dict) -> None:
        if self.scaler is None:
            return
        if "grad_scaler" in state_dict:
            self.scaler.load_state_dict(state_dict["grad_scaler"])
        else:
            logger.warning("The checkpoint has no grad scaler state (it was trained without float16): the scaler "
                           "starts afresh")
