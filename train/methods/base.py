"""The interface every method implements (the registry is ``train.methods.registry``).

A method is one ``MultimodalModel`` subclass in one file of ``train.methods``, registered
with ``@register(name)``. The seams it may use, all with defaults:

- ``config_class``: a dataclass of options (``--set KEY=VALUE``; listed by ``--help``).
- ``uses_unimodal_heads``: phase 1 hands over each modality's pretrained linear head as
  well as its encoder (``build(..., heads=...)`` -> ``load_unimodal_heads``).
- ``adapt_encoders(encoders, mode, ...)``: frozen, LoRA, BitFit (bias only) or full
  fine-tuning of the pretrained encoders; the mode is reported by ``encoder_adaptation``.
- ``make_optimizer(params, loop_cfg)``: AdamW by default; ``lr_factor(total, warmup)``: the
  schedule, CMPT's warm-up at 0.1x then poly(0.9) by default.
- ``train_step(batch, ctx)``: one batch of training; by default forward, backward, clip,
  optimiser step. A method with several optimiser steps per batch or a gradient edit
  between backward and step overrides it (see ``StepContext`` for the contract).
- ``pattern_module(pattern)``: an ``nn.Module`` that takes only the present modalities'
  tensors and holds only their encoders plus the shared fusion/head pieces. Evaluation
  runs through it and the exporter traces it, so what we measure is what ships.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from runtime.errors import ConfigError
from runtime.patterns import Pattern, feed_name
from train.engine.batches import Batch
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


EncoderAdaptation = Literal["frozen", "lora", "bitfit", "full"]
ADAPTATIONS: tuple[str, ...] = ("frozen", "lora", "bitfit", "full")


def adapt_encoders(encoders: Mapping[str, nn.Module], mode: str, *, lora_rank: int = 1, lora_alpha: float = 1.0,
                   lora_dropout: float = 0.1) -> None:
    """Set which pretrained encoder weights train, in place.

    frozen: none. lora: none of the pretrained weights, plus rank-r LoRA on q, k, v, o of
    every layer. bitfit: only the bias terms (Zaken et al.; every parameter whose name ends
    in ``bias``, LayerNorm biases included). full: every weight an input can reach (the word
    embeddings of an encoder without token inputs stay frozen).
    """
    if mode not in ADAPTATIONS:
        raise ConfigError(f"unknown encoder adaptation {mode!r}; choose one of {list(ADAPTATIONS)}")
    for enc in encoders.values():
        enc.requires_grad_(mode == "full")
        if mode == "full":
            for name, param in enc.named_parameters():
                if unread_parameter(enc, name):
                    param.requires_grad_(False)
        if mode == "bitfit":
            for name, param in enc.named_parameters():
                param.requires_grad_(name.endswith("bias"))
        elif mode == "lora" and lora_rank > 0:
            from train.modules.lora import inject_lora

            inject_lora(enc, rank=lora_rank, alpha=lora_alpha, dropout=lora_dropout)


def unread_parameter(encoder: nn.Module, name: str) -> bool:
    """A weight no input can reach: the BERT word embeddings of an encoder fed frames or patches
    (no ``input_ids``). Trainable, it would get no gradient and only decay under weight decay."""
    return "word_embeddings" in name and "input_ids" not in getattr(encoder, "input_names", ("input_ids",))


def freeze_and_adapt(encoders: Mapping[str, nn.Module], rank: int, alpha: float, dropout: float) -> None:
    """Freeze every pretrained weight; add rank-r LoRA on q, k, v, o of every layer (rank 0: none)."""
    adapt_encoders(encoders, "lora" if rank > 0 else "frozen", lora_rank=rank, lora_alpha=alpha,
                   lora_dropout=dropout)


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
        self.input_names: list[str] = [feed_name(m, n) for m, n in self.input_spec]

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


# ---- the training-step contract -----------------------------------------------------
@dataclass
class StepContext:
    """What ``train_step`` gets from the loop, once per batch.

    Contract for an override of ``MultimodalModel.train_step``:
    - compute losses through ``ctx.forward(batch, **kwargs)``, never ``self.forward``: under
      ``accelerate launch`` it is the data-parallel wrapper's forward, whose backward
      all-reduces the gradients; ``self`` is the unwrapped model;
    - call ``ctx.backward(loss)`` (not ``loss.backward()``), ``ctx.clip()`` before each step,
      and ``ctx.optimizer.step()`` / ``ctx.optimizer.zero_grad()`` as often as the method needs;
    - do not step the learning-rate schedule: the loop steps it once per batch, whatever the
      number of optimiser steps inside (one schedule step = one batch of one process);
    - return plain floats for logging; ``"loss"`` is required.
    Under data parallelism the loop enables unused-parameter detection, so a forward that
    uses only some parameters (one modality's encoder) is fine.
    """

    forward: Callable[..., dict[str, Tensor]]
    optimizer: torch.optim.Optimizer
    backward: Callable[[Tensor], None]
    clip: Callable[[], None]
    step: int  # schedule steps done before this batch (per process)
    epoch: int
    steps_per_epoch: int


def default_train_step(batch: Batch, ctx: StepContext) -> dict[str, float]:
    """Forward, backward, clip, one optimiser step; logs every scalar (0-d) output (losses, diagnostics)."""
    out = ctx.forward(batch)
    ctx.backward(out["loss"])
    ctx.clip()
    ctx.optimizer.step()
    ctx.optimizer.zero_grad(set_to_none=True)
    return {k: float(v.detach()) for k, v in out.items() if v.dim() == 0}


# ---- the model base and registry ---------------------------------------------------
class MultimodalModel(nn.Module):
    """Base of every method. ``forward(batch)`` returns "logits" (and "loss" in training mode)."""

    method_name: ClassVar[str] = ""
    config_class: ClassVar[type] = dict
    # Phase 1 hands over the unimodal heads too (``load_unimodal_heads``), not only the encoders.
    uses_unimodal_heads: ClassVar[bool] = False

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
            raise ConfigError(f"unknown {cls.method_name} option(s) {unknown}; valid: {sorted(names)}")
        return cls.config_class(**config)

    @classmethod
    def build(cls, info: DatasetInfo, encoders: Mapping[str, nn.Module], config: Mapping[str, Any] | None = None,
              heads: Mapping[str, nn.Module] | None = None) -> "MultimodalModel":
        """Freshly adapted model from pretrained ``encoders`` (modified in place: frozen, LoRA, ...).

        ``heads`` are the unimodal pretraining heads; they reach ``load_unimodal_heads`` only
        for a method with ``uses_unimodal_heads``. Rebuilding a saved run passes none: its
        weights are loaded afterwards.
        """
        model = cls(info, encoders, cls.parse_config(config))
        if heads is not None and cls.uses_unimodal_heads:
            missing = sorted(set(model.modalities) - set(heads))
            if missing:
                raise ConfigError(f"{cls.method_name} starts from the unimodal heads; none for {missing}. "
                                 "Re-run `mmedge train unimodal` for them (it saves head.safetensors)")
            model.load_unimodal_heads(heads)
        return model

    def load_unimodal_heads(self, heads: Mapping[str, nn.Module]) -> None:
        """Copy phase 1's heads (``nn.Linear(hidden, classes)`` per modality) into this model."""
        raise NotImplementedError(f"{self.method_name} sets uses_unimodal_heads but has no load_unimodal_heads")

    @property
    def encoder_adaptation(self) -> str:
        """How the pretrained encoders train: frozen, lora, bitfit or full (derived from requires_grad)."""
        from train.modules.lora import LoRALinear

        params = [(n, p) for e in self.encoders.values() for n, p in e.named_parameters()
                  if not unread_parameter(e, n)]
        if any(isinstance(mod, LoRALinear) for e in self.encoders.values() for mod in e.modules()):
            return "lora"
        trainable = [n for n, p in params if p.requires_grad]
        if not trainable:
            return "frozen"
        if len(trainable) == len(params):
            return "full"
        return "bitfit" if all(n.endswith("bias") for n in trainable) else "partial"

    @classmethod
    def lr_factor(cls, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
        """The learning-rate multiplier per schedule step (LambdaLR): CMPT's warm-up at 0.1x, then poly(0.9)."""
        from train.engine.schedule import poly_warmup

        return poly_warmup(total_steps, warmup_steps)

    def make_optimizer(self, params: Sequence[nn.Parameter], cfg: Any) -> torch.optim.Optimizer:
        """The optimiser over ``params`` (those with requires_grad); ``cfg`` is the loop's config."""
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)

    def train_step(self, batch: Batch, ctx: StepContext) -> dict[str, float]:
        """One batch of training; see ``StepContext`` for what an override must respect."""
        return default_train_step(batch, ctx)

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
