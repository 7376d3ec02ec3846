"""Which adapter serves a Hugging Face ``model_type``: one small file per architecture family.

An adapter is a ``ModalityEncoder`` subclass that knows, for its family, how inputs are
embedded, where the layer stack is, how the 4-D mask reaches attention (every family here
calls its layers ``layer(hidden, mask)`` with an additive (B, 1, Q, K) mask under "eager"),
which modules LoRA wraps and BitFit trains (``projection_paths``; biases), and the final norm.
A ``model_type`` that several modalities share (a full CLIP or SigLIP checkpoint has both
towers) needs the modality type to pick one.
"""
from __future__ import annotations

from runtime.errors import ConfigError
from .base import ModalityEncoder
from .clip_text import ClipTextEncoder
from .clip_vision import ClipVisionEncoder, SiglipVisionEncoder
from .deit import DeitEncoder
from .dinov2 import Dinov2Encoder
from .distilbert import DistilBertEncoder
from .image import ImageEncoder
from .roberta import RobertaEncoder
from .siglip_text import SiglipTextEncoder
from .text import TextEncoder
from .wav2vec2 import Wav2Vec2Encoder

# model_type -> {modality type -> adapter}
FAMILIES: dict[str, dict[str, type[ModalityEncoder]]] = {}
ADAPTERS: tuple[type[ModalityEncoder], ...] = (
    TextEncoder, RobertaEncoder, DistilBertEncoder, ClipTextEncoder, SiglipTextEncoder,
    ImageEncoder, DeitEncoder, Dinov2Encoder, ClipVisionEncoder, SiglipVisionEncoder,
    Wav2Vec2Encoder,
)
for _adapter, _modality in [(a, a.serves) for a in ADAPTERS]:
    for _model_type in _adapter.model_types:
        FAMILIES.setdefault(_model_type, {})[_modality] = _adapter


def supported_model_types() -> str:
    """``bert (text), ...``: for error messages."""
    return ", ".join(f"{t} ({'/'.join(sorted(m))})" for t, m in sorted(FAMILIES.items()))


def adapter_for(model_type: str, modality_type: str | None, source: str) -> type[ModalityEncoder]:
    """The adapter for a checkpoint's ``model_type``; ``modality_type`` None picks the only one."""
    served = FAMILIES.get(model_type)
    if served is None:
        raise ConfigError(f"{source}: model_type {model_type!r} is not supported; supported model types: "
                         f"{supported_model_types()}")
    if modality_type is None:
        if len(served) > 1:
            raise ConfigError(f"{source}: a {model_type} checkpoint serves {sorted(served)}; say which modality "
                             "type to load it as")
        return next(iter(served.values()))
    if modality_type not in served:
        raise ConfigError(f"{source} is a {model_type} model ({'/'.join(sorted(served))}), not a {modality_type!r} "
                         f"encoder; supported model types: {supported_model_types()}")
    return served[modality_type]
