# Copyright (c) CaGNet-D2 contributors.
"""Drawing for the tools: segmentation overlays with a class legend, and feature-map figures.

Each function returns an RGB uint8 image and the legend it drew (a list of plain dicts, which
the tools write to a JSON file next to the PNG, so tests and scripts can read what is shown).
Matplotlib is used through its Agg canvas only (no pyplot, no global backend change).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from detectron2.data import Metadata
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

from .feature_maps import FeatureMaps, upsample_to_image

__all__ = [
    "UNSEEN_MARK",
    "class_colors",
    "display_names",
    "render_segmentation",
    "render_scale_map",
    "render_reconstruction_error",
]

UNSEEN_MARK = "*"  # suffix of unseen class names in overlays and legends
_BG = (255, 255, 255)
_TEXT = (20, 20, 20)


def class_colors(num_classes: int) -> List[Tuple[int, int, int]]:
    """A fixed colour per class index (detectron2's palette, cycled)."""
    palette = colormap(rgb=True, maximum=255).astype(int)
    return [tuple(int(c) for c in palette[i % len(palette)]) for i in range(num_classes)]


def display_names(class_names: Sequence[str], unseen_ids: Sequence[int]) -> List[str]:
    """Class names with unseen ones marked ("red dotted*")."""
    unseen = set(int(i) for i in unseen_ids)
    return [n + UNSEEN_MARK if i in unseen else n for i, n in enumerate(class_names)]


def _legend_panel(rows: List[Tuple[Tuple[int, int, int], str]], height: int, title: str, footer: str = "",
                  font_scale: float = 0.45) -> np.ndarray:
    """A white panel listing colour swatches and texts, at least ``height`` pixels high."""
    font, thick = cv2.FONT_HERSHEY_SIMPLEX, 1
    line = int(round(22 * font_scale / 0.45))
    texts = [title] + [t for _, t in rows] + ([footer] if footer else [])
    width = max(cv2.getTextSize(t, font, font_scale, thick)[0][0] for t in texts) + line + 24
    panel_h = max(height, line * (len(rows) + 2 + bool(footer)) + 8)
    panel = np.full((panel_h, width, 3), _BG, np.uint8)
    y = line
    cv2.putText(panel, title, (8, y - 6), font, font_scale, _TEXT, thick, cv2.LINE_AA)
    for color, text in rows:
        y += line
        cv2.rectangle(panel, (8, y - line + 6), (8 + line - 8, y - 2), tuple(int(c) for c in color), -1)
        cv2.rectangle(panel, (8, y - line + 6), (8 + line - 8, y - 2), _TEXT, 1)
        cv2.putText(panel, text, (8 + line, y - 6), font, font_scale, _TEXT, thick, cv2.LINE_AA)
    if footer:
        y += line
        cv2.putText(panel, footer, (8, y - 6), font, font_scale * 0.9, _TEXT, thick, cv2.LINE_AA)
    return panel


def _hstack(*images: np.ndarray) -> np.ndarray:
    h = max(im.shape[0] for im in images)
    padded = [np.pad(im, ((0, h - im.shape[0]), (0, 0), (0, 0)), constant_values=255) for im in images]
    return np.concatenate(padded, axis=1)


def render_segmentation(
    image_rgb: np.ndarray,
    sem_seg: np.ndarray,
    class_names: Sequence[str],
    unseen_ids: Sequence[int] = (),
    scale: float = 1.0,
    alpha: float = 0.6,
) -> Tuple[np.ndarray, List[Dict]]:
    """Overlay of a label map on an image (detectron2's ``Visualizer.draw_sem_seg``, with the
    model's class names, unseen ones marked), and a legend of the classes present.

    Args:
        image_rgb: (H, W, 3) uint8 RGB.
        sem_seg: (H, W) class indices; values outside 0..K-1 (e.g. 255 for pixels below a
            confidence threshold) are not drawn.
        scale: output size relative to the image (the legend is added on the right).
    Returns:
        The RGB picture and the legend: one dict per class present (largest area first) with
        ``class_id``, ``name``, ``label`` (as drawn), ``unseen``, ``color`` and ``fraction``
        (of the image's pixels).
    """
    k = len(class_names)
    labels = display_names(class_names, unseen_ids)
    colors = class_colors(k)
    meta = Metadata(name="cagnet_demo", stuff_classes=labels, stuff_colors=[list(c) for c in colors])
    vis = Visualizer(image_rgb, meta, scale=scale)
    sem_seg = np.asarray(sem_seg)
    overlay = vis.draw_sem_seg(sem_seg, area_threshold=None, alpha=alpha).get_image()
    ids, counts = np.unique(sem_seg[(sem_seg >= 0) & (sem_seg < k)], return_counts=True)
    order = np.argsort(-counts, kind="stable")
    unseen = set(int(i) for i in unseen_ids)
    legend = [
        {
            "class_id": int(ids[j]),
            "name": class_names[ids[j]],
            "label": labels[ids[j]],
            "unseen": int(ids[j]) in unseen,
            "color": list(colors[ids[j]]),
            "fraction": float(counts[j]) / sem_seg.size,
        }
        for j in order
    ]
    rows = [(tuple(e["color"]), f"{e['label']}  {100 * e['fraction']:.1f}%") for e in legend]
    footer = f"{UNSEEN_MARK} unseen class" if any(e["unseen"] for e in legend) else ""
    panel = _legend_panel(rows, overlay.shape[0], "classes present", footer)
    return _hstack(overlay, panel), legend


# ---------------------------------------------------------------------------- feature maps
def _figure(width_in: float, height_in: float, dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _to_rgb(fig) -> np.ndarray:
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


SCALE_COLORS = [(230, 159, 0), (0, 114, 178), (204, 121, 167), (0, 158, 115), (240, 228, 66)]


def render_scale_map(image_rgb: np.ndarray, maps: FeatureMaps, dpi: int = 100) -> Tuple[np.ndarray, List[Dict]]:
    """The input beside the winning context scale of each pixel (paper Fig. 6), with a legend.

    Returns the picture and the legend (one dict per scale: ``scale``, ``dilation``, ``label``,
    ``color``, ``fraction`` of the image's feature cells)."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    n = len(maps.dilations)
    colors = [SCALE_COLORS[i % len(SCALE_COLORS)] for i in range(n)]
    counts = np.bincount(maps.scale_map.numpy().ravel(), minlength=n)[:n]
    legend = [
        {
            "scale": i,
            "dilation": d,
            "label": f"scale {i + 1}: dilation {d}" + (" (smallest context)" if i == 0 else " (largest context)" if i == n - 1 else ""),
            "color": list(colors[i]),
            "fraction": float(counts[i]) / max(1, counts.sum()),
        }
        for i, d in enumerate(maps.dilations)
    ]
    full = upsample_to_image(maps.scale_map.numpy(), maps.stride, maps.image_size)
    fig = _figure(8.0, 4.2, dpi)
    ax0, ax1 = fig.subplots(1, 2)
    ax0.imshow(image_rgb)
    ax0.set_title("input")
    ax1.imshow(full, cmap=ListedColormap(np.array(colors) / 255.0), vmin=-0.5, vmax=n - 0.5, interpolation="nearest")
    ax1.set_title("context scale chosen by the selector")
    for ax in (ax0, ax1):
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Patch(color=np.array(e["color"]) / 255.0, label=f"{e['label']}: {100 * e['fraction']:.0f}%") for e in legend]
    fig.legend(handles=handles, loc="lower center", ncol=min(n, 3), fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.14, wspace=0.05)
    return _to_rgb(fig), legend


def render_reconstruction_error(image_rgb: np.ndarray, maps: FeatureMaps, class_names: Optional[Sequence[str]] = None,
                                dpi: int = 100, percentile: float = 99.0) -> Tuple[np.ndarray, Dict]:
    """The input and the two reconstruction-error maps (z = mu from CM, z ~ N(0, I)) on one
    colour scale (0 to the ``percentile`` of both maps), with a colour bar (paper Fig. 5).

    Returns the picture and a summary (``vmin``, ``vmax``, ``mean_error_mu``,
    ``mean_error_random``, ``labels_from``)."""
    mu, rnd = maps.error_mu.numpy(), maps.error_random.numpy()
    both = np.concatenate([mu[np.isfinite(mu)], rnd[np.isfinite(rnd)]])
    vmax = float(np.percentile(both, percentile)) if both.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    info = {
        "vmin": 0.0,
        "vmax": vmax,
        "mean_error_mu": float(np.nanmean(mu)) if np.isfinite(mu).any() else None,
        "mean_error_random": float(np.nanmean(rnd)) if np.isfinite(rnd).any() else None,
        "labels_from": maps.labels_from,
    }
    fig = _figure(11.0, 4.0, dpi)
    axes = fig.subplots(1, 3)
    axes[0].imshow(image_rgb)
    axes[0].set_title("input")
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0.6, 0.6, 0.6))
    im = None
    for ax, err, title, mean in (
        (axes[1], mu, "z = mu (from CM)", info["mean_error_mu"]),
        (axes[2], rnd, "z ~ N(0, I)", info["mean_error_random"]),
    ):
        full = upsample_to_image(err, maps.stride, maps.image_size)
        im = ax.imshow(np.ma.masked_invalid(full), cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
        ax.set_title(f"{title}\nmean {mean:.3g}" if mean is not None else title, fontsize=10)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.subplots_adjust(left=0.02, right=0.9, top=0.85, bottom=0.04, wspace=0.05)
    cax = fig.add_axes([0.92, 0.1, 0.015, 0.7])
    fig.colorbar(im, cax=cax, label="||G(z, w_c) - x||^2")
    fig.suptitle(f"reconstruction error, w_c from the {maps.labels_from}", fontsize=10)
    return _to_rgb(fig), info
