# Copyright (c) CaGNet-D2 contributors.
"""Helpers of the real-dataset tests: miniature copies in the raw on-disk formats, the prepare
scripts, the train mapper, the evaluator and an eval-only run of tools/train_net.py."""
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog

from cagnet import add_cagnet_config
from cagnet.data import ZeroShotSemSegDatasetMapper
from cagnet.evaluation import ZeroShotSemSegEvaluator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = 32, 40  # miniature image size

# The paper configs shrunk to a tiny CPU model (eval-only runs in seconds).
TINY_MODEL_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "50",
    "MODEL.DILATED_RESNET.NUM_BLOCKS", "[1,1,1,1]",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "16",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "32",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "8",
    "MODEL.ASPP_L.OUT_CHANNELS", "32",
    "MODEL.FEATURE_GENERATOR.HIDDEN_DIMS", "[32]",
    "MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM", "32",
    "MODEL.CAGNET.CHANNELS_LAST", "False",
    "DATALOADER.NUM_WORKERS", "0",
]


def prepare_module(name: str):
    """Import datasets/<name>.py (a script, not a package module)."""
    path = os.path.join(REPO, "datasets")
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


def write_jpeg(path: str, h: int = H, w: int = W, seed: int = 0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format="JPEG")


def write_png(path: str, values: np.ndarray, palette=None) -> None:
    """A grayscale PNG, or with ``palette`` a palette PNG whose indices are ``values``."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    values = np.ascontiguousarray(values, dtype=np.uint8)
    if palette is None:
        img = Image.fromarray(values)
    else:
        img = Image.frombytes("P", (values.shape[1], values.shape[0]), values.tobytes())
        img.putpalette(palette)
    img.save(path)


def read_png(path: str) -> np.ndarray:
    with Image.open(path) as img:
        assert img.mode == "L", f"{path} is {img.mode}, expected a grayscale label PNG"
        return np.array(img)


def snapshot(directory: str):
    """{file name: (mtime_ns, bytes)} of the files in ``directory``."""
    out = {}
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        with open(p, "rb") as f:
            out[name] = (os.stat(p).st_mtime_ns, f.read())
    return out


def train_labels(dataset_name: str):
    """{image_id: label map} that the train mapper gives for every record (no augmentation)."""
    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_list([
        "DATASETS.TRAIN", (dataset_name,),
        "INPUT.CROP.ENABLED", False,
        "INPUT.SCALE_RANGE", (1.0, 1.0),
        "INPUT.RANDOM_FLIP", "none",
        "INPUT.FORMAT", "BGR",
    ])
    mapper = ZeroShotSemSegDatasetMapper(cfg, is_train=True)
    out = {}
    for record in DatasetCatalog.get(dataset_name):
        sample = mapper(record)
        assert tuple(sample["image"].shape) == (3, H, W)
        out[record["image_id"]] = sample["sem_seg"].numpy()
    return out


def evaluate(dataset_name: str, predictions, num_classes: int, output_dir=None):
    """Zero-shot metrics of per-image predicted class maps ({image_id: (H, W) ints})."""
    ev = ZeroShotSemSegEvaluator(dataset_name, distributed=False, output_dir=output_dir)
    ev.reset()
    for record in DatasetCatalog.get(dataset_name):
        pred = torch.from_numpy(np.asarray(predictions[record["image_id"]], dtype=np.int64))
        logits = torch.nn.functional.one_hot(pred, num_classes).permute(2, 0, 1).float()
        ev.process([{"file_name": record["file_name"]}], [{"sem_seg": logits}])
    return ev.evaluate()["sem_seg"]


def hiou(seen: float, unseen: float) -> float:
    return 2 * seen * unseen / (seen + unseen)


def run_train_net_eval(config: str, datasets_root: str, output_dir: str, *opts, timeout: int = 120):
    """``tools/train_net.py --config-file config --eval-only`` with the tiny model, with
    ``$DETECTRON2_DATASETS`` pointing at a miniature copy; returns (stdout, results of the
    first test dataset)."""
    env = dict(os.environ, DETECTRON2_DATASETS=datasets_root, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [
        sys.executable, os.path.join(REPO, "tools", "train_net.py"),
        "--config-file", os.path.join(REPO, config), "--eval-only",
        *TINY_MODEL_OPTS, "OUTPUT_DIR", output_dir, *opts,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"train_net failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout, proc.stderr


def read_results(output_dir: str, dataset_name: str):
    path = os.path.join(output_dir, "inference", dataset_name, "zs_sem_seg_results.json")
    with open(path) as f:
        return json.load(f)


def eval_config_in_process(config: str, train_name: str, test_name: str, output_dir: str):
    """What ``train_net.py --config-file config --eval-only`` does, in this process, with
    DATASETS pointed at miniature copies registered under other names; returns the results."""
    from cagnet.engine import CaGNetTrainer

    cfg = get_cfg()
    add_cagnet_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config))
    cfg.merge_from_list(TINY_MODEL_OPTS + [
        "DATASETS.TRAIN", (train_name,), "DATASETS.TEST", (test_name,), "OUTPUT_DIR", output_dir,
    ])
    cfg.freeze()
    model = CaGNetTrainer.build_model(cfg)
    model.eval()
    return CaGNetTrainer.test(cfg, model)["sem_seg"]
