"""LoRA adapters on the meta-information text encoder."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pet_recon.meta.encoder import TextEncoder
from pet_recon.meta.lora import (
    LoRALinear,
    apply_lora,
    load_lora_state_dict,
    lora_state_dict,
    merge_lora,
)

VOCAB, WIDTH, LAYERS = 50, 32, 2


pytestmark = pytest.mark.usefixtures("one_thread")


def _encoder() -> TextEncoder:
    torch.manual_seed(0)
    return TextEncoder(VOCAB, max_len=12, width=WIDTH, layers=LAYERS, heads=4,
                       embed_dim=16).eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, VOCAB, (3, 12), generator=generator)
    numeric = torch.randn(3, 12, generator=generator)
    mask = torch.arange(12) < torch.tensor([[12], [7], [3]])
    return ids, numeric, mask


def _randomise_b(module: nn.Module) -> None:
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_(std=0.1)


def test_lora_linear_is_eq3() -> None:
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    layer = LoRALinear(base, rank=2, alpha=3.0)
    assert layer.rank == 2 and layer.scaling == 1.5
    assert (layer.lora_b == 0).all() and layer.lora_a.abs().sum() > 0
    _randomise_b(layer)
    x = torch.randn(4, 6)
    expected = x @ base.weight.T + base.bias + 1.5 * x @ (layer.lora_b @ layer.lora_a).T
    torch.testing.assert_close(layer(x), expected)


def test_apply_lora_freezes_base_and_starts_identical() -> None:
    model = _encoder()
    with torch.no_grad():
        before = model(*_inputs())
    names = apply_lora(model)
    assert len(names) == 4 * LAYERS and names[0] == "blocks.0.attn.q_proj"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_a", "lora_b")) for n in trainable)
    assert len(trainable) == 2 * 4 * LAYERS
    layer = model.get_submodule("blocks.1.attn.v_proj")
    assert isinstance(layer, LoRALinear) and layer.rank == 4 and layer.scaling == 2.0
    n_adapter = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n_adapter == 4 * LAYERS * 4 * (WIDTH + WIDTH)
    with torch.no_grad():
        after = model(*_inputs())
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b)


def test_only_adapters_receive_gradients() -> None:
    model = _encoder()
    apply_lora(model, rank=2)
    base_before = model.blocks[0].attn.q_proj.base.weight.clone()
    optimiser = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(*_inputs())[1].square().sum().backward()
    optimiser.step()
    assert torch.equal(model.blocks[0].attn.q_proj.base.weight, base_before)
    assert model.blocks[0].attn.q_proj.lora_b.abs().sum() > 0
    assert model.token_embedding.weight.grad is None


def test_merge_lora_is_equivalent() -> None:
    model = _encoder()
    apply_lora(model)
    _randomise_b(model)
    with torch.no_grad():
        before = model(*_inputs())
    merged = merge_lora(model)
    assert len(merged) == 4 * LAYERS
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert type(model.blocks[0].attn.out_proj) is nn.Linear
    with torch.no_grad():
        after = model(*_inputs())
    for a, b in zip(before, after, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_lora_state_dict_roundtrip() -> None:
    model = _encoder()
    apply_lora(model)
    _randomise_b(model)
    state = lora_state_dict(model)
    assert len(state) == 2 * 4 * LAYERS
    assert all(k.endswith((".lora_a", ".lora_b")) for k in state)
    fresh = _encoder()
    apply_lora(fresh)
    load_lora_state_dict(fresh, state)
    with torch.no_grad():
        torch.testing.assert_close(model(*_inputs())[1], fresh(*_inputs())[1])
    with pytest.raises(ValueError, match="adapter keys"):
        load_lora_state_dict(fresh, {"blocks.0.attn.q_proj.lora_a": state[next(iter(state))]})


def test_apply_lora_custom_targets_and_missing() -> None:
    model = _encoder()
    assert apply_lora(model, targets=("proj",)) == ["proj"]
    with pytest.raises(ValueError, match="no nn.Linear"):
        apply_lora(_encoder(), targets=("nothing",))
