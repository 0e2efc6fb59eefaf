# Copyright (c) CaGNet-D2 contributors.
"""Pictures of a trained model (``tools/demo.py``, ``tools/visualize_features.py``):

* :mod:`.feature_maps`: the context selector's scale map and the reconstruction-error maps;
* :mod:`.drawing`: segmentation overlays with legends, feature-map figures.

Submodules are imported on use; this file imports nothing heavy.
"""
