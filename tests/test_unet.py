"""Conditional U-Net: shapes, conditioning paths, stage-feature injection, autocast."""

from __future__ import annotations

import pytest
import torch

from pet_recon.models import UNet

TINY = {"base_channels": 8, "channel_mults": (1, 2, 2, 2), "attention_levels": (2, 3),
        "groups": 4}


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(model: UNet, seed: int = 0) -> UNet:
    """Model with all parameters random (zero-initialised residual outputs made non-zero)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def test_default_config_parameter_count() -> None:
    n = sum(p.numel() for p in UNet(3, 1).parameters())
    assert 1.5e6 <= n <= 3e6
    n_ctx = sum(p.numel() for p in UNet(3, 1, context_dim=512).parameters())
    assert n < n_ctx <= 3e6


@pytest.mark.parametrize("size", [(16, 16), (24, 40)])
def test_output_shape_for_any_divisible_size(size: tuple[int, int]) -> None:
    model = UNet(5, 2, **TINY)
    x = torch.randn(2, 5, *size)
    assert model(x, torch.tensor([3, 700])).shape == (2, 2, *size)
    assert model(x, torch.tensor(10)).shape == (2, 2, *size)  # scalar t broadcasts
    with pytest.raises(ValueError, match="not divisible by 8"):
        model(torch.randn(1, 5, 20, 16), torch.tensor([1]))


def test_timestep_changes_output_and_time_free_model() -> None:
    model = _randomised(UNet(2, 1, **TINY))
    x = torch.randn(1, 2, 16, 16)
    assert not torch.allclose(model(x, torch.tensor([1])), model(x, torch.tensor([900])))
    plain = UNet(2, 1, time_embedding=False, **TINY)
    assert plain(x, None).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="time embedding"):
        plain(x, torch.tensor([1]))
    with pytest.raises(ValueError, match="time embedding"):
        model(x, None)


def test_stage_shapes_and_feature_injection() -> None:
    model = _randomised(UNet(1, 1, base_channels=8, channel_mults=(1, 1, 2, 2, 2), groups=4,
                             attention_levels=(3, 4)))
    assert model.stage_channels == (8, 16, 16, 16)
    shapes = model.stage_shapes(32, 48)
    assert shapes == [(8, 16, 24), (16, 8, 12), (16, 4, 6), (16, 2, 3)]
    x, t = torch.randn(2, 1, 32, 48), torch.tensor([5, 5])
    base = model(x, t)
    zeros = [torch.zeros(2, *s) for s in shapes]
    assert torch.allclose(model(x, t, stage_features=zeros), base)
    for i in range(4):
        feats = [torch.zeros(2, *s) for s in shapes]
        feats[i] = torch.randn(2, *shapes[i])
        assert not torch.allclose(model(x, t, stage_features=feats), base, atol=1e-4)
    with pytest.raises(ValueError, match="stage_features shapes"):
        model(x, t, stage_features=zeros[:3])


def test_context_and_mask() -> None:
    model = _randomised(UNet(1, 1, context_dim=6, **TINY))
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 10])
    ctx = torch.randn(2, 4, 6)
    no_ctx = model(x, t)
    with_ctx = model(x, t, context=ctx)
    assert not torch.allclose(with_ctx, no_ctx, atol=1e-4)
    mask = torch.tensor([[True, True, False, False], [True, False, False, False]])
    masked = model(x, t, context=ctx, context_mask=mask)
    ctx2 = ctx.clone()
    ctx2[~mask] = 100.0  # masked tokens must not matter
    assert torch.allclose(model(x, t, context=ctx2, context_mask=mask), masked, atol=1e-5)
    none = torch.tensor([[False] * 4, [True, True, True, True]])
    out = model(x, t, context=ctx, context_mask=none)
    assert torch.allclose(out[0], no_ctx[0], atol=1e-5)  # all masked -> unconditional
    assert torch.allclose(out[1], with_ctx[1], atol=1e-5)
    with pytest.raises(ValueError, match="without context_dim"):
        UNet(1, 1, **TINY)(x, t, context=ctx)


def test_bf16_autocast_runs_and_backpropagates() -> None:
    model = _randomised(UNet(1, 1, context_dim=6, **TINY)).train()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([10, 400])
    ctx, mask = torch.randn(2, 3, 6), torch.tensor([[True, True, False], [True, True, True]])
    feats = [0.1 * torch.randn(2, *s) for s in model.stage_shapes(16, 16)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, t, context=ctx, context_mask=mask, stage_features=feats)
    assert torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        ref = model(x, t, context=ctx, context_mask=mask, stage_features=feats)
    assert torch.allclose(out.float(), ref, rtol=0.1, atol=0.1 * float(ref.abs().max()))


def test_config_records_every_argument() -> None:
    model = UNet(3, 1, context_dim=16, **TINY)
    assert model.config == {
        "in_channels": 3, "out_channels": 1, "base_channels": 8, "channel_mults": [1, 2, 2, 2],
        "num_res_blocks": 1, "attention_levels": [2, 3], "context_dim": 16,
        "time_embedding": True, "dropout": 0.0, "groups": 4}
    rebuilt = UNet(**model.config)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()]
    with pytest.raises(ValueError, match="attention_levels"):
        UNet(1, 1, attention_levels=(5,))
