"""Test-wide settings: offline hubs, one thread (2 shared cores), a shared data cache."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Real datasets are fetched once into the repo's data dir and reused across runs.
os.environ.setdefault("MMEDGE_DATA_DIR", str(Path(__file__).resolve().parents[1] / "data"))

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the runtime-only install has no torch
    pass
