# Copyright (c) CaGNet-D2 contributors.
"""Using a trained model: class names in evaluation, adding classes, feature maps, export.

The tools in ``tools/`` (demo, visualize_features, add_classes, export_model, and
``tools/analysis/add_class_experiment.py``) are thin command lines over these modules:

* :mod:`.cli`: config loading shared by the tools;
* :mod:`.class_names`: evaluate a model whose class list differs from a dataset's (by name), and
  register a copy of a dataset with some classes removed from its vocabulary;
* :mod:`.add_classes`: extend a trained model's vocabulary and train C (and G) on generated features;
* :mod:`.feature_maps`: the context selector's scale map and the reconstruction-error maps;
* :mod:`.export`: the inference graph as one module for ``torch.export`` / TorchScript;
* :mod:`.visualize`: drawing (segmentation overlays with legends, feature-map figures);
* :mod:`.ablations`: the paper's ablations as config overrides (``tools/benchmark_methods.py``);
* :mod:`.path_handler`: ``cagnet://`` paths to files shipped in the package;
* :mod:`.atomic_file`: files written whole or not at all, with a clear error on a full disk.

Measurements of a model or a dataset are in :mod:`cagnet.analysis`.

Submodules are imported on use (``from cagnet.utils.export import InferenceGraph``); this file
imports nothing heavy.
"""
