"""The ablation: mean ± sd, the paper-claim verdicts both ways, the report, and a tiny end-to-end run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from test_multimodal import save_unimodal
from tiny_multimodal import make_dataset
from train.reporting.ablation_stats import BASELINE, DROPOUT, PROPOSED, aggregate_runs, mean_sd, verdicts

FULL, MISSING = "audio+image", ["audio", "image"]


def test_mean_sd_matches_a_hand_computation() -> None:
    s = mean_sd([0.5, 0.7, 0.9])
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.7)
    # Sample sd (ddof=1): sqrt((0.2^2 + 0 + 0.2^2) / 2) = 0.2.
    assert s["sd"] == pytest.approx(0.2)
    assert mean_sd([0.4])["sd"] is None and mean_sd([])["mean"] is None


def fake_run(method: str, seed: int, acc: dict[str, float], sweep: list[float] | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {"method": method, "seed": seed, "parameters": {"learnable": 10, "total": 100},
                           "test_by_pattern": {k: {"accuracy": v, "num_samples": 12} for k, v in acc.items()},
                           "wall_time_s": {"train": 2.0 + seed, "eval_patterns": 0.5, "sweep": 0.1}}
    if sweep is not None:
        run["sweep"] = {"protocol": "missing-rate-sweep", "dataset": "tiny2", "task": "single-label",
                        "metric": "accuracy", "modalities": ["audio", "image"], "fractions": [0, 50, 100],
                        "curves": {"audio": sweep, "image": sweep},
                        "labels": {"audio": "audio 100%, image x%", "image": "image 100%, audio x%"}}
    return run


def fake_runs(single: dict[str, float], full: dict[str, float], spread: float = 0.01) -> list[dict[str, Any]]:
    """Three seeds per method around the given means (seed offsets -spread, 0, +spread)."""
    runs = []
    for method in (BASELINE, DROPOUT, PROPOSED):
        for seed, d in enumerate((-spread, 0.0, spread)):
            s, f = single[method] + d, full[method] + d
            runs.append(fake_run(method, seed, {FULL: f, "audio": s, "image": s}, [s, (s + f) / 2, f]))
    return runs


def test_aggregate_per_method_pattern_and_sweep_point() -> None:
    runs = [fake_run("cmpt", 0, {FULL: 0.9, "audio": 0.6}, [0.6, 0.7, 0.9]),
            fake_run("cmpt", 1, {FULL: 0.8, "audio": 0.5}, [0.4, 0.6, 0.8])]
    agg = aggregate_runs(runs, "accuracy")["cmpt"]
    assert agg["seeds"] == [0, 1] and agg["parameters"] == {"learnable": 10, "total": 100}
    assert agg["patterns"][FULL]["accuracy"]["mean"] == pytest.approx(0.85)
    assert agg["patterns"][FULL]["accuracy"]["sd"] == pytest.approx(math.sqrt(2 * 0.05**2))
    assert agg["patterns"]["audio"]["num_samples"] == 12
    assert [p["mean"] for p in agg["sweep"]["curves"]["audio"]] == pytest.approx([0.5, 0.65, 0.85])
    assert agg["wall_time_s"]["train"]["mean"] == pytest.approx(2.5)


def test_verdict_holds_when_the_numbers_show_the_papers_ordering() -> None:
    runs = fake_runs({BASELINE: 0.3, DROPOUT: 0.5, PROPOSED: 0.7}, {BASELINE: 0.9, DROPOUT: 0.9, PROPOSED: 0.9})
    v = verdicts(aggregate_runs(runs, "accuracy"), "accuracy", FULL, MISSING)
    assert v["available"] and v["summary"]["paper_claim_holds"] is True
    assert all(o["holds"] and o["clear"] for o in v["missing_patterns"].values())
    assert v["missing_patterns"]["audio"]["means"][PROPOSED] == pytest.approx(0.7)
    assert v["summary"]["sweep_points_where_ordering_holds"] == "4/4"  # 0% and 50%, two curves
    assert v["no_loss_full_pattern"]["holds"] is True


def test_verdict_fails_when_the_ordering_or_the_full_pattern_breaks() -> None:
    # Dropout beats CMPT on single modalities; CMPT loses 5 points (5 sds) with both present.
    runs = fake_runs({BASELINE: 0.3, DROPOUT: 0.7, PROPOSED: 0.5}, {BASELINE: 0.9, DROPOUT: 0.9, PROPOSED: 0.85})
    v = verdicts(aggregate_runs(runs, "accuracy"), "accuracy", FULL, MISSING)
    audio = v["missing_patterns"]["audio"]
    assert audio["holds"] is False and audio["cmpt_gt_dropout"] is False and audio["dropout_gt_baseline"] is True
    assert v["no_loss_full_pattern"]["holds"] is False
    assert v["no_loss_full_pattern"]["cmpt_minus_baseline"] == pytest.approx(-0.05)
    assert v["summary"]["paper_claim_holds"] is False
    # A gap inside the noise: the ordering holds on the means but is not "clear".
    close = fake_runs({BASELINE: 0.50, DROPOUT: 0.505, PROPOSED: 0.51}, {m: 0.9 for m in (BASELINE, DROPOUT, PROPOSED)})
    o = verdicts(aggregate_runs(close, "accuracy"), "accuracy", FULL, MISSING)["missing_patterns"]["image"]
    assert o["holds"] is True and o["clear"] is False
    # Without all three arms there is nothing to judge.
    assert verdicts(aggregate_runs(runs[:6], "accuracy"), "accuracy", FULL, MISSING)["available"] is False


def write_fake_results(runs_dir: Path) -> Path:
    from train.recipes.ablation import machine_info

    runs = fake_runs({BASELINE: 0.3, DROPOUT: 0.5, PROPOSED: 0.7}, {BASELINE: 0.9, DROPOUT: 0.9, PROPOSED: 0.92})
    agg = aggregate_runs(runs, "accuracy")
    results = {"dataset": "av-digits", "task": "single-label", "metric": "accuracy", "modalities": MISSING,
               "patterns": [FULL, *MISSING], "full_pattern": FULL, "size": "reduced",
               "num_samples": {"train": 24, "val": 12, "test": 12}, "data_seed": 0,
               "effective": {"limit": None, "epochs": 1, "warmup_epochs": 0, "sweep_fractions": [0, 50, 100]},
               "notes": ["a test note"], "machine": machine_info(), "wall_time_s": 12.0, "finished_at": "now",
               "unimodal": {"audio": {"test": {"accuracy": 0.95}}}, "aggregate": agg, "runs": runs,
               "verdicts": verdicts(agg, "accuracy", FULL, MISSING)}
    path = runs_dir / "av-digits" / "ablation" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))
    return path


def test_report_renders_tables_plot_and_verdicts(tmp_path: Path) -> None:
    from train.reporting.report import write_report

    write_fake_results(tmp_path / "runs")
    out = write_report(tmp_path / "runs", tmp_path / "docs" / "results.md")
    text = out.read_text()
    assert text.startswith("# Results") and "Generated by `mmedge train report" in text
    assert "| method | `audio+image` | `audio` | `image` | seeds |" in text
    assert "| cmpt | 92.00 ± 1.00 | 70.00 ± 1.00 | 70.00 ± 1.00 | 3 |" in text
    assert "The paper's claim as a whole holds here: **yes**" in text
    assert "pairs an image and a spoken clip by their digit label" in text and "a test note" in text
    assert "| late-fusion | 10 | 100 |" in text
    assert (tmp_path / "docs" / "figures" / "av-digits-ablation.png").stat().st_size > 1000
    assert "](figures/av-digits-ablation.png)" in text
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp file left behind


def test_report_record_keeps_each_regime_and_renders_from_it(tmp_path: Path) -> None:
    from train.reporting.report import write_report

    src = write_fake_results(tmp_path / "runs")
    record = tmp_path / "record"
    write_report(tmp_path / "runs", tmp_path / "docs" / "results.md", record=record)
    kept = record / "av-digits" / "ablation" / "results.json"
    assert json.loads(kept.read_text()) == json.loads(src.read_text())
    # A later run folder holding another dataset adds to the record; the first regime stays.
    other = json.loads(src.read_text()) | {"dataset": "easy-vqa"}
    later = tmp_path / "later" / "easy-vqa" / "ablation" / "results.json"
    later.parent.mkdir(parents=True)
    later.write_text(json.dumps(other))
    out = write_report(tmp_path / "later", tmp_path / "docs" / "results.md", record=record)
    text = out.read_text()
    assert kept.is_file() and (record / "easy-vqa" / "ablation" / "results.json").is_file()
    assert f"`{kept}`" in text and f"--record {record}" in text
    assert text.count("## ") >= 3  # both datasets' sections and the caveats
    # The record alone regenerates the same report (a clean checkout has no run folders).
    again = write_report(record, tmp_path / "docs" / "again.md")
    assert again.read_text().split("\n", 4)[4] == text.split("\n", 4)[4]


def test_tiny_ablation_end_to_end_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    import train.data.registry as registry
    from train.cli import main

    save_unimodal(tmp_path / "unimodal")
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: make_dataset(2, n_train=12, n_test=9))
    out = tmp_path / "ablation"
    code = main(["ablation", "--dataset", "tiny2", "--methods", "late-fusion,cmpt", "--seeds", "0,1",
                 "--epochs", "1", "--warmup-epochs", "0", "--batch-size", "6", "--out", str(out),
                 "--unimodal-dir", str(tmp_path / "unimodal"), "--runs-dir", str(tmp_path / "runs")])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert {"aggregate", "verdicts", "runs", "machine", "config", "effective", "data_seed", "patterns"} <= set(results)
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [("late-fusion", 0), ("late-fusion", 1),
                                                                  ("cmpt", 0), ("cmpt", 1)]
    assert all((out / m / f"seed{s}" / "model.safetensors").is_file() for m in ("late-fusion", "cmpt") for s in (0, 1))
    cmpt = results["aggregate"]["cmpt"]
    assert cmpt["patterns"][FULL]["accuracy"]["n"] == 2 and cmpt["parameters"]["learnable"] > 0
    assert results["verdicts"]["available"] is False  # modality-dropout was not run
    assert results["machine"]["cores_usable"] >= 1 and results["config"]["seeds"] == [0, 1]
    assert cmpt["sweep"]["fractions"] == list(range(0, 101, 10))  # the missing-rate sweep ran on every run
    assert len(cmpt["sweep"]["curves"]["audio"]) == 11 and cmpt["sweep"]["curves"]["audio"][-1]["n"] == 2
    assert "| cmpt |" in capsys.readouterr().out
