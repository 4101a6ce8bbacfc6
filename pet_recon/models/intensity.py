"""The invertible intensity transform between SUV and the networks' input space.

Every network of the cascade sees ``x = SUV / ref``, where ``ref`` is one number per study:
three times the mean SUV of the low-dose volume inside its body mask
(:func:`pet_recon.metrics.body_mask`). The mean over a whole volume has almost no noise even
at DRF 100, so ``ref`` is the same at every dose level of a case; it makes brains (mean SUV
about 4) and bodies (about 1) share one range (background around 0.3, cortex or liver about
0.7, hot lesions above 1). The output is brought back with ``SUV = x * ref`` and then to Bq/ml
with the series' SUV factor (or the stored units when SUV is not available, since the
transform is linear).
"""

from __future__ import annotations

import numpy as np

from pet_recon.metrics import body_mask

#: ``ref = REF_FACTOR * mean SUV in the body``.
REF_FACTOR = 3.0


def reference_value(volume: np.ndarray, spacing: tuple[float, float, float],
                    mask: np.ndarray | None = None) -> float:
    """``ref`` of a volume (any linear unit: SUV, Bq/ml): 3 x its mean inside the body.

    Parameters
    ----------
    volume : np.ndarray
        ``(slices, rows, columns)`` low-dose volume.
    spacing : tuple of float
        ``(x, y, z)`` spacing in mm.
    mask : np.ndarray, optional
        The volume's body mask when the caller has it already (``body_mask(volume,
        spacing)``, computed otherwise).

    Returns
    -------
    float
        Positive reference; 1.0 for an empty volume.
    """
    if mask is None:
        mask = body_mask(volume, spacing)
    if not mask.any():
        return 1.0
    value = REF_FACTOR * float(volume[mask].mean())
    return value if value > 0 else 1.0
