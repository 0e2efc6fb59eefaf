# Copyright (c) CaGNet-D2 contributors.
"""Backbone E: a dilated ResNet (DeepLab-v2, output stride 8) followed by ASPP-L.

DeepLab-v2's ASPP-L sums four 3x3 convs with dilations 6/12/18/24 applied to res5; in CaGNet that
sum *is* the feature map F (l = 600 channels, no activation). Depth and widths are configurable so
that the built-in dataset can use a tiny network with the same structure.
"""
from typing import List, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock, ResNet
from detectron2.projects.deeplab.resnet import DeepLabStem

__all__ = ["ASPPL", "DilatedResNetASPP", "build_dilated_resnet_aspp_backbone"]

_BLOCKS_PER_DEPTH = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3], 152: [3, 8, 36, 3]}


class ASPPL(nn.Module):
    """ASPP-L: parallel dilated 3x3 convs (with bias) whose outputs are summed."""

    def __init__(self, in_channels: int, out_channels: int, dilations: Sequence[int] = (6, 12, 18, 24)):
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, out_channels, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.convs:
            # DeepLab-v2 initialisation of the classifier convs.
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DilatedResNetASPP(Backbone):
    """ResNet trunk + ASPP-L. Output: ``{"aspp": F}`` with F of shape (N, l, H/s, W/s)."""

    def __init__(self, resnet: ResNet, aspp: ASPPL, out_channels: int):
        super().__init__()
        self.resnet = resnet
        self.aspp = aspp
        self._trunk_feature = resnet._out_features[-1]
        stride = resnet.output_shape()[self._trunk_feature].stride
        self._out_feature_strides = {"aspp": stride}
        self._out_feature_channels = {"aspp": out_channels}
        self._out_features = ["aspp"]

    @property
    def size_divisibility(self) -> int:
        # Pad inputs to a multiple of the stride so that labels downsample exactly.
        return self._out_feature_strides["aspp"]

    def forward(self, x):
        return {"aspp": self.aspp(self.resnet(x)[self._trunk_feature])}

    def output_shape(self):
        return {
            "aspp": ShapeSpec(
                channels=self._out_feature_channels["aspp"], stride=self._out_feature_strides["aspp"]
            )
        }


def make_dilated_resnet(
    *,
    in_channels: int = 3,
    num_blocks: Sequence[int] = (3, 4, 23, 3),
    dilations: Sequence[int] = (1, 1, 2, 4),
    stem_type: str = "basic",
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
    bottleneck_channels: int = 64,
    num_groups: int = 1,
    stride_in_1x1: bool = True,
    norm: str = "FrozenBN",
    freeze_at: int = 0,
    zero_init_residual: bool = True,
) -> ResNet:
    """A bottleneck ResNet whose stages ``res2..res{1+len(num_blocks)}`` may be dilated.

    A stage with dilation > 1 does not downsample (first stride 1), as in DeepLab-v2.
    ``zero_init_residual`` zero-initialises the last conv of every residual branch, so that a
    randomly initialised network starts as a chain of identities: without it, a deep ResNet with
    FrozenBN (no normalisation) overflows in the first iteration. Pretrained weights overwrite it.
    """
    if not 1 <= len(num_blocks) <= 4:
        raise ValueError(f"num_blocks needs 1 to 4 stages (res2..res5), got {list(num_blocks)}")
    if len(dilations) < len(num_blocks):
        raise ValueError(f"dilations {list(dilations)} must cover the {len(num_blocks)} stages")
    stems = {"basic": BasicStem, "deeplab": DeepLabStem}
    if stem_type not in stems:
        raise ValueError(f"MODEL.DILATED_RESNET.STEM_TYPE must be one of {sorted(stems)}, got {stem_type!r}")
    stem = stems[stem_type](in_channels=in_channels, out_channels=stem_out_channels, norm=norm)

    stages: List[List[nn.Module]] = []
    in_ch, out_ch, bottleneck = stem_out_channels, res2_out_channels, bottleneck_channels
    for idx, (n, dilation) in enumerate(zip(num_blocks, dilations)):
        first_stride = 1 if idx == 0 or dilation > 1 else 2
        stages.append(
            ResNet.make_stage(
                block_class=BottleneckBlock,
                num_blocks=n,
                stride_per_block=[first_stride] + [1] * (n - 1),
                in_channels=in_ch,
                out_channels=out_ch,
                bottleneck_channels=bottleneck,
                num_groups=num_groups,
                norm=norm,
                stride_in_1x1=stride_in_1x1,
                dilation=dilation,
            )
        )
        in_ch, out_ch, bottleneck = out_ch, out_ch * 2, bottleneck * 2
    if zero_init_residual:
        for stage in stages:
            for block in stage:
                nn.init.zeros_(block.conv3.weight)
    out_feature = f"res{len(stages) + 1}"
    return ResNet(stem, stages, out_features=[out_feature]).freeze(freeze_at)


@BACKBONE_REGISTRY.register()
def build_dilated_resnet_aspp_backbone(cfg, input_shape: ShapeSpec) -> DilatedResNetASPP:
    """Backbone E of CaGNet from ``cfg.MODEL.{RESNETS, DILATED_RESNET, ASPP_L}``."""
    r = cfg.MODEL.RESNETS
    num_blocks = list(cfg.MODEL.DILATED_RESNET.NUM_BLOCKS) or _BLOCKS_PER_DEPTH.get(r.DEPTH)
    if num_blocks is None:
        raise ValueError(
            f"MODEL.RESNETS.DEPTH={r.DEPTH} is not one of {sorted(_BLOCKS_PER_DEPTH)}; "
            "set MODEL.DILATED_RESNET.NUM_BLOCKS for other depths"
        )
    resnet = make_dilated_resnet(
        in_channels=input_shape.channels,
        num_blocks=num_blocks,
        dilations=cfg.MODEL.DILATED_RESNET.DILATIONS,
        stem_type=cfg.MODEL.DILATED_RESNET.STEM_TYPE,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        bottleneck_channels=r.NUM_GROUPS * r.WIDTH_PER_GROUP,
        num_groups=r.NUM_GROUPS,
        stride_in_1x1=r.STRIDE_IN_1X1,
        norm=r.NORM,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        zero_init_residual=cfg.MODEL.DILATED_RESNET.ZERO_INIT_RESIDUAL,
    )
    trunk_channels = resnet.output_shape()[resnet._out_features[-1]].channels
    out_channels = cfg.MODEL.ASPP_L.OUT_CHANNELS
    aspp = ASPPL(trunk_channels, out_channels, cfg.MODEL.ASPP_L.DILATIONS)
    return DilatedResNetASPP(resnet, aspp, out_channels)
