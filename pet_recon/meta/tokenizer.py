"""Deterministic tokenizer of meta-information prompts.

The prompts of :func:`pet_recon.meta.prompt.render_prompt` are short, templated and full of
numbers, so a learned sub-word vocabulary (as in CLIP's BPE) would waste capacity on digit
strings. This tokenizer is defined entirely in code and needs no training:

- The prompt is lower-cased and split on whitespace; leading ``(`` / ``[`` and trailing
  ``, . ; : ) ]`` are stripped from each word and mark a clause boundary. Punctuation gives no
  token: the template's keywords already carry the structure.
- A word in the vocabulary (template words and common categorical values: tracers,
  radionuclides, sex, decay correction, units, manufacturers, models, reconstruction
  methods, ``unknown``) is one token.
- A number that follows a quantity keyword in the same clause (``injected 370.0``,
  ``weight 70.0``, ``level 1/20``, ``age 90+``, ...) becomes a quantity-specific bin token
  such as ``<activity:26>`` (see :data:`DEFAULT_FIELDS` and ``docs/meta-information.md``).
  Its value also goes, normalised, into a parallel float feature so that the encoder sees
  the exact value and not only the bin. Only the first number after a keyword is binned;
  numbers elsewhere (``Discovery 710``, ``3i8s``) are words.
- Any other word (an unseen tracer or scanner name, say) is hashed: token
  ``<hash:k>`` with ``k = crc32(word) mod hash_buckets``, stable across processes and
  platforms. Two unseen words share a bucket with probability ``1 / hash_buckets``. With
  ``hash_buckets=0`` unseen words all map to ``<unk>``.

The vocabulary is ``<pad>`` (id 0), ``<unk>`` (id 1), the words in order, the bin tokens of
each field in order, then the hash buckets. :attr:`Tokenizer.config` holds everything needed
to rebuild the same vocabulary (:meth:`Tokenizer.from_config`); the encoder stores it with
its weights.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

PAD = "<pad>"
UNK = "<unk>"
#: Id of ``<pad>``; padded positions have this id, a numeric value of 0 and mask False.
PAD_ID = 0

_LEADING = "(["
_TRAILING = ",.;:)]"
_NUMBER = re.compile(r"(-?\d+(?:\.\d+)?)\+?")
_FRACTION = re.compile(r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)")


@dataclass(frozen=True)
class NumericField:
    """Binning of one numeric quantity of the prompt.

    Values are binned on a linear scale, or on a log10 scale when ``log`` is True. Bin
    ``k`` (``k = 0 .. n_bins - 1``) is centred at ``t(lo) + k * step`` with ``t`` the
    identity or log10, so ``step`` is in the value's unit (linear) or in decades (log).
    Bins are half-open ``[centre - step/2, centre + step/2)``; the first and last bins
    are open-ended and hold every value below ``lo`` or above ``hi``.

    Attributes
    ----------
    name : str
        Token prefix: bin ``k`` is the token ``<name:k>``.
    keywords : tuple of str
        Lower-case prompt words after which a number belongs to this quantity.
    log : bool
        Bin on log10 of the value (values <= ``lo`` fall in bin 0).
    lo, hi : float
        Centres of the first and last bins; ``hi - lo`` (or ``log10(hi / lo)``) must be a
        whole number of steps.
    step : float
        Bin width (value unit, or decades when ``log``).
    """

    name: str
    keywords: tuple[str, ...]
    log: bool
    lo: float
    hi: float
    step: float

    def __post_init__(self) -> None:
        if self.step <= 0 or self.hi <= self.lo or (self.log and self.lo <= 0):
            raise ValueError(f"field {self.name!r}: need step > 0, hi > lo (> 0 when log)")
        steps = (self._t(self.hi) - self._t(self.lo)) / self.step
        if abs(steps - round(steps)) > 1e-6:
            raise ValueError(f"field {self.name!r}: hi - lo is not a whole number of steps")

    def _t(self, value: float) -> float:
        return math.log10(max(value, self.lo)) if self.log else value

    @property
    def n_bins(self) -> int:
        """Number of bins (tokens) of the field."""
        return round((self._t(self.hi) - self._t(self.lo)) / self.step) + 1

    def bin(self, value: float) -> int:
        """Bin index of ``value`` (0 .. ``n_bins - 1``)."""
        k = math.floor((self._t(value) - self._t(self.lo)) / self.step + 0.5)
        return min(max(k, 0), self.n_bins - 1)

    def centre(self, k: int) -> float:
        """Value at the centre of bin ``k``."""
        t = self._t(self.lo) + k * self.step
        return 10.0**t if self.log else t

    def normalise(self, value: float) -> float:
        """Continuous feature of ``value``.

        ``lo -> -1``, ``hi -> +1``, linear in between (in log10 when ``log``; values below
        ``lo`` then count as ``lo``), clipped to ``[-2, 2]``.
        """
        x = 2.0 * (self._t(value) - self._t(self.lo)) / (self._t(self.hi) - self._t(self.lo))
        return min(max(x - 1.0, -2.0), 2.0)

    def token(self, k: int) -> str:
        """Token string of bin ``k``."""
        return f"<{self.name}:{k}>"


#: Numeric quantities of the prompt template (keyword -> bins). Log fields use 10 bins per
#: decade centred on ``10**(k/10)``, so 1-2-5 values (DRF 2, 20; 50 MBq) sit mid-bin;
#: linear fields are centred on round values (70 kg, 4.00 mm, 60 min).
DEFAULT_FIELDS: tuple[NumericField, ...] = (
    NumericField("halflife", ("half-life",), True, 1.0, 1e4, 0.1),  # min
    NumericField("activity", ("injected",), True, 1.0, 1e4, 0.1),  # MBq
    NumericField("dose", ("level",), True, 1e-3, 1.0, 0.1),  # fraction 1/DRF
    NumericField("weight", ("weight",), False, 30.0, 150.0, 5.0),  # kg
    NumericField("height", ("height",), False, 100.0, 220.0, 5.0),  # cm
    NumericField("age", ("age",), False, 0.0, 90.0, 5.0),  # years, "90+" -> 90
    NumericField("uptake", ("uptake",), False, 0.0, 240.0, 10.0),  # min
    NumericField("frame", ("frame",), True, 1.0, 1e4, 0.1),  # s
    NumericField("pixel", ("pixel",), False, 0.5, 8.0, 0.25),  # mm
    NumericField("slice", ("slice",), False, 0.5, 8.0, 0.25),  # mm
)

#: Words of the prompt template (every word ``render_prompt`` writes outside values).
TEMPLATE_WORDS: tuple[str, ...] = (
    "pet", "radionuclide", "half-life", "min", "injected", "mbq", "dose", "level", "full",
    "of", "estimated", "given", "unknown", "patient", "weight", "kg", "height", "cm", "sex",
    "age", "uptake", "frame", "s", "decay", "correction", "units", "scanner",
    "reconstruction", "pixel", "mm", "slice",
)

#: Categorical values: tracers, radionuclides (DICOM code meanings and short forms), sex,
#: decay correction (0054,1102), units (0054,1001 defined terms), manufacturers, models and
#: reconstruction-method words.
VALUE_WORDS: tuple[str, ...] = (
    "fdg", "18f-fdg", "fluorodeoxyglucose", "florbetapir", "florbetaben", "flutemetamol",
    "amyloid", "flortaucipir", "psma", "psma-11", "psma-1007", "dcfpyl", "fluciclovine",
    "choline", "fdopa", "f-dopa", "fet", "flt", "fmiso", "fes", "naf", "fluoride", "dotatate",
    "dotatoc", "pib", "ammonia", "water", "rubidium",
    "^18^fluorine", "^11^carbon", "^13^nitrogen", "^15^oxygen", "^68^gallium", "^64^copper",
    "^82^rubidium", "^89^zirconium", "^124^iodine", "f-18", "f18", "18f", "c-11", "ga-68",
    "fluorine", "carbon", "gallium",
    "m", "f", "o",
    "start", "admin", "none",
    "bqml", "cnts", "gml", "cm2", "cm2ml", "pcnt", "cps", "mgminml", "umolminml", "mlming",
    "mlg", "1cm", "umolml", "propcnts", "propcps", "mlminml", "mlml", "stddev",
    "ge", "medical", "systems", "healthcare", "siemens", "philips", "united", "imaging",
    "uih", "canon", "toshiba", "cti", "hitachi", "mediso", "synthetic",
    "discovery", "mi", "dr", "st", "ste", "rx", "vct", "iq", "600", "690", "710", "signa",
    "omni", "biograph", "vision", "quadra", "horizon", "mct", "truepoint", "mmr", "vereos",
    "gemini", "tf", "ingenuity", "umi", "550", "780", "celesteion",
    "osem", "fbp", "psf", "tof", "psf+tof", "ramla", "bsrem", "q.clear", "vpfx", "vpfxs",
    "truex", "blob-os-tf", "lor", "3d", "2d", "ir", "allpass", "gaussian",
)

#: Default word list: template words then values, without repeats.
DEFAULT_WORDS: tuple[str, ...] = tuple(dict.fromkeys(TEMPLATE_WORDS + VALUE_WORDS))


def _parse_number(word: str) -> float | None:
    """``"70.0" -> 70.0``, ``"90+" -> 90.0``, ``"1/20" -> 0.05``; None if not a number."""
    match = _NUMBER.fullmatch(word)
    if match:
        return float(match.group(1))
    match = _FRACTION.fullmatch(word)
    if match and float(match.group(2)) > 0:
        return float(match.group(1)) / float(match.group(2))
    return None


class Tokenizer:
    """Fixed-vocabulary tokenizer of meta-information prompts (see the module docstring).

    Parameters
    ----------
    words : sequence of str
        Vocabulary words: lower case, no whitespace, no repeats. Every field keyword must be
        one of them.
    fields : sequence of NumericField
        Numeric quantities and their bins.
    hash_buckets : int
        Number of ``<hash:k>`` tokens for unseen words (0: unseen words are ``<unk>``).
    """

    def __init__(
        self,
        words: Sequence[str] = DEFAULT_WORDS,
        fields: Sequence[NumericField] = DEFAULT_FIELDS,
        hash_buckets: int = 256,
    ) -> None:
        if len(set(words)) != len(words):
            raise ValueError("words must not repeat")
        if any(w != w.lower() or not w or len(w.split()) != 1 for w in words):
            raise ValueError("words must be lower-case and free of whitespace")
        if len({f.name for f in fields}) != len(fields):
            raise ValueError("field names must not repeat")
        if hash_buckets < 0:
            raise ValueError("hash_buckets must be >= 0")
        self.fields = tuple(fields)
        self.hash_buckets = hash_buckets
        self._keyword_field = {kw: f for f in self.fields for kw in f.keywords}
        missing = set(self._keyword_field) - set(words)
        if missing:
            raise ValueError(f"field keywords missing from words: {sorted(missing)}")
        bins = [f.token(k) for f in self.fields for k in range(f.n_bins)]
        hashes = [f"<hash:{k}>" for k in range(hash_buckets)]
        #: Token strings in id order.
        self.tokens: tuple[str, ...] = (PAD, UNK, *words, *bins, *hashes)
        self._ids = {t: i for i, t in enumerate(self.tokens)}
        self._word_ids = {w: self._ids[w] for w in words}
        #: JSON-ready definition of the vocabulary (:meth:`from_config` rebuilds it).
        self.config: dict[str, Any] = {
            "words": list(words),
            "fields": [asdict(f) for f in self.fields],
            "hash_buckets": hash_buckets,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Tokenizer:
        """Rebuild a tokenizer from its :attr:`config` (e.g. read from weight metadata)."""
        fields = [NumericField(**{**f, "keywords": tuple(f["keywords"])})
                  for f in config["fields"]]
        return cls(list(config["words"]), fields, int(config["hash_buckets"]))

    @property
    def vocab_size(self) -> int:
        """Number of token ids."""
        return len(self.tokens)

    def _word(self, word: str) -> str:
        if word in self._word_ids:
            return word
        if self.hash_buckets == 0:
            return UNK
        return f"<hash:{zlib.crc32(word.encode('utf-8')) % self.hash_buckets}>"

    def tokenize(self, prompt: str) -> list[tuple[str, float]]:
        """Token strings of a prompt with their numeric features.

        Returns
        -------
        list of (str, float)
            One ``(token, value)`` per token, no truncation; ``value`` is the normalised
            number (:meth:`NumericField.normalise`) for bin tokens and 0.0 otherwise.
        """
        out: list[tuple[str, float]] = []
        field: NumericField | None = None
        for raw in prompt.lower().split():
            core = raw.lstrip(_LEADING)
            if len(core) < len(raw):
                field = None
            word = core.rstrip(_TRAILING)
            if word in self._keyword_field:
                field = self._keyword_field[word]
                out.append((word, 0.0))
            elif word:
                value = _parse_number(word) if field is not None else None
                if field is not None and value is not None:
                    out.append((field.token(field.bin(value)), field.normalise(value)))
                    field = None
                else:
                    out.append((self._word(word), 0.0))
            if len(word) < len(core):
                field = None
        return out

    def encode(
        self, prompt: str, max_len: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Token ids, numeric features and mask of one prompt, padded to ``max_len``.

        Prompts longer than ``max_len`` tokens are truncated (the defaults give about 50
        tokens for a full prompt).

        Returns
        -------
        ids : torch.Tensor
            ``(max_len,)`` int64 token ids, :data:`PAD_ID` after the prompt.
        numeric : torch.Tensor
            ``(max_len,)`` float32 normalised numbers of bin tokens, 0 elsewhere.
        mask : torch.Tensor
            ``(max_len,)`` bool, True at real tokens, False at padding.
        """
        if max_len < 1:
            raise ValueError("max_len must be >= 1")
        pairs = self.tokenize(prompt)[:max_len]
        ids = torch.full((max_len,), PAD_ID, dtype=torch.int64)
        numeric = torch.zeros(max_len, dtype=torch.float32)
        mask = torch.zeros(max_len, dtype=torch.bool)
        n = len(pairs)
        if n:
            ids[:n] = torch.tensor([self._ids[t] for t, _ in pairs], dtype=torch.int64)
            numeric[:n] = torch.tensor([v for _, v in pairs], dtype=torch.float32)
            mask[:n] = True
        return ids, numeric, mask

    def encode_batch(
        self, prompts: Sequence[str], max_len: int = 64
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`encode` of several prompts, stacked.

        Returns
        -------
        ids, numeric, mask : torch.Tensor
            ``(B, max_len)`` int64, float32 and bool tensors.
        """
        rows = [self.encode(p, max_len) for p in prompts]
        if not rows:
            empty = torch.zeros(0, max_len)
            return empty.long(), empty.float(), empty.bool()
        ids, numeric, mask = zip(*rows, strict=True)
        return torch.stack(ids), torch.stack(numeric), torch.stack(mask)
