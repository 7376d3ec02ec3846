"""Tiny trained-looking models for export tests: 1-layer encoders (export time scales with depth)."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tiny_multimodal import make_dataset
from train.data.types import MultimodalDataset
from train.encoders import build_encoder, default_encoder_config
from train.methods import DatasetInfo, MultimodalModel, build_method


def one_layer_encoders(info: DatasetInfo, seed: int = 0) -> dict[str, torch.nn.Module]:
    torch.manual_seed(seed)
    out = {}
    for m, spec in sorted(info.modalities.items()):
        cfg = {**default_encoder_config(spec.type, spec.preprocess, "tiny"), "num_layers": 1}
        out[m] = build_encoder(spec.type, cfg)
    return out


@cache
def tiny(method: str, n: int) -> tuple[MultimodalModel, MultimodalDataset]:
    """An eval-mode model with non-trivial LoRA and proxies (never trained), and its dataset."""
    data = make_dataset(n)
    info = DatasetInfo.from_dataset(data)
    model = build_method(method, info, one_layer_encoders(info))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    return model.eval(), data


def save_run(model: MultimodalModel, run_dir: Path, dataset: str) -> Path:
    """Write ``model`` in train.recipes.method's run format (config.json + model.safetensors)."""
    from train.runs import CONFIG_FILE, FORMAT_VERSION, MODEL_FILE, encoder_entry

    run_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "format_version": FORMAT_VERSION, **model.to_config(), "dataset": model.info.to_dict(),
        "encoders": {m: encoder_entry(e) for m, e in model.encoders.items()},
        "train": {"dataset": dataset, "data_dir": None},
    }
    (run_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(run_dir / MODEL_FILE))
    return run_dir
