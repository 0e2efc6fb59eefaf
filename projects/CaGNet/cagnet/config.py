# Copyright (c) CaGNet-D2 contributors.
"""Config keys of CaGNet-D2. Defaults are the paper's setting (see ``shared/reference/cagnet.md``);
where the authors' code differs, the key that reproduces it is named in the comment."""
import logging
import os
from typing import Dict, List, Sequence

import yaml

from detectron2.config import CfgNode as CN

__all__ = ["add_cagnet_config", "RENAMED_KEYS", "RENAMED_CONFIG_PREFIXES", "CaGNetCfgNode", "rename_old_keys",
           "rename_old_keys_in_list", "renamed_config_file"]

# Keys renamed in this release: old full key -> new full key (a key or a node of keys). For one
# release a config file (or its _BASE_) and an override list may still use the old name: the value
# goes to the new key, with a warning naming both. Giving both names in one file or one list is an
# error.
RENAMED_KEYS: Dict[str, str] = {
    # It detaches the input of CM's context branch (context convs -> latent code Z) only; E still
    # learns from X = F + F * sigmoid(Z) through F.
    "MODEL.CONTEXTUAL_MODULE.DETACH_INPUT": "MODEL.CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT",
    # Two schedules whose names said nothing of which trainer reads them ("phases" vs "stages"):
    # CaGNet's alternation of training and finetuning steps (CaGNetTrainer), and the generator
    # and classifier stages of the staged trainer (ZS3Net; SPNet has only the segmentation stage).
    # A node: every key under the old name moves to the same key under the new one.
    "SOLVER.PHASES": "SOLVER.CAGNET_SCHEDULE",
    "SOLVER.STAGES": "SOLVER.ZS3NET_STAGES",
}

# Config-file prefixes renamed in this release (configs/README.md: the prefix is the method's run
# name, words joined by hyphens). For one release the old path (given, or a _BASE_) is read from
# the renamed file, with a warning.
RENAMED_CONFIG_PREFIXES: Dict[str, str] = {
    "zs3net_st_": "zs3net-st_",
    "cagnet_st_": "cagnet-st_",
    "cagnet_reference_": "cagnet-reference_",
    "cagnet_two-phase_": "cagnet-two-phase_",
}

logger = logging.getLogger(__name__)


def renamed_config_file(filename: str) -> str:
    """``filename``, or, when it does not exist and its name has an old prefix of
    :data:`RENAMED_CONFIG_PREFIXES`, the renamed file beside it (with a warning)."""
    if os.path.exists(filename):
        return filename
    folder, name = os.path.split(filename)
    for old, new in RENAMED_CONFIG_PREFIXES.items():
        if name.startswith(old) and os.path.isfile(os.path.join(folder, new + name[len(old):])):
            renamed = os.path.join(folder, new + name[len(old):])
            logger.warning(f"{filename} is renamed {renamed}; the old name is read until the next release, "
                           f"use {renamed}")
            return renamed
    return filename


def _renamed(old: str, new: str, where: str) -> None:
    logger.warning(f"{where}: {old} is renamed {new}; the old name is read until the next release, "
                   f"use {new}")


def _both_given(old: str, new: str, where: str):
    from .config_validation import ConfigValueError

    return ConfigValueError(f"{where}: both {old} (the old name) and {new} are given; keep {new} only")


_MISSING = object()


def _get(tree, full_key: str):
    for part in full_key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _MISSING
        tree = tree[part]
    return tree


def _has(tree, full_key: str) -> bool:
    return _get(tree, full_key) is not _MISSING


def _leaves(value, prefix: str) -> List:
    """(full key, value) of the leaves under ``prefix`` (``[(prefix, value)]`` for a leaf)."""
    if not isinstance(value, dict):
        return [(prefix, value)]
    return [leaf for name, sub in value.items() for leaf in _leaves(sub, f"{prefix}.{name}")]


def _renamed_key(key: str) -> str:
    """``key`` with an old name of :data:`RENAMED_KEYS` (the key itself or a node above it)
    replaced by its new name; ``key`` if none applies."""
    for old, new in RENAMED_KEYS.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old):]
    return key


def rename_old_keys(tree: Dict, where: str = "config file", own: Dict = None) -> Dict:
    """Move the values of the old keys of :data:`RENAMED_KEYS` in a nested dict (a loaded config)
    to their new names, in place, with a warning; returns ``tree``. ``own``: the file's own keys
    when ``tree`` is a file merged over its ``_BASE_`` (whose old keys are renamed already): the
    file's old key then overrides its base's new one. Raises ConfigValueError when both names
    are given (in ``own``, else in ``tree``)."""
    for old, new in RENAMED_KEYS.items():
        if not _has(tree, old):
            continue
        *old_path, old_leaf = old.split(".")
        parent = tree
        for part in old_path:
            parent = parent[part]
        value = parent.pop(old_leaf)
        given = own if own is not None else tree
        for old_key, leaf in _leaves(value, old):
            new_key = new + old_key[len(old):]
            if _has(given, new_key):
                raise _both_given(old_key, new_key, where)
            *new_path, new_leaf = new_key.split(".")
            target = tree
            for part in new_path:
                target = target.setdefault(part, type(target)())
            target[new_leaf] = leaf
        _renamed(old, new, where)
    return tree


def rename_old_keys_in_list(opts: Sequence, where: str = "overrides") -> List:
    """A KEY VALUE override list with the old keys of :data:`RENAMED_KEYS` (or keys under an old
    node) replaced by their new names (with a warning). Raises ConfigValueError when both names
    are given."""
    opts = list(opts)
    keys = opts[0::2]
    for i, key in enumerate(keys):
        new = _renamed_key(key)
        if new != key:
            if new in keys:
                raise _both_given(key, new, where)
            opts[2 * i] = new
            _renamed(key, new, where)
    return opts


class CaGNetCfgNode(CN):
    """detectron2's CfgNode that accepts the old names of :data:`RENAMED_KEYS` in
    ``merge_from_file`` (through ``merge_from_other_cfg``) and ``merge_from_list``.
    :func:`add_cagnet_config` makes a ``get_cfg()`` config one, so that every path that loads a
    config (tools/train_net.py, ``cagnet.utils.cli.load_config``, the trainers) accepts them."""

    # Only the root is a CaGNetCfgNode: the nodes below it stay detectron2 CfgNodes, because yacs
    # merges a node only into one of the same type.
    @classmethod
    def _create_config_tree_from_dict(cls, dic, key_list):
        return CN._create_config_tree_from_dict(dic, key_list)

    @classmethod
    def _decode_cfg_value(cls, value):
        return CN._decode_cfg_value(value)

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False):
        filename = renamed_config_file(str(filename))  # also a renamed _BASE_ (this is called for it)
        merged = super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)  # bases renamed
        with cls._open_cfg(filename) as f:
            own = (yaml.unsafe_load if allow_unsafe else yaml.safe_load)(f) or {}
        return rename_old_keys(merged, str(filename), own=own)

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = True):
        return super().merge_from_file(renamed_config_file(str(cfg_filename)), allow_unsafe=allow_unsafe)

    def merge_from_other_cfg(self, cfg_other):
        return super().merge_from_other_cfg(rename_old_keys(cfg_other, "config"))

    def merge_from_list(self, cfg_list):
        return super().merge_from_list(rename_old_keys_in_list(cfg_list))


def add_cagnet_config(cfg):
    """Add the CaGNet keys with their defaults to a detectron2 config (in place). A plain
    detectron2 CfgNode (``get_cfg()``) becomes a :class:`CaGNetCfgNode`: old key names of
    :data:`RENAMED_KEYS` are then read with a warning."""
    if type(cfg) is CN:
        object.__setattr__(cfg, "__class__", CaGNetCfgNode)  # CfgNode.__setattr__ takes config values only
    # ---------------------------------------------------------------- backbone E
    # DeepLab-v2: dilated ResNet (output stride 8) + ASPP-L. Widths come from MODEL.RESNETS
    # (STEM_OUT_CHANNELS, RES2_OUT_CHANNELS, WIDTH_PER_GROUP, NORM, STRIDE_IN_1X1, DEPTH).
    cfg.MODEL.DILATED_RESNET = CN()
    # Residual blocks per stage res2..res5 (1 to 4 stages); empty: taken from MODEL.RESNETS.DEPTH.
    cfg.MODEL.DILATED_RESNET.NUM_BLOCKS = []
    # Dilation of each stage; a dilated stage keeps its input resolution ([1, 1, 2, 4]: stride 8).
    cfg.MODEL.DILATED_RESNET.DILATIONS = [1, 1, 2, 4]
    # "basic" (one 7x7 conv, DeepLab-v2 / torchvision) or "deeplab" (three 3x3 convs).
    cfg.MODEL.DILATED_RESNET.STEM_TYPE = "basic"
    # Zero-init the last conv of each residual branch (random init only; weights overwrite it).
    cfg.MODEL.DILATED_RESNET.ZERO_INIT_RESIDUAL = True
    cfg.MODEL.ASPP_L = CN()
    # Four parallel 3x3 convs with these dilations, summed (ASPP-L of DeepLab-v2).
    cfg.MODEL.ASPP_L.DILATIONS = [6, 12, 18, 24]
    # Channels l of the feature map F (and of X, the generator's output): 600 in the paper.
    cfg.MODEL.ASPP_L.OUT_CHANNELS = 600

    # --------------------------------------------------------- contextual module CM
    cfg.MODEL.CONTEXTUAL_MODULE = CN()
    # Dilations of the three 3x3 conv + ReLU context layers.
    cfg.MODEL.CONTEXTUAL_MODULE.DILATIONS = [1, 2, 5]
    # Channels of each context map; 0: same as the features (paper). Reference code: 256.
    cfg.MODEL.CONTEXTUAL_MODULE.CHANNELS = 0
    # Serial (paper) or parallel (ablation of the paper's Table 4) context convs.
    cfg.MODEL.CONTEXTUAL_MODULE.SERIAL = True
    # X = F + F * sigmoid(Z) (paper) or X = F * sigmoid(Z) (ablation without the residual link).
    cfg.MODEL.CONTEXTUAL_MODULE.RESIDUAL = True
    # Feed sigmoid(F) instead of F to the context convs (reference code).
    cfg.MODEL.CONTEXTUAL_MODULE.SIGMOID_INPUT = False
    # Squash the output: X = sigmoid(F + F * sigmoid(Z)) (reference code; pair it with
    # MODEL.FEATURE_GENERATOR.OUTPUT_ACTIVATION "sigmoid"). Without CM (ENABLED False) it makes
    # X = sigmoid(F), so that the ablation keeps the feature range G is built for.
    cfg.MODEL.CONTEXTUAL_MODULE.SIGMOID_OUTPUT = False
    # Stop the gradients of CM's context branch (F -> context convs -> selector -> latent code Z:
    # KL, and REC through Z) at its input F, so that E learns from X = F + F * sigmoid(Z) through
    # F only. Not in the paper; it keeps a backbone trained from scratch stable (the built-in
    # config). Not MODEL.CAGNET.DETACH_LATENT (G's input). Was DETACH_INPUT (read, with a warning,
    # until the next release).
    cfg.MODEL.CONTEXTUAL_MODULE.DETACH_CONTEXT_BRANCH_INPUT = False
    # False: no CM (the ablation "+G,D" of the paper's Table 2): X = F, and G's latent code is
    # z ~ N(0, I) in both steps (no KL term).
    cfg.MODEL.CONTEXTUAL_MODULE.ENABLED = True
    # Ablations of the paper's Table 3: kernel size of the context convs (1: "1x1 convs"); the
    # context selector "pixel" (paper), "global" (one weight per scale and image) or "none";
    # the latent code from all context maps (multi-scale, paper) or from the last one.
    cfg.MODEL.CONTEXTUAL_MODULE.KERNEL_SIZE = 3
    cfg.MODEL.CONTEXTUAL_MODULE.SELECTOR = "pixel"
    cfg.MODEL.CONTEXTUAL_MODULE.MULTI_SCALE = True
    # Table 3's "conv (mask)", as we read it (our reference notes do not describe the row): the
    # centre tap of every context conv is zero, so the context maps at a pixel do not see the pixel
    # itself (the pixel selector's 3x3 conv reads neighbouring maps, which do).
    cfg.MODEL.CONTEXTUAL_MODULE.MASK_CENTER = False

    # ---------------------------------------------------------------- generator G
    cfg.MODEL.FEATURE_GENERATOR = CN()
    # False: no G and no D (the ablations "E&C" and "+CM" of the paper's Table 2): the training
    # step is C's cross-entropy (+ KL with CM) and there is no finetuning step.
    cfg.MODEL.FEATURE_GENERATOR.ENABLED = True
    # Hidden widths of the pixel-wise MLP on [z, w]. Reference code: [1024, 960, 864, 784, 720].
    cfg.MODEL.FEATURE_GENERATOR.HIDDEN_DIMS = [512]
    cfg.MODEL.FEATURE_GENERATOR.NEGATIVE_SLOPE = 0.2  # LeakyReLU
    cfg.MODEL.FEATURE_GENERATOR.DROPOUT = 0.5
    # "" (linear output, paper) or "sigmoid" (reference code).
    cfg.MODEL.FEATURE_GENERATOR.OUTPUT_ACTIVATION = ""

    # ------------------------------------------------- discriminator D and classifier C
    cfg.MODEL.DISCRIMINATOR_CLASSIFIER = CN()
    # Output channels of the 1x1 conv that D and C share (reference code: 1024).
    cfg.MODEL.DISCRIMINATOR_CLASSIFIER.HIDDEN_DIM = 1024
    cfg.MODEL.DISCRIMINATOR_CLASSIFIER.DROPOUT = 0.5

    # ------------------------------------------------------------ CaGNet losses
    cfg.MODEL.CAGNET = CN()
    # Class-embedding table (.npz from tools/build_embeddings.py); "": the file named by the
    # training dataset's metadata (`class_embeddings_file`).
    cfg.MODEL.CAGNET.EMBEDDINGS_FILE = ""
    cfg.MODEL.CAGNET.CLS_WEIGHT = 1.0
    cfg.MODEL.CAGNET.ADV_WEIGHT = 1.0
    cfg.MODEL.CAGNET.REC_WEIGHT = 10.0  # lambda1
    cfg.MODEL.CAGNET.KL_WEIGHT = 100.0  # lambda2
    # Reconstruction loss: "l2" (paper) or "mmd" (the reference code's content loss, with
    # REC_WEIGHT 50: per run of consecutive equal labels in raster order, the square root of an
    # MMD with Gaussian kernels of variances 2..60, averaged over the runs; losses.label_run_mmd_loss).
    cfg.MODEL.CAGNET.REC_LOSS = "l2"
    # Normalisation of the "l2" loss (losses.reconstruction_loss); all average over the labelled
    # pixels (as CE does). "channel_sum": per pixel the squared L2 norm summed over the l channels
    # (the paper's Eq. 1); "channel_mean": also averaged over the channels (F.mse_loss), i.e.
    # lambda1 / l per pixel.
    # The paper configs use "channel_mean" with DETACH_REC_TARGET (configs/Base-CaGNet.yaml).
    cfg.MODEL.CAGNET.REC_NORMALIZATION = "channel_sum"
    # Adversarial loss on D's sigmoid score: "lsgan" (paper) or "l1" (reference code).
    cfg.MODEL.CAGNET.ADV_LOSS = "lsgan"
    # Weight of C's cross-entropy on generated seen features in the training step (reference: 0.25);
    # it trains C only (the generated features are detached), as in the reference code.
    cfg.MODEL.CAGNET.FAKE_CLS_WEIGHT = 0.0
    # Detach z before G, so that the reconstruction loss does not train CM (reference code).
    cfg.MODEL.CAGNET.DETACH_LATENT = False
    # Detach the real feature x in L_REC, so that only G (and CM through z) learn from it
    # (reference code). The paper's L_REC = ||x - G(z, w)||^2 also pulls x towards G(z, w); from a
    # pretrained ResNet-101 that collapses X (or, summed over channels, diverges): the paper
    # configs set True (configs/Base-CaGNet.yaml, measured by dev/check_paper_config.py).
    cfg.MODEL.CAGNET.DETACH_REC_TARGET = False
    # Finetuning step: expected fraction of generated pixels labelled with unseen classes (1:1).
    cfg.MODEL.CAGNET.FINETUNE_UNSEEN_FRACTION = 0.5
    # Finetuning step: prior weight of each unseen class against 1 for each seen class when the
    # labels are drawn (reference code: 1 + gen_unseen_rate = 10, i.e. 77% unseen pixels on VOC's
    # 15:5); it replaces FINETUNE_UNSEEN_FRACTION by wU / (S + wU). 0: FINETUNE_UNSEEN_FRACTION.
    cfg.MODEL.CAGNET.FINETUNE_UNSEEN_CLASS_WEIGHT = 0.0
    # Finetuning step: generated pixels per iteration and worker; 0: as many as the worker's share
    # of a training batch has feature pixels (IMS_PER_BATCH / workers * (crop / stride)^2), so that
    # all workers together generate as many as one training batch holds, whatever their number.
    cfg.MODEL.CAGNET.FINETUNE_PIXELS = 0
    # Finetuning step: weight of G's adversarial term on generated features (0: reference code).
    cfg.MODEL.CAGNET.FINETUNE_ADV_WEIGHT = 1.0
    # Finetuning step: C's cross-entropy on the generated features trains C only (not in the paper,
    # which updates G with it too; ZS3Net retrains its classifier on a frozen generator's output).
    cfg.MODEL.CAGNET.FINETUNE_DETACH_GENERATED = False
    # Not in the paper (0 = off). Class-wise MMD between G's features for z ~ N(0, I) (the
    # finetuning step's latent code) and the real features of each seen class in the batch; only G
    # learns from it. Without it G can read the class from the contextual latent code and ignore w,
    # and then G(z ~ N(0, I), w) resembles no class (see docs/experiments/2026-12-02_builtin-config-check.md).
    cfg.MODEL.CAGNET.PRIOR_MMD_WEIGHT = 0.0
    # Gaussian kernel bandwidths of that MMD, as multiples of the batch's median feature distance.
    cfg.MODEL.CAGNET.PRIOR_MMD_BANDWIDTHS = [0.125, 0.25, 0.5, 1.0]
    # Real pixels per class and batch in that MMD (a random subset; 0: all).
    cfg.MODEL.CAGNET.PRIOR_MMD_PIXELS_PER_CLASS = 64
    # Warn loudly when MODEL.WEIGHTS is empty (paper configs need an ImageNet-pretrained E).
    cfg.MODEL.CAGNET.EXPECT_PRETRAINED_BACKBONE = True
    # Convert the model and its inputs to channels_last (4-6x faster convs on our CPUs).
    cfg.MODEL.CAGNET.CHANNELS_LAST = True

    # ------------------------------------- schedule of CaGNet (CaGNetTrainer; SOLVER.ZS3NET_STAGES: SPNet, ZS3Net)
    cfg.SOLVER.CAGNET_SCHEDULE = CN()
    # Iterations of training steps only before the alternation starts (reference: 40k).
    cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_ONLY_ITERS = 0
    # Then alternate blocks: this many training steps, then this many finetuning steps.
    cfg.SOLVER.CAGNET_SCHEDULE.TRAINING_BLOCK = 100
    cfg.SOLVER.CAGNET_SCHEDULE.FINETUNING_BLOCK = 100
    # The finetuning steps' learning rate as a multiple of the schedule's (paper: silent, 1.0). The
    # reference code finetuned with Adam at 5e-5 after training D+C at 2.5e-4 and G at 2e-4: 0.2,
    # which on the built-in data is worse (docs/experiments/2026-12-07_finetuning-lr.md).
    cfg.SOLVER.CAGNET_SCHEDULE.FINETUNING_LR_FACTOR = 1.0

    # The reference code's second run (its configs/*_finetune.yaml, `--schedule mixed`) as the
    # phase after TRAINING_ONLY_ITERS. False: one schedule, E and CM keep learning through the
    # alternation (the paper's text). True: from TRAINING_ONLY_ITERS on, E (ResNet and ASPP) and CM
    # are frozen (run without gradient, in no optimiser: bit-identical), the first phase's
    # optimiser state is dropped, and two new optimisers train G + C and D with this phase's own
    # learning rates, LR steps and loss weights. The first phase's LR schedule then spans
    # TRAINING_ONLY_ITERS (the reference's step1 run), not MAX_ITER. With TRAINING_ONLY_ITERS 0
    # it is the second run alone, from a first run's MODEL.WEIGHTS.
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED = CN()
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.ENABLED = False
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.OPTIMIZER = "ADAM"  # of both: "ADAM" (reference) or "SGD"
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.BASE_LR = 5e-5  # G and C (reference: 5e-5; COCO-stuff 1e-5)
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.D_BASE_LR = 5e-5  # D (and the conv it shares with C)
    # LR times GAMMA at each of these iterations, counted from the phase's start (reference: 3k,
    # 4k, 5k of 6k).
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.STEPS = (3000, 4000, 5000)
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.GAMMA = 0.1
    # Training step: C's cross-entropy on real seen features and on generated seen ones (they
    # replace MODEL.CAGNET.CLS_WEIGHT and FAKE_CLS_WEIGHT in this phase; reference: 0.75, 0.25).
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.CLS_WEIGHT = 0.75
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.FAKE_CLS_WEIGHT = 0.25
    # Finetuning step: C's cross-entropy on generated features (reference: 0.125) and G's
    # adversarial term (reference: 0, G is not trained there; with MODEL.CAGNET.
    # FINETUNE_DETACH_GENERATED True C's loss does not reach G either).
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.FINETUNE_CLS_WEIGHT = 0.125
    cfg.SOLVER.CAGNET_SCHEDULE.MIXED.FINETUNE_ADV_WEIGHT = 0.0

    # ---------------------------------------------------------------- optimisers
    # Two optimisers with their own LR schedules: D, and the rest (E, CM, G, C). The shared
    # 1x1 conv of D and C is in both: D's step trains it to discriminate, the rest's to classify.
    cfg.SOLVER.OPTIMIZER = "SGD"  # the rest: "SGD" (momentum SOLVER.MOMENTUM) or "ADAM"
    cfg.SOLVER.D_OPTIMIZER = "ADAM"
    cfg.SOLVER.D_BASE_LR = 2.5e-4
    cfg.SOLVER.ADAM_BETAS = (0.9, 0.999)
    # LR multipliers of the parts of "the rest" (reference code: 10x ASPP weights, 20x biases).
    cfg.SOLVER.LR_MULTIPLIERS = CN()
    cfg.SOLVER.LR_MULTIPLIERS.BACKBONE = 1.0
    cfg.SOLVER.LR_MULTIPLIERS.ASPP = 1.0
    cfg.SOLVER.LR_MULTIPLIERS.CONTEXTUAL_MODULE = 1.0
    cfg.SOLVER.LR_MULTIPLIERS.GENERATOR = 1.0
    cfg.SOLVER.LR_MULTIPLIERS.CLASSIFIER = 1.0
    # Used by LR_SCHEDULER_NAME "WarmupPolyLR" (reference code: poly 0.9).
    cfg.SOLVER.POLY_LR_POWER = 0.9
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0
    # Mixed precision of the training (and finetuning) steps of every trainer; not in the paper
    # (float32). Losses and parameters stay float32; evaluation always runs in float32.
    cfg.SOLVER.AMP.ENABLED = False
    # "auto": on CUDA bfloat16 where the GPU supports it, else float16 with a GradScaler
    # (detectron2's AMPTrainer); on a CPU with native bfloat16 (avx512_bf16 / amx_bf16) bfloat16
    # (about 2x faster convolutions), on other CPUs float32 with a warning (emulated bfloat16 is far
    # slower there). "bfloat16" / "float16" force that type (float16 with a GradScaler).
    cfg.SOLVER.AMP.PRECISION = "auto"

    # ------------------------------------------------------------ loss guard
    # Stop training at the first non-finite loss or gradient, before the optimiser step, with a
    # message naming the loss term, the iteration and the last good checkpoint (left intact).
    cfg.SOLVER.LOSS_GUARD = CN()
    cfg.SOLVER.LOSS_GUARD.ENABLED = True
    # Warn when a loss term exceeds this many times its median over the first REFERENCE_ITERS
    # steps of its kind in the run (and again at each further such factor; see
    # cagnet/engine/loss_guard.py); 0: never warn.
    cfg.SOLVER.LOSS_GUARD.GROWTH_WARNING_FACTOR = 100.0
    cfg.SOLVER.LOSS_GUARD.REFERENCE_ITERS = 20

    # ---------------------------------------------------- shared clusters (docs/CLUSTER.md)
    # Signals that preempt the run: it finishes the current optimiser step, saves a checkpoint
    # (every worker at the same iteration), prints how to resume and exits with status 75
    # (cagnet.engine.preemption.PREEMPTED_EXIT_STATUS). Empty: these signals end the run as usual.
    cfg.SOLVER.PREEMPTION = CN()
    cfg.SOLVER.PREEMPTION.SIGNALS = ("SIGTERM", "SIGUSR1")
    # Also save a checkpoint whenever this many minutes passed since the last one (0: off), so a
    # run loses at most that much work to a kill, whatever its speed (SOLVER.CHECKPOINT_PERIOD
    # counts iterations).
    cfg.SOLVER.CHECKPOINT_PERIOD_MINUTES = 0.0
    # Multi-process runs: how long a worker waits in a collective for the others (process group
    # timeout), and after one worker failed, how long the others get to stop before they are
    # killed. detectron2's default is 30 minutes.
    cfg.SOLVER.COLLECTIVE_TIMEOUT_MINUTES = 30.0

    # ---------------------------------------------------------------- input
    # Training augmentation: random rescale by a factor in this range, then pad (ignore) and crop
    # to INPUT.CROP.SIZE, then horizontal flip (reference: 0.5-1.5, crop 368).
    cfg.INPUT.SCALE_RANGE = (0.5, 1.5)

    # ---------------------------------------------------------------- test
    # Write the per-class table of the zero-shot evaluator to the log as well.
    cfg.TEST.PRINT_PER_CLASS = False
    # Write each test image's prediction under the evaluator's folder (OUTPUT_DIR/inference[_TTA]/
    # <dataset>): predictions/<image_id>.png (class indices of the setting, uint8, the label format
    # of a prepared dataset read without its label_lut) and detectron2's sem_seg_predictions.json
    # (RLE per class); tools/rescore_predictions.py scores such a folder again.
    cfg.TEST.SAVE_PREDICTIONS = False
    # Test-time augmentation uses detectron2's keys: TEST.AUG.ENABLED (False), MIN_SIZES (short
    # sides; detectron2's default 400..1200 is COCO detection's: set it per dataset), MAX_SIZE, FLIP.
    # See cagnet/modeling/test_time_augmentation.py.

    # ------------------------------------------------- variants of the built-in dataset
    # The built-in dataset (synthetic_scenes_{train,val}) with another generation seed, other
    # sizes or another unseen split; defaults: the shipped data. Applied when tools load a config.
    cfg.DATASETS.SYNTHETIC_SCENES = CN()
    cfg.DATASETS.SYNTHETIC_SCENES.SEED = 0
    cfg.DATASETS.SYNTHETIC_SCENES.NUM_TRAIN = 2000
    cfg.DATASETS.SYNTHETIC_SCENES.NUM_VAL = 300
    cfg.DATASETS.SYNTHETIC_SCENES.IMAGE_SIZE = 96
    # Names of the unseen classes; empty: the shipped split (synthetic_scenes.DEFAULT_UNSEEN).
    cfg.DATASETS.SYNTHETIC_SCENES.UNSEEN_CLASSES = []

    # ------------------------------------------ backbone pretraining (dev/pretrain_backbone.py)
    # The stand-in for ImageNet: the trunk learns to segment scenes of random-look classes.
    cfg.PRETRAIN = CN()
    cfg.PRETRAIN.NUM_STUFF = 40  # stuff classes of the source (the first NUM_TOP_STUFF drawn on top)
    cfg.PRETRAIN.NUM_TOP_STUFF = 8
    cfg.PRETRAIN.NUM_THINGS = 160
    cfg.PRETRAIN.NUM_IMAGES = 12000  # rendered once into memory
    cfg.PRETRAIN.IMAGE_SIZE = 96
    cfg.PRETRAIN.SOURCE_SEED = 0
    cfg.PRETRAIN.MAX_ITER = 5000  # the shipped trunk (data/pretrained/README.md)
    cfg.PRETRAIN.IMS_PER_BATCH = 32
    cfg.PRETRAIN.BASE_LR = 2e-3  # Adam, poly schedule
    cfg.PRETRAIN.WEIGHT_DECAY = 0.0

    # ---------------------------------------------------------------- output
    # Training refuses an OUTPUT_DIR that holds a previous run's checkpoints unless it resumes
    # (--resume) or this is True: then that run's checkpoints, last_checkpoint and metrics.json
    # are deleted before training starts.
    cfg.OVERWRITE_OUTPUT_DIR = False

    add_baselines_config(cfg)


def add_baselines_config(cfg):
    """Keys of the baselines (SPNet, SPNet-c, ZS3Net) and of self-training (+ST); called by
    :func:`add_cagnet_config`. Backbone, data, solver and test keys are shared with CaGNet."""
    # ---------------------------------------------------------------- ZS3Net
    cfg.MODEL.ZS3NET = CN()
    # GMMN G(noise, w): noise size, hidden widths (LeakyReLU 0.2 + dropout after each).
    cfg.MODEL.ZS3NET.NOISE_DIM = 300
    cfg.MODEL.ZS3NET.GENERATOR_HIDDEN_DIMS = [256]
    cfg.MODEL.ZS3NET.GENERATOR_DROPOUT = 0.5
    # Bandwidths of the Gaussian kernels summed in the MMD loss (ZS3Net: 2, 5, 10, 20, 40, 80).
    cfg.MODEL.ZS3NET.MMD_SIGMAS = [2.0, 5.0, 10.0, 20.0, 40.0, 80.0]
    # Real pixels per class and batch compared by the MMD (a random subset; 0: all).
    cfg.MODEL.ZS3NET.MMD_PIXELS_PER_CLASS = 128
    # Classifier stage: fraction of its training pixels that are generated unseen features.
    cfg.MODEL.ZS3NET.GENERATED_UNSEEN_FRACTION = 0.5

    # ---------------------------------------------- stages of the staged trainer (ZS3Net)
    # Iterations: segmentation = SOLVER.MAX_ITER - GENERATOR_ITERS - CLASSIFIER_ITERS, then the
    # generator, then the classifier. Each stage has its own optimiser and LR schedule (over the
    # stage's own iterations, SOLVER.LR_SCHEDULER_NAME).
    cfg.SOLVER.ZS3NET_STAGES = CN()
    cfg.SOLVER.ZS3NET_STAGES.GENERATOR_ITERS = 0
    cfg.SOLVER.ZS3NET_STAGES.CLASSIFIER_ITERS = 0
    # The generator stage uses Adam with this LR (ZS3Net: 2e-4).
    cfg.SOLVER.ZS3NET_STAGES.GENERATOR_LR = 2e-4
    # Optimiser steps of the generator on each batch's (frozen) features: ZS3Net steps once per
    # class present in each image of a batch.
    cfg.SOLVER.ZS3NET_STAGES.GENERATOR_STEPS_PER_BATCH = 1
    # The classifier stage uses SOLVER.OPTIMIZER with this LR.
    cfg.SOLVER.ZS3NET_STAGES.CLASSIFIER_LR = 2.5e-4

    # ------------------------------------------------- calibration (SPNet-c)
    cfg.MODEL.CALIBRATION = CN()
    # How gamma, subtracted from every seen-class score at test time, is chosen:
    # "none" (gamma = 0), or "held_out_classes": before training, a second network of the same
    # kind is trained with HELD_OUT classes removed from the seen classes (their pixels ignored),
    # and gamma is the value that maximises its hIoU between the remaining seen classes and the
    # held-out ones on training images. No unseen-class label is used.
    cfg.MODEL.CALIBRATION.METHOD = "none"
    # Seen classes held out (names); empty: NUM_HELD_OUT seen classes drawn at random (SEED).
    cfg.MODEL.CALIBRATION.HELD_OUT_CLASSES = []
    # 0: as many as there are unseen classes.
    cfg.MODEL.CALIBRATION.NUM_HELD_OUT = 0
    # Training images (the first ones of a shuffled order) on which gamma is selected.
    cfg.MODEL.CALIBRATION.NUM_IMAGES = 500
    # Candidate values of gamma: this many quantiles of the seen-minus-unseen score margins.
    cfg.MODEL.CALIBRATION.NUM_CANDIDATES = 201

    # ---------------------------------------------------------- self-training (+ST)
    cfg.MODEL.SELF_TRAINING = CN()
    # Continue training a trained model (MODEL.WEIGHTS) with pseudo labels: before the first
    # iteration the model labels the ignored pixels of every training image with its confident
    # unseen-class predictions (written under OUTPUT_DIR/pseudo_labels, reused on --resume).
    cfg.MODEL.SELF_TRAINING.ENABLED = False
    # p: per unseen class, the top p percent most confident of the ignored pixels predicted as
    # that class are kept (ZS3Net's rule).
    cfg.MODEL.SELF_TRAINING.TOP_PERCENT = 75.0
    # Images per forward pass while labelling.
    cfg.MODEL.SELF_TRAINING.IMS_PER_BATCH = 1
