"""Rendering of a benchmark record: JSON, Markdown and a PNG plot.

matplotlib is not a runtime dependency: it is imported lazily and the PNG is skipped with a
note when absent. Every file is written to a temp name beside its target, then renamed, so a
killed run never leaves a half-written report.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtime.atomic import atomic_file, write_json_atomic, write_text_atomic
from runtime.bench import TARGETS

# --------------------------------------------------------------------------- Markdown
def _ms(x: float) -> str:
    return f"{x:.3f}"


def _verdict(sec: dict[str, Any]) -> str:
    return "SKIPPED" if "skipped" in sec else ("MET" if sec.get("met") else "NOT MET")


def _overhead_detail(e: dict[str, Any]) -> str:
    """Where runtime_overhead goes: estimates less exposed to other processes' load than a p50 difference."""
    out = f"; median paired difference {e['overhead_paired_ms'] * 1e3:.0f} µs" if "overhead_paired_ms" in e else ""
    if e.get("overhead_inside"):
        out += f"; runtime's own time inside predict p50 {e['overhead_inside']['p50_ms'] * 1e3:.0f} µs"
    return out + f"; numpy preprocessing called alone {e['preprocess_only']['p50_ms'] * 1e3:.0f} µs"


def _table_p50(rec: dict[str, Any], pattern: str, provider: str) -> str:
    """The same graph's fp32 batch-1 p50 in the table pass, to print beside a paired-pass figure."""
    for r in rec["results"]:
        if (r["pattern"], r["precision"], r["provider"]) == (pattern, "fp32", provider) and "1" in r["batches"]:
            return f"; table pass {_ms(r['batches']['1']['p50_ms'])} ms"
    return ""


def target_lines(rec: dict[str, Any]) -> list[str]:
    """One line per target. Every latency names its pass: a ratio's figures come from its own paired
    pass (the two sides timed alternately), not from the table, so the table pass's p50 of the same
    graph is printed beside them rather than silently differing."""
    r = rec["ratios"]
    a, b, c, cold = (r["placeholder_speedup"], r["runtime_overhead"], r["torch_speedup"],
                     rec.get("cold_start"))
    lines = []
    if "skipped" in a:
        lines.append(f"placeholder_speedup: single-modality / full graph with placeholders: SKIPPED ({a['skipped']})")
    else:
        got = ", ".join(f"{e['pattern']}@{e['provider']} {e['ratio']:.2f}x ({_ms(e['graph_p50_ms'])} / "
                        f"{_ms(e['baseline_p50_ms'])} ms, paired pass{_table_p50(rec, e['pattern'], e['provider'])})"
                        for e in a["entries"])
        lines.append(f"placeholder_speedup: single-modality / full graph with placeholders, p50 b1 fp32: {got}; target <= "
                     f"{TARGETS['placeholder_speedup']}x: {_verdict(a)}")
    got = ", ".join(f"{e['pattern']} +{e['overhead_ms'] * 1e3:.0f} µs ({100 * e['overhead_rel']:.1f}%; "
                    f"{_ms(e['predict']['p50_ms'])} vs {_ms(e['session_run']['p50_ms'])} ms, paired pass"
                    f"{_table_p50(rec, e['pattern'], 'cpu')}{_overhead_detail(e)})"
                    for e in b["entries"])
    lines.append(f"runtime_overhead: Runtime.predict vs session.run, p50 b1 fp32 cpu: {got}; target <= max(5%, 50 µs): "
                 f"{_verdict(b)} [{b['note']}]")
    if "skipped" in c:
        lines.append(f"torch_speedup: onnxruntime fp32 vs eager PyTorch: SKIPPED ({c['skipped']})")
    else:
        got = ", ".join(f"{e['pattern']} {e['speedup']:.2f}x ({_ms(e['torch']['p50_ms'])} / {_ms(e['ort_p50_ms'])} ms, "
                        f"paired pass{_table_p50(rec, e['pattern'], 'cpu')})" for e in c["entries"])
        lines.append(f"torch_speedup: eager PyTorch / onnxruntime fp32, p50 b1 cpu, {c['threads']} thread(s): {got}; "
                     f"target >= {TARGETS['torch_speedup']}x: {_verdict(c)}")
    if not cold:
        lines.append("cold start: not measured (--no-cold-start)")
    elif "error" in cold:
        lines.append(f"cold start: FAILED ({cold['error'][-300:]})")
    else:
        lines.append(f"cold start (import + load + first predict): {cold['total_s']:.3f} s, peak RSS "
                     f"{cold['peak_rss_mb']:.0f} MB (process wall incl. interpreter {cold['process_wall_s']:.2f} s); "
                     f"target < {TARGETS['cold_s']:.0f} s and < {TARGETS['cold_rss_mb']:.0f} MB: "
                     f"{'MET' if cold['met'] else 'NOT MET'} [{cold['path']}]")
    return lines


def markdown(rec: dict[str, Any]) -> str:
    batches = rec["settings"]["batch_sizes"]
    m = rec["machine"]
    gpu = m.get("gpu") or {}
    out = [f"# Benchmark: {rec['bundle']}", "",
           f"Machine: {m['cpu_model']}, {m['cpu_count']} cores (affinity {m['cpu_affinity']}); GPU: "
           f"{', '.join(g['name'] for g in gpu.get('gpus', [])) or 'none'}; Python {m['python']}, onnxruntime "
           f"{m['onnxruntime']}, numpy {m['numpy']}, TensorRT {m['tensorrt'] or 'absent'}; ORT intra-op threads "
           f"{m['threads']['ort_intra_op']}, inter-op 1.",
           f"Runs: {rec['settings']['warmup']} warm-up + {rec['settings']['runs']} timed per cell; latency in ms. "
           "Table pass: each cell timed on its own, one after another; the full+placeholders rows and every ratio "
           "below come from paired passes (the compared graphs timed alternately), so the same graph's p50 can "
           "differ between the table and a ratio line; each ratio line prints both.",
           "Inputs: " + rec["settings"]["inputs"] + ".", "",
           "| pattern | precision | provider | p50 | p90 | p99 | min | mean ± std | "
           + " | ".join(f"samples/s @b{b}" for b in batches) + " | session create (ms) |",
           "|" + "---|" * (9 + len(batches))]
    for r in rec["results"]:
        if "1" not in r["batches"]:  # native TensorRT: engine refused batch 1 (errors are in the JSON)
            continue
        s = r["batches"]["1"]
        tp = " | ".join(f"{r['batches'][str(b)]['throughput_per_s']:.0f}" if str(b) in r["batches"] else "-"
                        for b in batches)
        fb = " (fell back)" if r["fell_back"] else ""
        out.append(f"| {r['pattern']} | {r['precision']} | {r['provider']}{fb} | {_ms(s['p50_ms'])} | "
                   f"{_ms(s['p90_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['min_ms'])} | {_ms(s['mean_ms'])} ± "
                   f"{_ms(s['std_ms'])} | {tp} | {1e3 * r['session_create_s']:.1f} |")
    for b in rec["baselines"]:
        s = b["batches"]["1"]
        out.append(f"| full+placeholders ({b['present']} present) | fp32 | {b['provider']} | {_ms(s['p50_ms'])} | "
                   f"{_ms(s['p90_ms'])} | {_ms(s['p99_ms'])} | {_ms(s['min_ms'])} | {_ms(s['mean_ms'])} ± "
                   f"{_ms(s['std_ms'])} | {s['throughput_per_s']:.0f} |" + " |" * (len(batches) - 1)
                   + f" {1e3 * b['session_create_s']:.1f} |")
    skipped = [f"{p}: {v['reason']}" for p, v in rec["providers"].items() if v["status"] != "ok"]
    if skipped:
        out += ["", "Skipped providers: " + "; ".join(skipped) + "."]
    out += ["", "## Targets", ""] + [f"- {line}" for line in target_lines(rec)]
    d = rec["ratios"]["precision_speedup"]
    if "entries" in d:
        out += ["", "## precision_speedup: latency vs FP32 (p50 ratio; < 1 is faster)", "",
                "Batch 1: the precisions of a pattern timed alternately (paired); larger batches: the table's "
                "cells, measured one after another (more exposed to load from other processes).", "",
                "| pattern | precision | provider | batch | p50 | fp32 p50 | ratio | paired |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {e['pattern']} | {e['precision']} | {e['provider']} | {e['batch']} | {_ms(e['p50_ms'])} | "
                f"{_ms(e['fp32_p50_ms'])} | {e['ratio']:.2f}x | {'yes' if e['paired'] else 'no'} |"
                for e in sorted(d["entries"], key=lambda e: (e["provider"], e["precision"], e["pattern"], e["batch"]))]
    info = rec.get("bundle_info")
    if info:
        out += ["", "## Bundle", "", "| precision | bundle bytes | unique weight bytes | ratio | shared weights file |",
                "|---|---|---|---|---|"]
        for p, v in info["precisions"].items():
            ratio = f"{v['bytes_over_unique']:.3f}x" if v["bytes_over_unique"] else "-"
            out.append(f"| {p} | {v['bundle_bytes']:,} | {v['unique_weight_bytes'] or '-'} | {ratio} | "
                       f"{v['shared_weights_file'] or 'inline'} |")
        out += ["", "| graph | INT8 type | fused ops |", "|---|---|---|"]
        out += [f"| {k} | {v['int8_type'] or '-'} | "
                + (", ".join(f"{op} {n}" for op, n in (v["fused_ops"] or {}).items()) or "none") + " |"
                for k, v in info["graphs"].items()]
    cold = rec.get("cold_start") or {}
    if "total_s" in cold:
        pss = f", PSS {cold['pss_mb']:.0f} MB" if cold.get("pss_mb") is not None else ""
        out += ["", f"Cold start (fresh process: import + load every fp32 pattern + first prediction): "
                    f"{cold['total_s']:.3f} s; peak RSS {cold['peak_rss_mb']:.0f} MB{pss}."]
    out += ["", f"Peak RSS of the benchmark process: {rec['peak_rss_mb']:.0f} MB."]
    if rec.get("plot_note"):
        out += ["", rec["plot_note"]]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- PNG and files
def plot(rec: dict[str, Any], path: Path) -> str | None:
    """p50 bars with p90 (tick) and p99 (whisker top) per pattern x precision/provider; None if no matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "PNG skipped: matplotlib is not installed (it is not a runtime dependency)."
    rows = [(r["pattern"], f"{r['precision']}/{r['provider']}", r["batches"]["1"]) for r in rec["results"]
            if "1" in r["batches"]]
    rows += [(f"full+ph ({b['present']})", f"fp32/{b['provider']}", b["batches"]["1"]) for b in rec["baselines"]]
    pats = list(dict.fromkeys(p for p, _, _ in rows))
    series = list(dict.fromkeys(s for _, s, _ in rows))
    width = 0.8 / max(len(series), 1)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(pats) * max(1, len(series) / 3)), 4))
    for i, s in enumerate(series):
        xs, st = zip(*[(pats.index(p) + (i - (len(series) - 1) / 2) * width, v) for p, ss, v in rows if ss == s])
        p50 = [v["p50_ms"] for v in st]
        ax.bar(xs, p50, width, label=s, yerr=[[0] * len(st), [v["p99_ms"] - v["p50_ms"] for v in st]], capsize=3)
        ax.scatter(xs, [v["p90_ms"] for v in st], marker="_", color="black", zorder=3)
    ax.set_xticks(range(len(pats)), pats)
    ax.set_ylabel("latency at batch 1 (ms): bar p50, tick p90, whisker p99")
    ax.set_title(f"{rec['bundle']}: {rec['settings']['runs']} runs, {rec['settings']['threads']} thread(s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        with atomic_file(path) as tmp:
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)
    return None


def write_outputs(rec: dict[str, Any], out_dir: Path, log: Callable[[str], None] = lambda s: None) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "bench.json", "markdown": out_dir / "bench.md", "png": out_dir / "bench.png"}
    note = plot(rec, paths["png"])
    if note:
        rec["plot_note"] = note
        log(note)
        del paths["png"]
    write_json_atomic(paths["json"], rec, default=str)
    write_text_atomic(paths["markdown"], markdown(rec))
    return paths
