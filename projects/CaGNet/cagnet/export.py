# Copyright (c) CaGNet-D2 contributors.
"""The inference graph of a CaGNet model as one exportable module.

``InferenceGraph`` is E -> CM (Z = mu) -> C with the model's normalisation, padding and
upsampling, i.e. exactly what ``CaGNet.inference`` computes for one image, written with tensor
operations only: input a float image (3, H, W) (or a batch of one, (1, 3, H, W)) in the model's
input format (``INPUT.FORMAT``, 0..255), output class logits (K, H, W) (or (1, K, H, W)) at the
input resolution. It is what ``tools/export_model.py`` exports with ``torch.export`` (H and W
dynamic) or TorchScript tracing (one fixed size; the saved module refuses other sizes).
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["InferenceGraph", "export_program", "trace_module", "load_exported", "compare_with_eager"]


class InferenceGraph(nn.Module):
    """E, CM and C of a CaGNet model (shared modules, not copies) for export."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.contextual_module = model.contextual_module
        self.heads = model.heads
        self.register_buffer("pixel_mean", model.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", model.pixel_std.detach().clone(), persistent=False)
        self.size_divisibility = int(model.backbone.size_divisibility or 1)
        self.stride = int(model.backbone.output_shape()["aspp"].stride)
        if self.size_divisibility % self.stride:
            raise ValueError(f"padding to {self.size_divisibility} px does not give whole feature cells of {self.stride} px")
        self.class_names = list(model.class_names or [])

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        batched = image.dim() == 4
        x = image if batched else image.unsqueeze(0)
        h, w = x.shape[-2], x.shape[-1]
        x = (x - self.pixel_mean) / self.pixel_std
        # Pad bottom/right with zeros (after normalisation) to a multiple of the stride, as
        # ImageList.from_tensors does.
        d = self.size_divisibility
        x = F.pad(x, (0, (d - w % d) % d, 0, (d - h % d) % d))
        features = self.backbone(x)["aspp"]
        ctx = self.contextual_module(features, sample=False)
        logits = self.heads.classify(ctx.x)
        # CaGNet.inference upsamples to the padded size (a factor of exactly `stride`) and crops
        # to the image; the same numbers come from computing only the first h x w output pixels
        # with that explicit scale (no slicing, so no shape-dependent guards when exported).
        s = float(self.stride)
        logits = torch.ops.aten.upsample_bilinear2d.default(logits, [h, w], False, s, s)
        return logits if batched else logits[0]


def _example(graph: InferenceGraph, size: Tuple[int, int], batched: bool) -> torch.Tensor:
    h, w = size
    shape = (1, 3, h, w) if batched else (3, h, w)
    return torch.rand(shape, generator=torch.Generator().manual_seed(0)) * 255


def export_program(graph: InferenceGraph, example_size=(96, 96), batched: bool = False, dynamic: bool = True,
                   min_size: int = 16, max_size: int = 4096):
    """``torch.export`` of ``graph``; H and W dynamic in [min_size, max_size] when ``dynamic``."""
    graph = graph.eval()
    example = _example(graph, example_size, batched)
    dynamic_shapes = None
    if dynamic:
        h = torch.export.Dim.DYNAMIC(min=min_size, max=max_size)
        w = torch.export.Dim.DYNAMIC(min=min_size, max=max_size)
        dims = {-2 % example.dim(): h, -1 % example.dim(): w}
        dynamic_shapes = {"image": dims}
    with torch.no_grad():
        return torch.export.export(graph, (example,), dynamic_shapes=dynamic_shapes)


class _FixedSizeCheck(nn.Module):
    """Refuses images of another size than the one a trace was made at (a trace records the
    padding and output sizes as constants and would silently return wrong-sized logits)."""

    def __init__(self, traced: nn.Module, height: int, width: int):
        super().__init__()
        self.traced = traced
        self.height, self.width = height, width

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2] != self.height or image.shape[-1] != self.width:
            raise RuntimeError(
                f"this TorchScript model was traced for {self.height}x{self.width} images, got "
                f"{image.shape[-2]}x{image.shape[-1]}; export a .pt2 for other sizes"
            )
        return self.traced(image)


def trace_module(graph: InferenceGraph, size=(96, 96), batched: bool = False) -> torch.jit.ScriptModule:
    """TorchScript trace of ``graph`` for images of exactly ``size`` (other sizes raise)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        with torch.no_grad():
            traced = torch.jit.trace(graph.eval(), (_example(graph, size, batched),), check_trace=False)
        return torch.jit.script(_FixedSizeCheck(traced, int(size[0]), int(size[1])))


def load_exported(path: str):
    """A callable ``image -> logits`` from a ``.pt2`` (torch.export) or ``.ts`` (TorchScript) file."""
    import warnings

    if path.endswith(".pt2"):
        return torch.export.load(path).module()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        return torch.jit.load(path, map_location="cpu")


@torch.no_grad()
def compare_with_eager(model: nn.Module, exported, sizes: Sequence[Tuple[int, int]], batched: bool = False,
                       seed: int = 0) -> List[Tuple[Tuple[int, int], float]]:
    """Max |exported - eager| logits on one random image per entry of ``sizes``; the eager side
    is ``model.inference`` (the detectron2 path). Returns [((h, w), max abs difference)]."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    diffs = []
    for h, w in sizes:
        image = torch.rand(3, h, w, generator=g) * 255
        eager = model.inference([{"image": image}])[0]["sem_seg"]
        out = exported(image[None] if batched else image)
        out = out[0] if batched else out
        if tuple(out.shape) != tuple(eager.shape):
            raise AssertionError(f"exported logits of shape {tuple(out.shape)}, eager {tuple(eager.shape)} for {h}x{w}")
        diffs.append(((h, w), (out - eager).abs().max().item()))
    return diffs
