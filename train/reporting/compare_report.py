"""The comparison's part of docs/results.md: leaderboard, bar chart, accuracy-vs-latency scatter, claim verdicts.

Rendered from a compare results.json (train.recipes.compare) only; nothing here is written by hand.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from train.reporting.ablation_stats import mean_sd
from train.reporting.claims import claim_line

REGIMES = {
    "labels": "same-label pretraining: the frozen unimodal encoders were pretrained on the downstream labels, "
              "so single-modality accuracy starts at the unimodal ceiling",
    "coarse-parity": "coarse-label pretraining: the frozen unimodal encoders were pretrained on digit parity "
                     "(2 classes), never on the ten digits the methods are trained for",
    "coarse-mod3": "coarse-label pretraining: the frozen unimodal encoders were pretrained on digit mod 3 "
                   "(3 classes), never on the ten digits the methods are trained for",
}


def _pct(stat: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean'] * 100:.{digits}f}"
    return text if stat.get("sd") is None else f"{text} ± {stat['sd'] * 100:.{digits}f}"


def regime(results: Mapping[str, Any]) -> str:
    task = results.get("pretrain_task", "labels")
    return "same-label pretraining" if task == "labels" else f"coarse-label pretraining ({task})"


def compare_title(results: Mapping[str, Any]) -> str:
    return (f"{results['dataset']}: all methods, {regime(results)}, {results['size']} size, "
            f"{results['effective']['epochs']} epochs ({results.get('_label', 'compare')})")


def _ms(values: Mapping[str, float] | None, patterns: list[str]) -> str:
    if not values:
        return "–"
    return " / ".join(f"{values[p]:.2f}" if p in values else "–" for p in patterns)


def leaderboard_table(results: Mapping[str, Any]) -> str:
    patterns = results["patterns"]
    head = ("| method | mean over patterns | " + " | ".join(f"`{p}`" for p in patterns) +
            " | sweep AUC | Lee 3-case avg | learnable params | optimiser steps | train s | "
            f"p50 ms fp32 ({' / '.join(patterns)}) | p50 ms int8 | bundle MB (fp32 + int8) |")
    rows = [head, "|" + " --- |" * (len(patterns) + 10)]
    for r in results["leaderboard"]:
        params = r.get("parameters") or {}
        steps = r["optimizer_steps"].get("mean")
        train_s = r["train_s"].get("mean")
        p50 = r.get("p50_ms") or {}
        size = f"{r['bundle_bytes'] / 1e6:.2f}" if r.get("bundle_bytes") else "–"
        if r.get("degraded"):
            size += f" (degraded: {', '.join(r['degraded'])})"
        rows.append(
            f"| {r['method']} | {_pct(r['mean_over_patterns'])} | " +
            " | ".join(_pct(r["patterns"][p]) for p in patterns) +
            f" | {_pct(r['sweep_auc'])} | {_pct(r['lee_three_case'])} | {params.get('learnable', 0):,} | "
            f"{'–' if steps is None else round(steps)} | {'–' if train_s is None else round(train_s)} | "
            f"{_ms(p50.get('fp32'), patterns)} | {_ms(p50.get('int8'), patterns)} | {size} |")
    return "\n".join(rows)


def _figures(results: Mapping[str, Any], out_dir: Path) -> list[str]:
    from train.reporting.plots import plot_accuracy_latency, plot_pattern_bars

    stem = f"{results['dataset']}-{results.get('_label', 'compare')}"
    rows, metric = results["leaderboard"], results["metric"]
    lines = []
    bars = plot_pattern_bars(rows, results["patterns"], out_dir / "figures" / f"{stem}-patterns.png", metric,
                             f"{compare_title(results)}: test {metric} per pattern (mean ± seed sd)")
    lines += [f"![{metric} per pattern and method]({os.path.relpath(bars, out_dir)})", ""]
    if any((r.get("p50_ms") or {}).get("fp32") for r in rows):
        scatter = plot_accuracy_latency(rows, out_dir / "figures" / f"{stem}-latency.png", metric,
                                        f"{results['dataset']} ({regime(results)}): {metric} vs batch-1 latency")
        lines += [f"![{metric} against latency]({os.path.relpath(scatter, out_dir)})", ""]
    else:
        lines += ["Accuracy-vs-latency scatter: no latency numbers (the export was skipped for these results).", ""]
    return lines


def lee_text(results: Mapping[str, Any]) -> str:
    eta = results.get("lee_eta")
    if eta is None:
        return "not run for these results (--no-lee)"
    if isinstance(eta, list):
        return ("the Lee et al. grid at mixed missing rates across runs ("
                + ", ".join(f"{round(100 * e)}%" for e in eta) + "), train and test under the same case")
    return (f"the Lee et al. grid at eta = {round(100 * eta)}%, train and test under the same case, averaged over "
            "the three cases")


def ceiling_table(results: Mapping[str, Any]) -> str | None:
    """Each method's single-modality metric minus the unimodal ceiling, in points (mean over seeds): below zero,
    the method's branch for that modality reads less out of its frozen encoder than one linear read-out does. The
    ceiling is the encoder's own head (same-label pretraining) or its whitened label probe (coarse); None without."""
    coarse = results.get("pretrain_task", "labels") != "labels"
    metric = results["metric"]
    ceiling = {}
    for m, u in (results.get("unimodal") or {}).items():
        t = ((u.get("label_probe") or {}).get("test") if coarse else u.get("test")) or {}
        if metric in t:
            ceiling[m] = float(t[metric])
    singles = [m for m in results["modalities"] if m in ceiling and m in results["patterns"]]
    if not singles:
        return None
    rows = ["| method | " + " | ".join(f"`{m}` minus {ceiling[m] * 100:.2f}" for m in singles) + " |",
            "|" + " --- |" * (len(singles) + 1)]
    for r in results["leaderboard"]:
        stats = [r["patterns"].get(m) or {} for m in singles]
        rows.append(f"| {r['method']} | " + " | ".join(
            "–" if st.get("mean") is None else f"{(st['mean'] - ceiling[m]) * 100:+.2f}"
            for m, st in zip(singles, stats)) + " |")
    return "\n".join(rows)


def lee_table(results: Mapping[str, Any]) -> str | None:
    """The Lee et al. grid's diagonal per method (trained and tested under the same case), mean ± sd over the seeds
    that have a grid; None when no run has one."""
    runs = [r for r in results.get("runs", []) if r.get("lee")]
    if not runs:
        return None
    cases = runs[0]["lee"]["cases"]
    desc = runs[0]["lee"].get("descriptions") or {}
    rows = ["| method | seeds | " + " | ".join(f"{c} ({desc[c]})" if c in desc else c for c in cases) +
            " | 3-case avg |", "|" + " --- |" * (len(cases) + 3)]
    for method in [r["method"] for r in results["leaderboard"]]:
        mine = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
        if not mine:
            continue
        cells = [_pct(mean_sd(r["lee"]["grid"][c][c] for r in mine)) for c in cases]
        rows.append(f"| {method} | {', '.join(str(r['seed']) for r in mine)} | " + " | ".join(cells) +
                    f" | {_pct(mean_sd(r['lee']['three_case_average'] for r in mine))} |")
    return "\n".join(rows)


def training_time_text(results: Mapping[str, Any]) -> str:
    """The summed training time of every run in the results (several invocations add up to one comparison)."""
    runs = results.get("runs", [])
    total = sum(float((r.get("wall_time_s") or {}).get("train") or 0.0) for r in runs)
    lee = sum(float((r.get("lee") or {}).get("wall_time_s") or 0.0) for r in runs)
    text = f"{len(runs)} runs trained in {total / 60:.1f} min summed"
    return text + (f", plus {lee / 60:.1f} min for their Lee et al. grids" if lee else "")


def proxy_r2_lines(results: Mapping[str, Any]) -> list[str]:
    """The methods that log ``train_proxy_r2`` per epoch (CMPT): how well their proxies predict the CLS they stand
    in for (1 = exactly, 0 = no better than the batch mean), at the selected epoch and at the last."""
    by_method: dict[str, list[tuple[int, float | None, float, int]]] = {}
    for r in results.get("runs", []):
        hist = [h for h in r.get("history") or [] if h.get("train_proxy_r2") is not None]
        if hist:
            at = {h["epoch"]: h["train_proxy_r2"] for h in hist}
            by_method.setdefault(r["method"], []).append(
                (r["seed"], at.get(r.get("best_epoch")), hist[-1]["train_proxy_r2"], hist[-1]["epoch"] + 1))
    lines = []
    for method, rows in by_method.items():
        rows.sort()
        sel = " / ".join("–" if v is None else f"{v:.2f}" for _, v, _, _ in rows)
        last = " / ".join(f"{v:.2f}" for _, _, v, _ in rows)
        lines.append(f"- {method}: proxy-vs-CLS R² on the training batches, seeds {', '.join(str(r[0]) for r in rows)}: "
                     f"{sel} at the selected epoch; {last} at the last epoch ({rows[0][3]}).")
    return lines


def compare_section(results: Mapping[str, Any], out_dir: Path) -> list[str]:
    eff, ns, mach = results["effective"], results["num_samples"], results.get("machine", {})
    seeds = sorted({s for r in results["leaderboard"] for s in r["seeds"]})
    task = results.get("pretrain_task", "labels")
    lines = [f"## {compare_title(results)}", "",
             f"**{REGIMES.get(task, task)}.** {results['task']} task, modalities {', '.join(results['modalities'])}; "
             f"{ns['train']}/{ns['val']}/{ns['test']} train/val/test samples (limit {eff['limit']}, data seed "
             f"{results['data_seed']}), {eff['epochs']} epochs with {eff['warmup_epochs']} warm-up, batch "
             f"{results['config'].get('batch_size')}, checkpoint selected on `--select "
             f"{results.get('select', 'patterns')}`, training seeds {', '.join(map(str, seeds))}. "
             f"Trained on {mach.get('cpu', '?')} ({mach.get('cores_usable', '?')} cores usable, "
             f"{mach.get('gpu') or mach.get('device', 'cpu')}): {training_time_text(results)}; the last invocation "
             f"took {results['wall_time_s'] / 60:.1f} min and finished {results.get('finished_at', '?')}. Its "
             f"command: `{results.get('command', '?')}`.",
             ""]
    lines += [f"> {n}" for n in results.get("notes", [])] + ([""] if results.get("notes") else [])
    uni = results.get("unimodal") or {}
    if uni:
        lines += ["Unimodal encoders (frozen in every method), their own linear heads on test: " + "; ".join(
            f"{m} {u['test'].get(results['metric'], float('nan')) * 100:.2f}% on "
            f"{u.get('pretrain_task') or 'labels'}" for m, u in uni.items() if u.get("test")) + "."]
        probes = {m: u["label_probe"] for m, u in uni.items() if (u.get("label_probe") or {}).get("test")}
        if probes:  # coarse pretraining: the downstream labels' ceiling, and the heads prompt-vicreg/UME-MMA start from
            def pct(t: Mapping[str, Any] | None) -> str:
                return f"{(t or {}).get(results['metric'], float('nan')) * 100:.2f}%"

            lines += ["Linear probes on the downstream labels over the frozen encoders, on whitened features (the "
                      "unimodal ceiling here): " + "; ".join(f"{m} {pct(p['test'])}" for m, p in probes.items()) + "."]
            heads = {m: p["head"]["test"] for m, p in probes.items() if (p.get("head") or {}).get("test")}
            if heads:
                lines += ["The heads the methods with unimodal heads start from (the same fit on the raw features, "
                          "which the whitened one outgrows: see train/recipes/label_probe.py): " +
                          "; ".join(f"{m} {pct(t)}" for m, t in heads.items()) + "."]
        lines += [""]
    lines += ["### Leaderboard", "",
              f"Test {results['metric']} (%), mean ± sample sd over seeds; each pattern through its own branch with "
              "the other modalities withheld. Sweep AUC: the missing-rate sweep's mean over x, averaged over its "
              f"directions. Lee 3-case avg: {lee_text(results)}. Latency: the first seed's bundle, onnxruntime "
              "CPU, batch 1.", "",
              leaderboard_table(results), ""]
    ceiling = ceiling_table(results)
    if ceiling:
        read_out = "own unimodal head" if task == "labels" else "whitened label probe"
        lines += [f"Against the unimodal ceiling: each method's test {results['metric']} with one modality alone minus "
                  f"that modality's {read_out} (points, mean over seeds; below zero, the method gets less out of the "
                  "frozen encoder than one linear read-out does):", "", ceiling, ""]
    lee = lee_table(results)
    if lee:
        lines += [f"The Lee et al. grid per case: test {results['metric']} (%), mean ± sd over the seeds with a grid; "
                  "each case's training and test splits miss each modality at the rates shown:", "", lee, ""]
    r2 = proxy_r2_lines(results)
    if r2:
        lines += ["Proxy convergence (the diagnostic logged per epoch; the checkpoint is chosen on validation "
                  "accuracy, not on it):", "", *r2, ""]
    lines += _figures(results, out_dir)
    lat = next(iter((results.get("latency") or {}).values()), None)
    if lat:
        m = lat.get("machine", {})
        lines += [f"Latency measured on {m.get('cpu_model', '?')} ({m.get('cpu_affinity', '?')} cores usable, "
                  f"onnxruntime {m.get('onnxruntime', '?')}, {lat['settings']['threads']} thread, "
                  f"{lat['settings']['runs']} runs after {lat['settings']['warmup']} warm-up).", ""]
    lines += ["### Verdicts on the papers' claims", "",
              "Each verdict compares means; a gap not larger than the larger seed sd of the two arms is "
              "*within the seed spread*; with a single seed in an arm there is no spread, so the gap is "
              "shown but not judged (*one seed*).", "", *[claim_line(v) for v in results.get("claims", [])], ""]
    return lines
