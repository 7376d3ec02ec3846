"""Latency, bytes and memory of an easy-vqa CMPT bundle whose weights are NOT trained (not a test).

Pretrained MiniLM (text) + a scratch "small" ViT (image, hidden 384, patch 16) with random LoRA
and head, seed 0: the same graphs as a trained easy-vqa bundle (same shapes and ops), so latency,
bundle bytes and memory are representative; accuracy numbers of such a bundle mean nothing.
Run with the tree to measure on PYTHONPATH (this one, or the base commit's for "before"):

    python scripts/measure_easyvqa_untrained.py --out bundles/easyvqa-untrained [--limit 400]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from export.build import BuildConfig, build_bundle
from train.data.registry import load_dataset
from train.encoders import build_encoder, default_encoder_config, load_encoder, minilm_dir
from train.methods import DatasetInfo, build_method


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=int, default=400)
    p.add_argument("--precisions", default="fp32,int8")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("easy-vqa", Path("data"), limit=args.limit, seed=0)
    info = DatasetInfo.from_dataset(data)
    torch.manual_seed(0)
    text = load_encoder(minilm_dir(), "text")
    img_spec = info.modalities["image"]
    image = build_encoder("image", default_encoder_config("image", img_spec.preprocess, "small", text.hidden_size,
                                                          patch_size=16))
    question = next(m for m, s in info.modalities.items() if s.type == "text")
    model = build_method("cmpt", info, {question: text, "image": image})
    with torch.no_grad():
        for name, q in model.named_parameters():
            if name.endswith("lora_B"):
                q.normal_(0, 0.02)
    cfg = BuildConfig(method="cmpt", precisions=args.precisions, out=args.out, progress=False, placeholders=False,
                      val_samples=64, calib_samples=32, allow_degraded=True)
    print(build_bundle(cfg, model=model.eval(), dataset=data))


if __name__ == "__main__":
    main()
