"""Forward and adjoint PET system model for direct planes, in torch.

The geometric part is a 2D parallel-beam strip-integral projector applied to each direct
plane independently: the weight of a bin and a square pixel is the area of their intersection
divided by the bin width, i.e. the pixel's chord length averaged over the bin (mm). It is
stored once per geometry as a sparse CSR matrix ``A`` of shape ``(n_views * n_bins, ny * nx)``
(row ``v * n_bins + b``, column ``j * nx + i``). All planes (and all images of a batch) are
the columns of one dense matrix, so a projection is one sparse-dense product.

:class:`SystemModel` composes, as in PyTomography (Polson et al. 2023), an image-space
resolution model, the projector, attenuation and normalisation factors, a calibration scale
and an additive background::

    y_bar = scale * n * a * A(H x) + r

with ``x`` the activity concentration (Bq/ml), ``H`` a Gaussian blur, ``a`` the attenuation
factors, ``n`` the detector efficiencies, ``r`` the expected randoms + scatter counts and
``y_bar`` the expected counts per sinogram bin. See ``docs/physics.md``.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def count_scale(
    sinogram: SinogramGeometry, sensitivity_cps_per_bq: float, duration_s: float
) -> float:
    """Calibration ``scale`` of :class:`SystemModel`: counts per (Bq/ml * mm) of line integral.

    A point source of ``q`` Bq in the field of view, without attenuation and with unit
    efficiencies, then yields ``sensitivity_cps_per_bq * q * duration_s`` expected counts in
    total over its plane's sinogram. The derivation: the sum over the bins of one view of the
    projection of a voxel of concentration ``c`` is ``c * voxel_area_mm2 / bin_mm``, and
    ``c = q * 1000 / (voxel_area_mm2 * plane_mm)``, so the sum over all views is
    ``q * 1000 * n_views / (bin_mm * plane_mm)``.

    Parameters
    ----------
    sinogram : SinogramGeometry
        Sinogram geometry (``n_views``, ``bin_mm``, ``plane_mm`` are used).
    sensitivity_cps_per_bq : float
        System sensitivity for true coincidences: counts per second per Bq (e.g. 0.01 for
        10 cps/kBq).
    duration_s : float
        Frame duration in seconds (decay during the frame is the caller's business).

    Returns
    -------
    float
        ``sensitivity_cps_per_bq * duration_s * bin_mm * plane_mm / (1000 * n_views)``, in
        counts per (Bq/ml * mm).
    """
    if sensitivity_cps_per_bq <= 0 or duration_s <= 0:
        raise ValueError(
            f"sensitivity ({sensitivity_cps_per_bq}) and duration ({duration_s} s) must be > 0"
        )
    return (
        sensitivity_cps_per_bq
        * duration_s
        * sinogram.bin_mm
        * sinogram.plane_mm
        / (1000.0 * sinogram.n_views)
    )


def _strip_view(
    phi: float, image: ImageGeometry, sinogram: SinogramGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Strip-area weights of one view: bin index, pixel index and weight in mm (nonzeros).

    The weight of bin ``b`` and square pixel ``j`` is the area of their intersection divided
    by ``bin_mm``, i.e. the chord length of the pixel averaged over the bin's width. A pixel's
    footprint on the ``s`` axis is exactly a trapezoid (the convolution of two boxes of widths
    ``w1 = pixel |cos|`` and ``w2 = pixel |sin|``; Long, Fessler & Balter 2010), so the area is
    ``pixel**2 * (F(s_b + bin/2 - t_j) - F(s_b - bin/2 - t_j))``, ``F`` its normalised CDF and
    ``t_j`` the projection of the pixel centre.
    """
    c, sn, pix, width = math.cos(phi), math.sin(phi), image.pixel_mm, sinogram.bin_mm
    w1, w2 = sorted((pix * abs(c), pix * abs(sn)), reverse=True)
    w2 = max(w2, 1e-9 * pix)  # axis-aligned views: a box, kept finite for the formula below
    half = (w1 + w2) / 2.0  # footprint support is [t - half, t + half]
    flat = (w1 - w2) / 2.0

    def cdf(u: np.ndarray) -> np.ndarray:
        """Fraction of the pixel's area with ``s - t_j < u`` (rise, flat top, fall)."""
        rise = np.clip(u + half, 0.0, w2)
        top = np.clip(u + flat, 0.0, 2.0 * flat)
        fall = np.clip(u - flat, 0.0, w2)
        return (rise**2 / 2.0 + w2 * (top + fall) - fall**2 / 2.0) / (w1 * w2)

    t = (image.x_mm()[None, :] * c + image.y_mm()[:, None] * sn).ravel()  # (ny * nx,)
    centre = (sinogram.n_bins - 1) / 2.0
    first = np.floor((t - half) / width + centre + 0.5).astype(np.int64)
    bins = first[:, None] + np.arange(math.ceil(2.0 * half / width) + 1)[None, :]
    s_lo = (bins - centre - 0.5) * width - t[:, None]
    area = cdf(s_lo + width) - cdf(s_lo)
    keep = (bins >= 0) & (bins < sinogram.n_bins) & (area > 0)
    pixels = np.broadcast_to(np.arange(t.size)[:, None], bins.shape)
    return bins[keep], pixels[keep], area[keep] * (pix * pix / width)


def _csr(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    shape: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """CSR tensor (int32 indices, rows and columns sorted) from unique COO triplets."""
    order = np.argsort(rows * shape[1] + cols)
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=shape[0]), out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow.astype(np.int32)).to(device),
            torch.from_numpy(cols[order].astype(np.int32)).to(device),
            torch.from_numpy(vals[order]).to(device=device, dtype=dtype),
            size=shape,
            check_invariants=False,
        )


@functools.lru_cache(maxsize=32)
def _matrices(
    image: ImageGeometry,
    sinogram: SinogramGeometry,
    views: tuple[int, int, int],
    device: str,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached ``(A, A^T)`` CSR pair for the views ``range(*views)``."""
    view_ids = range(*views)
    angles = sinogram.angles_rad()
    rows, cols, vals = [], [], []
    for k, v in enumerate(view_ids):
        b, p, w = _strip_view(float(angles[v]), image, sinogram)
        rows.append(b + k * sinogram.n_bins)
        cols.append(p)
        vals.append(w)
    r, c, w = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    shape = (len(view_ids) * sinogram.n_bins, image.nx * image.ny)
    dev = torch.device(device)
    return _csr(r, c, w, shape, dev, dtype), _csr(c, r, w, shape[::-1], dev, dtype)


def system_matrix(
    image: ImageGeometry,
    sinogram: SinogramGeometry,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    views: slice | None = None,
) -> torch.Tensor:
    """Sparse CSR projection matrix ``A`` (strip-area weights, see :func:`_strip_view`).

    Built once per (geometries, views, device, dtype) and cached (with its transpose); the
    matrix for all 202 views of a 128 x 128 grid has 7.5 million nonzeros (60 MB in float32
    with int32 indices, the same again for the transpose).

    Parameters
    ----------
    image, sinogram : ImageGeometry, SinogramGeometry
        Geometries; the matrix acts on one plane.
    device : torch.device
        Where the matrix lives.
    dtype : torch.dtype
        Floating dtype of the weights.
    views : slice, optional
        Subset of views (rows) with a positive step, e.g. ``slice(s, None, n_subsets)``;
        all views by default.

    Returns
    -------
    torch.Tensor
        Sparse CSR, shape ``(n_selected_views * n_bins, ny * nx)``, weights in mm: row
        ``k * n_bins + b`` is bin ``b`` of the ``k``-th selected view, column ``j * nx + i``
        is pixel ``[j, i]``.
    """
    sel = _view_range(views, sinogram.n_views)
    return _matrices(image, sinogram, sel, str(torch.device(device)), dtype)[0]


def _view_range(views: slice | None, n_views: int) -> tuple[int, int, int]:
    """``(start, stop, step)`` of a non-empty, increasing selection of views."""
    start, stop, step = (views or slice(None)).indices(n_views)
    if step < 1 or not range(start, stop, step):
        raise ValueError(f"views {views} must select at least one view with a positive step")
    return start, stop, step


def gaussian_blur(
    x: torch.Tensor, image: ImageGeometry, fwhm_mm: float, axial_fwhm_mm: float = 0.0
) -> torch.Tensor:
    """Separable Gaussian blur of images, zero outside the grid (self-adjoint).

    The 1D kernels integrate the Gaussian over each sample and sum to 1; activity blurred
    beyond the grid (transaxially or past the first and last planes) is lost, which keeps the
    operator symmetric.

    Parameters
    ----------
    x : torch.Tensor
        Images, shape ``(..., planes, ny, nx)``, floating.
    image : ImageGeometry
        Pixel size and plane spacing (mm).
    fwhm_mm : float
        Transaxial full width at half maximum in mm (0: none).
    axial_fwhm_mm : float
        Axial FWHM in mm across planes (0: none; use 0 for unrelated 2D slices).

    Returns
    -------
    torch.Tensor
        Blurred images, same shape, dtype and device as ``x``.
    """
    axes = ((fwhm_mm, image.pixel_mm, -1), (fwhm_mm, image.pixel_mm, -2))
    for fwhm, spacing, dim in (*axes, (axial_fwhm_mm, image.plane_mm, -3)):
        if fwhm > 0:
            x = _convolve(x, _gaussian_kernel(fwhm / spacing), dim)
    return x


def _gaussian_kernel(fwhm_samples: float) -> list[float]:
    """Symmetric 1D Gaussian kernel integrated over unit samples, odd length, sum 1."""
    sigma = fwhm_samples / _FWHM_PER_SIGMA
    half = max(1, math.ceil(4.0 * sigma))
    cdf = [math.erf((k - 0.5) / (sigma * math.sqrt(2.0))) for k in range(-half, half + 2)]
    weights = [hi - lo for lo, hi in itertools.pairwise(cdf)]
    return [w / sum(weights) for w in weights]


def _convolve(x: torch.Tensor, kernel: list[float], dim: int) -> torch.Tensor:
    """Convolve along the negative axis ``dim`` with a symmetric kernel, zeros outside."""
    n, half = x.shape[dim], len(kernel) // 2
    padded = F.pad(x, [0, 0] * (-dim - 1) + [half, half])
    out = padded.narrow(dim, 0, n) * kernel[0]
    for k, w in enumerate(kernel[1:], start=1):
        out.add_(padded.narrow(dim, k, n), alpha=w)
    return out


class _SparseProduct(torch.autograd.Function):
    """``M @ X`` for a cached sparse ``M`` whose transpose is cached too.

    Its gradient ``M^T @ G`` uses the cached transpose; autograd's own sparse backward would
    transpose and re-sort ``M`` on every call, which dominates training time on a CPU.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, matrix: torch.Tensor,
                transpose: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        ctx.transpose = transpose  # type: ignore[attr-defined]
        return torch.sparse.mm(matrix, dense)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx,
                 grad: torch.Tensor) -> tuple[None, None, torch.Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad.contiguous())  # type: ignore[attr-defined]


class ParallelProjector:
    """Geometric projector ``A`` and its transpose, applied to every plane of a batch.

    Parameters
    ----------
    image, sinogram : ImageGeometry, SinogramGeometry
        Geometries; their ``n_planes`` must agree.
    device : torch.device
        Device of the system matrix and of the outputs.
    dtype : torch.dtype
        Floating dtype of the system matrix and of the outputs.

    Notes
    -----
    ``forward`` maps activity concentration (Bq/ml) to line integrals (Bq/ml * mm).
    """

    def __init__(
        self,
        image: ImageGeometry,
        sinogram: SinogramGeometry,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if image.n_planes != sinogram.n_planes:
            raise ValueError(
                f"image has {image.n_planes} planes but sinogram has {sinogram.n_planes}"
            )
        self.image = image
        self.sinogram = sinogram
        self.device = torch.device(device)
        self.dtype = dtype

    def n_views(self, views: slice | None = None) -> int:
        """Number of views selected by ``views`` (all when ``None``)."""
        return len(range(*_view_range(views, self.sinogram.n_views)))

    def matrices(self, views: slice | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cached sparse CSR ``(A, A^T)`` for ``views``; see :func:`system_matrix`."""
        sel = _view_range(views, self.sinogram.n_views)
        return _matrices(self.image, self.sinogram, sel, str(self.device), self.dtype)

    def check_image(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` has shape ``(planes, ny, nx)`` or with a batch axis."""
        g = self.image
        if x.ndim not in (3, 4) or tuple(x.shape[-3:]) != g.shape:
            raise ValueError(
                f"image tensor must have shape (planes, ny, nx) = {g.shape} or "
                f"(batch, {g.n_planes}, {g.ny}, {g.nx}); got {tuple(x.shape)}"
            )

    def check_sinogram(self, y: torch.Tensor, views: slice | None = None) -> None:
        """Raise ValueError unless ``y`` has shape ``([batch,] planes, views, bins)``."""
        want = (self.sinogram.n_planes, self.n_views(views), self.sinogram.n_bins)
        if y.ndim not in (3, 4) or tuple(y.shape[-3:]) != want:
            raise ValueError(
                f"sinogram tensor must have shape (planes, views, bins) = {want} or "
                f"(batch, {want[0]}, {want[1]}, {want[2]}); got {tuple(y.shape)}"
            )

    def forward(self, x: torch.Tensor, views: slice | None = None) -> torch.Tensor:
        """Strip-averaged line integrals ``A x`` of every plane.

        Parameters
        ----------
        x : torch.Tensor
            Activity concentration, shape ``(planes, ny, nx)`` or ``(batch, planes, ny, nx)``,
            Bq/ml (any unit ``u`` gives ``u * mm``).
        views : slice, optional
            Views to compute (e.g. an OSEM subset ``slice(s, None, n_subsets)``).

        Returns
        -------
        torch.Tensor
            Shape ``(..., planes, n_selected_views, n_bins)``, model dtype, Bq/ml * mm.
        """
        self.check_image(x)
        x = x.to(device=self.device, dtype=self.dtype)
        lead = x.shape[:-2]
        cols = x.reshape(-1, self.image.ny * self.image.nx).T
        a, a_t = self.matrices(views)
        out = _SparseProduct.apply(a, a_t, cols.contiguous())
        return out.T.reshape(*lead, self.n_views(views), self.sinogram.n_bins)

    def adjoint(self, y: torch.Tensor, views: slice | None = None) -> torch.Tensor:
        """Back-projection ``A^T y`` of every plane (exact transpose of :meth:`forward`).

        Parameters
        ----------
        y : torch.Tensor
            Shape ``(planes, n_selected_views, n_bins)`` or with a leading batch axis.
        views : slice, optional
            Views that ``y`` holds.

        Returns
        -------
        torch.Tensor
            Shape ``(..., planes, ny, nx)``, model dtype; units of ``y`` times mm.
        """
        self.check_sinogram(y, views)
        y = y.to(device=self.device, dtype=self.dtype)
        lead = y.shape[:-2]
        cols = y.reshape(-1, y.shape[-2] * y.shape[-1]).T
        a, a_t = self.matrices(views)
        out = _SparseProduct.apply(a_t, a, cols.contiguous())
        return out.T.reshape(*lead, self.image.ny, self.image.nx)


def attenuation_factors(
    mu_map: torch.Tensor, image: ImageGeometry, sinogram: SinogramGeometry
) -> torch.Tensor:
    """Attenuation factors ``exp(-integral of mu)`` of every line of response.

    Parameters
    ----------
    mu_map : torch.Tensor
        Linear attenuation coefficients at 511 keV in 1/cm (water: 0.096), shape
        ``(planes, ny, nx)`` or ``(batch, planes, ny, nx)``, floating.
    image, sinogram : ImageGeometry, SinogramGeometry
        Geometries of the map and of the sinogram.

    Returns
    -------
    torch.Tensor
        Factors in (0, 1], shape ``(..., planes, n_views, n_bins)``, on ``mu_map``'s device
        and dtype: ``exp(-0.1 * A mu)`` (``A mu`` is in 1/cm * mm).
    """
    projector = ParallelProjector(image, sinogram, device=mu_map.device, dtype=mu_map.dtype)
    return torch.exp(-0.1 * projector.forward(mu_map))


class SystemModel:
    """PET system model ``y_bar = scale * n * a * A(H x) + r`` of direct planes.

    Parameters
    ----------
    image, sinogram : ImageGeometry, SinogramGeometry
        Geometries; their ``n_planes`` must agree.
    device : torch.device
        Device of every tensor of the model and of the outputs.
    dtype : torch.dtype
        Floating dtype of the model and of the outputs.
    fwhm_mm : float
        Transaxial FWHM (mm) of the image-space Gaussian resolution model ``H`` (0: none).
    axial_fwhm_mm : float
        Axial FWHM (mm) of ``H`` across planes (0: none).
    attenuation : torch.Tensor, optional
        Attenuation factors ``a`` in (0, 1] (see :func:`attenuation_factors`), dimensionless.
    normalisation : torch.Tensor, optional
        Detector efficiencies ``n`` per bin, dimensionless (1: nominal).
    background : torch.Tensor, optional
        Expected randoms + scatter counts ``r`` per bin (counts, >= 0).
    scale : float
        Calibration in counts per (Bq/ml * mm); see :func:`count_scale`. With ``scale=1``
        the model output is in Bq/ml * mm.

    Notes
    -----
    ``attenuation``, ``normalisation`` and ``background`` have shape ``(n_views, n_bins)``,
    ``(planes | 1, n_views, n_bins)`` or ``(batch | 1, planes | 1, n_views, n_bins)`` and
    broadcast against the sinograms. ``forward`` and ``adjoint`` are the linear part
    ``P = scale * diag(n a) A H`` and its exact transpose ``P^T = H A^T diag(n a) scale``;
    ``expected`` adds ``r``.
    """

    def __init__(
        self,
        image: ImageGeometry,
        sinogram: SinogramGeometry,
        *,
        device: torch.device,
        dtype: torch.dtype = torch.float32,
        fwhm_mm: float = 0.0,
        axial_fwhm_mm: float = 0.0,
        attenuation: torch.Tensor | None = None,
        normalisation: torch.Tensor | None = None,
        background: torch.Tensor | None = None,
        scale: float = 1.0,
    ) -> None:
        if fwhm_mm < 0 or axial_fwhm_mm < 0 or scale <= 0:
            raise ValueError(
                f"need fwhm_mm >= 0 ({fwhm_mm}), axial_fwhm_mm >= 0 ({axial_fwhm_mm}) "
                f"and scale > 0 ({scale})"
            )
        self.projector = ParallelProjector(image, sinogram, device=device, dtype=dtype)
        self.image = image
        self.sinogram = sinogram
        self.device = self.projector.device
        self.dtype = dtype
        self.fwhm_mm = fwhm_mm
        self.axial_fwhm_mm = axial_fwhm_mm
        self.scale = scale
        self.attenuation = self._sinogram_term(attenuation, "attenuation")
        self.normalisation = self._sinogram_term(normalisation, "normalisation")
        self.background = self._sinogram_term(background, "background")
        self._multiplier = scale
        for term in (self.attenuation, self.normalisation):
            if term is not None:
                self._multiplier = term * self._multiplier

    def _sinogram_term(self, term: torch.Tensor | None, name: str) -> torch.Tensor | None:
        """Validate a per-bin tensor and move it to the model's device and dtype."""
        if term is None:
            return None
        g = self.sinogram
        if (
            term.ndim not in (2, 3, 4)
            or tuple(term.shape[-2:]) != (g.n_views, g.n_bins)
            or (term.ndim >= 3 and term.shape[-3] not in (1, g.n_planes))
        ):
            raise ValueError(
                f"{name} must have shape ([batch,] [planes,] views, bins) with planes "
                f"{g.n_planes} or 1, views {g.n_views}, bins {g.n_bins}; got {tuple(term.shape)}"
            )
        if bool((term < 0).any()):
            raise ValueError(f"{name} must be >= 0 everywhere")
        return term.to(device=self.device, dtype=self.dtype)

    def check_sinogram(self, y: torch.Tensor, views: slice | None = None) -> None:
        """Raise ValueError unless ``y`` fits the sinogram geometry and the model's terms.

        Parameters
        ----------
        y : torch.Tensor
            Sinograms, shape ``([batch,] planes, n_selected_views, n_bins)``.
        views : slice, optional
            Views that ``y`` holds.
        """
        self.projector.check_sinogram(y, views)
        for name, term in (
            ("attenuation", self.attenuation),
            ("normalisation", self.normalisation),
            ("background", self.background),
        ):
            if term is not None:
                _check_broadcast(y, term if views is None else term[..., views, :], name)

    def _times_multiplier(self, y: torch.Tensor, views: slice | None) -> torch.Tensor:
        """``y * scale * n * a`` on the selected views."""
        m = self._multiplier
        if isinstance(m, float):
            return y if m == 1.0 else y * m
        m = m if views is None else m[..., views, :]
        _check_broadcast(y, m, "attenuation and normalisation")
        return y * m

    def forward(self, x: torch.Tensor, views: slice | None = None) -> torch.Tensor:
        """Linear part ``P x = scale * n * a * A(H x)`` (no background).

        Parameters
        ----------
        x : torch.Tensor
            Activity concentration in Bq/ml, shape ``(planes, ny, nx)`` or
            ``(batch, planes, ny, nx)``.
        views : slice, optional
            Views to compute, e.g. ``slice(s, None, n_subsets)``.

        Returns
        -------
        torch.Tensor
            Expected true counts (Bq/ml * mm times ``scale``), shape
            ``(..., planes, n_selected_views, n_bins)``, model dtype and device.
        """
        self.projector.check_image(x)
        x = x.to(device=self.device, dtype=self.dtype)
        hx = gaussian_blur(x, self.image, self.fwhm_mm, self.axial_fwhm_mm)
        return self._times_multiplier(self.projector.forward(hx, views), views)

    def adjoint(self, y: torch.Tensor, views: slice | None = None) -> torch.Tensor:
        """Exact transpose of :meth:`forward`: ``H A^T (scale * n * a * y)``.

        Parameters
        ----------
        y : torch.Tensor
            Sinograms, shape ``(planes, n_selected_views, n_bins)`` or with a batch axis.
        views : slice, optional
            Views that ``y`` holds.

        Returns
        -------
        torch.Tensor
            Shape ``(..., planes, ny, nx)``, model dtype and device.
        """
        self.projector.check_sinogram(y, views)
        y = self._times_multiplier(y.to(device=self.device, dtype=self.dtype), views)
        bp = self.projector.adjoint(y, views)
        return gaussian_blur(bp, self.image, self.fwhm_mm, self.axial_fwhm_mm)

    def expected(self, x: torch.Tensor, views: slice | None = None) -> torch.Tensor:
        """Expected counts ``y_bar = P x + r`` (:meth:`forward` plus the background).

        Parameters
        ----------
        x : torch.Tensor
            Activity concentration in Bq/ml, shape ``([batch,] planes, ny, nx)``.
        views : slice, optional
            Views to compute.

        Returns
        -------
        torch.Tensor
            Expected counts, shape ``(..., planes, n_selected_views, n_bins)``.
        """
        y = self.forward(x, views)
        if self.background is None:
            return y
        r = self.background if views is None else self.background[..., views, :]
        _check_broadcast(y, r, "background")
        return y + r


def _check_broadcast(y: torch.Tensor, term: torch.Tensor, name: str) -> None:
    """Raise ValueError unless ``term`` broadcasts to the shape of the sinograms ``y``."""
    try:
        ok = torch.broadcast_shapes(y.shape, term.shape) == y.shape
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"the model's {name} of shape {tuple(term.shape)} does not broadcast to the "
            f"sinogram shape {tuple(y.shape)}"
        )
