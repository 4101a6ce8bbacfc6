"""Meta-information encoder: text and image towers aligned by contrastive learning.

MiG-DM (Geng et al., arXiv:2512.22237, Sec. III.B) encodes the meta-information prompt with
a CLIP-style dual encoder (Radford et al. 2021, arXiv:2103.00020) trained on prompt / PET
image pairs; the diffusion model SD2 cross-attends to the text tower's token features.

- :class:`TextEncoder`: token embedding + numeric-value embedding + learned positions, then
  pre-norm transformer blocks with a padding mask. Returns per-token features for
  cross-attention and a pooled, projected embedding for the contrastive loss.
- :class:`ImageEncoder`: a small CNN over PET slices -> one embedding per slice.
- :class:`MetaEncoder`: both towers and CLIP's learned temperature.
- :func:`image_inputs`: low-dose slices -> the image tower's inputs.
- :func:`clip_loss`: symmetric InfoNCE (CLIP, Fig. 3).
- :func:`save_meta_encoder` / :func:`load_meta_encoder`: weights through
  :mod:`pet_recon.weights` (safetensors, hash-checked), the tokenizer definition stored
  with them.

Attention projections are explicit ``nn.Linear`` layers named ``q_proj``, ``k_proj``,
``v_proj``, ``out_proj`` so that :func:`pet_recon.meta.lora.apply_lora` can adapt them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from pet_recon.errors import PetReconError
from pet_recon.meta.lora import LoRALinear
from pet_recon.meta.tokenizer import Tokenizer
from pet_recon.weights import load_model, register_config, save_model


class SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask (Vaswani et al. 2017, Eq. 1-2).

    ``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_head)) V`` per head, keys at padded
    positions excluded.

    Parameters
    ----------
    width : int
        Model width ``D``; must be divisible by ``heads``.
    heads : int
        Number of heads.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, L, D)`` float.
        mask : torch.Tensor
            ``(B, L)`` bool, True at real tokens.

        Returns
        -------
        torch.Tensor
            ``(B, L, D)``.
        """
        b, n, d = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
        # A finite fill keeps an all-padding row (empty prompt) finite instead of NaN.
        scores = scores.masked_fill(~mask[:, None, None, :], torch.finfo(scores.dtype).min)
        out = scores.softmax(dim=-1) @ v
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (GELU MLP).

    Parameters
    ----------
    width : int
        Model width ``D``.
    heads : int
        Attention heads.
    mlp_ratio : int
        Hidden width of the MLP is ``mlp_ratio * D``.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, L, D)`` features and ``(B, L)`` bool mask -> ``(B, L, D)``."""
        x = x + self.attn(self.norm1(x), mask)
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """Transformer over tokenized prompts (:class:`~pet_recon.meta.tokenizer.Tokenizer`).

    The input embedding of token ``i`` is ``E_tok[id_i] + v_i * E_num[id_i] + P_i``: token
    embedding, the token's normalised numeric value ``v_i`` (0 for non-numeric tokens) times
    a learned per-token direction, and a learned position. After ``layers`` pre-norm blocks
    and a final LayerNorm the token features go to SD2's cross-attention; their masked mean,
    linearly projected, is the embedding for the contrastive loss.

    Parameters
    ----------
    vocab_size : int
        Tokenizer vocabulary size.
    max_len : int
        Longest sequence (number of learned positions).
    width : int
        Feature width ``D`` (cross-attention context dimension).
    layers : int
        Transformer blocks.
    heads : int
        Attention heads.
    mlp_ratio : int
        MLP hidden width over ``D``.
    embed_dim : int
        Contrastive embedding size ``E``.
    """

    @register_config
    def __init__(self, vocab_size: int, *, max_len: int = 64, width: int = 128,
                 layers: int = 3, heads: int = 4, mlp_ratio: int = 4,
                 embed_dim: int = 128) -> None:
        super().__init__()
        self.width = width
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.numeric_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(max_len, width))
        self.blocks = nn.ModuleList(
            TransformerBlock(width, heads, mlp_ratio) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, embed_dim, bias=False)
        # CLIP's initialisation: tokens N(0, 0.02), positions N(0, 0.01).
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.numeric_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.01)

    def forward(
        self, ids: torch.Tensor, numeric: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode tokenized prompts.

        Parameters
        ----------
        ids : torch.Tensor
            ``(B, L)`` int64 token ids, ``L <= max_len``.
        numeric : torch.Tensor
            ``(B, L)`` float32 normalised numeric values.
        mask : torch.Tensor
            ``(B, L)`` bool, True at real tokens.

        Returns
        -------
        tokens : torch.Tensor
            ``(B, L, D)`` float32 per-token features (padding rows are not meaningful;
            pass ``mask`` on to cross-attention).
        pooled : torch.Tensor
            ``(B, E)`` float32 embedding (not normalised).
        """
        n = ids.shape[1]
        if n > self.position_embedding.shape[0]:
            raise ValueError(f"sequence length {n} > max_len {self.position_embedding.shape[0]}")
        x = (self.token_embedding(ids)
             + numeric.unsqueeze(-1) * self.numeric_embedding(ids)
             + self.position_embedding[:n])
        for block in self.blocks:
            x = block(x, mask)
        tokens = self.norm(x)
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return tokens, self.proj(mean)


class ImageEncoder(nn.Module):
    """Small CNN embedding of PET slices.

    A 3x3 stem, then ``depth`` stages of a stride-2 3x3 convolution doubling the channels,
    each with GroupNorm and SiLU; global average pooling, then ``scalars`` per-image numbers
    appended, then the head: a linear projection, or with ``head_hidden`` a two-layer MLP
    (linear, SiLU, linear). Inputs are taken as they are: the encoder does no normalisation
    of its own (:func:`image_inputs` prepares them). GroupNorm makes the convolutional
    features blind to the image's overall scale, which is why an absolute level has to come
    in as a scalar.

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the input slices.
    width : int
        Channels after the stem (doubling per stage).
    depth : int
        Number of stride-2 stages.
    embed_dim : int
        Embedding size ``E``.
    scalars : int
        Per-image numbers ``(B, S)`` appended to the pooled features (0: none).
    head_hidden : int
        Hidden width of the MLP head (0: a linear head).
    """

    @register_config
    def __init__(self, in_channels: int = 1, *, width: int = 32, depth: int = 3,
                 embed_dim: int = 128, scalars: int = 0, head_hidden: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = [*self._stage(in_channels, width, 1)]
        channels = width
        for _ in range(depth):
            layers += self._stage(channels, 2 * channels, 2)
            channels *= 2
        self.features = nn.Sequential(*layers)
        self.scalars = scalars
        self.proj: nn.Module = (
            nn.Sequential(nn.Linear(channels + scalars, head_hidden), nn.SiLU(),
                          nn.Linear(head_hidden, embed_dim))
            if head_hidden else nn.Linear(channels + scalars, embed_dim))

    @staticmethod
    def _stage(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
                nn.GroupNorm(math.gcd(8, c_out), c_out), nn.SiLU()]

    def forward(self, images: torch.Tensor, scalars: torch.Tensor | None = None
                ) -> torch.Tensor:
        """``(B, C, H, W)`` float32 slices (and ``(B, S)`` scalars) -> ``(B, E)`` float32
        embeddings."""
        pooled = self.features(images).mean(dim=(-2, -1))
        if self.scalars:
            if scalars is None or scalars.shape != (images.shape[0], self.scalars):
                raise ValueError(f"this image encoder takes {self.scalars} scalars per image")
            pooled = torch.cat([pooled, scalars.to(pooled.dtype)], dim=1)
        return self.proj(pooled)


class MetaEncoder(nn.Module):
    """CLIP-style meta-information encoder: text tower, image tower, learned temperature.

    The temperature is CLIP's: a log-parameterised multiplier ``logit_scale`` initialised
    to ``log(1 / 0.07)``; :meth:`scale` returns ``exp(logit_scale)`` clamped at 100
    (Radford et al. 2021, Sec. 2.5). Every constructor argument is recorded in
    ``self.config`` (:func:`pet_recon.weights.register_config`), as for the two towers, so
    ``MetaEncoder(**model.config)`` rebuilds the architecture.

    Parameters
    ----------
    vocab_size : int
        Tokenizer vocabulary size.
    max_len, width, layers, heads, mlp_ratio : int
        Text tower (see :class:`TextEncoder`).
    embed_dim : int
        Shared embedding size ``E``.
    in_channels, image_width, image_depth, image_scalars, image_head_hidden : int
        Image tower (see :class:`ImageEncoder`: ``in_channels``, ``width``, ``depth``,
        ``scalars``, ``head_hidden``).
    logit_scale_init : float
        Initial ``logit_scale`` (log of the logit multiplier).
    """

    @register_config
    def __init__(self, vocab_size: int, *, max_len: int = 64, width: int = 128,
                 layers: int = 3, heads: int = 4, mlp_ratio: int = 4, embed_dim: int = 128,
                 in_channels: int = 1, image_width: int = 32, image_depth: int = 3,
                 image_scalars: int = 0, image_head_hidden: int = 0,
                 logit_scale_init: float = math.log(1 / 0.07)) -> None:
        super().__init__()
        self.text = TextEncoder(vocab_size, max_len=max_len, width=width, layers=layers,
                                heads=heads, mlp_ratio=mlp_ratio, embed_dim=embed_dim)
        self.image = ImageEncoder(in_channels, width=image_width, depth=image_depth,
                                  embed_dim=embed_dim, scalars=image_scalars,
                                  head_hidden=image_head_hidden)
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)))

    def scale(self) -> torch.Tensor:
        """Logit multiplier ``min(exp(logit_scale), 100)``, a 0-d tensor."""
        return self.logit_scale.clamp(max=math.log(100.0)).exp()

    def forward(self, ids: torch.Tensor, numeric: torch.Tensor, mask: torch.Tensor,
                images: torch.Tensor, scalars: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed paired prompts and images.

        Parameters
        ----------
        ids, numeric, mask : torch.Tensor
            ``(B, L)`` tokenized prompts (see :meth:`TextEncoder.forward`).
        images : torch.Tensor
            ``(B, C, H, W)`` float32 slices.
        scalars : torch.Tensor, optional
            ``(B, image_scalars)`` per-image numbers (see :func:`image_inputs`).

        Returns
        -------
        text_emb, image_emb : torch.Tensor
            ``(B, E)`` float32 embeddings (not normalised), ready for :func:`clip_loss`.
        """
        return self.text(ids, numeric, mask)[1], self.image(images, scalars)


#: The image tower's scalar input is ``log10(ref / KBQ_PER_ML)``, ``ref`` in Bq/ml.
KBQ_PER_ML = 1000.0


#: Smallest relative noise ``noise / ref`` the image tower is given (the simulated low-dose
#: volumes of the training data have 0.008 to 0.05; a noise-free volume has 0).
RELATIVE_NOISE_FLOOR = 1e-3


def image_inputs(planes: torch.Tensor, ref: torch.Tensor, bqml_per_suv: torch.Tensor,
                 noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The image tower's inputs for a batch of low-dose slices: relative image and levels.

    ``images = avg_pool_2x(planes / ref)`` (the slice's shape, relative to its volume's
    reference value :func:`~pet_recon.models.intensity.reference_value`) and the scalars:

    1. ``log10(ref * bqml_per_suv / 1 kBq/ml)``: the reference concentration in the units
       the scanner measures (Bq/ml, DICOM Units BQML), which depends on the injected
       activity, weight, uptake time and dose level that the prompt states;
    2. with ``noise``, ``log10(max(noise / ref, RELATIVE_NOISE_FLOOR))``: the volume's
       relative noise (:func:`~pet_recon.metrics.noise_sigma`), set by the counts the scan
       collected (activity, frame duration, scanner, body size, dose level), which the
       half-size image shows only in part; the floor keeps a noise-free volume finite.

    The convolutional features are blind to the image's overall scale (GroupNorm), so the
    level comes in as a scalar.

    Parameters
    ----------
    planes : torch.Tensor
        ``(B, C, H, W)`` float low-dose planes (the slice and its neighbours) in SUV (g/ml).
    ref : torch.Tensor
        ``(B,)`` float reference value of each slice's volume, SUV.
    bqml_per_suv : torch.Tensor
        ``(B,)`` float Bq/ml per SUV of each slice's volume (``1 / suv_factor``).
    noise : torch.Tensor, optional
        ``(B,)`` float noise SD of each slice's volume, SUV (0 or more).

    Returns
    -------
    images : torch.Tensor
        ``(B, C, H // 2, W // 2)`` float32.
    scalars : torch.Tensor
        ``(B, 1)`` float32, or ``(B, 2)`` with ``noise``.
    """
    ref = ref.float()
    images = F.avg_pool2d(planes.float() / ref[:, None, None, None], 2)
    columns = [torch.log10(ref * bqml_per_suv.float() / KBQ_PER_ML)]
    if noise is not None:  # floored: a noise-free volume would give -inf
        columns.append(torch.log10((noise.float() / ref).clamp_min(RELATIVE_NOISE_FLOOR)))
    return images, torch.stack(columns, dim=1)


def clip_loss(text_emb: torch.Tensor, image_emb: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE loss of CLIP (Radford et al. 2021, Fig. 3).

    With L2-normalised embeddings ``t_i``, ``v_j`` and logits ``s_ij = tau * t_i . v_j``::

        loss = ( CE_rows(s, i) + CE_cols(s, j) ) / 2

    where row ``i``'s target is column ``i`` (the paired image) and vice versa.

    Parameters
    ----------
    text_emb, image_emb : torch.Tensor
        ``(B, E)`` float embeddings of paired prompts and images.
    logit_scale : torch.Tensor or float
        The multiplier ``tau`` (e.g. :meth:`MetaEncoder.scale`), not its log.

    Returns
    -------
    torch.Tensor
        0-d float loss.
    """
    logits = logit_scale * F.normalize(text_emb, dim=-1) @ F.normalize(image_emb, dim=-1).T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


@torch.no_grad()
def retrieval_top1(text_emb: torch.Tensor, image_emb: torch.Tensor) -> float:
    """Prompt-to-image top-1 retrieval accuracy.

    Parameters
    ----------
    text_emb, image_emb : torch.Tensor
        ``(B, E)`` float embeddings; row ``i`` of each is a pair.

    Returns
    -------
    float
        Fraction of prompts whose most cosine-similar image is their own (chance 1/B).
    """
    sim = F.normalize(text_emb, dim=-1) @ F.normalize(image_emb, dim=-1).T
    target = torch.arange(sim.shape[0], device=sim.device)
    return (sim.argmax(dim=1) == target).float().mean().item()


def save_meta_encoder(path: Path | str, model: MetaEncoder, tokenizer: Tokenizer) -> Path:
    """Write the model with :func:`pet_recon.weights.save_model`, tokenizer in ``extra``.

    The file's metadata holds the model class and ``model.config`` (as for every petrecon
    model) and ``extra = {"tokenizer": tokenizer.config}``, so :func:`load_meta_encoder`
    rebuilds both. Models with LoRA adapters must be merged first
    (:func:`~pet_recon.meta.lora.merge_lora`) or their adapters saved on their own
    (:func:`~pet_recon.meta.lora.lora_state_dict`).

    Returns
    -------
    pathlib.Path
        The written ``.safetensors`` file (list it in the folder's manifest with
        :func:`pet_recon.weights.update_manifest`).
    """
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise ValueError("model has LoRA adapters: merge_lora() it or save lora_state_dict()")
    if model.config["vocab_size"] != tokenizer.vocab_size:
        raise ValueError(f"model vocab_size {model.config['vocab_size']} != tokenizer "
                         f"vocab_size {tokenizer.vocab_size}")
    return save_model(model, path, extra={"tokenizer": tokenizer.config})


def load_meta_encoder(path: Path | str, *, expected_sha256: str | None = None,
                      device: torch.device | str = "cpu") -> tuple[MetaEncoder, Tokenizer]:
    """Verify and load weights written by :func:`save_meta_encoder`.

    Parameters
    ----------
    path : Path or str
        The ``.safetensors`` file.
    expected_sha256 : str, optional
        Its SHA-256; default: the one in the ``manifest.json`` beside it (see
        :func:`pet_recon.weights.load_model`).
    device : torch.device or str
        Device of the returned model.

    Returns
    -------
    model : MetaEncoder
        In eval mode.
    tokenizer : Tokenizer
        Rebuilt from the stored definition.
    """
    model, extra = load_model(path, registry={"MetaEncoder": MetaEncoder},
                              expected_sha256=expected_sha256, device=device)
    if "tokenizer" not in extra:
        raise PetReconError(f"{path}: no tokenizer definition in the weights metadata")
    tokenizer = Tokenizer.from_config(extra["tokenizer"])
    if tokenizer.vocab_size != model.config["vocab_size"]:
        raise PetReconError(f"{path}: tokenizer and model vocabulary sizes differ")
    return cast(MetaEncoder, model), tokenizer
