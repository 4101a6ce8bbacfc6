"""Low-rank adaptation (LoRA) of linear layers for site fine-tuning.

LoRA (Hu et al. 2021, arXiv:2106.09685, Eq. 3) keeps a pretrained weight ``W0`` frozen and
learns a low-rank update::

    h = W0 x + (alpha / r) * B A x,    A: (r, in), B: (out, r)

``A`` starts random (Kaiming-uniform, as in the reference implementation ``loralib``) and
``B`` at zero, so an adapted model starts out identical to the base model. MiG-DM
(arXiv:2512.22237, Sec. III.B) adapts its meta-information encoder this way with r = 4.

Typical use on :class:`~pet_recon.meta.encoder.MetaEncoder`::

    apply_lora(model.text)            # freezes model.text, adapts q/k/v/out projections
    ...train, optimiser over p for p in model.parameters() if p.requires_grad...
    save_file(lora_state_dict(model.text), "site.safetensors")   # adapters only
    merge_lora(model.text)            # fold B A into W0 for inference / full save
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

#: Attention projections of :class:`~pet_recon.meta.encoder.SelfAttention`.
DEFAULT_TARGETS: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "out_proj")
_ADAPTER_KEYS = ("lora_a", "lora_b")


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al. 2021, Eq. 3).

    Parameters
    ----------
    base : nn.Linear
        The pretrained layer; its parameters are frozen (``requires_grad=False``).
    rank : int
        Rank ``r`` of the update.
    alpha : float
        Scale numerator: the update is multiplied by ``alpha / r``.

    Attributes
    ----------
    lora_a : nn.Parameter
        ``(r, in_features)``, Kaiming-uniform initialised.
    lora_b : nn.Parameter
        ``(out_features, r)``, zero initialised.
    scaling : float
        ``alpha / r``.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError("rank must be >= 1")
        self.base = base
        self.base.requires_grad_(False)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device,
                                               dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank,
                                               device=base.weight.device,
                                               dtype=base.weight.dtype))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., in_features)`` -> ``(..., out_features)``: ``W0 x + b + s B A x``."""
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scaling

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with weight ``W0 + (alpha / r) B A`` (same outputs).

        Its parameters keep the base layer's ``requires_grad`` (False).
        """
        layer = nn.Linear(self.base.in_features, self.base.out_features,
                          bias=self.base.bias is not None, device=self.base.weight.device,
                          dtype=self.base.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(self.base.weight + self.scaling * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                layer.bias.copy_(self.base.bias)
        return layer.requires_grad_(False)


def _replace(module: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, child, new)


def apply_lora(module: nn.Module, rank: int = 4, alpha: float = 8.0,
               targets: Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """Freeze ``module`` and wrap its target linear layers in :class:`LoRALinear`.

    Every parameter of ``module`` is frozen; afterwards only the adapters' ``lora_a`` and
    ``lora_b`` are trainable. A layer is a target when it is an ``nn.Linear`` whose own name
    (the last part of its qualified name) is in ``targets``.

    Parameters
    ----------
    module : nn.Module
        Model to adapt in place (e.g. ``MetaEncoder.text`` or the whole ``MetaEncoder``).
    rank : int
        LoRA rank ``r`` (MiG-DM uses 4).
    alpha : float
        LoRA ``alpha``; updates are scaled by ``alpha / r``.
    targets : sequence of str
        Names of the layers to adapt.

    Returns
    -------
    list of str
        Qualified names of the adapted layers.
    """
    layers = [(name, m) for name, m in module.named_modules()
              if isinstance(m, nn.Linear) and name.rpartition(".")[2] in targets]
    if not layers:
        raise ValueError(f"no nn.Linear named one of {tuple(targets)} in the module")
    module.requires_grad_(False)
    for name, layer in layers:
        _replace(module, name, LoRALinear(layer, rank, alpha))
    return [name for name, _ in layers]


def merge_lora(module: nn.Module) -> list[str]:
    """Fold every :class:`LoRALinear` of ``module`` into a plain ``nn.Linear``, in place.

    Outputs are unchanged (to float rounding). Returns the qualified names merged.
    """
    layers = [(name, m) for name, m in module.named_modules() if isinstance(m, LoRALinear)]
    for name, layer in layers:
        _replace(module, name, layer.merged())
    return [name for name, _ in layers]


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors (``*.lora_a``, ``*.lora_b``) of ``module``'s state dict."""
    return {k: v for k, v in module.state_dict().items() if k.endswith(_ADAPTER_KEYS)}


def load_lora_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load adapters saved by :func:`lora_state_dict` into a module already passed to
    :func:`apply_lora` with the same targets and rank.

    Raises
    ------
    ValueError
        When the adapter names differ from the module's.
    """
    expected = set(lora_state_dict(module))
    if set(state) != expected:
        raise ValueError(f"adapter keys differ: missing {sorted(expected - set(state))}, "
                         f"unexpected {sorted(set(state) - expected)}")
    module.load_state_dict(dict(state), strict=False)
