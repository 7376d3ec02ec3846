"""The export's confidence step: fit each shipped graph's temperature, conformal scores and abstention.

Runs after parity, on the **exported graph itself** (so an INT8 graph is calibrated as it
ships) over the dataset's *validation* split (parity uses the test split, which therefore
stays untouched for reporting coverage). A pattern's calibration samples are the validation
samples that have every modality of the pattern, with the other modalities withheld, as
the per-pattern evaluation does. Writes ``reports/confidence/<precision>/<pattern>.json``
(the full report) and ``.png`` (the reliability diagram) and returns the manifest section.
"""
from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtime.manifest import relpath

VAL_SPLIT = "val"


@dataclass
class ConfidenceData:
    feeds: list[dict[str, np.ndarray]]
    labels: np.ndarray


def confidence_data(model: Any, dataset: Any, pattern: Any, *, samples: int | None, batch_size: int,
                    seed: int) -> ConfidenceData | None:
    """The pattern's validation feeds and labels; None (with a warning) when the split is missing or empty."""
    from train.runs import branch_batches

    splits = getattr(dataset, "splits", {})
    rows = [s for s in splits.get(VAL_SPLIT, []) if pattern <= s.pattern]
    if not rows:
        print(f"warning: no {VAL_SPLIT!r} samples with pattern {pattern.key}: its graphs ship without confidence "
              f"calibration (the dataset has splits {sorted(splits)})", file=sys.stderr)
        return None
    random.Random(seed).shuffle(rows)
    module = model.pattern_module(pattern)
    feeds, labels = [], []
    for args, y in branch_batches(model, module, [s.restricted(pattern) for s in rows[:samples]], batch_size):
        feeds.append({n: t.numpy() for n, t in zip(module.input_names, args)})
        labels.append(y)
    return ConfidenceData(feeds, np.concatenate(labels))


def fit_graph(path: Path, key: str, precision: str, data: ConfidenceData, task: str, tmp: Path, *,
              alpha: float, target_accuracy: float | None, threads: int = 1) -> dict[str, Any]:
    """Fit one graph on its own logits; write its report and diagram; return the manifest section."""
    from calibration.conformal import fit_section
    from calibration.temperature import calibrated, reliability_diagram
    from export.validate import ort_session, run_graph

    multi = task == "multi-label"
    logits = run_graph(ort_session(path, threads), data.feeds)["logits"]
    labels = data.labels if multi else data.labels.astype(np.int64)
    section, report = fit_section(logits, labels, multi_label=multi, alpha=alpha, target_accuracy=target_accuracy)
    base = tmp / "reports" / "confidence" / precision / key
    base.parent.mkdir(parents=True, exist_ok=True)
    png = reliability_diagram(calibrated(logits, 1.0, multi), calibrated(logits, section["temperature"], multi),
                              labels, base.with_suffix(".png"), multi_label=multi,
                              temperature=section["temperature"],
                              title=f"{key} [{precision}], {len(labels)} validation samples")
    base.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    section["report"], section["diagram"] = relpath(base.with_suffix(".json"), tmp), relpath(png, tmp)
    return section


def report_files(tmp: Path) -> list[Path]:
    """The diagrams (the build's checksum loop already lists reports/**/*.json)."""
    root = tmp / "reports" / "confidence"
    return sorted(root.rglob("*.png")) if root.is_dir() else []
