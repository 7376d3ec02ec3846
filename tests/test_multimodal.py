"""train_method / load_run / `mmedge train run` on the tiny fixture with saved unimodal encoders."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tiny_multimodal import make_dataset, make_encoders
from train.engine.evaluate import evaluate_all_patterns
from train.methods import DatasetInfo
from train.recipes.method import TrainConfig, collate_for, train_method
from train.runs import load_run, read_metrics


def save_unimodal(root: Path, num_modalities: int = 2) -> None:
    """What `mmedge train unimodal` leaves behind: <modality>/encoder + modality.json."""
    info = DatasetInfo.from_dataset(make_dataset(num_modalities))
    for m, enc in make_encoders(info, seed=3).items():
        enc.save_pretrained(root / m / "encoder")
        spec = info.modalities[m]
        (root / m / "modality.json").write_text(json.dumps({"name": m, "type": spec.type,
                                                            "preprocess": spec.preprocess}))


def config(tmp_path: Path, method: str = "cmpt", **kw: object) -> TrainConfig:
    return TrainConfig(method=method, dataset="tiny2", out=tmp_path / "run", unimodal_dir=tmp_path / "unimodal",
                       epochs=2, warmup_epochs=1, batch_size=8, progress=False, **kw)  # type: ignore[arg-type]


def test_train_save_load_roundtrip(tmp_path: Path) -> None:
    save_unimodal(tmp_path / "unimodal")
    data = make_dataset(2)
    metrics = train_method(config(tmp_path, method_config={"align_weight": 0.3}), dataset=data)
    run = tmp_path / "run"
    assert {"model.safetensors", "config.json", "metrics.json", "checkpoints"} <= {p.name for p in run.iterdir()}
    assert list(metrics["test_by_pattern"]) == ["audio+image", "audio", "image"]
    assert metrics["test_as_given"]["audio+image"]["num_samples"] == len(data.split("test"))
    assert 0 < metrics["parameters"]["learnable"] < metrics["parameters"]["total"]
    # CMPT logs its losses and the proxies' R^2 against the CLS they stand in for, per epoch.
    assert all({"train_task_loss", "train_align_loss", "train_proxy_r2"} <= set(h) for h in metrics["history"])
    assert all(h["train_proxy_r2"] <= 1.0 for h in metrics["history"])
    assert read_metrics(run) == json.loads(json.dumps(metrics))
    saved = json.loads((run / "config.json").read_text())
    assert saved["method"] == "cmpt" and saved["config"]["align_weight"] == 0.3
    assert saved["dataset"]["modalities"]["image"]["preprocess"]["size"] == [8, 8]
    # Rebuilt without the unimodal runs: same weights, same per-pattern scores.
    for p in (tmp_path / "unimodal").rglob("*"):
        if p.is_file():
            p.unlink()
    model = load_run(run)
    assert not model.training and model.config.align_weight == 0.3
    again = evaluate_all_patterns(model, data.split("test"), collate_for(model))
    assert again == metrics["test_by_pattern"]


def test_rerun_resumes_and_missing_encoders_are_explained(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="mmedge train unimodal"):
        train_method(config(tmp_path, method="late-fusion"), dataset=make_dataset(2))
    save_unimodal(tmp_path / "unimodal")
    first = train_method(config(tmp_path, method="late-fusion"), dataset=make_dataset(2))
    second = train_method(config(tmp_path, method="late-fusion"), dataset=make_dataset(2))
    assert second["resumed_from_epoch"] == 1 and second["test_by_pattern"] == first["test_by_pattern"]


def test_cli_run_prints_a_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import train.data.registry as registry
    from train.cli import main

    save_unimodal(tmp_path / "unimodal")
    monkeypatch.setattr(registry, "load_dataset", lambda *a, **k: make_dataset(2))
    code = main(["run", "--method", "modality-dropout", "--dataset", "tiny2", "--epochs", "1", "--warmup-epochs", "0",
                 "--batch-size", "8", "--out", str(tmp_path / "md"), "--unimodal-dir", str(tmp_path / "unimodal"),
                 "--set", "lora_rank=2", "--min-steps", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert "audio+image" in out and "accuracy" in out and "learnable" in out
    assert json.loads((tmp_path / "md" / "config.json").read_text())["config"]["lora_rank"] == 2
    assert main(["run", "--method", "nope", "--unimodal-dir", str(tmp_path)]) == 2
    assert "available" in capsys.readouterr().err
