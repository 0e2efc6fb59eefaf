# Copyright (c) CaGNet-D2 contributors.
"""The paper's ablations as config overrides of a dataset's CaGNet config
(``tools/benchmark_methods.py --ablations``; run by :func:`cagnet.benchmark.plan.plan_ablation_runs`).

Each row is a list of KEY VALUE overrides, so the same rows run on any dataset. The paper's
Pascal-VOC hIoU is given where our reference notes have it (shared/reference/cagnet.md: the full
model and the supplementary's two rows); the other tables' numbers are not in them.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

__all__ = ["AblationRow", "ABLATION_TABLES", "ablation_tables", "row_slug"]


@dataclass(frozen=True)
class AblationRow:
    label: str
    overrides: Tuple[str, ...]  # KEY VALUE ... ; () is the full CaGNet of the config
    paper_voc_hiou: Optional[float] = None  # percent


FULL = AblationRow("CaGNet (as configured)", (), 39.72)
CM = "MODEL.CONTEXTUAL_MODULE."


def _ratio_rows(num_seen: int, num_unseen: int) -> List[AblationRow]:
    """Table 5: expected seen:unseen pixel ratio of the finetuning step."""
    return [
        AblationRow(f"|S|:|U| ({num_seen}:{num_unseen})",
                    ("MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION", f"{num_unseen / (num_seen + num_unseen):.6f}")),
        AblationRow("1:1 (CaGNet)", (), 39.72),
        AblationRow("1:10", ("MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION", f"{10 / 11:.6f}")),
        AblationRow("0:1", ("MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION", "1.0")),
    ]


def ablation_tables(num_seen: int, num_unseen: int) -> List[Tuple[str, str, List[AblationRow]]]:
    """(key, title, rows) of every table; Table 5's first row depends on the class counts."""
    return [
        ("table2", "Table 2: modules", [
            AblationRow("E + C", (CM + "ENABLED", "False", "MODEL.FEATURE_GENERATOR.ENABLED", "False")),
            AblationRow("+ CM", ("MODEL.FEATURE_GENERATOR.ENABLED", "False")),
            AblationRow("+ G, D (G on noise, no CM)", (CM + "ENABLED", "False")),
            AblationRow("+ G, D, CM (CaGNet)", (), 39.72),
        ]),
        ("table3", "Table 3: the contextual module", [
            AblationRow("1x1 convs", (CM + "KERNEL_SIZE", "1", CM + "DILATIONS", "[1, 1, 1]", CM + "SELECTOR", "none",
                                      CM + "MULTI_SCALE", "False")),
            AblationRow("3x3 convs", (CM + "DILATIONS", "[1, 1, 1]", CM + "SELECTOR", "none", CM + "MULTI_SCALE", "False")),
            AblationRow("dilated 3x3 convs", (CM + "SELECTOR", "none", CM + "MULTI_SCALE", "False")),
            AblationRow("+ multi-scale", (CM + "SELECTOR", "none")),
            AblationRow("+ context selector (CaGNet)", (), 39.72),
            AblationRow("global selector", (CM + "SELECTOR", "global")),
            AblationRow("conv (mask): context convs without the centre tap", (CM + "MASK_CENTER", "True")),
        ]),
        ("table4", "Table 4: losses", [
            AblationRow("w/o KL", ("MODEL.CAGNET.KL_WEIGHT", "0.0")),
            AblationRow("w/o ADV", ("MODEL.CAGNET.ADV_WEIGHT", "0.0")),
            AblationRow("w/o REC", ("MODEL.CAGNET.REC_WEIGHT", "0.0")),
            AblationRow("all (CaGNet)", (), 39.72),
        ]),
        ("table5", "Table 5: seen:unseen ratio of generated pixels", _ratio_rows(num_seen, num_unseen)),
        ("supplementary", "Supplementary: the residual link and serial context convs", [
            AblationRow("w/o residual (X = F * sigmoid(Z))", (CM + "RESIDUAL", "False"), 38.62),
            AblationRow("parallel context convs", (CM + "SERIAL", "False"), 38.21),
            AblationRow("CaGNet", (), 39.72),
        ]),
    ]


ABLATION_TABLES = [key for key, _, _ in ablation_tables(1, 1)]


def row_slug(row: AblationRow) -> str:
    """A run name for a row: the same overrides give the same run in every table."""
    if not row.overrides:
        return "cagnet"
    import hashlib

    text = " ".join(row.overrides)
    words = "".join(c if c.isalnum() else "_" for c in " ".join(row.overrides[1::2]).lower())[:24].strip("_")
    return f"abl_{words}_{hashlib.sha1(text.encode()).hexdigest()[:6]}"


def select_tables(spec: str, num_seen: int, num_unseen: int) -> List[Tuple[str, str, List[AblationRow]]]:
    tables = ablation_tables(num_seen, num_unseen)
    if spec in ("", "all"):
        return tables
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in ABLATION_TABLES]
    if unknown:
        raise ValueError(f"--ablations: unknown tables {unknown}; choose from {ABLATION_TABLES} or 'all'")
    return [t for t in tables if t[0] in wanted]


def unique_runs(tables: Sequence[Tuple[str, str, List[AblationRow]]]):
    """run name -> overrides, over all rows of the tables."""
    runs = {}
    for _, _, rows in tables:
        for row in rows:
            runs.setdefault(row_slug(row), row.overrides)
    return runs
