"""Model weights: safetensors files with their constructor config, checked against a manifest.

A weights file is a ``.safetensors`` file (never a pickle) whose metadata holds the model's
class name, a JSON dump of every constructor argument (recorded by :func:`register_config`),
the petrecon version and optional caller data ("extra": e.g. the noise schedule and the
prediction target). Each folder of weights has a ``manifest.json`` listing its files with
their SHA-256, config, training data and steps, git commit and validation metrics
(:func:`update_manifest`). :func:`load_model` hashes a file and compares it with the manifest
next to it (or a hash the caller gives) before reading anything from it.

Shipped weights live in the repository's top-level ``weights/`` folder; the package reaches
them as ``pet_recon/_weights`` (a link to ``../weights`` in a source checkout, copied in as
package data when a wheel is built), so an installed package finds them too. The
environment variable ``PETRECON_WEIGHTS`` points to another folder instead
(:func:`weights_dir`).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import struct
import subprocess
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn

import pet_recon
from pet_recon.errors import PetReconError

#: Environment variable naming a folder of weights that replaces the shipped one.
WEIGHTS_ENV = "PETRECON_WEIGHTS"
#: Name of the manifest in every weights folder.
MANIFEST = "manifest.json"
#: Version of the manifest layout.
MANIFEST_FORMAT = 1

InitT = TypeVar("InitT", bound=Callable[..., None])


def register_config(init: InitT) -> InitT:
    """Decorate a model's ``__init__`` so the instance records its constructor arguments.

    After construction ``model.config`` is a JSON-ready dict of every argument, defaults
    included (tuples become lists), so ``type(model)(**model.config)`` rebuilds the model.
    Arguments must be JSON-serialisable (numbers, strings, bools, None, lists, dicts).

    Parameters
    ----------
    init : callable
        The ``__init__`` method to wrap.

    Returns
    -------
    callable
        The wrapped ``__init__``.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(list(bound.arguments.items())[1:])  # drop self
        init(self, *args, **kwargs)
        try:
            self.config = json.loads(json.dumps(arguments))
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__} arguments are not JSON-serialisable: "
                            f"{exc}") from exc

    return wrapper  # type: ignore[return-value]


def weights_dir() -> Path:
    """Folder holding the weights files and their ``manifest.json``.

    Returns
    -------
    pathlib.Path
        ``$PETRECON_WEIGHTS`` when set, else the package data folder ``pet_recon/_weights``
        of the installed (or editable) package.
    """
    override = os.environ.get(WEIGHTS_ENV)
    if override:
        return Path(override).expanduser()
    return Path(str(files(pet_recon) / "_weights"))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes.

    Parameters
    ----------
    path : pathlib.Path
        The file.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file beside ``path`` and move it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_model(model: nn.Module, path: str | Path, *, config: Mapping[str, Any] | None = None,
               extra: Mapping[str, Any] | None = None) -> Path:
    """Save a model's parameters and buffers as safetensors with its config as metadata.

    Parameters
    ----------
    model : torch.nn.Module
        The model; tensors are stored as they are (dtype kept), moved to the CPU.
    path : str or pathlib.Path
        Destination, must end in ``.safetensors``; written atomically.
    config : mapping, optional
        Every constructor argument of ``type(model)``; default ``model.config`` (see
        :func:`register_config`).
    extra : mapping, optional
        JSON-serialisable data stored alongside (noise schedule, prediction target, ...),
        returned by :func:`load_model`.

    Returns
    -------
    pathlib.Path
        The written file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise PetReconError(f"{path}: weights files must end in .safetensors")
    if config is None:
        config = getattr(model, "config", None)
        if config is None:
            raise TypeError(f"{type(model).__name__} records no config; decorate its __init__ "
                            "with @register_config or pass config=")
    metadata = {
        "class": type(model).__name__,
        "config": json.dumps(dict(config), sort_keys=True),
        "extra": json.dumps(dict(extra or {}), sort_keys=True),
        "petrecon_version": pet_recon.__version__,
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    _write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return path


def _manifest_hash(path: Path) -> str:
    """The SHA-256 the manifest beside ``path`` lists for it."""
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        raise PetReconError(f"{path}: no {MANIFEST} beside the weights file to verify it "
                            "against; refusing to load unverified weights")
    try:
        entry = json.loads(manifest_path.read_text())["models"][path.name]
        return str(entry["sha256"])
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PetReconError(f"{path}: not listed in {manifest_path}; refusing to load "
                            "unknown weights") from exc


def _safetensors_metadata(data: bytes, path: Path) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's header (8-byte length, then JSON)."""
    try:
        (length,) = struct.unpack("<Q", data[:8])
        if length > len(data) - 8:
            raise ValueError("header length exceeds file size")
        header = json.loads(data[8:8 + length])
        return dict(header["__metadata__"])
    except (struct.error, ValueError, KeyError, TypeError) as exc:
        raise PetReconError(f"{path}: not a petrecon safetensors weights file ({exc})") from exc


def load_model(path: str | Path, *, registry: Mapping[str, Callable[..., nn.Module]],
               expected_sha256: str | None = None,
               device: torch.device | str) -> tuple[nn.Module, dict[str, Any]]:
    """Verify a weights file's SHA-256, rebuild the model from its config and load it.

    The file is read once into memory, hashed, and parsed only if the hash matches
    ``expected_sha256`` or, when that is not given, the entry for the file's name in the
    ``manifest.json`` of its folder. Only safetensors is read; pickles are never loaded.

    Parameters
    ----------
    path : str or pathlib.Path
        A ``.safetensors`` file written by :func:`save_model`.
    registry : mapping
        Model classes by the class name stored in the file, e.g. ``{"UNet": UNet}``.
    expected_sha256 : str, optional
        Hex SHA-256 the file must have; default: the manifest's.
    device : torch.device or str
        Device to put the model on.

    Returns
    -------
    model : torch.nn.Module
        The model in eval mode, its ``config`` rebuilt from the file.
    extra : dict
        The ``extra`` data given to :func:`save_model`.

    Raises
    ------
    PetReconError
        The file is missing, not ``.safetensors``, unknown to the manifest, fails the hash
        check, is not a valid weights file, names a class not in ``registry``, or its tensors
        do not fit the rebuilt model. The message names the file.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise PetReconError(f"{path}: only .safetensors weights are loaded (never pickles)")
    if not path.is_file():
        raise PetReconError(f"{path}: weights file not found")
    expected = (expected_sha256 or _manifest_hash(path)).lower()
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise PetReconError(f"{path}: SHA-256 mismatch (file {actual}, expected {expected}); "
                            "refusing to load")

    metadata = _safetensors_metadata(data, path)
    cls = registry.get(metadata.get("class", ""))
    if cls is None:
        raise PetReconError(f"{path}: model class {metadata.get('class')!r} is not one of "
                            f"{sorted(registry)}")
    try:
        config = json.loads(metadata["config"])
        extra = json.loads(metadata.get("extra", "{}"))
        tensors = load_safetensors(data)
    except (KeyError, json.JSONDecodeError, SafetensorError) as exc:
        raise PetReconError(f"{path}: corrupt weights file ({exc})") from exc
    try:
        model = cls(**config)
        model.load_state_dict(tensors, strict=True)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise PetReconError(f"{path}: weights do not fit {metadata['class']}: {exc}") from exc
    return model.to(device).eval(), extra


def _git_state() -> dict[str, Any]:
    """Commit and dirty flag of the git checkout holding this package (None outside git)."""
    cwd = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"git_commit": commit, "git_dirty": bool(status) if status is not None else None}


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """The ``manifest.json`` of a weights folder (``{"format", "models"}``; with no models
    when the folder has none yet).

    Raises
    ------
    PetReconError
        The manifest is not valid JSON.
    """
    manifest_path = Path(folder) / MANIFEST
    if not manifest_path.is_file():
        return {"format": MANIFEST_FORMAT, "models": {}}
    try:
        return json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise PetReconError(f"{manifest_path}: not valid JSON ({exc})") from exc


def update_manifest(path: str | Path, *, name: str, config: Mapping[str, Any],
                    training: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any]:
    """Add or replace a weights file's entry in the ``manifest.json`` of its folder.

    Parameters
    ----------
    path : str or pathlib.Path
        The weights file (already written).
    name : str
        Role of the model, e.g. ``"sd1"``, ``"sd2"``, ``"sinogram_adapter"``.
    config : mapping
        Model and run configuration (constructor arguments, schedule, resample step, ...).
    training : mapping
        Training data (data set, split, number of slices/patches), steps, seed, time, ...
    metrics : mapping
        Validation metrics (e.g. ``{"psnr_db": ..., "ssim": ..., "n_slices": ...}``).

    Returns
    -------
    dict
        The entry written: ``file``, ``name``, ``sha256``, ``size_bytes``, ``config``,
        ``training``, ``metrics``, ``git_commit``, ``git_dirty``, ``petrecon_version``,
        ``created`` (UTC ISO 8601).
    """
    path = Path(path)
    if not path.is_file():
        raise PetReconError(f"{path}: weights file not found")
    manifest_path = path.parent / MANIFEST
    manifest = read_manifest(path.parent)
    entry = {
        "file": path.name,
        "name": name,
        "sha256": sha256_file(path),
        "size_bytes": path.stat().st_size,
        "config": dict(config),
        "training": dict(training),
        "metrics": dict(metrics),
        **_git_state(),
        "petrecon_version": pet_recon.__version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    manifest.setdefault("models", {})[path.name] = entry
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    _write_atomic(manifest_path, lambda tmp: tmp.write_text(text))
    return entry
