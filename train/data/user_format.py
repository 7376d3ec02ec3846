"""The generic user format: a directory with ``dataset.json`` and ``samples.jsonl``.

dataset.json::

    {"name": "my-set",                                  # optional, default: the folder name
     "task": "single-label" | "multi-label" | "binary",
     "labels": ["cat", "dog"],                          # optional, default: sorted labels seen
     "modalities": {                                    # name -> {"type": ..., optional preprocessing}
        "camera":  {"type": "image", "size": [H, W], "channels": 1 | 3, "scale": 1/255},
        "caption": {"type": "text", "max_length": 32, "tokenizer_file": "tok.json"},
        "mic":     {"type": "audio", "sample_rate": 16000, "mfcc": {"n_mfcc": 13, ...}},
        "voice":   {"type": "audio", "input": "samples"},      # raw samples (Wav2Vec2/HuBERT)
        "imu":     {"type": "timeseries"}},
     "split": {"val": 0.15, "test": 0.15, "seed": 0}}   # for lines without "split"

Every modality key except "type" is optional; see ``runtime.preprocess`` for what each
means. Defaults: image size = the most common training size, channels = 3 if any
training image has colour else 1; text = the MiniLM tokenizer, max_length = longest
training text (cap 512); audio = waveform MFCCs (13 coefficients, 25 ms windows, 10 ms
hop, 40 mels) for .wav files or precomputed features for .npy files; with "input": "samples"
the raw waveform itself, from .wav (its rate fixes "sample_rate") or 1-D / (N, 1) .npy (declare
"sample_rate"), normalised per clip; ``--encoder MODALITY=DIR`` with a Wav2Vec2/HuBERT checkpoint
turns a .wav modality into that spec by itself (train.encoders.model_spec). timeseries channels =
the most common in training. mean/std (not for samples) and max_frames are always fitted on the
train split.

samples.jsonl, one JSON object per line (blank lines are ignored)::

    {"id": "s1", "label": "cat", "split": "train", "camera": "img/s1.png",
     "caption": "a cat on a mat", "mic": "wav/s1.wav", "imu": null}

- "id": string or int, unique. "label" for single-label/binary tasks, "labels" (a list,
  may be empty) for multi-label. Labels are strings, ints or booleans, one type per file;
  with declared "labels" they must be strings from that list.
- "split": optional, one of train/val/test; other lines are split (stratified by label)
  with the fractions and seed of dataset.json.
- Per declared modality: a path relative to the dataset folder (image: .png/.jpg/.jpeg/.npy;
  audio: .wav (16-bit PCM, mono) or .npy features (T, F) / samples (N,) or (N, 1); a .wav at
  another rate than the modality's is refused, never resampled; timeseries: .npy (T, C)), or
  the text itself for text modalities. null or an absent key means the modality is missing.
  Every sample needs at least one modality.

Errors raise ``DataFormatError`` naming the file and line and how to fix it. With
``strict=False`` a bad sample line is skipped instead and listed in ``dataset.skipped``.
"""
from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtime.preprocess import PreprocessError, make_preprocessor
from train.data.cache import default_tokenizer_file
from train.data.errors import DataFormatError
from train.data.readers import EXTENSIONS, ReadError, read_image, read_npy, read_wav
from train.data.splits import limit_splits, stratified_split
from train.data.stats import fit_modalities
from train.data.types import SPLITS, MultimodalDataset, Sample
from train.data.user_config import RESERVED, line_of, read_config

log = logging.getLogger(__name__)

@dataclass
class _Row:
    line: int
    id: str
    label: Any
    split: str | None
    inputs: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # file suffix per modality
    files: dict[str, str] = field(default_factory=dict)  # path as written, for messages
    rates: dict[str, int] = field(default_factory=dict)  # wav sample rate per modality


_ARTICLE = {"str": "a string", "int": "an int", "bool": "a bool"}


def _label_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return "str" if isinstance(value, str) and value else None


class _Reader:
    """Parses samples.jsonl; every problem goes through ``fail`` (raise, or skip when not strict)."""

    def __init__(self, root: Path, cfg: dict[str, Any], cfg_text: str, strict: bool) -> None:
        self.root, self.cfg, self.cfg_text, self.strict = root, cfg, cfg_text, strict
        self.real_root = root.resolve()
        self.file = root / "samples.jsonl"
        self.mods: dict[str, dict[str, Any]] = cfg["modalities"]
        self.skipped: list[str] = []

    def config_error(self, name: str, message: str, fix: str = "", key: str | None = None) -> DataFormatError:
        needles = ['"modalities"', f'"{name}"'] + ([f'"{key}"'] if key else [])
        return DataFormatError(self.root / "dataset.json", line_of(self.cfg_text, *needles), message, fix)

    def fail(self, line: int | None, message: str, fix: str = "") -> None:
        err = DataFormatError(self.file, line, message, fix)
        if self.strict:
            raise err
        self.skipped.append(str(err))

    def rows(self) -> list[_Row]:
        if not self.file.is_file():
            raise DataFormatError(self.file, None, "missing samples.jsonl", "add one JSON object per sample and line")
        rows: list[_Row] = []
        first_line: dict[str, int] = {}
        with open(self.file, "rb") as f:
            for n, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    self.fail(n, f"line is not UTF-8 ({exc.reason} at byte {exc.start})", "save samples.jsonl as UTF-8")
                    continue
                if not text.strip():
                    continue
                row = self._row(n, text)
                if row is None:
                    continue
                if row.id in first_line:
                    self.fail(n, f"duplicate id {row.id!r} (first used on line {first_line[row.id]})", "give every sample a unique id")
                    continue
                first_line[row.id] = n
                rows.append(row)
        return rows

    def _row(self, n: int, text: str) -> _Row | None:
        try:
            obj = json.loads(text.strip())
        except json.JSONDecodeError as exc:
            self.fail(n, f"malformed JSON ({exc.msg} at column {exc.colno})", "write one complete JSON object per line")
            return None
        if not isinstance(obj, dict):
            self.fail(n, f"expected a JSON object, got {type(obj).__name__}", 'write {"id": ..., "label": ..., <modality>: ...}')
            return None
        sid = obj.get("id")
        if isinstance(sid, bool) or not isinstance(sid, (str, int)) or sid == "":
            self.fail(n, f"missing or invalid \"id\" ({sid!r})", 'add "id": "<unique string>"')
            return None
        multi = self.cfg["task"] == "multi-label"
        want, other = ("labels", "label") if multi else ("label", "labels")
        if other in obj or want not in obj:
            self.fail(n, f"task is {self.cfg['task']} but the line has {sorted(k for k in ('label', 'labels') if k in obj)}",
                      f"use \"{want}\"" + (": [...]" if multi else ": <class>"))
            return None
        label = obj[want]
        if multi and not isinstance(label, list):
            self.fail(n, f"\"labels\" must be a list, got {label!r}", 'e.g. "labels": ["cat", "indoor"] or []')
            return None
        for value in (label if multi else [label]):
            if _label_type(value) is None:
                self.fail(n, f"label {value!r} must be a non-empty string, an int or a bool", "fix the label")
                return None
        if multi and len(set(map(repr, label))) != len(label):
            self.fail(n, f"\"labels\" lists a label twice: {label!r}", "list each label once")
            return None
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            self.fail(n, f"split {split!r} is not one of {list(SPLITS)}", "fix it or drop the key to split automatically")
            return None
        row = _Row(n, str(sid), tuple(label) if multi else label, split)
        for key, value in obj.items():
            if key in RESERVED:
                continue
            if key not in self.mods:
                self.fail(n, f"key {key!r} is not a declared modality (declared: {sorted(self.mods)})",
                          f"declare {key!r} in dataset.json \"modalities\", or rename/remove the key")
                return None
            if value is not None and not self._input(row, key, value):
                return None
        if not row.inputs:
            self.fail(n, f"sample {row.id!r} has no modality present", f"give at least one of {sorted(self.mods)} a value")
            return None
        return row

    def _input(self, row: _Row, name: str, value: Any) -> bool:
        kind = self.mods[name]["type"]
        if kind == "text":
            if not isinstance(value, str) or not value.strip():
                self.fail(row.line, f"text modality {name!r} needs a non-empty string, got {value!r}", "use null for a missing text")
                return False
            row.inputs[name] = value
            return True
        if not isinstance(value, str) or not value:
            self.fail(row.line, f"{kind} modality {name!r} needs a relative file path, got {value!r}", "use null when missing")
            return False
        path = (self.root / value).resolve()
        if not path.is_relative_to(self.real_root):
            self.fail(row.line, f"{name} path {value!r} escapes the dataset directory {self.root}",
                      "copy the file into the dataset folder and use a relative path")
            return False
        suffix = path.suffix.lower()
        if suffix not in EXTENSIONS[kind]:
            self.fail(row.line, f"{name} file {value!r} has extension {suffix!r}; {kind} accepts {list(EXTENSIONS[kind])}", "convert it")
            return False
        if not path.is_file():
            self.fail(row.line, f"{name} file {value!r} does not exist (looked for {path})", "fix the path or use null")
            return False
        try:
            if kind == "image":
                row.inputs[name] = read_image(path)
            elif suffix == ".wav":
                row.inputs[name], row.rates[name] = read_wav(path)
            else:
                row.inputs[name] = read_npy(path)
        except ReadError as exc:
            self.fail(row.line, f"{name} file {value!r}: {exc}", exc.fix)
            return False
        row.kinds[name] = suffix
        row.files[name] = value
        return True

    def labels(self, rows: list[_Row]) -> tuple[list[str], list[_Row]]:
        """Label names, and the rows with their labels mapped to indices."""
        multi, task, declared = self.cfg["task"] == "multi-label", self.cfg["task"], self.cfg.get("labels")

        def values(r: _Row) -> list[Any]:
            return list(r.label) if multi else [r.label]

        ref = ("str", None) if declared else next(((_label_type(v), r.line) for r in rows for v in values(r)), ("str", None))
        names: list[str] = list(declared or [])
        if not declared:
            seen = {v for r in rows for v in values(r) if _label_type(v) == ref[0]}
            key = (lambda v: v) if ref[0] != "str" else str
            names = [str(v).lower() if ref[0] == "bool" else str(v) for v in sorted(seen, key=key)]
            limit = 2 if task == "binary" else math.inf
            if len(names) < 2 or len(names) > limit:
                raise DataFormatError(self.file, None, f"a {task} task needs {'exactly 2' if task == 'binary' else 'at least 2'} "
                                      f"labels, found {len(names)}: {names[:20]}", 'declare "labels" in dataset.json or fix the labels')
        index = {n: k for k, n in enumerate(names)}
        kept: list[_Row] = []
        for r in rows:
            bad = next((v for v in values(r) if _label_type(v) != ref[0]), None)
            if bad is not None:
                where = "the declared labels are strings" if declared else f"line {ref[1]} uses {_ARTICLE[ref[0]]} label"
                self.fail(r.line, f"label {bad!r} is {_ARTICLE[_label_type(bad) or 'str']} but {where}",
                          "use one label type throughout")
                continue
            idx = [index.get(str(v).lower() if ref[0] == "bool" else str(v)) for v in values(r)]
            if None in idx:
                self.fail(r.line, f"label {values(r)[idx.index(None)]!r} is not one of {names}",
                          "add it to \"labels\" in dataset.json or fix the line")
                continue
            r.label = tuple(sorted(idx)) if multi else idx[0]
            kept.append(r)
        return names, kept

    def specs(self, train: list[_Row], rows: list[_Row]) -> dict[str, dict[str, Any]]:
        """Unfitted preprocess specs: dataset.json entries plus defaults inferred from the training rows."""
        out: dict[str, dict[str, Any]] = {}
        for name, declared in self.mods.items():
            spec = dict(declared)
            raws = [r.inputs[name] for r in train if name in r.inputs]
            if not raws:
                raise self.config_error(name, f"modality {name!r} is missing in all {len(train)} training samples, "
                                        "so its preprocessing cannot be fitted", "add training samples that have it, or remove it")
            kind = spec["type"]
            if kind == "image":
                shapes = [a.shape[:2] for a in raws if a.ndim in (2, 3)] or [(1, 1)]
                spec.setdefault("size", list(Counter(shapes).most_common(1)[0][0]))
                spec.setdefault("channels", 3 if any(a.ndim == 3 and a.shape[2] >= 3 for a in raws) else 1)
            elif kind == "text":
                tok = Path(spec.get("tokenizer_file") or default_tokenizer_file())
                tok = tok if tok.is_absolute() else (self.root / tok).resolve()
                if not tok.is_file():
                    raise self.config_error(name, f"tokenizer file {tok} does not exist",
                                            "point it at a tokenizers tokenizer.json, or drop the key for MiniLM's",
                                            "tokenizer_file")
                spec["tokenizer_file"] = str(tok)
            elif kind == "timeseries":
                self._alias(name, spec, "channels", "n_channels")
                spec.setdefault("n_channels", self._first_width(name, train))
            elif kind == "audio":
                self._audio_spec(name, spec, rows, raws)
            out[name] = spec
        return out

    def _alias(self, name: str, spec: dict[str, Any], friendly: str, key: str) -> None:
        """``channels`` / ``features`` in dataset.json mean the spec's ``n_channels`` / ``n_features``."""
        if friendly in spec:
            value = spec.pop(friendly)
            if key in spec and spec[key] != value:
                raise self.config_error(name, f"modality {name!r} sets both {friendly!r} ({value}) and {key!r} "
                                        f"({spec[key]})", "keep one of them", friendly)
            spec[key] = value

    def _first_width(self, name: str, rows: list[_Row]) -> int:
        """The last-axis width of the first (T, C) file: it fixes the width; a later file that differs fails.

        A first file with fewer frames than channels is most likely saved as (C, T): say so.
        """
        first = next((r for r in rows if getattr(r.inputs.get(name), "ndim", 0) == 2), None)
        if first is None:
            return 0
        frames, width = first.inputs[name].shape
        if frames < width:
            log.warning("%s: the first %r file %s has shape (%d, %d), fewer frames than channels; files must be "
                        "(T, C): if they are saved as (C, T), transpose them, or declare \"channels\" in "
                        "dataset.json so every file is checked against it", self.root, name,
                        first.files.get(name, "?"), frames, width)
        return int(width)

    def _audio_spec(self, name: str, spec: dict[str, Any], rows: list[_Row], raws: list[Any]) -> None:
        with_file = [r for r in rows if name in r.kinds]
        if not with_file:
            return
        suffix = with_file[0].kinds[name]
        spec.setdefault("input", "waveform" if suffix == ".wav" else "features")
        wants = {"waveform": (".wav",), "samples": (".wav", ".npy")}.get(spec["input"], (".npy",))
        if spec["input"] in ("waveform", "samples"):
            first_wav = next((r for r in with_file if r.kinds[name] == ".wav"), None)
            if first_wav is not None:
                spec.setdefault("sample_rate", first_wav.rates[name])
            elif "sample_rate" not in spec:
                raise self.config_error(name, f"modality {name!r} reads raw samples from .npy files, whose sample rate "
                                        "is unknown", 'declare "sample_rate" (Hz) in dataset.json', "input")
        for r in list(with_file):
            if r.kinds[name] not in wants:
                self.fail(r.line, f"{name} is a {r.kinds[name]} file but this modality reads {' or '.join(wants)} "
                          f"({spec['input']})", f"use {' or '.join(wants)} files for every {name!r} sample, or set "
                          "\"input\" in dataset.json")
            elif r.kinds[name] == ".wav" and r.rates[name] != spec["sample_rate"]:
                self.fail(r.line, f"{name} wav is {r.rates[name]} Hz but the modality uses {spec['sample_rate']} Hz "
                          "(nothing is resampled)",
                          f"resample it (e.g. sox in.wav -r {spec['sample_rate']} out.wav) or change \"sample_rate\"")
            else:
                continue
            rows.remove(r)
        if spec["input"] == "waveform":
            sr = int(spec["sample_rate"])
            win = round(0.025 * sr)
            spec["mfcc"] = {"n_mfcc": 13, "n_fft": 1 << (win - 1).bit_length(), "win_length": win,
                            "hop_length": round(0.010 * sr), "n_mels": 40, **spec.get("mfcc", {})}
        elif raws and spec["input"] != "samples":
            self._alias(name, spec, "features", "n_features")
            spec.setdefault("n_features", self._first_width(name, [r for r in rows if name in r.inputs]))

    def validate(self, specs: dict[str, dict[str, Any]], rows: list[_Row]) -> list[_Row]:
        """Run every non-text value through its preprocessor once, so bad files fail here, with their line."""
        pres = {}
        for n, s in specs.items():
            try:
                pres[n] = make_preprocessor({**s, "max_length": s.get("max_length", 512)})
            except PreprocessError as exc:
                raise self.config_error(n, f"modality {n!r}: {exc}", "fix its entry in dataset.json") from None
        kept = []
        for r in rows:
            try:
                for name, raw in r.inputs.items():
                    pres[name].features(raw)
            except PreprocessError as exc:
                what = f"{name} file {r.files[name]!r}" if name in r.files else name
                self.fail(r.line, f"{what}: {exc}", "fix or replace it (all values of a modality need the same layout)")
                continue
            kept.append(r)
        return kept




def load_user_dataset(path: Path | str, *, limit: int | None = None, seed: int = 0, strict: bool = True) -> MultimodalDataset:
    """Load a user-format directory (see the module docstring); ``seed`` only drives ``limit``."""
    root = Path(path)
    if not root.is_dir():
        raise DataFormatError(root, None, "is not a directory", "pass a folder holding dataset.json and samples.jsonl")
    cfg, _, cfg_text = read_config(root)
    reader = _Reader(root, cfg, cfg_text, strict)
    rows = reader.rows()
    if not rows:
        raise DataFormatError(reader.file, None, "holds no samples", "add one JSON object per sample and line")
    names, rows = reader.labels(rows)
    # explicit splits first; the rest split by label with the dataset's own fractions and seed
    auto = [r for r in rows if r.split is None]
    sp = cfg["split"]
    keys = [0 if cfg["task"] == "multi-label" else r.label for r in auto]
    for split, idx in stratified_split(keys, sp.get("val", 0.15), sp.get("test", 0.15), sp.get("seed", 0)).items():
        for i in idx:
            auto[i].split = split
    train = [r for r in rows if r.split == "train"]
    specs = reader.specs(train, rows)
    rows = reader.validate(specs, rows)
    splits = {s: [Sample(r.id, r.inputs, r.label) for r in rows if r.split == s] for s in SPLITS}
    if not splits["train"]:
        raise DataFormatError(reader.file, None, "no training samples", "add samples or lower the val/test fractions")
    for s in ("val", "test"):
        if not splits[s]:
            log.warning("%s: the %s split is empty", root, s)
    if reader.skipped:
        log.warning("%s: skipped %d sample line(s); see dataset.skipped", root, len(reader.skipped))
    splits = limit_splits(splits, limit, seed)
    return MultimodalDataset(name=cfg.get("name") or root.name, task=cfg["task"], labels=names,
                             modalities=fit_modalities(specs, splits["train"]), splits=splits, skipped=reader.skipped)
