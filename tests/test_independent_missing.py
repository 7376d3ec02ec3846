"""MLA's Table 2 protocol: independent per-modality masking at eta in every split, one run per eta."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.patterns import Pattern
from test_multimodal import save_unimodal
from tiny_multimodal import make_dataset, make_samples
from train.recipes.independent_missing import independent_missing, independent_missing_runs, mask_dataset
from train.recipes.method import TrainConfig


def test_independent_masks_follow_the_conditioned_bernoulli_law() -> None:
    samples = make_samples(["audio", "image"], 6000, seed=0)
    patterns = independent_missing(samples, ["audio", "image"], 0.3, seed=1)
    assert all(len(p) >= 1 for p in patterns)
    # Each kept with 0.7, conditioned on not losing both (0.09): both 0.49/0.91, one only 0.21/0.91.
    both = sum(p == Pattern(["audio", "image"]) for p in patterns) / len(patterns)
    audio = sum(p == Pattern(["audio"]) for p in patterns) / len(patterns)
    assert both == pytest.approx(0.49 / 0.91, abs=0.02) and audio == pytest.approx(0.21 / 0.91, abs=0.02)
    assert patterns == independent_missing(samples, ["audio", "image"], 0.3, seed=1)  # seeded
    # A modality the data lacks stays missing: such a sample keeps its only modality.
    lacking = [s.restricted(Pattern(["image"])) for s in samples[:50]]
    assert set(independent_missing(lacking, ["audio", "image"], 0.7, seed=2)) == {Pattern(["image"])}
    with pytest.raises(ValueError, match="eta must be < 1"):
        independent_missing(samples[:3], ["audio", "image"], 1.0, seed=0)


def test_one_run_per_eta_on_masked_train_val_test(tmp_path: Path) -> None:
    save_unimodal(tmp_path / "unimodal")
    data = make_dataset(2, n_train=24, n_test=16)
    masked = mask_dataset(data, 0.5, seed=0)
    for split in data.splits:
        assert any(len(s.inputs) == 1 for s in masked.split(split)) and all(s.inputs for s in masked.split(split))
    base = TrainConfig(method="mla", dataset="tiny2", unimodal_dir=tmp_path / "unimodal", runs_dir=tmp_path / "runs",
                       epochs=2, warmup_epochs=0, batch_size=8, progress=False, lr=0.005)
    result = independent_missing_runs(base, etas=(0.5,), mask_seed=0, dataset=data)
    row = result["etas"]["0.5"]
    assert row["test"]["num_samples"] == 16
    assert row["test"]["patterns"] == {p.key: n for p, n in _counts(masked.split("test")).items()}
    assert 0.0 <= row["test"]["accuracy"] <= 1.0
    metrics = json.loads((Path(row["run"]) / "metrics.json").read_text())
    assert metrics["train_patterns"]["audio"] + metrics["train_patterns"]["image"] > 0  # train was masked
    traces = [h["train_trace_P"] for h in metrics["history"]]  # tr(P), recorded per epoch
    assert len(traces) == 2 and traces[1] < traces[0] < 32
    assert (tmp_path / "runs" / "tiny2" / "mla-independent.json").is_file()


def _counts(samples) -> dict[Pattern, int]:  # noqa: ANN001
    out: dict[Pattern, int] = {}
    for s in samples:
        out[s.pattern] = out.get(s.pattern, 0) + 1
    order = [Pattern(["audio", "image"]), Pattern(["audio"]), Pattern(["image"])]
    return {p: out[p] for p in order if p in out}
