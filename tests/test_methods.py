"""Every registered method x every availability pattern, on tiny 2- and 3-modality fixtures."""
from __future__ import annotations

import itertools
from functools import cache

import pytest
import torch

from runtime.patterns import Pattern, all_patterns
from tiny_multimodal import make_dataset, make_encoders, make_samples, specs
from train.engine.batches import Collate
from train.engine.evaluate import evaluate_by_pattern
from train.methods import DatasetInfo, MultimodalModel, available_methods, build_method, get_method, pattern_inputs
from train.methods.base import sample_modality_dropout, task_loss
from train.methods.cmpt import alignment_loss, cmpt_fuse, cmpt_fuse_masked, proxy_r2
from train.engine.metrics import task_metrics

CASES = [(method, n, p.key) for method in available_methods() for n in (2, 3)
         for p in all_patterns(sorted(specs(n)))]
IDS = [f"{m}-{n}mod-{k}" for m, n, k in CASES]


@cache
def fixture(method: str, n: int) -> tuple[MultimodalModel, Collate, object]:
    """A model with non-trivial LoRA (B != 0) and proxies, in eval mode; shared, never trained."""
    data = make_dataset(n)
    info = DatasetInfo.from_dataset(data)
    model = build_method(method, info, make_encoders(info))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    return model.eval(), Collate(info.modalities, info.task, info.num_classes), data


def branch_batch(n: int, pattern: Pattern, collate: Collate, rows: int = 5) -> tuple:
    samples = [s.restricted(pattern) for s in make_samples(sorted(specs(n)), rows, seed=7)]
    return collate(samples)


def outside_parameters(model: MultimodalModel, pattern: Pattern) -> list[torch.nn.Parameter]:
    """Parameters owned by modalities outside ``pattern`` (their encoder and, for CMPT, their proxies)."""
    out = []
    for m in model.modalities:
        if m in pattern:
            continue
        out += list(model.encoders[m].parameters())
        proxies = getattr(model, "proxies", None)
        if proxies is not None:
            out.append(proxies[m])
    return out


def test_registry() -> None:
    assert {"cmpt", "late-fusion", "modality-dropout"} <= set(available_methods())
    with pytest.raises(ValueError, match="available"):
        get_method("nope")
    info = DatasetInfo.from_dataset(make_dataset(2))
    with pytest.raises(ValueError, match="unknown cmpt option"):
        build_method("cmpt", info, make_encoders(info), {"lambda": 0.3})


@pytest.mark.parametrize(("method", "n", "key"), CASES, ids=IDS)
def test_branch_shapes_and_finite(method: str, n: int, key: str) -> None:
    model, collate, _ = fixture(method, n)
    pattern = Pattern.from_key(key)
    branch = model.pattern_module(pattern).eval()
    assert branch.input_names == [f"{m}.{i}" for m in sorted(pattern) for i in model.encoders[m].input_names]
    assert branch.output_names == ["logits", "probabilities", "fused_embedding"]
    with torch.no_grad():
        logits, probs, fused = branch(*pattern_inputs(branch_batch(n, pattern, collate), branch))
    assert logits.shape == probs.shape == (5, model.num_classes)
    assert fused.shape == (5, model.encoders[model.modalities[0]].hidden_size)
    assert all(torch.isfinite(t).all() for t in (logits, probs, fused))
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))


@pytest.mark.parametrize(("method", "n", "key"), CASES, ids=IDS)
def test_branch_ignores_modalities_outside_pattern(method: str, n: int, key: str) -> None:
    model, collate, _ = fixture(method, n)
    pattern = Pattern.from_key(key)
    branch = model.pattern_module(pattern).eval()
    outside = outside_parameters(model, pattern)
    assert not {id(p) for p in branch.parameters()} & {id(p) for p in outside}
    assert set(branch.encoders) == set(pattern)
    inputs = pattern_inputs(branch_batch(n, pattern, collate), branch)
    saved = [p.detach().clone() for p in outside]
    with torch.no_grad():
        before = branch(*inputs)
        for p in outside:
            p.add_(torch.randn_like(p))
        after = branch(*inputs)
        for p, s in zip(outside, saved):
            p.copy_(s)
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    # Sanity: perturbing a present modality does change the output.
    inside = next(model.encoders[sorted(pattern)[0]].layers()[0].parameters())
    saved_inside = inside.detach().clone()
    with torch.no_grad():
        inside.add_(torch.randn(inside.shape, generator=torch.Generator().manual_seed(0)))
        changed = branch(*inputs)[0]
        inside.copy_(saved_inside)
    assert not torch.equal(changed, before[0])


@pytest.mark.parametrize(("method", "n", "key"), CASES, ids=IDS)
def test_branch_matches_model_forward(method: str, n: int, key: str) -> None:
    model, collate, _ = fixture(method, n)
    pattern = Pattern.from_key(key)
    branch = model.pattern_module(pattern).eval()
    batch = branch_batch(n, pattern, collate)
    with torch.no_grad():
        expected = model(batch)
        logits, _, fused = branch(*pattern_inputs(batch, branch))
    torch.testing.assert_close(logits, expected["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused, expected["embedding"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", available_methods())
def test_mixed_batch_and_evaluate_by_pattern_match_branches(method: str) -> None:
    model, collate, _ = fixture(method, 3)
    patterns = all_patterns(model.modalities)
    samples = [s.restricted(patterns[i % len(patterns)]) for i, s in enumerate(make_samples(model.modalities, 21, 3))]
    with torch.no_grad():
        mixed = model(collate(samples))["logits"]
    for pattern in patterns:
        idx = [i for i, s in enumerate(samples) if s.pattern == pattern]
        branch = model.pattern_module(pattern).eval()
        with torch.no_grad():
            got = branch(*pattern_inputs(collate([samples[i] for i in idx]), branch))[0]
        torch.testing.assert_close(got, mixed[idx], atol=1e-5, rtol=1e-5)
    scores = evaluate_by_pattern(model, samples, collate)
    assert list(scores) == [p.key for p in patterns]
    assert all(s["num_samples"] == 3 for s in scores.values())
    labels = collate(samples).labels.numpy()
    assert scores[patterns[0].key]["accuracy"] == task_metrics("single-label", mixed[::7].numpy(), labels[::7])["accuracy"]


def test_eq5_by_hand_two_modalities() -> None:
    g = torch.Generator().manual_seed(0)
    cls_a, cls_b, cmpt_a, cmpt_b = (torch.randn(4, 8, generator=g) for _ in range(4))
    proxies = {("a", "b"): cmpt_a, ("b", "a"): cmpt_b}  # CMPT_a approximates CLS_b and vice versa
    mods = ["a", "b"]
    assert torch.equal(cmpt_fuse({"a": cls_a, "b": cls_b}, proxies, mods), cls_a + cls_b)
    assert torch.equal(cmpt_fuse({"b": cls_b}, proxies, mods), cls_b + cmpt_b)  # m1 missing
    assert torch.equal(cmpt_fuse({"a": cls_a}, proxies, mods), cls_a + cmpt_a)  # m2 missing
    present = torch.tensor([[True, True], [False, True], [True, False], [True, True]])
    fused = cmpt_fuse_masked({"a": cls_a, "b": cls_b}, proxies, present, mods)
    expected = torch.stack([cls_a[0] + cls_b[0], cls_b[1] + cmpt_b[1], cls_a[2] + cmpt_a[2], cls_a[3] + cls_b[3]])
    torch.testing.assert_close(fused, expected, atol=0, rtol=0)


def test_three_modality_gating_uses_mean_of_present_proxies() -> None:
    g = torch.Generator().manual_seed(1)
    mods = ["a", "b", "c"]
    cls = {m: torch.randn(2, 4, generator=g) for m in mods}
    prox = {(s, t): torch.randn(2, 4, generator=g) for s, t in itertools.permutations(mods, 2)}
    got = cmpt_fuse({"a": cls["a"]}, prox, mods)
    torch.testing.assert_close(got, cls["a"] + prox[("a", "b")] + prox[("a", "c")])
    got = cmpt_fuse({"a": cls["a"], "c": cls["c"]}, prox, mods)
    torch.testing.assert_close(got, cls["a"] + (prox[("a", "b")] + prox[("c", "b")]) / 2 + cls["c"])
    for pattern in all_patterns(mods):
        present = torch.tensor([[m in pattern for m in mods]] * 2)
        static = cmpt_fuse({m: cls[m] for m in sorted(pattern)}, prox, mods)
        torch.testing.assert_close(cmpt_fuse_masked(cls, prox, present, mods), static, atol=1e-6, rtol=0)


def test_alignment_loss_eq4_on_complete_rows_only() -> None:
    g = torch.Generator().manual_seed(2)
    cls = {m: torch.randn(3, 6, generator=g, requires_grad=True) for m in "ab"}
    prox = {("a", "b"): torch.randn(3, 6, generator=g, requires_grad=True),
            ("b", "a"): torch.randn(3, 6, generator=g, requires_grad=True)}
    present = torch.tensor([[True, True], [True, False], [True, True]])  # row 1 lacks b
    loss = alignment_loss(cls, prox, present, ["a", "b"])
    mse = torch.nn.functional.mse_loss
    expected = sum(mse(prox[("a", "b")][i], cls["b"][i]) + mse(prox[("b", "a")][i], cls["a"][i]) for i in (0, 2)) / 2
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert cls["b"].grad is not None and cls["b"].grad.abs().sum() > 0  # no stop-gradient, as in the paper
    assert torch.all(prox[("a", "b")].grad[1] == 0)
    detached = alignment_loss({m: t.detach().requires_grad_() for m, t in cls.items()}, prox, present, ["a", "b"], True)
    assert detached.grad_fn is not None


def test_proxy_r2_by_hand_on_rows_with_both_modalities() -> None:
    # Width 1, rows 0 and 2 complete, row 1 lacks b (its values must not count).
    cls = {"a": torch.tensor([[0.0], [9.0], [4.0]]), "b": torch.tensor([[1.0], [9.0], [3.0]])}
    prox = {("a", "b"): torch.tensor([[2.0], [-9.0], [2.0]]),  # CLS b is 1, 3 (mean 2): SSE 2, SST 2 -> R^2 0
            ("b", "a"): torch.tensor([[0.0], [-9.0], [4.0]])}  # exactly CLS a -> R^2 1
    present = torch.tensor([[True, True], [True, False], [True, True]])
    assert float(proxy_r2(cls, prox, present, ["a", "b"])) == pytest.approx(0.5)
    prox[("b", "a")] = torch.tensor([[4.0], [0.0], [0.0]])  # swapped: SSE 32, SST 8 -> R^2 -3
    assert float(proxy_r2(cls, prox, present, ["a", "b"])) == pytest.approx((0 - 3) / 2)
    assert proxy_r2(cls, prox, torch.tensor([[True, True], [True, False], [False, True]]), ["a", "b"]) is None


def test_modality_dropout_is_uniform_over_nonempty_subsets() -> None:
    torch.manual_seed(0)
    present = torch.ones(6000, 2, dtype=torch.bool)
    present[:1000, 1] = False  # single-modality rows keep what they have
    keep = sample_modality_dropout(present)
    assert keep.any(1).all() and not (keep & ~present).any()
    assert keep[:1000].equal(present[:1000])
    full = keep[1000:]
    for pattern in ([True, True], [True, False], [False, True]):
        frac = (full == torch.tensor(pattern)).all(1).float().mean().item()
        assert abs(frac - 1 / 3) < 0.03, (pattern, frac)
    keep3 = sample_modality_dropout(torch.ones(7000, 3, dtype=torch.bool))
    counts = torch.unique(keep3, dim=0, return_counts=True)[1]
    assert len(counts) == 7 and counts.min() > 850


# The CMPT paper's arms share one model shape: frozen encoders + rank-1 LoRA, (proxies), one head.
LORA_HEAD_METHODS = [m for m in available_methods() if m in ("cmpt", "late-fusion", "modality-dropout")]


@pytest.mark.parametrize("method", LORA_HEAD_METHODS)
def test_only_adapters_proxies_and_head_train(method: str) -> None:
    info = DatasetInfo.from_dataset(make_dataset(2))
    model = build_method(method, info, make_encoders(info))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith(("lora_A", "lora_B")) or n.startswith(("proxies.", "head.")) for n in trainable)
    assert any(n.startswith("head.") for n in trainable)
    if method == "cmpt":
        assert {"proxies.audio", "proxies.image"} <= set(trainable)
    hidden = model.head.in_features
    lora = sum(4 * e.num_layers * 2 * hidden for e in model.encoders.values())  # rank 1: (in + out) per linear
    proxies = hidden * 2 if method == "cmpt" else 0
    assert model.parameter_counts()["learnable"] == lora + proxies + hidden * 3 + 3


@pytest.mark.parametrize("method", available_methods())
def test_training_step_keeps_frozen_weights_and_lowers_loss(method: str) -> None:
    torch.manual_seed(0)
    data = make_dataset(2, n_train=24)
    info = DatasetInfo.from_dataset(data)
    model = build_method(method, info, make_encoders(info))
    collate = Collate(info.modalities, info.task, info.num_classes)
    batch = collate(data.split("train"))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.02)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(task_loss(info.task, model(batch)["logits"], batch.labels))

    def objective() -> float:  # the method's own training loss, with fixed dropout masks
        model.train()
        torch.manual_seed(1)
        with torch.no_grad():
            return float(model(batch)["loss"])

    start, start_objective = eval_loss(), objective()
    for _ in range(25):
        model.train()
        out = model(batch)
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    if model.encoder_adaptation == "bitfit":
        # These random tiny encoders give a nearly constant CLS across samples (std ~0.006 audio,
        # ~0.06 image), which bias-only tuning cannot amplify in 25 steps: the task loss only
        # reaches chance (ln 3). Require a falling task loss and a 20% fall of the objective.
        assert eval_loss() < start
        assert objective() < 0.8 * start_objective
    else:
        assert eval_loss() < 0.8 * start
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert all(not torch.equal(p, trainable[n]) for n, p in model.named_parameters() if n in trainable)


def test_shared_width_required() -> None:
    from train.encoders import build_encoder, default_encoder_config

    info = DatasetInfo.from_dataset(make_dataset(2))
    encoders = make_encoders(info)
    spec = info.modalities["audio"].preprocess
    encoders["audio"] = build_encoder("audio", default_encoder_config("audio", spec, "tiny", hidden_size=48))
    with pytest.raises(ValueError, match="share one hidden size"):
        build_method("cmpt", info, encoders)
    model, _, _ = fixture("cmpt", 2)
    with pytest.raises(ValueError, match="does not have"):
        model.pattern_module(Pattern(["image", "text"]))


def _export(branch: torch.nn.Module, args: tuple, path: str, dynamo: bool) -> None:
    kw = dict(input_names=branch.input_names, output_names=branch.output_names, opset_version=18)
    if dynamo:
        auto = torch.export.Dim.AUTO
        # forward(*tensors): one varargs entry holding a spec per tensor (batch, and sequence for 2-3D inputs).
        shapes = (tuple({0: auto, **({1: auto} if a.dim() in (2, 3) else {})} for a in args),)
        torch.onnx.export(branch, args, path, dynamo=True, external_data=False, dynamic_shapes=shapes, **kw)
    else:
        axes = {n: {0: "batch", **({1: "seq"} if a.dim() in (2, 3) else {})} for n, a in zip(branch.input_names, args)}
        torch.onnx.export(branch, args, path, dynamo=False, dynamic_axes=axes, **kw)


@pytest.mark.parametrize(("key", "dynamo"), [("audio+image", False), ("audio", False), ("image", False),
                                             ("audio+image", True)])
def test_cmpt_branch_exports_to_onnx_and_matches_ort(key: str, dynamo: bool, tmp_path) -> None:
    from runtime.runners.onnxrt import create_session, session_options

    model, collate, _ = fixture("cmpt", 2)
    pattern = Pattern.from_key(key)
    branch = model.pattern_module(pattern).eval()
    path = str(tmp_path / f"{key}.onnx")
    _export(branch, pattern_inputs(branch_batch(2, pattern, collate, rows=4), branch), path, dynamo)
    session = create_session(path, session_options(threads=1))
    assert [i.name for i in session.get_inputs()] == branch.input_names
    assert [o.name for o in session.get_outputs()] == branch.output_names
    args = pattern_inputs(branch_batch(2, pattern, collate, rows=7), branch)  # another batch and sequence length
    with torch.no_grad():
        expected = branch(*args)
    got = session.run(None, {n: a.numpy() for n, a in zip(branch.input_names, args)})
    for g, e in zip(got, expected):
        assert g.shape == tuple(e.shape)
        assert abs(g - e.numpy()).max() < 1e-4


@pytest.mark.parametrize("task", ["multi-label", "binary"])
def test_other_tasks_use_their_loss_and_probabilities(task: str) -> None:
    data = make_dataset(2)
    if task == "multi-label":
        for s in data.split("train"):
            s.label = (int(s.label), (int(s.label) + 1) % 3)
    else:
        data.labels = ["no", "yes"]
        for s in data.split("train"):
            s.label = int(s.label) % 2
    data.task = task  # type: ignore[assignment]
    info = DatasetInfo.from_dataset(data)
    model = build_method("cmpt", info, make_encoders(info))
    batch = Collate(info.modalities, info.task, info.num_classes)(data.split("train")[:6])
    out = model.train()(batch)
    expected_task = (torch.nn.functional.binary_cross_entropy_with_logits if task == "multi-label"
                     else torch.nn.functional.cross_entropy)(out["logits"], batch.labels)
    torch.testing.assert_close(out["task_loss"], expected_task.detach())
    branch = model.eval().pattern_module(Pattern(["image"]))
    samples = [s.restricted({"image"}) for s in data.split("train")[:4]]
    logits, probs, _ = branch(*pattern_inputs(Collate(info.modalities, task, info.num_classes)(samples), branch))
    expected = torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, -1)
    torch.testing.assert_close(probs, expected)
