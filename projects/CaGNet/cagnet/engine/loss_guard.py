# Copyright (c) CaGNet-D2 contributors.
"""Stops a run at the first non-finite loss or gradient; warns when a loss explodes.

The inner trainers call ``LossGuard.check`` for every optimiser step, after the backward pass
and before ``optimizer.step()``. The loss terms and the 2-norm of the optimiser's gradients (one
fused foreach pass; NaN and inf propagate through it) are read with one host sync; when one is
not finite, the gradients are checked one by one (the norm may also have overflowed with finite
gradients, then training goes on) and ``NonFiniteLossError`` names the step, the iteration, the
loss terms (or the parameters whose gradients are not finite) and the last checkpoint. Nothing has been stepped yet, so the weights
stay finite and no checkpoint is touched. Under DDP the gradients are all-reduced before the
check, so every worker stops at the same step.

A loss term that exceeds ``growth_factor`` times its reference, the median of its values over the
first ``reference_iters`` steps of its kind in the run (of those so far while they are collected,
so that a run diverging at its second step is caught; at least 1e-3 of the steps' median summed
loss, so that a term that starts at ~0 does not warn), is logged as a warning, and again at each
further factor: a diverging run does not go unnoticed while its losses are still finite.
"""
import logging
import math
import statistics
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["LossGuard", "NonFiniteLossError"]

logger = logging.getLogger(__name__)

# Below this fraction of its step's summed loss, a term's reference is floored.
REFERENCE_FLOOR = 1e-3


class NonFiniteLossError(FloatingPointError):
    pass


class LossGuard:
    def __init__(self, enabled: bool = True, growth_factor: float = 100.0, reference_iters: int = 20,
                 param_names: Optional[Dict[int, str]] = None):
        """``param_names``: id(parameter) -> name, to name parameters with non-finite gradients."""
        self.enabled = enabled
        self.growth_factor = float(growth_factor)
        self.reference_iters = int(reference_iters)
        self.param_names = param_names or {}
        # Set by the outer trainer: the path of the last checkpoint (None: none saved yet) and
        # where the run started from, for the message.
        self.last_checkpoint: Callable[[], Optional[str]] = lambda: None
        self.started_from = ""
        self.stopped_by: Optional[NonFiniteLossError] = None  # the error, once raised
        self._params: Dict[int, List[torch.nn.Parameter]] = {}
        self._early: Dict[str, List[Dict[str, float]]] = {}  # step -> |terms| of its first checks
        self._references: Dict[str, Dict[str, float]] = {}  # step -> term -> reference
        self._warned: Dict[tuple, int] = {}  # (step, term) -> powers of growth_factor warned about

    @classmethod
    def from_config(cls, cfg, model: torch.nn.Module) -> "LossGuard":
        g = cfg.SOLVER.LOSS_GUARD
        return cls(g.ENABLED, g.GROWTH_WARNING_FACTOR, g.REFERENCE_ITERS,
                   {id(p): n for n, p in model.named_parameters()})

    def _optimizer_params(self, optimizer) -> List[torch.nn.Parameter]:
        if optimizer is None:  # losses only (float16 loss scaling: see MixedPrecision.checked)
            return []
        params = self._params.get(id(optimizer))
        if params is None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self._params[id(optimizer)] = params
        return params

    def check(self, step: str, iteration: int, losses: Dict[str, torch.Tensor], optimizer) -> None:
        """Raise NonFiniteLossError unless every loss term and every gradient is finite."""
        if not self.enabled:
            return
        values = [v.detach().float().reshape(()) for v in losses.values()]
        grads = [p.grad for p in self._optimizer_params(optimizer) if p.grad is not None]
        if grads:
            values.append(torch.nn.utils.get_total_norm(grads).float().to(values[0].device))
        host = torch.stack(values).cpu().tolist()  # the one sync
        terms = dict(zip(losses, host))
        if not all(math.isfinite(x) for x in host):
            bad_grads = self._non_finite_gradients(optimizer)
            # A finite loss and no non-finite gradient: the norm's sum of squares overflowed.
            if bad_grads or not all(math.isfinite(v) for v in terms.values()):
                self.stopped_by = NonFiniteLossError(self._message(step, iteration, terms, bad_grads))
                raise self.stopped_by
        if self.growth_factor > 0:
            self._watch_growth(step, iteration, terms)

    def _non_finite_gradients(self, optimizer) -> List[str]:
        return [self.param_names.get(id(p), "?") for p in self._optimizer_params(optimizer)
                if p.grad is not None and not torch.isfinite(p.grad).all()]

    # ------------------------------------------------------------------ messages
    def _message(self, step, iteration, terms, bad_grads) -> str:
        bad = {k: v for k, v in terms.items() if not math.isfinite(v)}
        others = ", ".join(f"{k} = {v:.4g}" for k, v in terms.items() if k not in bad)
        if bad:
            what = f"Non-finite loss at iteration {iteration} ({step}): " + ", ".join(f"{k} = {v}" for k, v in bad.items())
            what += f" (the other terms: {others})" if others else ""
        else:
            what = (f"Non-finite gradients at iteration {iteration} ({step}) of {len(bad_grads)} parameters "
                    f"({', '.join(bad_grads[:3])}{', ...' if len(bad_grads) > 3 else ''}), with finite losses ({others})")
        last = self.last_checkpoint()
        if last:
            where = (f"The last good checkpoint is {last}, unchanged: fix the cause (e.g. a lower "
                     "SOLVER.BASE_LR, or the loss weights) and continue from it with --resume.")
        else:
            where = ("No checkpoint of this run was saved yet" + (f" (it started from {self.started_from})"
                                                                  if self.started_from else "") + ".")
        return (f"{what}. Training stopped before the optimiser step, so the weights are finite and no "
                f"checkpoint was written. {where}")

    def _watch_growth(self, step: str, iteration: int, terms: Dict[str, float]) -> None:
        # A term's reference: the median of its first reference_iters values of this step kind in
        # the run (so far, while they are being collected: a run that diverges at its second step
        # is caught), at least REFERENCE_FLOOR times the median summed loss of those steps.
        references = self._references.get(step)
        if references:
            for name, value in terms.items():
                reference = references.get(name)
                if reference is None:
                    continue
                ratio = abs(value) / reference
                level = math.floor(math.log(ratio) / math.log(self.growth_factor)) if ratio > 1 else 0
                key = (step, name)
                if level > self._warned.get(key, 0):
                    self._warned[key] = level
                    logger.warning(
                        f"Loss {name} ({step}) is {value:.4g} at iteration {iteration}, {ratio:.3g} times its "
                        f"median {reference:.4g} over the run's first such steps (at least {REFERENCE_FLOOR:g} of "
                        "their summed loss): training may be diverging (e.g. SOLVER.BASE_LR too high)"
                    )
        early = self._early.setdefault(step, [])
        if len(early) < self.reference_iters:
            early.append({name: abs(value) for name, value in terms.items()})
            floor = REFERENCE_FLOOR * statistics.median(sum(e.values()) for e in early)
            self._references[step] = {
                name: max(statistics.median(e[name] for e in early if name in e), floor, 1e-12) for name in terms
            }
