"""The shipped weights: listed in the manifest, verified, and runnable (real models)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pet_recon.cascade import WEIGHT_FILES, Cascade, neighbour_stack
from pet_recon.io.series import read_series
from pet_recon.weights import sha256_file, weights_dir

pytestmark = pytest.mark.weights
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "brain-drf20"


@pytest.fixture(scope="module")
def folder() -> Path:
    path = weights_dir()
    if not (path / "manifest.json").exists():
        pytest.skip(f"no shipped weights in {path}")
    return path


def test_shipped_weights_manifest_complete(folder: Path) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())["models"]
    total = 0
    for name in WEIGHT_FILES.values():
        entry = manifest[name]
        assert entry["sha256"] == sha256_file(folder / name)
        assert entry["config"] and entry["training"]["steps"] > 0 and entry["metrics"]
        total += (folder / name).stat().st_size
    assert total < 40 * 2**20


def test_shipped_cascade_restores_example_slices(folder: Path) -> None:
    cascade = Cascade.load(folder, torch.device("cpu"))
    volume, _ = read_series(EXAMPLE / "ld_drf20")
    low = volume[10:12] / volume.mean() / 3.0
    stack = torch.from_numpy(neighbour_stack(low, cascade.neighbours))
    out = cascade.restore(stack, None, "PET FDG.", steps=2, sd2_steps=1,
                          generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 1, 128, 128) and torch.isfinite(out).all()
    # The restored slices are smoother than the input: less pixel-to-pixel variation.
    rough = np.abs(np.diff(low, axis=-1)).mean()
    assert float(out[:, 0].diff(dim=-1).abs().mean()) < rough
