"""Cost as the number of modalities grows: M = 2..5 generated modalities, tiny 1-layer encoders, CMPT.

Not a test (benchmarks are not tests): ``python scripts/measure_growth.py --out docs/growth``
writes growth.json, growth.md and growth.png. Per M: export wall time of the fp32 bundle (all
2^M - 1 patterns, dynamo exporter + ORT fusion + parity), graph bytes inline and with the
shared weights file, and, in a fresh process per bundle form, Runtime.load time of every
pattern and its peak RSS / PSS.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from export.build import BuildConfig, build_bundle  # noqa: E402
from export.weights import share_bundle_weights  # noqa: E402
from runtime.manifest import load_manifest  # noqa: E402
from train.data.types import ModalitySpec, MultimodalDataset, Sample  # noqa: E402
from train.encoders import build_encoder, default_encoder_config  # noqa: E402
from train.methods import DatasetInfo, build_method  # noqa: E402

IMAGE = {"type": "image", "size": [8, 8], "channels": 1, "scale": 1.0}
AUDIO = {"type": "audio", "input": "features", "n_features": 5, "max_frames": 6}
LOAD = r"""
import json, sys, time
t0 = time.perf_counter()
from runtime.session import Runtime
rt = Runtime.load(sys.argv[1], intra_op_threads=1)
t1 = time.perf_counter()
def field(path, key):
    return next(int(l.split()[1]) for l in open(path) if l.startswith(key)) / 1024
print("LOAD:" + json.dumps({"load_s": t1 - t0, "patterns": len(rt.patterns),
      "peak_rss_mb": field("/proc/self/status", "VmHWM:"), "pss_mb": field("/proc/self/smaps_rollup", "Pss:")}))
"""


def fixture(m: int, n: int = 24) -> tuple[object, MultimodalDataset]:
    names = [f"{'image' if i % 2 == 0 else 'audio'}{i}" for i in range(m)]
    specs = {k: ModalitySpec(k, "image" if k.startswith("image") else "audio",
                             dict(IMAGE if k.startswith("image") else AUDIO)) for k in names}
    rng = np.random.default_rng(0)

    def sample(i: int) -> Sample:
        inputs: dict[str, object] = {}
        for k in names:
            if k.startswith("image"):
                inputs[k] = rng.normal(0, 0.3, (8, 8)).astype(np.float32)
            else:
                inputs[k] = rng.normal(0, 0.3, (int(rng.integers(3, 7)), 5)).astype(np.float32)
        return Sample(f"s{i}", inputs, i % 3)

    data = MultimodalDataset(name=f"gen{m}", task="single-label", labels=["a", "b", "c"], modalities=specs,
                             splits={s: [sample(i + 1000 * j) for i in range(n)]
                                     for j, s in enumerate(("train", "val", "test"))})
    info = DatasetInfo.from_dataset(data)
    torch.manual_seed(0)
    encoders = {k: build_encoder(s.type, {**default_encoder_config(s.type, s.preprocess, "tiny"), "num_layers": 1})
                for k, s in info.modalities.items()}
    model = build_method("cmpt", info, encoders)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    return model.eval(), data


def load_in_fresh_process(bundle: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD, str(bundle)], capture_output=True, text=True, timeout=600)
    line = next((l for l in out.stdout.splitlines() if l.startswith("LOAD:")), None)
    if line is None:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(line[5:])


def measure(m: int, root: Path, exporter: str = "dynamo") -> dict:
    model, data = fixture(m)
    inline = root / f"gen{m}-inline"
    t0 = time.perf_counter()
    build_bundle(BuildConfig(out=inline, shared_weights="never", progress=False, placeholders=False,
                             val_samples=8, calib_samples=8, exporter=exporter), model=model, dataset=data)
    export_s = time.perf_counter() - t0
    shared = root / f"gen{m}-shared"
    shutil.copytree(inline, shared)
    manifest = load_manifest(shared)
    share_bundle_weights(shared, manifest, "always")
    manifest.save(shared)
    w = manifest.extra["weights"]["fp32"]
    return {"M": m, "patterns": 2 ** m - 1, "export_s": round(export_s, 2),
            "inline_bytes": w["inline_graph_bytes"], "shared_bytes": w["bundle_graph_bytes"],
            "unique_weight_bytes": w["unique_weight_bytes"],
            "load_inline": load_in_fresh_process(inline), "load_shared": load_in_fresh_process(shared)}


def markdown(rows: list[dict]) -> str:
    out = ["| M | patterns | export s | s/pattern | inline bytes | shared bytes | unique weights | load s inline / "
           "shared | peak RSS MB inline / shared | PSS MB inline / shared |", "|" + "---|" * 10]
    for r in rows:
        li, ls = r["load_inline"], r["load_shared"]
        out.append(f"| {r['M']} | {r['patterns']} | {r['export_s']:.1f} | {r['export_s'] / r['patterns']:.2f} | "
                   f"{r['inline_bytes']:,} | {r['shared_bytes']:,} | {r['unique_weight_bytes']:,} | "
                   f"{li['load_s']:.2f} / {ls['load_s']:.2f} | {li['peak_rss_mb']:.0f} / {ls['peak_rss_mb']:.0f} | "
                   f"{li['pss_mb']:.0f} / {ls['pss_mb']:.0f} |")
    return "\n".join(out) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = [r["M"] for r in rows]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(ms, [r["export_s"] for r in rows], "o-")
    ax[0].set(title="export wall time (fp32)", xlabel="modalities M", ylabel="s")
    ax[1].plot(ms, [r["inline_bytes"] / 1e6 for r in rows], "o-", label="inline")
    ax[1].plot(ms, [r["shared_bytes"] / 1e6 for r in rows], "s-", label="shared weights file")
    ax[1].set(title="bundle graph bytes", xlabel="modalities M", ylabel="MB", yscale="log")
    ax[1].legend()
    ax[2].plot(ms, [r["load_inline"]["peak_rss_mb"] for r in rows], "o-", label="peak RSS inline")
    ax[2].plot(ms, [r["load_shared"]["peak_rss_mb"] for r in rows], "s-", label="peak RSS shared")
    ax[2].set(title="Runtime.load of every pattern", xlabel="modalities M", ylabel="MB")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", type=Path, default=Path("docs/growth"))
    p.add_argument("--work", type=Path, default=Path("bundles/growth"))
    p.add_argument("--max-m", type=int, default=5)
    p.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    args = p.parse_args()
    torch.set_num_threads(1)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in range(2, args.max_m + 1):
        rows.append({**measure(m, args.work, args.exporter), "exporter": args.exporter})
        print(json.dumps(rows[-1]), flush=True)
        (args.out / "growth.json").write_text(json.dumps(rows, indent=1) + "\n")
    (args.out / "growth.md").write_text(markdown(rows))
    plot(rows, args.out / "growth.png")
    print(markdown(rows))


if __name__ == "__main__":
    main()
