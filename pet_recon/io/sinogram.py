"""Raw PET sinogram files: STIR Interfile (``.hs`` + raw data), MetaImage and NIfTI.

petrecon works on the direct planes of a PET scanner, each a 2D parallel-beam sinogram
(see :mod:`pet_recon.physics.geometry`). :func:`read_sinogram` returns them as a float32
array of shape ``(planes, views, bins)`` in prompts counts per bin, together with a
:class:`~pet_recon.physics.geometry.SinogramGeometry` and a :class:`SinogramInfo` with the
rest of what the file said. :func:`write_sinogram` writes the same array as a STIR-readable
Interfile pair (``.hs`` header, ``.s`` little-endian float32 data).

The accepted contract is documented in ``docs/sinogram-format.md``. In short:

- ``.hs`` (and ``.hv``, to reject image headers with a clear message): Interfile 3.3 with
  the STIR projection-data extensions. Four dimensions labelled ``segment`` (slowest),
  ``view``, ``axial coordinate`` and ``tangential coordinate`` in any order inside a segment;
  index ``[1]`` varies fastest. STIR writes ``[4] segment, [3] view, [2] axial coordinate,
  [1] tangential coordinate``, i.e. data laid out ``[segment][view][axial][tangential]``.
- Multi-segment data: segment 0 (the segment whose ring differences are centred on 0, as in
  STIR) by default, or all segments summed by single-slice rebinning with ``rebin="ssrb"``.
- ``.mha``, ``.mhd``, ``.nii``, ``.nii.gz`` (through SimpleITK): a 3D scalar image whose
  array axes ``(z, y, x)`` are ``(planes, views, bins)``; bin size is the x spacing, plane
  spacing the z spacing; views cover [0, 180) degrees; bins are arc-corrected.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk

from pet_recon.errors import PetReconError
from pet_recon.physics.geometry import SinogramGeometry

Rebin = Literal["ssrb"]
"""Rebinning of multi-segment data: ``"ssrb"`` (single-slice rebinning) or ``None``."""

INTERFILE_SUFFIXES = (".hs", ".hv")
ITK_SUFFIXES = (".mha", ".mhd", ".nii", ".nii.gz")

_VIEW = "view"
_AXIAL = "axial coordinate"
_TANGENTIAL = "tangential coordinate"
_SEGMENT = "segment"
_LABELS = frozenset({_SEGMENT, _VIEW, _AXIAL, _TANGENTIAL})

# (number format, bytes per pixel) -> numpy type code without byte order
_NUMBER_FORMATS: dict[tuple[str, int], str] = {
    ("float", 4): "f4",
    ("float", 8): "f8",
    ("short float", 4): "f4",
    ("long float", 8): "f8",
    **{("signed integer", n): f"i{n}" for n in (1, 2, 4, 8)},
    **{("unsigned integer", n): f"u{n}" for n in (1, 2, 4, 8)},
}
_IMPLIED_BYTES = {"short float": 4, "long float": 8}

_ITK_FORMATS: dict[int, tuple[str, int]] = {
    sitk.sitkUInt8: ("unsigned integer", 1),
    sitk.sitkInt8: ("signed integer", 1),
    sitk.sitkUInt16: ("unsigned integer", 2),
    sitk.sitkInt16: ("signed integer", 2),
    sitk.sitkUInt32: ("unsigned integer", 4),
    sitk.sitkInt32: ("signed integer", 4),
    sitk.sitkUInt64: ("unsigned integer", 8),
    sitk.sitkInt64: ("signed integer", 8),
    sitk.sitkFloat32: ("float", 4),
    sitk.sitkFloat64: ("float", 8),
}

_INDEXED_KEY = re.compile(r"^(.*?)\s*\[\s*(\d+)\s*\]$")


@dataclass(frozen=True)
class SinogramInfo:
    """What a sinogram file said besides the data and the geometry.

    Attributes
    ----------
    data_file : Path
        File holding the values (the Interfile ``name of data file``, resolved against the
        header's folder; the image file itself for MetaImage/NIfTI).
    number_format : str
        Stored number format in Interfile words: ``"float"``, ``"short float"``,
        ``"long float"``, ``"signed integer"`` or ``"unsigned integer"``.
    bytes_per_pixel : int
        Bytes per stored value.
    byte_order : str or None
        ``"LITTLEENDIAN"`` or ``"BIGENDIAN"``; None where SimpleITK handled it.
    segments : tuple of (int, int)
        ``(minimum, maximum)`` ring difference of every segment, in file order; empty when
        the format does not say (MetaImage/NIfTI).
    scanner : str
        Originating system (else ``Scanner type``) from the header; empty if not given.
    corrections : tuple of str
        Lower-case ``applied corrections`` other than ``none``, e.g. ``("arc correction",)``.
    rebinned : bool
        Whether oblique segments were combined into the returned planes (SSRB).
    n_rings : int or None
        ``Number of rings`` of the scanner.
    detectors_per_ring : int or None
        ``Number of detectors per ring``.
    ring_diameter_mm : float or None
        ``Inner ring diameter``, mm.
    notes : tuple of str
        One sentence each on what was assumed or done while reading (segment selection,
        rebinning, defaults taken from the Interfile standard, inconsistencies).
    """

    data_file: Path
    number_format: str
    bytes_per_pixel: int
    byte_order: str | None
    segments: tuple[tuple[int, int], ...] = ()
    scanner: str = ""
    corrections: tuple[str, ...] = ()
    rebinned: bool = False
    n_rings: int | None = None
    detectors_per_ring: int | None = None
    ring_diameter_mm: float | None = None
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Segment:
    """One segment of an Interfile sinogram, as stored.

    ``planes`` are the output plane indices of its axial positions: for segment 0 alone,
    ``0 .. n_axial - 1``; under SSRB, the plane on which each sinogram is centred; empty for
    a segment that is not read.
    """

    n_axial: int
    offset: int
    scale: float
    planes: tuple[int, ...]


@dataclass(frozen=True)
class _InterfileLayout:
    """Where the values of an Interfile sinogram are and how to arrange them."""

    dtype: np.dtype
    axes: tuple[str, str, str]
    n_views: int
    n_bins: int
    segments: tuple[_Segment, ...]


class _Header:
    """Parsed Interfile keys: standardised key and optional ``[index]`` -> raw value."""

    def __init__(self, path: Path, values: dict[tuple[str, int | None], str]) -> None:
        self.path = path
        self.values = values

    def get(self, key: str, index: int | None = None) -> str | None:
        """Raw value of ``key`` (``key [index]``), or None when absent or empty."""
        value = self.values.get((key, index))
        return value if value else None

    def require(self, key: str, index: int | None = None) -> str:
        """Raw value of a key the reader cannot do without."""
        value = self.get(key, index)
        if value is None:
            shown = key if index is None else f"{key} [{index}]"
            raise PetReconError(f"{self.path}: missing required Interfile key '{shown}'")
        return value

    def invalid(self, key: str, value: str, index: int | None = None) -> PetReconError:
        """The error for a value that does not parse or is out of range."""
        shown = key if index is None else f"{key} [{index}]"
        return PetReconError(f"{self.path}: Interfile key '{shown}' has invalid value {value!r}")

    def integer(self, key: str, index: int | None = None) -> int | None:
        """Integer value, or None when absent."""
        value = self.get(key, index)
        return None if value is None else self._ints(key, value, index)[0]

    def require_int(self, key: str, index: int | None = None) -> int:
        """Integer value of a required key."""
        return self._ints(key, self.require(key, index), index)[0]

    def require_int_list(self, key: str, index: int | None = None) -> list[int]:
        """``{a, b, ...}`` (or a single number) of a required key, as a list of ints."""
        return self._ints(key, self.require(key, index), index, many=True)

    def _ints(self, key: str, value: str, index: int | None, many: bool = False) -> list[int]:
        items = _split_list(value)
        try:
            numbers = [int(item) for item in items]
        except ValueError:
            raise self.invalid(key, value, index) from None
        if not many and len(numbers) != 1:
            raise self.invalid(key, value, index)
        return numbers

    def decimal(self, key: str, index: int | None = None) -> Decimal | None:
        """Exact decimal value (so cm -> mm conversions stay exact), or None when absent."""
        value = self.get(key, index)
        if value is None:
            return None
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise self.invalid(key, value, index) from None
        if not number.is_finite():
            raise self.invalid(key, value, index)
        return number

    def str_list(self, key: str) -> list[str] | None:
        """``{a, b, ...}`` as a list of stripped strings, or None when absent."""
        value = self.get(key)
        return None if value is None else [item for item in _split_list(value) if item]


def read_sinogram(
    path: Path, *, rebin: Rebin | None = None
) -> tuple[np.ndarray, SinogramGeometry, SinogramInfo]:
    """Read a PET sinogram: STIR Interfile ``.hs`` or a MetaImage/NIfTI volume.

    Parameters
    ----------
    path : Path
        ``.hs`` Interfile header (the data file is found through ``name of data file``,
        relative to the header's folder), or ``.mha``, ``.mhd``, ``.nii``, ``.nii.gz``.
    rebin : {None, "ssrb"}
        What to do with multi-segment (3D) Interfile data. None: return segment 0 only (the
        segment whose ring differences are centred on 0; oblique segments are ignored).
        ``"ssrb"``: single-slice rebinning, every oblique sinogram is *added* to the plane
        at its axial centre (counts are summed, not averaged, so they stay Poisson; the
        axial sensitivity profile is not flattened). When segment 0 holds one ring
        difference per plane (span 1), SSRB returns ``2 * planes - 1`` planes at half the
        ring spacing. Single-segment data and MetaImage/NIfTI are returned unchanged.
        ``info.notes`` and ``info.rebinned`` say what was done.

    Returns
    -------
    data : np.ndarray
        Shape ``(planes, views, bins)``, float32, prompts counts per bin (after any
        ``image scaling factor``), C-contiguous.
    geometry : SinogramGeometry
        ``geometry.shape == data.shape``; bin size is STIR's effective central bin size.
    info : SinogramInfo
        The rest of the header and notes on what was assumed or done.

    Raises
    ------
    PetReconError
        One line naming the file and the problem: unsupported file type, missing
        ``!INTERFILE`` magic, missing required key, unknown number format, data file missing,
        header/data size mismatch, non-PET or non-sinogram data (e.g. an image header),
        unsupported number of dimensions (e.g. TOF), several time frames, non-finite values.
    """
    path = Path(path)
    _check_rebin(rebin)
    if _is_itk(path):
        geometry, info, reader = _itk_open(path, rebin)
        data = _itk_read(path, reader)
    else:
        header = _interfile_open(path)
        geometry, info, layout = _interfile_describe(header, rebin)
        data = _interfile_read(path, info.data_file, layout, geometry)
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise PetReconError(f"{path}: sinogram contains {bad} NaN or infinite values")
    negative = int(np.count_nonzero(data < 0))
    if negative:
        note = f"{negative} bins are negative (prompts counts should be >= 0)"
        info = replace(info, notes=(*info.notes, note))
    return data, geometry, info


def read_sinogram_header(
    path: Path, *, rebin: Rebin | None = None
) -> tuple[SinogramGeometry, SinogramInfo]:
    """Geometry and header information of a sinogram file, without reading its data.

    Works on header-only files such as scanner templates (an Interfile ``.hs`` whose data
    file does not exist). Parameters and results are those of :func:`read_sinogram`; the
    data file is neither opened nor checked.

    Raises
    ------
    PetReconError
        As :func:`read_sinogram`, except the data-file errors.
    """
    path = Path(path)
    _check_rebin(rebin)
    if _is_itk(path):
        geometry, info, _ = _itk_open(path, rebin)
    else:
        geometry, info, _ = _interfile_describe(_interfile_open(path), rebin)
    return geometry, info


_WRITE_FORMATS = {"float32": ("float", "<f4"), "int16": ("signed integer", "<i2")}


def write_sinogram(
    path: Path,
    data: np.ndarray,
    geometry: SinogramGeometry,
    *,
    scanner: str = "petrecon",
    extra: dict[str, str] | None = None,
    dtype: str = "float32",
) -> Path:
    """Write direct-plane sinograms as a STIR-readable Interfile pair.

    The header ``path`` (``.hs``) describes one segment with ring difference 0..0 whose
    ``n_planes`` axial positions are the scanner's rings, so STIR (and :func:`read_sinogram`)
    read back a plane spacing equal to ``geometry.plane_mm``. The scanner block is made
    consistent with the geometry: ``2 * n_views`` detectors per ring (no view mashing),
    ``n_planes`` rings ``plane_mm`` apart, bin size ``bin_mm`` (also the effective central
    bin size), and an inner ring diameter for which a non-arc-corrected central bin is
    ``bin_mm`` wide (at least the sinogram's field of view when arc-corrected). Lengths are
    written in cm as exact decimals, so a write/read round trip gives back the same geometry.
    The values go to ``path.with_suffix(".s")`` as little-endian ``dtype``, laid out
    ``[view][axial][tangential]`` (STIR's default storage order).

    Parameters
    ----------
    path : Path
        Header file to write; must end in ``.hs``. Existing files are replaced.
    data : np.ndarray
        Shape ``geometry.shape`` = ``(planes, views, bins)``, any real dtype, prompts counts
        per bin; stored as float32.
    geometry : SinogramGeometry
        Geometry of ``data``. ``arc_corrected`` is written as
        ``applied corrections := {arc correction}`` (else ``{None}``).
    scanner : str
        ``originating system`` and ``Scanner type``. A name STIR knows (e.g. "ECAT 962")
        makes STIR compare the header with its own scanner model; the default does not.
    extra : dict of str to str, optional
        Additional ``key := value`` lines, written in order just before
        ``!END OF INTERFILE``.
    dtype : {"float32", "int16"}
        Stored number format: ``float`` (4 bytes) or ``signed integer`` (2 bytes, for
        integer counts up to 32767: half the size; values are rounded and must fit).

    Returns
    -------
    Path
        The header path.

    Raises
    ------
    ValueError
        ``data`` does not match ``geometry``, or a name or ``extra`` entry would break the
        header (a line break, or ``:=`` inside a key).
    PetReconError
        ``path`` is not a ``.hs`` file, or the files cannot be written.
    """
    path = Path(path)
    if path.suffix.lower() != ".hs":
        raise PetReconError(f"{path}: a sinogram header must have the suffix .hs")
    values = np.asarray(data)
    if values.shape != geometry.shape:
        raise ValueError(f"data shape {values.shape} does not match geometry {geometry.shape}")
    extra = dict(extra or {})
    for key, value in [("scanner", scanner), *extra.items()]:
        if any(c in f"{key}{value}" for c in "\r\n") or ":=" in key:
            raise ValueError(f"cannot write Interfile line {key!r} := {value!r}")
    if dtype not in _WRITE_FORMATS:
        raise ValueError(f"dtype must be one of {sorted(_WRITE_FORMATS)}, got {dtype!r}")
    number_format, numpy_dtype = _WRITE_FORMATS[dtype]
    if dtype == "int16":
        values = np.rint(values)
        if values.min() < -32768 or values.max() > 32767:
            raise ValueError("values do not fit in int16; write them as float32")
    data_path = path.with_suffix(".s")
    header = _interfile_text(geometry, data_path.name, scanner, extra, number_format,
                             np.dtype(numpy_dtype).itemsize)
    try:
        np.ascontiguousarray(values.transpose(1, 0, 2), dtype=numpy_dtype).tofile(data_path)
        path.write_text(header, encoding="utf-8")
    except OSError as exc:
        raise PetReconError(f"{path}: cannot write sinogram ({exc.strerror})") from None
    return path


# --------------------------------------------------------------------------- dispatch


def _is_itk(path: Path) -> bool:
    """True for MetaImage/NIfTI, False for Interfile; error for anything else."""
    name = path.name.lower()
    if name.endswith(ITK_SUFFIXES):
        return True
    if name.endswith(INTERFILE_SUFFIXES):
        return False
    accepted = ", ".join((".hs", *ITK_SUFFIXES))
    raise PetReconError(f"{path}: unsupported sinogram file type (expected {accepted})")


def _check_rebin(rebin: str | None) -> None:
    if rebin not in (None, "ssrb"):
        raise PetReconError(f"unknown sinogram rebinning {rebin!r}; choose 'ssrb' or none")


# --------------------------------------------------------------------------- Interfile


def _standardise(key: str) -> str:
    """STIR's keyword matching: no leading ``!``, case-, underscore- and space-insensitive."""
    return " ".join(key.strip().lstrip("!").replace("_", " ").lower().split())


def _split_list(value: str) -> list[str]:
    """``{a, b}`` -> ``["a", "b"]``; a value without braces is a one-element list."""
    value = value.strip()
    if value.startswith("{") and value.endswith("}"):
        value = value[1:-1]
    return [item.strip() for item in value.split(",")]


def _interfile_open(path: Path) -> _Header:
    """Parse the keys of an Interfile header (up to ``!END OF INTERFILE``)."""
    if not path.is_file():
        raise PetReconError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise PetReconError(f"{path}: cannot read ({exc.strerror})") from None
    values: dict[tuple[str, int | None], str] = {}
    started = False
    for raw_line in text.splitlines():
        line = raw_line.split(";", 1)[0].strip()
        if not line:
            continue
        key, sep, value = line.partition(":=")
        key = _standardise(key)
        if not started:
            if not sep or key != "interfile":
                raise PetReconError(
                    f"{path}: not an Interfile header (it does not start with '!INTERFILE :=')"
                )
            started = True
            continue
        if not sep:
            continue
        if key == "end of interfile":
            break
        index: int | None = None
        match = _INDEXED_KEY.match(key)
        if match:
            key, index = match.group(1), int(match.group(2))
        values[(key, index)] = value.strip()
    if not started:
        raise PetReconError(
            f"{path}: not an Interfile header (it does not start with '!INTERFILE :=')"
        )
    return _Header(path, values)


def _check_data_type(header: _Header) -> None:
    """Reject SPECT, images and other non-sinogram Interfile data."""
    path = header.path
    modality = header.get("imaging modality")
    if modality is not None and modality.lower() not in ("pt", "pet"):
        raise PetReconError(f"{path}: imaging modality '{modality}' is not PET")
    type_of_data = header.require("type of data")
    if type_of_data.lower() != "pet":
        raise PetReconError(f"{path}: type of data '{type_of_data}' is not PET")
    pet_type = header.require("pet data type")
    if pet_type.lower() != "emission":
        raise PetReconError(
            f"{path}: PET data type '{pet_type}' is not a sinogram (expected 'Emission')"
        )
    n_dims = header.require_int("number of dimensions")
    if n_dims != 4:
        raise PetReconError(
            f"{path}: unsupported number of dimensions {n_dims} (expected 4: segment, view, "
            "axial coordinate, tangential coordinate; TOF sinograms are not supported)"
        )
    frames = header.integer("number of time frames")
    if frames is not None and frames != 1:
        raise PetReconError(
            f"{path}: {frames} time frames; only single-frame sinograms are supported"
        )


def _dtype(header: _Header) -> tuple[np.dtype, str, int, str, list[str]]:
    """Numpy dtype, number format, bytes per pixel, byte order and notes."""
    path = header.path
    number_format = " ".join(header.require("number format").lower().split())
    if number_format in _IMPLIED_BYTES and header.get("number of bytes per pixel") is None:
        n_bytes = _IMPLIED_BYTES[number_format]
    else:
        n_bytes = header.require_int("number of bytes per pixel")
    code = _NUMBER_FORMATS.get((number_format, n_bytes))
    if code is None:
        raise PetReconError(
            f"{path}: unsupported number format '{number_format}' with {n_bytes} bytes per "
            "pixel (expected float, short float, long float, signed or unsigned integer)"
        )
    notes: list[str] = []
    order = header.get("imagedata byte order")
    if order is None:
        order = "BIGENDIAN"
        notes.append("imagedata byte order not given: BIGENDIAN (the Interfile 3.3 default)")
    order = order.upper()
    if order not in ("LITTLEENDIAN", "BIGENDIAN"):
        raise header.invalid("imagedata byte order", order)
    dtype = np.dtype(("<" if order == "LITTLEENDIAN" else ">") + code)
    return dtype, number_format, n_bytes, order, notes


def _axes(header: _Header) -> tuple[tuple[str, str, str], int, int, list[int]]:
    """Inner axis labels (slowest first), views, bins and axial positions per segment."""
    path = header.path
    labels = [" ".join(header.require("matrix axis label", i).lower().split()) for i in range(1, 5)]
    if set(labels) != _LABELS or labels[3] != _SEGMENT:
        raise PetReconError(
            f"{path}: unsupported matrix axis labels [1]..[4] = {labels} (expected segment as "
            "[4] and view, axial coordinate, tangential coordinate as [1]..[3])"
        )
    sizes: dict[str, list[int]] = {}
    for i, label in enumerate(labels, start=1):
        values = header.require_int_list("matrix size", i)
        if min(values) <= 0 or (label != _AXIAL and len(values) != 1):
            raise header.invalid("matrix size", header.require("matrix size", i), i)
        sizes[label] = values
    n_segments = sizes[_SEGMENT][0]
    if len(sizes[_AXIAL]) != n_segments:
        raise PetReconError(
            f"{path}: 'matrix size' of the axial coordinate lists {len(sizes[_AXIAL])} "
            f"values for {n_segments} segments"
        )
    inner = (labels[2], labels[1], labels[0])
    return inner, sizes[_VIEW][0], sizes[_TANGENTIAL][0], sizes[_AXIAL]


def _ring_differences(header: _Header, n_segments: int) -> list[tuple[int, int]]:
    """(min, max) ring difference per segment, in file order."""
    lists = {}
    for key in ("minimum ring difference per segment", "maximum ring difference per segment"):
        lists[key] = header.require_int_list(key)
        if len(lists[key]) != n_segments:
            raise PetReconError(
                f"{header.path}: '{key}' lists {len(lists[key])} values for {n_segments} segments"
            )
    pairs = list(zip(*lists.values(), strict=True))
    if any(lo > hi for lo, hi in pairs):
        raise PetReconError(f"{header.path}: a minimum ring difference exceeds its maximum")
    return pairs


def _scales(header: _Header, n_segments: int) -> list[float]:
    """``image scaling factor[1]``: one value, or one per segment (as STIR allows)."""
    raw = header.get("image scaling factor", 1) or header.get("image scaling factor")
    if raw is None:
        return [1.0] * n_segments
    try:
        values = [float(item) for item in _split_list(raw)]
    except ValueError:
        raise header.invalid("image scaling factor", raw, 1) from None
    if len(values) == 1:
        values = values * n_segments
    if len(values) != n_segments or not all(math.isfinite(v) for v in values):
        raise header.invalid("image scaling factor", raw, 1)
    return values


def _positive(header: _Header, key: str) -> Decimal | None:
    """A length or count that counts as "not set" when absent or <= 0 (STIR's -1)."""
    value = header.decimal(key)
    return value if value is not None and value > 0 else None


def _interfile_describe(
    header: _Header, rebin: Rebin | None
) -> tuple[SinogramGeometry, SinogramInfo, _InterfileLayout]:
    """Geometry, info and storage layout from a parsed header (the data file is not read)."""
    path = header.path
    _check_data_type(header)
    axes, n_views, n_bins, n_axial = _axes(header)
    dtype, number_format, n_bytes, byte_order, notes = _dtype(header)
    pairs = _ring_differences(header, len(n_axial))
    scales = _scales(header, len(n_axial))
    zero = [k for k, (lo, hi) in enumerate(pairs) if lo + hi == 0]
    if len(zero) != 1:
        raise PetReconError(
            f"{path}: no unique segment 0 (ring differences centred on 0) in {pairs}"
        )
    k0 = zero[0]
    lo0, hi0 = pairs[k0]
    n_planes0 = n_axial[k0]

    ring_key = "distance between rings (cm)"
    ring_raw = header.require(ring_key)
    ring_cm = _positive(header, ring_key)
    if ring_cm is None:
        raise header.invalid(ring_key, ring_raw)
    ring_mm = ring_cm.scaleb(1)
    n_rings = header.integer("number of rings")
    n_rings = n_rings if n_rings is not None and n_rings > 0 else None
    detectors = header.integer("number of detectors per ring")
    detectors = detectors if detectors is not None and detectors > 0 else None
    diameter_cm = _positive(header, "inner ring diameter (cm)")

    # STIR: a segment holding several ring differences is sampled axially every half ring
    # spacing (direct and cross planes, 2 * rings - 1 for segment 0); a segment holding one
    # ring difference (span 1) every ring spacing (rings planes for segment 0).
    steps = [1 if lo != hi else 2 for lo, hi in pairs]  # in half ring spacings
    expected = None if n_rings is None else (2 * n_rings - 1 if steps[k0] == 1 else n_rings)
    if expected is not None and n_planes0 != expected:
        notes.append(
            f"segment 0 has {n_planes0} planes for {n_rings} rings (expected {expected}); "
            "plane spacing follows its ring differences as in STIR"
        )
    if lo0 != hi0:
        notes.append(f"segment 0 combines ring differences {lo0}..{hi0}")

    applied = header.str_list("applied corrections")
    if applied is None:
        arc_corrected = True
        notes.append("applied corrections not given: assumed arc-corrected (STIR's default)")
        corrections: tuple[str, ...] = ()
    else:
        corrections = tuple(
            c for c in (" ".join(a.lower().split()) for a in applied) if c and c != "none"
        )
        arc_corrected = any(c in ("arc correction", "arc corrected") for c in corrections)
    bin_mm = _bin_size(header, arc_corrected, detectors, diameter_cm, notes)

    view_offset = header.decimal("view offset (degrees)") or Decimal(0)

    # data layout: segments one after the other in file order
    offset = header.integer("data offset in bytes", 1)
    if offset is None:
        offset = header.integer("data offset in bytes") or 0
    if offset < 0:
        raise header.invalid("data offset in bytes", str(offset), 1)
    rebinned = rebin == "ssrb" and len(pairs) > 1
    if rebinned:  # output planes every half ring spacing
        n_planes = n_planes0 if steps[k0] == 1 else 2 * n_planes0 - 1
        plane_mm = ring_mm / 2
    else:
        n_planes = n_planes0
        plane_mm = ring_mm * steps[k0] / 2
    segments: list[_Segment] = []
    position = offset
    for k, (n_ax, scale) in enumerate(zip(n_axial, scales, strict=True)):
        if rebinned:
            planes = _ssrb_planes(header, pairs[k], n_ax, steps[k], n_planes)
        else:
            planes = tuple(range(n_ax)) if k == k0 else ()
        segments.append(_Segment(n_ax, position, scale, planes))
        position += n_ax * n_views * n_bins * n_bytes

    if len(pairs) > 1:
        if rebinned:
            notes.append(
                f"single-slice rebinning: {len(pairs)} segments (ring differences "
                f"{min(lo for lo, _ in pairs)}..{max(hi for _, hi in pairs)}) summed into "
                f"{n_planes} planes; counts are summed, not averaged"
            )
        else:
            notes.append(
                f"segment 0 (ring differences {lo0}..{hi0}) of {len(pairs)} segments read; "
                "oblique segments ignored (rebin='ssrb' combines them)"
            )
    elif rebin == "ssrb":
        notes.append("single segment: nothing to rebin")

    data_name = header.require("name of data file")
    data_file = Path(data_name)
    if not data_file.is_absolute():
        data_file = path.parent / data_file
    scanner = header.get("originating system") or header.get("scanner type") or ""
    geometry = SinogramGeometry(
        n_views=n_views,
        n_bins=n_bins,
        bin_mm=bin_mm,
        n_planes=n_planes,
        plane_mm=float(plane_mm),
        view_offset_deg=float(view_offset),
        arc_corrected=arc_corrected,
    )
    info = SinogramInfo(
        data_file=data_file,
        number_format=number_format,
        bytes_per_pixel=n_bytes,
        byte_order=byte_order,
        segments=tuple(pairs),
        scanner=scanner,
        corrections=corrections,
        rebinned=rebinned,
        n_rings=n_rings,
        detectors_per_ring=detectors,
        ring_diameter_mm=None if diameter_cm is None else float(diameter_cm.scaleb(1)),
        notes=tuple(notes),
    )
    layout = _InterfileLayout(dtype, axes, n_views, n_bins, tuple(segments))
    return geometry, info, layout


def _bin_size(
    header: _Header,
    arc_corrected: bool,
    detectors: int | None,
    diameter_cm: Decimal | None,
    notes: list[str],
) -> float:
    """Tangential bin size in mm at the centre of the field of view.

    ``effective central bin size (cm)``; else, for non-arc-corrected data, the ring geometry
    (``(inner radius + depth of interaction) * sin(pi / detectors)``, as STIR computes it);
    else ``Default bin size (cm)``.
    """
    effective = _positive(header, "effective central bin size (cm)")
    from_rings: float | None = None
    if not arc_corrected and detectors is not None and diameter_cm is not None:
        doi_cm = header.decimal("average depth of interaction (cm)") or Decimal(0)
        radius_mm = float((diameter_cm / 2 + max(doi_cm, Decimal(0))).scaleb(1))
        from_rings = radius_mm * math.sin(math.pi / detectors)
    if effective is not None:
        bin_mm = float(effective.scaleb(1))
        if from_rings is not None and abs(bin_mm - from_rings) > 0.1:
            notes.append(
                f"effective central bin size {bin_mm:g} mm differs from {from_rings:.5g} mm "
                "given by the ring geometry (STIR would use the latter); header value used"
            )
        return bin_mm
    if from_rings is not None:
        notes.append(f"bin size {from_rings:.6g} mm computed from the ring geometry")
        return from_rings
    default = _positive(header, "default bin size (cm)")
    if default is None:
        raise PetReconError(
            f"{header.path}: missing required Interfile key 'effective central bin size (cm)' "
            "(or a positive 'Default bin size (cm)')"
        )
    return float(default.scaleb(1))


def _ssrb_planes(
    header: _Header, ring_diffs: tuple[int, int], n_axial: int, step: int, n_planes: int
) -> tuple[int, ...]:
    """Output planes of a segment's axial positions under SSRB.

    STIR centres every segment axially on the scanner: position ``j`` of a segment sampled
    every ``step`` half ring spacings lies ``step * (j - (n_axial - 1) / 2)`` half ring
    spacings from the centre. The ``n_planes`` output planes are half a ring spacing apart.
    """
    twice = [step * (2 * j - (n_axial - 1)) + (n_planes - 1) for j in range(n_axial)]
    if any(t % 2 for t in twice) or min(twice) < 0 or max(twice) > 2 * (n_planes - 1):
        lo, hi = ring_diffs
        raise PetReconError(
            f"{header.path}: segment with ring differences {lo}..{hi} has {n_axial} axial "
            f"positions, which do not fall on the {n_planes} rebinned planes; cannot rebin"
        )
    return tuple(t // 2 for t in twice)


def _interfile_read(
    path: Path, data_file: Path, layout: _InterfileLayout, geometry: SinogramGeometry
) -> np.ndarray:
    """Read the segments the layout asks for; returns ``geometry.shape`` float32."""
    if not data_file.is_file():
        raise PetReconError(f"{path}: data file missing: {data_file}")
    item = layout.dtype.itemsize
    first = layout.segments[0].offset
    values = sum(s.n_axial for s in layout.segments) * layout.n_views * layout.n_bins
    expected = first + values * item
    actual = data_file.stat().st_size
    if actual != expected:
        raise PetReconError(
            f"{path}: data size mismatch: {data_file.name} has {actual} bytes, the header "
            f"describes {expected} ({first} offset + {values} values x {item} bytes)"
        )
    sizes = {_VIEW: layout.n_views, _TANGENTIAL: layout.n_bins}
    order = [layout.axes.index(a) for a in (_AXIAL, _VIEW, _TANGENTIAL)]
    out = np.zeros(geometry.shape, dtype=np.float64)
    for segment in layout.segments:
        if not segment.planes:
            continue
        shape = tuple(segment.n_axial if a == _AXIAL else sizes[a] for a in layout.axes)
        try:
            raw = np.fromfile(
                data_file, dtype=layout.dtype, count=math.prod(shape), offset=segment.offset
            )
        except OSError as exc:
            raise PetReconError(f"{path}: cannot read {data_file} ({exc.strerror})") from None
        block = raw.reshape(shape).transpose(order).astype(np.float64)
        out[list(segment.planes)] += block * segment.scale
    return out.astype(np.float32)


def _cm(mm: float) -> str:
    """Millimetres as an exact decimal number of centimetres."""
    return format(Decimal(repr(float(mm))).scaleb(-1), "f")


def _interfile_text(
    geometry: SinogramGeometry,
    data_name: str,
    scanner: str,
    extra: dict[str, str],
    number_format: str,
    bytes_per_pixel: int,
) -> str:
    """STIR projection-data header for one direct-plane segment (ring difference 0..0)."""
    g = geometry
    detectors = 2 * g.n_views
    diameter_mm = 2.0 * g.bin_mm / math.sin(math.pi / detectors)
    if g.arc_corrected:
        diameter_mm = max(diameter_mm, g.n_bins * g.bin_mm)
    lines = [
        "!INTERFILE  :=",
        "!imaging modality := PT",
        f"name of data file := {data_name}",
        f"originating system := {scanner}",
        "!version of keys := STIR4.0",
        "!GENERAL DATA :=",
        "!GENERAL IMAGE DATA :=",
        "!type of data := PET",
        "imagedata byte order := LITTLEENDIAN",
        "!PET STUDY (General) :=",
        "!PET data type := Emission",
        f"applied corrections := {{{'arc correction' if g.arc_corrected else 'None'}}}",
        f"!number format := {number_format}",
        f"!number of bytes per pixel := {bytes_per_pixel}",
        "number of dimensions := 4",
        "matrix axis label [4] := segment",
        "!matrix size [4] := 1",
        "matrix axis label [3] := view",
        f"!matrix size [3] := {g.n_views}",
        "matrix axis label [2] := axial coordinate",
        f"!matrix size [2] := {{ {g.n_planes}}}",
        "matrix axis label [1] := tangential coordinate",
        f"!matrix size [1] := {g.n_bins}",
        "minimum ring difference per segment := { 0}",
        "maximum ring difference per segment := { 0}",
        "Scanner parameters:=",
        f"Scanner type := {scanner}",
        f"Number of rings                          := {g.n_planes}",
        f"Number of detectors per ring             := {detectors}",
        f"Inner ring diameter (cm)                 := {_cm(diameter_mm)}",
        "Average depth of interaction (cm)        := 0",
        f"Distance between rings (cm)              := {_cm(g.plane_mm)}",
        f"Default bin size (cm)                    := {_cm(g.bin_mm)}",
        f"View offset (degrees)                    := {float(g.view_offset_deg)!r}",
        f"Maximum number of non-arc-corrected bins := {g.n_bins}",
        f"Default number of arc-corrected bins     := {g.n_bins}",
        "Number of blocks per bucket in transaxial direction         := 1",
        "Number of blocks per bucket in axial direction              := 1",
        f"Number of crystals per block in axial direction             := {g.n_planes}",
        f"Number of crystals per block in transaxial direction        := {detectors}",
        "Number of detector layers                                   := 1",
        "Number of crystals per singles unit in axial direction      := 1",
        "Number of crystals per singles unit in transaxial direction := 1",
        "end scanner parameters:=",
        f"effective central bin size (cm) := {_cm(g.bin_mm)}",
        "number of time frames := 1",
        "image scaling factor[1] := 1",
        "data offset in bytes[1] := 0",
        *(f"{key} := {value}" for key, value in extra.items()),
        "!END OF INTERFILE :=",
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- SimpleITK


def _itk_open(
    path: Path, rebin: Rebin | None
) -> tuple[SinogramGeometry, SinogramInfo, sitk.ImageFileReader]:
    """Geometry and info of a MetaImage/NIfTI sinogram from its header."""
    if not path.is_file():
        raise PetReconError(f"{path}: file not found")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise PetReconError(f"{path}: cannot read image ({_itk_message(exc)})") from None
    if reader.GetDimension() != 3:
        raise PetReconError(
            f"{path}: unsupported number of dimensions {reader.GetDimension()} (expected a 3D "
            "volume: planes, views, bins; save a single plane with one slice)"
        )
    if reader.GetNumberOfComponents() != 1:
        raise PetReconError(
            f"{path}: {reader.GetNumberOfComponents()} values per pixel; expected a scalar sinogram"
        )
    number = _ITK_FORMATS.get(reader.GetPixelID())
    if number is None:
        raise PetReconError(
            f"{path}: unsupported pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())}"
        )
    n_bins, n_views, n_planes = (int(n) for n in reader.GetSize())
    spacing = reader.GetSpacing()
    notes: list[str] = []
    if not np.allclose(reader.GetDirection(), np.eye(3).ravel()):
        notes.append("image direction ignored: array axes (z, y, x) read as (planes, views, bins)")
    if rebin == "ssrb":
        notes.append("MetaImage/NIfTI sinograms hold direct planes: nothing to rebin")
    geometry = SinogramGeometry(
        n_views=n_views,
        n_bins=n_bins,
        bin_mm=float(spacing[0]),
        n_planes=n_planes,
        plane_mm=float(spacing[2]),
        view_offset_deg=0.0,
        arc_corrected=True,
    )
    info = SinogramInfo(
        data_file=path,
        number_format=number[0],
        bytes_per_pixel=number[1],
        byte_order=None,
        notes=tuple(notes),
    )
    return geometry, info, reader


def _itk_read(path: Path, reader: sitk.ImageFileReader) -> np.ndarray:
    """Pixel values of an opened MetaImage/NIfTI file, ``(planes, views, bins)`` float32."""
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise PetReconError(f"{path}: cannot read image ({_itk_message(exc)})") from None
    return np.ascontiguousarray(sitk.GetArrayFromImage(image), dtype=np.float32)


def _itk_message(exc: RuntimeError) -> str:
    """The ``sitk::ERROR`` line of a SimpleITK exception (its message spans lines)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "ERROR:" in line:
            return line.split("ERROR:", 1)[1].strip()
    return lines[-1] if lines else "unknown error"
