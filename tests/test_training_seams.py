"""The seams a method plugs into: discovery from its own file, the train_step hook, --select.

A throwaway method written to a temporary module file is discovered, listed by
`mmedge train run --help`, trained through its own ``train_step``, evaluated per pattern
and exported, with no other file of the project touched.
"""
from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import train.methods as methods_pkg
import train.methods.registry as registry
import train.methods.base as base
from export.build import BuildConfig, build_bundle
from runtime.manifest import load_manifest
from runtime.session import Runtime
from test_multimodal import save_unimodal
from tiny_multimodal import make_dataset
from train.recipes.method import TrainConfig, train_method
from train.runs import load_run

torch.set_num_threads(1)

PLUGIN = '''
"""Throwaway: late fusion with a counting training step (test plugin)."""
from dataclasses import dataclass

import torch
from torch import nn

from train.methods.base import MultimodalModel, PatternModule, default_train_step, scatter_rows, task_loss
from train.methods.registry import register


@dataclass
class ThrowawayConfig:
    width_scale: float = 1.0


@register("throwaway")
class Throwaway(MultimodalModel):
    config_class = ThrowawayConfig
    calls = 0  # train_step invocations, across instances

    def __init__(self, info, encoders, config):
        super().__init__(info, encoders, config)
        for e in self.encoders.values():
            e.requires_grad_(False)
        self.head = nn.Linear(next(iter(self.encoders.values())).hidden_size, self.num_classes)

    def forward(self, batch):
        fused = None
        for m, mb in batch.modalities.items():
            cls = scatter_rows(self.encoders[m](mb.inputs)[:, 0], mb.rows, batch.size)
            fused = cls if fused is None else fused + cls
        logits = self.head(fused * self.config.width_scale)
        out = {"logits": logits, "embedding": fused}
        if self.training:
            out["loss"] = task_loss(self.task, logits, batch.labels)
        return out

    def train_step(self, batch, ctx):
        type(self).calls += 1
        return default_train_step(batch, ctx)

    def pattern_module(self, pattern):
        return Branch(self, self.check_pattern(pattern))


class Branch(PatternModule):
    def __init__(self, model, pattern):
        super().__init__(pattern, model.encoders, model.task)
        self.head, self.scale = model.head, model.config.width_scale

    def fuse(self, inputs):
        fused = None
        for m in self.modalities:
            cls = self.encoders[m](inputs[m])[:, 0]
            fused = cls if fused is None else fused + cls
        return self.head(fused * self.scale), fused
'''


@pytest.fixture
def plugin_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on ``train.methods.__path__`` holding one method file; undone afterwards."""
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "throwaway_method.py").write_text(textwrap.dedent(PLUGIN))
    methods_pkg.__path__.append(str(folder))
    registry._DISCOVERED = False
    try:
        yield folder
    finally:
        methods_pkg.__path__.remove(str(folder))
        registry._REGISTRY.pop("throwaway", None)
        sys.modules.pop("train.methods.throwaway_method", None)
        registry._DISCOVERED = False


def test_a_method_file_is_discovered_listed_trained_evaluated_and_exported(
        plugin_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from train.cli import build_parser

    assert "throwaway" in registry.available_methods()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    help_text = capsys.readouterr().out
    assert "throwaway: Throwaway: late fusion with a counting training step" in help_text
    assert "width_scale=1.0" in help_text  # the method's options, from its config dataclass

    save_unimodal(tmp_path / "unimodal")
    data = make_dataset(2)
    cls = registry.get_method("throwaway")
    cfg = TrainConfig(method="throwaway", dataset="tiny2", out=tmp_path / "run", unimodal_dir=tmp_path / "unimodal",
                      epochs=1, warmup_epochs=0, batch_size=8, progress=False)
    metrics = train_method(cfg, dataset=data)
    steps = -(-len(data.split("train")) // 8)
    assert cls.calls == steps == metrics["optimizer_steps"]["total"]  # every batch went through train_step
    assert list(metrics["test_by_pattern"]) == ["audio+image", "audio", "image"]

    bundle = build_bundle(BuildConfig(method="throwaway", run=tmp_path / "run", out=tmp_path / "bundle",
                                      progress=False, exporter="legacy", placeholders=False, val_samples=12,
                                      calib_samples=8), model=load_run(tmp_path / "run"), dataset=data)
    manifest = load_manifest(bundle)
    assert manifest.method == "throwaway" and sorted(g.pattern for g in manifest.graphs) == [
        "audio", "audio+image", "image"]
    pred = Runtime.load(bundle).predict({"image": data.split("test")[0].inputs["image"], "audio": None})
    assert pred.pattern == "image"


# ---- --select ------------------------------------------------------------------------------
SCRIPTED = {  # epoch -> which patterns predict correctly
    0: {"audio+image"},  # complete best, per-pattern mean 1/3
    1: {"audio", "image"},  # complete worst, per-pattern mean 2/3: the best mean
    2: set(),  # the last epoch: everything wrong
}


class Scripted(base.MultimodalModel):
    """Predictions scripted per epoch: right on the patterns in SCRIPTED[epoch], one class off elsewhere.

    The label is read off the tiny fixture's inputs (image stripe at columns 2c..2c+1, audio
    feature c raised), so 'right' is exact. The epoch lives in a buffer, which the loop's
    kept-epoch weights include.
    """

    config_class = dict

    def __init__(self, info, encoders, config) -> None:  # noqa: ANN001
        super().__init__(info, encoders, config)
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the optimiser needs one parameter

    @classmethod
    def parse_config(cls, config):  # noqa: ANN001, ANN206
        return {}

    def to_config(self) -> dict:
        return {"method": "scripted", "config": {}}

    def guess(self, inputs: dict, pattern: frozenset) -> torch.Tensor:
        if "image" in inputs:
            img = inputs["image"]["pixel_values"].reshape(-1, 8, 8)
            truth = img.sum(dim=1).reshape(-1, 4, 2).sum(-1).argmax(-1)[:, None]
        else:
            truth = inputs["audio"]["values"].sum(dim=1)[:, :3].argmax(-1, keepdim=True)
        right = torch.tensor([1.0 if "+".join(sorted(pattern)) in SCRIPTED[e] else 0.0 for e in range(3)])
        shift = (1 - right[self.epoch.clamp(max=2)]).long()
        guess = (truth + shift) % 3
        return torch.nn.functional.one_hot(guess[:, 0], 3).float() * 10 + self.anchor

    def forward(self, batch) -> dict:  # noqa: ANN001
        inputs = {m: mb.inputs for m, mb in batch.modalities.items()}
        logits = self.guess(inputs, frozenset(inputs))
        out = {"logits": logits, "embedding": logits}
        if self.training:
            out["loss"] = (self.anchor ** 2).sum()
        return out

    def train_step(self, batch, ctx) -> dict:  # noqa: ANN001
        self.epoch.fill_(ctx.epoch)
        return {"loss": 0.0}

    def pattern_module(self, pattern):  # noqa: ANN001, ANN201
        model, pattern = self, self.check_pattern(pattern)

        class Branch(base.PatternModule):
            def fuse(self, inputs):  # noqa: ANN001, ANN202
                logits = model.guess(inputs, pattern)
                return logits, logits

        return Branch(pattern, self.encoders, self.task)


@pytest.fixture
def scripted() -> Iterator[None]:
    registry.register("scripted")(Scripted)
    try:
        yield
    finally:
        registry._REGISTRY.pop("scripted", None)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)`")
@pytest.mark.parametrize(("select", "kept"), [("patterns", 1), ("complete", 0), ("last", 2)])
def test_select_keeps_the_epoch_its_rule_prefers(scripted: None, tmp_path: Path, select: str, kept: int) -> None:
    save_unimodal(tmp_path / "unimodal")
    cfg = TrainConfig(method="scripted", dataset="tiny2", out=tmp_path / select, unimodal_dir=tmp_path / "unimodal",
                      epochs=3, warmup_epochs=0, batch_size=8, progress=False, select=select)
    metrics = train_method(cfg, dataset=make_dataset(2))
    assert metrics["best_epoch"] == kept and metrics["select"] == select
    history = {h["epoch"]: h for h in metrics["history"]}
    assert history[0]["val_accuracy" if select == "complete" else "val_audio+image_accuracy"] == 1.0
    if select != "complete":  # the per-pattern mean is the headline
        assert np.isclose(history[1]["val_accuracy"], 2 / 3) and np.isclose(history[0]["val_accuracy"], 1 / 3)
    # The kept epoch's weights are what was saved and what test scores come from.
    want = {k: (1.0 if k in SCRIPTED[kept] else 0.0) for k in ("audio+image", "audio", "image")}
    assert {k: v["accuracy"] for k, v in metrics["test_by_pattern"].items()} == want


def test_no_validation_split_carves_one_out_of_train(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_unimodal(tmp_path / "unimodal")
    data = make_dataset(2, n_train=30)
    del data.splits["val"]
    cfg = TrainConfig(method="late-fusion", dataset="tiny2", out=tmp_path / "run", unimodal_dir=tmp_path / "unimodal",
                      epochs=1, warmup_epochs=0, batch_size=8, progress=False, val_fraction=0.2)
    metrics = train_method(cfg, dataset=data)
    assert metrics["val_carved_from_train"] == 6 and metrics["num_samples"] == {"train": 24, "val": 6, "test": 12}
    assert "no validation split: using 6 of 30 training samples" in capsys.readouterr().out


def test_data_seed_draws_the_limit_subset_whatever_the_training_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`train run --data-seed`: the --limit subset is drawn with data_seed (as `train compare` fixes it), and
    with the training seed when none is given."""
    import train.data.registry as data_registry
    from train.recipes.method import TrainConfig, train_method

    seen: list[int] = []

    def stop_after_recording(name, data_dir=None, *, limit=None, seed=0, strict=True):  # noqa: ANN001
        seen.append(seed)
        raise RuntimeError("recorded")

    monkeypatch.setattr(data_registry, "load_dataset", stop_after_recording)
    for cfg in (TrainConfig(method="cmpt", seed=2, data_seed=0, limit=10), TrainConfig(method="cmpt", seed=2, limit=10)):
        with pytest.raises(RuntimeError, match="recorded"):
            train_method(cfg)
    assert seen == [0, 2]
