"""One verdict per paper claim, from the comparison's per-seed numbers, with the seed spread in view.

Pure functions on plain numbers (testable on hand-made values). Every verdict is one of
HOLDS / FAILS / WITHIN (the deciding gap is not larger than the seed spread) / ONE_SEED (an arm
has a single seed, so no spread to judge the gap by) / NOT_RUN (a method the claim needs is not
registered or was not run, or the protocol it needs was skipped), and carries the numbers that
decided it.

The spread of a gap between two methods is the larger of their two seed sds: a gap smaller than
one seed sd of either arm is not evidence either way.

``data``, the input of every claim, is a mapping method -> per-seed lists::

    {"patterns": {pattern key: [metric per seed]}, "sweep": {direction: [[metric per x] per seed]},
     "fractions": [x, ...], "lee_three_case": [three-case average per seed]}

plus ``unimodal`` (modality -> the unimodal model's own test metric, same labels) when comparable.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from train.reporting.ablation_stats import BASELINE, DROPOUT, PROPOSED, mean_sd

HOLDS, FAILS, WITHIN, NOT_RUN = "holds", "fails", "within the seed spread", "not run"
# A gap between arms of which one has a single seed has no spread to weigh it against: a reading, not a verdict.
ONE_SEED = "one seed: no spread to judge by"
# UME-MMA's "about 1.5 points of the unimodal model" and "far above naive late fusion".
UME_TOLERANCE, FAR_ABOVE = 0.015, 0.05
KIM, UME, SRMM, MLA = "prompt-vicreg", "ume-mma", "srmm", "mla"


def _stat(values: Sequence[float]) -> dict[str, Any]:
    return mean_sd(values)


def spread(*stats: Mapping[str, Any]) -> float:
    return max(float(s.get("sd") or 0.0) for s in stats)


def gap_status(gap: float, sd: float, margin: float = 0.0) -> str:
    """HOLDS when ``gap`` > ``margin`` by more than ``sd``, FAILS when below it by more than ``sd``, else WITHIN."""
    if gap - margin > sd:
        return HOLDS
    if gap - margin < -sd:
        return FAILS
    return WITHIN


def combine(statuses: Sequence[str]) -> str:
    """Every part must hold: one failure fails; otherwise any part within the spread leaves it within."""
    if not statuses or NOT_RUN in statuses:
        return NOT_RUN
    if ONE_SEED in statuses:
        return ONE_SEED
    if FAILS in statuses:
        return FAILS
    return WITHIN if WITHIN in statuses else HOLDS


def _not_run(claim: str, needs: Sequence[str], data: Mapping[str, Any], why: str = "") -> dict[str, Any]:
    missing = [m for m in needs if m not in data]
    reason = why or f"needs {', '.join(needs)}; not run: {', '.join(missing)}"
    return {"claim": claim, "methods": list(needs), "status": NOT_RUN, "reason": reason, "numbers": {}}


def _compare(a: str, b: str, sa: Mapping[str, Any], sb: Mapping[str, Any], margin: float = 0.0) -> dict[str, Any]:
    gap, sd = sa["mean"] - sb["mean"], spread(sa, sb)
    one_seed = any(s.get("n") == 1 for s in (sa, sb))  # the unimodal ceiling (no "n") is a fixed number
    return {"a": a, "b": b, "mean_a": sa["mean"], "mean_b": sb["mean"], "gap": gap, "spread": sd, "margin": margin,
            "status": ONE_SEED if one_seed else gap_status(gap, sd, margin)}


def _degradation(per_method: Mapping[str, Any], full: str, missing: Sequence[str]) -> dict[str, Any]:
    """Per seed: full-pattern metric minus the mean of the patterns lacking a modality."""
    pats = per_method["patterns"]
    n = len(pats[full])
    return _stat([pats[full][i] - sum(pats[k][i] for k in missing) / len(missing) for i in range(n)])


def _sweep_drop(per_method: Mapping[str, Any], fractions: Sequence[int]) -> dict[str, Any]:
    """Per seed: metric at the largest fraction (least missing) minus the mean over the curve, averaged over directions."""
    hi = max(range(len(fractions)), key=lambda i: fractions[i])
    curves = per_method["sweep"]
    seeds = len(next(iter(curves.values())))
    drops = []
    for s in range(seeds):
        per_dir = [c[s][hi] - sum(c[s]) / len(c[s]) for c in curves.values()]
        drops.append(sum(per_dir) / len(per_dir))
    return _stat(drops)


def cmpt_claim(data: Mapping[str, Any], full: str, missing: Sequence[str]) -> dict[str, Any]:
    claim = ("CMPT: CMPT > modality dropout > baseline with one modality missing, and no loss with all present")
    needs = [PROPOSED, DROPOUT, BASELINE]
    if any(m not in data for m in needs):
        return _not_run(claim, needs, data)
    parts: dict[str, Any] = {}
    for key in missing:
        c, d, b = (_stat(data[m]["patterns"][key]) for m in needs)
        parts[f"{key}: cmpt > dropout"] = _compare(PROPOSED, DROPOUT, c, d)
        parts[f"{key}: dropout > baseline"] = _compare(DROPOUT, BASELINE, d, b)
    c, b = _stat(data[PROPOSED]["patterns"][full]), _stat(data[BASELINE]["patterns"][full])
    # "No loss": CMPT not below the baseline by more than the spread (a gain is fine too).
    no_loss = _compare(PROPOSED, BASELINE, c, b)
    no_loss["status"] = FAILS if no_loss["status"] == FAILS else HOLDS
    parts[f"{full}: no loss"] = no_loss
    return {"claim": claim, "methods": needs, "status": combine([p["status"] for p in parts.values()]),
            "numbers": parts}


def kim_claim(data: Mapping[str, Any]) -> dict[str, Any]:
    claim = "Kim & Kim: beats the baseline (late fusion) on the three-case average of the Lee et al. grid (eta 70%)"
    needs = [KIM, BASELINE]
    if any(m not in data for m in needs):
        return _not_run(claim, needs, data)
    without = [m for m in needs if not data[m].get("lee_three_case")]
    if without:
        return _not_run(claim, needs, data, f"no run of {', '.join(without)} has the Lee et al. grid (--no-lee)")
    part = _compare(KIM, BASELINE, _stat(data[KIM]["lee_three_case"]), _stat(data[BASELINE]["lee_three_case"]))
    return {"claim": claim, "methods": needs, "status": part["status"], "numbers": {"three-case average": part}}


def ume_claim(data: Mapping[str, Any], missing: Sequence[str], unimodal: Mapping[str, float] | None
              ) -> dict[str, Any]:
    claim = (f"UME-MMA: within about {UME_TOLERANCE * 100:.1f} points of the unimodal model with a modality entirely "
             f"missing, and far (> {FAR_ABOVE * 100:.0f} points) above naive late fusion")
    needs = [UME, BASELINE]
    if any(m not in data for m in needs):
        return _not_run(claim, needs, data)
    if not unimodal or any(k not in unimodal for k in missing):
        return _not_run(claim, needs, data, "no unimodal model on the same labels (coarse-label pretraining), "
                                            "so the unimodal ceiling is not comparable")
    parts: dict[str, Any] = {}
    for key in missing:  # each single-modality pattern is "the other modality entirely missing"
        u = _stat(data[UME]["patterns"][key])
        uni = {"mean": unimodal[key], "sd": None}
        close = _compare(UME, f"unimodal {key}", u, uni, margin=-UME_TOLERANCE)
        parts[f"{key}: within {UME_TOLERANCE * 100:.1f} of unimodal"] = close
        parts[f"{key}: far above late fusion"] = _compare(UME, BASELINE, u, _stat(data[BASELINE]["patterns"][key]),
                                                          margin=FAR_ABOVE)
    return {"claim": claim, "methods": needs, "status": combine([p["status"] for p in parts.values()]),
            "numbers": parts}


def srmm_claim(data: Mapping[str, Any], full: str, missing: Sequence[str]) -> dict[str, Any]:
    claim = "SRMM: degrades less than a two-branch baseline (late fusion) as a modality goes missing"
    needs = [SRMM, BASELINE]
    if any(m not in data for m in needs):
        return _not_run(claim, needs, data)
    s, b = _degradation(data[SRMM], full, missing), _degradation(data[BASELINE], full, missing)
    part = _compare(BASELINE, SRMM, b, s)  # positive: the baseline loses more than SRMM
    part["what"] = "degradation = all-modalities metric minus the mean single-modality metric"
    return {"claim": claim, "methods": needs, "status": part["status"], "numbers": {"degradation": part}}


def mla_claim(data: Mapping[str, Any], fractions: Sequence[int] | None) -> dict[str, Any]:
    claim = "MLA: degrades less than late fusion as the per-modality missing rate grows"
    needs = [MLA, BASELINE]
    if any(m not in data for m in needs):
        return _not_run(claim, needs, data)
    if not fractions or not all(data[m].get("sweep") for m in needs):
        return _not_run(claim, needs, data, "the missing-rate sweep was not run (--no-sweep)")
    m, b = _sweep_drop(data[MLA], fractions), _sweep_drop(data[BASELINE], fractions)
    part = _compare(BASELINE, MLA, b, m)
    part["what"] = "drop = sweep metric at 100% minus the curve's mean, averaged over the directions"
    return {"claim": claim, "methods": needs, "status": part["status"], "numbers": {"sweep drop": part}}


def claim_verdicts(data: Mapping[str, Any], full: str, missing: Sequence[str], fractions: Sequence[int] | None,
                   unimodal: Mapping[str, float] | None) -> list[dict[str, Any]]:
    """The five claims, in the issue's order."""
    return [cmpt_claim(data, full, missing), kim_claim(data), ume_claim(data, missing, unimodal),
            srmm_claim(data, full, missing), mla_claim(data, fractions)]


def claim_line(v: Mapping[str, Any], scale: float = 100.0) -> str:
    """'- CMPT: ... **holds** (audio: cmpt > dropout: 71.0 vs 65.0, gap +6.0, spread 1.0; ...)'."""
    if v["status"] == NOT_RUN:
        return f"- {v['claim']}: **{NOT_RUN}** ({v['reason']})."
    parts = []
    for name, p in v["numbers"].items():
        margin = f", margin {p['margin'] * scale:+.1f}" if p.get("margin") else ""
        parts.append(f"{name}: {p['a']} {p['mean_a'] * scale:.2f} vs {p['b']} {p['mean_b'] * scale:.2f}, "
                     f"gap {p['gap'] * scale:+.2f}, seed spread {p['spread'] * scale:.2f}{margin} -> {p['status']}")
    return f"- {v['claim']}: **{v['status']}** ({'; '.join(parts)})."
