"""Fuzz the runtime's input and bundle contracts (a script, not collected by pytest).

    python tests/fuzz_runtime.py [--bundle DIR] [--n 10000] [--mutations 300] [--seed 0]

Part 1, per precision of the bundle: ``--n`` random inputs (valid samples, NaN/Inf, huge finite
values per dtype, wrong shapes/dtypes/types, hostile containers, bad keyword arguments, batches)
through ``predict`` / ``predict_batch``. Each outcome is counted as
valid (a finite Prediction; for ``errors="return"`` batches: one entry per input), typed (a
``RuntimeInputError``) or untyped (anything else: the contract is broken).
Part 2: ``--mutations`` hand-edits of manifest.json; each is counted as refused typed
(``BundleIntegrityError``), loaded (load + one predict worked or raised a ``RuntimeInputError``)
or untyped. Without ``--bundle`` a tiny fp32/fp16/int8 bundle is built (needs the training extras).
"""
from __future__ import annotations

import argparse
import collections
import copy
import json
import math
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.errors import BundleIntegrityError, RuntimeInputError  # noqa: E402
from runtime.session import Prediction, Runtime  # noqa: E402


class _Unhashable(list):
    pass


class _EqRaises:
    def __hash__(self) -> int:
        return hash("image")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("hostile __eq__")


class _GetRaises(collections.abc.Mapping):
    def __init__(self, keys: list[str]) -> None:
        self._keys = keys

    def __getitem__(self, k: str) -> Any:
        raise RuntimeError("hostile __getitem__")

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def pick(rng: np.random.Generator, seq: list[Any]) -> Any:
    return seq[int(rng.integers(0, len(seq)))]


HUGE = [1e39, 1e30, float(np.finfo(np.float32).max), -float(np.finfo(np.float32).max), 7e4, 1e6, 1e10]


def raw_value(rng: np.random.Generator, modality: str) -> Any:
    """A raw value for ``modality``: mostly plausible, often broken in one way."""
    kind = rng.integers(0, 14)
    good = rng.normal(0, 1, (8, 8)) if modality == "image" else rng.normal(0, 1, (int(rng.integers(1, 9)), 5))
    if kind <= 3:
        return good.astype(pick(rng, [np.float32, np.float64, np.float16]))
    if kind == 4:  # NaN / Inf
        a = good.copy()
        a.flat[rng.integers(0, a.size)] = pick(rng, [np.nan, np.inf, -np.inf])
        return a
    if kind in (5, 6):  # huge finite values, per dtype
        dt = pick(rng, ["f64", "f32", "i64", "u64"])
        a = good.astype(np.float64)
        if dt == "f64":
            a.flat[rng.integers(0, a.size)] = pick(rng, HUGE)
            return a
        if dt == "f32":
            a.flat[rng.integers(0, a.size)] = pick(rng, HUGE[1:])
            return a.astype(np.float32)
        info = np.iinfo(np.int64 if dt == "i64" else np.uint64)
        b = np.zeros(a.shape, np.int64 if dt == "i64" else np.uint64)
        b.flat[rng.integers(0, b.size)] = pick(rng, [info.max, info.min])
        return b
    if kind == 7:  # wrong shape
        shape = [tuple(rng.integers(0, 6, size=int(rng.integers(0, 5)))) for _ in range(1)][0]
        return rng.normal(0, 1, shape)
    if kind == 8:  # wrong dtype
        return pick(rng, [np.array(["a", "b"]), np.zeros((8, 8), np.complex64), np.zeros((8, 8), bool),
                           np.array([None, 1], dtype=object)])
    if kind == 9:  # wrong python type
        return pick(rng, ["text", b"bytes", 3, 2.5, [[1, 2], [3]], {"a": 1}, object()])
    if kind == 10:
        return None
    if kind == 11:  # big frames of odd sizes (resizing)
        return rng.normal(0, 1, (int(rng.integers(1, 40)), int(rng.integers(1, 40)))).astype(np.float32) \
            if modality == "image" else rng.normal(0, 1, (int(rng.integers(1, 40)), 5))
    if kind == 12:  # uint8 / int images
        return rng.integers(0, 255, good.shape).astype(np.uint8)
    return good


def container(rng: np.random.Generator) -> Any:
    kind = rng.integers(0, 12)
    d = {m: raw_value(rng, m) for m in ("image", "audio") if rng.random() < 0.75}
    if kind == 0:
        d[pick(rng, ["text", "", "lidar"])] = raw_value(rng, "image")
    elif kind == 1:
        return _GetRaises(list(d) or ["image"])
    elif kind == 2:  # a key equal in hash to "image" whose __eq__ raises (so no real "image" key beside it)
        d.pop("image", None)
        d[_EqRaises()] = raw_value(rng, "image")
    elif kind == 3:
        return _Mapping(d)  # iterates a key whose hash() raises
    elif kind == 4:
        return pick(rng, [None, [1, 2], "image", 3, (("image", 1),)])
    return d


class _Mapping(collections.abc.Mapping):
    """A Mapping that iterates keys a dict could not hold (its hash raises)."""

    def __init__(self, d: dict) -> None:
        self._items = list(d.items())

    def __getitem__(self, k: Any) -> Any:
        for kk, v in self._items:
            if kk is k:
                return v
        raise KeyError(k)

    def __iter__(self):
        return iter([k for k, _ in self._items] + [_Unhashable([1])])

    def __len__(self) -> int:
        return len(self._items) + 1


def _overflows_float32(rt: Runtime, inputs: Any) -> bool:
    """A finite raw value that is Inf as float32, in the part of the sample the graph reads
    (frames past a sequence modality's max_frames are truncated away, never read)."""
    if not isinstance(inputs, dict):
        return False
    with np.errstate(all="ignore"):
        for m, v in inputs.items():
            if not (isinstance(v, np.ndarray) and v.dtype.kind == "f" and np.isfinite(v).all()):
                continue
            limit = rt.manifest.modalities[m].preprocess.get("max_frames") if m in rt.manifest.modalities else None
            read = v[:limit] if limit and v.ndim == 2 and m != "image" else v
            if not np.isfinite(read.astype(np.float32)).all():
                return True
    return False


def kwargs(rng: np.random.Generator) -> dict[str, Any]:
    if rng.random() < 0.85:
        return {}
    return {"top_k": pick(rng, [None, "x", math.nan, 0, -1, 2.5, True, 10**30, 1, 3])}


def one_case(rt: Runtime, rng: np.random.Generator) -> str:
    """'valid' | 'typed' | 'untyped:<ExceptionType>'"""
    batch = rng.random() < 0.25
    try:
        if not batch:
            inputs = container(rng)
            pred = rt.predict(inputs, **kwargs(rng))
            ok = isinstance(pred, Prediction) and np.all(np.isfinite(pred.probabilities))
            if ok and _overflows_float32(rt, inputs):  # the documented contract: NonFiniteInput at every precision
                return "untyped:accepted-overflow"
            return "valid" if ok else "untyped:bad-prediction"
        n = int(rng.integers(1, 5))
        samples: Any = [container(rng) for _ in range(n)]
        kw = kwargs(rng)
        errors = "return" if rng.random() < 0.7 else pick(rng, ["raise", "ignore", None])
        shape = rng.integers(0, 10)
        if shape == 0:
            samples = (s for s in samples)
        elif shape == 1:
            samples = None
        out = rt.predict_batch(samples, errors=errors, **kw)
        if errors == "return" and isinstance(samples, list) and len(out) != n:
            return "untyped:wrong-length"
        good = all(isinstance(o, RuntimeInputError) or (isinstance(o, Prediction) and np.all(np.isfinite(o.probabilities)))
                   for o in out)
        return "valid" if good else "untyped:bad-entry"
    except RuntimeInputError:
        return "typed"
    except Exception as exc:  # noqa: BLE001 - this is what we count
        return f"untyped:{type(exc).__name__}"


def fuzz_inputs(bundle: Path, n: int, seed: int) -> dict[str, collections.Counter]:
    out = {}
    for precision in Runtime.load(bundle, lazy=True).manifest.precisions:
        rt = Runtime.load(bundle, precision=precision, intra_op_threads=1)
        rng = np.random.default_rng(seed)
        counts: collections.Counter = collections.Counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(n):
                counts[one_case(rt, rng)] += 1
        out[precision] = counts
    return out


# ------------------------------------------------------------------------------------ manifest mutations
def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


_VALUES: list[Any] = [None, 0, -1, 1, 10**12, 2.5, math.inf, "", "x", "float33", [], {}, [None], True, "../x",
                      "/etc/passwd", "image", "audio+image+text", [1, 2], {"a": 1}, "graphs/fp32/audio.onnx", 3]


def mutate(data: dict, rng: np.random.Generator) -> Any:
    d = copy.deepcopy(data)
    paths = _paths(d)[1:]
    path = paths[int(rng.integers(0, len(paths)))]
    parent = d
    for p in path[:-1]:
        parent = parent[p]
    op = rng.integers(0, 4)
    if op == 0 and isinstance(parent, dict):
        del parent[path[-1]]
    elif op == 1 and isinstance(parent, list):
        parent.append(copy.deepcopy(parent[int(rng.integers(0, len(parent)))]) if parent else None)
    else:
        parent[path[-1]] = copy.deepcopy(_VALUES[int(rng.integers(0, len(_VALUES)))])
    return d


def fuzz_manifests(bundle: Path, n: int, seed: int) -> collections.Counter:
    rng = np.random.default_rng(seed)
    data = json.loads((bundle / "manifest.json").read_text())
    counts: collections.Counter = collections.Counter()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "b"
        shutil.copytree(bundle, work)
        specials = [json.dumps(mutate(data, rng)) for _ in range(n - 3)] + [
            "[" * 200_000 + "]" * 200_000, json.dumps({**data, "labels": []}), json.dumps({**data, "labels": None})]
        for text in specials:
            (work / "manifest.json").write_text(text)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    rt = Runtime.load(work, precision=data["graphs"][0]["precision"], intra_op_threads=1)
                    try:
                        rt.predict({"image": np.zeros((8, 8), np.float32), "audio": np.zeros((3, 5), np.float32)})
                    except RuntimeInputError:
                        pass
                counts["loaded"] += 1
            except BundleIntegrityError:
                counts["refused typed"] += 1
            except Exception as exc:  # noqa: BLE001
                counts[f"untyped:{type(exc).__name__}"] += 1
    return counts


def build_tiny(root: Path) -> Path:
    from export.build import BuildConfig, build_bundle
    from export_fixtures import tiny

    model, data = tiny("cmpt", 2)
    cfg = BuildConfig(out=root / "tiny2-cmpt", precisions="fp32,fp16,int8", progress=False, exporter="legacy",
                      placeholders=False, val_samples=8, calib_samples=4, allow_degraded=True)
    return build_bundle(cfg, model=model, dataset=data)


def summary(c: collections.Counter) -> str:
    valid, typed = c.get("valid", 0), c.get("typed", 0)
    untyped = sum(v for k, v in c.items() if k.startswith("untyped"))
    detail = ", ".join(f"{k[8:]} {v}" for k, v in sorted(c.items()) if k.startswith("untyped"))
    return f"valid {valid} / typed {typed} / untyped {untyped}" + (f"  ({detail})" if detail else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--mutations", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle or build_tiny(Path(tmp))
        bad = 0
        for precision, counts in fuzz_inputs(bundle, args.n, args.seed).items():
            print(f"inputs {precision}: {summary(counts)}", flush=True)
            bad += sum(v for k, v in counts.items() if k.startswith("untyped"))
        if args.mutations:
            m = fuzz_manifests(bundle, args.mutations, args.seed)
            untyped = sum(v for k, v in m.items() if k.startswith("untyped"))
            detail = ", ".join(f"{k[8:]} {v}" for k, v in sorted(m.items()) if k.startswith("untyped"))
            print(f"manifest mutations: refused typed {m.get('refused typed', 0)} / loaded {m.get('loaded', 0)} / "
                  f"untyped {untyped}" + (f"  ({detail})" if detail else ""), flush=True)
            bad += untyped
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
