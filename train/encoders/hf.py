"""Loading a stock Hugging Face backbone for one of the architecture-family adapters.

Every adapter loads with ``attn_implementation="eager"`` (see ``base``) and drops heads it
never runs (BERT/ViT poolers, CLIP projections live in other classes anyway), so nothing
untrained or unused ends up trainable or exported.
"""
from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from runtime.errors import ConfigError

from .base import ATTN_IMPLEMENTATION, checkpoint_has_pooler


class PretrainedOnly:
    """Mixin for adapters that wrap a pretrained checkpoint only: no scratch build from a size preset."""

    display_name: ClassVar[str] = ""

    @classmethod
    def from_config(cls, config: dict[str, Any], modality_type: str = "") -> Any:
        name = cls.display_name or getattr(cls, "architecture", cls.__name__)
        raise ConfigError(f"{name} encoders are loaded from a pretrained directory (--encoder MODALITY=DIR_OR_ID), "
                          "not built from a size preset")


def load_backbone(class_name: str, source: str, local_files_only: bool, pooler: bool = False) -> nn.Module:
    """``transformers.<class_name>.from_pretrained(source)``; ``pooler``: the class takes add_pooling_layer."""
    import transformers

    cls = getattr(transformers, class_name)
    kwargs: dict[str, Any] = {"add_pooling_layer": checkpoint_has_pooler(source)} if pooler else {}
    return cls.from_pretrained(source, attn_implementation=ATTN_IMPLEMENTATION, local_files_only=local_files_only,
                               **kwargs)


def drop_pooler(backbone: nn.Module) -> nn.Module:
    """Remove an NSP/CLS pooler in place: we return all tokens, and it would be a dangling trainable head."""
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None
    return backbone
