"""Meta-information prompt tokenizer."""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import fields, replace

import pytest
import torch

from pet_recon.meta.prompt import MetaRecord, render_prompt
from pet_recon.meta.tokenizer import (
    DEFAULT_FIELDS,
    PAD_ID,
    UNK,
    NumericField,
    Tokenizer,
)

FIELDS = {f.name: f for f in DEFAULT_FIELDS}


def _record(**changes: object) -> MetaRecord:
    record = MetaRecord(
        radiopharmaceutical="FDG", radionuclide="^18^Fluorine", half_life_min=109.77,
        injected_activity_mbq=370.0, weight_kg=70.0, height_cm=175.0, sex="F", age="45",
        uptake_time_min=60.0, frame_duration_s=180.0, decay_correction="START", units="BQML",
        manufacturer="SIEMENS", model="Biograph Vision", reconstruction_method="OSEM",
        pixel_size_mm=4.0, slice_thickness_mm=3.0, dose_fraction=0.05, dose_source="given",
    )
    return replace(record, **changes)


def _tokens(prompt: str, tokenizer: Tokenizer | None = None) -> list[str]:
    return [t for t, _ in (tokenizer or Tokenizer()).tokenize(prompt)]


def test_real_prompt_tokens() -> None:
    pairs = Tokenizer().tokenize(render_prompt(_record()))
    tokens = [t for t, _ in pairs]
    assert tokens[:4] == ["pet", "fdg", "radionuclide", "^18^fluorine"]
    i = tokens.index("injected")
    assert tokens[i : i + 3] == ["injected", "<activity:26>", "mbq"]  # 370 -> 10**2.6
    assert ["level", "<dose:17>", "of", "full", "dose", "given"] == tokens[
        tokens.index("level") : tokens.index("level") + 6
    ]
    assert "<weight:8>" in tokens and "<height:15>" in tokens and "<age:9>" in tokens
    assert "<uptake:6>" in tokens and "<pixel:14>" in tokens and "<slice:10>" in tokens
    assert not any(t.startswith("<hash:") or t == UNK for t in tokens)
    values = dict(pairs)
    assert values["<weight:8>"] == pytest.approx(2 * 40 / 120 - 1)
    assert values["<activity:26>"] == pytest.approx(2 * math.log10(370) / 4 - 1)
    assert all(v == 0.0 for t, v in pairs if not t.startswith("<"))


def test_template_words_of_unknown_record_are_in_vocabulary() -> None:
    nothing = MetaRecord(**({f.name: None for f in fields(MetaRecord)}
                            | {"dose_source": "unknown"}))
    tokens = _tokens(render_prompt(nothing))
    assert tokens.count("unknown") == 18
    assert not any(t.startswith("<") for t in tokens)


def test_full_prompt_fits_default_length() -> None:
    record = _record(manufacturer="GE MEDICAL SYSTEMS", model="Discovery MI",
                     reconstruction_method="OSEM 3i8s 5mm")
    assert len(_tokens(render_prompt(record))) < 64


def test_deterministic_and_rebuilt_from_config() -> None:
    prompt = render_prompt(_record(manufacturer="Acme", model="Hyperion 9"))
    first = Tokenizer().encode(prompt)
    again = Tokenizer.from_config(json.loads(json.dumps(Tokenizer().config))).encode(prompt)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert Tokenizer().tokens == Tokenizer.from_config(Tokenizer().config).tokens


@pytest.mark.parametrize(
    ("field", "value", "centre"),
    [
        ("weight", 70.0, 70.0),
        ("weight", 72.49, 70.0),
        ("weight", 72.5, 75.0),  # bins are [centre - 2.5, centre + 2.5)
        ("weight", 10.0, 30.0),  # below range: first bin
        ("weight", 400.0, 150.0),  # above range: last bin
        ("pixel", 4.125, 4.25),
        ("pixel", 4.1249, 4.0),
        ("uptake", 64.99, 60.0),
        ("uptake", 65.0, 70.0),
        ("age", 90.0, 90.0),
        ("dose", 0.05, 10**-1.3),
        ("dose", 1.0, 1.0),
        ("dose", 0.0, 1e-3),  # log field: non-positive values go to the first bin
        ("activity", 370.0, 10**2.6),
    ],
)
def test_bin_boundaries(field: str, value: float, centre: float) -> None:
    f = FIELDS[field]
    assert f.centre(f.bin(value)) == pytest.approx(centre)


def test_log_bin_edges_are_geometric_midpoints() -> None:
    f = FIELDS["activity"]
    edge = 10 ** (2.55)  # between centres 10**2.5 and 10**2.6
    assert f.bin(edge * (1 - 1e-9)) == 25 and f.bin(edge * (1 + 1e-9)) == 26
    assert f.n_bins == 41 and FIELDS["dose"].n_bins == 31 and FIELDS["weight"].n_bins == 25


def test_numbers_in_prompt_text() -> None:
    tokens = _tokens("Patient weight 72.5 kg, age 90+, dose level 1/20 of full dose.")
    assert tokens == ["patient", "weight", "<weight:9>", "kg", "age", "<age:18>", "dose",
                      "level", "<dose:17>", "of", "full", "dose"]


def test_numbers_outside_numeric_clauses_are_words() -> None:
    t = Tokenizer()
    tokens = _tokens("Scanner GE Discovery 710, reconstruction OSEM 3i8s, weight 70 80 kg", t)
    assert tokens[3] == "710"
    assert tokens[6] == f"<hash:{zlib.crc32(b'3i8s') % 256}>"
    # Only the first number after a keyword is binned; a clause boundary ends the field.
    assert tokens[-3:] == ["<weight:8>", f"<hash:{zlib.crc32(b'80') % 256}>", "kg"]
    assert _tokens("weight, 70")[1] == f"<hash:{zlib.crc32(b'70') % 256}>"


def test_unknown_words_hash_or_unk() -> None:
    hashed = _tokens("PET Zorbatide")
    assert hashed == ["pet", f"<hash:{zlib.crc32(b'zorbatide') % 256}>"]
    assert _tokens("PET zorbatide") == hashed  # case-insensitive
    assert _tokens("PET Zorbatide", Tokenizer(hash_buckets=0)) == ["pet", UNK]
    assert _tokens("<pad> <weight:3>", Tokenizer(hash_buckets=0)) == [UNK, UNK]


def test_padding_mask_and_truncation() -> None:
    t = Tokenizer()
    ids, numeric, mask = t.encode("Injected 370.0 MBq", max_len=8)
    assert ids.dtype == torch.int64 and numeric.dtype == torch.float32
    assert mask.tolist() == [True] * 3 + [False] * 5
    assert (ids[3:] == PAD_ID).all() and (numeric[3:] == 0).all() and numeric[1] != 0
    long_ids, _, long_mask = t.encode(render_prompt(_record()), max_len=5)
    assert long_mask.all() and long_ids.tolist() == [t.tokens.index(s) for s in
                                                      ("pet", "fdg", "radionuclide",
                                                       "^18^fluorine", "half-life")]
    assert not t.encode("", max_len=4)[2].any()


def test_encode_batch_stacks_rows() -> None:
    t = Tokenizer()
    prompts = [render_prompt(_record()), "PET FDG", render_prompt(_record(weight_kg=None))]
    ids, numeric, mask = t.encode_batch(prompts, max_len=40)
    assert ids.shape == numeric.shape == mask.shape == (3, 40)
    for row, prompt in enumerate(prompts):
        one = t.encode(prompt, max_len=40)
        assert torch.equal(ids[row], one[0]) and torch.equal(mask[row], one[2])
    assert t.encode_batch([], max_len=7)[0].shape == (0, 7)


def test_invalid_definitions_rejected() -> None:
    with pytest.raises(ValueError, match="repeat"):
        Tokenizer(words=["pet", "pet"])
    with pytest.raises(ValueError, match="keywords"):
        Tokenizer(words=["pet"])
    with pytest.raises(ValueError, match="whole number"):
        NumericField("x", ("x",), False, 0.0, 1.0, 0.3)
