# Copyright (c) CaGNet-D2 contributors.
from .zero_shot_evaluator import ZeroShotSemSegEvaluator, format_zero_shot_table, zero_shot_metrics
from .calibration import (
    ScoreHistogram,
    ScoreStatistics,
    area_under_curve,
    calibration_curve,
    collect_score_statistics,
    load_score_statistics,
    select_calibration,
)
from .rescore import rescore_predictions
