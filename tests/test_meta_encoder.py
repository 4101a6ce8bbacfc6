"""Meta-information encoder: shapes, masking, CLIP loss, retrieval, save/load, training."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pet_recon.errors import PetReconError
from pet_recon.meta.encoder import (
    ImageEncoder,
    MetaEncoder,
    TextEncoder,
    clip_loss,
    image_inputs,
    load_meta_encoder,
    retrieval_top1,
    save_meta_encoder,
)
from pet_recon.meta.lora import apply_lora, merge_lora
from pet_recon.meta.prompt import MetaRecord, render_prompt
from pet_recon.meta.tokenizer import Tokenizer
from pet_recon.weights import sha256_file

TINY = {"width": 32, "layers": 2, "heads": 2, "embed_dim": 16, "image_width": 8,
        "image_depth": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _record(tracer: str, drf: float) -> MetaRecord:
    return MetaRecord(
        radiopharmaceutical=tracer, radionuclide="^18^Fluorine", half_life_min=109.8,
        injected_activity_mbq=370.0 / drf, weight_kg=70.0, height_cm=175.0, sex="F", age="50",
        uptake_time_min=60.0, frame_duration_s=300.0, decay_correction="START", units="BQML",
        manufacturer="SIEMENS", model="Biograph Vision", reconstruction_method="OSEM",
        pixel_size_mm=4.0, slice_thickness_mm=4.0, dose_fraction=1.0 / drf, dose_source="given",
    )


def _batch(tokenizer: Tokenizer, max_len: int = 64) -> tuple[torch.Tensor, ...]:
    prompts = [render_prompt(_record("FDG", 1)), render_prompt(_record("PSMA", 20)),
               "PET FDG, dose level 1/4 of full dose."]
    return tokenizer.encode_batch(prompts, max_len=max_len)


def test_shapes_and_config() -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    model = MetaEncoder(tokenizer.vocab_size, **TINY)
    ids, numeric, mask = _batch(tokenizer)
    tokens, pooled = model.text(ids, numeric, mask)
    assert tokens.shape == (3, 64, 32) and pooled.shape == (3, 16)
    assert model.image(torch.rand(3, 1, 40, 24)).shape == (3, 16)
    text_emb, image_emb = model(ids, numeric, mask, torch.rand(3, 1, 32, 32))
    assert text_emb.shape == image_emb.shape == (3, 16)
    assert model.config == {"vocab_size": tokenizer.vocab_size, "max_len": 64, "mlp_ratio": 4,
                            "in_channels": 1, "image_scalars": 0, "image_head_hidden": 0,
                            "logit_scale_init": math.log(1 / 0.07), **TINY}
    with pytest.raises(ValueError, match="max_len"):
        model.text(*tokenizer.encode_batch(["PET"], max_len=65))
    assert TextEncoder(10, layers=1).config["width"] == 128
    assert ImageEncoder(3, depth=1).config == {"in_channels": 3, "width": 32, "depth": 1,
                                               "embed_dim": 128, "scalars": 0,
                                               "head_hidden": 0}


def test_image_encoder_scalars_enter_the_mlp_head() -> None:
    torch.manual_seed(0)
    encoder = ImageEncoder(3, width=8, depth=2, embed_dim=16, scalars=1, head_hidden=32).eval()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        low = encoder(images, torch.tensor([[-1.0], [-1.0]]))
        high = encoder(images, torch.tensor([[1.0], [1.0]]))
        scaled = encoder(images * 7.0, torch.tensor([[-1.0], [-1.0]]))
    assert low.shape == (2, 16) and not torch.allclose(low, high)
    # GroupNorm after the stem: the convolutional features ignore the overall scale.
    torch.testing.assert_close(scaled, low, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="1 scalars per image"):
        encoder(images)


def test_image_inputs_relative_image_and_log_concentration() -> None:
    planes = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    images, scalars = image_inputs(planes, torch.tensor([2.0, 4.0]),
                                   torch.tensor([5000.0, 250.0]))
    assert images.shape == (2, 3, 2, 2) and scalars.shape == (2, 1)
    # Top-left 2x2 block of plane 0 of slice 0: (0 + 1 + 4 + 5) / 4 / ref 2.
    assert images[0, 0, 0, 0].item() == pytest.approx(1.25)
    assert images[1, 2, 1, 1].item() == pytest.approx(
        planes[1, 2, 2:, 2:].mean().item() / 4.0)
    # ref 2 SUV x 5000 Bq/ml per SUV = 10 kBq/ml; 4 x 250 = 1 kBq/ml.
    torch.testing.assert_close(scalars, torch.tensor([[1.0], [0.0]]))
    # With the volumes' noise SD (0.2 and 4 SUV): log10(noise / ref) = -1 and 0 appended.
    same, both = image_inputs(planes, torch.tensor([2.0, 4.0]), torch.tensor([5000.0, 250.0]),
                              torch.tensor([0.2, 4.0]))
    torch.testing.assert_close(same, images)
    torch.testing.assert_close(both, torch.tensor([[1.0, -1.0], [0.0, 0.0]]))
    # A noise-free volume: the floor (1e-3, log10 = -3), not -inf.
    _, floored = image_inputs(planes, torch.tensor([2.0, 4.0]), torch.tensor([5000.0, 250.0]),
                              torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(floored, torch.tensor([[1.0, -3.0], [0.0, 0.0]]))


def test_padding_does_not_change_outputs() -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    model = TextEncoder(tokenizer.vocab_size, width=32, layers=2, heads=4, embed_dim=16).eval()
    short = _batch(tokenizer, max_len=56)
    long = _batch(tokenizer, max_len=64)
    with torch.no_grad():
        tok_s, pool_s = model(*short)
        tok_l, pool_l = model(*long)
        ids, numeric, mask = long
        garbage = torch.where(mask, ids, torch.randint_like(ids, tokenizer.vocab_size))
        tok_g, pool_g = model(garbage, torch.where(mask, numeric, 5.0), mask)
    m = short[2]
    torch.testing.assert_close(tok_s[m], tok_l[:, :56][m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool_s, pool_l, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pool_g, pool_l, atol=1e-5, rtol=1e-5)
    empty = tokenizer.encode_batch([""], max_len=8)
    assert torch.isfinite(model(*empty)[1]).all()


def test_numeric_value_changes_embedding() -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    model = TextEncoder(tokenizer.vocab_size, width=32, layers=1, heads=2, embed_dim=16)
    a = tokenizer.encode_batch(["Patient weight 70.0 kg"])
    b = tokenizer.encode_batch(["Patient weight 71.0 kg"])
    assert torch.equal(a[0], b[0])  # same bin token
    with torch.no_grad():
        assert not torch.allclose(model(*a)[1], model(*b)[1])


def test_clip_loss_matches_hand_computation() -> None:
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [3.0, 3.0]])  # normalised: (1, 0), (r, r), r = 1/sqrt2
    r, tau = 1 / math.sqrt(2), 10.0
    s = [[tau * 1.0, tau * r], [0.0, tau * r]]  # s[i][j] = tau * t_i . v_j

    def ce(row: list[float], target: int) -> float:
        return -row[target] + math.log(sum(math.exp(v) for v in row))

    rows = (ce(s[0], 0) + ce(s[1], 1)) / 2
    cols = (ce([s[0][0], s[1][0]], 0) + ce([s[0][1], s[1][1]], 1)) / 2
    expected = (rows + cols) / 2
    assert clip_loss(text, image, tau).item() == pytest.approx(expected, rel=1e-6)
    assert clip_loss(text, image, torch.tensor(tau)).item() == pytest.approx(expected, rel=1e-6)


def test_retrieval_top1_on_constructed_example() -> None:
    text = torch.eye(4)
    image = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0],
                          [0.5, 0.0, 0.2, 0.0], [0.0, 0.0, 0.5, 1.0]])
    # Prompt 2 is closest to image 3 (cos 0.45 > 0.37); the others find their own image.
    assert retrieval_top1(text, image) == pytest.approx(0.75)
    assert retrieval_top1(text, 5 * torch.eye(4)) == 1.0


def test_logit_scale_init_and_clamp() -> None:
    model = MetaEncoder(10, **TINY)
    assert model.scale().item() == pytest.approx(1 / 0.07, rel=1e-6)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert model.scale().item() == pytest.approx(100.0)


def test_save_load_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer(hash_buckets=64)
    model = MetaEncoder(tokenizer.vocab_size, **TINY).eval()
    path = save_meta_encoder(tmp_path / "meta.safetensors", model, tokenizer)
    loaded, loaded_tok = load_meta_encoder(path, expected_sha256=sha256_file(path))
    assert loaded.config == model.config and loaded_tok.tokens == tokenizer.tokens
    assert type(model.text)(**model.text.config).config == model.text.config
    batch, images = _batch(tokenizer), torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(*batch, images), loaded(*batch, images), strict=True):
            torch.testing.assert_close(a, b)
    with pytest.raises(PetReconError, match="SHA-256"):
        load_meta_encoder(path, expected_sha256="0" * 64)
    apply_lora(model.text)
    with pytest.raises(ValueError, match="LoRA"):
        save_meta_encoder(path, model, tokenizer)
    merge_lora(model.text)
    save_meta_encoder(path, model, tokenizer)
    with pytest.raises(ValueError, match="vocab"):
        save_meta_encoder(path, model, Tokenizer())


TRACERS = ("FDG", "Florbetapir", "PSMA", "Choline")
DRFS = (1, 4, 16, 64)


def _synthetic_images(generator: torch.Generator) -> torch.Tensor:
    """One 32x32 slice per (tracer, DRF): tracer -> pattern, noise std ~ sqrt(DRF)."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    r = (x**2 + y**2).sqrt()
    patterns = torch.stack([(r < 0.6).float(), ((r > 0.3) & (r < 0.7)).float(),
                            (x.abs() < 0.25).float() * (r < 0.8),
                            (y.abs() < 0.25).float() * (r < 0.8)])
    base = patterns.repeat_interleave(len(DRFS), dim=0)
    sigma = 0.05 * torch.tensor(DRFS, dtype=torch.float32).sqrt().repeat(len(TRACERS))
    noise = torch.randn(base.shape, generator=generator)
    return (base + sigma[:, None, None] * noise).unsqueeze(1)


def test_tiny_clip_training_aligns_prompts_and_images() -> None:
    torch.manual_seed(0)
    tokenizer = Tokenizer()
    prompts = [render_prompt(_record(t, k)) for t in TRACERS for k in DRFS]
    ids, numeric, mask = tokenizer.encode_batch(prompts)
    model = MetaEncoder(tokenizer.vocab_size, width=32, layers=1, heads=2, embed_dim=32,
                        image_width=8, image_depth=2)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(1)
    for _ in range(120):
        perm = torch.randperm(len(prompts), generator=generator)
        images = _synthetic_images(generator)[perm]
        text_emb, image_emb = model(ids[perm], numeric[perm], mask[perm], images)
        loss = clip_loss(text_emb, image_emb, model.scale())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        acc = sum(retrieval_top1(*model(ids, numeric, mask, _synthetic_images(generator)))
                  for _ in range(4)) / 4
    # Chance is 1/16; knowing the tracer but not the dose level gives about 1/4.
    assert acc >= 0.75
