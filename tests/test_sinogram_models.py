"""Projection-domain branch (SRM, SinoA, CDSM): shapes, normalisation, loss, FBP, autocast."""

from __future__ import annotations

import math

import pytest
import torch

from pet_recon.models import UNet
from pet_recon.models.sinogram import (
    CrossDomainMapper,
    LearnedFBP,
    SinogramAdapter,
    SinogramBranch,
    SinogramRestoration,
    crop_stage_features,
    normalise_sinogram,
    pad_sinogram,
    poisson_loss,
    project_image,
)
from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry
from pet_recon.physics.projector import ParallelProjector

SIZE, VIEWS, BINS, PIXEL = 32, 50, 47, 2.0
STAGES = (8, 16, 16, 16)
UNET = {"base_channels": 8, "channel_mults": (1, 2, 2, 2), "attention_levels": (3,),
        "groups": 4}
BRANCH = {"width": 8, "feature_channels": 4, "groups": 4}
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def _branch() -> SinogramBranch:
    return SinogramBranch(STAGES, SIZE, VIEWS, BINS, PIXEL, PIXEL, **BRANCH)


def _randomise(module: torch.nn.Module, seed: int = 0, std: float = 0.2) -> None:
    """Give every parameter random values (zero-initialised outputs become non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(std * torch.randn(p.shape, generator=g))


def _disc_sinogram(centre: tuple[float, float] = (3.0, -2.0),
                   radius: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """An off-centre disc ``(SIZE, SIZE)`` and its sinogram ``(1, 1, VIEWS, BINS)``."""
    image = ImageGeometry(SIZE, SIZE, PIXEL)
    projector = ParallelProjector(image, SinogramGeometry(VIEWS, BINS, PIXEL), device=CPU)
    c = torch.arange(SIZE, dtype=torch.float32) - (SIZE - 1) / 2
    disc = (((c[:, None] - centre[0]) ** 2 + (c[None, :] - centre[1]) ** 2) < radius**2).float()
    return disc, projector.forward(disc[None])[None]


def _sinograms(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(5.0 * torch.rand(batch, 1, VIEWS, BINS, generator=g), generator=g)


def test_normalise_sinogram_is_scale_free() -> None:
    y = _sinograms(3)
    s, mean = normalise_sinogram(y)
    assert mean.shape == (3, 1, 1, 1)
    torch.testing.assert_close(s.mean(dim=(-2, -1)), torch.ones(3, 1))
    torch.testing.assert_close(s * mean, y)
    s7, mean7 = normalise_sinogram(7.0 * y)
    torch.testing.assert_close(s7, s)
    torch.testing.assert_close(mean7, 7.0 * mean)
    zero_s, zero_mean = normalise_sinogram(torch.zeros(1, 1, VIEWS, BINS, dtype=torch.int32))
    assert zero_s.dtype == torch.float32 and not zero_s.any() and zero_mean.item() == 1.0


def test_pad_sinogram_continues_views_with_the_half_turn_symmetry() -> None:
    _, sino = _disc_sinogram()
    padded = pad_sinogram(sino, 2, 3)
    assert padded.shape == (1, 1, VIEWS + 4, BINS + 6)
    image = ImageGeometry(SIZE, SIZE, PIXEL)
    step = 180.0 / VIEWS
    for offset_deg, row in ((-step, 1), (VIEWS * step, VIEWS + 2)):
        geometry = SinogramGeometry(VIEWS, BINS, PIXEL, view_offset_deg=offset_deg)
        disc, _ = _disc_sinogram()
        view = ParallelProjector(image, geometry, device=CPU).forward(disc[None])[0, 0]
        torch.testing.assert_close(padded[0, 0, row, 3:-3], view, atol=1e-4, rtol=1e-4)
    assert not padded[..., :3].any() and not padded[..., -3:].any()
    with pytest.raises(ValueError, match="cannot pad"):
        pad_sinogram(sino, VIEWS + 1, 0)


def test_restoration_is_non_negative_and_identity_at_init() -> None:
    srm = SinogramRestoration(width=8, dilations=(1, 2, 4), groups=4)
    s, _ = normalise_sinogram(_sinograms())
    with torch.no_grad():
        pred = srm(s)
    assert pred.shape == s.shape and pred.dtype == torch.float32
    assert (pred - s).abs().max() <= math.log(2.0) / srm.beta + 1e-6
    _randomise(srm, std=0.5)
    with torch.no_grad():
        pred = srm(s)
    assert (pred >= 0).all() and (pred - s).abs().max() > 0.1
    rebuilt = SinogramRestoration(**srm.config)
    rebuilt.load_state_dict(srm.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(s), pred)


def test_poisson_loss_matches_hand_computation() -> None:
    pred = torch.tensor([[0.5, 2.0], [1.0, 0.0]])
    y = torch.tensor([[3.0, 0.0], [2.0, 1.0]])
    scale = 4.0
    mu = [2.0, 8.0, 4.0, 1e-6]  # pred * scale, the last clamped to eps
    counts = [3.0, 0.0, 2.0, 1.0]
    terms = [m - c + (c * math.log(c / m) if c > 0 else 0.0) for m, c in zip(mu, counts,
                                                                                strict=True)]
    assert poisson_loss(pred, y, scale).item() == pytest.approx(sum(terms) / 4, rel=1e-6)


def test_poisson_loss_is_minimised_at_the_target_mean() -> None:
    y = _sinograms(2, seed=1)
    _, scale = normalise_sinogram(y)
    best = (y / scale).requires_grad_(True)
    loss = poisson_loss(best, y, scale)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    torch.testing.assert_close(best.grad, torch.zeros_like(y), atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        other = (best.detach() * torch.exp(0.1 * torch.randn(y.shape, generator=g))
                 + 0.01 * torch.rand(y.shape, generator=g))
        assert poisson_loss(other, y, scale) > loss


def test_ramp_initialised_fbp_reconstructs_a_disc() -> None:
    disc, sino = _disc_sinogram()
    s, _ = normalise_sinogram(sino)
    with torch.no_grad():
        image = LearnedFBP(1, SIZE, VIEWS, BINS, PIXEL, PIXEL)(s)[0, 0]
    corr = torch.corrcoef(torch.stack([image.flatten(), disc.flatten()]))[0, 1]
    assert corr > 0.9
    # a mean-1 sinogram maps to an image of mean 1: the disc at 1 / (its area fraction)
    assert image.mean().item() == pytest.approx(1.0, rel=0.02)
    inside = image[disc > 0].mean().item()
    assert inside == pytest.approx(disc.numel() / disc.sum().item(), rel=0.1)


def test_fbp_depends_on_the_bin_to_pixel_ratio_only() -> None:
    _, sino = _disc_sinogram()
    s, _ = normalise_sinogram(sino)
    with torch.no_grad():
        unit = LearnedFBP(1, SIZE, VIEWS, BINS, 1.0, 1.0)(s)
        scaled = LearnedFBP(1, SIZE, VIEWS, BINS, 3.1, 3.1)(s)
    torch.testing.assert_close(scaled, unit, atol=1e-5, rtol=1e-4)


def test_project_image_uses_the_projector_grid() -> None:
    disc, _ = _disc_sinogram()
    images = torch.stack([disc, -disc])[:, None]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sino = project_image(images)
    default = SinogramGeometry.for_image(ImageGeometry(SIZE, SIZE, 1.0))
    assert sino.shape == (2, 1, default.n_views, default.n_bins)
    assert sino.dtype == torch.float32 and not sino[1].any()
    projector = ParallelProjector(ImageGeometry(SIZE, SIZE, 1.0), default, device=CPU)
    torch.testing.assert_close(sino[0], projector.forward(disc[None]))
    assert project_image(images, n_views=VIEWS, n_bins=BINS).shape == (2, 1, VIEWS, BINS)
    # the branch's default geometry is that of the training data (128 x 128 slices)
    full = SinogramGeometry.for_image(ImageGeometry(128, 128, 1.0))
    config = SinogramBranch(STAGES).config
    assert (config["image_size"], config["n_views"], config["n_bins"]) == (
        128, full.n_views, full.n_bins)


def test_branch_shapes_match_the_unet_stages() -> None:
    unet = UNet(1, 1, **UNET)
    assert unet.stage_channels == STAGES
    branch = _branch()
    s, _ = normalise_sinogram(_sinograms())
    assert tuple(SinogramAdapter(**BRANCH)(s).shape) == (2, 4, VIEWS, BINS)
    with torch.no_grad():
        features = branch(s)
    shapes = unet.stage_shapes(SIZE, SIZE)
    assert [tuple(f.shape) for f in features] == [(2, *shape) for shape in shapes]
    assert branch.mapper.stage_shapes() == shapes
    x, t = torch.randn(2, 1, SIZE, SIZE), torch.tensor([3, 7])
    with torch.no_grad():
        torch.testing.assert_close(unet(x, t, stage_features=features), unet(x, t))


def test_mapper_starts_at_zero_and_learns_non_zero_features() -> None:
    mapper = CrossDomainMapper(STAGES, SIZE, VIEWS, BINS, PIXEL, PIXEL, feature_channels=4)
    g = torch.Generator().manual_seed(3)
    maps = torch.randn(2, 4, VIEWS, BINS, generator=g)
    with torch.no_grad():
        assert all(not f.any() for f in mapper(maps))
        for head in mapper.heads:
            head[-1].weight.normal_(0.0, 0.1, generator=g)
        features = mapper(maps)
    assert all(f.abs().mean() > 0 for f in features)
    with pytest.raises(ValueError, match="feature channels"):
        mapper(maps[:, :3])
    with pytest.raises(ValueError, match="sinograms"):
        mapper.fbp(torch.zeros(1, 16, VIEWS, BINS - 1))


def test_crop_stage_features_rule() -> None:
    full = [torch.arange(2 * c * (SIZE >> i) ** 2, dtype=torch.float32).reshape(
        2, c, SIZE >> i, SIZE >> i) for i, c in enumerate(STAGES)]
    crops = crop_stage_features(full, 8, 16, 16)
    assert [tuple(c.shape) for c in crops] == [(2, c, 16 >> i, 16 >> i)
                                                for i, c in enumerate(STAGES)]
    torch.testing.assert_close(crops[0], full[0][..., 8:24, 16:32])
    torch.testing.assert_close(crops[1], full[1][..., 4:12, 8:16])
    torch.testing.assert_close(crops[3], full[3][..., 1:3, 2:4])
    for oy, ox, size in ((4, 0, 16), (0, 8, 12), (16, 24, 16), (-8, 0, 8)):
        with pytest.raises(ValueError):
            crop_stage_features(full, oy, ox, size)


def test_everything_runs_under_bf16_autocast() -> None:
    srm = SinogramRestoration(width=8, dilations=(1, 2), groups=4)
    branch = _branch()
    _randomise(branch, seed=4, std=0.1)
    y = _sinograms()
    s, scale = normalise_sinogram(y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pred = srm(s)
        loss = poisson_loss(pred, y, scale)
        features = branch(pred)
    loss.backward()
    assert pred.dtype == torch.float32 and (pred >= 0).all()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(f).all() and f.abs().max() > 0 for f in features)
    assert all(p.grad is not None for p in srm.parameters())
    rebuilt = SinogramBranch(**branch.config)
    rebuilt.load_state_dict(branch.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(s)[2], branch(s)[2])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_branch_on_cuda_matches_cpu() -> None:
    branch = _branch()
    _randomise(branch, seed=5, std=0.1)
    s, _ = normalise_sinogram(_sinograms())
    with torch.no_grad():
        expected = branch(s)
    cuda = torch.device("cuda")
    branch.to(cuda)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        features = branch(s.to(cuda))
    sum(f.float().square().mean() for f in features).backward()
    assert branch.mapper.fbp.filters.grad is not None
    with torch.no_grad():
        for got, want in zip(branch(s.to(cuda)), expected, strict=True):
            torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=1e-3)


def test_resample_sinogram_identity_and_wrap() -> None:
    from pet_recon.models.sinogram import resample_sinogram
    from pet_recon.physics.geometry import ImageGeometry, SinogramGeometry
    from pet_recon.physics.projector import ParallelProjector

    image = ImageGeometry(nx=32, ny=32, pixel_mm=2.0)
    fine = SinogramGeometry.for_image(image)
    x = torch.zeros(1, 32, 32)
    x[0, 10:14, 18:22] = 1.0  # off-centre: the sinogram is not symmetric in s
    y = ParallelProjector(image, fine, device=CPU).forward(x)
    torch.testing.assert_close(resample_sinogram(y, fine, fine), y, atol=1e-5, rtol=1e-5)
    # A grid whose views start 90 degrees later wraps around pi (with s mirrored).
    rotated = SinogramGeometry(fine.n_views, fine.n_bins, fine.bin_mm, view_offset_deg=90.0)
    expected = ParallelProjector(image, rotated, device=CPU).forward(x)
    got = resample_sinogram(y, fine, rotated)
    assert float((got - expected).abs().max()) < 0.1 * float(expected.max())
