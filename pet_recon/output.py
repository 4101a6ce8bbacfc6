"""Safe output folders: write into a temporary sibling, move into place when complete.

An existing output is never overwritten without ``overwrite=True``, and even then the old
folder is only removed after the new one is complete, so a failed run loses nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pet_recon.errors import PetReconError


def check_output_dir(out_dir: Path, overwrite: bool) -> None:
    """Fail early, creating nothing, when ``out_dir`` cannot be written.

    It must not exist as a file, must be empty unless ``overwrite``, and its nearest
    existing ancestor must be a writable folder.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise PetReconError(f"{out_dir}: output exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise PetReconError(f"{out_dir}: output folder exists and is not empty (use --overwrite)")
    ancestor = out_dir.resolve().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PetReconError(f"{out_dir}: cannot create output folder ({ancestor} is a file)")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PetReconError(f"{out_dir}: output location {ancestor} is not writable")


@contextlib.contextmanager
def staged_output(out_dir: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temporary folder beside ``out_dir``; move it to ``out_dir`` on success.

    Parameters
    ----------
    out_dir : Path
        Final output folder.
    overwrite : bool
        Replace an existing non-empty ``out_dir`` (only once the new output is complete).
    """
    check_output_dir(out_dir, overwrite)
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=parent))
    except OSError as exc:
        raise PetReconError(f"{out_dir}: cannot create output folder ({exc.strerror})") from None
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup: Path | None = None
    if out_dir.exists():
        backup = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
        backup.rmdir()
        out_dir.rename(backup)
    staging.rename(out_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
