"""Every registered method's every pattern exports at FP16 and passes parity against its torch branch.

FP32 and CPU INT8 of every method are covered in test_fusion.py; together they are the
registry-wide precision check a new method gets for free.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.build import BuildConfig, build_bundle
from export_fixtures import tiny
from runtime.manifest import load_manifest
from runtime.patterns import all_patterns
from runtime.session import Runtime
from train.methods import available_methods

torch.set_num_threads(1)


@pytest.mark.parametrize("method", available_methods())
def test_fp16_graphs_pass_parity_and_run_in_the_runtime(method: str, tmp_path: Path) -> None:
    model, data = tiny(method, 2)
    cfg = BuildConfig(method=method, precisions="fp16", out=tmp_path / "b", progress=False, placeholders=False,
                      val_samples=12, calib_samples=8,
                      exporter="dynamo" if method == "srmm" else "legacy")  # srmm's BatchNorm needs dynamo
    bundle = build_bundle(cfg, model=model, dataset=data)  # raises ParityError on any failure
    m = load_manifest(bundle)
    assert sorted(g.pattern for g in m.graphs) == sorted(p.key for p in all_patterns(model.modalities))
    assert all(g.precision == "fp16" and g.parity["passed"] and not g.degraded for g in m.graphs)
    sample = data.split("test")[0]
    pred = Runtime.load(bundle, precision="fp16").predict({"image": sample.inputs["image"], "audio": None})
    assert pred.pattern == "image" and abs(sum(pred.probabilities) - 1) < 1e-3
