"""The CMPT paper's ablation (Sec. 4.6.1, Fig. 3/5) on real data, several seeds, one command.

Baseline without dropout (``late-fusion``) vs ``modality-dropout`` vs ``cmpt``, each trained
with every seed on the same frozen unimodal encoders and the same data subset:

    runs/<dataset>/ablation/<method>/seed<k>/   one train_method run each (reused when finished)
    runs/<dataset>/ablation/results.json        per-run numbers, mean ± sd, verdicts, machine, config

The runs x seeds engine (settings, unimodal pretraining, one run, the summary) lives here and
train.recipes.compare drives it; ``run_ablation`` is the comparison's three-method preset.

Only the training seed varies: the ``limit`` subset is drawn once with ``data_seed``, so
seeds differ in initialisation, dropout and batch order, never in data.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from runtime.patterns import Pattern, all_patterns
from train.reporting.ablation_stats import ROLES, aggregate_runs, verdicts
from train.data.types import MultimodalDataset
from train.engine.metrics import headline
from train.recipes.method import TrainConfig, collate_for, train_method
from train.runs import load_run, run_dir

RESULTS = "results.json"
FORMAT_VERSION = 1
# Reduced sizes for a 2-core CPU (the whole ablation well under an hour): av-digits is small,
# so all of it; easy-vqa at 1000 samples per split, matching its unimodal encoders' pretraining.
# Warm-up is 1 epoch instead of the paper's half: with few epochs, 0.1x lr for half of them
# leaves the heads barely trained.
# easy-vqa's sweep has 3 points (0/50/100%): each point re-encodes the whole 1000-sample test
# split through MiniLM and a ViT, which at 20% steps took as long as training on 2 shared cores.
REDUCED: dict[str, dict[str, Any]] = {
    "av-digits": {"limit": None, "epochs": 5, "warmup_epochs": 1, "unimodal_epochs": 20, "sweep_step": 10},
    "easy-vqa": {"limit": 1000, "epochs": 3, "warmup_epochs": 1, "unimodal_epochs": 10, "sweep_step": 50},
}
REDUCED_OTHER = {"limit": None, "epochs": 5, "warmup_epochs": 1, "unimodal_epochs": 20, "sweep_step": 10}
# The paper's Table 5 (image-text): 10 epochs, 5 of them warm-up; all data.
FULL = {"limit": None, "epochs": 10, "warmup_epochs": 5, "unimodal_epochs": 20, "sweep_step": 10}


@dataclass
class AblationConfig:
    dataset: str = "av-digits"
    methods: list[str] = field(default_factory=lambda: list(ROLES))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    full: bool = False  # all data and the paper's epochs instead of the reduced defaults
    epochs: int | None = None  # None: the dataset's default (REDUCED, or FULL with full)
    warmup_epochs: int | None = None
    limit: int | None = None  # None: the dataset's default; with full always all data unless given
    batch_size: int = 32
    data_seed: int = 0  # draws the limit subset, fixed across training seeds
    sweep_fractions: list[int] | None = None  # percentages; None: 0..100 by the dataset's sweep_step
    sweep: bool = True
    out: Path | None = None  # default: runs/<dataset>/ablation (ablation-full with full)
    unimodal_dir: Path | None = None  # default: runs/<dataset>/unimodal (pretrained there when missing)
    runs_dir: Path = Path("runs")
    data_dir: Path | None = None
    threads: int | None = None  # torch threads; None leaves torch's default
    note: str = ""  # why the defaults were changed, say; copied into results.json and the report
    progress: bool = True
    select: str = "patterns"  # checkpoint selection (train.engine.validation.SELECTIONS)
    pretrain_task: str = "labels"  # what missing unimodal encoders are pretrained on (train.data.pretrain_tasks)


def settings(cfg: AblationConfig) -> dict[str, Any]:
    """The effective limit / epochs / warm-up / unimodal epochs after defaults and overrides."""
    base = dict(FULL if cfg.full else REDUCED.get(Path(cfg.dataset).name, REDUCED_OTHER))
    for key in ("limit", "epochs", "warmup_epochs"):
        if getattr(cfg, key) is not None:
            base[key] = getattr(cfg, key)
    base["sweep_fractions"] = list(cfg.sweep_fractions or range(0, 101, base.pop("sweep_step")))
    return base


def ablation_dir(cfg: AblationConfig) -> Path:
    return cfg.out or run_dir(cfg.runs_dir, cfg.dataset, "ablation-full" if cfg.full else "ablation")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores_usable": usable, "cores_total": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "device": "cuda" if torch.cuda.is_available() else "cpu",
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def ensure_unimodal(cfg: AblationConfig, data: MultimodalDataset, udir: Path, epochs: int, limit: int | None
                    ) -> dict[str, Any]:
    """Pretrain each modality's encoder that is missing from ``udir``; returns their metrics."""
    from train.recipes.unimodal import UnimodalConfig, pretrain_unimodal
    from train.runs import read_metrics as read_unimodal

    out: dict[str, Any] = {}
    from train.recipes.label_probe import PROBE_FILE

    for m in data.modality_names:
        no_probe = cfg.pretrain_task != "labels" and not (udir / m / PROBE_FILE).is_file()
        if not (udir / m / "encoder" / "config.json").is_file() or no_probe:
            # A finished run without its label probe resumes from its last checkpoint: only the probe is new.
            print(f"[ablation] no {m!r} encoder{' label probe' if no_probe else ''} in {udir}: pretraining it "
                  f"({epochs} epochs, limit {limit})", flush=True)
            pretrain_unimodal(UnimodalConfig(dataset=cfg.dataset, modality=m, out=udir / m, epochs=epochs,
                                             seed=cfg.data_seed, limit=limit, data_dir=cfg.data_dir,
                                             runs_dir=cfg.runs_dir, progress=cfg.progress,
                                             pretrain_task=cfg.pretrain_task))
        metrics_path = udir / m / "metrics.json"
        if metrics_path.is_file():
            um = read_unimodal(udir / m)
            out[m] = {k: um.get(k) for k in ("test", "num_samples", "epochs", "train_wall_time_s",
                                             "encoder_parameters", "pretrained_from", "pretrain_task", "labels",
                                             "label_probe")}
            out[m]["limit"] = um.get("config", {}).get("limit")
    return out


def _config_json(cfg: AblationConfig) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}


def _command() -> str:
    """The command line as a user would type it (``python -m train`` shows up as ``__main__.py``)."""
    name = Path(sys.argv[0]).name
    prog = {"__main__.py": "python -m train", "mmedge": "mmedge"}.get(name, name)
    return " ".join([prog, shlex.join(sys.argv[1:])])


def run_one(cfg: AblationConfig, data: MultimodalDataset, method: str, seed: int, run_dir: Path, udir: Path,
            eff: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any]:
    """Train (or reuse) one run, evaluate every pattern and the sweep; returns its record."""
    started = time.perf_counter()
    tc = TrainConfig(method=method, dataset=cfg.dataset, out=run_dir, unimodal_dir=udir, epochs=eff["epochs"],
                     warmup_epochs=eff["warmup_epochs"], batch_size=cfg.batch_size, seed=seed, limit=eff["limit"],
                     data_dir=cfg.data_dir, runs_dir=cfg.runs_dir, progress=cfg.progress, select=cfg.select)
    metrics = train_method(tc, dataset=data)  # the dataset is passed: its subset stays the data_seed one
    train_time = metrics["train_wall_time_s"]
    reused = metrics.get("resumed_from_epoch") == eff["epochs"] - 1
    if reused and previous:  # nothing trained now: keep the wall time of the invocation that trained it
        train_time = previous.get("wall_time_s", {}).get("train", train_time)
    sweep, sweep_time = None, None
    if cfg.sweep:
        from train.recipes.protocols import missing_rate_sweep

        model = load_run(run_dir)  # the saved run, as shipped: also checks it reloads
        t0 = time.perf_counter()
        sweep = missing_rate_sweep(model, data.split("test"), collate_for(model), model.modalities, model.task,
                                   fractions=eff["sweep_fractions"], seed=0)
        sweep_time = round(time.perf_counter() - t0, 2)
        sweep.pop("details", None)  # per-point pattern counts: bulky, and the curves carry the numbers
    return {
        "method": method, "seed": seed, "dir": str(run_dir),
        "test_by_pattern": metrics["test_by_pattern"], "sweep": sweep,
        "parameters": metrics["parameters"], "best_epoch": metrics["best_epoch"], "best_val": metrics["best_val"],
        "optimizer_steps": metrics.get("optimizer_steps"), "select": metrics.get("select"),
        "unimodal_pretrain_task": metrics.get("unimodal_pretrain_task"),
        "resumed_from_epoch": metrics.get("resumed_from_epoch"), "reused_finished_run": reused,
        "history": metrics.get("history"),
        "wall_time_s": {"train": train_time, "eval_patterns": metrics["eval_wall_time_s"], "sweep": sweep_time,
                        "this_invocation": round(time.perf_counter() - started, 2)},
    }


def summarise(cfg: AblationConfig, data: MultimodalDataset, runs: Sequence[dict[str, Any]], eff: dict[str, Any],
              unimodal: dict[str, Any], started_at: str, wall: float, notes: list[str]) -> dict[str, Any]:
    modalities = list(data.modality_names)
    metric = headline(data.task)
    patterns = all_patterns(modalities)
    full_key = Pattern(modalities).key
    aggregate = aggregate_runs(runs, metric)
    return {
        "format_version": FORMAT_VERSION,
        "dataset": data.name, "task": data.task, "metric": metric, "modalities": modalities,
        "patterns": [p.key for p in patterns], "full_pattern": full_key,
        "num_samples": {s: len(data.split(s)) for s in ("train", "val", "test")},
        "size": "full" if cfg.full else "reduced", "effective": eff, "data_seed": cfg.data_seed,
        "config": _config_json(cfg), "command": _command(),
        "notes": [n for n in [cfg.note, *notes] if n],
        "machine": machine_info(), "started_at": started_at,
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(wall, 1),
        "unimodal": unimodal,
        "aggregate": aggregate,
        "verdicts": verdicts(aggregate, metric, full_key, [p.key for p in patterns if p.key != full_key]),
        "runs": list(runs),
    }


def run_ablation(cfg: AblationConfig, dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Train every method x seed, evaluate, aggregate, judge; writes and returns results.json's content.

    The comparison (train.recipes.compare) restricted to ``cfg``'s methods, without the Lee grid,
    the export and the report: one engine, two presets. ``dataset`` skips loading (tests).
    """
    from train.recipes.compare import CompareConfig, run_compare

    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(AblationConfig)}
    return run_compare(CompareConfig(**{**fields, "out": ablation_dir(cfg)}, lee=False, export=False, report=None,
                                     label="ablation"), dataset=dataset)


def read_results(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
