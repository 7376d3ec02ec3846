"""The comparison's derived numbers: sweep area under the curve, the leaderboard, the claims' per-seed input.

Pure functions on the run records of train.recipes.compare (plain dicts), so they are testable
on hand-made values.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from train.reporting.ablation_stats import mean_sd


def curve_auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Trapezoidal area under one curve, x rescaled to [0, 1]: the mean metric over the swept range."""
    if len(fractions) == 1:
        return float(values[0])
    xs = [float(x) for x in fractions]
    area = sum((xs[i + 1] - xs[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(xs) - 1))
    return area / (xs[-1] - xs[0])


def sweep_auc(sweep: Mapping[str, Any]) -> dict[str, float]:
    """{direction: AUC, ..., "mean": mean over directions} of one missing_rate_sweep result."""
    per = {d: curve_auc(sweep["fractions"], c) for d, c in sweep["curves"].items()}
    return {**per, "mean": sum(per.values()) / len(per)}


def claims_input(runs: Sequence[Mapping[str, Any]], metric: str) -> tuple[dict[str, Any], list[int] | None]:
    """Per method, per-seed lists (train.reporting.claims' input), and the sweep fractions."""
    data: dict[str, Any] = {}
    fractions = None
    for r in runs:
        d = data.setdefault(r["method"], {"patterns": {}, "sweep": {}, "lee_three_case": []})
        for key, m in r["test_by_pattern"].items():
            d["patterns"].setdefault(key, []).append(m[metric])
        if r.get("sweep"):
            fractions = list(r["sweep"]["fractions"])
            for direction, curve in r["sweep"]["curves"].items():
                d["sweep"].setdefault(direction, []).append(list(curve))
        if r.get("lee"):
            d["lee_three_case"].append(r["lee"]["three_case_average"])
    for d in data.values():
        d["sweep"] = d["sweep"] or None
        d["lee_three_case"] = d["lee_three_case"] or None
    return data, fractions


def leaderboard(runs: Sequence[Mapping[str, Any]], latency: Mapping[str, Any], metric: str,
                patterns: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method: mean over patterns, each pattern, sweep AUC, parameters, steps, time, latency, size.

    "mean over patterns" is computed per seed, then mean ± sd over seeds (so its sd is a seed spread).
    Rows are sorted by that mean, best first.
    """
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        per_seed = [sum(r["test_by_pattern"][k][metric] for k in patterns) / len(patterns) for r in mine]
        lat = latency.get(method) or {}
        steps = [(r.get("optimizer_steps") or {}).get("total") for r in mine]
        rows.append({
            "method": method, "seeds": [r["seed"] for r in mine],
            "mean_over_patterns": mean_sd(per_seed),
            "patterns": {k: mean_sd(r["test_by_pattern"][k][metric] for r in mine) for k in patterns},
            "sweep_auc": mean_sd(r["sweep_auc"]["mean"] for r in mine if r.get("sweep_auc")),
            "lee_three_case": mean_sd(r["lee"]["three_case_average"] for r in mine if r.get("lee")),
            "parameters": mine[0].get("parameters"),
            "optimizer_steps": mean_sd(s for s in steps if s is not None),
            "train_s": mean_sd(r["wall_time_s"]["train"] for r in mine),
            "unimodal_pretrain_task": mine[0].get("unimodal_pretrain_task"),
            "p50_ms": {prec: {k: v["p50_ms"] for k, v in pats.items()}
                       for prec, pats in (lat.get("latency_batch1") or {}).items()},
            "p90_ms": {prec: {k: v["p90_ms"] for k, v in pats.items()}
                       for prec, pats in (lat.get("latency_batch1") or {}).items()},
            "bundle_bytes": lat.get("bundle_bytes"), "graph_bytes": lat.get("graph_bytes"),
            "degraded": lat.get("degraded"),
        })
    rows.sort(key=lambda r: -(r["mean_over_patterns"]["mean"] or 0.0))
    return rows
