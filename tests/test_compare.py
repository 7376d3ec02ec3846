"""`mmedge train compare`: coarse pretraining labels, the claim verdicts both ways, and a tiny end-to-end run."""
from __future__ import annotations

import dataclasses

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

# Imported before any test patches train.data.registry.load_dataset: train.recipes.unimodal binds
# load_dataset by name at import, and must keep the real one for the av-digits test below.
import train.recipes.compare  # noqa: F401
from test_multimodal import save_unimodal
from tiny_multimodal import make_dataset
from runtime.errors import ConfigError
from train.data.pretrain_tasks import DIGITS, relabel_for_pretraining
from train.data.types import MultimodalDataset, Sample
from train.reporting.claims import (FAILS, HOLDS, NOT_RUN, ONE_SEED, WITHIN, claim_verdicts, cmpt_claim, gap_status,
                                    srmm_claim)
from train.reporting.compare_stats import curve_auc

FULL, MISSING = "audio+image", ["audio", "image"]


def digits_dataset() -> MultimodalDataset:
    tiny = make_dataset(2)
    samples = [Sample(f"d{d}", {}, d) for d in range(10)]
    return MultimodalDataset("digits", "single-label", list(DIGITS), tiny.modalities, {"train": samples})


def test_coarse_relabelling_by_hand() -> None:
    data = digits_dataset()
    parity = relabel_for_pretraining(data, "coarse-parity")
    assert parity.labels == ["even", "odd"]
    assert [s.label for s in parity.split("train")] == [0, 1, 0, 1, 0, 1, 0, 1, 0, 1]
    mod3 = relabel_for_pretraining(data, "coarse-mod3")
    assert mod3.num_classes == 3 and [s.label for s in mod3.split("train")] == [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]
    assert [s.label for s in data.split("train")] == list(range(10))  # the original is left alone
    assert relabel_for_pretraining(data, "labels") is data
    with pytest.raises(ValueError, match="digits 0-9"):
        relabel_for_pretraining(make_dataset(2), "coarse-parity")  # tiny2's classes are c0..c2
    with pytest.raises(ValueError, match="unknown pretraining task"):
        relabel_for_pretraining(data, "coarse-mod7")


def per_seed(means: dict[str, dict[str, float]], spread: float = 0.01) -> dict[str, Any]:
    """Claims input: three seeds at mean - spread, mean, mean + spread for each method and pattern."""
    return {m: {"patterns": {k: [v - spread, v, v + spread] for k, v in pats.items()}, "sweep": None,
                "lee_three_case": None} for m, pats in means.items()}


def pats(full: float, single: float) -> dict[str, float]:
    return {FULL: full, "audio": single, "image": single}


def test_gap_status_uses_the_seed_spread() -> None:
    assert gap_status(0.05, 0.01) == HOLDS and gap_status(-0.05, 0.01) == FAILS and gap_status(0.005, 0.01) == WITHIN


def test_cmpt_claim_holds_fails_and_is_within_the_spread() -> None:
    holds = per_seed({"late-fusion": pats(0.9, 0.3), "modality-dropout": pats(0.9, 0.5), "cmpt": pats(0.9, 0.7)})
    v = cmpt_claim(holds, FULL, MISSING)
    assert v["status"] == HOLDS
    assert v["numbers"]["audio: cmpt > dropout"]["gap"] == pytest.approx(0.2)
    assert v["numbers"]["audio: cmpt > dropout"]["spread"] == pytest.approx(0.01)
    fails = per_seed({"late-fusion": pats(0.9, 0.3), "modality-dropout": pats(0.9, 0.7), "cmpt": pats(0.9, 0.5)})
    assert cmpt_claim(fails, FULL, MISSING)["status"] == FAILS
    close = per_seed({"late-fusion": pats(0.9, 0.50), "modality-dropout": pats(0.9, 0.505),
                      "cmpt": pats(0.9, 0.51)})
    assert cmpt_claim(close, FULL, MISSING)["status"] == WITHIN
    # A loss with every modality present fails the claim even when the ordering is clear.
    loss = per_seed({"late-fusion": pats(0.9, 0.3), "modality-dropout": pats(0.9, 0.5), "cmpt": pats(0.8, 0.7)})
    assert cmpt_claim(loss, FULL, MISSING)["status"] == FAILS
    # One seed in an arm: no spread, so even a clear gap is shown but not judged.
    single = {m: {**v, "patterns": {k: x[1:2] for k, x in v["patterns"].items()}} if m == "cmpt" else v
              for m, v in holds.items()}
    one = cmpt_claim(single, FULL, MISSING)
    assert one["status"] == ONE_SEED and one["numbers"]["audio: cmpt > dropout"]["gap"] == pytest.approx(0.2)


def test_srmm_claim_on_degradation_and_unregistered_methods_are_not_run() -> None:
    # late fusion loses 0.6 when a modality goes missing, SRMM 0.1: holds; the reverse fails.
    data = per_seed({"late-fusion": pats(0.9, 0.3), "srmm": pats(0.9, 0.8)})
    assert srmm_claim(data, FULL, MISSING)["status"] == HOLDS
    data = per_seed({"late-fusion": pats(0.9, 0.8), "srmm": pats(0.9, 0.3)})
    assert srmm_claim(data, FULL, MISSING)["status"] == FAILS
    verdicts = claim_verdicts(per_seed({"late-fusion": pats(0.9, 0.3), "cmpt": pats(0.9, 0.7)}), FULL, MISSING,
                              None, {"audio": 0.8, "image": 0.8})
    assert [v["status"] for v in verdicts] == [NOT_RUN] * 5
    assert "modality-dropout" in verdicts[0]["reason"] and "ume-mma" in verdicts[2]["reason"]


def test_ume_claim_against_the_unimodal_ceiling_and_late_fusion() -> None:
    from train.reporting.claims import ume_claim

    data = per_seed({"late-fusion": pats(0.9, 0.3), "ume-mma": pats(0.9, 0.80)})
    assert ume_claim(data, MISSING, {"audio": 0.8, "image": 0.8})["status"] == HOLDS  # at the ceiling, 50 above LF
    assert ume_claim(data, MISSING, {"audio": 0.9, "image": 0.9})["status"] == FAILS  # 10 points below
    # 1.5 points below the ceiling sits on the claim's tolerance: within the 1-point seed spread.
    assert ume_claim(data, MISSING, {"audio": 0.815, "image": 0.815})["status"] == WITHIN
    assert ume_claim(data, MISSING, None)["status"] == NOT_RUN  # coarse pretraining: no comparable ceiling


def test_folder_lock_refuses_a_second_writer_and_is_released(tmp_path: Path) -> None:
    import os

    from train.engine.folder_lock import folder_lock

    with folder_lock(tmp_path / "f", "compare"):
        with pytest.raises(ConfigError, match=f"another compare \\(pid {os.getpid()}\\) is writing"):
            with folder_lock(tmp_path / "f", "compare"):
                pass
    with folder_lock(tmp_path / "f", "compare"):  # released on exit: taken again
        pass


def test_curve_auc_is_the_mean_over_the_swept_range() -> None:
    assert curve_auc([0, 50, 100], [0.2, 0.6, 1.0]) == pytest.approx(0.6)
    assert curve_auc([0, 100], [0.5, 0.5]) == pytest.approx(0.5)


def test_coarse_pretrained_encoders_need_the_label_probe_for_heads(tmp_path: Path) -> None:
    from train.recipes.method import load_unimodal

    save_unimodal(tmp_path / "unimodal")
    for m in ("audio", "image"):
        meta = json.loads((tmp_path / "unimodal" / m / "modality.json").read_text())
        (tmp_path / "unimodal" / m / "modality.json").write_text(json.dumps({**meta, "pretrain_task": "coarse-parity"}))
    data = make_dataset(2)
    assert load_unimodal(data, tmp_path / "unimodal").pretrain_task == "coarse-parity"  # no heads: fine
    # The coarse task's head predicts parity: the methods with heads need the label probe, which is missing here.
    with pytest.raises(FileNotFoundError, match="label_head.safetensors.*adds the label probe"):
        load_unimodal(data, tmp_path / "unimodal", heads=True)


def test_tiny_compare_end_to_end_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture) -> None:
    import train.data.registry as registry
    from train.cli import main

    save_unimodal(tmp_path / "unimodal")
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: make_dataset(2, n_train=12, n_test=9))
    out, report = tmp_path / "compare", tmp_path / "docs" / "results.md"
    argv = ["compare", "--dataset", "tiny2", "--methods", "late-fusion,cmpt", "--seeds", "0,1", "--epochs", "1",
            "--warmup-epochs", "0", "--batch-size", "6", "--sweep-fractions", "0,50,100", "--no-lee", "--no-export",
            "--out", str(out), "--unimodal-dir", str(tmp_path / "unimodal"), "--runs-dir", str(tmp_path / "runs"),
            "--report", str(report)]
    from train.engine.folder_lock import folder_lock

    with folder_lock(out, "test holder"):  # another invocation writing this folder: refused before any training
        assert main(argv) == 2
    assert "is writing" in capsys.readouterr().err and not (out / "results.json").exists()
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["kind"] == "compare" and results["pretrain_task"] == "labels" and results["select"] == "patterns"
    assert [(r["method"], r["seed"]) for r in results["runs"]] == [("late-fusion", 0), ("late-fusion", 1),
                                                                  ("cmpt", 0), ("cmpt", 1)]
    run = results["runs"][0]
    assert run["optimizer_steps"]["total"] == 2 and run["unimodal_pretrain_task"] == "labels"
    assert 0.0 <= run["sweep_auc"]["mean"] <= 1.0 and run["parameters"]["learnable"] > 0
    board = {r["method"]: r for r in results["leaderboard"]}
    assert set(board) == {"late-fusion", "cmpt"} and board["cmpt"]["patterns"][FULL]["n"] == 2
    assert [c["status"] for c in results["claims"]] == [NOT_RUN] * 5  # neither claim's methods all ran
    text = report.read_text()
    assert text.startswith("# Results") and "### Leaderboard" in text and "same-label pretraining" in text
    assert "| cmpt |" in text and "**not run**" in text
    assert (report.parent / "figures" / "tiny2-compare-patterns.png").stat().st_size > 1000
    assert "export was skipped" in text
    # Re-running with the same settings reuses every record instead of training again.
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reused from") == 4
    # An interrupted re-run (here: the second run it would retrain fails) still holds every record.
    import train.recipes.compare as compare_mod

    calls = []

    def failing(*a, **k):
        calls.append(a)
        raise KeyboardInterrupt

    (out / "cmpt" / "seed0" / "model.safetensors").unlink()  # the third run must be retrained
    monkeypatch.setattr(compare_mod, "run_one", failing)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert len(calls) == 1
    kept = json.loads((out / "results.json").read_text())
    assert len(kept["runs"]) == 4
    monkeypatch.undo()
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: make_dataset(2, n_train=12, n_test=9))
    capsys.readouterr()
    # A narrower invocation reuses its run and keeps the others' records in results.json.
    assert main([*argv[:3], "--methods", "cmpt", "--seeds", "1", *argv[7:]]) == 0
    assert capsys.readouterr().out.count("reused from") == 1
    again = json.loads((out / "results.json").read_text())
    assert sorted((r["method"], r["seed"]) for r in again["runs"]) == sorted((r["method"], r["seed"])
                                                                          for r in results["runs"])


@pytest.mark.slow
def test_tiny_compare_lee_grid_export_and_latency(tmp_path: Path) -> None:
    from train.recipes.compare import CompareConfig, run_compare

    save_unimodal(tmp_path / "unimodal")
    data = make_dataset(2, n_train=12, n_test=9)
    cfg = CompareConfig(dataset="tiny2", methods=["late-fusion"], seeds=[0], epochs=1, warmup_epochs=0, batch_size=6,
                        sweep=False, lee=True, export=True, latency_runs=5, latency_warmup=1,
                        out=tmp_path / "compare", unimodal_dir=tmp_path / "unimodal", runs_dir=tmp_path / "runs",
                        report=tmp_path / "docs" / "results.md", progress=False)
    # First without the grid and the export; the second call adds the grid to the same run.
    first = run_compare(dataclasses.replace(cfg, lee=False, export=False), dataset=data)
    assert "lee" not in first["runs"][0] and first["lee_eta"] is None
    mtime = (tmp_path / "compare" / "late-fusion" / "seed0" / "model.safetensors").stat().st_mtime_ns
    results = run_compare(cfg, dataset=data)
    assert (tmp_path / "compare" / "late-fusion" / "seed0" / "model.safetensors").stat().st_mtime_ns == mtime
    assert results["lee_eta"] == 0.7
    lee = results["runs"][0]["lee"]
    assert sorted(lee["cases"]) == ["missing-audio", "missing-both", "missing-image"]
    assert lee["three_case_average"] == pytest.approx(sum(lee["grid"][c][c] for c in lee["cases"]) / 3)
    assert all(Path(d).is_relative_to(tmp_path / "compare" / "late-fusion" / "seed0" / "lee")
               for d in lee["runs"].values())  # per run, never over runs/<dataset>/
    lat = results["latency"]["late-fusion"]
    assert set(lat["latency_batch1"]) == {"fp32", "int8"}
    assert set(lat["latency_batch1"]["fp32"]) == {FULL, *MISSING}
    p = lat["latency_batch1"]["int8"]["audio"]
    assert 0 < p["p50_ms"] <= p["p90_ms"] and p["n"] == 5
    assert lat["bundle_bytes"] > lat["graph_bytes"]["fp32"] > lat["graph_bytes"]["int8"] > 0
    assert lat["machine"]["onnxruntime"]
    row = results["leaderboard"][0]
    assert row["p50_ms"]["fp32"][FULL] == lat["latency_batch1"]["fp32"][FULL]["p50_ms"]
    assert row["lee_three_case"]["mean"] == pytest.approx(lee["three_case_average"])
    text = (tmp_path / "docs" / "results.md").read_text()
    assert (tmp_path / "docs" / "figures" / "tiny2-compare-latency.png").stat().st_size > 1000
    assert "Latency measured on" in text
    # A narrower invocation without the export keeps late fusion's bundle latency in results.json.
    narrower = run_compare(dataclasses.replace(cfg, methods=["cmpt"], lee=False, export=False), dataset=data)
    assert narrower["latency"]["late-fusion"]["latency_batch1"] == lat["latency_batch1"]
    board = {r["method"]: r for r in narrower["leaderboard"]}
    assert board["late-fusion"]["p50_ms"]["fp32"][FULL] == lat["latency_batch1"]["fp32"][FULL]["p50_ms"]


def test_coarse_pretraining_on_av_digits_is_recorded_down_to_the_method_run(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from train.recipes.method import TrainConfig, train_method
    from train.recipes.unimodal import UnimodalConfig, pretrain_unimodal

    udir = tmp_path / "unimodal-coarse-parity"
    for m in ("image", "audio"):
        metrics = pretrain_unimodal(UnimodalConfig(dataset="av-digits", modality=m, out=udir / m, size="tiny",
                                                   epochs=1, batch_size=16, limit=40, progress=False,
                                                   pretrain_task="coarse-parity"))
        assert metrics["pretrain_task"] == "coarse-parity" and metrics["labels"] == ["even", "odd"]
        assert json.loads((udir / m / "modality.json").read_text())["pretrain_task"] == "coarse-parity"
        assert load_file(str(udir / m / "head.safetensors"))["weight"].shape[0] == 2  # two coarse classes
        # ... and the linear probe on the ten digits over the frozen encoder, for the methods with heads
        assert load_file(str(udir / m / "label_head.safetensors"))["weight"].shape[0] == 10
        probe = metrics["label_probe"]
        assert probe["num_samples"]["train"] == metrics["num_samples"]["train"] and 0 <= probe["test"]["accuracy"] <= 1
    run = train_method(TrainConfig(method="late-fusion", dataset="av-digits", out=tmp_path / "run", unimodal_dir=udir,
                                   epochs=1, warmup_epochs=0, batch_size=16, limit=40, progress=False))
    assert run["unimodal_pretrain_task"] == "coarse-parity"
    assert len(json.loads((tmp_path / "run" / "config.json").read_text())["dataset"]["labels"]) == 10
    # A method that starts from the unimodal heads now trains on coarse encoders, from the probes.
    pv = train_method(TrainConfig(method="prompt-vicreg", dataset="av-digits", out=tmp_path / "pv", unimodal_dir=udir,
                                  epochs=1, warmup_epochs=0, batch_size=16, limit=40, progress=False))
    assert pv["unimodal_pretrain_task"] == "coarse-parity" and set(pv["test_by_pattern"]) == {FULL, *MISSING}


def test_probe_whitening_by_hand() -> None:
    import torch

    from train.recipes.label_probe import whitening

    # Mean 0; sample variances 16/3 and 0.04/3, no covariance: W = diag(1/sqrt(16/3), 1/sqrt(0.04/3)) up to the
    # order and sign of the eigenvectors = diag(0.4330, 8.6603).
    x = torch.tensor([[-2.0, 0.1], [2.0, -0.1], [-2.0, -0.1], [2.0, 0.1]])
    mean, w = whitening(x)
    assert torch.allclose(mean, torch.zeros(2), atol=1e-7)
    assert sorted(round(v, 4) for v in w.abs().max(dim=0).values.tolist()) == [0.4330, 8.6603]
    assert torch.allclose(w.abs().min(dim=0).values, torch.zeros(2), atol=1e-6)  # one non-zero per column
    assert torch.allclose(torch.cov(((x - mean) @ w).T), torch.eye(2), atol=1e-5)


def test_label_probe_converges_when_the_label_lives_in_a_small_variance_direction(tmp_path: Path) -> None:
    """What a coarse-pretrained encoder gives: most variance in a nuisance direction (sd 100), the label at a
    spacing of 0.05 in another, both off the axes. Whitened, the ceiling probe separates the classes within 200
    steps; the same fit on the raw features (the head the methods start from) stays well short of it."""
    import torch

    from train.data.types import ModalitySpec, Sample
    from train.recipes.label_probe import fit_label_probe

    class Identity(torch.nn.Module):
        def forward(self, inputs: dict) -> torch.Tensor:
            return inputs["values"]

    spec = ModalitySpec("ts", "timeseries", {"type": "timeseries", "n_channels": 2, "max_frames": 1})
    rng = np.random.default_rng(1)

    rotate = np.array([[0.6, 0.8], [-0.8, 0.6]], np.float32)  # off the axes: Adam's per-coordinate steps don't help

    def rows(n: int, offset: int) -> list:
        return [Sample(f"s{offset + i}", {"ts": (np.array([[100.0 * rng.normal(), 0.05 * (i % 2)]], np.float32)
                                                 @ rotate)}, i % 2) for i in range(n)]

    result = fit_label_probe(Identity(), spec, {"train": rows(40, 0), "val": rows(10, 100), "test": rows(10, 200)},
                             "single-label", 2, tmp_path, seed=0, steps=200, every=20)
    assert result["val"]["accuracy"] == 1.0 and result["test"]["accuracy"] == 1.0  # the ceiling: whitened
    assert result["head"]["val"]["accuracy"] <= 0.8  # the saved head, fitted on the raw features, has not got there


def test_label_probe_reads_the_labels_off_frozen_features_and_keeps_the_best_step(tmp_path: Path) -> None:
    """Features whose first coordinate is the label: the probe separates them perfectly; the encoder is unchanged."""
    import torch
    from safetensors.torch import load_file

    from train.data.types import ModalitySpec, Sample
    from train.recipes.label_probe import PROBE_FILE, fit_label_probe

    class Identity(torch.nn.Module):  # "encoder": its CLS is the raw (1, F) series row, untouched
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, inputs: dict) -> torch.Tensor:
            return inputs["values"] * self.w

    spec = ModalitySpec("ts", "timeseries", {"type": "timeseries", "n_channels": 2, "max_frames": 1})
    rng = np.random.default_rng(0)

    def rows(n: int, offset: int) -> list:
        out = []
        for i in range(n):
            y = i % 3
            out.append(Sample(f"s{offset + i}", {"ts": np.array([[3.0 * y, rng.normal()]], np.float32)}, y))
        return out

    enc = Identity()
    result = fit_label_probe(enc, spec, {"train": rows(30, 0), "val": rows(9, 100), "test": rows(9, 200)},
                             "single-label", 3, tmp_path, seed=0, steps=200, every=20)
    assert result["val"]["accuracy"] == 1.0 and result["test"]["accuracy"] == 1.0
    assert result["head"]["test"]["accuracy"] == 1.0  # well conditioned: the raw-feature head gets there too
    assert 20 <= result["best_step"] <= 200 and result["best_step"] % 20 == 0
    assert enc.w.item() == 1.0  # frozen: the probe never updates the encoder
    assert load_file(str(tmp_path / PROBE_FILE))["weight"].shape == (3, 2)
