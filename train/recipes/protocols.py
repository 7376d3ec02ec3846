"""The papers' missing-modality evaluation protocols, all through the per-pattern branches.

- ``missing_rate_sweep``: CMPT Fig. 2/3. Train on complete data; test with one modality at
  100% and the other(s) at x% for x = 0..100, one curve per full modality.
- ``lee_grid``: Lee et al. / CMPT Table 6 (appendix A4). eta = 70% missing; train one model
  under each missing case, test each under every missing case.

Every score comes from ``train.engine.evaluate.evaluate_mixed``: each sample goes through the branch
of the modalities it has, exactly the graph the runtime would pick on a device.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from runtime.patterns import Pattern
from train.engine.batches import Collate
from train.data.masks import apply_patterns, one_full_other_partial
from train.data.types import MultimodalDataset, Sample, Task
from train.engine.evaluate import evaluate_mixed
from train.methods.base import MultimodalModel
from train.methods.registry import get_method
from train.engine.metrics import headline
from train.recipes.method import TrainConfig, collate_for, method_run_dir, mask_split, train_method
from train import runs
from train.runs import CONFIG_FILE, METRICS_FILE, load_run
from runtime.errors import ConfigError, NotFound

SWEEP, LEE = "missing-rate-sweep", "lee-grid"


# ---- (a) the missing-rate sweep ------------------------------------------------------
def missing_rate_sweep(model: MultimodalModel, test_samples: Sequence[Sample], collate: Collate | None = None,
                       modalities: Sequence[str] | None = None, task: Task | None = None,
                       fractions: Iterable[int] = range(0, 101, 10), seed: int = 0,
                       batch_size: int = 128) -> dict[str, Any]:
    """Headline metric on the test set when one modality is full and the others are at x%.

    ``collate``/``modalities``/``task`` default to the model's. ``fractions`` are percentages.
    Only test samples that have every modality take part (the protocol starts from 100% of
    each); ``num_incomplete_skipped`` says how many did not. Returns JSON-able::

        {"protocol": "missing-rate-sweep", "dataset", "task", "metric": "accuracy",
         "modalities": [...], "fractions": [0, 10, ..., 100], "seed", "num_samples",
         "num_incomplete_skipped", "curves": {full modality: [metric at each fraction]},
         "labels": {full modality: "image 100%, audio x%"},
         "details": {full modality: [task metrics + "num_samples" + "patterns", ...]}}
    """
    collate = collate or collate_for(model)
    names = list(modalities or model.modalities)
    task = task or model.task
    metric = headline(task)
    xs = list(fractions)
    if not xs or any(isinstance(x, bool) or x != int(x) or not 0 <= x <= 100 for x in xs):
        raise ConfigError(f"fractions must be whole percentages in 0..100, got {xs}")
    xs = [int(x) for x in xs]
    everything = Pattern(names)
    complete = [s for s in test_samples if everything <= s.pattern]
    if not complete:
        raise ConfigError(f"no test sample has all of {names}; the sweep starts from complete samples")
    curves: dict[str, list[float]] = {}
    details: dict[str, list[dict[str, Any]]] = {}
    for full in names:
        points = []
        for x in xs:
            # Same seed at every x: the samples kept at 10% are among those kept at 20%, so a
            # curve moves only because x moves, not because a fresh draw changed.
            patterns = one_full_other_partial(len(complete), names, full, x / 100, seed)
            points.append(evaluate_mixed(model, apply_patterns(complete, patterns), collate, batch_size))
        details[full] = points
        curves[full] = [p[metric] for p in points]
    return {
        "protocol": SWEEP, "dataset": model.info.name, "method": model.method_name, "task": task,
        "metric": metric, "modalities": names, "fractions": xs, "seed": seed,
        "num_samples": len(complete), "num_incomplete_skipped": len(test_samples) - len(complete),
        "curves": curves, "labels": {m: sweep_label(m, names) for m in names}, "details": details,
    }


def sweep_label(full: str, modalities: Sequence[str]) -> str:
    others = [m for m in modalities if m != full]
    return f"{full} 100%, {others[0] if len(others) == 1 else 'others'} x%"


def format_sweep(result: dict[str, Any]) -> str:
    """A compact text table: one row per x, one column per direction."""
    cols = list(result["curves"])
    head = f"{'x %':>5}  " + "  ".join(f"{result['labels'][c]:>22}" for c in cols)
    rows = [f"{x:>5}  " + "  ".join(f"{result['curves'][c][i]:>22.4f}" for c in cols)
            for i, x in enumerate(result["fractions"])]
    return "\n".join([f"{result['metric']} ({result['dataset']}, {result['num_samples']} test samples)", head, *rows])


# ---- (b) the Lee et al. train x test grid ----------------------------------------------
def lee_cases(modalities: Sequence[str]) -> list[str]:
    """missing-<m> per modality, then missing-both (2 modalities) or missing-all (M > 2)."""
    names = list(modalities)
    return [f"missing-{m}" for m in names] + ["missing-both" if len(names) == 2 else "missing-all"]


def case_description(case: str, modalities: Sequence[str], eta: float) -> str:
    """What a case leaves available, e.g. "image 30%, audio 100%" (the paper's Table 6 columns)."""
    names = list(modalities)
    lost = names if case in ("missing-both", "missing-all") else [case[len("missing-"):]]
    share = eta / len(lost)  # missing-both: eta/2 of the samples lack each modality
    return ", ".join(f"{m} {round(100 * (1 - share)) if m in lost else 100}%" for m in names)


def lee_train_config(base: TrainConfig, case: str, eta: float) -> TrainConfig:
    """The config of the run trained under ``case``; its own directory beside the normal run."""
    return dataclasses.replace(base, train_missing=case, train_eta=eta, out=None)


def _finished(cfg: TrainConfig) -> bool:
    """A complete run of exactly this config exists (train_method would only re-evaluate it)."""
    out = method_run_dir(cfg)
    if not ((out / CONFIG_FILE).is_file() and (out / METRICS_FILE).is_file()):
        return False
    saved = json.loads((out / CONFIG_FILE).read_text()).get("train", {})
    keys = ("method", "train_missing", "train_eta", "epochs", "seed", "limit", "batch_size", "lr", "method_config")
    return all(saved.get(k) == getattr(cfg, k) for k in keys)


def lee_grid(base: TrainConfig, eta: float = 0.7, seed: int = 0, cases: Sequence[str] | None = None,
             dataset: MultimodalDataset | None = None, batch_size: int = 128,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train one model per missing case (eta of the TRAIN and val splits masked), test each under
    every case (test split masked with ``missing_case(eta, case, seed)``).

    ``base`` carries method, dataset, epochs, limit, runs_dir... Each train case goes to
    ``runs/<dataset>/<method>-train-<case>-<eta*100>``; a finished run of the same config is
    reused, an unfinished one resumes. Returns JSON-able::

        {"protocol": "lee-grid", "dataset", "method", "task", "metric", "eta", "seed",
         "modalities", "cases", "descriptions": {case: "image 30%, audio 100%"},
         "grid": {train case: {test case: metric}}, "details": {train: {test: metrics}},
         "complete": {train case: metric on the unmasked test set},
         "train_patterns": {train case: {pattern key: count}}, "runs": {train case: dir},
         "trained": [train cases trained (not reused) by this call]}
    """
    if dataset is None:
        from train.data.registry import load_dataset

        dataset = load_dataset(base.dataset, base.data_dir, limit=base.limit, seed=base.seed)
    names = list(dataset.modalities)
    cases = list(cases or lee_cases(names))
    test = dataset.split("test")
    out: dict[str, Any] = {"protocol": LEE, "dataset": dataset.name, "method": base.method, "task": dataset.task,
                           "metric": headline(dataset.task), "eta": eta, "seed": seed, "modalities": names,
                           "cases": cases, "descriptions": {c: case_description(c, names, eta) for c in cases},
                           "grid": {}, "details": {}, "complete": {}, "train_patterns": {}, "runs": {}, "trained": []}
    tests = {c: mask_split(test, names, c, eta, seed) for c in cases}  # one fixed mask per test case
    for train_case in cases:
        cfg = lee_train_config(base, train_case, eta)
        run_dir = method_run_dir(cfg)
        if not _finished(cfg):
            if log:  # the loop's progress bars do not say which case they train
                log(f"training {base.method} under {train_case} (eta {eta:g}: {out['descriptions'][train_case]}) "
                    f"-> {run_dir}")
            train_method(cfg, dataset=dataset)
            out["trained"].append(train_case)
        elif log:
            log(f"reusing {run_dir} (trained under {train_case})")
        model = load_run(run_dir)
        collate = collate_for(model)
        out["runs"][train_case] = str(run_dir)
        out["train_patterns"][train_case] = json.loads((run_dir / METRICS_FILE).read_text()).get("train_patterns")
        out["details"][train_case] = {c: evaluate_mixed(model, tests[c], collate, batch_size) for c in cases}
        out["grid"][train_case] = {c: m[out["metric"]] for c, m in out["details"][train_case].items()}
        out["complete"][train_case] = evaluate_mixed(model, test, collate, batch_size)[out["metric"]]
    return out


def grid_markdown(result: dict[str, Any]) -> str:
    """The grid as a Markdown table (rows: train case, columns: test case), like Table 6."""
    cases, desc, metric = result["cases"], result["descriptions"], result["metric"]
    lines = [f"{result['method']} on {result['dataset']}: {metric}, eta = {round(100 * result['eta'])}% "
             f"(Lee et al. protocol; test masks seed {result['seed']})", "",
             "| train \\ test | " + " | ".join(f"{c}<br>({desc[c]})" for c in cases) + " | complete test |",
             "|---|" + "---:|" * (len(cases) + 1)]
    for t in cases:
        cells = " | ".join(f"{result['grid'][t][c]:.4f}" for c in cases)
        lines.append(f"| {t}<br>({desc[t]}) | {cells} | {result['complete'][t]:.4f} |")
    return "\n".join(lines) + "\n"


def format_grid(result: dict[str, Any]) -> str:
    cases, corner = result["cases"], "train \\ test"
    width = max(len(corner), *(len(c) for c in cases))
    rows = [f"{result['metric']} ({result['dataset']}, eta {result['eta']:g})",
            f"{corner:<{width}}  " + "  ".join(f"{c:>14}" for c in cases)]
    rows += [f"{t:<{width}}  " + "  ".join(f"{result['grid'][t][c]:>14.4f}" for c in cases) for t in cases]
    return "\n".join(rows)


# ---- `mmedge train eval`: load the run and data once, run the protocols, write the files -------
PROTOCOLS = ("patterns", "sweep", "lee", "all")


@dataclasses.dataclass
class EvalConfig:
    method: str = "cmpt"
    dataset: str = "av-digits"
    run: Path | None = None  # default: runs/<dataset>/<method>
    protocol: str = "patterns"  # patterns | sweep | lee (trains) | all
    eta: float = 0.7  # Lee et al. missing rate
    seed: int = 0  # test-time masks (sweep and Lee)
    limit: int | None = None  # cap per split; default: the run's own (so its test set is the run's)
    epochs: int | None = None  # Lee training; default: the run's
    out: Path | None = None  # default: <run>/eval
    runs_dir: Path = Path("runs")
    data_dir: Path | None = None
    unimodal_dir: Path | None = None  # Lee training; default: the run's, else runs/<dataset>/unimodal
    progress: bool = True


def _run_train_config(cfg: EvalConfig, run_dir: Path) -> TrainConfig:
    """The run's own training config (so Lee runs match it), with the eval's overrides."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    saved: dict[str, Any] = {}
    if (run_dir / CONFIG_FILE).is_file():
        saved = {k: v for k, v in json.loads((run_dir / CONFIG_FILE).read_text()).get("train", {}).items()
                 if k in fields and k not in ("out", "runs_dir", "train_missing", "train_eta", "progress")}
    base = TrainConfig(**{**saved, "method": cfg.method, "dataset": cfg.dataset, "runs_dir": Path(cfg.runs_dir),
                          "progress": cfg.progress})
    for name in ("unimodal_dir", "data_dir"):  # JSON stored them as strings
        value = getattr(cfg, name) or getattr(base, name)
        setattr(base, name, Path(value) if value else None)
    if cfg.limit is not None:
        base.limit = cfg.limit
    if cfg.epochs is not None:  # keep the paper's warm-up share (5 of 10) on short runs
        base.warmup_epochs = min(base.warmup_epochs, cfg.epochs // 2)
        base.epochs = cfg.epochs
    return base


def run_eval(cfg: EvalConfig, dataset: MultimodalDataset | None = None) -> dict[str, Any]:
    """Run ``cfg.protocol`` and write its files; returns {protocol: result, "files": [paths], "out": dir}."""
    import time

    from runtime.atomic import write_json_atomic, write_text_atomic
    from train.engine.evaluate import evaluate_all_patterns
    from train.reporting.plots import plot_lee_grid, plot_sweep

    if cfg.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {cfg.protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if not 0 < cfg.eta < 1:
        raise ConfigError(f"--eta must be in (0, 1), got {cfg.eta}")
    get_method(cfg.method)  # a typo fails here, before any loading or training
    run_dir = Path(cfg.run or runs.run_dir(cfg.runs_dir, cfg.dataset, cfg.method))
    wanted = ("patterns", "sweep", "lee") if cfg.protocol == "all" else (cfg.protocol,)
    needs_run = bool({"patterns", "sweep"} & set(wanted))
    if needs_run and not (run_dir / CONFIG_FILE).is_file():
        raise NotFound(f"no trained run at {run_dir} (no {CONFIG_FILE}); train it with `mmedge train run "
                                f"--method {cfg.method} --dataset {cfg.dataset}` or pass --run DIR")
    base = _run_train_config(cfg, run_dir)
    if dataset is None:
        from train.data.registry import load_dataset

        dataset = load_dataset(cfg.dataset, base.data_dir, limit=base.limit, seed=base.seed)
    out_dir = Path(cfg.out or run_dir / "eval")
    result: dict[str, Any] = {"out": str(out_dir), "files": [], "wall_time_s": {}}
    test = dataset.split("test")

    def write(name: str, data: Any) -> None:
        path = out_dir / name
        if name.endswith(".json"):
            write_json_atomic(path, data)
        else:
            write_text_atomic(path, data)
        result["files"].append(str(path))

    model = load_run(run_dir) if needs_run else None
    if "patterns" in wanted and model is not None:
        started = time.perf_counter()
        rows = evaluate_all_patterns(model, test, collate_for(model))
        result["patterns"] = {"protocol": "patterns", "dataset": dataset.name, "method": cfg.method,
                              "metric": headline(dataset.task), "by_pattern": rows}
        write("patterns.json", result["patterns"])
        result["wall_time_s"]["patterns"] = round(time.perf_counter() - started, 2)
    if "sweep" in wanted and model is not None:
        started = time.perf_counter()
        result["sweep"] = missing_rate_sweep(model, test, collate_for(model), seed=cfg.seed)
        write("sweep.json", result["sweep"])
        result["files"].append(str(plot_sweep({cfg.method: result["sweep"]}, out_dir / "sweep.png")))
        result["wall_time_s"]["sweep"] = round(time.perf_counter() - started, 2)
    if "lee" in wanted:
        started = time.perf_counter()
        result["lee"] = lee_grid(base, eta=cfg.eta, seed=cfg.seed, dataset=dataset, log=print if cfg.progress else None)
        write("lee.json", result["lee"])
        write("lee.md", grid_markdown(result["lee"]))
        result["files"].append(str(plot_lee_grid(result["lee"], out_dir / "lee.png")))
        result["wall_time_s"]["lee"] = round(time.perf_counter() - started, 2)
    return result
