"""Export only the patterns a deployment can meet; optional fallback to the best exported sub-pattern."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export.build import BuildConfig, build_bundle
from export.select import PatternSelectionError, select_patterns
from export_fixtures import tiny
from runtime.errors import PatternNotAvailable
from runtime.manifest import load_manifest
from runtime.session import Runtime

torch.set_num_threads(1)
QUICK = dict(progress=False, exporter="legacy", placeholders=False, val_samples=12, calib_samples=8)
MODS = ["audio", "image", "text"]


def test_filters_combine_and_report_what_is_left_out() -> None:
    keep, out = select_patterns(MODS, min_modalities=2)
    assert [p.key for p in keep] == ["audio+image+text", "audio+image", "audio+text", "image+text"]
    assert out == ["audio", "image", "text"]
    keep, out = select_patterns(MODS, require="image")
    assert [p.key for p in keep] == ["audio+image+text", "audio+image", "image+text", "image"]
    keep, _ = select_patterns(MODS, patterns="image+audio, text", require=())
    assert [p.key for p in keep] == ["audio+image", "text"]  # any order of modalities in a key
    keep, _ = select_patterns(MODS, patterns=["audio+image", "image"], min_modalities=2)
    assert [p.key for p in keep] == ["audio+image"]


@pytest.mark.parametrize("kwargs", [dict(patterns="depth"), dict(require=["lidar"]), dict(min_modalities=4),
                                    dict(patterns="text", require="image")])
def test_bad_filters_say_what_exists(kwargs: dict) -> None:
    with pytest.raises(PatternSelectionError, match="audio"):
        select_patterns(MODS, **kwargs)


@pytest.fixture(scope="module")
def image_only_bundle(tmp_path_factory) -> Path:
    model, data = tiny("cmpt", 2)
    cfg = BuildConfig(out=tmp_path_factory.mktemp("s") / "b", require=("image",), **QUICK)
    return build_bundle(cfg, model=model, dataset=data)


def _sample() -> dict:
    rng = np.random.default_rng(0)
    return {"image": rng.normal(0, 0.3, (8, 8)).astype(np.float32), "audio": rng.normal(0, 1, (4, 5)).astype(np.float32)}


def test_manifest_lists_excluded_patterns_and_fallback_is_off_by_default(image_only_bundle: Path) -> None:
    m = load_manifest(image_only_bundle)
    assert sorted(m.patterns("fp32")) == ["audio+image", "image"] and m.excluded_patterns == ["audio"]
    assert [t.name for t in m.modalities["audio"].inputs] == ["audio.values", "audio.mask"]
    rt = Runtime.load(image_only_bundle, intra_op_threads=1)
    with pytest.raises(PatternNotAvailable, match="fallback"):
        rt.predict({"image": None, "audio": _sample()["audio"]})


def test_fallback_runs_the_best_sub_pattern_and_says_what_it_ignored(image_only_bundle: Path, tmp_path: Path) -> None:
    model, data = tiny("cmpt", 2)
    only = build_bundle(BuildConfig(out=tmp_path / "single", patterns=("audio", "image"), **QUICK),
                        model=model, dataset=data)
    rt = Runtime.load(only, intra_op_threads=1, fallback=True)
    s = _sample()
    pred = rt.predict(s)  # audio+image is missing: a tie between audio and image, broken by name order
    assert pred.pattern == "audio" and pred.ignored == ("image",)
    rt_image_first = Runtime.load(only, intra_op_threads=1, fallback=["image"])
    pred2 = rt_image_first.predict(s)
    assert pred2.pattern == "image" and pred2.ignored == ("audio",)
    direct = rt.predict({"image": s["image"], "audio": None})
    np.testing.assert_allclose(pred2.probabilities, direct.probabilities, atol=1e-6)
    assert direct.ignored == ()
    batch = rt_image_first.predict_batch([s, {"image": s["image"], "audio": None}])
    assert [(p.pattern, p.ignored) for p in batch] == [("image", ("audio",)), ("image", ())]
    # a present set with no exported sub-pattern still raises
    rt3 = Runtime.load(image_only_bundle, intra_op_threads=1, fallback=True)
    with pytest.raises(PatternNotAvailable):
        rt3.predict({"image": None, "audio": s["audio"]})


def test_fallback_table_by_hand() -> None:
    from runtime.patterns import fallback_table

    exported = ["a", "b", "a+c"]
    table = fallback_table(exported, ["c", "b", "a"])
    assert table == {
        frozenset("ab"): ("a", ("b",)),  # two single-modality subs: the tie keeps "a" (name order)
        frozenset("bc"): ("b", ("c",)),
        frozenset("abc"): ("a+c", ("b",)),  # drops one modality, not two
    }  # {c} has no exported sub-pattern; a, b, a+c are exported themselves
    assert fallback_table(exported, "abc", order=["b"])[frozenset("ab")] == ("b", ("a",))
