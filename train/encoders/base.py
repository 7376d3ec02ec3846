"""The uniform "tokens -> transformer -> outputs" interface every modality encoder implements.

An encoder is a Hugging Face backbone (one adapter per family, see ``families``) whose layers we run
ourselves, so that methods can put extra tokens *before* CLS (CMPT proxy tokens,
Kim & Kim read-only prompts) and choose who may attend to them. We never call the
backbone's own ``forward``: it builds its own mask from a 2-D padding mask and has
no notion of read-only prefixes.

Masks in transformers 5.23 (read from modeling_bert.py / modeling_vit.py; the other families'
layers in ``families`` take and forward the mask the same way):
- ``BertLayer(hidden, attention_mask)`` and ``ViTLayer(hidden, attention_mask)``
  return a plain tensor (no tuple any more) and pass ``attention_mask`` unchanged to
  the attention function picked by ``config._attn_implementation``.
- The "eager" function adds the mask to the raw scores before softmax, so a float
  (B, 1, Q, K) additive mask (0 = attend, very negative = blocked) is honoured exactly.
- We pin "eager" (``attn_implementation="eager"``) because: flash attention ignores
  arbitrary 4-D masks; SDPA honours them but its export lowering differs between
  exporters/opsets, while eager is plain MatMul/Add/Softmax in every ONNX path, and
  FP16/INT8 tools later see ordinary nodes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

META_FILE = "mmedge_encoder.json"
EXTRA_WEIGHTS_FILE = "mmedge_extra.safetensors"
FORMAT_VERSION = 1
PROJECTION_KEYS: tuple[str, ...] = ("q", "k", "v", "o")
ATTN_IMPLEMENTATION = "eager"  # see module docstring


def checkpoint_has_pooler(source: str) -> bool:
    """Whether a local HF checkpoint holds pooler weights (stock BERT/ViT do, ours do not).

    We load with ``add_pooling_layer`` set to match and drop the pooler afterwards,
    so the load report lists no spurious UNEXPECTED/MISSING pooler keys and still
    flags every real mismatch. Hub ids (not local) fall back to False.
    """
    directory = Path(source)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        keys = list(json.loads(index.read_text()).get("weight_map", {}))
    elif (directory / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(directory / "model.safetensors"), framework="pt") as handle:
            keys = list(handle.keys())
    else:
        return False
    return any(k.split(".")[0] == "pooler" or ".pooler." in k for k in keys)


def attention_bias(keep: Tensor, num_prefix: int, readonly_prefix: bool, dtype: torch.dtype) -> Tensor:
    """Additive attention mask (B, 1, Q, K) from ``keep`` (B, L) over the full sequence.

    Built from tensor ops only (no branching on values), so it traces with dynamic
    batch and sequence length. ``num_prefix`` and ``readonly_prefix`` are structural
    (Python) values fixed per exported graph.
    """
    allowed = keep[:, None, None, :]  # (B, 1, 1, K): padding keys are never attended
    if readonly_prefix and num_prefix > 0:
        pos = torch.arange(keep.shape[1], device=keep.device)
        is_prefix = pos < num_prefix
        # Read-only prefix (RPO's mask): no query, prefix or original, ever sees a prefix key. Prefix
        # queries read CLS and inputs only, so each prefix token is independent of the others.
        visible = ~is_prefix  # (K,)
        allowed = allowed & visible[None, None, None, :]  # (B, 1, 1, K)
    # finfo.min, not -inf: a fully masked row then softmaxes to uniform instead of NaN.
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)


def additive_attention_bias(keep: Tensor, num_prefix: int, readonly_prefix: bool, dtype: torch.dtype) -> Tensor:
    """The same bias as ``attention_bias``, written as ``(1 - keep) * min`` for export.

    Numerically identical (0 * min = 0, 1 * min = min). onnxruntime's Attention fuser matches
    exactly ``Add(scores, Mul(Sub(1, Cast(Unsqueeze(Unsqueeze(keep_2d)))), min))``; a ``Where``
    matches none of its patterns. A read-only prefix hides the prefix keys from every query, so it
    is a key mask too: it is folded into the 2-D ``keep`` first and the same fusable form follows.
    """
    low = torch.finfo(dtype).min
    if readonly_prefix and num_prefix > 0:
        pos = torch.arange(keep.shape[1], device=keep.device)
        keep = keep & (pos >= num_prefix)[None, :]
    return (1.0 - keep.unsqueeze(1).unsqueeze(2).to(dtype)) * low


class FusableAttention(nn.Module):
    """Export-time self-attention in the form onnxruntime's transformer fuser turns into ``Attention``.

    Same maths as transformers' eager attention (softmax(q k^T * scale + mask) v), but: the head
    count is a Python literal in every Reshape (the fuser reads it from there), the scale is a
    ``Div`` by sqrt(head_dim) right after ``q @ k^T`` (the fuser's "path1"), and k is transposed
    in one step. Drop-in for BertSelfAttention (``o`` None: BertSelfOutput follows) and for
    ViTAttention (``o`` given): both are called ``(hidden, mask, **kw)`` and return a pair.
    Used only by ``ModalityEncoder.use_fusable_attention`` on an export copy; training keeps
    the stock transformers modules.
    """

    def __init__(self, q: nn.Module, k: nn.Module, v: nn.Module, num_heads: int, o: nn.Module | None = None) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = q, k, v, o
        out_features = int(q.weight.shape[0])
        if out_features % num_heads:
            raise ValueError(f"projection width {out_features} is not a multiple of {num_heads} heads")
        self.num_heads, self.head_dim = int(num_heads), out_features // int(num_heads)
        self.divisor = float(self.head_dim) ** 0.5

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None, *args: Any,
                **kwargs: Any) -> tuple[Tensor, None]:
        b, s = hidden_states.shape[0], hidden_states.shape[1]
        h, d = self.num_heads, self.head_dim
        q = self.q(hidden_states).reshape(b, s, h, d).transpose(1, 2)
        k = self.k(hidden_states).reshape(b, s, h, d).permute(0, 2, 3, 1)
        v = self.v(hidden_states).reshape(b, s, h, d).transpose(1, 2)
        scores = torch.matmul(q, k) / self.divisor
        if attention_mask is not None:
            scores = scores + attention_mask
        context = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2).reshape(b, s, h * d)
        return (self.o(context) if self.o is not None else context), None


class ModalityEncoder(nn.Module):
    """Base class: subclasses set the backbone and implement ``embed``.

    ``build_config`` is the small JSON-able dict the encoder was built from; it is
    written to ``mmedge_encoder.json`` so the directory can be rebuilt.
    """

    architecture: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]] = ()  # HF config model_type values this adapter loads
    serves: ClassVar[str] = ""  # the modality type a checkpoint of those model types becomes
    input_names: tuple[str, ...]
    fusable_attention: bool = False  # set by use_fusable_attention (export copies only)
    # Attribute paths of q/k/v/out projections inside one transformer layer.
    projection_paths: ClassVar[dict[str, str]]

    def __init__(self, modality_type: str, backbone: nn.Module, build_config: dict[str, Any]) -> None:
        super().__init__()
        self.modality_type = modality_type
        self.backbone = backbone
        self.build_config = dict(build_config)
        self.hidden_size = int(backbone.config.hidden_size)
        self.num_layers = int(backbone.config.num_hidden_layers)

    # ---- architecture hooks -------------------------------------------------
    def layers(self) -> nn.ModuleList:
        raise NotImplementedError

    def final_norm(self) -> nn.Module | None:
        """The norm after the last layer (ViT has one; post-LN BERT does not)."""
        return None

    def embed(self, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """tokens (B, T, H) with CLS at 0 and positions added; keep (B, T) bool, True = real."""
        raise NotImplementedError

    # ---- the shared forward -------------------------------------------------
    def encode(
        self,
        tokens: Tensor,
        keep: Tensor,
        prefix: Tensor | None = None,
        readonly_prefix: bool = False,
    ) -> Tensor:
        """Run all layers over ``[prefix, tokens]``; returns (B, P + T, H), CLS at index P."""
        num_prefix = 0
        keep = keep.to(torch.bool)
        if prefix is not None:
            if prefix.dim() == 2:  # (P, H): one learned prefix shared by the batch
                prefix = prefix.unsqueeze(0)
            if prefix.shape[-1] != tokens.shape[-1]:
                raise ValueError(
                    f"prefix hidden size {prefix.shape[-1]} != encoder hidden size {tokens.shape[-1]}; "
                    f"project the prefix to {tokens.shape[-1]} first"
                )
            num_prefix = int(prefix.shape[1])
            prefix = prefix.to(tokens.dtype).expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([prefix, tokens], dim=1)
            keep = torch.cat([torch.ones_like(keep[:, :1]).expand(-1, num_prefix), keep], dim=1)
        mask = self.attention_mask(keep, num_prefix, readonly_prefix, tokens.dtype)
        hidden = tokens
        for layer in self.layers():
            hidden = layer(hidden, mask)
        norm = self.final_norm()
        hidden = norm(hidden) if norm is not None else hidden
        return self.readout(hidden, keep, num_prefix)

    def attention_mask(self, keep: Tensor, num_prefix: int, readonly_prefix: bool, dtype: torch.dtype) -> Tensor:
        """The additive (B, 1, Q, K) mask every layer gets; bidirectional unless a family overrides it."""
        bias = additive_attention_bias if self.fusable_attention else attention_bias
        return bias(keep, num_prefix, readonly_prefix, dtype)

    def readout(self, hidden: Tensor, keep: Tensor, num_prefix: int) -> Tensor:
        """The returned sequence; identity for backbones whose embed already put a CLS at 0.

        Backbones without a CLS token (SigLIP, Wav2Vec2) insert a pooled token at ``num_prefix``
        here, computed from the input tokens only, so a read-only prefix stays unread by it.
        """
        return hidden

    def forward(
        self,
        inputs: dict[str, Tensor],
        prefix: Tensor | None = None,
        readonly_prefix: bool = False,
    ) -> Tensor:
        tokens, keep = self.embed(inputs)
        return self.encode(tokens, keep, prefix=prefix, readonly_prefix=readonly_prefix)

    def _require(self, inputs: dict[str, Tensor]) -> list[Tensor]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(
                f"{self.modality_type} encoder needs inputs {list(self.input_names)}; missing {missing}, "
                f"got {sorted(inputs)} (names come from runtime.preprocess)"
            )
        return [inputs[n] for n in self.input_names]

    # ---- export form ----------------------------------------------------------
    def use_fusable_attention(self) -> int:
        """Switch this encoder, in place, to the export-time attention form; returns the layer count.

        Call it on an export copy after folding LoRA (``merged()``): the fuser needs plain
        Linear q/k/v. Outputs are the same as the stock form within float rounding.
        """
        heads = int(self.backbone.config.num_attention_heads)
        # The attention module is the parent of q (BERT "attention.self", ViT "attention"); it also
        # applies the output projection when o hangs off the same parent (ViT), else BertSelfOutput does.
        q_parent = self.projection_paths["q"].rsplit(".", 1)[0]
        includes_output = self.projection_paths["o"].rsplit(".", 1)[0] == q_parent
        rows = self.attention_projections()
        for i, (layer, row) in enumerate(zip(self.layers(), rows)):
            foreign = [k for k in ("q", "k", "v", "o") if type(row[k]) is not nn.Linear]
            if foreign:
                raise TypeError(f"layer {i} projections {foreign} are {[type(row[k]).__name__ for k in foreign]}, "
                                "not nn.Linear; merge LoRA (LoRALinear.merged()) before use_fusable_attention")
            *path, attr = q_parent.split(".")
            parent: nn.Module = layer
            for name in path:
                parent = getattr(parent, name)
            setattr(parent, attr, FusableAttention(row["q"], row["k"], row["v"], heads,
                                                   row["o"] if includes_output else None))
        self.fusable_attention = True
        return len(self.layers())

    # ---- LoRA hooks -----------------------------------------------------------
    def _projection_parent(self, layer: int, which: str) -> tuple[nn.Module, str]:
        if which not in self.projection_paths:
            raise KeyError(f"unknown projection {which!r}; choose one of {list(self.projection_paths)}")
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range; this encoder has {self.num_layers} layers")
        parent: nn.Module = self.layers()[layer]
        *path, attr = self.projection_paths[which].split(".")
        for name in path:
            parent = getattr(parent, name)
        return parent, attr

    def attention_projections(self) -> list[dict[str, nn.Module]]:
        """Per layer {"q", "k", "v", "o"} -> the module in use (nn.Linear unless replaced)."""
        out = []
        for i in range(self.num_layers):
            row = {}
            for which in PROJECTION_KEYS:
                parent, attr = self._projection_parent(i, which)
                row[which] = getattr(parent, attr)
            out.append(row)
        return out

    def replace_projection(self, layer: int, which: str, module: nn.Module) -> None:
        """Swap one projection in place; the HF layer calls it by attribute, so forward uses it."""
        parent, attr = self._projection_parent(layer, which)
        setattr(parent, attr, module)

    # ---- persistence ----------------------------------------------------------
    def extra_state_dict(self) -> dict[str, Tensor]:
        """Weights outside the HF backbone (frame projection, CLS), saved as safetensors."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def metadata(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "modality_type": self.modality_type,
            "architecture": self.architecture,
            "input_names": list(self.input_names),
            "hidden_size": self.hidden_size,
            "num_layers": self.num_layers,
            "config": self.build_config,
        }

    def save_pretrained(self, directory: str | Path) -> None:
        """HF files (config.json + model.safetensors), mmedge_encoder.json, extra safetensors."""
        from safetensors.torch import save_file

        directory = Path(directory)
        foreign = [
            f"layer {i} {k}: {type(m).__name__}"
            for i, row in enumerate(self.attention_projections())
            for k, m in row.items()
            if type(m) is not nn.Linear
        ]
        if foreign:
            # The HF checkpoint would carry wrapper keys that no stock loader understands.
            raise ValueError(
                "cannot save an encoder whose attention projections were replaced "
                f"({', '.join(foreign[:4])}{', ...' if len(foreign) > 4 else ''}); merge the LoRA weights "
                "back into nn.Linear first, or save the adapter state_dict with safetensors"
            )
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)
        extra = self.extra_state_dict()
        if extra:
            save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, str(directory / EXTRA_WEIGHTS_FILE))
        (directory / META_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")

    def load_extra_weights(self, directory: Path) -> None:
        """Load the non-HF weights written by ``save_pretrained``; strict about names."""
        expected = set(self.extra_state_dict())
        if not expected:
            return
        path = directory / EXTRA_WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; it should hold {sorted(expected)}")
        from safetensors.torch import load_file

        state = load_file(str(path))
        result = self.load_state_dict(state, strict=False)
        unexpected = list(result.unexpected_keys)
        missing = [k for k in result.missing_keys if not k.startswith("backbone.")]
        if unexpected or missing:
            raise ValueError(f"{path}: unexpected keys {unexpected}, missing keys {missing}")
