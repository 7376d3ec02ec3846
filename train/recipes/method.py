"""Train one missing-modality method on top of the pretrained unimodal encoders.

The run directory it writes is ``train.runs``' format (``runs/<dataset>/<method>/``).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from train.engine.distributed import process_state
from safetensors.torch import load_file

from runtime.patterns import all_patterns
from train.data.types import ModalitySpec, MultimodalDataset, Sample
from train.engine.batches import Collate
from train.engine.budget import near_chance_warning, plan_budget
from train.engine.evaluate import evaluate_all_patterns, evaluate_by_pattern
from train.engine.loop import LoopConfig, predict_logits, train_loop
from train.engine.metrics import headline, task_metrics
from train.engine.seeding import seed_everything
from train.engine.validation import SELECTIONS, ensure_validation_split
from train.methods.base import OUTPUT_NAMES, DatasetInfo, MultimodalModel
from train.methods.registry import get_method
from train.runs import FORMAT_VERSION, encoder_entry, run_dir, save_run
from runtime.errors import ConfigError, NotFound


@dataclass
class TrainConfig:
    method: str = "cmpt"
    dataset: str = "av-digits"
    method_config: dict[str, Any] = field(default_factory=dict)  # e.g. {"align_weight": 0.2}
    out: Path | None = None  # default: runs/<dataset>/<method>
    unimodal_dir: Path | None = None  # default: runs/<dataset>/unimodal (one <modality>/encoder each)
    # modality -> HF directory or hub id, loaded as that modality's encoder instead of the unimodal run's
    # (no unimodal pretraining; its preprocessing comes from the checkpoint: train.encoders.model_spec)
    encoders: dict[str, str] = field(default_factory=dict)
    # The paper's Table 5 (image-text): 10 epochs, 5 warm-up epochs at 0.1x lr, lr 1e-3,
    # AdamW(wd 0.02, eps 1e-8). Batch 32 instead of 8: per-step overhead dominates on CPU.
    epochs: int = 10
    warmup_epochs: float = 5
    # Lengthen a run that would make fewer optimiser steps (train.engine.budget); 0: epochs as given.
    # The CLI defaults to 300, so a small user data set still trains; library callers choose.
    min_steps: int = 0
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.02
    seed: int = 0
    limit: int | None = None  # cap per split, for quick runs
    data_seed: int | None = None  # draws the ``limit`` subset; None: ``seed`` (the comparison fixes it across seeds)
    data_dir: Path | None = None
    runs_dir: Path = Path("runs")
    resume: bool = True
    progress: bool = True
    # Lee et al. protocol: train (and validate) under a missing case, e.g. "missing-image" with
    # eta 0.7 (train.data.masks.missing_case, seeded by ``seed``). None: the data as it is.
    train_missing: str | None = None
    train_eta: float = 0.7
    select: str = "patterns"  # one of SELECTIONS
    val_fraction: float = 0.1  # carved out of train, stratified and seeded, when the data has no val split


def method_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.method
    if cfg.train_missing is not None:  # beside the normal run, never over it
        name = f"{cfg.method}-train-{cfg.train_missing}-{round(cfg.train_eta * 100)}"
    return run_dir(cfg.runs_dir, cfg.dataset, name)


def mask_split(samples: list[Sample], modalities: list[str], case: str, eta: float, seed: int) -> list[Sample]:
    """``samples`` under a missing case; a sample the data already lacks stays as it is."""
    from train.data.masks import apply_patterns, missing_case

    return apply_patterns(samples, missing_case(len(samples), modalities, eta, case, seed), on_empty="keep")


def unimodal_source_dir(cfg: TrainConfig) -> Path:
    return cfg.unimodal_dir or run_dir(cfg.runs_dir, cfg.dataset, "unimodal")


@dataclass
class UnimodalArtefacts:
    """What phase 1 (``mmedge train unimodal``) hands to a method, per modality."""

    encoders: dict[str, torch.nn.Module]
    specs: dict[str, ModalitySpec]  # the preprocessing each encoder was trained with
    heads: dict[str, torch.nn.Linear] | None  # only when asked for (``MultimodalModel.uses_unimodal_heads``)
    pretrain_task: str = "labels"  # what the encoders' heads learnt (train.data.pretrain_tasks)


def load_unimodal_heads(directory: Path, encoders: dict[str, torch.nn.Module], num_classes: int,
                        file: str = "head.safetensors") -> dict[str, torch.nn.Linear]:
    """The linear head each unimodal run saved (``file``), checked against the task's classes."""
    heads = {}
    for m, enc in encoders.items():
        path = directory / m / file
        if not path.is_file():
            raise NotFound(f"no unimodal head at {path}; re-run `mmedge train unimodal --modality {m}`"
                           + (" with the same --pretrain-task (it adds the label probe)" if file != "head.safetensors"
                              else ""))
        state = load_file(str(path))
        head = torch.nn.Linear(int(enc.hidden_size), num_classes)
        if tuple(state["weight"].shape) != tuple(head.weight.shape):
            raise ConfigError(f"{path}: head weight {tuple(state['weight'].shape)} does not fit "
                             f"{tuple(head.weight.shape)} (hidden {enc.hidden_size}, {num_classes} classes); "
                             "was the unimodal run pretrained on another label set (--pretrain-task)?")
        head.load_state_dict(state)
        heads[m] = head
    return heads


def load_unimodal(data: MultimodalDataset, directory: Path, heads: bool = False,
                  sources: dict[str, str] | None = None) -> UnimodalArtefacts:
    """The pretrained encoder of every modality, the preprocessing it was trained with, and its head.

    ``sources`` (modality -> HF directory or hub id) replaces those modalities' unimodal runs.
    """
    from train.encoders import encoder_spec, load_encoder

    encoders, specs, tasks = {}, {}, {}
    sources = dict(sources or {})
    unknown = sorted(set(sources) - set(data.modalities))
    if unknown:
        raise ConfigError(f"--encoder names modalities {unknown} that {data.name!r} does not have; it has "
                         f"{data.modality_names}")
    if heads and sources:
        raise ConfigError(f"this method uses the unimodal heads (uses_unimodal_heads), which a --encoder checkpoint "
                         f"({sorted(sources)}) does not have; pretrain with `mmedge train unimodal --modality M "
                         "--encoder SOURCE` first, or pick a method without heads")
    for m, spec in data.modalities.items():
        if m in sources:
            encoders[m] = load_encoder(sources[m], spec.type)
            specs[m] = encoder_spec(spec, sources[m], encoders[m], [s.inputs.get(m) for s in data.split("train")])
            continue
        enc_dir = directory / m / "encoder"
        if not (enc_dir / "config.json").is_file():
            raise NotFound(
                f"no pretrained {m!r} encoder at {enc_dir}; run `mmedge train unimodal --dataset {data.name} "
                f"--modality {m}` first (or pass --unimodal-dir, or --encoder {m}=DIR_OR_HUB_ID for a Hugging Face "
                "checkpoint)")
        encoders[m] = load_encoder(enc_dir, spec.type)
        meta_path = directory / m / "modality.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            if meta.get("type", spec.type) != spec.type:
                raise ConfigError(f"{meta_path} is a {meta['type']!r} modality but {data.name!r} has {m!r} as {spec.type!r}")
            # Normalisation statistics the encoder was trained with (a different --limit refits them).
            spec = ModalitySpec(m, spec.type, dict(meta.get("preprocess", spec.preprocess)))
            tasks[m] = meta.get("pretrain_task", "labels")
        specs[m] = spec
    task = pretrain_task_of(tasks, directory)
    if not heads:
        return UnimodalArtefacts(encoders, specs, None, task)
    # Encoders pretrained on a coarse task: their heads predict that task; the methods get the label probe
    # fitted over the frozen encoder instead (train/recipes/label_probe.py).
    from train.recipes.label_probe import PROBE_FILE

    file = "head.safetensors" if task == "labels" else PROBE_FILE
    return UnimodalArtefacts(encoders, specs, load_unimodal_heads(directory, encoders, data.num_classes, file), task)


def pretrain_task_of(tasks: dict[str, str], directory: Path) -> str:
    """The one pretraining task of every modality's encoder (runs without the field: ``labels``)."""
    found = sorted(set(tasks.values())) or ["labels"]
    if len(found) > 1:
        raise ConfigError(f"the unimodal encoders in {directory} were pretrained on different tasks {tasks}; "
                         "re-pretrain them with one --pretrain-task")
    return found[0]






def _jsonable(obj: Any) -> Any:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(obj).items()}


def _pattern_counts(samples: list[Sample], modalities: list[str]) -> dict[str, int]:
    counts = {p.key: 0 for p in all_patterns(modalities)}
    for s in samples:
        counts[s.pattern.key] += 1
    return counts


def collate_for(model: MultimodalModel) -> Collate:
    return Collate(model.info.modalities, model.task, model.num_classes)


def pattern_validator(model: MultimodalModel, val: list[Sample], collate: Collate):  # noqa: ANN201
    """``validate`` for the loop: every pattern's headline metric on val, and their mean as the headline."""
    metric = headline(model.task)

    def validate(_wrapped: torch.nn.Module) -> dict[str, float]:
        by_pattern = evaluate_all_patterns(model, val, collate)
        scores = {f"{k}_{metric}": float(v[metric]) for k, v in by_pattern.items()}
        scores[metric] = float(sum(scores.values()) / max(1, len(scores)))
        return scores

    return validate


def complete_validator(model: MultimodalModel, val: list[Sample], collate: Collate):  # noqa: ANN201
    def validate(wrapped: torch.nn.Module) -> dict[str, float]:
        logits, labels = predict_logits(wrapped, val, collate)
        return task_metrics(model.task, logits, labels)

    return validate


def train_method(cfg: TrainConfig, dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Train ``cfg.method``, evaluate every pattern on test, save the run; returns metrics.json's content.

    ``dataset`` skips loading (tests, notebooks); otherwise ``cfg.dataset`` is loaded. Under
    several processes every rank trains its shard and evaluates; only the main process writes.
    """
    if cfg.select not in SELECTIONS:
        raise ConfigError(f"--select must be one of {list(SELECTIONS)}, got {cfg.select!r}")
    seed_everything(cfg.seed)
    method = get_method(cfg.method)  # fail on a typo before loading anything
    if dataset is None:
        from train.data.registry import load_dataset

        dataset = load_dataset(cfg.dataset, cfg.data_dir, limit=cfg.limit,
                               seed=cfg.seed if cfg.data_seed is None else cfg.data_seed)
    out = Path(cfg.out or method_run_dir(cfg))
    src = unimodal_source_dir(cfg)
    phase1 = load_unimodal(dataset, src, heads=method.uses_unimodal_heads, sources=cfg.encoders)
    info = DatasetInfo(dataset.name, dataset.task, list(dataset.labels), phase1.specs)
    entries = {m: encoder_entry(e, Path(cfg.encoders[m]) if m in cfg.encoders else src / m / "encoder")
               for m, e in phase1.encoders.items()}  # before LoRA
    seed_everything(cfg.seed)
    model = method.build(info, phase1.encoders, cfg.method_config, heads=phase1.heads)
    collate = collate_for(model)
    train, val, carved = ensure_validation_split(dataset.split("train"), dataset.splits.get("val", []),
                                                 cfg.val_fraction, cfg.seed)
    test = dataset.split("test")
    if cfg.train_missing is not None:  # test stays as given: the protocols mask it themselves
        names = list(dataset.modalities)
        train = mask_split(train, names, cfg.train_missing, cfg.train_eta, cfg.seed)
        val = mask_split(val, names, cfg.train_missing, cfg.train_eta, cfg.seed + 1)
    budget = plan_budget(len(train), cfg.batch_size, process_state().num_processes, cfg.epochs, cfg.warmup_epochs,
                         cfg.min_steps)
    if budget.note and process_state().is_main_process:
        print(budget.note, flush=True)
    loop_cfg = LoopConfig(epochs=budget.epochs, batch_size=budget.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          warmup_epochs=budget.warmup_epochs, seed=cfg.seed, resume=cfg.resume, progress=cfg.progress,
                          keep="last" if cfg.select == "last" else "best")
    validator = complete_validator if cfg.select == "complete" else pattern_validator
    result = train_loop(model, train, val, collate, info.task, loop_cfg, out / "checkpoints",
                        validate=validator(model, val, collate))
    warning = near_chance_warning(info.task, info.num_classes, result.best_score, len(val), headline(info.task))
    if warning and process_state().is_main_process:
        print(f"warning: {warning}", flush=True)
    started = time.perf_counter()
    by_pattern = evaluate_all_patterns(model, test, collate)
    as_given = evaluate_by_pattern(model, test, collate)
    metrics = {
        "method": cfg.method, "dataset": info.name, "task": info.task,
        "test_by_pattern": by_pattern,  # every pattern P, on the test samples that have P, others withheld
        "test_as_given": as_given,  # test samples grouped by the pattern they actually have
        "parameters": model.parameter_counts(),
        "encoder_adaptation": model.encoder_adaptation,
        "unimodal_pretrain_task": phase1.pretrain_task,
        "select": cfg.select,
        "best_epoch": result.best_epoch, "best_val": result.best_score, "epochs": budget.epochs,
        "warmup_epochs": budget.warmup_epochs, "batch_size": budget.batch_size, "budget_note": budget.note, "near_chance_warning": warning,
        "optimizer_steps": {"per_epoch": result.steps_per_epoch, "total": result.total_steps,
                            "num_processes": result.num_processes},
        "resumed_from_epoch": result.resumed_from_epoch,
        "train_wall_time_s": round(result.wall_time_s, 2),
        "eval_wall_time_s": round(time.perf_counter() - started, 2),
        "num_samples": {"train": len(train), "val": len(val), "test": len(test)},
        "val_carved_from_train": carved,
        "train_missing": cfg.train_missing, "train_eta": cfg.train_eta if cfg.train_missing else None,
        "train_patterns": _pattern_counts(train, model.modalities),
        "history": result.history,
    }
    config = {
        "format_version": FORMAT_VERSION, **model.to_config(), "dataset": info.to_dict(), "encoders": entries,
        "patterns": [p.key for p in all_patterns(model.modalities)], "output_names": list(OUTPUT_NAMES),
        "train": _jsonable(cfg),
    }
    state = process_state()
    if state.is_main_process:
        weights = {k: v.detach().contiguous().clone().cpu() for k, v in model.state_dict().items()}
        save_run(out, weights, config, metrics, cfg.method)
    state.wait_for_everyone()
    return metrics
