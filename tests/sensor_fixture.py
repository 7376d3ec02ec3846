"""A generated two-sensor time-series set in the generic user format (accelerometer + gyroscope).

Shaped like a real smartwatch activity set: 4 classes, each sensor a (T, 3) ``.npy`` per
sample, the user's own train/test split and no validation split. Each class raises one
channel mean of one sensor and oscillates at its own frequency, with noise, so each sensor
alone is informative and both together are better.

``task="multi-label"`` writes the same sensors with a set of ``ATTRIBUTES`` per sample instead:
each attribute is on with probability 1/2, independently; accel carries ``moving`` and ``raised``,
gyro carries ``turning`` and ``raised``, so each single sensor knows one attribute only by chance.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

CLASSES = ["walk", "run", "sit", "stairs"]
OFFSETS = np.array([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [-1.5, -1.5, -1.5]], np.float32)
ATTRIBUTES = ["moving", "turning", "raised"]
# Which attributes shift which sensor's channel means (rows: attributes; columns: accel, gyro).
_CARRIES = np.array([[1, 0], [0, 1], [1, 1]], np.float32)


def write_sensor_dataset(root: Path, n_train: int = 40, n_test: int = 40, frames: int = 100, seed: int = 0,
                         with_val: bool = False, task: str = "single-label") -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "accel").mkdir(exist_ok=True)
    (root / "gyro").mkdir(exist_ok=True)
    (root / "dataset.json").write_text(json.dumps({
        "name": root.name, "task": task, "labels": ATTRIBUTES if task == "multi-label" else CLASSES,
        "modalities": {"accel": {"type": "timeseries"}, "gyro": {"type": "timeseries"}}}, indent=2))
    t = np.arange(frames) / 50.0
    lines = []
    splits = [("train", n_train), ("test", n_test)] + ([("val", n_test // 2)] if with_val else [])
    i = 0
    for split, n in splits:
        for k in range(n):
            label = k % len(CLASSES)
            on = rng.random(len(ATTRIBUTES)) < 0.5 if task == "multi-label" else None
            for s_i, (sensor, gain) in enumerate((("accel", 1.0), ("gyro", 0.7))):
                x = rng.normal(0.0, 1.0, (frames, 3)).astype(np.float32)
                if task == "multi-label":  # attribute a on: channel a's mean +2 on the sensors that carry it
                    x += 2.0 * gain * (on * _CARRIES[:, s_i])[None, :]
                else:
                    x += gain * OFFSETS[label]  # a class-specific posture (channel means) ...
                    x[:, label % 3] += gain * np.sin(2 * np.pi * (1 + label) * t).astype(np.float32)  # ... rhythm
                np.save(root / sensor / f"s{i}.npy", x)
            target = ({"labels": [a for a, o in zip(ATTRIBUTES, on) if o]} if task == "multi-label"
                      else {"label": CLASSES[label]})
            lines.append(json.dumps({"id": f"s{i}", **target, "split": split,
                                     "accel": f"accel/s{i}.npy", "gyro": f"gyro/s{i}.npy"}))
            i += 1
    (root / "samples.jsonl").write_text("\n".join(lines) + "\n")
    return root
