"""Before/after of the fusion, CPU INT8 and shared-weights work on one trained run (not a test).

    python scripts/measure_before_after.py --before bundles/before-X --after bundles/X --out docs/fusion

Per pattern, at batch 1 and one thread, in one process with every graph alternated round by
round (so load from other processes lands on all of them alike): p50 of before-fp32,
after-fp32, before-int8, after-int8, and the ratios the targets name. Accuracy and top-1
agreement per graph come from each manifest's parity record (held-out test rows). Bundle bytes,
and the cold start (fresh process: import + load every fp32 pattern + first prediction, with
peak RSS and PSS) come from runtime.bench_env.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from runtime.bench import open_runner
from runtime.bench_env import bundle_record, cold_start, machine_record
from runtime.bench_inputs import Inputs
from runtime.manifest import load_manifest
from runtime.runners import GraphSource


def bundle_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and "baseline" not in p.parts
               and not p.name.endswith(".json"))


def paired(before: Path, after: Path, rounds: int, calls: int, lengths: dict[str, int] | None = None) -> list[dict]:
    mb, ma = load_manifest(before), load_manifest(after)
    ib, ia = Inputs(mb, before, lengths), Inputs(ma, after, lengths)
    rows = []
    for key in ma.patterns("fp32"):
        cells = {}
        for tag, m, inp, root in (("before", mb, ib, before), ("after", ma, ia, after)):
            for prec in ("fp32", "int8"):
                if key in m.patterns(prec):
                    g = m.graph(key, prec)
                    cells[f"{tag}-{prec}"] = (open_runner("cpu", GraphSource(root, m, g), 1), inp.feeds(g, 1), g)
        times: dict[str, list[float]] = {k: [] for k in cells}
        for sess, feeds, _ in cells.values():
            for _ in range(5):
                sess.run(feeds)
        for _ in range(rounds):
            for k, (sess, feeds, _) in cells.items():
                t0 = time.perf_counter()
                for _ in range(calls):
                    sess.run(feeds)
                times[k].append((time.perf_counter() - t0) * 1e3 / calls)
        p50 = {k: float(np.median(v)) for k, v in times.items()}
        row = {"pattern": key, "p50_ms": p50,
               "fp32_after_over_before": p50["after-fp32"] / p50["before-fp32"]}
        if "after-int8" in p50:
            row["int8_after_over_fp32_after"] = p50["after-int8"] / p50["after-fp32"]
            row["int8_after_over_fp32_before"] = p50["after-int8"] / p50["before-fp32"]
        if "before-int8" in p50:
            row["int8_before_over_fp32_before"] = p50["before-int8"] / p50["before-fp32"]
        row["parity"] = {k: {f: c[2].parity.get(f) for f in ("top1_agreement", "metric_torch", "metric_ort",
                                                             "metric_delta", "num_samples")}
                         for k, c in cells.items()}
        row["int8_type"] = {k: c[2].int8_type for k, c in cells.items() if k.endswith("int8")}
        row["fused_ops"] = {k: c[2].fused_ops for k, c in cells.items()}
        rows.append(row)
    return rows


def markdown(rec: dict) -> str:
    out = ["| pattern | p50 ms fp32 before / after | fp32 after/before | int8 after (type) | int8/fp32 after | "
           "int8 before/fp32 before | top1 agree int8 after | acc fp32 / int8 after |", "|" + "---|" * 8]
    for r in rec["paired"]:
        p, par = r["p50_ms"], r["parity"]
        ia = par.get("after-int8", {})
        out.append(f"| {r['pattern']} | {p['before-fp32']:.3f} / {p['after-fp32']:.3f} | "
                   f"{r['fp32_after_over_before']:.2f}x | {p.get('after-int8', float('nan')):.3f} "
                   f"({r['int8_type'].get('after-int8')}) | {r.get('int8_after_over_fp32_after', float('nan')):.2f}x | "
                   f"{r.get('int8_before_over_fp32_before', float('nan')):.2f}x | {ia.get('top1_agreement')} | "
                   f"{par['after-fp32'].get('metric_ort')} / {ia.get('metric_ort')} |")
    for tag in ("before", "after"):
        c = rec[tag]["cold_start"]
        out.append(f"\n{tag}: bundle bytes (graphs + weights, no baseline) {rec[tag]['bundle_bytes']:,}; cold start "
                   f"{c.get('total_s', float('nan')):.3f} s, peak RSS {c.get('peak_rss_mb', float('nan')):.0f} MB, "
                   f"PSS {c.get('pss_mb') or float('nan'):.0f} MB")
    return "\n".join(out) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--before", type=Path, required=True)
    p.add_argument("--after", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("docs/fusion"))
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--calls", type=int, default=10)
    p.add_argument("--sequence-length", action="append", default=[], metavar="MODALITY=N",
                   help="time MODALITY at N tokens / frames (as mmedge bench --sequence-length)")
    args = p.parse_args()
    lengths = {m: int(n) for m, _, n in (x.partition("=") for x in args.sequence_length)}
    rec = {"machine": machine_record(1), "settings": {"rounds": args.rounds, "calls_per_round": args.calls,
                                                      "batch": 1, "threads": 1, "lengths": lengths}}
    rec["paired"] = paired(args.before, args.after, args.rounds, args.calls, lengths)
    for tag, path in (("before", args.before), ("after", args.after)):
        rec[tag] = {"bundle": str(path), "bundle_bytes": bundle_bytes(path), "cold_start": cold_start(path, 1),
                    "info": bundle_record(load_manifest(path), path)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "before_after.json").write_text(json.dumps(rec, indent=1, default=str) + "\n")
    (args.out / "before_after.md").write_text(markdown(rec))
    print(markdown(rec))


if __name__ == "__main__":
    main()
