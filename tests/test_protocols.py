"""Missing-rate sweep, Lee et al. grid, mixed-pattern evaluation, plots and `mmedge train eval`, on tiny fixtures."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import train.recipes.method as multimodal
from runtime.patterns import Pattern
from test_multimodal import save_unimodal
from tiny_multimodal import make_dataset, make_encoders, make_samples
from train.data.masks import apply_patterns, random_missing
from train.engine.evaluate import evaluate_all_patterns, evaluate_by_pattern, evaluate_mixed, predict_mixed, predict_pattern
from train.methods import DatasetInfo, build_method
from train.recipes.method import TrainConfig, collate_for, method_run_dir
from train.reporting.plots import plot_sweep
from train.recipes.protocols import lee_grid, missing_rate_sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_model(num_modalities: int = 2, method: str = "late-fusion") -> torch.nn.Module:
    info = DatasetInfo.from_dataset(make_dataset(num_modalities))
    torch.manual_seed(0)
    return build_method(method, info, make_encoders(info, seed=1)).eval()


def assert_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 150


def test_mixed_evaluation_scores_each_sample_through_its_own_branch() -> None:
    model = tiny_model(2, "cmpt")
    collate = collate_for(model)
    full = make_samples(["audio", "image"], 30, seed=4)
    mixed = apply_patterns(full, random_missing(30, ["audio", "image"], 0.6, seed=1))
    logits, labels = predict_mixed(model, mixed, collate)
    for i in (0, 7, 29):  # every row is that sample alone through the branch of its pattern
        alone, _ = predict_pattern(model.pattern_module(mixed[i].pattern), [mixed[i]], collate)
        np.testing.assert_allclose(logits[i], alone[0], rtol=1e-5, atol=1e-6)
    assert labels.tolist() == [s.label for s in mixed]
    result = evaluate_mixed(model, mixed, collate)
    assert result["num_samples"] == 30 and sum(result["patterns"].values()) == 30
    assert result["patterns"]["audio+image"] == 12  # round(0.4 * 30) complete
    assert result["accuracy"] == pytest.approx(float((logits.argmax(1) == labels).mean()))


@pytest.mark.parametrize("num_modalities", [2, 3])
def test_sweep_endpoints_equal_the_complete_and_single_modality_patterns(num_modalities: int) -> None:
    model = tiny_model(num_modalities)
    collate = collate_for(model)
    names = sorted(make_dataset(num_modalities).modalities)
    test = make_samples(names, 45, seed=5)
    fractions = [0, 50, 100] if num_modalities == 3 else range(0, 101, 10)
    sweep = missing_rate_sweep(model, test, collate, names, "single-label", fractions=fractions, seed=3)
    complete = evaluate_by_pattern(model, test, collate)[Pattern(names).key]["accuracy"]
    single = evaluate_all_patterns(model, test, collate)
    assert sweep["metric"] == "accuracy" and set(sweep["curves"]) == set(names)
    for m in names:
        curve = sweep["curves"][m]
        assert len(curve) == len(sweep["fractions"]) == len(sweep["details"][m])
        assert curve[-1] == pytest.approx(complete)  # x = 100: everything present
        assert curve[0] == pytest.approx(single[m]["accuracy"])  # x = 0: only m
        assert sweep["details"][m][0]["patterns"] == {m: 45}
        assert sweep["details"][m][-1]["patterns"] == {Pattern(names).key: 45}
    if num_modalities == 2:
        assert sweep["fractions"] == list(range(0, 101, 10))
        # x = 30: exactly round(0.3 * 45) = 14 samples keep the other modality.
        assert sweep["details"]["audio"][3]["patterns"] == {"audio+image": 14, "audio": 31}
        assert sweep["labels"]["image"] == "image 100%, audio x%"
        again = missing_rate_sweep(model, test, collate, names, "single-label", seed=3)
        assert json.dumps(again, sort_keys=True) == json.dumps(sweep, sort_keys=True)  # seeded
    json.dumps(sweep)  # JSON-able


def test_sweep_skips_incomplete_samples_and_validates_fractions() -> None:
    model = tiny_model(2)
    test = make_samples(["audio", "image"], 10) + make_samples(["image"], 4, start=100)
    sweep = missing_rate_sweep(model, test, fractions=[0, 100])
    assert sweep["num_samples"] == 10 and sweep["num_incomplete_skipped"] == 4
    with pytest.raises(ValueError, match="percentages"):
        missing_rate_sweep(model, test, fractions=[0.5])  # a fraction, not a percentage
    with pytest.raises(ValueError, match="complete"):
        missing_rate_sweep(model, make_samples(["audio"], 3))


def test_lee_grid_trains_under_each_case_and_tests_on_each(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_unimodal(tmp_path / "unimodal")
    data = make_dataset(2, n_train=20, n_test=10)
    seen: dict[str, dict[str, int]] = {}
    real_loop = multimodal.train_loop

    def spy(model, train, val, *args, **kwargs):  # what the training loop really got
        case = args[-1].parent.name  # train_loop(..., out / "checkpoints")
        seen[case] = {"complete": sum(s.pattern == Pattern(["audio", "image"]) for s in train),
                      "no_image": sum("image" not in s.inputs for s in train),
                      "no_audio": sum("audio" not in s.inputs for s in train),
                      "val_complete": sum(len(s.inputs) == 2 for s in val)}
        return real_loop(model, train, val, *args, **kwargs)

    monkeypatch.setattr(multimodal, "train_loop", spy)
    base = TrainConfig(method="late-fusion", dataset="tiny2", unimodal_dir=tmp_path / "unimodal",
                       runs_dir=tmp_path / "runs", epochs=1, warmup_epochs=0, batch_size=8, progress=False)
    grid = lee_grid(base, eta=0.7, seed=0, dataset=data)
    cases = ["missing-image", "missing-audio", "missing-both"]
    assert grid["cases"] == cases and grid["trained"] == cases
    assert list(grid["grid"]) == cases and all(list(row) == cases for row in grid["grid"].values())
    assert grid["descriptions"]["missing-both"] == "image 65%, audio 65%"
    # Train split: 14 of 20 lose a modality (7 + 7 for missing-both); val (10) is masked the same way.
    expect = {"image": (14, 0), "audio": (0, 14), "both": (7, 7)}
    for case, (no_image, no_audio) in expect.items():
        assert seen[f"late-fusion-train-missing-{case}-70"] == {"complete": 6, "no_image": no_image,
                                                                "no_audio": no_audio, "val_complete": 3}
    assert grid["train_patterns"]["missing-both"] == {"audio+image": 6, "audio": 7, "image": 7}
    # Test split (10): masked per test case with the fixed seed, the same mask for every train case.
    assert grid["details"]["missing-audio"]["missing-image"]["patterns"] == {"audio+image": 3, "audio": 7}
    assert grid["details"]["missing-image"]["missing-both"]["patterns"] == {"audio+image": 3, "audio": 4, "image": 3}
    for t in cases:
        for c in cases:
            assert grid["grid"][t][c] == grid["details"][t][c]["accuracy"]
    run = method_run_dir(dataclasses.replace(base, train_missing="missing-image"))
    assert run.name == "late-fusion-train-missing-image-70" and (run / "model.safetensors").is_file()
    saved = json.loads((run / "config.json").read_text())["train"]
    assert saved["train_missing"] == "missing-image" and saved["train_eta"] == 0.7
    assert json.loads((run / "metrics.json").read_text())["train_missing"] == "missing-image"
    assert not (tmp_path / "runs" / "tiny2" / "late-fusion").exists()  # the normal run is untouched
    seen.clear()
    again = lee_grid(base, eta=0.7, seed=0, dataset=data)  # finished runs are reused, not retrained
    assert again["trained"] == [] and not seen and again["grid"] == grid["grid"]


def test_plot_sweep_overlays_several_runs(tmp_path: Path) -> None:
    test = make_samples(["audio", "image"], 12, seed=6)
    curves = {name: missing_rate_sweep(tiny_model(2, name), test, fractions=[0, 50, 100])
              for name in ("late-fusion", "cmpt")}
    assert_png(plot_sweep(curves, tmp_path / "one" / "overlay.png", title="overlay"))
    banded = {**curves["cmpt"], "sd": {m: [0.01] * 3 for m in curves["cmpt"]["curves"]}}  # ablation's mean +- sd
    assert_png(plot_sweep({"cmpt": banded, "late-fusion": curves["late-fusion"]}, tmp_path / "band.png"))
    assert_png(plot_sweep({"cmpt": curves["cmpt"]}, tmp_path / "single.png"))
    assert not [p for p in tmp_path.rglob(".*")]  # no temp files left behind
    bad = dict(curves, other={**curves["cmpt"], "metric": "f1_macro"})
    with pytest.raises(ValueError, match="does not match"):
        plot_sweep(bad, tmp_path / "bad.png")


def test_cli_eval_all_protocols(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train.data.registry as registry
    from train.cli import main

    data = make_dataset(2, n_train=16, n_test=10)
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: data)
    runs, uni = tmp_path / "runs", tmp_path / "unimodal"
    common = ["--method", "late-fusion", "--dataset", "tiny2", "--runs-dir", str(runs)]
    assert main(["eval", *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mmedge train run" in err and "Traceback" not in err
    save_unimodal(uni)
    multimodal.train_method(TrainConfig(method="late-fusion", dataset="tiny2", unimodal_dir=uni, runs_dir=runs,
                                        epochs=1, warmup_epochs=0, batch_size=8, progress=False), dataset=data)
    assert main(["eval", *common, "--protocol", "nope"]) == 2
    assert "unknown protocol 'nope'" in capsys.readouterr().err
    assert main(["eval", *common, "--protocol", "all", "--epochs", "1", "--unimodal-dir", str(uni)]) == 0
    out = capsys.readouterr().out
    eval_dir = runs / "tiny2" / "late-fusion" / "eval"
    names = ["patterns.json", "sweep.json", "sweep.png", "lee.json", "lee.md", "lee.png"]
    assert sorted(p.name for p in eval_dir.iterdir()) == sorted(names)
    for name in names:
        assert str(eval_dir / name) in out
    assert "audio+image" in out and "missing-both" in out and "x %" in out
    assert_png(eval_dir / "sweep.png")
    assert_png(eval_dir / "lee.png")
    lee = json.loads((eval_dir / "lee.json").read_text())
    assert lee["eta"] == 0.7 and len(lee["grid"]) == 3
    assert "| train \\ test |" in (eval_dir / "lee.md").read_text()
    assert json.loads((eval_dir / "sweep.json").read_text())["curves"]["audio"][-1] == pytest.approx(
        json.loads((eval_dir / "patterns.json").read_text())["by_pattern"]["audio+image"]["accuracy"])
