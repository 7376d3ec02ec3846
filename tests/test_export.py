"""Every registered method x every pattern: export (dynamo), onnx.checker, ORT vs torch; graph contents."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
import pytest
import torch

from export.onnx import export_pattern, sequence_axes
from export.validate import ParityError, Tolerance, check_parity, compare_outputs, ort_session, run_graph
from export_fixtures import tiny
from runtime.patterns import Pattern, all_patterns
from tiny_multimodal import make_samples, specs
from train.methods import available_methods, pattern_inputs
from train.recipes.method import collate_for

torch.set_num_threads(1)
CASES = [(m, p.key) for m in available_methods() for p in all_patterns(sorted(specs(2)))]


def _inputs(model, pattern: Pattern, rows: int, seed: int) -> tuple:
    samples = [s.restricted(pattern) for s in make_samples(model.modalities, rows, seed=seed)]
    return pattern_inputs(collate_for(model)(samples), model.pattern_module(pattern))


def _fingerprint(values: np.ndarray) -> bytes:
    # Sorted values survive the transposes and reshapes an exporter applies to a weight.
    return np.sort(np.asarray(values, np.float32).ravel()).round(6).tobytes()


@pytest.mark.parametrize(("method", "key"), CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_pattern_exports_and_matches_torch_at_another_batch(method: str, key: str, tmp_path) -> None:
    model, _ = tiny(method, 2)
    pattern = Pattern.from_key(key)
    branch = model.pattern_module(pattern).eval()
    path = tmp_path / f"{key}.onnx"
    info = export_pattern(branch, _inputs(model, pattern, 4, 7), path, dynamic_seq=sequence_axes(model.info.modalities))
    assert not list(tmp_path.glob("*.data")), "no external-data sidecar"
    onnx.checker.check_model(str(path), full_check=True)
    assert [i.name for i in info.inputs] == branch.input_names
    assert [o.name for o in info.outputs] == ["logits", "probabilities", "fused_embedding"]
    for spec in info.inputs:
        assert spec.shape[0] == "batch"
        if spec.name.startswith("audio."):
            assert spec.shape[1] == "audio_seq"
    args = _inputs(model, pattern, 9, 3)  # other batch size (and other padded lengths)
    with torch.no_grad():
        expected = {n: v.numpy() for n, v in zip(branch.output_names, branch(*args))}
    got = run_graph(ort_session(path), [{n: a.numpy() for n, a in zip(branch.input_names, args)}])
    result = compare_outputs(key, "fp32", expected, got, labels=np.arange(9) % 3)
    assert result.passed, result.failures
    assert got["logits"].shape == (9, 3) and result.top1_agreement == 1.0 and result.cosine_min > 0.9999

    # Nothing of an absent modality is in the graph; the present encoders are.
    graph = onnx.load(str(path))
    inits = {_fingerprint(numpy_helper.to_array(i)) for i in graph.graph.initializer if np.prod(i.dims) >= 32}
    for m in model.modalities:
        weights = [_fingerprint(p.detach().numpy()) for p in model.encoders[m].parameters()
                   if p.numel() >= 32 and len(np.unique(p.detach().numpy())) > 16]  # not LayerNorm ones/zeros
        found = sum(w in inits for w in weights)
        if m in pattern:
            assert found > 0, f"present encoder {m} not recognised in the graph"
        else:
            assert found == 0, f"{found} weights of absent encoder {m} are in the {key} graph"


def test_parity_error_lists_every_failure() -> None:
    ref = {"logits": np.array([[1.0, 0.0], [0.0, 1.0]]), "probabilities": np.array([[0.7, 0.3], [0.3, 0.7]]),
           "fused_embedding": np.ones((2, 4))}
    bad = {"logits": ref["logits"] + 0.5, "probabilities": ref["probabilities"][:, ::-1],
           "fused_embedding": -np.ones((2, 4))}
    results = [compare_outputs(k, "fp32", ref, bad, tolerance=Tolerance(max_abs={"logits": 1e-4}, min_top1=0.99,
                                                                     min_cosine=0.9)) for k in ("audio", "image")]
    with pytest.raises(ParityError) as err:
        check_parity(results)
    assert len(err.value.failures) == 6
    text = str(err.value)
    assert "pattern audio [fp32] output 'logits': max_abs = 0.5" in text and "top1_agreement = 0" in text
    assert "fused_embedding" in text and "image" in text
