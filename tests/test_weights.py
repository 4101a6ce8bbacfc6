"""Weights I/O: safetensors round trip, manifest and hash checks, pickle refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from pet_recon.errors import PetReconError
from pet_recon.models import UNet
from pet_recon.weights import (
    load_model,
    register_config,
    save_model,
    sha256_file,
    update_manifest,
    weights_dir,
)

REGISTRY = {"UNet": UNet}
TINY = {"base_channels": 8, "channel_mults": [1, 2, 2], "attention_levels": [2], "groups": 4,
        "context_dim": 6}


def _saved(folder: Path, name: str = "sd2.safetensors") -> tuple[UNet, Path]:
    torch.manual_seed(0)
    model = UNet(2, 1, **TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    path = save_model(model, folder / name, extra={"prediction": "x0", "resample_n": 50})
    return model, path


def test_round_trip_gives_identical_outputs_and_config(tmp_path: Path) -> None:
    model, path = _saved(tmp_path)
    entry = update_manifest(path, name="sd2", config=model.config,
                            training={"data": "phantoms", "steps": 10},
                            metrics={"psnr_db": 30.0})
    loaded, extra = load_model(path, registry=REGISTRY, device="cpu")
    assert isinstance(loaded, UNet) and not loaded.training
    assert loaded.config == model.config
    assert extra == {"prediction": "x0", "resample_n": 50}
    assert entry["sha256"] == sha256_file(path)
    x, t, ctx = torch.randn(1, 2, 8, 8), torch.tensor([7]), torch.randn(1, 3, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x, t, context=ctx), model(x, t, context=ctx))
    loaded2, _ = load_model(path, registry=REGISTRY, expected_sha256=entry["sha256"].upper(),
                            device=torch.device("cpu"))
    assert loaded2.config == model.config


def test_manifest_entry_contents(tmp_path: Path) -> None:
    model, path = _saved(tmp_path)
    update_manifest(path, name="sd2", config={"unet": model.config},
                    training={"data": "phantoms", "steps": 10}, metrics={"ssim": 0.9})
    other = save_model(model, tmp_path / "sd1.safetensors")
    update_manifest(other, name="sd1", config={}, training={"steps": 1}, metrics={})
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == 1 and set(manifest["models"]) == {"sd1.safetensors",
                                                                     "sd2.safetensors"}
    entry = manifest["models"]["sd2.safetensors"]
    assert entry["file"] == "sd2.safetensors" and entry["name"] == "sd2"
    assert entry["size_bytes"] == path.stat().st_size
    assert entry["training"] == {"data": "phantoms", "steps": 10}
    assert entry["metrics"] == {"ssim": 0.9} and entry["config"] == {"unet": model.config}
    assert {"git_commit", "git_dirty", "petrecon_version", "created"} <= set(entry)
    assert not list(tmp_path.glob(".*.tmp"))


def test_hash_mismatch_is_refused(tmp_path: Path) -> None:
    model, path = _saved(tmp_path)
    update_manifest(path, name="sd2", config=model.config, training={}, metrics={})
    with pytest.raises(PetReconError, match=r"sd2\.safetensors: SHA-256 mismatch"):
        load_model(path, registry=REGISTRY, expected_sha256="0" * 64, device="cpu")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # corrupt one weight byte after the manifest was written
    path.write_bytes(bytes(data))
    with pytest.raises(PetReconError, match=r"sd2\.safetensors: SHA-256 mismatch"):
        load_model(path, registry=REGISTRY, device="cpu")


def test_unknown_files_are_refused(tmp_path: Path) -> None:
    model, path = _saved(tmp_path)
    with pytest.raises(PetReconError, match=r"sd2\.safetensors: no manifest\.json"):
        load_model(path, registry=REGISTRY, device="cpu")
    other = save_model(model, tmp_path / "other.safetensors")
    update_manifest(other, name="other", config={}, training={}, metrics={})
    with pytest.raises(PetReconError, match=r"sd2\.safetensors: not listed"):
        load_model(path, registry=REGISTRY, device="cpu")
    with pytest.raises(PetReconError, match=r"missing\.safetensors: weights file not found"):
        load_model(tmp_path / "missing.safetensors", registry=REGISTRY, device="cpu")
    with pytest.raises(PetReconError, match=r"sd2\.safetensors: model class 'UNet' is not one"):
        load_model(path, registry={}, expected_sha256=sha256_file(path), device="cpu")


def test_pickle_files_are_refused(tmp_path: Path) -> None:
    model, _ = _saved(tmp_path)
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(PetReconError, match=r"model\.pt: only \.safetensors"):
        load_model(pt, registry=REGISTRY, expected_sha256=sha256_file(pt), device="cpu")
    disguised = tmp_path / "disguised.safetensors"
    disguised.write_bytes(pt.read_bytes())
    with pytest.raises(PetReconError, match=r"disguised\.safetensors: not a petrecon"):
        load_model(disguised, registry=REGISTRY, expected_sha256=sha256_file(disguised),
                   device="cpu")
    with pytest.raises(PetReconError, match=r"model\.pt: weights files must end"):
        save_model(model, pt)


def test_mismatched_tensors_are_refused(tmp_path: Path) -> None:
    _, path = _saved(tmp_path)

    class Other(UNet):
        pass

    with pytest.raises(PetReconError, match=r"sd2\.safetensors: weights do not fit"):
        load_model(path, registry={"UNet": lambda **cfg: UNet(**{**cfg, "base_channels": 4})},
                   expected_sha256=sha256_file(path), device="cpu")
    other = save_model(Other(1, 1, **TINY), tmp_path / "o.safetensors")
    loaded, _ = load_model(other, registry={"Other": Other}, expected_sha256=sha256_file(other),
                           device="cpu")
    assert type(loaded) is Other


def test_register_config_requires_json_arguments() -> None:
    class Tiny(nn.Module):
        @register_config
        def __init__(self, size: int, scale: float = 2.0, dims: tuple[int, ...] = (1, 2),
                     device: object = None) -> None:
            super().__init__()
            self.layer = nn.Linear(size, size)

    assert Tiny(3).config == {"size": 3, "scale": 2.0, "dims": [1, 2], "device": None}
    assert Tiny(size=4, scale=1.0).config["scale"] == 1.0
    with pytest.raises(TypeError, match="Tiny arguments are not JSON-serialisable"):
        Tiny(3, device=torch.device("cpu"))


def test_weights_dir_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PETRECON_WEIGHTS", raising=False)
    default = weights_dir()
    assert default.name == "_weights" and default.parent.name == "pet_recon"
    monkeypatch.setenv("PETRECON_WEIGHTS", str(tmp_path))
    assert weights_dir() == tmp_path
