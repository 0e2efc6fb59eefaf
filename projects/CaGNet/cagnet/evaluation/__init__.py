# Copyright (c) CaGNet-D2 contributors.
from .zero_shot_evaluator import ZeroShotSemSegEvaluator, format_zero_shot_table, zero_shot_metrics
