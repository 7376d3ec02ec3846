"""The bundle format: ``manifest.json`` beside one graph per (pattern, precision).

Layout of a bundle directory (every path in the manifest is relative to it)::

    manifest.json
    graphs/<precision>/<pattern key>.onnx     the product: one branch per availability pattern
    graphs/<precision>/<pattern key>.ort      optional ORT-format copies (minimal builds), parity-checked
                                              on their own (``ort_parity``); only passing ones are used
    baseline/<precision>/full-placeholders.onnx  the papers' way, for benchmarks only
    preprocess/<modality>/tokenizer.json      files the preprocessing specs reference
    reports/<precision>/<pattern key>.json    full calibration reports
    engines/<precision>/<pattern key>.engine  optional TensorRT engines (``engine_files``), each with its
    engines/<precision>/<pattern key>.json    hardware record (GPU, compute capability, TensorRT version);
                                              both listed in ``files`` (checksummed), specific to one GPU
    graphs/<precision>/weights.bin            optional: every weight of that precision's graphs, once
                                              (unique by content, 64-byte aligned); the graphs refer to it
                                              as ONNX external data. Listed in ``shared_weights``, checksummed;
                                              every reference must name it and lie inside it

``load_manifest`` is the only reader: it checks the schema version and every field against the
schema (runtime.manifest_schema), refuses any path that leaves the bundle (absolute, "..",
symlinks pointing outside or in a loop) and verifies the sha256 of every listed file, so a
tampered or half-written bundle never loads; with ``trusted_keys`` it also checks the
detached signature ``manifest.sig`` (runtime.signing). Stdlib (+ runtime).

Integrity holds for what a session actually reads: the runtime hashes the bytes it hands to
onnxruntime, and each graph carries its pattern and precision in its own ONNX metadata
(``metadata_props`` keys ``mmedge.pattern`` / ``mmedge.precision``), cross-checked at session
creation, so two graphs swapped together with their sha256 entries are caught unsigned too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runtime import manifest_schema
from runtime.atomic import write_json_atomic
from runtime.confidence import check_section
from runtime.errors import BundleIntegrityError
from runtime.patterns import Pattern
from runtime.preprocess import FILE_KEYS

SCHEMA_VERSION = 1
MANIFEST_FILE = "manifest.json"
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


@dataclass
class TensorSpec:
    name: str
    dtype: str  # numpy name: "float32", "float16", "int64"
    shape: list[int | str]  # symbolic axes are strings: "batch", "<modality>_seq"


@dataclass
class ModalityEntry:
    name: str
    type: str  # image | text | audio | timeseries
    inputs: list[TensorSpec]
    preprocess: dict[str, Any]  # runtime.preprocess spec; file keys relative to the bundle
    # feed name -> [low, high] of the preprocessed calibration feeds at export (float feeds only); the
    # runtime refuses values far outside it (runtime.session.RANGE_SLACK) with InputOutOfRange
    input_range: dict[str, list[float]] | None = None


@dataclass
class GraphEntry:
    pattern: str  # canonical pattern key (runtime.patterns)
    precision: str
    file: str
    sha256: str
    size_bytes: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None  # summary; the full report is a file under reports/
    degraded: bool = False  # written with --allow-degraded although parity failed
    export_time_s: float | None = None  # torch -> ONNX (FP32) time; conversion time is in calibration
    ort_file: str | None = None
    ort_sha256: str | None = None
    ort_parity: dict[str, Any] = field(default_factory=dict)  # the .ort copy's own parity; {}: never checked
    # temperature, conformal scores, abstention and metrics (runtime.confidence); None: uncalibrated. Not
    # ``calibration``, which is the FP16/INT8 conversion's summary.
    confidence: dict[str, Any] | None = None
    # onnxruntime contrib ops in the graph after the export's optimisation step (op type -> count);
    # None: not optimised (standard ONNX, e.g. graphs TensorRT consumes)
    fused_ops: dict[str, int] | None = None
    int8_type: str | None = None  # INT8 graphs: "qdq-u8s8", "dynamic-u8s8" (CPU) or "qdq-s8s8" (TensorRT)

    @property
    def usable_ort_file(self) -> str | None:
        """``ort_file`` only if the copy itself passed parity (ORT optimises .ort files less at load time)."""
        return self.ort_file if self.ort_file and self.ort_parity.get("passed") is True else None

    def files(self) -> list[tuple[str, str]]:
        out = [(self.file, self.sha256)]
        if self.ort_file:
            out.append((self.ort_file, self.ort_sha256 or ""))
        return out


@dataclass
class SharedWeights:
    """One precision's shared external-data file (export/weights.py writes it)."""

    precision: str
    file: str  # relative to the bundle, beside the graphs: graphs/<precision>/weights.bin
    sha256: str
    size_bytes: int
    tensors: int  # unique tensors stored
    referenced_bytes: int = 0  # sum over graphs of the bytes they refer to (what inline graphs would hold)
    alignment: int = 64


@dataclass
class Manifest:
    method: str
    dataset: str
    task: str
    labels: list[str]
    modalities: dict[str, ModalityEntry]
    graphs: list[GraphEntry]
    baselines: list[GraphEntry] = field(default_factory=list)  # full graph with placeholders (benchmark only)
    placeholders: dict[str, Any] = field(default_factory=dict)  # raw placeholder per modality for baselines
    files: dict[str, str] = field(default_factory=dict)  # other bundled files: relative path -> sha256
    tools: dict[str, str] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    shared_weights: list[SharedWeights] = field(default_factory=list)
    excluded_patterns: list[str] = field(default_factory=list)  # patterns the build was told not to export

    @property
    def precisions(self) -> list[str]:
        return [p for p in PRECISIONS if any(g.precision == p for g in self.graphs)]

    def patterns(self, precision: str | None = None) -> list[str]:
        return [g.pattern for g in self.graphs if precision is None or g.precision == precision]

    def graph(self, pattern: str | Pattern, precision: str) -> GraphEntry:
        key = pattern.key if isinstance(pattern, Pattern) else pattern
        for g in self.graphs:
            if g.pattern == key and g.precision == precision:
                return g
        have = sorted({(g.pattern, g.precision) for g in self.graphs})
        raise KeyError(f"bundle has no graph for pattern {key!r} at {precision!r}; it has {have}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        version = d.get("schema_version") if isinstance(d, dict) else None
        if version != SCHEMA_VERSION:
            raise BundleIntegrityError(
                f"manifest schema_version {version!r} is not {SCHEMA_VERSION}; re-export the bundle with this "
                "version of mmedge (`mmedge export build ...`)")
        manifest_schema.check(d, PRECISIONS)
        try:
            body = {k: v for k, v in d.items() if k != "schema_version"}
            mods = {m: ModalityEntry(e["name"], e["type"], [TensorSpec(**t) for t in e["inputs"]],
                                     dict(e["preprocess"]), e.get("input_range"))
                    for m, e in body.pop("modalities").items()}
            graphs = [_graph(g) for g in body.pop("graphs")]
            baselines = [_graph(g) for g in body.pop("baselines", [])]
            shared = [SharedWeights(**w) for w in body.pop("shared_weights", [])]
            return cls(modalities=mods, graphs=graphs, baselines=baselines, shared_weights=shared, **body)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise BundleIntegrityError(f"malformed manifest: {type(exc).__name__}: {exc}") from None

    def save(self, bundle_dir: Path) -> Path:
        path = Path(bundle_dir) / MANIFEST_FILE
        return write_json_atomic(path, self.to_dict())


def _graph(g: dict[str, Any]) -> GraphEntry:
    g = dict(g)
    g["inputs"] = [TensorSpec(**t) for t in g["inputs"]]
    g["outputs"] = [TensorSpec(**t) for t in g["outputs"]]
    return GraphEntry(**g)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_in_bundle(bundle_dir: Path, rel: str, *, pattern: str | None = None) -> Path:
    """``bundle_dir / rel``, refusing absolute paths, ".." and symlinks that lead outside the bundle."""
    if not isinstance(rel, str) or not rel:
        raise BundleIntegrityError(f"manifest path {rel!r} is not a non-empty string", pattern=pattern, path=str(rel))
    pure = PurePosixPath(rel.replace("\\", "/"))
    if pure.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":") or ".." in pure.parts:
        raise BundleIntegrityError(
            f"manifest path {rel!r} leaves the bundle; bundle paths must be relative, without '..'. The bundle "
            "was tampered with or hand-edited: re-export it", pattern=pattern, path=rel)
    try:
        root = Path(bundle_dir).resolve()
        full = (root / pure).resolve()  # follows symlinks
    except (OSError, RuntimeError) as exc:  # a symlink loop (RuntimeError before Python 3.13), ENAMETOOLONG...
        raise BundleIntegrityError(f"manifest path {rel!r} cannot be resolved ({type(exc).__name__}: {exc}): a "
                                   "symlink loop? Re-export the bundle", pattern=pattern, path=rel) from None
    if full != root and root not in full.parents:
        raise BundleIntegrityError(f"manifest path {rel!r} resolves to {full}, outside the bundle {root} "
                                   "(a symlink?); re-export the bundle", pattern=pattern, path=rel)
    return full


def verify_file(bundle_dir: Path, rel: str, sha256: str, *, pattern: str | None = None) -> Path:
    path = resolve_in_bundle(bundle_dir, rel, pattern=pattern)
    if not path.is_file():
        raise BundleIntegrityError(f"bundle file {rel!r} is missing from {bundle_dir}; re-export the bundle",
                                   pattern=pattern, path=rel)
    got = sha256_file(path)
    if got != sha256:
        raise BundleIntegrityError(f"bundle file {rel!r} has sha256 {got[:12]}..., the manifest says "
                                   f"{str(sha256)[:12]}...: the file was modified or corrupted; re-export the "
                                   "bundle", pattern=pattern, path=rel)
    return path


def load_manifest(bundle_dir: Path | str, *, verify: bool = True, trusted_keys: Any = None) -> Manifest:
    """Read and check ``bundle_dir/manifest.json``; with ``verify`` every listed file's sha256 too.

    ``trusted_keys`` (ed25519 public keys, see runtime.signing): the manifest must carry a valid
    signature by one of them (BundleSignatureError otherwise); None: signatures are not checked.
    """
    bundle_dir = Path(bundle_dir)
    if is_bundle_temp(bundle_dir):
        raise BundleIntegrityError(f"{bundle_dir} is the temp or old dir of an unfinished (or killed) export, not "
                                   "a bundle; load the bundle it was building, or re-run the export",
                                   path=str(bundle_dir))
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleIntegrityError(f"{bundle_dir} holds no {MANIFEST_FILE}; build a bundle with "
                                   "`mmedge export build --method M --precision P`", path=str(path))
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleIntegrityError(f"{path} is not valid JSON: {exc}", path=str(path)) from None
    except (RecursionError, MemoryError):
        raise BundleIntegrityError(f"{path} is nested too deeply (or too large) to be a manifest; re-export the "
                                   "bundle", path=str(path)) from None
    if trusted_keys is not None:  # before any field is used: an unsigned manifest is not even validated
        from runtime.signing import verify_manifest

        verify_manifest(bundle_dir, data, trusted_keys)
    manifest = Manifest.from_dict(data)
    weights: dict[Path, SharedWeights] = {}
    for w in manifest.shared_weights:
        path = (verify_file(bundle_dir, w.file, w.sha256) if verify else resolve_in_bundle(bundle_dir, w.file))
        weights[path] = w
    for g in [*manifest.graphs, *manifest.baselines]:
        try:
            Pattern.from_key(g.pattern)
        except ValueError as exc:
            raise BundleIntegrityError(f"manifest graph has a bad pattern key: {exc}", path=g.file) from None
        if g.confidence is not None:
            check_section(g.confidence, g.pattern)
        for rel, digest in g.files():
            (verify_file(bundle_dir, rel, digest, pattern=g.pattern) if verify
             else resolve_in_bundle(bundle_dir, rel, pattern=g.pattern))
        check_external_data(bundle_dir, g.file, weights, pattern=g.pattern)
    for rel, digest in manifest.files.items():
        verify_file(bundle_dir, rel, digest) if verify else resolve_in_bundle(bundle_dir, rel)
    for entry in manifest.modalities.values():
        for key in FILE_KEYS:
            if entry.preprocess.get(key):
                resolve_in_bundle(bundle_dir, str(entry.preprocess[key]))
    return manifest


def check_external_data(bundle_dir: Path, rel: str, weights: dict[Path, SharedWeights], *,
                        pattern: str | None = None) -> int:
    """Refuse a graph whose external-data references leave the listed weights files; returns their count.

    Each reference must name (relative to the graph's folder, as onnxruntime resolves it) a file
    the manifest lists in ``shared_weights`` (hence inside the bundle and checksummed), with a
    length, and ``offset + length`` within that file's listed size.
    """
    from runtime.external_data import MalformedGraph, external_refs

    graph = resolve_in_bundle(bundle_dir, rel, pattern=pattern)
    data = graph.read_bytes() if graph.is_file() else b""
    try:
        refs = external_refs(data)
    except MalformedGraph:
        # Not protobuf at all: onnxruntime refuses the file when its session is created (a typed
        # BundleIntegrityError there). Any file it can parse, this walker parses too.
        return 0
    folder = PurePosixPath(rel).parent
    for ref in refs:
        loc = ref.location or ""
        where = f"graph {rel!r} tensor {ref.tensor!r} refers to external data {loc!r}"
        if not loc or PurePosixPath(loc.replace("\\", "/")).is_absolute() or (len(loc) > 1 and loc[1] == ":"):
            raise BundleIntegrityError(f"{where}: an external-data location must be a relative path beside the "
                                       "graph; re-export the bundle", pattern=pattern, path=rel)
        target = resolve_in_bundle(bundle_dir, (folder / loc.replace("\\", "/")).as_posix(), pattern=pattern)
        entry = weights.get(target)
        if entry is None:
            raise BundleIntegrityError(f"{where}, which is not a weights file the manifest lists "
                                       f"({sorted(w.file for w in weights.values()) or 'none'}); re-export the bundle",
                                       pattern=pattern, path=rel)
        if ref.length is None or ref.offset < 0 or ref.offset + ref.length > entry.size_bytes:
            raise BundleIntegrityError(f"{where} at offset {ref.offset} length {ref.length}, outside "
                                       f"{entry.file} ({entry.size_bytes} bytes); re-export the bundle",
                                       pattern=pattern, path=rel)
    return len(refs)


def is_bundle_temp(path: Path) -> bool:
    """Temp dirs of an in-progress (or killed) build, ".<name>.tmp-*", and the previous bundle moved
    aside by a swap, ".<name>.old-<pid>" (runtime.atomic): never bundles, whatever they contain."""
    name = Path(path).name
    return name.startswith(".") and (".tmp-" in name or ".old-" in name)


def engine_files(precision: str, pattern: str | Pattern) -> tuple[str, str]:
    """Bundle-relative paths of a graph's TensorRT engine and of its hardware record (the one definition:
    export/tensorrt.py writes them, runtime.runners.tensorrt reads them; both are ``files`` entries)."""
    key = pattern.key if isinstance(pattern, Pattern) else pattern
    return f"engines/{precision}/{key}.engine", f"engines/{precision}/{key}.json"


def relpath(path: Path, bundle_dir: Path) -> str:
    """POSIX-style path of ``path`` relative to ``bundle_dir`` (what the manifest stores)."""
    return PurePosixPath(os.path.relpath(path, bundle_dir)).as_posix()
