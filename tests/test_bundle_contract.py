"""The bundle contract: lazy sessions verify what they read, hand-edited manifests are refused
typed (property-based), killed exports never leave a loadable half bundle or an unloadable
target, graphs carry their precision/pattern, and signed bundles (ed25519)."""
from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.atomic import atomic_dir
from runtime.errors import BundleIntegrityError, BundleSignatureError, RuntimeInputError
from runtime.manifest import MANIFEST_FILE, load_manifest, sha256_file
from runtime.session import Runtime
from runtime_fixtures import ALL_PRECISIONS, copy_bundle, tiny_bundle

REPO = Path(__file__).resolve().parents[1]
GOOD = {"image": np.zeros((8, 8), np.float32), "audio": np.zeros((3, 5), np.float32)}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory.mktemp("rt3"), ALL_PRECISIONS)


def edit(root: Path, fn) -> None:
    data = json.loads((root / MANIFEST_FILE).read_text())
    fn(data)
    (root / MANIFEST_FILE).write_text(json.dumps(data))


def entry(data: dict, pattern: str, precision: str) -> dict:
    return next(g for g in data["graphs"] if g["pattern"] == pattern and g["precision"] == precision)


def swap_graphs(root: Path, a: str, b: str) -> None:
    """Swap two graph files and their sha256/size entries: a consistent, unsigned manifest."""
    data = json.loads((root / MANIFEST_FILE).read_text())
    ea, eb = (entry(data, "image", p) for p in (a, b))
    pa, pb = root / ea["file"], root / eb["file"]
    ba, bb = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(bb), pb.write_bytes(ba)
    for e, p in ((ea, pa), (eb, pb)):
        e["sha256"], e["size_bytes"] = sha256_file(p), p.stat().st_size
    (root / MANIFEST_FILE).write_text(json.dumps(data))


# ------------------------------------------------------------------------------ 7: lazy verifies what it reads
def test_lazy_session_refuses_a_graph_replaced_after_load(bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(bundle, tmp_path / "b")
    rt = Runtime.load(root, precision="fp32", lazy=True, intra_op_threads=1)
    (root / "graphs" / "fp32" / "image.onnx").write_bytes((root / "graphs" / "int8" / "image.onnx").read_bytes())
    with pytest.raises(BundleIntegrityError, match="sha256"):
        rt.predict({"image": GOOD["image"]})
    assert rt.predict({"audio": GOOD["audio"]}).pattern == "audio"  # untouched graphs still serve


# ------------------------------------------------------------------------------ 8: manifest schema
BAD_EDITS = {
    "pattern int": lambda d: d["graphs"][0].update(pattern=3),
    "pattern null": lambda d: d["graphs"][0].update(pattern=None),
    "pattern unknown modality": lambda d: d["graphs"][0].update(pattern="image+lidar"),
    "dtype float33": lambda d: d["modalities"]["image"]["inputs"][0].update(dtype="float33"),
    "graph dtype float33": lambda d: d["graphs"][0]["inputs"][0].update(dtype="float33"),
    "shape null": lambda d: d["graphs"][0]["inputs"][0].update(shape=None),
    "shape int": lambda d: d["modalities"]["audio"]["inputs"][0].update(shape=3),
    "labels null": lambda d: d.update(labels=None),
    "labels empty": lambda d: d.update(labels=[]),
    "labels fewer than outputs": lambda d: d.update(labels=["a"]),
    "max_frames huge": lambda d: d["modalities"]["audio"]["preprocess"].update(max_frames=10**12),
    "size huge": lambda d: d["modalities"]["image"]["preprocess"].update(size=[10**6, 10**6]),
    "precision unknown": lambda d: d["graphs"][0].update(precision="fp8"),
    "sha256 int": lambda d: d["graphs"][0].update(sha256=5),
    "modalities list": lambda d: d.update(modalities=[]),
    "graphs null": lambda d: d.update(graphs=None),
    "inputs entry str": lambda d: d["graphs"][0].update(inputs=["x"]),
    "preprocess null": lambda d: d["modalities"]["image"].update(preprocess=None),
    "modality name mismatch": lambda d: d["modalities"]["image"].update(name="audio"),
    "files value int": lambda d: d["files"].update({"reports/x.json": 1}),
    "duplicate graph": lambda d: d["graphs"].append(copy.deepcopy(d["graphs"][0])),
}


@pytest.mark.parametrize("name", list(BAD_EDITS))
def test_hand_edited_manifest_is_refused_typed(bundle: Path, tmp_path: Path, name: str) -> None:
    root = copy_bundle(bundle, tmp_path / "b")
    edit(root, BAD_EDITS[name])
    with pytest.raises(BundleIntegrityError):
        Runtime.load(root, precision="fp32", intra_op_threads=1)


def test_deeply_nested_json_and_a_self_symlink_are_refused_typed(bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(bundle, tmp_path / "b")
    (root / MANIFEST_FILE).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleIntegrityError):
        load_manifest(root)
    root2 = copy_bundle(bundle, tmp_path / "c")
    g = root2 / "graphs" / "fp32" / "image.onnx"
    g.unlink()
    os.symlink("image.onnx", g)
    with pytest.raises(BundleIntegrityError):
        Runtime.load(root2, precision="fp32")


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


_JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=6)
                     | st.sampled_from(["image", "audio", "float33", "../x", "graphs/fp32/audio.onnx", "fp16"]),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                     max_leaves=6)


@pytest.fixture(scope="module")
def mutable(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = copy_bundle(bundle, tmp_path_factory.mktemp("mut") / "b")
    return root, json.loads((root / MANIFEST_FILE).read_text())


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_mutated_manifests_load_or_are_refused_typed(mutable, data) -> None:
    root, original = mutable
    d = copy.deepcopy(original)
    paths = _paths(d)[1:]
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        parent = d
        try:
            for p in path[:-1]:
                parent = parent[p]
            if data.draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = data.draw(_JSON)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    (root / MANIFEST_FILE).write_text(json.dumps(d))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rt = Runtime.load(root, precision="fp32", intra_op_threads=1)
            try:
                pred = rt.predict(GOOD)
                assert np.isfinite(pred.probabilities).all()
            except RuntimeInputError:
                pass
    except BundleIntegrityError:
        pass


# ------------------------------------------------------------------------------ 9: killed exports
def test_old_folder_of_a_killed_swap_never_loads_and_is_swept(bundle: Path, tmp_path: Path) -> None:
    old = copy_bundle(bundle, tmp_path / ".b.old-999999")  # complete, but the leftover of a swap
    with pytest.raises(BundleIntegrityError, match="unfinished|killed"):
        load_manifest(old)
    mine = copy_bundle(bundle, tmp_path / f".b.old-{os.getpid()}")  # a live process's: left alone
    with atomic_dir(tmp_path / "b") as tmp:
        (tmp / "x").write_text("1")
    assert not old.exists() and mine.exists() and (tmp_path / "b" / "x").is_file()


KILL_MID_SWAP = """
import os, shutil, signal, sys
from pathlib import Path
import runtime.atomic as atomic
src, target = Path(sys.argv[1]), Path(sys.argv[2])
real = os.replace
def replace(a, b):  # the process dies right after the bundle under the target name was moved away
    real(a, b)
    if Path(a) == target:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = atomic.os.replace = replace
real_rename = os.rename
def rename(a, b):
    real_rename(a, b)
    if Path(a) == target:
        os.kill(os.getpid(), signal.SIGKILL)
os.rename = atomic.os.rename = rename
with atomic.atomic_dir(target) as tmp:
    shutil.copytree(src, tmp, dirs_exist_ok=True)
    (tmp / "generation").write_text("new")
"""


def test_a_swap_killed_at_any_point_leaves_a_loadable_bundle_at_the_target(bundle: Path, tmp_path: Path) -> None:
    target = copy_bundle(bundle, tmp_path / "b")
    (target / "generation").write_text("old")
    out = subprocess.run([sys.executable, "-c", KILL_MID_SWAP, str(bundle), str(target)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    load_manifest(target)  # the old or the new bundle, never nothing
    assert (target / "generation").read_text() in ("old", "new"), out.stderr


def test_concurrent_readers_always_see_a_bundle_during_repeated_swaps(bundle: Path, tmp_path: Path) -> None:
    target = copy_bundle(bundle, tmp_path / "b")
    writer = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import shutil, sys
        from pathlib import Path
        from runtime.atomic import atomic_dir
        src, target = Path(sys.argv[1]), Path(sys.argv[2])
        for i in range(40):
            with atomic_dir(target) as tmp:
                (tmp / "manifest.json").write_bytes((src / "manifest.json").read_bytes())
        """), str(bundle), str(target)], cwd=REPO)
    missing = polls = 0
    while writer.poll() is None:
        polls += 1
        missing += not (target / MANIFEST_FILE).is_file()
    assert writer.returncode == 0 and missing == 0, f"{missing} of {polls} polls found no bundle"


# ------------------------------------------------------------------------------ 10: graph metadata, signing
def test_swapped_graphs_with_their_checksums_are_caught_by_graph_metadata(bundle: Path, tmp_path: Path) -> None:
    root = copy_bundle(bundle, tmp_path / "b")
    swap_graphs(root, "fp32", "int8")
    load_manifest(root)  # the manifest is consistent: only the graphs' own metadata can tell
    for precision in ("fp32", "int8"):
        with pytest.raises(BundleIntegrityError, match="metadata"):
            Runtime.load(root, precision=precision, intra_op_threads=1)
    lazy = Runtime.load(root, precision="fp32", lazy=True, intra_op_threads=1)
    with pytest.raises(BundleIntegrityError, match="metadata"):
        lazy.predict({"image": GOOD["image"]})


def test_graphs_carry_their_pattern_and_precision(bundle: Path) -> None:
    import onnx

    for g in load_manifest(bundle).graphs:
        props = {p.key: p.value for p in onnx.load(str(bundle / g.file), load_external_data=False).metadata_props}
        assert props["mmedge.pattern"] == g.pattern and props["mmedge.precision"] == g.precision


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    pytest.importorskip("cryptography", reason="signed bundles need the sign extra: pip install 'mmedge[sign]'")
    from export.cli import main

    d = tmp_path_factory.mktemp("keys")
    assert main(["keygen", "--out", str(d / "dev.key")]) == 0
    assert main(["keygen", "--out", str(d / "other.key")]) == 0
    return d / "dev.key", d / "dev.key.pub", d / "other.key.pub"


@pytest.fixture(scope="module")
def signed(bundle: Path, keys, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.cli import main

    root = copy_bundle(bundle, tmp_path_factory.mktemp("signed") / "b")
    assert main(["sign", str(root), "--key", str(keys[0])]) == 0
    return root


def test_signed_bundle_loads_with_its_key_and_without_keys(signed: Path, keys) -> None:
    rt = Runtime.load(signed, precision="int8", trusted_keys=[keys[2], keys[1]], intra_op_threads=1)
    assert rt.predict(GOOD).pattern == "audio+image"
    Runtime.load(signed, precision="fp32", lazy=True)  # no trusted_keys: behaviour unchanged


def test_tampered_unsigned_or_foreign_signed_bundles_are_refused(signed: Path, bundle: Path, keys,
                                                                 tmp_path: Path) -> None:
    with pytest.raises(BundleSignatureError, match="not signed|no signature"):
        Runtime.load(bundle, trusted_keys=[keys[1]])
    with pytest.raises(BundleSignatureError):
        Runtime.load(signed, trusted_keys=[keys[2]])  # signed, by a key we do not trust
    swapped = copy_bundle(signed, tmp_path / "swapped")
    swap_graphs(swapped, "fp32", "int8")
    with pytest.raises(BundleSignatureError):
        Runtime.load(swapped, precision="fp32", trusted_keys=[keys[1]])
    labels = copy_bundle(signed, tmp_path / "labels")
    edit(labels, lambda d: d.update(labels=list(reversed(d["labels"]))))  # a valid manifest, not the signed one
    with pytest.raises(BundleSignatureError):
        Runtime.load(labels, trusted_keys=[keys[1]])
    bad_sig = copy_bundle(signed, tmp_path / "badsig")
    sig = json.loads((bad_sig / "manifest.sig").read_text())
    sig["signature"] = sig["signature"][:-4] + ("AAAA" if not sig["signature"].endswith("AAAA") else "BBBB")
    (bad_sig / "manifest.sig").write_text(json.dumps(sig))
    with pytest.raises(BundleSignatureError):
        Runtime.load(bad_sig, trusted_keys=[keys[1]])
    (bad_sig / "manifest.sig").write_text("{not json")
    with pytest.raises(BundleSignatureError):
        Runtime.load(bad_sig, trusted_keys=[keys[1]])
    with pytest.raises(BundleSignatureError, match="trusted_keys"):
        Runtime.load(signed, trusted_keys=[])  # an empty trust list trusts nothing


def test_sign_cli_errors_are_reported_not_raised(bundle: Path, keys, tmp_path: Path, capsys) -> None:
    from export.cli import main

    assert main(["sign", str(tmp_path / "nope"), "--key", str(keys[0])]) == 2
    root = copy_bundle(bundle, tmp_path / "b")
    assert main(["sign", str(root), "--key", str(keys[1])]) == 2  # a public key cannot sign
    assert not (root / "manifest.sig").exists()
    err = capsys.readouterr().err
    assert "manifest.json" in err and "private" in err


def test_without_an_atomic_exchange_a_swap_killed_between_renames_is_restored(bundle: Path, tmp_path: Path) -> None:
    """The documented fallback (no renameat2): killed between its two renames, the target is missing
    and the old bundle sits under .<name>.old-<pid>; the next write to the target moves it back first."""
    target = copy_bundle(bundle, tmp_path / "b")
    (target / "generation").write_text("old")
    script = "import runtime.atomic as atomic\natomic.exchange = lambda a, b: False\n" + KILL_MID_SWAP
    subprocess.run([sys.executable, "-c", script, str(bundle), str(target)], cwd=REPO, capture_output=True,
                   timeout=120)
    assert not target.exists() and len(list(tmp_path.glob(".b.old-*"))) == 1
    with pytest.raises(BundleIntegrityError):
        load_manifest(next(tmp_path.glob(".b.old-*")))
    from runtime.atomic import _sweep_stale

    _sweep_stale(target)  # what the next atomic_dir(target) does first
    load_manifest(target)
    assert (target / "generation").read_text() == "old" and not list(tmp_path.glob(".b.*"))


def test_runtime_cli_checks_a_trusted_key(signed: Path, keys, tmp_path: Path, capsys) -> None:
    from runtime.runtime_cli import main

    assert main(["info", str(signed), "--trusted-key", str(keys[1]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["signature"] == "verified"
    assert main(["info", str(signed), "--trusted-key", str(keys[2])]) == 2
    assert "BundleSignatureError" in capsys.readouterr().err
