"""Unimodal pretraining on real av-digits data (tiny encoders, a few samples)."""
import json

import pytest
import torch
from safetensors import safe_open

from train.engine.batches import Collate
from train.cli import main as train_main
from train.data.registry import load_dataset
from train.encoders import load_encoder
from train.recipes.unimodal import UnimodalConfig, pretrain_unimodal

LIMIT = 60


@pytest.fixture(scope="module")
def digits():
    return load_dataset("av-digits", limit=LIMIT)


def _cfg(tmp_path, modality="image", epochs=2, limit=LIMIT, **kw):
    return UnimodalConfig(dataset="av-digits", modality=modality, out=tmp_path / modality, size="tiny",
                          epochs=epochs, batch_size=16, limit=limit, progress=False, **kw)


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_pretrain_writes_hf_encoder_metrics_and_reloads_identically(tmp_path, digits, modality):
    metrics = pretrain_unimodal(_cfg(tmp_path, modality, epochs=2))
    out = tmp_path / modality
    assert (out / "encoder" / "config.json").is_file() and (out / "encoder" / "model.safetensors").is_file()
    assert not list(out.rglob("*.bin")) and not list(out.rglob("*.pkl"))
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["test"] == metrics["test"] and 0.0 <= metrics["test"]["accuracy"] <= 1.0
    assert on_disk["num_samples"]["test"] == len([s for s in digits.split("test") if modality in s.inputs])
    spec = json.loads((out / "modality.json").read_text())
    assert spec["preprocess"] == digits.modalities[modality].preprocess  # the runtime will need exactly this

    # The saved encoder reproduces the trained one: same CLS on the same real samples.
    encoder = load_encoder(out / "encoder", modality)
    batch = Collate({modality: digits.modalities[modality]}, digits.task, 10)(digits.split("test")[:8])
    with torch.no_grad():
        cls = encoder(batch.modalities[modality].inputs)[:, 0]
    with safe_open(str(out / "checkpoints" / "best.safetensors"), "pt") as f:
        key = next(k for k in f.keys() if k.startswith("encoder."))
        assert key.removeprefix("encoder.") in encoder.state_dict()
        assert torch.equal(f.get_tensor(key), encoder.state_dict()[key.removeprefix("encoder.")])
    assert torch.isfinite(cls).all()


def test_training_lowers_the_loss(tmp_path):
    metrics = pretrain_unimodal(_cfg(tmp_path, "image", epochs=8, limit=300, lr=3e-3))
    losses = [h["train_loss"] for h in metrics["history"]]
    assert losses[-1] < 0.9 * losses[0], losses


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    first = pretrain_unimodal(_cfg(tmp_path, "audio", epochs=2))
    assert first["resumed_from_epoch"] is None
    second = pretrain_unimodal(_cfg(tmp_path, "audio", epochs=3))
    assert second["resumed_from_epoch"] == 1  # epochs 0 and 1 were done
    assert [h["epoch"] for h in second["history"]] == [0, 1, 2]
    assert second["history"][:2] == first["history"]  # nothing was retrained
    fresh = pretrain_unimodal(_cfg(tmp_path, "audio", epochs=3, resume=False))
    assert fresh["resumed_from_epoch"] is None


def test_unknown_modality_is_a_clear_cli_error(tmp_path, capsys):
    rc = train_main(["unimodal", "--dataset", "av-digits", "--modality", "lidar", "--limit", "20",
                     "--out", str(tmp_path / "x")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "lidar" in err and "image" in err and "audio" in err


def test_cli_trains_and_reports(tmp_path, capsys):
    rc = train_main(["unimodal", "--dataset", "av-digits", "--modality", "image", "--size", "tiny",
                     "--epochs", "1", "--limit", "40", "--min-steps", "0", "--out", str(tmp_path / "img")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and str(tmp_path / "img" / "encoder") in out
