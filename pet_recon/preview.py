"""Before/after preview image: maximum-intensity projections on one SUV scale.

The figure is drawn with matplotlib's object-oriented API on an Agg canvas, without pyplot,
so it neither needs a display nor changes the user's matplotlib backend or global state.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["PREVIEW_DPI", "write_preview"]

PREVIEW_DPI = 100
"""Resolution of the PNG: a volume preview is 1100 x 1000 pixels, a single slice 1100 x 550."""

_VOLUME_SIZE_IN = (11.0, 10.0)
_SLICE_SIZE_IN = (11.0, 5.5)
_WINDOW_PERCENTILE = 99.9
_UNIT_LABELS = {
    "BQML": "Bq/ml",
    "GML": "g/ml",
    "CM2ML": "cm²/ml",
    "CNTS": "counts",
    "PROPCPS": "proportional counts/s",
    "MGMINML": "mg/min/ml",
    "UMOLMINML": "µmol/min/ml",
}


def write_preview(
    before: np.ndarray,
    after: np.ndarray,
    path: Path,
    *,
    suv_factor: float | None,
    spacing: Sequence[float],
    titles: tuple[str, str] = ("low dose", "petrecon"),
    units: str | None = None,
) -> Path:
    """Write a PNG comparing two volumes with maximum-intensity projections.

    Columns show ``before`` and ``after``; rows show the coronal MIP (maximum over the rows
    axis) and the sagittal MIP (maximum over the columns axis), displayed in millimetres so
    the aspect ratio is the patient's, superior up (slices sorted along an inferior-to-
    superior normal, as the reader sorts axial series), patient right on the image left. A
    single-slice volume shows the slice itself. Both volumes share one grey scale
    (``gray_r``: high uptake dark, as PET is read) from 0 to the 99.9th percentile of both
    projections, with a colour bar labelled SUV, or the stored units when there is no SUV
    factor.

    Parameters
    ----------
    before, after : numpy.ndarray
        Volumes of the same shape ``(slices, rows, columns)`` in stored units.
    path : pathlib.Path
        PNG file to write.
    suv_factor : float or None
        Factor from stored units to SUV; None shows stored units.
    spacing : sequence of float
        Voxel spacing ``(x, y, z)`` = (column, row, slice) in mm.
    titles : tuple of str
        Titles of the ``before`` and ``after`` columns.
    units : str, optional
        DICOM Units (0054,1001) of the stored values, for the colour-bar label without SUV.

    Returns
    -------
    pathlib.Path
        ``path``. The image is :data:`PREVIEW_DPI` x 11 in wide and 10 in (volume) or 5.5 in
        (single slice) high.

    Raises
    ------
    ValueError
        If the volumes are not 3D arrays of the same shape or ``spacing`` has not 3 values.
    """
    if before.ndim != 3 or before.shape != after.shape:
        raise ValueError(f"volumes must be 3D of one shape, got {before.shape}, {after.shape}")
    if len(spacing) != 3:
        raise ValueError(f"spacing must be (x, y, z) in mm, got {spacing}")
    sx, sy, sz = (float(v) for v in spacing)
    scale = 1.0 if suv_factor is None else float(suv_factor)
    if suv_factor is not None:
        label = "SUV"
    else:
        label = _UNIT_LABELS.get(units, units) if units else "stored value"
    n_slices, n_rows, n_cols = before.shape

    volumes = [np.nan_to_num(np.asarray(v, dtype=np.float32)) * scale for v in (before, after)]
    # figure rows: (projection name, [before image, after image], extent in mm, origin)
    if n_slices == 1:
        rows = [("slice", [v[0] for v in volumes], (0.0, n_cols * sx, n_rows * sy, 0.0), "upper")]
        size = _SLICE_SIZE_IN
    else:
        coronal = [v.max(axis=1) for v in volumes]
        sagittal = [v.max(axis=2) for v in volumes]
        height = n_slices * sz
        rows = [
            ("coronal MIP", coronal, (0.0, n_cols * sx, 0.0, height), "lower"),
            ("sagittal MIP", sagittal, (0.0, n_rows * sy, 0.0, height), "lower"),
        ]
        size = _VOLUME_SIZE_IN
    shown = np.concatenate([image.ravel() for _, images, _, _ in rows for image in images])
    vmax = float(np.percentile(shown, _WINDOW_PERCENTILE))
    if not vmax > 0:
        vmax = 1.0

    fig = Figure(figsize=size, dpi=PREVIEW_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), 2, squeeze=False)
    shown_images = []
    for (name, images, extent, origin), row_axes in zip(rows, axes, strict=True):
        for title, image, ax in zip(titles, images, row_axes, strict=True):
            shown_images.append(
                ax.imshow(
                    image,
                    cmap="gray_r",
                    vmin=0.0,
                    vmax=vmax,
                    extent=extent,
                    origin=origin,
                    aspect="equal",
                    interpolation="nearest",
                )
            )
            _decorate(ax, f"{title}: {name}")
    colorbar = fig.colorbar(shown_images[0], ax=axes.ravel().tolist(), shrink=0.8)
    colorbar.set_label(label)
    fig.savefig(path, format="png", dpi=PREVIEW_DPI)
    return Path(path)


def _decorate(ax: Axes, title: str) -> None:
    """Title the panel and hide the millimetre ticks."""
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
