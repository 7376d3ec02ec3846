"""How a bundle's per-pattern confidence holds on the test split (a measurement, not a test).

    python scripts/measure_confidence.py BUNDLE --dataset easy-vqa --limit 1000 [--alpha 0.1] [--out DIR]

For every precision and pattern of the bundle, every test sample that has the pattern's modalities
is predicted through ``Runtime.predict_batch`` with the other modalities withheld (as the export's
calibration made its validation samples). Reported: accuracy; ECE (15 equal-mass bins) and NLL of
the graph's raw probabilities and of the calibrated ones; the conformal sets' empirical coverage and
mean size at ``--alpha``; with abstention configured, the selective accuracy and the share of
samples answered. Beside them, the export's own before -> after on the validation split (from the
manifest). The calibration was fitted on validation samples only, so the test numbers are held out.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from calibration.temperature import ece, nll
from runtime import Runtime
from runtime.atomic import write_text_atomic
from runtime.patterns import Pattern
from train.data.registry import load_dataset


def measure(bundle: Path, dataset: str, limit: int | None, alpha: float, batch: int = 64) -> dict[str, Any]:
    data = load_dataset(dataset, limit=limit)
    test = data.splits["test"]
    manifest = json.loads((bundle / "manifest.json").read_text())
    out: dict[str, Any] = {"bundle": str(bundle), "dataset": dataset, "limit": limit, "alpha": alpha, "rows": []}
    for precision in dict.fromkeys(g["precision"] for g in manifest["graphs"]):
        with Runtime.load(bundle, precision=precision, alpha=alpha) as rt:
            for key in rt.patterns:
                pattern = Pattern.from_key(key)
                rows = [s.restricted(pattern) for s in test if pattern <= s.pattern]
                preds = []
                for i in range(0, len(rows), batch):
                    preds += rt.predict_batch([s.inputs for s in rows[i:i + batch]])
                ys = np.array([s.label for s in rows])
                raw = np.stack([p.probabilities for p in preds])
                cell: dict[str, Any] = {"precision": precision, "pattern": key, "n": len(rows),
                                        "accuracy": float(np.mean(raw.argmax(1) == ys)),
                                        "ece_raw": ece(raw, ys), "nll_raw": nll(raw, ys)}
                if preds[0].calibrated_probabilities is not None:
                    cal = np.stack([p.calibrated_probabilities for p in preds])
                    cell.update(ece_cal=ece(cal, ys), nll_cal=nll(cal, ys),
                                coverage=float(np.mean([rt.labels[y] in p.prediction_set for p, y in zip(preds, ys)])),
                                mean_set_size=float(np.mean([p.set_size for p in preds])))
                if preds[0].abstained is not None:
                    kept = [p.label == rt.labels[y] for p, y in zip(preds, ys) if not p.abstained]
                    cell.update(answered=len(kept) / len(preds), selective_accuracy=float(np.mean(kept)) if kept else None)
                g = next(g for g in manifest["graphs"] if g["pattern"] == key and g["precision"] == precision)
                conf = g.get("confidence") or {}
                cell["val"] = {"temperature": conf.get("temperature"), "n": conf.get("n"),
                               **{f"{k}_{w}": conf.get("metrics", {}).get(w, {}).get(k)
                                  for k in ("ece", "nll") for w in ("before", "after")},
                               "abstain": conf.get("abstain")}
                out["rows"].append(cell)
                print(_line(cell), file=sys.stderr)
    return out


def _f(x: Any, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _line(c: dict[str, Any]) -> str:
    v = c["val"]
    return (f"| {c['precision']} | {c['pattern']} | {c['n']} | {_f(c['accuracy'])} | {_f(v['temperature'])} | "
            f"{_f(v['ece_before'])} -> {_f(v['ece_after'])} | {_f(v['nll_before'])} -> {_f(v['nll_after'])} | "
            f"{_f(c['ece_raw'])} -> {_f(c.get('ece_cal'))} | {_f(c['nll_raw'])} -> {_f(c.get('nll_cal'))} | "
            f"{_f(c.get('coverage'))} | {_f(c.get('mean_set_size'), 2)} | {_f(c.get('selective_accuracy'))} / "
            f"{_f(c.get('answered'))} |")


def markdown(rec: dict[str, Any]) -> str:
    head = ("| precision | pattern | test n | accuracy | T | val ECE before -> after | val NLL before -> after | "
            f"test ECE raw -> cal | test NLL raw -> cal | coverage @ {rec['alpha']:g} | mean set | "
            "selective acc / answered |")
    return "\n".join([head, "|" + "---|" * 12, *(_line(c) for c in rec["rows"])]) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle", type=Path)
    p.add_argument("--dataset", required=True, help="the bundle's dataset: av-digits, easy-vqa or a directory")
    p.add_argument("--limit", type=int, default=None, help="the run's --limit (its reduced splits)")
    p.add_argument("--alpha", type=float, default=0.1)
    p.add_argument("--out", type=Path, default=None, help="write confidence.json and confidence.md here")
    args = p.parse_args()
    rec = measure(args.bundle, args.dataset, args.limit, args.alpha)
    print(markdown(rec))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(args.out / "confidence.json", json.dumps(rec, indent=1) + "\n")
        write_text_atomic(args.out / "confidence.md", markdown(rec))


if __name__ == "__main__":
    main()
