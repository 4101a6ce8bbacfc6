"""Figures of ``petrecon bench``: an image grid per family and metric-against-dose curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pet_recon.physics.phantoms import LESION_BASE

ZOOM_PX = 24


def _largest_lesion(labels: np.ndarray) -> tuple[int, int, int] | None:
    """Centre voxel ``(z, y, x)`` of the largest lesion label, or None without lesions."""
    ids, counts = np.unique(labels[labels >= LESION_BASE], return_counts=True)
    if ids.size == 0:
        return None
    z, y, x = np.nonzero(labels == ids[np.argmax(counts)])
    return int(np.median(z)), int(np.median(y)), int(np.median(x))


def image_grid(images: dict[str, np.ndarray], family: str, drf: int, path: Path) -> None:
    """Truth, full dose, low dose and every method on one plane and one SUV scale, with a
    zoom on the largest lesion below.

    Parameters
    ----------
    images : dict
        Name -> ``(Z, Y, X)`` SUV volume, plus ``"labels"`` (the phantom's label map).
    family : str
    drf : int
        Dose reduction factor of the low-dose image (for the title).
    path : Path
        PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = images["labels"]
    panels = {k: v for k, v in images.items() if k != "labels"}
    centre = _largest_lesion(labels)
    z, cy, cx = centre if centre is not None else (labels.shape[0] // 2, labels.shape[1] // 2,
                                                   labels.shape[2] // 2)
    vmax = float(np.percentile(panels["full dose"][z], 99.9))
    half = ZOOM_PX // 2
    y0 = int(np.clip(cy - half, 0, labels.shape[1] - ZOOM_PX))
    x0 = int(np.clip(cx - half, 0, labels.shape[2] - ZOOM_PX))
    fig, axes = plt.subplots(2, len(panels), figsize=(2.1 * len(panels), 4.6),
                             squeeze=False)
    for i, (name, volume) in enumerate(panels.items()):
        plane = volume[z]
        axes[0, i].imshow(plane, cmap="gray_r", vmin=0, vmax=vmax)
        axes[0, i].add_patch(plt.Rectangle((x0, y0), ZOOM_PX, ZOOM_PX, fill=False,
                                           edgecolor="tab:red", linewidth=0.8))
        axes[0, i].set_title(name, fontsize=7)
        axes[1, i].imshow(plane[y0:y0 + ZOOM_PX, x0:x0 + ZOOM_PX], cmap="gray_r", vmin=0,
                          vmax=vmax, interpolation="nearest")
        for ax in axes[:, i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{family}, DRF {drf}, plane {z}; SUV 0-{vmax:.1f} (inverted grey); "
                 "zoom on the largest lesion", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drf_curves(results: dict[str, Any], path: Path) -> None:
    """PSNR and lesion SUVmax bias against the dose reduction factor, one line per method,
    one column per family (medians over cases)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(results["cases"])
    fig, axes = plt.subplots(2, len(families), figsize=(4.2 * len(families), 6.5),
                             squeeze=False)
    for j, family in enumerate(families):
        by_drf = results["cases"][family]
        drfs = sorted(by_drf, key=float)
        methods = list(by_drf[drfs[0]])
        for name in methods:
            for row, key, scale in ((0, "psnr_db", 1.0), (1, "lesion_suvmax_bias", 100.0)):
                values = [scale * float(np.median([r[key] for r in by_drf[d][name]]))
                          for d in drfs]
                axes[row, j].plot([float(d) for d in drfs], values, marker="o", label=name)
        axes[0, j].set_title(family)
        axes[0, j].set_ylabel("PSNR (dB)")
        axes[1, j].set_ylabel("lesion SUVmax bias (%)")
        axes[1, j].axhline(0.0, color="grey", linewidth=0.6)
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_xticks([float(d) for d in drfs], [str(d) for d in drfs])
            ax.minorticks_off()
            ax.set_xlabel("dose reduction factor")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
