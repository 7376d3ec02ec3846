"""Aggregation (mean ± sd over seeds) and the paper-claim verdicts of the ablation.

Pure functions on plain numbers, so the verdict logic is testable on hand-made values.

The claims checked (CMPT paper Sec. 4.6.1, Fig. 3/5):
- ordering: CMPT > modality dropout > baseline when a modality is missing, tested on every
  pattern that lacks a modality and on every partial point of the missing-rate sweep;
- no loss: with every modality present, CMPT's mean is not below the baseline's mean minus
  one baseline sd.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

# The paper's three arms, weakest first: baseline (no dropout), modality dropout, CMPT.
BASELINE, DROPOUT, PROPOSED = "late-fusion", "modality-dropout", "cmpt"
ROLES: tuple[str, str, str] = (BASELINE, DROPOUT, PROPOSED)
# Carried from missing_rate_sweep's result into the aggregated one (plot_sweep reads them).
SWEEP_META = ("protocol", "dataset", "task", "modalities", "seed", "num_samples", "num_incomplete_skipped")


def mean_sd(values: Iterable[float]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1; None for fewer than two values), with the values."""
    vals = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not vals:
        return {"mean": None, "sd": None, "n": 0, "values": []}
    sd = statistics.stdev(vals) if len(vals) > 1 else None
    return {"mean": statistics.fmean(vals), "sd": sd, "n": len(vals), "values": vals}


def _sd(stat: Mapping[str, Any]) -> float:
    return float(stat.get("sd") or 0.0)


def ordering_verdict(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Does CMPT > modality dropout > baseline hold on these means?

    ``stats``: {method: {"mean", "sd"}} for the three ROLES. "holds" compares means only;
    "clear" also asks each gap to exceed the larger sd of the two arms it separates.
    """
    b, d, c = (stats[m] for m in ROLES)
    if any(s.get("mean") is None for s in (b, d, c)):
        return {"holds": None, "reason": "a method has no number here"}
    gap_cd, gap_db = c["mean"] - d["mean"], d["mean"] - b["mean"]
    return {
        "holds": bool(gap_cd > 0 and gap_db > 0),
        "cmpt_gt_dropout": bool(gap_cd > 0),
        "dropout_gt_baseline": bool(gap_db > 0),
        "cmpt_gt_baseline": bool(c["mean"] > b["mean"]),
        "clear": bool(gap_cd > max(_sd(c), _sd(d)) and gap_db > max(_sd(d), _sd(b))),
        "gap_cmpt_minus_dropout": gap_cd,
        "gap_dropout_minus_baseline": gap_db,
        "means": {m: stats[m]["mean"] for m in ROLES},
        "sds": {m: stats[m].get("sd") for m in ROLES},
    }


def no_loss_verdict(stats: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """With every modality present: is CMPT's mean >= baseline mean - one baseline sd?"""
    b, c = stats[BASELINE], stats[PROPOSED]
    if b.get("mean") is None or c.get("mean") is None:
        return {"holds": None, "reason": "a method has no number here"}
    return {
        "holds": bool(c["mean"] >= b["mean"] - _sd(b)),
        "cmpt_minus_baseline": c["mean"] - b["mean"],
        "baseline_sd": b.get("sd"),
        "means": {m: stats[m]["mean"] for m in (BASELINE, PROPOSED)},
        "sds": {m: stats[m].get("sd") for m in (BASELINE, PROPOSED)},
    }


def aggregate_runs(runs: Sequence[Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """Per method: mean ± sd of every pattern metric, every sweep point, parameters and wall times.

    ``runs``: records with "method", "test_by_pattern", optional "sweep" (missing_rate_sweep's
    result), "parameters" and "wall_time_s".
    """
    out: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        patterns: dict[str, Any] = {}
        for key in dict.fromkeys(k for r in mine for k in r["test_by_pattern"]):
            names = dict.fromkeys(n for r in mine for n in r["test_by_pattern"].get(key, {}) if n != "num_samples")
            patterns[key] = {n: mean_sd(r["test_by_pattern"][key].get(n) for r in mine if key in r["test_by_pattern"])
                             for n in names}
            patterns[key]["num_samples"] = mine[0]["test_by_pattern"].get(key, {}).get("num_samples")
        sweeps = [r["sweep"] for r in mine if r.get("sweep")]
        sweep = None
        if sweeps:
            fractions = list(sweeps[0]["fractions"])
            sweep = {**{k: sweeps[0].get(k) for k in SWEEP_META}, "fractions": fractions,
                     "metric": sweeps[0].get("metric", metric), "labels": dict(sweeps[0].get("labels", {})),
                     "curves": {curve: [mean_sd(s["curves"][curve][i] for s in sweeps) for i in range(len(fractions))]
                                for curve in sweeps[0]["curves"]}}
        params = [dict(r["parameters"]) for r in mine if r.get("parameters")]
        out[method] = {
            "seeds": [r["seed"] for r in mine],
            "patterns": patterns,
            "sweep": sweep,
            "parameters": params[0] if params else None,
            "parameters_identical_across_seeds": all(p == params[0] for p in params),
            "wall_time_s": {k: mean_sd(r["wall_time_s"].get(k) for r in mine) for k in mine[0].get("wall_time_s", {})},
        }
    return out


def mean_sweep(agg_sweep: Mapping[str, Any], method: str = "") -> dict[str, Any]:
    """An aggregated sweep in missing_rate_sweep's own shape (means), plus "sd" curves for error bars."""
    return {**{k: agg_sweep.get(k) for k in SWEEP_META}, "method": method,
            "fractions": list(agg_sweep["fractions"]), "metric": agg_sweep.get("metric"),
            "labels": dict(agg_sweep.get("labels", {})),
            "curves": {c: [p["mean"] for p in pts] for c, pts in agg_sweep["curves"].items()},
            "sd": {c: [p["sd"] for p in pts] for c, pts in agg_sweep["curves"].items()}}


def verdicts(aggregate: Mapping[str, Any], metric: str, full_key: str, missing_keys: Sequence[str]
             ) -> dict[str, Any]:
    """The paper's claims on our numbers, as booleans with the numbers that decide them.

    ``full_key``: the all-modalities pattern; ``missing_keys``: the patterns lacking a modality.
    Returns {"available": False, ...} unless all three ROLES were run.
    """
    if not all(m in aggregate for m in ROLES):
        return {"available": False, "reason": f"needs all of {list(ROLES)}; ran {sorted(aggregate)}"}

    def stats_at(key: str) -> dict[str, Any]:
        return {m: aggregate[m]["patterns"].get(key, {}).get(metric, {"mean": None}) for m in ROLES}

    missing = {k: ordering_verdict(stats_at(k)) for k in missing_keys}
    sweep: dict[str, dict[str, Any]] = {}
    sweeps = [aggregate[m].get("sweep") for m in ROLES]
    if all(sweeps):
        fractions = sweeps[0]["fractions"]
        for curve in sweeps[0]["curves"]:
            # Partial points only: at 100% nothing is missing (that is the "no loss" claim).
            sweep[curve] = {str(f): ordering_verdict({m: aggregate[m]["sweep"]["curves"][curve][i] for m in ROLES})
                            for i, f in enumerate(fractions) if f < 100}
    no_loss = no_loss_verdict(stats_at(full_key))
    sweep_flags = [v["holds"] for pts in sweep.values() for v in pts.values() if v["holds"] is not None]
    missing_flags = [v["holds"] for v in missing.values() if v["holds"] is not None]
    summary = {
        "ordering_holds_on_every_missing_pattern": bool(missing_flags) and all(missing_flags),
        "ordering_holds_on_every_sweep_point": (all(sweep_flags) if sweep_flags else None),
        "sweep_points_where_ordering_holds": f"{sum(sweep_flags)}/{len(sweep_flags)}" if sweep_flags else None,
        "cmpt_beats_baseline_on_every_missing_pattern": all(v.get("cmpt_gt_baseline") for v in missing.values()),
        "no_loss_with_all_modalities": no_loss["holds"],
    }
    summary["paper_claim_holds"] = bool(summary["ordering_holds_on_every_missing_pattern"]
                                        and summary["ordering_holds_on_every_sweep_point"] is not False
                                        and no_loss["holds"])
    return {"available": True, "metric": metric, "full_pattern": full_key, "missing_patterns": missing,
            "sweep_partial_points": sweep or None, "no_loss_full_pattern": no_loss, "summary": summary}
