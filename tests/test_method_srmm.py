"""SRMM's mechanism: one shared g, S-1 switching, mean-of-probabilities branches, BatchNorm at export, the cache."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from export.onnx import export_pattern, sequence_axes
from export.validate import ort_session, run_graph
from export_fixtures import one_layer_encoders, tiny
from runtime.patterns import Pattern, all_patterns
from tiny_multimodal import make_dataset, make_encoders, make_samples
from train.engine.batches import Collate
from train.engine.loop import LoopConfig, train_loop
from train.methods import DatasetInfo, build_method, pattern_inputs
from train.methods.base import probabilities
from train.methods.srmm import SRMM, SharedBranch, mean_probability_logits, s1_order

torch.set_num_threads(1)


def build(n: int = 2, config: dict | None = None, encoders: dict | None = None) -> tuple[SRMM, Collate, object]:
    data = make_dataset(n)
    info = DatasetInfo.from_dataset(data)
    model = build_method("srmm", info, encoders or make_encoders(info), config)
    assert isinstance(model, SRMM)
    return model, Collate(info.modalities, info.task, info.num_classes), data


def warm_up(model: SRMM, collate: Collate, data, steps: int = 5) -> None:
    """A few Adam steps so that BatchNorm running statistics and weights are far from their init."""
    batch = collate(data.split("train"))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()


# ---- numbers by hand ---------------------------------------------------------------
def test_shared_branch_by_hand() -> None:
    g = SharedBranch(2, 2, 2, dropout=0.5).eval()
    with torch.no_grad():
        g.fc1.weight.copy_(torch.eye(2))
        g.bn.running_mean.copy_(torch.tensor([1.0, 0.0]))
        g.bn.running_var.copy_(torch.tensor([4.0, 1.0]))
        g.bn.eps = 0.0
        g.fc2.weight.copy_(torch.eye(2))
        g.fc2.bias.zero_()
        g.fc3.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        g.fc3.bias.copy_(torch.tensor([0.0, 0.5]))
        z, emb = g(torch.tensor([[3.0, 4.0], [-3.0, 2.0]]))
    # Row 0: BN -> ((3-1)/2, 4/1) = (1, 4); ReLU keeps it; L2 -> (1, 4)/sqrt(17).
    # Row 1: BN -> (-2, 2); ReLU -> (0, 2); L2 -> (0, 1).
    s = math.sqrt(17)
    torch.testing.assert_close(emb, torch.tensor([[1 / s, 4 / s], [0.0, 1.0]]))
    torch.testing.assert_close(z, torch.tensor([[1 / s, 8 / s + 0.5], [0.0, 2.5]]))


def test_mean_probability_logits_by_hand() -> None:
    za, zb = torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[0.0, 0.0]])  # p = (1/4, 3/4) and (1/2, 1/2)
    logits = mean_probability_logits("single-label", [za, zb])
    torch.testing.assert_close(logits, torch.tensor([[math.log(0.375), math.log(0.625)]]))
    torch.testing.assert_close(probabilities("single-label", logits), torch.tensor([[0.375, 0.625]]))
    # One modality: log softmax, whose softmax is softmax(z).
    torch.testing.assert_close(mean_probability_logits("single-label", [za]), torch.log_softmax(za, -1))
    # Multi-label: sigmoids 1/2 and 3/4 -> mean 5/8 -> logit ln(5/3).
    ml = mean_probability_logits("multi-label", [torch.tensor([[0.0]]), torch.tensor([[math.log(3.0)]])])
    torch.testing.assert_close(ml, torch.tensor([[math.log(5 / 3)]]))
    torch.testing.assert_close(torch.sigmoid(ml), torch.tensor([[0.625]]))


# ---- one shared g, frozen encoders --------------------------------------------------
def test_one_g_for_every_modality_counted_once_and_encoders_frozen() -> None:
    model, _, _ = build(3)
    assert model.encoder_adaptation == "frozen"
    assert not any(p.requires_grad for e in model.encoders.values() for p in e.parameters())
    assert len(model.adapters) == 0  # the widths agree
    assert all(len(list(n.parameters())) == 0 for n in model.norms.values())  # statistics only
    g_ids = {id(p) for p in model.g.parameters()}
    for pattern in all_patterns(model.modalities):
        branch = model.pattern_module(pattern)
        assert branch.g is model.g
        assert {id(p) for p in branch.g.parameters()} == g_ids
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("g.") for n in trainable)
    w, h, c = model.width, model.g.fc2.out_features, model.num_classes
    # fc1 (no bias: BatchNorm's shift absorbs it) + BN affine + fc2 + fc3, once for three modalities.
    assert model.parameter_counts()["learnable"] == w * h + 2 * h + (h * h + h) + (h * c + c)


def test_every_modality_trains_the_same_g() -> None:
    model, collate, data = build(2)
    model.train()
    samples = data.split("train")[:8]
    for m in model.modalities:
        model.zero_grad()
        model(collate([s.restricted({m}) for s in samples]))["loss"].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.g.parameters()), m


def test_adapters_only_when_widths_differ() -> None:
    from train.encoders import build_encoder, default_encoder_config

    info = DatasetInfo.from_dataset(make_dataset(2))
    encoders = make_encoders(info)
    encoders["audio"] = build_encoder("audio", default_encoder_config(
        "audio", info.modalities["audio"].preprocess, "tiny", hidden_size=48))
    with pytest.raises(ValueError, match="one embedding width"):
        build_method("srmm", info, dict(encoders), {"adapter": "off"})
    model = build_method("srmm", info, encoders)
    assert set(model.adapters) == {"audio", "image"} and model.width == 48
    assert model.adapters["image"].in_features == 32 and model.g.fc1.in_features == 48
    collate = Collate(info.modalities, info.task, info.num_classes)
    model.eval()
    pattern = Pattern(["audio"])
    branch = model.pattern_module(pattern)
    assert set(branch.adapters) == {"audio"}
    batch = collate([s.restricted(pattern) for s in make_samples(model.modalities, 4, 3)])
    with torch.no_grad():
        torch.testing.assert_close(branch(*pattern_inputs(batch, branch))[0], model(batch)["logits"])


# ---- branches: mean of the single-modality probabilities ---------------------------------
@pytest.mark.parametrize("task", ["single-label", "multi-label"])
def test_multimodal_branch_is_mean_of_single_branches(task: str) -> None:
    model, collate, data = build(3)
    warm_up(model, collate, data)
    model.task = task
    samples = make_samples(model.modalities, 6, seed=5)
    singles = {}
    with torch.no_grad():
        for m in model.modalities:
            branch = model.pattern_module(Pattern([m])).eval()
            singles[m] = branch(*pattern_inputs(collate([s.restricted({m}) for s in samples]), branch))[1]
        for pattern in all_patterns(model.modalities):
            branch = model.pattern_module(pattern).eval()
            logits, probs, _ = branch(*pattern_inputs(collate([s.restricted(pattern) for s in samples]), branch))
            expected = torch.stack([singles[m] for m in sorted(pattern)]).mean(0)
            torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)
            torch.testing.assert_close(probabilities(task, logits), probs, atol=0, rtol=0)
    assert not torch.allclose(singles["audio"], singles["image"], atol=1e-3)  # the mean is not trivial


# ---- switching -----------------------------------------------------------------------
def _epoch_log(switching: str, tmp_path) -> tuple[SRMM, list[list[tuple[str, str]]], list]:
    model, collate, data = build(3, {"switching": switching})
    patterns = all_patterns(model.modalities)
    train = [s.restricted(patterns[i % len(patterns)]) for i, s in enumerate(data.split("train"))]
    model.switch_log = []
    cfg = LoopConfig(epochs=1, batch_size=5, warmup_epochs=0, progress=False, resume=False)
    train_loop(model, train, data.split("val"), collate, model.task, cfg, tmp_path / "ckpt")
    return model, model.switch_log, train


@pytest.mark.parametrize("switching", ["s1", "s3"])
def test_switching_visits_every_available_pair_once_per_epoch(switching: str, tmp_path) -> None:
    model, log, train = _epoch_log(switching, tmp_path)
    expected = Counter((s.id, m) for s in train for m in model.modalities if s.inputs.get(m) is not None)
    seen = Counter(pair for batch in log for pair in batch)
    assert seen == expected and set(seen.values()) == {1}
    if switching == "s1":  # 24 samples / 5 = 5 batches, each mixing the modalities its samples have
        assert len(log) == 5 and all(len({m for _, m in batch}) > 1 for batch in log)
    else:  # every g batch is unimodal
        assert len(log) > 5 and all(len({m for _, m in batch}) == 1 for batch in log)


def test_s1_order_is_shuffled_and_complete() -> None:
    _, collate, data = build(2)
    batch = collate(data.split("train")[:10])
    perm, row, mod = s1_order(batch, ["audio", "image"], torch.Generator().manual_seed(0))
    assert sorted(zip(row.tolist(), mod.tolist())) == sorted((r, j) for r in range(10) for j in (0, 1))
    assert sorted(perm.tolist()) == list(range(20))
    assert mod.tolist() != sorted(mod.tolist())  # not grouped by modality


# ---- BatchNorm at export: running statistics, batch 1 ------------------------------------
def test_exported_batchnorm_uses_running_statistics_at_batch_1(tmp_path) -> None:
    model, collate, data = build(2, encoders=one_layer_encoders(DatasetInfo.from_dataset(make_dataset(2))))
    warm_up(model, collate, data, steps=10)
    assert float((model.g.bn.running_var - 1).abs().max()) > 1e-3 and float(model.g.bn.running_mean.abs().max()) > 0
    pattern = Pattern(["image"])
    branch = model.pattern_module(pattern).eval()
    example = [s.restricted(pattern) for s in make_samples(model.modalities, 3, seed=8)]
    path = tmp_path / "image.onnx"
    export_pattern(branch, pattern_inputs(collate(example), branch), path, dynamic_seq=sequence_axes(model.info.modalities))
    session = ort_session(path)
    samples = [s.restricted(pattern) for s in make_samples(model.modalities, 3, seed=9)]
    outs = []
    for s in samples:  # batch 1: batch statistics would normalise every feature to BN's shift
        args = pattern_inputs(collate([s]), branch)
        with torch.no_grad():
            expected = branch(*args)
        got = run_graph(session, [{n: a.numpy() for n, a in zip(branch.input_names, args)}])
        for name, e in zip(branch.output_names, expected):
            assert np.abs(got[name] - e.numpy()).max() < 1e-5, name
        outs.append(got["probabilities"])
    assert np.abs(outs[0] - outs[1]).max() > 1e-4  # batch-1 outputs depend on the input
    # The same probabilities from the running statistics, written out.
    with torch.no_grad():
        emb = model.embed("image", collate([samples[0]]).modalities["image"].inputs)
        bn, norm = model.g.bn, model.norms["image"]
        x = (emb - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
        h = (model.g.fc1(x) - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        z = model.g.fc3(torch.nn.functional.normalize(model.g.fc2(torch.relu(h)), dim=-1))
    assert np.abs(torch.softmax(z, -1).numpy() - outs[0]).max() < 1e-5


def test_one_row_training_batch_uses_running_statistics() -> None:
    model, collate, data = build(2)
    warm_up(model, collate, data)
    before = model.g.bn.running_mean.clone()
    model.train()
    out = model(collate([data.split("train")[0].restricted({"image"})]))
    assert torch.isfinite(out["loss"]) and torch.equal(model.g.bn.running_mean, before)


# ---- M = 3: every pattern exports and runs in onnxruntime -------------------------------
@pytest.mark.slow  # seven dynamo exports
def test_three_modalities_all_seven_patterns_export_and_match_ort(tmp_path) -> None:
    model, data = tiny("srmm", 3)
    collate = Collate(model.info.modalities, model.task, model.num_classes)
    patterns = all_patterns(model.modalities)
    assert len(patterns) == 7
    for pattern in patterns:
        branch = model.pattern_module(pattern).eval()
        mk = lambda rows, seed: pattern_inputs(  # noqa: E731
            collate([s.restricted(pattern) for s in make_samples(model.modalities, rows, seed)]), branch)
        path = tmp_path / f"{pattern.key}.onnx"
        export_pattern(branch, mk(3, 4), path, dynamic_seq=sequence_axes(model.info.modalities))
        session = ort_session(path)
        for rows in (5, 1):  # another batch size, and batch 1
            args = mk(rows, 6)
            with torch.no_grad():
                expected = branch(*args)
            got = run_graph(session, [{n: a.numpy() for n, a in zip(branch.input_names, args)}])
            for name, e in zip(branch.output_names, expected):
                assert got[name].shape == tuple(e.shape), (pattern, name)
                assert np.abs(got[name] - e.numpy()).max() < 1e-5, (pattern, name)


# ---- the embedding cache ---------------------------------------------------------------
def test_cache_changes_nothing_and_is_not_saved(tmp_path) -> None:
    results = {}
    for cache in (True, False):
        torch.manual_seed(0)
        model, collate, data = build(2, {"cache_embeddings": cache})
        cfg = LoopConfig(epochs=2, batch_size=8, warmup_epochs=0, progress=False, resume=False, seed=3)
        train_loop(model, data.split("train"), data.split("val"), collate, model.task, cfg, tmp_path / str(cache))
        results[cache] = model
    cached, plain = results[True], results[False]
    assert len(cached.cache) == 48 and cached.cache.misses == 48 and cached.cache.hits == 48  # 24 samples x 2
    assert len(plain.cache) == 0
    for (name, a), (_, b) in zip(cached.state_dict().items(), plain.state_dict().items()):
        # Float rounding only: a cached row was computed in another batch (other padding, other BLAS blocking).
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert not any("cache" in k for k in cached.state_dict())


def test_cache_uses_eval_mode_embeddings_and_follows_encoder_changes() -> None:
    model, collate, data = build(2)
    model.train()
    assert all(not e.training for e in model.encoders.values())
    batch = collate(data.split("train")[:6])
    inputs = batch.modalities["image"].inputs
    with torch.no_grad():
        fresh = model.encoders["image"].eval()(inputs)[:, 0]
    model.embeddings(batch)
    ids = batch.ids
    cached = model.cache.lookup("image", ids, inputs, lambda x: pytest.fail("recomputed a cached row"))
    torch.testing.assert_close(cached, fresh, atol=1e-6, rtol=0)
    # Other inputs under a known id are recomputed, not served from the cache.
    other = {k: v.flip(0) for k, v in inputs.items()}
    got = model.cache.lookup("image", ids, other, lambda x: model.embed("image", x))
    with torch.no_grad():
        torch.testing.assert_close(got, model.embed("image", other), atol=1e-6, rtol=0)
    # An encoder weight changed in place empties the cache.
    with torch.no_grad():
        next(model.encoders["image"].parameters()).add_(0.1)
    model.embeddings(batch)
    assert model.cache.misses == 12 + 6 + 12  # first fill, the flipped rows, both modalities after the change


def test_s2_s3_train_steps_and_options() -> None:
    for switching in ("s2", "s3"):
        model, collate, data = build(2, {"switching": switching})
        cfg = LoopConfig(epochs=1, batch_size=12, warmup_epochs=0, progress=False, resume=False)
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            result = train_loop(model, data.split("train"), data.split("val"), collate, model.task, cfg, Path(d))
        assert all(math.isfinite(r["train_loss"]) for r in result.history)
    with pytest.raises(ValueError, match="switching"):
        build(2, {"switching": "s4"})


def test_legacy_exporter_refusal_names_the_fix(tmp_path) -> None:
    """TorchScript tracing cannot export SRMM's batch norm on an image branch (its channel count is not static
    in the trace): a BuildError saying what to use, not the tracer's traceback."""
    from export.errors import BuildError

    model, _ = tiny("srmm", 3)
    pattern = Pattern(["image"])
    branch = model.pattern_module(pattern).eval()
    collate = Collate(model.info.modalities, model.task, model.num_classes)
    args = pattern_inputs(collate([s.restricted(pattern) for s in make_samples(model.modalities, 3, 4)]), branch)
    with pytest.raises(BuildError, match="--exporter dynamo"):
        export_pattern(branch, args, tmp_path / "x.onnx", dynamic_seq=sequence_axes(model.info.modalities),
                       exporter="legacy")
