"""Ordered-subsets expectation maximisation (OSEM) for the direct-plane PET model.

MLEM (Shepp & Vardi 1982, IEEE TMI 1:113) maximises the Poisson log-likelihood of the counts
``y`` given the expected counts ``y_bar = P x + r`` of a :class:`SystemModel`; OSEM (Hudson &
Larkin 1994, IEEE TMI 13:601) applies the same update to one subset of the views at a time.
Because ``P`` includes the calibration ``scale`` (counts per Bq/ml * mm), the estimate is in
Bq/ml. See ``docs/physics.md``.
"""

from __future__ import annotations

import torch

from pet_recon.physics.projector import SystemModel, gaussian_blur


def poisson_log_likelihood(counts: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Poisson log-likelihood ``sum(y log y_bar - y_bar)`` without the ``log y!`` term.

    Parameters
    ----------
    counts : torch.Tensor
        Measured counts ``y >= 0``, shape ``([batch,] planes, views, bins)``.
    expected : torch.Tensor
        Expected counts ``y_bar >= 0``, same shape (``y_bar = 0`` requires ``y = 0``).

    Returns
    -------
    torch.Tensor
        Log-likelihood of each sinogram, shape ``counts.shape[:-3]``, same dtype.
    """
    if counts.shape != expected.shape:
        raise ValueError(
            f"counts {tuple(counts.shape)} and expected {tuple(expected.shape)} differ in shape"
        )
    terms = torch.xlogy(counts, expected) - expected
    return terms.sum(dim=(-3, -2, -1))


def osem(
    sinogram: torch.Tensor,
    model: SystemModel,
    iterations: int = 3,
    subsets: int = 8,
    x0: torch.Tensor | None = None,
    postfilter_fwhm_mm: float = 0.0,
) -> torch.Tensor:
    """Reconstruct activity concentration from counts with OSEM.

    The update of Hudson & Larkin (1994), with the additive background in the expected data;
    for subset ``S_b`` of the views (``b = 1..n``) and pixel ``j``::

        x_j <- x_j / (sum_{i in S_b} p_ij) * sum_{i in S_b} p_ij y_i / (sum_k p_ik x_k + r_i)

    where ``p_ij`` are the elements of ``P = scale * diag(n a) A H`` (``model.forward``) and
    ``r_i`` the background (``model.background``). One iteration visits every subset once;
    ``subsets=1`` is MLEM (Shepp & Vardi 1982). Subset ``b`` holds the views
    ``b, b + n, b + 2n, ...`` (interleaved). A pixel keeps its value in a subset whose lines of
    response do not see it (``sum_{i in S_b} p_ij = 0``).

    Parameters
    ----------
    sinogram : torch.Tensor
        Measured counts ``y >= 0`` (prompts, not corrected), shape ``(planes, views, bins)``
        or ``(batch, planes, views, bins)``.
    model : SystemModel
        System model whose ``forward`` maps Bq/ml to expected true counts.
    iterations : int
        Full passes over the subsets (>= 1).
    subsets : int
        Number of view subsets, 1 to ``n_views``.
    x0 : torch.Tensor, optional
        Initial estimate (Bq/ml, >= 0), shape ``sinogram.shape[:-2] + (ny, nx)``. By default
        a uniform image per plane, over the pixels seen by the scanner, whose projection holds
        as many counts as ``y - r``.
    postfilter_fwhm_mm : float
        FWHM (mm) of an isotropic Gaussian post-filter, transaxial and across planes (0: none),
        normalised at the grid's borders (``blur(x) / blur(1)``) so that it keeps a uniform
        concentration.

    Returns
    -------
    torch.Tensor
        Activity concentration in Bq/ml, shape ``sinogram.shape[:-2] + (ny, nx)``, model
        dtype and device.
    """
    model.check_sinogram(sinogram)
    n_views = model.sinogram.n_views
    if iterations < 1 or not 1 <= subsets <= n_views:
        raise ValueError(
            f"need iterations >= 1 ({iterations}) and 1 <= subsets <= {n_views} ({subsets})"
        )
    if postfilter_fwhm_mm < 0:
        raise ValueError(f"postfilter_fwhm_mm must be >= 0; got {postfilter_fwhm_mm}")
    y = sinogram.to(device=model.device, dtype=model.dtype)
    if bool((y < 0).any()):
        raise ValueError("sinogram holds negative counts; OSEM needs uncorrected prompts >= 0")

    views = [slice(b, None, subsets) for b in range(subsets)]  # S_b
    y_sub = [y[..., v, :] for v in views]  # y_i, i in S_b
    # sum_{i in S_b} p_ij > 0 and its inverse (0 where the subset does not see pixel j).
    seen_sub, inv_sens = [], []
    for v, ys in zip(views, y_sub, strict=True):
        sens = model.adjoint(torch.ones_like(ys), v)
        seen_sub.append(sens > 0)
        inv_sens.append(torch.where(sens > 0, 1.0 / sens, 0.0))

    image_shape = y.shape[:-2] + (model.image.ny, model.image.nx)
    if x0 is None:
        seen = torch.stack(seen_sub).any(dim=0).to(model.dtype)
        true_counts = y.sum(dim=(-2, -1))
        if model.background is not None:
            true_counts = true_counts - model.background.expand(y.shape).sum(dim=(-2, -1))
        per_unit = model.forward(seen).sum(dim=(-2, -1))
        level = torch.where(per_unit > 0, true_counts.clamp_min(0) / per_unit, 0.0)
        x = seen * level[..., None, None]  # x_j at iteration 0
    else:
        if tuple(x0.shape) != tuple(image_shape):
            raise ValueError(
                f"x0 must have shape {tuple(image_shape)} to match the sinogram; "
                f"got {tuple(x0.shape)}"
            )
        x = x0.to(device=model.device, dtype=model.dtype)
        if bool((x < 0).any()):
            raise ValueError("x0 holds negative values; OSEM needs a non-negative start")

    for _ in range(iterations):
        for v, ys, seen_b, inv in zip(views, y_sub, seen_sub, inv_sens, strict=True):
            y_bar = model.expected(x, v)  # sum_k p_ik x_k + r_i
            ratio = torch.where(y_bar > 0, ys / y_bar, 0.0)
            x = torch.where(seen_b, x * model.adjoint(ratio, v) * inv, x)

    if postfilter_fwhm_mm > 0:
        filt = (model.image, postfilter_fwhm_mm, postfilter_fwhm_mm)
        ones = torch.ones(model.image.shape, device=x.device, dtype=x.dtype)
        x = gaussian_blur(x, *filt) / gaussian_blur(ones, *filt)
    return x
