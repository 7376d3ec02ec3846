"""`mmedge bench` on a tiny bundle: statistics, JSON completeness, Markdown/PNG, (c) skip and run.

Speed targets are measured by the benchmark, never asserted here (2 shared cores).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from export.build import BuildConfig, build_bundle
from export_fixtures import save_run, tiny
from runtime.bench import BenchConfig, Inputs, latency_stats, run_benchmark, time_interleaved
from runtime.bench_cli import main as bench_main
from runtime.manifest import load_manifest


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    model, data = tiny("cmpt", 2)
    cfg = BuildConfig(method="cmpt", precisions=("fp32", "int8"), out=tmp_path_factory.mktemp("b") / "tiny2",
                      progress=False, exporter="legacy", placeholders=True, val_samples=8, calib_samples=4,
                      allow_degraded=True)  # untrained tiny model: INT8 parity is not the point here
    return build_bundle(cfg, model=model, dataset=data)


@pytest.fixture(scope="module")
def cli_run(bundle: Path, tmp_path_factory) -> tuple[dict, Path, str]:
    out = tmp_path_factory.mktemp("bench")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = bench_main(["--bundle", str(bundle), "--runs", "5", "--warmup", "1", "--batch-sizes", "1,2",
                         "--out", str(out)])
    assert rc == 0
    return json.loads((out / "bench.json").read_text()), out, buf.getvalue()


def test_latency_stats_percentiles_from_known_timings() -> None:
    st = latency_stats([i * 1e-3 for i in range(100, 0, -1)])  # 1..100 ms, shuffled order must not matter
    assert st["n"] == 100
    assert st["p50_ms"] == pytest.approx(50.5) and st["p90_ms"] == pytest.approx(90.1)
    assert st["p99_ms"] == pytest.approx(99.01) and st["min_ms"] == pytest.approx(1.0)
    assert st["max_ms"] == pytest.approx(100.0) and st["mean_ms"] == pytest.approx(50.5)
    assert st["std_ms"] == pytest.approx(np.std(np.arange(1, 101), ddof=1))
    one = latency_stats([0.002])
    assert one["p50_ms"] == one["p99_ms"] == pytest.approx(2.0) and one["std_ms"] == 0.0
    with pytest.raises(ValueError):
        latency_stats([])


def test_interleaved_timing_calls_each_function_alike() -> None:
    calls = {"a": 0, "b": 0}
    ta, tb = time_interleaved([lambda: calls.__setitem__("a", calls["a"] + 1),
                               lambda: calls.__setitem__("b", calls["b"] + 1)], warmup=2, runs=7)
    assert len(ta) == len(tb) == 7 and calls == {"a": 9, "b": 9}


def test_synthetic_inputs_match_every_graph_input(bundle: Path) -> None:
    m = load_manifest(bundle)
    inputs = Inputs(m, bundle)
    for g in [*m.graphs, *m.baselines]:
        feeds = inputs.feeds(g, 3)
        assert [s.name for s in g.inputs] == list(feeds)
        for s in g.inputs:
            assert feeds[s.name].dtype == np.dtype(s.dtype) and feeds[s.name].shape[0] == 3
    audio = inputs.feeds(m.graph("audio", "fp32"), 1)["audio.values"]
    assert audio.shape[1] == m.modalities["audio"].preprocess["max_frames"]  # the documented typical length


def test_json_has_every_cell_and_ratio_section(bundle: Path, cli_run: tuple[dict, Path, str]) -> None:
    rec, _, _ = cli_run
    m = load_manifest(bundle)
    cells = {(r["pattern"], r["precision"], r["provider"]) for r in rec["results"]}
    assert cells == {(g.pattern, g.precision, "cpu") for g in m.graphs}
    for r in rec["results"]:
        assert set(r["batches"]) == {"1", "2"} and r["session_create_s"] > 0 and r["peak_rss_mb"] > 0
        for st in r["batches"].values():
            assert st["n"] == 5 and st["min_ms"] <= st["p50_ms"] <= st["p90_ms"] <= st["p99_ms"] <= st["max_ms"]
            assert st["throughput_per_s"] > 0
    for prov in ("cuda", "tensorrt-ep", "tensorrt"):  # no GPU here: skipped, with the reason
        assert rec["providers"][prov]["status"] == "skipped" and rec["providers"][prov]["reason"]
    a = rec["ratios"]["placeholder_speedup"]
    assert {e["pattern"] for e in a["entries"]} == {"audio", "image"}
    assert all(e["ratio"] > 0 and e["baseline_p50_ms"] > 0 and isinstance(e["met"], bool) for e in a["entries"])
    b = rec["ratios"]["runtime_overhead"]
    assert {e["pattern"] for e in b["entries"]} == set(m.patterns("fp32")) and b["note"]
    assert all(e["predict"]["p50_ms"] > 0 and e["session_run"]["p50_ms"] > 0 for e in b["entries"])
    assert "--run" in rec["ratios"]["torch_speedup"]["skipped"]  # (c) skipped with a note when no run is given
    d = rec["ratios"]["precision_speedup"]["entries"]
    assert {(e["pattern"], e["precision"], e["batch"]) for e in d} == {(p, "int8", b) for p in m.patterns("fp32")
                                                                        for b in (1, 2)}
    assert all(e["paired"] == (e["batch"] == 1) and e["ratio"] > 0 for e in d)  # batch 1 timed alternately
    cold = rec["cold_start"]
    assert "error" not in cold, cold
    assert cold["total_s"] > 0 and cold["peak_rss_mb"] > 0 and isinstance(cold["met"], bool)
    # the child's own high-water mark, not the forking (torch-laden) test process's ru_maxrss
    assert cold["peak_rss_mb"] < rec["peak_rss_mb"]
    mach = rec["machine"]
    assert mach["cpu_count"] and mach["onnxruntime"] and mach["threads"]["ort_intra_op"] == 1


def test_markdown_and_png_are_written(cli_run: tuple[dict, Path, str]) -> None:
    rec, out, printed = cli_run
    md = (out / "bench.md").read_text()
    assert "| pattern | precision | provider | p50 | p90 | p99 |" in md and "## Targets" in md
    for tag in ("placeholder_speedup", "runtime_overhead", "torch_speedup", "cold start"):
        assert tag in md
    assert "| audio+image | int8 | cpu |" in md and "full+placeholders (image present)" in md
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Targets" in printed and str(out / "bench.json") in printed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # atomic writes left no temp files


def test_torch_ratio_runs_with_a_training_run(bundle: Path, tmp_path: Path) -> None:
    model, _ = tiny("cmpt", 2)
    run = save_run(model, tmp_path / "run", "tiny2")
    cfg = BenchConfig(bundle=bundle, runs=3, warmup=1, batch_sizes=(1,), precisions=("fp32",), providers=("cpu",),
                      run_dir=run, cold_start=False)
    c = run_benchmark(cfg)["ratios"]["torch_speedup"]
    assert "skipped" not in c, c
    assert {e["pattern"] for e in c["entries"]} == {"audio", "audio+image", "image"}
    assert all(e["speedup"] > 0 and e["torch"]["p50_ms"] > 0 for e in c["entries"])


def test_bad_arguments_exit_2(bundle: Path, tmp_path: Path, capsys) -> None:
    assert bench_main(["--bundle", str(bundle), "--runs", "0"]) == 2
    assert "--runs" in capsys.readouterr().err
    assert bench_main(["--bundle", str(bundle), "--providers", "cpu,gpu"]) == 2
    assert "unknown provider" in capsys.readouterr().err
    assert bench_main(["--bundle", str(bundle), "--precisions", "fp16", "--out", str(tmp_path)]) == 2
    assert "has no 'fp16' graphs; it has fp32" in capsys.readouterr().err
    assert bench_main(["--bundle", str(tmp_path / "nope"), "--out", str(tmp_path)]) == 2
    assert "manifest.json" in capsys.readouterr().err


def test_synthetic_raw_covers_every_modality_type_at_the_typical_length() -> None:
    from runtime.bench_inputs import synthetic_raw
    from runtime.preprocess import make_preprocessor

    wave = {"type": "audio", "input": "waveform", "sample_rate": 8000, "max_frames": 20,
            "mfcc": {"n_mfcc": 13, "n_fft": 256, "hop_length": 128, "n_mels": 26}}
    assert make_preprocessor(wave)([synthetic_raw(wave)])["values"].shape == (1, 20, 13)
    ts = {"type": "timeseries", "n_channels": 4}  # no max_frames: the one default, as for encoders and placeholders
    from runtime.modality_spec import DEFAULT_MAX_FRAMES
    assert make_preprocessor(ts)([synthetic_raw(ts)])["values"].shape == (1, DEFAULT_MAX_FRAMES, 4)
    img = {"type": "image", "size": [16, 12], "channels": 3}
    assert make_preprocessor(img)([synthetic_raw(img)])["pixel_values"].shape == (1, 3, 16, 12)
    text = synthetic_raw({"type": "text", "max_length": 16, "tokenizer_file": "unused"})
    assert isinstance(text, str) and len(text.split()) >= 16  # truncated to max_length by the tokenizer
    np.testing.assert_array_equal(synthetic_raw(img), synthetic_raw(img))  # deterministic


def test_sequence_length_times_the_asked_number_of_frames_and_tokens(bundle: Path) -> None:
    from runtime.bench_cli import build_parser
    from runtime.bench_inputs import raw_of_length
    from runtime.errors import InvalidArgument, UnknownModality
    from runtime.preprocess import make_preprocessor
    from train.data.cache import default_tokenizer_file

    manifest = load_manifest(bundle)
    inputs = Inputs(manifest, bundle, {"audio": 3})  # the tiny audio spec's maximum is 6 frames
    assert inputs.raw["audio"].shape == (3, 5)
    assert inputs.feeds(manifest.graph("audio", "fp32"), 2)["audio.values"].shape == (2, 3, 5)
    assert inputs.describe()["audio"]["asked_length"] == 3
    for bad, err in (({"audio": 7}, InvalidArgument), ({"audio": 0}, InvalidArgument),
                     ({"image": 4}, InvalidArgument), ({"depth": 4}, UnknownModality)):
        with pytest.raises(err):
            Inputs(manifest, bundle, bad)

    # Text: the packaged MiniLM tokenizer adds [CLS] and [SEP], so 9 tokens are 7 filler words.
    text = {"type": "text", "tokenizer_file": str(default_tokenizer_file()), "max_length": 24}
    pre = make_preprocessor(text)
    raw = raw_of_length("question", text, pre, 9)
    assert len(raw.split()) == 7 and pre([raw])["input_ids"].shape == (1, 9)
    with pytest.raises(InvalidArgument, match="2 special tokens"):
        raw_of_length("question", text, pre, 1)
    with pytest.raises(InvalidArgument, match="pads every input"):
        raw_of_length("question", {**text, "pad": "max_length"}, pre, 9)
    # A waveform: the prefix of the synthetic clip whose MFCC has exactly the asked frames.
    wave = {"type": "audio", "input": "waveform", "sample_rate": 8000, "max_frames": 20,
            "mfcc": {"n_mfcc": 13, "n_fft": 256, "hop_length": 128, "n_mels": 26}}
    wpre = make_preprocessor(wave)
    assert wpre([raw_of_length("audio", wave, wpre, 5)])["values"].shape == (1, 5, 13)

    assert build_parser().parse_args(["--bundle", "b", "--sequence-length", "question=9"]).sequence_length == [
        ("question", 9)]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--bundle", "b", "--sequence-length", "question"])
