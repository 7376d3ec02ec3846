"""UME-MMA: placeholder constants folded into the branches, the augmentation, phase 2 from the unimodal heads."""
from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from runtime.modality_spec import placeholder_raw, placeholder_recipe, raw_from_recipe
from runtime.patterns import Pattern, all_patterns
from runtime.preprocess import make_preprocessor
from export_fixtures import one_layer_encoders
from tiny_multimodal import make_dataset, make_encoders, make_samples
from train.data.types import Sample
from train.engine.batches import Collate
from train.engine.loop import LoopConfig
from train.methods import DatasetInfo, build_method, get_method, pattern_inputs
from train.methods.ume_mma import UMEMMA, sample_augmentation
from train.recipes.unimodal import UnimodalClassifier

torch.set_num_threads(1)


def heads_for(info: DatasetInfo, encoders: dict, seed: int = 5) -> dict[str, torch.nn.Linear]:
    """Stand-ins for phase 1's heads: random, but not the model's own fresh init."""
    torch.manual_seed(seed)
    return {m: torch.nn.Linear(int(e.hidden_size), info.num_classes) for m, e in encoders.items()}


@cache
def model_3(aware: bool = False) -> tuple[UMEMMA, Collate]:
    info = DatasetInfo.from_dataset(make_dataset(3))
    encoders = one_layer_encoders(info)  # export time grows with depth
    model = get_method("ume-mma").build(info, encoders, {"aware": aware}, heads=heads_for(info, encoders))
    return model.eval(), Collate(info.modalities, info.task, info.num_classes)  # type: ignore[return-value]


def with_placeholders(samples: list[Sample], pattern: Pattern, info: DatasetInfo) -> list[Sample]:
    """The paper's literal input: every modality outside ``pattern`` replaced by its raw placeholder."""
    return [Sample(s.id, {m: (s.inputs[m] if m in pattern else placeholder_raw(info.modalities[m].preprocess))
                          for m in info.modalities}, s.label) for s in samples]


@pytest.mark.parametrize("key", [p.key for p in all_patterns(["audio", "image", "text"])])
def test_constant_folding_equals_the_literal_placeholder_run(key: str) -> None:
    model, collate = model_3()
    pattern = Pattern.from_key(key)
    samples = make_samples(model.modalities, 6, seed=11)
    branch = model.pattern_module(pattern).eval()
    full = model.pattern_module(Pattern(model.modalities)).eval()
    with torch.no_grad():
        got = branch(*pattern_inputs(collate([s.restricted(pattern) for s in samples]), branch))
        literal = full(*pattern_inputs(collate(with_placeholders(samples, pattern, model.info)), full))
    for g, e in zip(got, literal):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=0)
    absent = set(model.modalities) - pattern
    # Nothing of the absent encoders or heads is in the branch, and their constant is not trivial.
    assert set(branch.encoders) == set(pattern) and set(branch.heads) == set(pattern)
    assert {id(p) for p in branch.parameters()}.isdisjoint(
        {id(p) for m in absent for p in [*model.encoders[m].parameters(), *model.heads[m].parameters()]})
    if absent:
        assert float(branch.absent_logits.abs().max()) > 1e-2


def test_aware_branch_averages_the_present_modalities_only() -> None:
    placeholder, collate = model_3(False)
    aware, _ = model_3(True)
    samples = [s.restricted({"image"}) for s in make_samples(placeholder.modalities, 4, seed=2)]
    b_aware, b_ph = aware.pattern_module(Pattern(["image"])), placeholder.pattern_module(Pattern(["image"]))
    with torch.no_grad():
        got = b_aware(*pattern_inputs(collate(samples), b_aware))[0]
        uni = UnimodalClassifier(aware.encoders["image"], "image", 3, "single-label").eval()
        uni.head = aware.heads["image"]
        expected = uni(collate(samples))["logits"]
        other = b_ph(*pattern_inputs(collate(samples), b_ph))[0]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert float((got - other).abs().max()) > 1e-3  # the two variants are different functions
    both = aware.pattern_module(Pattern(["audio", "image"]))
    two = [s.restricted({"audio", "image"}) for s in make_samples(aware.modalities, 4, seed=2)]
    with torch.no_grad():
        logits = both(*pattern_inputs(collate(two), both))[0]
        parts = [aware.unimodal(m, collate(two).modalities[m].inputs)[0] for m in ("audio", "image")]
    torch.testing.assert_close(logits, (parts[0] + parts[1]) / 2, atol=1e-6, rtol=0)


def test_fusion_by_hand_with_constant_heads() -> None:
    info = DatasetInfo.from_dataset(make_dataset(3))
    model = build_method("ume-mma", info, make_encoders(info)).eval()
    biases = {"audio": [1.0, 2.0, 3.0], "image": [3.0, 0.0, 0.0], "text": [0.0, 3.0, 0.0]}
    with torch.no_grad():
        for m, b in biases.items():
            model.heads[m].weight.zero_()
            model.heads[m].bias.copy_(torch.tensor(b))
    batch = Collate(info.modalities, info.task, info.num_classes)(
        [s.restricted({"audio"}) for s in make_samples(model.modalities, 2)])
    audio_only = model.pattern_module(Pattern(["audio"]))
    with torch.no_grad():
        logits = audio_only(*pattern_inputs(batch, audio_only))[0]
        model.config.aware = True
        aware = model.pattern_module(Pattern(["audio"]))
        aware_logits = aware(*pattern_inputs(batch, aware))[0]
        model.config.aware = False
    # (1/3) * ([1, 2, 3] + [3, 0, 0] + [0, 3, 0]) and, aware, [1, 2, 3] alone.
    torch.testing.assert_close(logits, torch.tensor([[4 / 3, 5 / 3, 1.0]] * 2), atol=1e-6, rtol=0)
    torch.testing.assert_close(aware_logits, torch.tensor([[1.0, 2.0, 3.0]] * 2), atol=1e-6, rtol=0)


def test_augmentation_two_modalities_frequencies() -> None:
    g = torch.Generator().manual_seed(0)
    keep = sample_augmentation(torch.ones(10_000, 2, dtype=torch.bool), 0.3, g)
    assert keep.any(dim=1).all(), "a draw dropped both modalities"
    freq = {k: float((keep == torch.tensor(v)).all(1).float().mean()) for k, v in
            {"drop first": [False, True], "drop second": [True, False], "complete": [True, True]}.items()}
    assert abs(freq["drop first"] - 0.3) < 0.02 and abs(freq["drop second"] - 0.3) < 0.02, freq
    assert abs(freq["complete"] - 0.4) < 0.02, freq
    single = torch.tensor([[True, False], [False, True]]).repeat(500, 1)  # missing in the data: kept as they are
    assert torch.equal(sample_augmentation(single, 0.3, g), single)


def test_augmentation_three_modalities_by_hand() -> None:
    g = torch.Generator().manual_seed(1)
    keep = sample_augmentation(torch.ones(10_000, 3, dtype=torch.bool), 0.3, g)
    assert keep.any(dim=1).all()
    # Independent drops with p = 0.3, conditioned on keeping something (1 - 0.3^3 = 0.973):
    # one kept 0.3^2 * 0.7 / 0.973 = 0.0647, two kept 0.3 * 0.7^2 / 0.973 = 0.1511, all 0.7^3 / 0.973 = 0.3525.
    by_count = {n: float((keep.sum(1) == n).float().mean()) for n in (1, 2, 3)}
    assert abs(by_count[1] - 3 * 0.0647) < 0.02 and abs(by_count[2] - 3 * 0.1511) < 0.02, by_count
    assert abs(by_count[3] - 0.3525) < 0.02, by_count
    assert abs(float((keep == torch.tensor([True, False, False])).all(1).float().mean()) - 0.0647) < 0.02
    two = torch.tensor([[True, True, False]]).repeat(2000, 1)
    kept = sample_augmentation(two, 0.3, g)
    assert not (kept & ~two).any() and kept.any(1).all()


def test_training_forward_feeds_the_placeholder_to_dropped_and_missing_rows() -> None:
    info = DatasetInfo.from_dataset(make_dataset(2))
    model = build_method("ume-mma", info, make_encoders(info), {"drop_prob": 0.0})
    for mod in model.modules():  # no dropout noise: train mode is then a deterministic function
        if isinstance(mod, torch.nn.Dropout):
            mod.p = 0.0
    samples = make_samples(model.modalities, 4)
    batch = Collate(info.modalities, info.task, info.num_classes)([samples[0].restricted({"image"}), *samples[1:]])
    trained = model.train()(batch)["logits"]
    with torch.no_grad():
        c_audio = model.placeholder_constants("audio")[0]
        image = model.unimodal("image", {k: v[:1] for k, v in batch.modalities["image"].inputs.items()})[0]
    torch.testing.assert_close(trained[0:1].detach(), (image + c_audio) / 2, atol=1e-5, rtol=0)


def test_phase2_starts_from_the_unimodal_heads() -> None:
    data = make_dataset(2)
    info = DatasetInfo.from_dataset(data)
    encoders = make_encoders(info)
    heads = heads_for(info, encoders)
    model = get_method("ume-mma").build(info, encoders, heads=heads).eval()
    collate = Collate(info.modalities, info.task, info.num_classes)
    samples = data.split("test")[:5]
    unimodal = {}
    for m in model.modalities:  # phase 1's models: the same encoder and head, built by the unimodal recipe
        uni = UnimodalClassifier(encoders[m], m, info.num_classes, info.task)
        uni.head.load_state_dict(heads[m].state_dict())
        unimodal[m] = uni.eval()
    for m, other in (("audio", "image"), ("image", "audio")):
        branch = model.pattern_module(Pattern([m]))
        only = [s.restricted({m}) for s in samples]
        spec = info.modalities[other].preprocess
        blank = Sample("blank", {other: placeholder_raw(spec)}, 0)
        with torch.no_grad():
            got = branch(*pattern_inputs(collate(only), branch))[0]
            expected = unimodal[m](collate(only))["logits"]
            constant = unimodal[other](collate([blank]))["logits"]
        torch.testing.assert_close(got, (expected + constant) / 2, atol=1e-5, rtol=0)
        model.config.aware = True
        aware = model.pattern_module(Pattern([m]))
        with torch.no_grad():
            torch.testing.assert_close(aware(*pattern_inputs(collate(only), aware))[0], expected, atol=1e-6, rtol=0)
        model.config.aware = False
    bad = {**heads, "image": torch.nn.Linear(int(encoders["image"].hidden_size), 5)}
    with pytest.raises(ValueError, match="unimodal head of 'image'"):
        get_method("ume-mma").build(info, make_encoders(info), heads=bad)


def test_options_optimizer_and_adaptation() -> None:
    info = DatasetInfo.from_dataset(make_dataset(2))
    model = build_method("ume-mma", info, make_encoders(info))
    assert model.encoder_adaptation == "full"
    # A frame encoder's BERT word embeddings are never used: frozen instead of an idle "learnable" weight.
    # the one weight no input reaches (the audio encoder's BERT word embeddings) stays frozen (adapt_encoders)
    assert [n for n, p in model.encoders["audio"].named_parameters() if not p.requires_grad] == [
        "backbone.embeddings.word_embeddings.weight"]
    opt = model.make_optimizer([p for p in model.parameters() if p.requires_grad], LoopConfig(lr=1e-3))
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)
    frozen = build_method("ume-mma", info, make_encoders(info), {"freeze_encoders": True})
    assert frozen.encoder_adaptation == "frozen"
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"heads"}
    with pytest.raises(ValueError, match="at most 0.5"):
        build_method("ume-mma", info, make_encoders(info), {"drop_prob": 0.6})


def test_placeholder_recipe_is_one_definition() -> None:
    image = {"type": "image", "size": [4, 6], "channels": 3}
    assert placeholder_recipe(image) == {"kind": "zeros", "shape": [4, 6, 3], "dtype": "float32"}
    assert placeholder_raw({"type": "text", "max_length": 8}) == ""
    audio = {"type": "audio", "input": "features", "n_features": 5, "max_frames": 7}
    assert placeholder_raw(audio).shape == (7, 5) and not placeholder_raw(audio).any()
    assert np.array_equal(raw_from_recipe(json.loads(json.dumps(placeholder_recipe(image)))), np.zeros((4, 6, 3)))
    # What the model feeds for a missing image is the runtime's preprocessing of that raw placeholder.
    model, _ = model_3()
    spec = model.info.modalities["image"].preprocess
    expected = make_preprocessor(spec)([placeholder_raw(spec)])["pixel_values"]
    assert np.array_equal(model.placeholders["image"].pixel_values.numpy(), expected)
    with pytest.raises(ValueError, match="no placeholder for modality type"):
        placeholder_recipe({"type": "lidar"})


EXPORT_CASES = [(False, p.key) for p in all_patterns(["audio", "image", "text"])] + [(True, "audio+text")]


@pytest.mark.parametrize(("aware", "key"), EXPORT_CASES, ids=[f"{'aware' if a else 'placeholder'}-{k}" for a, k in EXPORT_CASES])
def test_three_modality_patterns_export_and_match_onnxruntime(aware: bool, key: str, tmp_path: Path) -> None:
    from export.onnx import export_pattern, sequence_axes
    from export.validate import ort_session, run_graph

    model, collate = model_3(aware)
    pattern = Pattern.from_key(key)
    branch = model.pattern_module(pattern).eval()
    rows = [s.restricted(pattern) for s in make_samples(model.modalities, 4, seed=7)]
    path = tmp_path / f"{key}.onnx"
    export_pattern(branch, pattern_inputs(collate(rows), branch), path, dynamic_seq=sequence_axes(model.info.modalities))
    other = [s.restricted(pattern) for s in make_samples(model.modalities, 7, seed=3)]  # another batch size
    args = pattern_inputs(collate(other), branch)
    with torch.no_grad():
        expected = [t.numpy() for t in branch(*args)]
    got = run_graph(ort_session(path), [{n: a.numpy() for n, a in zip(branch.input_names, args)}])
    for name, e in zip(branch.output_names, expected):
        assert got[name].shape == e.shape
        assert float(np.abs(got[name] - e).max()) < 1e-4, (key, name)


def test_different_widths_concatenate_the_embedding() -> None:
    from train.encoders import build_encoder, default_encoder_config

    info = DatasetInfo.from_dataset(make_dataset(2))
    encoders = make_encoders(info)
    encoders["audio"] = build_encoder("audio", default_encoder_config(
        "audio", info.modalities["audio"].preprocess, "tiny", hidden_size=48))
    model = build_method("ume-mma", info, encoders).eval()
    collate = Collate(info.modalities, info.task, info.num_classes)
    width = 48 + int(encoders["image"].hidden_size)
    for pattern in all_patterns(model.modalities):
        batch = collate([s.restricted(pattern) for s in make_samples(model.modalities, 3)])
        branch = model.pattern_module(pattern)
        with torch.no_grad():
            logits, _, fused = branch(*pattern_inputs(batch, branch))
            out = model(batch)
        assert fused.shape == (3, width)
        torch.testing.assert_close(logits, out["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(fused, out["embedding"], atol=1e-5, rtol=0)


def test_train_method_from_saved_unimodal_runs(tmp_path: Path) -> None:
    from train.recipes.method import TrainConfig, collate_for, train_method
    from train.engine.evaluate import evaluate_all_patterns
    from train.runs import load_run

    data = make_dataset(2)
    info = DatasetInfo.from_dataset(data)
    encoders = make_encoders(info, seed=3)
    for m, enc in encoders.items():  # what `mmedge train unimodal` leaves: encoder, head, modality.json
        enc.save_pretrained(tmp_path / "uni" / m / "encoder")
        head = torch.nn.Linear(int(enc.hidden_size), info.num_classes)
        save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(tmp_path / "uni" / m / "head.safetensors"))
        spec = info.modalities[m]
        (tmp_path / "uni" / m / "modality.json").write_text(json.dumps({"name": m, "type": spec.type,
                                                                         "preprocess": spec.preprocess}))
    cfg = TrainConfig(method="ume-mma", dataset="tiny2", out=tmp_path / "run", unimodal_dir=tmp_path / "uni",
                      epochs=1, warmup_epochs=0, batch_size=8, progress=False, method_config={"aware": True})
    metrics = train_method(cfg, dataset=data)
    assert metrics["encoder_adaptation"] == "full" and list(metrics["test_by_pattern"]) == ["audio+image", "audio", "image"]
    model = load_run(tmp_path / "run")
    assert model.config.aware is True
    assert evaluate_all_patterns(model, data.split("test"), collate_for(model)) == metrics["test_by_pattern"]
