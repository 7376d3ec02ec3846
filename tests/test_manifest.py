"""The bundle format: JSON round trip, sha256 verification, paths that leave the bundle (no torch)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runtime.errors import BundleIntegrityError
from runtime.manifest import (MANIFEST_FILE, SCHEMA_VERSION, GraphEntry, Manifest, ModalityEntry, TensorSpec,
                              load_manifest, resolve_in_bundle, sha256_file)


def make_bundle(root: Path) -> Path:
    """A structurally complete bundle whose 'graphs' are opaque bytes (load_manifest does not parse them)."""
    root.mkdir(parents=True, exist_ok=True)
    graphs = []
    for key in ("audio+image", "audio", "image"):
        path = root / "graphs" / "fp32" / f"{key}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"graph {key}".encode() * 50)
        ins = [TensorSpec(f"{m}.x", "float32", ["batch", f"{m}_seq"]) for m in sorted(key.split("+"))]
        graphs.append(GraphEntry(key, "fp32", f"graphs/fp32/{key}.onnx", sha256_file(path), path.stat().st_size, ins,
                                 [TensorSpec("logits", "float32", ["batch", 3])], parity={"passed": True}))
    tok = root / "preprocess" / "text" / "tokenizer.json"
    tok.parent.mkdir(parents=True)
    tok.write_text("{}")
    mods = {"audio": ModalityEntry("audio", "audio", [TensorSpec("audio.x", "float32", ["batch", "audio_seq"])],
                                   {"type": "audio"}),
            "image": ModalityEntry("image", "image", [TensorSpec("image.x", "float32", ["batch", "image_seq"])],
                                   {"type": "text", "tokenizer_file": "preprocess/text/tokenizer.json"})}
    Manifest("cmpt", "tiny", "single-label", ["a", "b", "c"], mods, graphs,
             files={"preprocess/text/tokenizer.json": sha256_file(tok)}, tools={"onnx": "x"},
             created="2026-01-01T00:00:00+00:00").save(root)
    return root


def edit(root: Path, fn) -> None:
    data = json.loads((root / MANIFEST_FILE).read_text())
    fn(data)
    (root / MANIFEST_FILE).write_text(json.dumps(data))


def test_round_trip_and_lookup(tmp_path: Path) -> None:
    m = load_manifest(make_bundle(tmp_path / "b"))
    assert m.schema_version == SCHEMA_VERSION and m.precisions == ["fp32"]
    assert m.patterns() == ["audio+image", "audio", "image"]
    assert m.graph("audio", "fp32").inputs[0].shape == ["batch", "audio_seq"]
    assert Manifest.from_dict(json.loads(json.dumps(m.to_dict()))) == m
    with pytest.raises(KeyError, match="it has"):
        m.graph("audio", "int8")


def test_changed_byte_fails_sha256(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    graph = root / "graphs" / "fp32" / "audio.onnx"
    data = bytearray(graph.read_bytes())
    data[10] ^= 1
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="sha256") as err:
        load_manifest(root)
    assert err.value.pattern == "audio"
    load_manifest(root, verify=False)  # structure is fine; only the checksum says no


def test_tampered_tokenizer_fails(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    (root / "preprocess" / "text" / "tokenizer.json").write_text('{"x": 1}')
    with pytest.raises(BundleIntegrityError, match="tokenizer.json"):
        load_manifest(root)


@pytest.mark.parametrize("bad", ["../outside.onnx", "graphs/../../outside.onnx", "/etc/passwd", "C:/x.onnx",
                                 "..\\outside.onnx", ""])
def test_paths_leaving_the_bundle_are_refused(tmp_path: Path, bad: str) -> None:
    root = make_bundle(tmp_path / "b")
    (tmp_path / "outside.onnx").write_bytes(b"x")
    edit(root, lambda d: d["graphs"][1].update(file=bad))
    with pytest.raises(BundleIntegrityError) as err:
        load_manifest(root)
    assert err.value.pattern == "audio"


def test_preprocess_file_path_leaving_the_bundle_is_refused(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    edit(root, lambda d: d["modalities"]["image"]["preprocess"].update(tokenizer_file="../tok.json"))
    with pytest.raises(BundleIntegrityError, match="leaves the bundle"):
        load_manifest(root)


def test_symlink_escaping_the_bundle_is_refused(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    outside = tmp_path / "evil.onnx"
    outside.write_bytes((root / "graphs" / "fp32" / "audio.onnx").read_bytes())
    os.symlink(outside, root / "graphs" / "fp32" / "link.onnx")
    edit(root, lambda d: d["graphs"][1].update(file="graphs/fp32/link.onnx"))
    with pytest.raises(BundleIntegrityError, match="outside the bundle"):
        load_manifest(root)
    assert resolve_in_bundle(root, "graphs/fp32/audio.onnx").is_file()


def test_schema_version_and_malformed(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / "b")
    edit(root, lambda d: d.update(schema_version=SCHEMA_VERSION + 1))
    with pytest.raises(BundleIntegrityError, match="schema_version"):
        load_manifest(root)
    edit(root, lambda d: (d.update(schema_version=SCHEMA_VERSION), d.pop("graphs")))
    with pytest.raises(BundleIntegrityError, match="malformed"):
        load_manifest(root)
    (root / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(BundleIntegrityError, match="not valid JSON"):
        load_manifest(root)
    with pytest.raises(BundleIntegrityError, match="no manifest.json"):
        load_manifest(tmp_path / "empty")


def test_temp_dir_of_an_unfinished_export_never_loads(tmp_path: Path) -> None:
    root = make_bundle(tmp_path / ".b.tmp-123-abc")  # complete, but named as a build's temp dir
    with pytest.raises(BundleIntegrityError, match="unfinished"):
        load_manifest(root)
