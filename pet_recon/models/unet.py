"""Compact conditional U-Net for 2D PET slices (the backbone of MiG-DM's SD1 and SD2).

Layout (DDPM-style, Ho et al. 2020; Dhariwal & Nichol 2021): a 3x3 input convolution, an
encoder of ``len(channel_mults)`` resolution levels ("stages") of ``num_res_blocks``
residual blocks each, separated by stride-2 convolutions, a middle block (residual,
attention, residual), and a mirrored decoder that concatenates the encoder's skip
features. Residual blocks use GroupNorm + SiLU and a timestep-conditioned scale/shift
(``h = norm(h) * (1 + scale) + shift``). Self-attention runs at the levels in
``attention_levels`` and in the middle block; when ``context_dim`` is set, the same blocks
also cross-attend to context tokens (MiG-DM SD2: meta-information tokens, Geng et al.,
arXiv:2512.22237, Sec. III.C).

Projection-domain guidance (MiG-DM SD1, Sec. III.C: sinogram-adapter features are added
"in the final four encoder stages"): ``forward(..., stage_features=[...])`` adds one tensor
to the output of each of the last ``min(4, levels)`` encoder levels, after that level's
last residual/attention block and before its downsampling, so the guided feature also
feeds the decoder through the skip connection. :meth:`UNet.stage_shapes` gives the shapes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pet_recon.weights import register_config

#: Number of final encoder stages that receive projection-domain features (MiG-DM).
GUIDED_STAGES = 4
#: Channels per attention head.
HEAD_DIM = 32


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020).

    Parameters
    ----------
    t : torch.Tensor
        ``(B,)`` timesteps (integer or float), in steps.
    dim : int
        Embedding size (even).
    max_period : float
        Longest wavelength, in steps.

    Returns
    -------
    torch.Tensor
        ``(B, dim)`` float32 embedding ``[cos(t * w_k), sin(t * w_k)]``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block: GroupNorm, SiLU, 3x3 conv, twice; timestep scale/shift in between.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out (a 1x1 convolution matches the skip when they differ).
    time_dim : int or None
        Size of the timestep embedding; ``None`` for no time conditioning.
    dropout : float
        Dropout probability before the second convolution.
    groups : int
        GroupNorm groups.
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int | None,
                 dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time = nn.Linear(time_dim, 2 * out_channels) if time_dim is not None else None
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels
                     else nn.Identity())

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        """``(B, C_in, H, W)``, ``(B, time_dim)`` or None -> ``(B, C_out, H, W)``."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.time is not None and emb is not None:
            scale, shift = self.time(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """``(B, L, n * d)`` -> ``(B, n, L, d)``."""
    b, length, c = x.shape
    return x.reshape(b, length, n, c // n).transpose(1, 2)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over pixels, then optional cross-attention to tokens.

    Parameters
    ----------
    channels : int
        Feature channels ``C``; ``C / HEAD_DIM`` heads if that divides, else one head.
    context_dim : int or None
        Size of context tokens; ``None`` disables cross-attention.
    groups : int
        GroupNorm groups.
    """

    def __init__(self, channels: int, context_dim: int | None, groups: int) -> None:
        super().__init__()
        self.num_heads = channels // HEAD_DIM if channels % HEAD_DIM == 0 else 1
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels))
        if context_dim is None:
            self.cross = None
        else:
            self.cross = nn.ModuleDict({
                "norm": nn.GroupNorm(groups, channels),
                "q": nn.Linear(channels, channels),
                "kv": nn.Linear(context_dim, 2 * channels),
                "proj": _zero(nn.Linear(channels, channels)),
            })

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, Lq, C)``, ``(B, Lk, C)`` x2, ``(B, 1, 1, Lk)`` bool -> ``(B, Lq, C)``."""
        n = self.num_heads
        out = F.scaled_dot_product_attention(_heads(q, n), _heads(k, n), _heads(v, n),
                                             attn_mask=mask)
        return out.transpose(1, 2).flatten(2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend; see :meth:`UNet.forward` for ``context`` and ``context_mask``.

        ``x`` is ``(B, C, H, W)``; the output has the same shape.
        """
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = self.qkv(tokens).chunk(3, dim=-1)
        out = self.proj(self._attend(q, k, v))
        x = x + out.transpose(1, 2).reshape(b, c, h, w)
        if self.cross is None or context is None:
            return x
        tokens = self.cross["norm"](x).flatten(2).transpose(1, 2)
        k, v = self.cross["kv"](context).chunk(2, dim=-1)
        mask = None
        keep = None
        if context_mask is not None:
            # Items whose tokens are all masked get no cross-attention (unconditional path,
            # e.g. classifier-free-guidance dropout): attend to all tokens, then discard.
            keep = context_mask.any(dim=1)
            mask = (context_mask | ~keep[:, None])[:, None, None, :]
        out = self.cross["proj"](self._attend(self.cross["q"](tokens), k, v, mask))
        if keep is not None:
            out = out * keep[:, None, None].to(out.dtype)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class ResAttnBlock(nn.Module):
    """A :class:`ResBlock` followed, if ``attention``, by an :class:`AttentionBlock`."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int | None,
                 dropout: float, groups: int, context_dim: int | None, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(in_channels, out_channels, time_dim, dropout, groups)
        self.attn = AttentionBlock(out_channels, context_dim, groups) if attention else None

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None, context: torch.Tensor | None,
                context_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``; arguments as in :meth:`UNet.forward`."""
        h = self.res(x, emb)
        return self.attn(h, context, context_mask) if self.attn is not None else h


class UNet(nn.Module):
    """Conditional diffusion U-Net for 2D slices.

    Parameters
    ----------
    in_channels : int
        Input channels (e.g. noisy slice + low-dose slice and its neighbours).
    out_channels : int
        Output channels (1 for the predicted clean slice ``x0_hat``).
    base_channels : int
        Channels at full resolution; level ``i`` has ``base_channels * channel_mults[i]``.
    channel_mults : sequence of int
        One multiplier per resolution level; inputs must be divisible by
        ``2 ** (len(channel_mults) - 1)``.
    num_res_blocks : int
        Residual blocks per encoder level (the decoder has one more per level).
    attention_levels : sequence of int
        Level indices with (self- and, if ``context_dim`` is set, cross-) attention; the
        middle block always has attention. Keep to low resolutions (cost ~ (H*W)^2).
    context_dim : int or None
        Size of the context tokens for cross-attention; ``None``: no cross-attention.
    time_embedding : bool
        Condition on the diffusion timestep; ``False`` for a plain conditional network.
    dropout : float
        Dropout in the residual blocks.
    groups : int
        GroupNorm groups; must divide every level's channel count.

    Notes
    -----
    Defaults ``UNet(3, 1)`` (levels 64/32/16/8 px for 64x64 patches, channels 32/64/64/64,
    attention at 16 and 8 px): 1.68 M parameters; with ``context_dim=512``: 2.20 M.
    ``stage_shapes(64, 64)`` is ``[(32, 64, 64), (64, 32, 32), (64, 16, 16), (64, 8, 8)]``.
    """

    @register_config
    def __init__(self, in_channels: int, out_channels: int, base_channels: int = 32,
                 channel_mults: Sequence[int] = (1, 2, 2, 2), num_res_blocks: int = 1,
                 attention_levels: Sequence[int] = (2, 3), context_dim: int | None = None,
                 time_embedding: bool = True, dropout: float = 0.0, groups: int = 8) -> None:
        super().__init__()
        channels = [base_channels * m for m in channel_mults]
        levels = len(channels)
        if any(not 0 <= i < levels for i in attention_levels):
            raise ValueError(f"attention_levels {tuple(attention_levels)} outside 0..{levels - 1}")
        self.levels = levels
        self.base_channels = base_channels
        self.context_dim = context_dim
        self.stage_channels = tuple(channels[max(0, levels - GUIDED_STAGES):])
        time_dim = 4 * base_channels if time_embedding else None
        self.time_mlp = (nn.Sequential(nn.Linear(base_channels, time_dim), nn.SiLU(),
                                       nn.Linear(time_dim, time_dim))
                         if time_dim is not None else None)

        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, out_ch in enumerate(channels):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(ResAttnBlock(ch, out_ch, time_dim, dropout, groups, context_dim,
                                           level in attention_levels))
                ch = out_ch
                skip_channels.append(ch)
            self.down_blocks.append(blocks)
            if level < levels - 1:
                self.downsamples.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_channels.append(ch)

        self.mid1 = ResBlock(ch, ch, time_dim, dropout, groups)
        self.mid_attn = AttentionBlock(ch, context_dim, groups)
        self.mid2 = ResBlock(ch, ch, time_dim, dropout, groups)

        self.up_blocks = nn.ModuleList()
        self.upsamples = nn.ModuleList()
        for level in reversed(range(levels)):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(ResAttnBlock(ch + skip_channels.pop(), channels[level], time_dim,
                                           dropout, groups, context_dim,
                                           level in attention_levels))
                ch = channels[level]
            self.up_blocks.append(blocks)
            if level > 0:
                self.upsamples.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                    nn.Conv2d(ch, ch, 3, padding=1)))

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def stage_shapes(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """Shapes ``(C, H, W)`` of the features :meth:`forward` accepts as ``stage_features``.

        Parameters
        ----------
        height, width : int
            Input size in pixels.

        Returns
        -------
        list of tuple
            One ``(channels, height / 2**level, width / 2**level)`` per guided level,
            shallowest first (the last ``min(4, levels)`` encoder levels).
        """
        self._check_size(height, width)
        first = self.levels - len(self.stage_channels)
        return [(c, height >> (first + i), width >> (first + i))
                for i, c in enumerate(self.stage_channels)]

    def _check_size(self, height: int, width: int) -> None:
        factor = 2 ** (self.levels - 1)
        if height % factor or width % factor:
            raise ValueError(f"input size {height}x{width} is not divisible by {factor} "
                             f"({self.levels} U-Net levels)")

    def forward(self, x: torch.Tensor, t: torch.Tensor | None, *,
                context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
                stage_features: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Predict the output image.

        Parameters
        ----------
        x : torch.Tensor
            ``(B, in_channels, H, W)`` float input; ``H`` and ``W`` divisible by
            ``2 ** (levels - 1)``.
        t : torch.Tensor or None
            ``(B,)`` or scalar diffusion timesteps (``0..T``, integer or float); ``None``
            exactly when the model was built with ``time_embedding=False``.
        context : torch.Tensor, optional
            ``(B, L, context_dim)`` context tokens for cross-attention (needs
            ``context_dim``); ``None`` runs without cross-attention.
        context_mask : torch.Tensor, optional
            ``(B, L)`` bool, ``True`` for tokens to attend to. Items with no ``True`` token
            skip cross-attention (same result as ``context=None`` for them).
        stage_features : sequence of torch.Tensor, optional
            Projection-domain features added to the last ``min(4, levels)`` encoder stages,
            shapes ``(B, *s)`` for ``s`` in :meth:`stage_shapes`, shallowest first.

        Returns
        -------
        torch.Tensor
            ``(B, out_channels, H, W)``; under autocast it has the autocast dtype.
        """
        b, _, height, width = x.shape
        self._check_size(height, width)
        if context is not None and self.context_dim is None:
            raise ValueError("context given but the model was built without context_dim")
        if (t is None) != (self.time_mlp is None):
            raise ValueError("t must be given exactly when the model has a time embedding")
        if stage_features is not None:
            expected = [(b, *s) for s in self.stage_shapes(height, width)]
            got = [tuple(f.shape) for f in stage_features]
            if got != expected:
                raise ValueError(f"stage_features shapes {got} != expected {expected}")
        emb = None
        if self.time_mlp is not None and t is not None:
            t = t.reshape(-1).expand(b) if t.numel() == 1 else t
            emb = self.time_mlp(timestep_embedding(t, self.base_channels))

        first_guided = self.levels - len(self.stage_channels)
        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down_blocks):
            for block in blocks:
                h = block(h, emb, context, context_mask)
                skips.append(h)
            if stage_features is not None and level >= first_guided:
                # MiG-DM: projection-domain feature F_s added to this encoder stage's output
                h = h + stage_features[level - first_guided]
                skips[-1] = h
            if level < self.levels - 1:
                h = self.downsamples[level](h)
                skips.append(h)

        h = self.mid1(h, emb)
        h = self.mid_attn(h, context, context_mask)
        h = self.mid2(h, emb)

        for i, blocks in enumerate(self.up_blocks):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
            if i < self.levels - 1:
                h = self.upsamples[i](h)
        return self.conv_out(F.silu(self.norm_out(h)))
