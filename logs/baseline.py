"""cls-only baseline (the paper's "unimodal baseline"): sum of the present modalities' own classifiers, no prediction."""
import json, sys
from collections import defaultdict
from pathlib import Path
import numpy as np, torch
from train.runs import load_run
from train.recipes.method import collate_for, mask_split
from train.data.registry import load_dataset
from train.engine.evaluate import evaluate_mixed
torch.set_num_threads(1)

def own_logits(model, samples, collate):
    groups = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s.pattern].append(i)
    out = np.zeros((len(samples), model.num_classes), np.float32); labels = np.zeros(len(samples), np.int64)
    with torch.no_grad():
        for pattern, idx in groups.items():
            for start in range(0, len(idx), 128):
                part = idx[start:start + 128]
                b = collate([samples[i] for i in part])
                z = sum(model.classifiers[m](model.encoders[m](b.modalities[m].inputs)[:, 0]) for m in sorted(pattern))
                out[part] = z.numpy(); labels[part] = b.labels.numpy()
    return out, labels

def acc(z, y): return float((z.argmax(1) == y).mean())

if __name__ == "__main__":
    data = load_dataset("av-digits", None, seed=0)
    test = data.split("test"); names = list(data.modalities)
    if sys.argv[1] == "patterns":  # per-pattern test accuracy of plain runs
        for run in sys.argv[2:]:
            model = load_run(Path(run)).eval(); collate = collate_for(model)
            row = {}
            for key in ("audio+image", "audio", "image"):
                mods = key.split("+")
                samples = [s.restricted(set(mods)) for s in test]
                row[key] = acc(*own_logits(model, samples, collate))
            print(run, "cls-only", json.dumps(row))
    else:  # lee.json: the grid of the same models with the cls-only baseline
        lee = json.loads(Path(sys.argv[2]).read_text()); eta, seed, cases = lee["eta"], lee["seed"], lee["cases"]
        tests = {c: mask_split(test, names, c, eta, seed) for c in cases}
        grid = {}
        for t, run in lee["runs"].items():
            model = load_run(Path(run)).eval(); collate = collate_for(model)
            grid[t] = {c: acc(*own_logits(model, tests[c], collate)) for c in cases}
            check = {c: evaluate_mixed(model, tests[c], collate)["accuracy"] for c in cases}
            assert all(abs(check[c] - lee["grid"][t][c]) < 1e-9 for c in cases), (check, lee["grid"][t])
        print(json.dumps({"method": lee["grid"], "cls_only": grid}, indent=1))
        for t in cases:
            m = np.mean([lee["grid"][t][c] for c in cases]); b = np.mean([grid[t][c] for c in cases])
            print(f"train {t}: method 3-case avg {m:.4f}  cls-only baseline {b:.4f}  diff {m - b:+.4f}")
