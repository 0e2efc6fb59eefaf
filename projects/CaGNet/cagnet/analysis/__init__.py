# Copyright (c) CaGNet-D2 contributors.
"""Measurements of a trained model, a dataset or a method's cost: the logic behind the scripts in
``tools/analysis/`` (and the maintainer checks in ``dev/``), here so that tests can reach it.

* :mod:`.feature_diagnostics`: per-class distances of generated from real features, C's accuracy
  and seen bias (``tools/analysis/diagnose_features.py``);
* :mod:`.generator_probe`: how well G's features stand for their classes on real pixels
  (``tools/analysis/probe_generator.py``);
* :mod:`.dataset_realism`: the built-in dataset's design criteria (``tools/analysis/dataset_realism.py``);
* :mod:`.coco_scale`: COCO-stuff 164k at full size on a stand-in tree, and the peak memory of a
  process tree (``tools/analysis/measure_coco_scale.py``);
* :mod:`.paper_config_check`: the stand-in pretrained trunk and the stability checks of a paper
  config at full depth (``dev/check_paper_config.py``, ``dev/gpu_check.py``).

Submodules are imported on use; this file imports nothing heavy.
"""
