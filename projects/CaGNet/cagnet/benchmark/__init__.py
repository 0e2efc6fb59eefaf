# Copyright (c) CaGNet-D2 contributors.
"""The benchmark behind ``tools/benchmark_methods.py``: the paper's Table 1 and ablations as runs.

* :mod:`.methods`: the methods, the run (config-file prefix) each is read from, the metrics;
* :mod:`.ablations`: the paper's ablation tables as config overrides of a dataset's CaGNet config;
* :mod:`.plan`: which runs a benchmark makes and their frozen configs;
* :mod:`.scheduler`: running (run, seed) jobs a few at a time, dependencies first, resumable;
* :mod:`.tables`: metrics from the scored runs, Table 1 and the ablation tables.

The script keeps what is process-level: its command line, the train_net.py and scoring
subprocesses, signals and the figure.
"""
