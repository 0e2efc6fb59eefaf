# Copyright (c) CaGNet-D2 contributors.
"""Value checks of a config at setup, in one place.

``validate_config(cfg)`` checks the project's own keys (and the detectron2 keys whose bad values
otherwise fail late, e.g. ``SOLVER.CHECKPOINT_PERIOD 0`` as a ZeroDivisionError at the first
iteration, or are silently accepted, e.g. a probability of 1.5) and raises one
``ConfigValueError`` that lists every bad key with its value and what it must be.
tools/train_net.py, ``cagnet.utils.cli.load_config`` (the other tools) and the trainers call it.
"""
import numbers
from typing import Callable, List, Optional, Sequence

__all__ = ["ConfigValueError", "validate_config"]


class ConfigValueError(ValueError):
    pass


# A check returns None for a good value, else what the value must be.
Check = Callable[[object], Optional[str]]


def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def int_at_least(low: int) -> Check:
    return lambda v: None if _is_int(v) and v >= low else f"an integer >= {low}"


def at_least(low: float) -> Check:
    return lambda v: None if _is_number(v) and v >= low else f"a number >= {low}"


def positive(v) -> Optional[str]:
    return None if _is_number(v) and v > 0 else "a number > 0"


def in_closed(low: float, high: float) -> Check:
    return lambda v: None if _is_number(v) and low <= v <= high else f"a number in [{low}, {high}]"


def in_half_open(low: float, high: float) -> Check:
    return lambda v: None if _is_number(v) and low <= v < high else f"a number in [{low}, {high})"


def one_of(*choices) -> Check:
    return lambda v: None if v in choices else f"one of {list(choices)}"


def each(check: Check, min_len: int = 0, length: Optional[int] = None) -> Check:
    def run(v):
        if not isinstance(v, (list, tuple)):
            return "a list"
        if length is not None and len(v) != length:
            return f"a list of {length} values"
        if len(v) < min_len:
            return f"a list of at least {min_len} values"
        bad = [x for x in v if check(x) is not None]
        return f"a list whose values are each {check(bad[0])}" if bad else None

    return run


def ordered_pair(v) -> Optional[str]:
    if each(positive, length=2)(v) is None and v[0] <= v[1]:
        return None
    return "two numbers 0 < low <= high"


def growth_factor(v) -> Optional[str]:
    return None if _is_number(v) and (v == 0 or v > 1) else "0 (off) or a number > 1"


NON_NEGATIVE = at_least(0)
FRACTION = in_closed(0, 1)
DROPOUT = in_half_open(0, 1)

RULES: Sequence = (
    # ------------------------------------------------------------------ solver and schedule
    ("SOLVER.MAX_ITER", int_at_least(1)),
    ("SOLVER.CHECKPOINT_PERIOD", int_at_least(1)),
    ("SOLVER.IMS_PER_BATCH", int_at_least(1)),
    ("SOLVER.BASE_LR", NON_NEGATIVE),
    ("SOLVER.D_BASE_LR", NON_NEGATIVE),
    ("SOLVER.MOMENTUM", in_half_open(0, 1)),
    ("SOLVER.WEIGHT_DECAY", NON_NEGATIVE),
    ("SOLVER.WARMUP_ITERS", int_at_least(0)),
    ("SOLVER.OPTIMIZER", one_of("SGD", "ADAM")),
    ("SOLVER.D_OPTIMIZER", one_of("SGD", "ADAM")),
    ("SOLVER.ADAM_BETAS", each(in_half_open(0, 1), length=2)),
    ("SOLVER.POLY_LR_POWER", NON_NEGATIVE),
    ("SOLVER.LR_MULTIPLIERS.BACKBONE", NON_NEGATIVE),
    ("SOLVER.LR_MULTIPLIERS.ASPP", NON_NEGATIVE),
    ("SOLVER.LR_MULTIPLIERS.CONTEXTUAL_MODULE", NON_NEGATIVE),
    ("SOLVER.LR_MULTIPLIERS.GENERATOR", NON_NEGATIVE),
    ("SOLVER.LR_MULTIPLIERS.CLASSIFIER", NON_NEGATIVE),
    ("SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS", int_at_least(0)),
    ("SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK", int_at_least(0)),
    ("SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK", int_at_least(0)),
    ("SOLVER.CAGNET_SCHEDULE.FINETUNING_LR_FACTOR", NON_NEGATIVE),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.OPTIMIZER", one_of("SGD", "ADAM")),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.BASE_LR", NON_NEGATIVE),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.D_BASE_LR", NON_NEGATIVE),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.STEPS", each(int_at_least(1))),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.GAMMA", positive),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.CLS_WEIGHT", NON_NEGATIVE),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.FAKE_CLS_WEIGHT", NON_NEGATIVE),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.FINETUNE_CLS_WEIGHT", NON_NEGATIVE),
    ("SOLVER.CAGNET_SCHEDULE.MIXED.FINETUNE_ADV_WEIGHT", NON_NEGATIVE),
    ("SOLVER.ZS3NET_STAGES.GENERATOR_ITERS", int_at_least(0)),
    ("SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS", int_at_least(0)),
    ("SOLVER.ZS3NET_STAGES.GENERATOR_LR", NON_NEGATIVE),
    ("SOLVER.ZS3NET_STAGES.CLASSIFIER_LR", NON_NEGATIVE),
    ("SOLVER.ZS3NET_STAGES.GENERATOR_STEPS_PER_BATCH", int_at_least(1)),
    ("SOLVER.LOSS_GUARD.GROWTH_WARNING_FACTOR", growth_factor),
    ("SOLVER.LOSS_GUARD.REFERENCE_ITERS", int_at_least(1)),
    ("SOLVER.PREEMPTION.SIGNALS", each(one_of("SIGTERM", "SIGUSR1", "SIGUSR2", "SIGINT", "SIGHUP"))),
    ("SOLVER.CHECKPOINT_PERIOD_MINUTES", at_least(0)),
    ("SOLVER.COLLECTIVE_TIMEOUT_MINUTES", positive),
    ("TEST.EVAL_PERIOD", int_at_least(0)),
    ("DATALOADER.NUM_WORKERS", int_at_least(0)),
    # ------------------------------------------------------------------ input
    ("INPUT.SCALE_RANGE", ordered_pair),
    ("INPUT.CROP.SIZE", each(int_at_least(1), length=2)),
    ("INPUT.RANDOM_FLIP", one_of("none", "horizontal", "vertical")),
    ("MODEL.SEM_SEG_HEAD.IGNORE_VALUE", in_closed(0, 255)),
    # ------------------------------------------------------------------ CaGNet model
    ("MODEL.DILATED_RESNET.NUM_BLOCKS", each(int_at_least(1))),
    ("MODEL.DILATED_RESNET.DILATIONS", each(int_at_least(1), min_len=1)),
    ("MODEL.DILATED_RESNET.STEM_TYPE", one_of("basic", "deeplab")),
    ("MODEL.ASPP_L.DILATIONS", each(int_at_least(1), min_len=1)),
    ("MODEL.ASPP_L.OUT_CHANNELS", int_at_least(1)),
    ("MODEL.CONTEXTUAL_MODULE.DILATIONS", each(int_at_least(1), min_len=1)),
    ("MODEL.CONTEXTUAL_MODULE.CHANNELS", int_at_least(0)),
    ("MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", each(int_at_least(1))),
    ("MODEL.FEATURE_GENERATOR.NEGATIVE_SLOPE", NON_NEGATIVE),
    ("MODEL.FEATURE_GENERATOR.DROPOUT", DROPOUT),
    ("MODEL.FEATURE_GENERATOR.OUTPUT_ACTIVATION", one_of("", "sigmoid")),
    ("MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", int_at_least(1)),
    ("MODEL.DISCRIMINATOR_CLASSIFIER.DROPOUT", DROPOUT),
    ("MODEL.CAGNET.CLS_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.ADV_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.REC_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.KL_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.FAKE_CLS_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.FINETUNE_ADV_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.PRIOR_MMD_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.REC_LOSS", one_of("l2", "mmd")),
    ("MODEL.CAGNET.ADV_LOSS", one_of("lsgan", "l1")),
    ("MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION", FRACTION),
    ("MODEL.CAGNET.FINETUNE_UNSEEN_CLASS_WEIGHT", NON_NEGATIVE),
    ("MODEL.CAGNET.FINETUNE_PIXELS", int_at_least(0)),
    ("MODEL.CAGNET.PRIOR_MMD_BANDWIDTHS", each(positive, min_len=1)),
    ("MODEL.CAGNET.PRIOR_MMD_PIXELS_PER_CLASS", int_at_least(0)),
    # ------------------------------------------------------------------ baselines, +ST
    ("MODEL.ZS3NET.NOISE_DIM", int_at_least(1)),
    ("MODEL.ZS3NET.GENERATOR_HIDDEN_DIMS", each(int_at_least(1))),
    ("MODEL.ZS3NET.GENERATOR_DROPOUT", DROPOUT),
    ("MODEL.ZS3NET.MMD_SIGMAS", each(positive, min_len=1)),
    ("MODEL.ZS3NET.MMD_PIXELS_PER_CLASS", int_at_least(0)),
    ("MODEL.ZS3NET.GENERATED_UNSEEN_FRACTION", in_half_open(0, 1)),
    ("MODEL.CALIBRATION.METHOD", one_of("none", "held_out_classes")),
    ("MODEL.CALIBRATION.NUM_HELD_OUT", int_at_least(0)),
    ("MODEL.CALIBRATION.NUM_IMAGES", int_at_least(1)),
    ("MODEL.CALIBRATION.NUM_CANDIDATES", int_at_least(2)),
    ("MODEL.SELF_TRAINING.TOP_PERCENT", in_closed(0, 100)),
    ("MODEL.SELF_TRAINING.IMS_PER_BATCH", int_at_least(1)),
)


def _lookup(cfg, key: str):
    node = cfg
    for part in key.split("."):
        if part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def validate_config(cfg) -> None:
    """Raise ConfigValueError naming every key of ``cfg`` with a value outside its range.

    Keys absent from ``cfg`` (a config without the CaGNet keys) are not checked.
    """
    problems: List[str] = []
    for key, check in RULES:
        try:
            value = _lookup(cfg, key)
        except KeyError:
            continue
        if key == "INPUT.CROP.SIZE" and not cfg.INPUT.CROP.get("ENABLED", False):
            continue
        expected = check(value)
        if expected is not None:
            problems.append(f"{key} = {value!r}: must be {expected}")
    try:
        phases = _lookup(cfg, "SOLVER.CAGNET_SCHEDULE")
        if phases.TRAINING_BLOCK == 0 and phases.FINETUNING_BLOCK == 0:
            problems.append("SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK and FINETUNING_BLOCK are both 0: one must be > 0")
    except KeyError:
        pass
    try:
        mixed = _lookup(cfg, "SOLVER.CAGNET_SCHEDULE.MIXED")
        if mixed.ENABLED:
            if not _lookup(cfg, "MODEL.FEATURE_GENERATOR.ENABLED"):
                problems.append("SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED = True needs G (it trains G, D and C on fixed "
                                "features): MODEL.FEATURE_GENERATOR.ENABLED must be True")
            steps = list(mixed.STEPS)
            if steps != sorted(set(steps)):
                problems.append(f"SOLVER.CAGNET_SCHEDULE.MIXED.STEPS = {steps!r}: must be strictly increasing")
            if _lookup(cfg, "SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS") >= _lookup(cfg, "SOLVER.MAX_ITER"):
                problems.append("SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED = True but SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS >= "
                                "SOLVER.MAX_ITER: the mixed phase would never run")
    except KeyError:
        pass
    if problems:
        raise ConfigValueError("Invalid config value" + ("s" if len(problems) > 1 else "") + ":\n  "
                               + "\n  ".join(problems))
