# Copyright (c) CaGNet-D2 contributors.
"""The methods of the paper's Table 1 (and our presets) as benchmark runs.

A *method* is what a table row reports (``zs3net+st``); a *run* is one training whose config file
is ``configs/<dataset>/<run>_<recipe>_<dataset>.yaml`` beside the dataset's CaGNet config: the run
name is the file's prefix (up to the first underscore). Several methods can be read from one run
(SPNet is SPNet-c's network at gamma = 0).
"""
from dataclasses import dataclass
from typing import Dict, Optional

__all__ = ["Method", "METHODS", "DEFAULT_METHODS", "SAME_NETWORK", "RENAMED_RUNS", "METRICS", "run_of"]


@dataclass(frozen=True)
class Method:
    run: str  # the run (= config-file prefix) it is read from
    label: str  # its name in tables
    base: Optional[str] = None  # the run whose model_final.pth it continues (+ST)
    gamma: str = "model"  # the calibration constant it is reported at: "model" (its own) or "zero"


METHODS: Dict[str, Method] = {
    "spnet": Method("spnet", "SPNet", gamma="zero"),
    "spnet-c": Method("spnet-c", "SPNet-c"),
    "zs3net": Method("zs3net", "ZS3Net"),
    "zs3net+st": Method("zs3net-st", "ZS3Net+ST", base="zs3net"),
    "cagnet": Method("cagnet", "CaGNet"),
    "cagnet+st": Method("cagnet-st", "CaGNet+ST", base="cagnet"),
    # Calibrated variants (MODEL.CALIBRATION, as SPNet-c): a second network each; not in the default list.
    "zs3net-c": Method("zs3net-c", "ZS3Net-c"),
    "cagnet-c": Method("cagnet-c", "CaGNet-c"),
    # The authors' two-run recipe (SOLVER.CAGNET_SCHEDULE.MIXED); not in the default list.
    "cagnet-reference": Method("cagnet-reference", "CaGNet, reference recipe"),
    # The built-in CaGNet on the authors' schedule; not in the default list.
    "cagnet-two-phase": Method("cagnet-two-phase", "CaGNet, two-phase"),
}
DEFAULT_METHODS = ["spnet", "spnet-c", "zs3net", "zs3net+st", "cagnet", "cagnet+st"]
# calibrated run -> the uncalibrated run whose network it shares when both are asked for
SAME_NETWORK = {"zs3net-c": "zs3net", "cagnet-c": "cagnet"}
# Run names (and config-file prefixes) before this release: a benchmark directory made with them
# has its runs and frozen configs moved to the new names (cagnet.benchmark.plan.adopt_renamed_runs).
RENAMED_RUNS = {"zs3net_st": "zs3net-st", "cagnet_st": "cagnet-st", "cagnet_reference": "cagnet-reference",
                "cagnet_two-phase": "cagnet-two-phase"}
# (key in the evaluator's results, column label)
METRICS = [("hIoU", "hIoU"), ("mIoU", "mIoU"), ("mIoU-seen", "mIoU seen"), ("mIoU-unseen", "mIoU unseen"),
           ("pACC", "pixel acc."), ("pACC-seen", "pixel acc. seen"), ("pACC-unseen", "pixel acc. unseen"),
           ("mACC", "mean acc."), ("mACC-seen", "mean acc. seen"), ("mACC-unseen", "mean acc. unseen"),
           ("AUSUC", "AUSUC")]


def run_of(method: str, methods) -> str:
    """The run a method is read from when ``methods`` are benchmarked together."""
    return "spnet-c" if method == "spnet" and "spnet-c" in methods else METHODS[method].run
