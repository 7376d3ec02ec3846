"""One shared, checksummed, 64-byte-aligned weights file per precision; references checked at load."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from export.build import BuildConfig, build_bundle
from export.weights import ALIGNMENT, unique_weight_bytes
from export_fixtures import tiny
from runtime.errors import BundleIntegrityError
from runtime.external_data import external_refs
from runtime.manifest import load_manifest, sha256_file
from runtime.patterns import all_patterns
from runtime.session import Runtime

torch.set_num_threads(1)
QUICK = dict(progress=False, exporter="legacy", placeholders=False, val_samples=12, calib_samples=8)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory) -> tuple[Path, Path]:
    model, data = tiny("cmpt", 2)
    root = tmp_path_factory.mktemp("w")
    shared = build_bundle(BuildConfig(out=root / "shared", shared_weights="always", **QUICK), model=model, dataset=data)
    inline = build_bundle(BuildConfig(out=root / "inline", shared_weights="never", **QUICK), model=model, dataset=data)
    return shared, inline


def _samples(n: int = 5) -> list[dict]:
    rng = np.random.default_rng(4)
    return [{"image": rng.normal(0, 0.3, (8, 8)).astype(np.float32),
             "audio": rng.normal(0, 1, (int(rng.integers(2, 7)), 5)).astype(np.float32)} for _ in range(n)]


def test_shared_bundle_stores_each_weight_once_and_predicts_like_inline(bundles) -> None:
    shared, inline = bundles
    m, mi = load_manifest(shared), load_manifest(inline)
    assert not mi.shared_weights and [w.file for w in m.shared_weights] == ["graphs/fp32/weights.bin"]
    w = m.shared_weights[0]
    assert w.size_bytes % ALIGNMENT == 0 and w.referenced_bytes > w.size_bytes  # the encoders appear twice
    for g in m.graphs:
        refs = external_refs((shared / g.file).read_bytes())
        assert refs and all(r.location == "weights.bin" and r.offset % ALIGNMENT == 0 for r in refs)
        ours = {(r.tensor, r.offset, r.length) for r in refs}
        theirs = {(t.name, int(d["offset"]), int(d["length"]))
                  for t in onnx.load(str(shared / g.file), load_external_data=False).graph.initializer
                  if t.data_location == onnx.TensorProto.EXTERNAL
                  for d in [{e.key: e.value for e in t.external_data}]}
        assert ours == theirs  # the runtime's protobuf walk agrees with onnx's parser
    inline_bytes = sum(g.size_bytes for g in mi.graphs)
    shared_bytes = w.size_bytes + sum(g.size_bytes for g in m.graphs)
    unique = unique_weight_bytes([inline / g.file for g in mi.graphs])
    assert shared_bytes < inline_bytes and w.size_bytes <= unique + ALIGNMENT * w.tensors
    a = Runtime.load(shared, intra_op_threads=1)
    b = Runtime.load(inline, intra_op_threads=1)
    for pattern in all_patterns(a.modalities):
        batch = [{m: s[m] if m in pattern else None for m in a.modalities} for s in _samples()]
        for pa, pb in zip(a.predict_batch(batch), b.predict_batch(batch)):
            assert pa.pattern == pb.pattern == pattern.key
            np.testing.assert_allclose(pa.probabilities, pb.probabilities, atol=1e-6, rtol=0)


def _copy(src: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(src, tmp_path / "b"))


def test_a_changed_byte_in_the_weights_file_is_refused(bundles, tmp_path: Path) -> None:
    b = _copy(bundles[0], tmp_path)
    path = b / "graphs/fp32/weights.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="weights.bin"):
        Runtime.load(b)


def _rewrite_ref(bundle: Path, **entry: str) -> None:
    """Point the first external tensor of the audio graph elsewhere and re-sign the graph in the manifest
    (what an attacker with write access to both could do): only the reference check is left to catch it."""
    rel = "graphs/fp32/audio.onnx"
    model = onnx.load(str(bundle / rel), load_external_data=False)
    t = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    for e in t.external_data:
        if e.key in entry:
            e.value = entry[e.key]
    onnx.save(model, str(bundle / rel))
    manifest = json.loads((bundle / "manifest.json").read_text())
    for g in manifest["graphs"]:
        if g["file"] == rel:
            g["sha256"] = sha256_file(bundle / rel)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("entry", "message"), [
    ({"offset": str(10**9)}, "outside"),
    ({"location": "../../../outside.bin"}, "leaves the bundle"),
    ({"location": "/etc/passwd"}, "relative path"),
    ({"location": "audio.onnx"}, "not a weights file the manifest lists"),
], ids=["offset-past-end", "dotdot", "absolute", "unlisted-file"])
def test_a_bad_reference_is_refused_with_a_typed_error(bundles, tmp_path: Path, entry: dict, message: str) -> None:
    b = _copy(bundles[0], tmp_path)
    _rewrite_ref(b, **entry)
    with pytest.raises(BundleIntegrityError, match=message):
        load_manifest(b)
    with pytest.raises(BundleIntegrityError):
        load_manifest(b, verify=False)  # path checks do not depend on verify


def test_small_bundles_stay_inline_by_default(bundles, tmp_path: Path) -> None:
    model, data = tiny("cmpt", 2)
    m = load_manifest(build_bundle(BuildConfig(out=tmp_path / "auto", **QUICK), model=model, dataset=data))
    assert not m.shared_weights and m.extra["weights"]["fp32"]["inline_graph_bytes"] > 0
    assert all(not external_refs((tmp_path / "auto" / g.file).read_bytes()) for g in m.graphs)
