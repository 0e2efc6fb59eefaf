# Copyright (c) CaGNet-D2 contributors.
"""A trained model's class list (its vocabulary), which zero-shot segmentation can change by name:

* :mod:`.class_names`: evaluate a model whose class list differs from a dataset's (matched by
  name), and register a copy of a dataset with some classes removed from its vocabulary;
* :mod:`.add_classes`: extend a trained model's vocabulary and train C (and G) on generated
  features (``tools/add_classes.py``, ``tools/analysis/add_class_experiment.py``).

Submodules are imported on use; this file imports nothing heavy.
"""
