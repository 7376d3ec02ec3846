"""docs/results.md, generated from every runs/<dataset>/{compare,ablation}*/results.json (never hand-written).

Run folders are machine-local and large; their results.json is small and holds every number the
report prints. ``--record DIR`` keeps a copy of each under ``DIR/<dataset>/<folder>/results.json``
(the repository's is docs/results-data/), and the report is rendered from that record, so it can be
regenerated on a clean checkout and a later comparison adds to it instead of replacing it.

Tables (mean ± sd over seeds per method and pattern), the sweep plot overlaying the methods,
the verdicts on the paper's claims, parameter counts, wall times, and caveats derived from
the numbers themselves.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtime.atomic import write_text_atomic
from train.recipes.ablation import RESULTS, machine_info, read_results
from train.reporting.ablation_stats import BASELINE, DROPOUT, PROPOSED, mean_sweep

# What a reader must know about each built-in dataset to read its numbers.
DATASET_CAVEATS = {
    "av-digits": ("av-digits pairs an image and a spoken clip by their digit label (as AV-MNIST does), not by "
                  "a shared event: each modality alone carries the whole label, so a missing modality costs "
                  "only a few points and the three methods have little room to differ."),
    "easy-vqa": ("easy-vqa needs both modalities in principle: the image alone cannot tell which question was "
                 "asked, and the question alone only narrows the answer to its type (shape, colour, yes/no). "
                 "How much the image adds here depends on the frozen image encoder; its own accuracy is on the "
                 "'pretrained unimodal encoders' line above."),
}


def fmt(stat: Mapping[str, Any] | None, scale: float = 100.0, digits: int = 2) -> str:
    """'97.12 ± 0.35' (percent by default); '–' when missing; no ± for one seed."""
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean'] * scale:.{digits}f}"
    return text if stat.get("sd") is None else f"{text} ± {stat['sd'] * scale:.{digits}f}"


def _methods(results: Mapping[str, Any]) -> list[str]:
    return list(results["aggregate"])


def dataset_table(results: Mapping[str, Any]) -> str:
    """Markdown table: method x pattern, headline metric in percent, mean ± sd over seeds."""
    metric, patterns = results["metric"], results["patterns"]
    head = "| method | " + " | ".join(f"`{p}`" for p in patterns) + " | seeds |"
    rows = [head, "|" + " --- |" * (len(patterns) + 2)]
    for method, agg in results["aggregate"].items():
        cells = [fmt(agg["patterns"].get(p, {}).get(metric)) for p in patterns]
        rows.append(f"| {method} | " + " | ".join(cells) + f" | {len(agg['seeds'])} |")
    return "\n".join(rows)


def sweep_table(results: Mapping[str, Any]) -> str | None:
    aggs = {m: a["sweep"] for m, a in results["aggregate"].items() if a.get("sweep")}
    if not aggs:
        return None
    first = next(iter(aggs.values()))
    fractions = first["fractions"]
    rows = ["| curve | method | " + " | ".join(f"{f}%" for f in fractions) + " |",
            "|" + " --- |" * (len(fractions) + 2)]
    for curve in first["curves"]:
        label = first.get("labels", {}).get(curve, curve)
        for method, sw in aggs.items():
            rows.append(f"| {label} | {method} | " + " | ".join(fmt(p, digits=1) for p in sw["curves"][curve]) + " |")
    return "\n".join(rows)


def _yes(flag: bool | None) -> str:
    return "n/a" if flag is None else ("**yes**" if flag else "**no**")


def verdict_lines(results: Mapping[str, Any]) -> list[str]:
    """One line per claim, with the numbers that decide it."""
    v = results.get("verdicts", {})
    if not v.get("available"):
        return [f"- Verdicts not computed: {v.get('reason', 'no verdicts in results.json')}."]
    lines = []
    for key, o in v["missing_patterns"].items():
        m = o["means"]
        lines.append(f"- Only `{key}` present: CMPT > modality dropout > baseline? {_yes(o['holds'])} "
                     f"(cmpt {m[PROPOSED] * 100:.2f}, dropout {m[DROPOUT] * 100:.2f}, "
                     f"baseline {m[BASELINE] * 100:.2f}; "
                     f"gaps larger than the sds: {_yes(o['clear'])}).")
    s = v["summary"]
    if s.get("sweep_points_where_ordering_holds"):
        every = _yes(s["ordering_holds_on_every_sweep_point"])
        lines.append(f"- Missing-rate sweep, partial points (x < 100%): the ordering holds at "
                     f"{s['sweep_points_where_ordering_holds']} points (all: {every}).")
    n = v["no_loss_full_pattern"]
    if n.get("holds") is not None:
        lines.append(f"- All modalities (`{v['full_pattern']}`): no loss for CMPT vs the baseline "
                     f"(mean within one baseline sd or better)? {_yes(n['holds'])} "
                     f"(cmpt − baseline = {n['cmpt_minus_baseline'] * 100:+.2f} points, baseline sd "
                     f"{(n['baseline_sd'] or 0) * 100:.2f}).")
    lines.append(f"- The paper's claim as a whole holds here: {_yes(s['paper_claim_holds'])}.")
    return lines


def cost_table(results: Mapping[str, Any]) -> str:
    rows = ["| method | learnable params | total params | train s / run | pattern eval s | sweep s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for method, agg in results["aggregate"].items():
        p, w = agg.get("parameters") or {}, agg.get("wall_time_s", {})
        rows.append(f"| {method} | {p.get('learnable', 0):,} | {p.get('total', 0):,} | "
                    f"{fmt(w.get('train'), 1, 0)} | {fmt(w.get('eval_patterns'), 1, 1)} | "
                    f"{fmt(w.get('sweep'), 1, 1)} |")
    return "\n".join(rows)


def observations(results: Mapping[str, Any]) -> list[str]:
    """Sentences read off the numbers (not opinions written in advance)."""
    metric, full = results["metric"], results["full_pattern"]
    out = []
    for method, agg in results["aggregate"].items():
        f = agg["patterns"].get(full, {}).get(metric, {}).get("mean")
        singles = {k: agg["patterns"][k][metric]["mean"] for k in results["patterns"]
                   if k != full and agg["patterns"].get(k, {}).get(metric, {}).get("mean") is not None}
        if f and singles:
            worst, best = min(singles, key=singles.get), max(singles, key=singles.get)
            out.append(f"{method}: all modalities {f * 100:.1f}%; `{best}` alone {singles[best] * 100:.1f}% "
                       f"({(singles[best] - f) * 100:+.1f} points), `{worst}` alone {singles[worst] * 100:.1f}% "
                       f"({(singles[worst] - f) * 100:+.1f} points).")
    for method, agg in results["aggregate"].items():
        for key in results["patterns"]:
            st = agg["patterns"].get(key, {}).get(metric, {})
            if (st.get("sd") or 0) > 0.02:  # one seed far from the others moves a 3-seed mean a lot
                vals = ", ".join(f"{x * 100:.1f}" for x in st["values"])
                out.append(f"{method} on `{key}` varies across seeds (sd {st['sd'] * 100:.1f} points; seeds: {vals}).")
    v = results.get("verdicts", {})
    if v.get("available"):
        for key, o in v["missing_patterns"].items():
            out.append(f"Only `{key}`: modality dropout − baseline = {o['gap_dropout_minus_baseline'] * 100:+.1f} "
                       f"points, CMPT − modality dropout = {o['gap_cmpt_minus_dropout'] * 100:+.1f} points.")
        unclear = [k for k, o in v["missing_patterns"].items() if o.get("holds") and not o.get("clear")]
        if unclear:
            out.append(f"The ordering on {', '.join(f'`{k}`' for k in unclear)} holds on the means but some gap is "
                       f"within one sd over {len(next(iter(results['aggregate'].values()))['seeds'])} seeds: "
                       "suggestive, not established.")
    return out


def label(results: Mapping[str, Any]) -> str:
    """The results folder's name (ablation, ablation-full, ...): tells apart runs of one dataset."""
    return str(results.get("_label", "ablation"))


def title(results: Mapping[str, Any]) -> str:
    return f"{results['dataset']}, {results['size']} size, {results['effective']['epochs']} epochs ({label(results)})"


def _plot(results: Mapping[str, Any], figures: Path) -> Path | None:
    from train.reporting.plots import plot_sweep

    curves = {m: mean_sweep(a["sweep"], m) for m, a in results["aggregate"].items() if a.get("sweep")}
    if not curves:
        return None
    path = figures / f"{results['dataset']}-{label(results)}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    plot_sweep(curves, path, f"{title(results)}: baseline vs modality dropout vs CMPT "
                             f"(mean of {len(next(iter(results['aggregate'].values()))['seeds'])} seeds)")
    return path


def dataset_section(results: Mapping[str, Any], out_dir: Path) -> list[str]:
    eff, ns = results["effective"], results["num_samples"]
    seeds = sorted({s for a in results["aggregate"].values() for s in a["seeds"]})
    mach = results.get("machine", {})
    lines = [f"## {title(results)}", "",
             f"{results['task']} task, modalities {', '.join(results['modalities'])}; "
             f"{results['size']} size: {ns['train']}/{ns['val']}/{ns['test']} train/val/test samples "
             f"(limit {eff['limit']}, data seed {results['data_seed']}), {eff['epochs']} epochs with "
             f"{eff['warmup_epochs']} warm-up, training seeds {', '.join(map(str, seeds))}. "
             f"Ran on {mach.get('cpu', '?')} ({mach.get('cores_usable', '?')} cores usable, "
             f"{mach.get('torch_threads', '?')} torch threads, "
             f"{mach.get('gpu') or mach.get('device', 'cpu')}) in "
             f"{results['wall_time_s'] / 60:.1f} min (this invocation), "
             f"finished {results.get('finished_at', '?')}.", ""]
    lines += [f"> {n}" for n in results.get("notes", [])] + ([""] if results.get("notes") else [])
    lines += [f"Test {results['metric']} (%) per availability pattern, each pattern on every test sample "
              "that has it with the other modalities withheld, through that pattern's own branch. "
              "Mean ± sample sd over seeds.", "", dataset_table(results), ""]
    uni = results.get("unimodal") or {}
    if uni:
        lines += ["Pretrained unimodal encoders (frozen in every method; their own linear heads, test): " +
                  "; ".join(f"{m} {fmt({'mean': u['test'].get(results['metric'])})}%" for m, u in uni.items()
                            if u.get("test")) + ".", ""]
    figure = _plot(results, out_dir / "figures")
    if figure is not None:
        lines += [f"![missing-rate sweep, {results['dataset']}]({os.path.relpath(figure, out_dir)})", ""]
    table = sweep_table(results)
    if table:
        lines += ["Missing-rate sweep (one modality at 100%, the other at x% of the test samples), mean ± sd:", "",
                  table, ""]
    else:
        lines += ["Missing-rate sweep: not run for these results (per-pattern numbers only).", ""]
    lines += ["### Verdicts on the paper's claims", "", *verdict_lines(results), "",
              "### Cost", "", cost_table(results), ""]
    return lines


def find_results(runs_dir: Path) -> list[Path]:
    return sorted(Path(runs_dir).glob(f"*/ablation*/{RESULTS}"))


def find_compare_results(runs_dir: Path) -> list[Path]:
    return sorted(Path(runs_dir).glob(f"*/compare*/{RESULTS}"))


def keep_record(runs_dir: Path, record: Path) -> list[Path]:
    """Copy every compare and ablation results.json under ``runs_dir`` into ``record``; returns the copies.

    A copy replaces the record's file for the same dataset and folder (one regime of one dataset);
    folders that ``runs_dir`` lacks stay in the record untouched. Each file is written atomically.
    """
    runs_dir, record = Path(runs_dir), Path(record)
    if runs_dir.resolve() == record.resolve():
        return []
    kept = []
    for src in [*find_compare_results(runs_dir), *find_results(runs_dir)]:
        dest = record / src.parent.parent.name / src.parent.name / RESULTS
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(dest, src.read_text())
        kept.append(dest)
    return kept


def write_report(runs_dir: Path = Path("runs"), out: Path = Path("docs/results.md"),
                 extra: Sequence[Path] = (), record: Path | None = None) -> Path:
    """Render every compare and ablation results.json under ``runs_dir`` (and ``extra``) into ``out``.

    With ``record``, the results under ``runs_dir`` are first copied into it (:func:`keep_record`)
    and the report is rendered from the record alone. Written atomically; returns ``out``. The
    comparisons come first, then the ablations.
    """
    from train.reporting.compare_report import compare_section

    out = Path(out)
    command = f"mmedge train report --runs-dir {runs_dir}" + (f" --record {record}" if record else "") + f" --out {out}"
    if record is not None:
        keep_record(runs_dir, record)
        runs_dir = Path(record)
    compared = list(dict.fromkeys([*find_compare_results(runs_dir), *(Path(p) for p in extra if Path(p).is_file())]))
    compared = [p for p in compared if read_results(p).get("kind") == "compare"]
    found = [p for p in find_results(runs_dir) if p not in compared]
    if not found and not compared:
        raise FileNotFoundError(f"no {RESULTS} under {runs_dir}/*/compare*/ or {runs_dir}/*/ablation*/; run "
                                "`mmedge train compare --dataset av-digits` (or `mmedge train ablation`) first")
    all_results = [{**read_results(p), "_label": p.parent.name} for p in found]
    mach = machine_info()
    lines = ["# Results: " + ("every method compared" if compared else "baseline vs modality dropout vs CMPT"), "",
             f"Generated by `{command}` on "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} ({mach['cpu']}, "
             f"{mach['cores_usable']} cores). Do not edit by hand: re-run the command.", "",
             *([] if not found else [
                 "The ablation sections: the CMPT paper's ablation (Sec. 4.6.1, Fig. 3 and 5): a baseline trained "
                 "without modality dropout (`late-fusion`: frozen encoders, rank-1 LoRA, additive fusion, one head), "
                 "the same model trained with random modality dropout (`modality-dropout`), and CMPT. The paper "
                 "claims CMPT > modality dropout > baseline when a modality is missing, and no loss when all are "
                 "present.", ""]),
             *([] if not compared else [
                 "The comparison sections train every registered method with several seeds on the same frozen "
                 "unimodal encoders and data, under each regime of unimodal pretraining, and judge each paper's "
                 "claim on those numbers (`mmedge train compare`).", ""]),
             "Sources: " + ", ".join(f"`{p}`" for p in [*compared, *found]) + ".", ""]
    for path in compared:
        lines += compare_section({**read_results(path), "_label": path.parent.name}, out.parent)
    for results in all_results:
        lines += dataset_section(results, out.parent)
    lines += ["## What this shows, and caveats", ""]
    for results in all_results:
        v = results.get("verdicts", {})
        verdict = v.get("summary", {}).get("paper_claim_holds") if v.get("available") else None
        lines.append(f"- **{title(results)}**: the paper's claim as a whole holds: {_yes(verdict)}.")
        lines += [f"  - {s}" for s in observations(results)]
        if results["dataset"] in DATASET_CAVEATS:
            lines.append(f"  - {DATASET_CAVEATS[results['dataset']]}")
        if results["size"] != "full":
            limit = results["effective"]["limit"]
            lines.append(f"  - Reduced size ({results['effective']['epochs']} epochs, "
                         f"{'all data' if limit is None else f'{limit} samples per split'}).")
    lines += ["- The paper fine-tunes ViT-B/BERT-base for 10 epochs on MM-IMDb/Food-101; our encoders are small "
              "(MiniLM for text, scratch encoders otherwise), so absolute numbers are not comparable with its figures."]
    lines += ["- With 3 seeds the sd is itself uncertain; a gap inside one sd is not evidence either way.",
              "- Every method shares the same frozen unimodal encoders, pretrained once; seeds vary only the "
              "method's initialisation, dropout and batch order, never the data subset.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(out, "\n".join(lines))
