# Copyright (c) CaGNet-D2 contributors.
from .backbone import ASPPL, DilatedResNetASPP, build_dilated_resnet_aspp_backbone
from .contextual_module import ContextOutput, ContextualModule
from .discriminator_classifier import DiscriminatorClassifier
from .feature_generator import FeatureGenerator
from .meta_arch import (
    CaGNet,
    TrainingFeatures,
    zero_shot_classes_from_checkpoint,
    zero_shot_classes_from_config,
)
from .build import build_model_from_checkpoint, warn_if_untrained
from .checkpoint_file import CheckpointMismatchError, DamagedCheckpointError
from .zero_shot_base import ZeroShotSegmentor, calibrate_scores
from .spnet import SPNet
from .zs3net import ZS3Net
from .test_time_augmentation import SemanticSegmentorWithTTA
