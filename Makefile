# Quick start: `make demo` (train + evaluate CaGNet on the built-in dataset) and `make test`.
# Both create or update the virtual environment in .venv/ first; a second run installs nothing.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cagnet-installed
DEMO_CONFIG ?= configs/synthetic_scenes/cagnet_tiny_synthetic_scenes.yaml
DEMO_OUTPUT ?= output/demo

.PHONY: install demo test benchmark check-paper-config gpu-check clean-demo

install: $(STAMP)

# The stamp depends on everything that decides what gets installed.
$(STAMP): setup.py dev/install_env.sh
	bash dev/install_env.sh $(VENV)
	touch $(STAMP)

# The demo's output directory is its own: a second `make demo` trains it again from scratch.
demo: $(STAMP)
	$(PY) tools/train_net.py --config-file $(DEMO_CONFIG) OUTPUT_DIR $(DEMO_OUTPUT) OVERWRITE_OUTPUT_DIR True

test: $(STAMP)
	$(PY) -m pytest -q tests

benchmark: $(STAMP)
	$(PY) tools/benchmark.py --config-file configs/pascal_voc/cagnet_R101_os8_bs8_crop368_46k_voc20.yaml --batch-size 2 --crop 368  # the config as shipped: bfloat16 autocast

# The VOC paper config at full ResNet-101 depth, 200 iterations at crop 64 from a pretrained start
# (a stand-in unless MODEL.WEIGHTS is given): finite losses, falling CE, stable features.
check-paper-config: $(STAMP)
	$(PY) dev/check_paper_config.py

# On a GPU machine: benchmark (float32 and AMP, peak memory), 200 training iterations of the paper
# config, 2-process DDP with 2+ GPUs (dev/gpu_check.py). Fails with exit 2 without a GPU.
gpu-check: $(STAMP)
	$(PY) dev/gpu_check.py

clean-demo:
	rm -rf $(DEMO_OUTPUT)
