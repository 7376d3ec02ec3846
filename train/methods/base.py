"""The method registry and the per-pattern interface every method implements.

A trained model exposes ``pattern_module(pattern)``: an ``nn.Module`` that takes only
the present modalities' tensors and holds only their encoders plus the shared
fusion/head pieces. Evaluation runs through it and the exporter traces it, so what
we measure is what ships.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from runtime.patterns import Pattern
from train.batches import Batch
from train.data.types import ModalitySpec, MultimodalDataset, Task

# Not "embedding": the dynamo ONNX exporter names aten.embedding's value "embedding" (every
# BERT-based encoder has one) and then fails with "Duplicate definition of name (embedding)".
OUTPUT_NAMES: tuple[str, ...] = ("logits", "probabilities", "fused_embedding")


@dataclass(frozen=True)
class DatasetInfo:
    """What a method needs to know about the data; JSON round-trips via to_dict/from_dict."""

    name: str
    task: Task
    labels: list[str]
    modalities: dict[str, ModalitySpec]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @classmethod
    def from_dataset(cls, data: MultimodalDataset) -> "DatasetInfo":
        return cls(data.name, data.task, list(data.labels), dict(data.modalities))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "task": self.task, "labels": list(self.labels),
                "modalities": {m: dataclasses.asdict(s) for m, s in self.modalities.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetInfo":
        mods = {m: ModalitySpec(s["name"], s["type"], dict(s.get("preprocess", {}))) for m, s in d["modalities"].items()}
        return cls(d["name"], d["task"], list(d["labels"]), mods)


# ---- shared helpers -----------------------------------------------------------
def task_loss(task: Task, logits: Tensor, labels: Tensor) -> Tensor:
    """BCE for multi-label, cross-entropy otherwise (binary is two-class CE)."""
    if task == "multi-label":
        return nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)


def probabilities(task: Task, logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, dim=-1)


def present_matrix(batch: Batch, modalities: Sequence[str], device: torch.device) -> Tensor:
    """(B, M) bool: which rows delivered each modality (in the data, before any dropout)."""
    out = torch.zeros(batch.size, len(modalities), dtype=torch.bool, device=device)
    for i, m in enumerate(modalities):
        if m in batch.modalities:
            out[batch.modalities[m].rows.to(device), i] = True
    return out


def scatter_rows(values: Tensor, rows: Tensor, size: int) -> Tensor:
    """Place per-present-row values (n, ...) into a zero (size, ...) tensor at ``rows``."""
    out = values.new_zeros((size, *values.shape[1:]))
    return out.index_copy(0, rows.to(values.device), values)


def sample_modality_dropout(present: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Per row, a uniformly random non-empty subset of the present modalities.

    For two modalities this is the paper's "use both, or randomly drop one" with
    1/3 each; rows with one modality keep it. iid coin flips conditioned on a
    non-empty result are uniform over the non-empty subsets, so we redraw empty rows.
    """
    keep = torch.zeros_like(present)
    todo = torch.ones(present.shape[0], dtype=torch.bool, device=present.device)
    while bool(todo.any()):
        flips = torch.rand(present.shape, generator=generator, device=present.device) < 0.5
        draw = flips & present
        keep = torch.where(todo[:, None], draw, keep)
        todo = ~keep.any(dim=1) & present.any(dim=1)
    return keep


def freeze_and_adapt(encoders: Mapping[str, nn.Module], rank: int, alpha: float, dropout: float) -> None:
    """Freeze every pretrained weight; add rank-r LoRA on q, k, v, o of every layer (rank 0: none)."""
    from train.modules.lora import inject_lora

    for enc in encoders.values():
        enc.requires_grad_(False)
        if rank > 0:
            inject_lora(enc, rank=rank, alpha=alpha, dropout=dropout)


def shared_width(encoders: Mapping[str, Any], why: str) -> int:
    widths = {m: int(e.hidden_size) for m, e in encoders.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(
            f"{why}, so all encoders must share one hidden size; got {widths}. Pretrain the scratch encoders "
            "with `mmedge train unimodal --hidden-size H` (H = the text encoder's width when there is text)"
        )
    return next(iter(widths.values()))


# ---- the per-pattern module ------------------------------------------------------
class PatternModule(nn.Module):
    """One availability pattern's branch: positional inputs in ``input_names`` order.

    Subclasses implement ``fuse(inputs) -> (logits, embedding)`` where ``inputs`` maps
    modality -> {input name -> tensor}. No Python branching on tensor values, so
    ``torch.onnx.export`` traces it.
    """

    output_names: list[str] = list(OUTPUT_NAMES)

    def __init__(self, pattern: Pattern, encoders: Mapping[str, nn.Module], task: Task) -> None:
        super().__init__()
        self.pattern = pattern
        self.modalities = sorted(pattern)
        self.task = task
        # The same module objects as the model's (shared weights), for present modalities only.
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})
        self.input_spec: list[tuple[str, str]] = [(m, n) for m in self.modalities for n in encoders[m].input_names]
        self.input_names: list[str] = [f"{m}.{n}" for m, n in self.input_spec]

    def fuse(self, inputs: dict[str, dict[str, Tensor]]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, *tensors: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if len(tensors) != len(self.input_spec):
            raise TypeError(f"pattern {self.pattern.key} takes {len(self.input_spec)} inputs "
                            f"{self.input_names}, got {len(tensors)}")
        inputs: dict[str, dict[str, Tensor]] = {m: {} for m in self.modalities}
        for (m, n), t in zip(self.input_spec, tensors):
            inputs[m][n] = t
        logits, embedding = self.fuse(inputs)
        return logits, probabilities(self.task, logits), embedding


def pattern_inputs(batch: Batch, module: PatternModule) -> tuple[Tensor, ...]:
    """The positional inputs of ``module`` from a batch in which every row has its modalities."""
    for m in module.modalities:
        mb = batch.modalities.get(m)
        if mb is None or len(mb.rows) != batch.size:
            have = 0 if mb is None else len(mb.rows)
            raise ValueError(f"pattern {module.pattern.key} needs {m!r} in every row; {have}/{batch.size} rows have it")
    return tuple(batch.modalities[m].inputs[n] for m, n in module.input_spec)


# ---- the model base and registry ---------------------------------------------------
class MultimodalModel(nn.Module):
    """Base of every method. ``forward(batch)`` follows train.loop's contract."""

    method_name: ClassVar[str] = ""
    config_class: ClassVar[type] = dict

    def __init__(self, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: Any) -> None:
        super().__init__()
        missing = sorted(set(info.modalities) - set(encoders))
        if missing:
            raise ValueError(f"no encoder for modalities {missing}; got encoders for {sorted(encoders)}")
        self.info = info
        self.config = config
        self.modalities: list[str] = sorted(info.modalities)
        self.task: Task = info.task
        self.num_classes = info.num_classes
        self.encoders = nn.ModuleDict({m: encoders[m] for m in self.modalities})

    @classmethod
    def parse_config(cls, config: Mapping[str, Any] | None) -> Any:
        config = dict(config or {})
        names = {f.name for f in dataclasses.fields(cls.config_class)}
        unknown = sorted(set(config) - names)
        if unknown:
            raise ValueError(f"unknown {cls.method_name} option(s) {unknown}; valid: {sorted(names)}")
        return cls.config_class(**config)

    @classmethod
    def build(cls, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: Mapping[str, Any] | None = None
              ) -> "MultimodalModel":
        """Freshly adapted model from pretrained ``encoders`` (modified in place: frozen + LoRA)."""
        return cls(info, encoders, cls.parse_config(config))

    def to_config(self) -> dict[str, Any]:
        return {"method": self.method_name, "config": dataclasses.asdict(self.config)}

    def check_pattern(self, pattern: Pattern) -> Pattern:
        pattern = Pattern(pattern)
        extra = sorted(pattern - set(self.modalities))
        if extra:
            raise ValueError(f"pattern {pattern.key} names modalities {extra} this model does not have; "
                             f"it has {self.modalities}")
        return pattern

    def pattern_module(self, pattern: Pattern) -> PatternModule:
        raise NotImplementedError

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def parameter_counts(self) -> dict[str, int]:
        params = list(self.parameters())
        return {"learnable": sum(p.numel() for p in params if p.requires_grad),
                "total": sum(p.numel() for p in params)}


_REGISTRY: dict[str, type[MultimodalModel]] = {}
M = TypeVar("M", bound=type[MultimodalModel])


def register(name: str) -> Callable[[M], M]:
    def deco(cls: M) -> M:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"method {name!r} is already registered by {_REGISTRY[name].__qualname__}")
        cls.method_name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def get_method(name: str) -> type[MultimodalModel]:
    import train.methods  # noqa: F401  (registers the built-in methods)

    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; available: {available_methods()}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    import train.methods  # noqa: F401

    return sorted(_REGISTRY)


def build_method(name: str, info: DatasetInfo, encoders: Mapping[str, nn.Module],
                 config: Mapping[str, Any] | None = None) -> MultimodalModel:
    return get_method(name).build(info, encoders, config)
