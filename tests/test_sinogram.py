"""Tests of pet_recon.io.sinogram: STIR Interfile and MetaImage/NIfTI sinograms."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pet_recon.errors import PetReconError
from pet_recon.io.sinogram import read_sinogram, read_sinogram_header, write_sinogram
from pet_recon.physics.geometry import SinogramGeometry

# A crafted STIR-style header: 1 segment, 3 views, 2 planes, 4 bins, float32 little-endian.
_BASE_KEYS: dict[str, str] = {
    "!imaging modality": "PT",
    "name of data file": "crafted.s",
    "originating system": "test scanner",
    "!type of data": "PET",
    "imagedata byte order": "LITTLEENDIAN",
    "!PET data type": "Emission",
    "applied corrections": "{arc correction}",
    "!number format": "float",
    "!number of bytes per pixel": "4",
    "number of dimensions": "4",
    "matrix axis label [4]": "segment",
    "!matrix size [4]": "1",
    "matrix axis label [3]": "view",
    "!matrix size [3]": "3",
    "matrix axis label [2]": "axial coordinate",
    "!matrix size [2]": "{ 2}",
    "matrix axis label [1]": "tangential coordinate",
    "!matrix size [1]": "4",
    "minimum ring difference per segment": "{ 0}",
    "maximum ring difference per segment": "{ 0}",
    "Number of rings": "2",
    "Distance between rings (cm)": "0.5",
    "Default bin size (cm)": "0.25",
    "View offset (degrees)": "0",
    "effective central bin size (cm)": "0.25",
    "number of time frames": "1",
}


def _crafted(
    folder: Path, raw: bytes, changes: dict[str, str | None] | None = None, name: str = "crafted"
) -> Path:
    """Write ``raw`` as crafted.s and a header from _BASE_KEYS (None in changes drops a key)."""
    keys: dict[str, str | None] = {**_BASE_KEYS, **(changes or {})}
    lines = ["!INTERFILE  :=", "; crafted for tests"]
    lines += [f"{key} := {value}" for key, value in keys.items() if value is not None]
    lines.append("!END OF INTERFILE :=")
    header = folder / f"{name}.hs"
    header.write_text("\n".join(lines) + "\n")
    (folder / str(keys["name of data file"] or "crafted.s")).write_bytes(raw)
    return header


def _planes_views_bins(shape: tuple[int, int, int] = (2, 3, 4)) -> np.ndarray:
    """Distinct values, shape (planes, views, bins): 100 * plane + 10 * view + bin."""
    p, v, b = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (100 * p + 10 * v + b).astype(np.float32)


# ----------------------------------------------------------------------- real STIR files


def test_read_sinogram_scatter_cylinder_matches_raw_file(shared_data: Path) -> None:
    header = shared_data / "interfile" / "scatter_cylinder.hs"
    data, geometry, info = read_sinogram(header)
    assert data.shape == (8, 32, 35) and data.dtype == np.float32
    assert geometry == SinogramGeometry(
        n_views=32,
        n_bins=35,
        bin_mm=22.1541,
        n_planes=8,
        plane_mm=19.62,  # 8 planes for 8 rings: ring spacing
        view_offset_deg=0.0,
        arc_corrected=False,
    )
    raw = np.fromfile(header.with_suffix(".s"), dtype="<f4").reshape(32, 8, 35)
    np.testing.assert_array_equal(data, raw.transpose(1, 0, 2))
    assert data.sum() == pytest.approx(6996.62, rel=1e-5)
    assert data.max() == pytest.approx(1.98945, rel=1e-5)
    assert info.segments == ((0, 0),)
    assert info.corrections == () and not info.rebinned
    assert (info.n_rings, info.detectors_per_ring, info.ring_diameter_mm) == (8, 64, 886.2)


def test_read_sinogram_scatter_cylinder_view_axis_is_consistent(shared_data: Path) -> None:
    data, _, _ = read_sinogram(shared_data / "interfile" / "scatter_cylinder.hs")
    # every parallel projection of an object holds the same total: flat across views ...
    per_view = data.sum(axis=(0, 2))
    assert per_view.max() / per_view.min() < 1.03
    # ... and a sinogram is periodic: view 180 degrees on is view 0 mirrored in bins
    wrap = np.abs(data[:, -1, ::-1] - data[:, 0, :]).sum() / data[:, 0, :].sum()
    assert wrap < 0.05
    # neighbouring views are close (they would jump if planes and views were swapped)
    assert np.abs(np.diff(data, axis=1)).sum() / data.sum() < 0.05


def test_read_sinogram_smalllong_matches_raw_file(shared_data: Path) -> None:
    header = shared_data / "interfile" / "smalllong.hs"
    data, geometry, info = read_sinogram(header)
    assert data.shape == (27, 64, 75)
    assert geometry == SinogramGeometry(
        n_views=64,
        n_bins=75,
        bin_mm=3.0,
        n_planes=27,
        plane_mm=3.27,  # 27 = 2 * 14 rings - 1 planes: half the ring spacing
        view_offset_deg=0.0,
        arc_corrected=True,
    )
    raw = np.fromfile(header.with_suffix(".s"), dtype="<f4").reshape(64, 27, 75)
    np.testing.assert_array_equal(data, raw.transpose(1, 0, 2))
    per_view = data.sum(axis=(0, 2))
    assert per_view.max() / per_view.min() < 1.02
    assert info.segments == ((-8, 8),)
    assert info.corrections == ("arc correction",)
    assert any("-8..8" in note for note in info.notes)


def test_read_sinogram_smalllong_ssrb_single_segment_unchanged(shared_data: Path) -> None:
    header = shared_data / "interfile" / "smalllong.hs"
    data, geometry, info = read_sinogram(header, rebin="ssrb")
    plain, plain_geometry, _ = read_sinogram(header)
    np.testing.assert_array_equal(data, plain)
    assert geometry == plain_geometry
    assert not info.rebinned and any("nothing to rebin" in note for note in info.notes)


@pytest.mark.parametrize("name", ["siemens_mmr_template_span1.hs", "ge_signa_template.hs"])
def test_read_sinogram_template_data_file_missing(shared_data: Path, name: str) -> None:
    with pytest.raises(PetReconError, match="data file missing"):
        read_sinogram(shared_data / "interfile" / name)


def test_read_sinogram_header_mmr_template_segment0(shared_data: Path) -> None:
    geometry, info = read_sinogram_header(
        shared_data / "interfile" / "siemens_mmr_template_span1.hs"
    )
    assert geometry == SinogramGeometry(
        n_views=252,
        n_bins=344,
        bin_mm=2.08815,
        n_planes=64,
        plane_mm=4.0625,
        view_offset_deg=0.0,
        arc_corrected=False,
    )
    assert len(info.segments) == 121 and info.segments[60] == (0, 0)
    assert info.scanner == "Siemens mMR"


def test_read_sinogram_header_mmr_template_ssrb_half_ring_planes(shared_data: Path) -> None:
    geometry, info = read_sinogram_header(
        shared_data / "interfile" / "siemens_mmr_template_span1.hs", rebin="ssrb"
    )
    assert (geometry.n_planes, geometry.plane_mm) == (127, 2.03125)
    assert info.rebinned


def test_read_sinogram_header_ge_template_span_segment0(shared_data: Path) -> None:
    geometry, info = read_sinogram_header(shared_data / "interfile" / "ge_signa_template.hs")
    assert (geometry.n_planes, geometry.plane_mm) == (89, 2.78)
    assert (geometry.n_views, geometry.n_bins, geometry.bin_mm) == (224, 357, 2.24608)
    assert geometry.view_offset_deg == -5.23
    assert info.segments[22] == (-1, 1)


# ----------------------------------------------------------------------- write / read


@pytest.mark.parametrize("arc_corrected", [True, False])
def test_write_sinogram_round_trip_exact(tmp_path: Path, arc_corrected: bool) -> None:
    rng = np.random.default_rng(0)
    data = rng.poisson(5.0, size=(3, 12, 17)).astype(np.float32) + 0.25
    geometry = SinogramGeometry(
        n_views=12,
        n_bins=17,
        bin_mm=2.21541,
        n_planes=3,
        plane_mm=3.27,
        view_offset_deg=-5.23,
        arc_corrected=arc_corrected,
    )
    header = write_sinogram(tmp_path / "out.hs", data, geometry)
    assert header == tmp_path / "out.hs"
    assert (tmp_path / "out.s").stat().st_size == data.size * 4
    back, back_geometry, info = read_sinogram(header)
    np.testing.assert_array_equal(back, data)
    assert back_geometry == geometry
    assert info.notes == ()
    assert info.segments == ((0, 0),) and info.scanner == "petrecon"
    assert (info.n_rings, info.detectors_per_ring) == (3, 24)


def test_write_sinogram_stir_layout_and_keys(tmp_path: Path) -> None:
    data = _planes_views_bins()
    geometry = SinogramGeometry(n_views=3, n_bins=4, bin_mm=2.0, n_planes=2, plane_mm=4.0)
    header = write_sinogram(tmp_path / "s.hs", data, geometry, extra={"petrecon dose": "0.1"})
    raw = np.fromfile(tmp_path / "s.s", dtype="<f4").reshape(3, 2, 4)  # [view][axial][tang]
    np.testing.assert_array_equal(raw, data.transpose(1, 0, 2))
    lines = header.read_text().splitlines()
    assert lines[0].startswith("!INTERFILE")
    assert lines[-2:] == ["petrecon dose := 0.1", "!END OF INTERFILE :="]
    text = "\n".join(lines)
    for expected in (
        "applied corrections := {arc correction}",
        "Distance between rings (cm)              := 0.40",
        "effective central bin size (cm) := 0.20",
        "Number of detectors per ring             := 6",
    ):
        assert expected in text


def test_write_sinogram_shape_mismatch_raises(tmp_path: Path) -> None:
    geometry = SinogramGeometry(n_views=3, n_bins=4, bin_mm=2.0, n_planes=2)
    with pytest.raises(ValueError, match="does not match"):
        write_sinogram(tmp_path / "s.hs", np.zeros((2, 4, 3)), geometry)


def test_write_sinogram_wrong_suffix_raises(tmp_path: Path) -> None:
    geometry = SinogramGeometry(n_views=3, n_bins=4, bin_mm=2.0, n_planes=2)
    with pytest.raises(PetReconError, match=r"suffix \.hs"):
        write_sinogram(tmp_path / "s.mha", _planes_views_bins(), geometry)


# ----------------------------------------------------------------------- crafted headers


def test_read_sinogram_big_endian_float(tmp_path: Path) -> None:
    data = _planes_views_bins()
    raw = data.transpose(1, 0, 2).astype(">f4").tobytes()
    header = _crafted(tmp_path, raw, {"imagedata byte order": "BIGENDIAN"})
    back, geometry, info = read_sinogram(header)
    np.testing.assert_array_equal(back, data)
    assert (geometry.bin_mm, geometry.plane_mm) == (2.5, 5.0)
    assert info.byte_order == "BIGENDIAN"


def test_read_sinogram_int16_with_scale_and_offset(tmp_path: Path) -> None:
    data = _planes_views_bins() - 150  # negative values too
    raw = b"\0" * 16 + data.transpose(1, 0, 2).astype("<i2").tobytes()
    changes = {
        "!number format": "signed integer",
        "!number of bytes per pixel": "2",
        "data offset in bytes[1]": "16",
        "image scaling factor[1]": "0.5",
    }
    back, _, info = read_sinogram(_crafted(tmp_path, raw, changes))
    np.testing.assert_array_equal(back, data * 0.5)
    assert back.dtype == np.float32
    assert (info.number_format, info.bytes_per_pixel) == ("signed integer", 2)
    assert any("negative" in note for note in info.notes)


def test_read_sinogram_short_float_without_byte_count(tmp_path: Path) -> None:
    data = _planes_views_bins()
    raw = data.transpose(1, 0, 2).astype("<f4").tobytes()
    changes = {"!number format": "short float", "!number of bytes per pixel": None}
    back, _, _ = read_sinogram(_crafted(tmp_path, raw, changes))
    np.testing.assert_array_equal(back, data)


def test_read_sinogram_missing_byte_order_is_big_endian(tmp_path: Path) -> None:
    data = _planes_views_bins()
    raw = data.transpose(1, 0, 2).astype(">f4").tobytes()
    back, _, info = read_sinogram(_crafted(tmp_path, raw, {"imagedata byte order": None}))
    np.testing.assert_array_equal(back, data)
    assert any("BIGENDIAN" in note for note in info.notes)


def test_read_sinogram_sinogram_mode_axis_order(tmp_path: Path) -> None:
    data = _planes_views_bins()
    changes = {
        "matrix axis label [3]": "axial coordinate",
        "!matrix size [3]": "{ 2}",
        "matrix axis label [2]": "view",
        "!matrix size [2]": "3",
    }
    back, geometry, _ = read_sinogram(_crafted(tmp_path, data.tobytes(), changes))
    np.testing.assert_array_equal(back, data)  # [axial][view][tang] is already the output
    assert geometry.shape == (2, 3, 4)


def test_read_sinogram_non_arc_corrected_bin_from_rings(tmp_path: Path) -> None:
    raw = _planes_views_bins().transpose(1, 0, 2).tobytes()
    changes = {
        "applied corrections": "{None}",
        "effective central bin size (cm)": None,
        "Number of detectors per ring": "64",
        "Inner ring diameter (cm)": "88.62",
        "Average depth of interaction (cm)": "0.84",
    }
    _, geometry, info = read_sinogram(_crafted(tmp_path, raw, changes))
    assert geometry.bin_mm == pytest.approx(22.1541, abs=1e-3)  # scatter_cylinder's value
    assert not geometry.arc_corrected and info.corrections == ()


def _three_segments(folder: Path, span: int) -> tuple[Path, dict[int, np.ndarray]]:
    """4 rings, segments -1, 0, +1 stored in that order; span 1 or span 3."""
    rng = np.random.default_rng(1)
    if span == 1:  # ring differences -1, 0, 1: 3, 4, 3 planes at the ring spacing
        sizes, lows, highs = (3, 4, 3), "{-1, 0, 1}", "{-1, 0, 1}"
    else:  # ring differences -3..-2, -1..1, 2..3: 3, 7, 3 planes at half the ring spacing
        sizes, lows, highs = (3, 7, 3), "{-3, -1, 2}", "{-2, 1, 3}"
    segments = {
        s: rng.integers(0, 9, size=(n, 3, 4)).astype(np.float32)
        for s, n in zip((-1, 0, 1), sizes, strict=True)
    }
    raw = b"".join(segments[s].transpose(1, 0, 2).tobytes() for s in (-1, 0, 1))
    changes = {
        "!matrix size [4]": "3",
        "!matrix size [2]": "{" + ", ".join(str(n) for n in sizes) + "}",
        "minimum ring difference per segment": lows,
        "maximum ring difference per segment": highs,
        "Number of rings": "4",
    }
    return _crafted(folder, raw, changes), segments


@pytest.mark.parametrize("span", [1, 3])
def test_read_sinogram_multi_segment_default_is_segment0(tmp_path: Path, span: int) -> None:
    header, segments = _three_segments(tmp_path, span)
    data, geometry, info = read_sinogram(header)
    np.testing.assert_array_equal(data, segments[0])
    assert geometry.plane_mm == (5.0 if span == 1 else 2.5)
    assert not info.rebinned and any("of 3 segments" in note for note in info.notes)


def test_read_sinogram_ssrb_span1_fills_cross_planes(tmp_path: Path) -> None:
    header, segments = _three_segments(tmp_path, span=1)
    data, geometry, info = read_sinogram(header, rebin="ssrb")
    assert (geometry.n_planes, geometry.plane_mm) == (7, 2.5)
    np.testing.assert_array_equal(data[0::2], segments[0])  # direct planes
    np.testing.assert_array_equal(data[1::2], segments[-1] + segments[1])  # cross planes
    assert info.rebinned


def test_read_sinogram_ssrb_span3_adds_on_centred_planes(tmp_path: Path) -> None:
    header, segments = _three_segments(tmp_path, span=3)
    data, geometry, info = read_sinogram(header, rebin="ssrb")
    assert (geometry.n_planes, geometry.plane_mm) == (7, 2.5)
    expected = segments[0].copy()
    expected[2:5] += segments[-1] + segments[1]  # 3 positions centred on the 7 planes
    np.testing.assert_array_equal(data, expected)
    assert data.sum() == pytest.approx(sum(s.sum() for s in segments.values()))
    assert info.rebinned


def test_read_sinogram_ssrb_misfit_segment_raises(tmp_path: Path) -> None:
    sizes = (5, 4, 3)  # 5 positions of ring difference -1 cannot fit 4 rings
    raw = np.zeros(sum(sizes) * 3 * 4, dtype="<f4").tobytes()
    changes = {
        "!matrix size [4]": "3",
        "!matrix size [2]": "{5, 4, 3}",
        "minimum ring difference per segment": "{-1, 0, 1}",
        "maximum ring difference per segment": "{-1, 0, 1}",
    }
    header = _crafted(tmp_path, raw, changes)
    assert read_sinogram(header)[1].n_planes == 4  # segment 0 alone is fine
    with pytest.raises(PetReconError, match="cannot rebin"):
        read_sinogram(header, rebin="ssrb")


# ----------------------------------------------------------------------- MetaImage / NIfTI


@pytest.mark.parametrize("suffix", [".mha", ".nii.gz"])
def test_read_sinogram_itk_axes_and_spacing(tmp_path: Path, suffix: str) -> None:
    data = _planes_views_bins()
    image = sitk.GetImageFromArray(data)
    image.SetSpacing((2.5, 1.0, 4.0))  # x = bins, y = views (ignored), z = planes
    path = tmp_path / f"sino{suffix}"
    sitk.WriteImage(image, str(path))
    back, geometry, info = read_sinogram(path)
    np.testing.assert_array_equal(back, data)
    assert geometry == SinogramGeometry(n_views=3, n_bins=4, bin_mm=2.5, n_planes=2, plane_mm=4.0)
    assert (info.number_format, info.bytes_per_pixel, info.segments) == ("float", 4, ())


def test_read_sinogram_itk_2d_image_raises(tmp_path: Path) -> None:
    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4), np.float32)), str(path))
    with pytest.raises(PetReconError, match="number of dimensions 2"):
        read_sinogram(path)


def test_read_sinogram_itk_vector_image_raises(tmp_path: Path) -> None:
    path = tmp_path / "rgb.mha"
    image = sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.float32), isVector=True)
    sitk.WriteImage(image, str(path))
    with pytest.raises(PetReconError, match="3 values per pixel"):
        read_sinogram(path)


# ----------------------------------------------------------------------- errors


def _raw() -> bytes:
    return _planes_views_bins().transpose(1, 0, 2).tobytes()


def test_read_sinogram_missing_magic_raises(tmp_path: Path) -> None:
    header = _crafted(tmp_path, _raw())
    header.write_text(header.read_text().replace("!INTERFILE  :=", "", 1))
    with pytest.raises(PetReconError, match="not an Interfile header"):
        read_sinogram(header)


@pytest.mark.parametrize(
    "key", ["name of data file", "!number format", "Distance between rings (cm)"]
)
def test_read_sinogram_missing_required_key_raises(tmp_path: Path, key: str) -> None:
    header = _crafted(tmp_path, _raw(), {key: None})
    shown = re.escape(key.lstrip("!").lower())
    with pytest.raises(PetReconError, match=f"missing required Interfile key '{shown}'"):
        read_sinogram(header)


@pytest.mark.parametrize(("number_format", "n_bytes"), [("bit", "1"), ("float", "2")])
def test_read_sinogram_unknown_number_format_raises(
    tmp_path: Path, number_format: str, n_bytes: str
) -> None:
    changes = {"!number format": number_format, "!number of bytes per pixel": n_bytes}
    with pytest.raises(PetReconError, match=f"unsupported number format '{number_format}'"):
        read_sinogram(_crafted(tmp_path, _raw(), changes))


def test_read_sinogram_data_file_missing_raises(tmp_path: Path) -> None:
    header = _crafted(tmp_path, _raw())
    (tmp_path / "crafted.s").unlink()
    with pytest.raises(PetReconError, match=r"crafted\.hs: data file missing"):
        read_sinogram(header)


@pytest.mark.parametrize("extra_bytes", [-4, 4])
def test_read_sinogram_size_mismatch_raises(tmp_path: Path, extra_bytes: int) -> None:
    raw = _raw()
    raw = raw[:extra_bytes] if extra_bytes < 0 else raw + b"\0" * extra_bytes
    with pytest.raises(PetReconError, match="data size mismatch"):
        read_sinogram(_crafted(tmp_path, raw))


def test_read_sinogram_offset_counts_in_size_check(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match=r"data size mismatch.*\(8 offset"):
        read_sinogram(_crafted(tmp_path, _raw(), {"data offset in bytes[1]": "8"}))


def test_read_sinogram_image_header_raises(tmp_path: Path) -> None:
    changes = {"!PET data type": "Image", "number of dimensions": "3"}
    header = _crafted(tmp_path, _raw(), changes, name="image")
    hv = header.rename(tmp_path / "image.hv")
    with pytest.raises(PetReconError, match=r"image\.hv: PET data type 'Image' is not a sinogram"):
        read_sinogram(hv)


def test_read_sinogram_spect_data_raises(tmp_path: Path) -> None:
    changes = {"!imaging modality": None, "!type of data": "Tomographic"}
    with pytest.raises(PetReconError, match="type of data 'Tomographic' is not PET"):
        read_sinogram(_crafted(tmp_path, _raw(), changes))


@pytest.mark.parametrize("n_dims", ["3", "5"])
def test_read_sinogram_unsupported_dimensions_raises(tmp_path: Path, n_dims: str) -> None:
    with pytest.raises(PetReconError, match=f"unsupported number of dimensions {n_dims}"):
        read_sinogram(_crafted(tmp_path, _raw(), {"number of dimensions": n_dims}))


def test_read_sinogram_several_time_frames_raises(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="2 time frames"):
        read_sinogram(_crafted(tmp_path, _raw(), {"number of time frames": "2"}))


def test_read_sinogram_no_segment0_raises(tmp_path: Path) -> None:
    changes = {
        "minimum ring difference per segment": "{1}",
        "maximum ring difference per segment": "{1}",
    }
    with pytest.raises(PetReconError, match="no unique segment 0"):
        read_sinogram(_crafted(tmp_path, _raw(), changes))


def test_read_sinogram_non_finite_values_raise(tmp_path: Path) -> None:
    data = _planes_views_bins()
    data[1, 2, 3] = np.nan
    with pytest.raises(PetReconError, match="1 NaN or infinite"):
        read_sinogram(_crafted(tmp_path, data.transpose(1, 0, 2).tobytes()))


def test_read_sinogram_unsupported_suffix_raises(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="unsupported sinogram file type"):
        read_sinogram(tmp_path / "sino.dcm")


def test_read_sinogram_header_not_found_raises(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match=r"nothing\.hs: file not found"):
        read_sinogram(tmp_path / "nothing.hs")


def test_read_sinogram_unknown_rebin_raises(tmp_path: Path) -> None:
    with pytest.raises(PetReconError, match="unknown sinogram rebinning"):
        read_sinogram(_crafted(tmp_path, _raw()), rebin="fore")  # type: ignore[arg-type]


def test_write_sinogram_int16_counts_round_trip(tmp_path: Path) -> None:
    geometry = SinogramGeometry(n_views=6, n_bins=7, bin_mm=2.0, n_planes=3, plane_mm=2.0)
    counts = np.random.default_rng(0).poisson(50.0, size=geometry.shape).astype(np.float32)
    header = write_sinogram(tmp_path / "c.hs", counts, geometry, dtype="int16")
    data, geo, info = read_sinogram(header)
    assert info.number_format == "signed integer" and info.bytes_per_pixel == 2
    assert (tmp_path / "c.s").stat().st_size == counts.size * 2
    np.testing.assert_array_equal(data, counts)
    assert geo == geometry


def test_write_sinogram_int16_overflow_refused(tmp_path: Path) -> None:
    geometry = SinogramGeometry(n_views=2, n_bins=3, bin_mm=2.0, n_planes=1, plane_mm=2.0)
    with pytest.raises(ValueError, match="do not fit in int16"):
        write_sinogram(tmp_path / "c.hs", np.full(geometry.shape, 4e4), geometry, dtype="int16")
