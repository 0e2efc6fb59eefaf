# Copyright (c) CaGNet-D2 contributors.
"""Infrastructure shared by the package and the tools:

* :mod:`.cli`: config loading shared by the tools;
* :mod:`.path_handler`: ``cagnet://`` paths to files shipped in the package;
* :mod:`.atomic_file`: files written whole or not at all, with a clear error on a full disk.

What a user does with a trained model lives beside it: :mod:`cagnet.vocabulary` (evaluate with
another class list, add classes by name), :mod:`cagnet.visualization` (overlays, CM's and G's
feature maps), :mod:`cagnet.export` (the inference graph); measurements of a model or a dataset in
:mod:`cagnet.analysis`; the Table 1 / ablation benchmark in :mod:`cagnet.benchmark`.
"""
