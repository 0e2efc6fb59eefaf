#!/usr/bin/env bash
# Create or update the project's virtual environment. Idempotent: every step first checks whether
# its result is already there. Usage: dev/install_env.sh [VENV_DIR]
set -euo pipefail
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
PIP=("$PY" -m pip install --disable-pip-version-check -q)

# torch 2.14.1 + torchvision 0.29.1: local wheels on our machines (see docs/INSTALL.md).
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  echo "[install] torch==2.14.1 torchvision==0.29.1"
  "${PIP[@]}" torch==2.14.1 torchvision==0.29.1
fi

# detectron2: keep an importable one (e.g. a user's own build); else the pure-Python wheel of
# upstream detectron2 (sal-detectron2 0.7.2). Its compiled _C targets CPython 3.10 and is never
# loaded; semantic segmentation does not need it. The wheel also ships a top-level `tools/`
# package that would shadow ours, and metadata that pins numpy<2 (the code runs on numpy 2), so
# only the `detectron2/` package is moved in.
if ! "$PY" -c "import detectron2" 2>/dev/null; then
  echo "[install] detectron2 (sal-detectron2==0.7.2, pure Python)"
  STAGE="$(mktemp -d)"
  "${PIP[@]}" --no-deps --only-binary=:all: --python-version 3.10 --implementation cp \
    --target "$STAGE" sal-detectron2==0.7.2
  SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  rm -rf "$SITE/detectron2"
  mv "$STAGE/detectron2" "$SITE/"
  rm -rf "$STAGE"
fi

# detectron2's runtime dependencies, then this package (editable) with its own.
echo "[install] dependencies and the cagnet package"
"${PIP[@]}" fvcore iopath omegaconf hydra-core yacs tabulate termcolor cloudpickle matplotlib \
  tqdm tensorboard pycocotools 'opencv-python-headless>=4.13,<5' pytest
"${PIP[@]}" -e ".[fasttext,test]"
"$PY" -c "import torch, torchvision, detectron2, cagnet; print('[install] ok: torch', torch.__version__, '| detectron2', detectron2.__version__)"
