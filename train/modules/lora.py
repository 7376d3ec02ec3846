"""Rank-r LoRA for nn.Linear (Hu et al., 2022), hand-written so it traces to plain ONNX ops.

``y = W x + b + (alpha / r) * B A dropout(x)``, with ``W, b`` frozen, ``A`` (r, in)
random and ``B`` (out, r) zero, so an adapted layer starts as exactly the frozen one.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

LORA_TARGETS: tuple[str, ...] = ("q", "k", "v", "o")


class LoRALinear(nn.Module):
    """Wraps a frozen ``nn.Linear``; only ``lora_A`` and ``lora_B`` train."""

    def __init__(self, base: nn.Linear, rank: int = 1, alpha: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRA wraps nn.Linear, got {type(base).__name__} (already adapted?)")
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha = int(rank), float(alpha)
        self.scaling = self.alpha / self.rank
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=weight.dtype, device=weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device))
        # The init of the reference implementation (and peft): kaiming-uniform A, zero B.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def forward(self, x: Tensor) -> Tensor:
        update = nn.functional.linear(nn.functional.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with the update folded into the weight (same output in eval mode)."""
        out = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None,
                        dtype=self.base.weight.dtype, device=self.base.weight.device)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scaling * (self.lora_B @ self.lora_A))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out.requires_grad_(False)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}"


def inject_lora(
    encoder: nn.Module,
    rank: int = 1,
    alpha: float = 1.0,
    dropout: float = 0.0,
    targets: Iterable[str] = LORA_TARGETS,
) -> list[LoRALinear]:
    """Wrap the chosen attention projections of every layer of a ModalityEncoder, in place.

    Uses the encoder's ``attention_projections`` / ``replace_projection`` hooks, so it
    works for any backbone the encoders package knows. Returns the new modules.
    """
    targets = tuple(targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown:
        raise ValueError(f"unknown LoRA targets {unknown}; choose from {list(LORA_TARGETS)}")
    added: list[LoRALinear] = []
    for layer, row in enumerate(encoder.attention_projections()):
        for which in targets:
            module = LoRALinear(row[which], rank=rank, alpha=alpha, dropout=dropout)
            encoder.replace_projection(layer, which, module)
            added.append(module)
    return added


def lora_modules(module: nn.Module) -> list[LoRALinear]:
    return [m for m in module.modules() if isinstance(m, LoRALinear)]
