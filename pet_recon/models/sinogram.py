"""Projection-domain branch of MiG-DM: SRM, SinoA and CDSM (Geng et al., arXiv:2512.22237).

MiG-DM (Sec. III.C) guides its first diffusion model SD1 with features taken from the
sinogram: a sinogram restoration module (SRM) first maps the low-dose sinogram to a
full-dose estimate; a sinogram adapter (SinoA) extracts projection-domain features from it,
and a cross-domain synergistic mapper (CDSM) carries them into image space as the features
``F_s`` added to the last four encoder stages of SD1's U-Net
(:class:`~pet_recon.models.unet.UNet`, ``stage_features``). The paper motivates this by
local operations in the projection domain acting globally in the image domain (Sec. III.A).

petrecon's realisation works on the prompts sinogram of one plane, made dose- and scale-free
by :func:`normalise_sinogram` (``s = y / mean(y)``):

- :class:`SinogramRestoration` (SRM): a dilated residual CNN, normalised LD sinogram ->
  normalised FD mean sinogram, trained first with :func:`poisson_loss` and then frozen.
- :class:`SinogramAdapter` (SinoA): a dilated CNN producing one sinogram-domain feature map
  per guided stage, at full ``(views, bins)`` resolution; deeper stages see more context.
- :class:`CrossDomainMapper` (CDSM): a learned filtered backprojection
  (:class:`LearnedFBP`, ramp-initialised) of every feature channel with the projector's
  adjoint, then per stage an average pool to the stage's resolution and a small convolution
  head whose last layer starts at zero, so SD1 is unchanged at initialisation.
- :class:`SinogramBranch` = SinoA + CDSM: restored normalised sinogram -> ``[F_s]``.
- :func:`project_image`: the sinogram of an image on the same grid, the SRM's input when no
  measured sinogram is given.

Sinogram convolutions pad the view axis with the sinogram's symmetry
``p(phi + pi, s) = p(phi, -s)`` (:func:`pad_sinogram`) and the bin axis with zeros. The
features ``F_s`` cover the whole slice; :func:`crop_stage_features` cuts the window of an
image patch out of them for patch-based training of SD1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pet_recon.models.unet import GUIDED_STAGES
from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry
from pet_recon.physics.projector import ParallelProjector
from pet_recon.weights import register_config


def normalise_sinogram(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Divide each plane of a sinogram by its mean: a dose- and scale-free sinogram.

    Parameters
    ----------
    y : torch.Tensor
        ``(..., views, bins)`` sinograms, e.g. ``(B, 1, views, bins)`` prompts (counts,
        the LD ones scaled by the dose reduction factor ``k``).

    Returns
    -------
    s : torch.Tensor
        ``y / mean``, same shape; floating (integer input becomes float32). A plane whose
        mean is not positive (e.g. all zeros) gives ``y`` unchanged (zeros).
    mean : torch.Tensor
        ``(..., 1, 1)`` mean of each plane over views and bins (1 where not positive), so
        ``y == s * mean``; it is the ``scale`` of :func:`poisson_loss`.
    """
    if not y.is_floating_point():
        y = y.float()
    mean = y.mean(dim=(-2, -1), keepdim=True)
    mean = torch.where(mean > 0, mean, torch.ones_like(mean))
    return y / mean, mean


def poisson_loss(pred_mean: torch.Tensor, target_counts: torch.Tensor, scale: torch.Tensor | float,
                 *, eps: float = 1e-6) -> torch.Tensor:
    """Poisson negative log-likelihood of counts, as half the Poisson deviance per bin.

    The SRM's loss (MiG-DM Sec. III.C): full-dose counts ``y`` are Poisson with mean
    ``mu = pred_mean * scale``; per bin the loss is ``mu - y + y log(y / mu)``, i.e. the
    negative log-likelihood ``mu - y log(mu)`` plus the constant ``y log(y) - y`` (with
    ``0 log 0 = 0``) that makes it half the unit Poisson deviance (McCullagh & Nelder,
    *Generalized Linear Models*, 2nd ed. 1989, Sec. 6.2). It is non-negative, zero where
    ``mu == y``, and its gradient in ``pred_mean`` is ``scale * (1 - y / mu)`` per bin
    (before averaging).

    Parameters
    ----------
    pred_mean : torch.Tensor
        ``(B, 1, views, bins)`` predicted normalised FD mean sinogram (>= 0), the output of
        :class:`SinogramRestoration`.
    target_counts : torch.Tensor
        Same shape: the FD prompts (counts).
    scale : torch.Tensor or float
        Count level of each plane, broadcastable to ``pred_mean`` (e.g. ``(B, 1, 1, 1)``):
        the per-plane mean of the FD counts, or of the LD counts times ``k`` (the ``mean``
        of :func:`normalise_sinogram` applied to the scaled LD prompts).
    eps : float
        ``mu`` is clamped to at least ``eps`` (counts) so that ``log(mu)`` stays finite.

    Returns
    -------
    torch.Tensor
        Scalar float32: the loss averaged over all bins (in counts).
    """
    y = target_counts.float()
    mu = (pred_mean.float() * scale).clamp_min(eps)
    return (mu - y + torch.xlogy(y, y) - torch.xlogy(y, mu)).mean()


def project_image(image: torch.Tensor, *, n_views: int | None = None,
                  n_bins: int | None = None) -> torch.Tensor:
    """Sinograms of images on petrecon's projector grid: the stand-in for missing prompts.

    When no measured sinogram is available, the projection of the (low-dose) image is fed to
    the SRM instead. Unlike measured prompts it has no attenuation, normalisation or
    background; only its shape matters, as it is used through :func:`normalise_sinogram`.
    Pixels and bins are taken as 1 mm (the geometry of
    :meth:`SinogramGeometry.for_image <pet_recon.physics.geometry.SinogramGeometry.for_image>`
    with ``bin_mm == pixel_mm``); the projection runs in float32 with autocast off.

    Parameters
    ----------
    image : torch.Tensor
        ``(B, 1, H, W)`` images; negative values are clipped to 0.
    n_views, n_bins : int, optional
        Sinogram size; default that of ``SinogramGeometry.for_image`` for ``H x W``
        (202 x 183 for 128 x 128).

    Returns
    -------
    torch.Tensor
        ``(B, 1, n_views, n_bins)`` float32 line integrals (image units times pixels), on the
        device of ``image``.
    """
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"expected (B, 1, H, W) images, got {tuple(image.shape)}")
    geometry = ImageGeometry(nx=image.shape[-1], ny=image.shape[-2], pixel_mm=1.0)
    default = SinogramGeometry.for_image(geometry, n_views)
    sinogram = SinogramGeometry(n_views=default.n_views, n_bins=n_bins or default.n_bins,
                                bin_mm=1.0)
    projector = ParallelProjector(geometry, sinogram, device=image.device, dtype=torch.float32)
    with torch.autocast(device_type=image.device.type, enabled=False):
        return projector.forward(image.float().clamp_min(0.0))


def resample_sinogram(data: torch.Tensor, source: SinogramGeometry,
                      target: SinogramGeometry) -> torch.Tensor:
    """Interpolate sinograms onto another view/bin grid (bilinear in angle and offset).

    Angles beyond the source's last view wrap to its first with the bins mirrored, since
    ``(phi + pi, s)`` and ``(phi, -s)`` are the same line of response; bins outside the
    source's range are 0. Planes are kept as they are.

    Parameters
    ----------
    data : torch.Tensor
        ``(planes, source.n_views, source.n_bins)`` counts.
    source, target : SinogramGeometry
        Grids of the input and of the output.

    Returns
    -------
    torch.Tensor
        ``(planes, target.n_views, target.n_bins)`` float32, counts per target bin (values are
        interpolated, then scaled by ``target.bin_mm / source.bin_mm`` so that a view's total
        is kept).
    """
    if tuple(data.shape[1:]) != (source.n_views, source.n_bins):
        raise ValueError(f"sinogram shape {tuple(data.shape)} does not match {source.shape}")
    x = data.float()[:, None]
    # Append view V (= view 0 mirrored) so that interpolation can wrap around pi.
    x = torch.cat([x, x[:, :, :1].flip(-1)], dim=2)
    dphi = math.pi / source.n_views
    phi = torch.as_tensor(target.angles_rad(), dtype=torch.float32) - math.radians(
        source.view_offset_deg)
    phi = torch.remainder(phi, 2 * math.pi)
    flip = phi >= math.pi  # (phi, s) == (phi - pi, -s)
    phi = torch.where(flip, phi - math.pi, phi)
    s_mm = torch.as_tensor(target.bins_mm(), dtype=torch.float32)
    v = phi / dphi  # fractional source view, 0 .. V
    b = s_mm / source.bin_mm + (source.n_bins - 1) / 2.0
    bins = torch.where(flip[:, None], (source.n_bins - 1) - b[None, :], b[None, :])
    grid_x = 2.0 * bins / (source.n_bins - 1) - 1.0 if source.n_bins > 1 else bins * 0
    grid_y = (2.0 * v / source.n_views - 1.0)[:, None].expand_as(grid_x)
    grid = torch.stack([grid_x, grid_y], dim=-1)[None].expand(x.shape[0], -1, -1, -1)
    out = F.grid_sample(x.to(data.device), grid.to(data.device), mode="bilinear",
                        padding_mode="zeros", align_corners=True)
    return out[:, 0] * (target.bin_mm / source.bin_mm)


def pad_sinogram(x: torch.Tensor, views: int, bins: int) -> torch.Tensor:
    """Pad sinograms using their symmetry along views and zeros along bins.

    The views of a sinogram cover ``[phi_0, phi_0 + pi)`` uniformly and a line of response
    is unchanged by ``(phi, s) -> (phi + pi, -s)``, so view ``-1`` is view ``V - 1`` with
    its bins reversed and view ``V`` is view ``0`` reversed (bin ``b`` at ``s`` and bin
    ``n_bins - 1 - b`` at ``-s``, see :mod:`pet_recon.physics.geometry`). This is circular
    padding along views with the bin axis flipped.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., V, n_bins)`` sinograms or sinogram-domain feature maps.
    views : int
        Views added on each side, at most ``V``.
    bins : int
        Zero bins added on each side.

    Returns
    -------
    torch.Tensor
        ``(..., V + 2 * views, n_bins + 2 * bins)``.
    """
    n_views = x.shape[-2]
    if views > n_views:
        raise ValueError(f"cannot pad {views} views on each side of a {n_views}-view sinogram")
    if views:
        x = torch.cat([x[..., n_views - views:, :].flip(-1), x, x[..., :views, :].flip(-1)],
                      dim=-2)
    return F.pad(x, (bins, bins)) if bins else x


class SinogramConv2d(nn.Conv2d):
    """2D convolution over ``(views, bins)`` with :func:`pad_sinogram` padding ("same" size).

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    kernel_size : int
        Odd square kernel size.
    dilation : int
        Dilation (the padding is ``dilation * (kernel_size - 1) / 2`` on each side).
    """

    @register_config
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 dilation: int = 1) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation)
        self.halo = dilation * (kernel_size - 1) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C_in, V, n_bins)`` -> ``(B, C_out, V, n_bins)``."""
        return super().forward(pad_sinogram(x, self.halo, self.halo))


class SinogramResBlock(nn.Module):
    """Residual block on sinograms: (GroupNorm, SiLU, dilated 3x3 conv) twice, plus the input.

    The second convolution starts at zero, so the block starts as the identity.

    Parameters
    ----------
    channels : int
        Feature channels.
    dilation : int
        Dilation of both convolutions.
    groups : int
        GroupNorm groups (must divide ``channels``).
    """

    @register_config
    def __init__(self, channels: int, dilation: int = 1, groups: int = 8) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = SinogramConv2d(channels, channels, 3, dilation)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = SinogramConv2d(channels, channels, 3, dilation)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, V, n_bins)`` -> ``(B, C, V, n_bins)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class SinogramRestoration(nn.Module):
    """SRM (MiG-DM Sec. III.C): normalised LD sinogram -> normalised FD mean sinogram.

    A dilated residual CNN at full sinogram resolution (context aggregation with dilations,
    Yu & Koltun, ICLR 2016): a 3x3 stem, one :class:`SinogramResBlock` per entry of
    ``dilations`` and a 3x3 output convolution that starts at zero. Its output ``r`` is a
    residual on the input: ``pred = softplus_beta(s + r)``, non-negative, and at
    initialisation within ``log(2) / beta`` of ``s`` (identity-ish). Train it with
    :func:`poisson_loss` against the FD prompts, then freeze it.

    Parameters
    ----------
    width : int
        Feature channels.
    dilations : sequence of int
        Dilation of each residual block (each at most the number of views).
    groups : int
        GroupNorm groups.
    beta : float
        Sharpness of the output softplus ``log(1 + exp(beta * z)) / beta``.

    Notes
    -----
    Defaults: 130 k parameters; receptive field 93 views x 93 bins.
    """

    @register_config
    def __init__(self, width: int = 16, dilations: Sequence[int] = (1, 2, 4, 2, 1),
                 groups: int = 8, beta: float = 10.0) -> None:
        super().__init__()
        self.beta = beta
        self.stem = SinogramConv2d(1, width, 3)
        self.blocks = nn.Sequential(*(SinogramResBlock(width, d, groups) for d in dilations))
        self.norm_out = nn.GroupNorm(groups, width)
        self.conv_out = SinogramConv2d(width, 1, 3)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """Predict the normalised full-dose mean sinogram.

        Parameters
        ----------
        s : torch.Tensor
            ``(B, 1, views, bins)`` normalised LD sinograms (:func:`normalise_sinogram` of
            the LD prompts scaled by ``k``).

        Returns
        -------
        torch.Tensor
            ``(B, 1, views, bins)`` float32, >= 0: predicted FD mean divided by the plane's
            count level (multiply by ``mean`` from :func:`normalise_sinogram` for counts).
        """
        r = self.conv_out(F.silu(self.norm_out(self.blocks(self.stem(s)))))
        return F.softplus(s.float() + r.float(), beta=self.beta)


class SinogramAdapter(nn.Module):
    """SinoA (MiG-DM Sec. III.C): sinogram-domain features of a restored sinogram.

    A 3x3 stem, one :class:`SinogramResBlock` per entry of ``dilations`` (growing dilation:
    the receptive field reaches ``3 + 4 * sum(dilations)`` views and bins), and a head
    (GroupNorm, SiLU, 1x1 conv) giving ``feature_channels`` maps on the full
    ``(views, bins)`` grid. The CDSM backprojects these few channels once and derives every
    stage from them, which keeps the (sparse, float32) backprojection cheap enough to train
    on a CPU: it costs one adjoint per channel, forward and backward.

    Parameters
    ----------
    width : int
        Channels of the trunk.
    feature_channels : int
        Output channels (each is backprojected).
    dilations : sequence of int
        Dilation of each residual block.
    groups : int
        GroupNorm groups.
    """

    @register_config
    def __init__(self, width: int = 8, feature_channels: int = 4,
                 dilations: Sequence[int] = (1, 2, 4, 8), groups: int = 4) -> None:
        super().__init__()
        self.stem = SinogramConv2d(1, width, 3)
        self.blocks = nn.Sequential(*(SinogramResBlock(width, d, groups) for d in dilations))
        self.head = nn.Sequential(nn.GroupNorm(groups, width), nn.SiLU(),
                                  nn.Conv2d(width, feature_channels, 1))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``(B, 1, views, bins)`` SRM output -> ``(B, feature_channels, views, bins)``."""
        return self.head(self.blocks(self.stem(s)))


def ramp_filter_response(n_bins: int, n_fft: int) -> torch.Tensor:
    """Frequency response of the discrete Ram-Lak (ramp) filter for ``n_bins`` samples.

    The band-limited ramp's impulse response sampled at unit spacing, ``h[0] = 1/4``,
    ``h[n] = -1 / (pi n)^2`` for odd ``n`` and 0 for even ``n != 0`` (Kak & Slaney,
    *Principles of Computerized Tomographic Imaging*, 1988, Ch. 3, eq. 61), truncated to
    ``|n| < n_bins`` (all a sinogram of ``n_bins`` samples can use) and transformed with a
    zero-padded DFT; unlike a sampled ``|omega|`` this has no DC offset.

    Parameters
    ----------
    n_bins : int
        Samples per projection.
    n_fft : int
        DFT length, at least ``2 * n_bins - 1`` (linear, not circular, convolution).

    Returns
    -------
    torch.Tensor
        ``(n_fft // 2 + 1,)`` float32 real response (the kernel is symmetric).
    """
    if n_fft < 2 * n_bins - 1:
        raise ValueError(f"n_fft {n_fft} < 2 * n_bins - 1 = {2 * n_bins - 1}")
    n = torch.arange(1, n_bins, dtype=torch.float64)
    taps = torch.where(n % 2 == 1, -1.0 / (math.pi * n) ** 2, torch.zeros_like(n))
    kernel = torch.zeros(n_fft, dtype=torch.float64)
    kernel[0] = 0.25
    kernel[1:n_bins] = taps
    kernel[n_fft - n_bins + 1:] = taps.flip(0)
    return torch.fft.rfft(kernel).real.float()


class LearnedFBP(nn.Module):
    """Learned filtered backprojection of multi-channel sinograms to images.

    Each channel is filtered along bins with its own learned real frequency response
    (initialised as the Ram-Lak ramp, :func:`ramp_filter_response`) and backprojected with
    the adjoint of petrecon's strip-integral projector
    (:class:`~pet_recon.physics.projector.ParallelProjector`), so at initialisation it is
    filtered backprojection (FBP); training adapts the filters, as in learned-FBP networks
    (Wuerfl et al., MICCAI 2016; Syben et al., 2019).

    Scaling: with the adjoint's weights in mm and unit-spacing filter taps,
    ``pi / (n_views * pixel_mm**2) * A^T (h * p)`` is the FBP of line integrals ``p``. As
    the inputs are normalised sinograms (or features of them), the result is instead scaled
    by ``pi * image_size**2 / (n_views * n_bins * bin_mm)``, i.e. multiplied by
    ``image_size**2 * pixel_mm**2 / (n_bins * bin_mm)``, so that a mean-1 sinogram of an
    object reconstructs to an image of mean 1; this is unchanged by the pixel size as long
    as ``bin_mm / pixel_mm`` is fixed.

    The filtering (FFT) and the sparse backprojection run in float32 with autocast off. The
    projector is built on the input's device at first use and cached.

    Parameters
    ----------
    channels : int
        Sinogram channels, each with its own filter.
    image_size : int
        Image matrix ``nx = ny``.
    n_views, n_bins : int
        Sinogram views (over 180 degrees) and tangential bins.
    pixel_mm, bin_mm : float
        Pixel and bin sizes in mm (only their ratio changes the output).
    view_offset_deg : float
        Angle of view 0 (see :class:`~pet_recon.physics.geometry.SinogramGeometry`).
    """

    @register_config
    def __init__(self, channels: int, image_size: int, n_views: int, n_bins: int,
                 pixel_mm: float, bin_mm: float, view_offset_deg: float = 0.0) -> None:
        super().__init__()
        self.image = ImageGeometry(nx=image_size, ny=image_size, pixel_mm=pixel_mm)
        self.sinogram = SinogramGeometry(n_views=n_views, n_bins=n_bins, bin_mm=bin_mm,
                                         view_offset_deg=view_offset_deg)
        self.n_fft = 1 << (2 * n_bins - 2).bit_length()
        self.scale = math.pi * image_size**2 / (n_views * n_bins * bin_mm)
        response = ramp_filter_response(n_bins, self.n_fft)
        self.filters = nn.Parameter(response.repeat(channels, 1))
        self._projectors: dict[torch.device, ParallelProjector] = {}

    def projector(self, device: torch.device) -> ParallelProjector:
        """The float32 projector on ``device`` (built once per device)."""
        if device not in self._projectors:
            self._projectors[device] = ParallelProjector(self.image, self.sinogram,
                                                         device=device, dtype=torch.float32)
        return self._projectors[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Filter and backproject every channel.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, channels, n_views, n_bins)`` sinograms or sinogram-domain features.

        Returns
        -------
        torch.Tensor
            ``(B, channels, image_size, image_size)`` float32 images.
        """
        b, c, v, n = x.shape
        if (c, v, n) != (self.filters.shape[0], self.sinogram.n_views, self.sinogram.n_bins):
            raise ValueError(f"expected (B, {self.filters.shape[0]}, {self.sinogram.n_views}, "
                             f"{self.sinogram.n_bins}) sinograms, got {tuple(x.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            spectrum = torch.fft.rfft(x.float(), n=self.n_fft, dim=-1)
            filtered = torch.fft.irfft(spectrum * self.filters[:, None, :].float(),
                                       n=self.n_fft, dim=-1)[..., :n]
            images = self.projector(x.device).adjoint(filtered.reshape(b * c, 1, v, n))
        return images.reshape(b, c, *images.shape[-2:]) * self.scale


class CrossDomainMapper(nn.Module):
    """CDSM (MiG-DM Sec. III.C): sinogram-domain features -> image-domain features ``F_s``.

    Every channel of the SinoA map is mapped to image space by one batched
    :class:`LearnedFBP` (ramp-initialised learned filtered backprojection). For stage ``i``
    these images are average-pooled by ``2**i`` to the stage's resolution and passed through
    a head (3x3 conv to the stage's channel count, SiLU, 1x1 conv); the last conv starts at
    zero, so at initialisation ``F_s = 0`` and SD1 is unaffected.

    Stage ``i`` is at ``1 / 2**i`` of the image resolution, as in
    :meth:`UNet.stage_shapes <pet_recon.models.unet.UNet.stage_shapes>` for a U-Net with at
    most four levels (the default): the outputs cover the whole slice.

    Parameters
    ----------
    stage_channels : sequence of int
        Channels of each guided U-Net stage, shallowest first (``UNet.stage_channels``).
    image_size : int
        Image matrix ``nx = ny``, divisible by ``2 ** (len(stage_channels) - 1)``.
    n_views, n_bins : int
        Sinogram views and bins; the defaults are petrecon's sinogram of a 128 x 128 image
        (``SinogramGeometry.for_image``), the training data's geometry.
    pixel_mm, bin_mm : float
        Pixel and bin sizes in mm. Only ``bin_mm / pixel_mm`` changes the output (the
        backprojection is scale-normalised, see :class:`LearnedFBP`); petrecon's data has
        ``bin_mm == pixel_mm`` for every phantom family, hence the defaults 1, 1.
    feature_channels : int
        Channels of the input map (SinoA's ``feature_channels``).
    view_offset_deg : float
        Angle of view 0.
    """

    @register_config
    def __init__(self, stage_channels: Sequence[int], image_size: int = 128, n_views: int = 202,
                 n_bins: int = 183, pixel_mm: float = 1.0, bin_mm: float = 1.0,
                 feature_channels: int = 4, view_offset_deg: float = 0.0) -> None:
        super().__init__()
        if not 1 <= len(stage_channels) <= GUIDED_STAGES:
            raise ValueError(f"1 to {GUIDED_STAGES} stages, got {tuple(stage_channels)}")
        if image_size % 2 ** (len(stage_channels) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by "
                             f"{2 ** (len(stage_channels) - 1)}")
        self.stage_channels = tuple(stage_channels)
        self.image_size = image_size
        self.feature_channels = feature_channels
        self.fbp = LearnedFBP(feature_channels, image_size, n_views, n_bins, pixel_mm, bin_mm,
                              view_offset_deg)
        self.heads = nn.ModuleList()
        for c in stage_channels:
            out = nn.Conv2d(c, c, 1)
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
            self.heads.append(nn.Sequential(nn.Conv2d(feature_channels, c, 3, padding=1),
                                            nn.SiLU(), out))

    def stage_shapes(self) -> list[tuple[int, int, int]]:
        """Shapes ``(C, H, W)`` of the outputs: ``(c_i, size / 2**i, size / 2**i)``."""
        return [(c, self.image_size >> i, self.image_size >> i)
                for i, c in enumerate(self.stage_channels)]

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Map sinogram-domain features to the image-domain features ``F_s``.

        Parameters
        ----------
        features : torch.Tensor
            ``(B, feature_channels, n_views, n_bins)`` SinoA output.

        Returns
        -------
        list of torch.Tensor
            ``(B, c_i, image_size / 2**i, image_size / 2**i)`` per stage (see
            :meth:`stage_shapes`), whole-slice features to add to SD1's encoder stages
            (crop patches with :func:`crop_stage_features`); autocast dtype under autocast.
        """
        if features.shape[1] != self.feature_channels:
            raise ValueError(f"expected {self.feature_channels} feature channels, "
                             f"got {features.shape[1]}")
        images = self.fbp(features)
        return [head(F.avg_pool2d(images, 2**i) if i else images)
                for i, head in enumerate(self.heads)]


class SinogramBranch(nn.Module):
    """SinoA + CDSM: restored normalised sinogram -> SD1's stage features ``F_s``.

    The SRM (:class:`SinogramRestoration`) is separate: trained first, frozen, and its
    output fed here (MiG-DM Sec. III.C).

    Parameters
    ----------
    stage_channels : sequence of int
        Channels of each guided U-Net stage (``UNet.stage_channels``), shallowest first.
    image_size : int
        Image matrix ``nx = ny`` of the whole slice.
    n_views, n_bins : int
        Sinogram views and bins; the defaults are petrecon's sinogram of a 128 x 128 image
        (``SinogramGeometry.for_image``), the training data's geometry.
    pixel_mm, bin_mm : float
        Pixel and bin sizes in mm. Only ``bin_mm / pixel_mm`` changes the output (the
        backprojection is scale-normalised, see :class:`LearnedFBP`); petrecon's data has
        ``bin_mm == pixel_mm`` for every phantom family, hence the defaults 1, 1.
    width : int
        SinoA trunk channels.
    feature_channels : int
        Sinogram-domain channels (each is backprojected once).
    dilations : sequence of int
        Dilations of SinoA's residual blocks.
    groups : int
        GroupNorm groups of SinoA.
    view_offset_deg : float
        Angle of view 0.
    """

    @register_config
    def __init__(self, stage_channels: Sequence[int], image_size: int = 128, n_views: int = 202,
                 n_bins: int = 183, pixel_mm: float = 1.0, bin_mm: float = 1.0, width: int = 8,
                 feature_channels: int = 4, dilations: Sequence[int] = (1, 2, 4, 8),
                 groups: int = 4, view_offset_deg: float = 0.0) -> None:
        super().__init__()
        self.adapter = SinogramAdapter(width, feature_channels, dilations, groups)
        self.mapper = CrossDomainMapper(stage_channels, image_size, n_views, n_bins, pixel_mm,
                                        bin_mm, feature_channels, view_offset_deg)

    def forward(self, s: torch.Tensor) -> list[torch.Tensor]:
        """Stage features of a batch of restored normalised sinograms.

        Parameters
        ----------
        s : torch.Tensor
            ``(B, 1, n_views, n_bins)`` SRM outputs.

        Returns
        -------
        list of torch.Tensor
            ``(B, c_i, image_size / 2**i, image_size / 2**i)`` per stage, shallowest first.
        """
        return self.mapper(self.adapter(s))


def crop_stage_features(features: Sequence[torch.Tensor], oy: int, ox: int,
                        size: int) -> list[torch.Tensor]:
    """Cut an image patch's window out of whole-slice stage features.

    Stage ``i`` is at ``1 / 2**i`` resolution, so the patch ``[oy : oy + size, ox : ox +
    size]`` of the slice is ``[oy / 2**i : (oy + size) / 2**i]`` (and likewise in x) of
    stage ``i``'s map.

    Parameters
    ----------
    features : sequence of torch.Tensor
        ``(B, C_i, H / 2**i, W / 2**i)`` per stage, shallowest first (CDSM output).
    oy, ox : int
        Top-left corner of the patch in slice pixels; multiples of ``2**(stages - 1)``
        (8 for four stages).
    size : int
        Patch side in pixels; a multiple of ``2**(stages - 1)``.

    Returns
    -------
    list of torch.Tensor
        ``(B, C_i, size / 2**i, size / 2**i)`` per stage (views, not copies).
    """
    step = 2 ** (len(features) - 1)
    if oy % step or ox % step or size % step or min(oy, ox) < 0 or size <= 0:
        raise ValueError(f"patch offsets ({oy}, {ox}) and size {size} must be non-negative "
                         f"multiples of {step}")
    height, width = features[0].shape[-2:]
    if oy + size > height or ox + size > width:
        raise ValueError(f"patch ({oy}, {ox}) + {size} exceeds the {height}x{width} slice")
    return [f[..., oy >> i:(oy + size) >> i, ox >> i:(ox + size) >> i]
            for i, f in enumerate(features)]
