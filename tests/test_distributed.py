"""Training on two CPU processes (torchrun + gloo) against one process at the same global batch.

Marked ``distributed``: ``make test ARGS='-m "not distributed"'`` skips it explicitly; it is
never skipped silently (torch.distributed with gloo is part of every torch build we pin).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sensor_fixture import write_sensor_dataset

pytestmark = pytest.mark.distributed
# --standalone: a local rendezvous on a free port, so parallel test runs never collide.
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "train"]
N_TRAIN, BATCH = 48, 8  # 2 processes x 8 = a global batch of 16; 48 = 3 global batches, none padded
EPOCHS = 10


def _env() -> dict[str, str]:
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "TQDM_DISABLE": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, f"{cmd}\nSTDOUT:\n{out.stdout[-3000:]}\nSTDERR:\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("dist")
    data = write_sensor_dataset(root / "watch", n_train=N_TRAIN, n_test=24, frames=30, with_val=True)
    two, one = root / "two", root / "one"
    logs: dict[str, subprocess.CompletedProcess] = {}
    for m, launcher in (("accel", TORCHRUN), ("gyro", [sys.executable, "-m", "train"])):  # one of each suffices
        logs[f"unimodal-{m}"] = _run(launcher + ["unimodal", "--dataset", str(data), "--modality", m, "--size", "tiny",
                                                 "--epochs", "30", "--batch-size", str(BATCH), "--min-steps", "0", "--runs-dir",
                                                 str(two)],
                                     root)
    common = ["run", "--method", "cmpt", "--dataset", str(data), "--epochs", str(EPOCHS), "--warmup-epochs", "1",
              "--min-steps", "0",
              "--unimodal-dir", str(two / "watch" / "unimodal")]
    logs["run"] = _run(TORCHRUN + common + ["--batch-size", str(BATCH), "--runs-dir", str(two)], root)
    logs["one"] = _run([sys.executable, "-m", "train"] + common + ["--batch-size", str(2 * BATCH), "--runs-dir",
                                                                   str(one)], root)
    return {"root": root, "two": two / "watch", "one": one / "watch", "logs": logs, "data": data}


def test_each_rank_sees_half_the_batches_and_the_schedule_ends_at_its_last_step(runs: dict) -> None:
    metrics = json.loads((runs["two"] / "cmpt" / "metrics.json").read_text())
    single = json.loads((runs["one"] / "cmpt" / "metrics.json").read_text())
    steps = metrics["optimizer_steps"]
    assert steps["num_processes"] == 2 and single["optimizer_steps"]["num_processes"] == 1
    # 48 samples / (8 per batch x 2 ranks) = 3 batches per rank per epoch, as many as one process at 16.
    assert steps["per_epoch"] == 3 == single["optimizer_steps"]["per_epoch"]
    assert [h["batches"] for h in metrics["history"]] == [3] * EPOCHS
    lrs = [(h["lr_first"], h["lr"]) for h in metrics["history"]]
    assert lrs == [(h["lr_first"], h["lr"]) for h in single["history"]]  # one schedule for both
    assert all(first > 0 for first, _ in lrs)  # no epoch trains at lr 0 ...
    assert lrs[-1][1] == 0.0 and lrs[-2][1] > 0  # ... and the decay reaches 0 at the very last step


def test_one_writer_and_one_printer(runs: dict) -> None:
    for name in ("unimodal-accel", "unimodal-gyro"):
        log = runs["logs"][name]
        assert log.stdout.count("encoder saved to") == 1, log.stdout
        assert log.stderr.count("Writing model shards") <= 1  # save_pretrained ran on one rank only
    run = runs["logs"]["run"]
    assert run.stdout.count("test metrics per available-modality pattern") == 1, run.stdout
    leftovers = [p.name for p in runs["two"].rglob(".*") if p.is_dir()]
    assert leftovers == [], f"temporary folders left behind: {leftovers}"


def test_the_two_process_run_loads_evaluates_and_resumes(runs: dict) -> None:
    from train.data.registry import load_dataset
    from train.engine.evaluate import evaluate_all_patterns
    from train.recipes.method import collate_for
    from train.runs import load_run

    run_dir = runs["two"] / "cmpt"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    model = load_run(run_dir)
    test = load_dataset(str(runs["data"])).split("test")
    assert evaluate_all_patterns(model, test, collate_for(model)) == metrics["test_by_pattern"]
    # Resume on one process after two: nothing left to train, the same numbers come back.
    again = _run([sys.executable, "-m", "train", "run", "--method", "cmpt", "--dataset", str(runs["data"]),
                  "--epochs", str(EPOCHS), "--warmup-epochs", "1", "--min-steps", "0", "--batch-size", str(BATCH),
                  "--runs-dir",
                  str(runs["root"] / "two"), "--unimodal-dir", str(runs["two"] / "unimodal")], runs["root"])
    resumed = json.loads((run_dir / "metrics.json").read_text())
    assert resumed["resumed_from_epoch"] == EPOCHS - 1 and resumed["test_by_pattern"] == metrics["test_by_pattern"], again.stdout


def test_two_processes_match_one_process_at_the_same_global_batch(runs: dict) -> None:
    # Same samples in every global step (rank r takes the r-th half of the single process's batch of 16)
    # and a gradient averaged over 16 either way; only the dropout draws differ (each rank draws its own
    # masks), so the runs are not bit-identical. Tolerance: 3 of the 24 test samples per pattern. Both
    # must have learned something: the best pattern at >= 0.5 against a chance level of 0.25.
    two = json.loads((runs["two"] / "cmpt" / "metrics.json").read_text())["test_by_pattern"]
    one = json.loads((runs["one"] / "cmpt" / "metrics.json").read_text())["test_by_pattern"]
    assert set(two) == set(one) == {"accel+gyro", "accel", "gyro"}
    for key in one:
        assert abs(two[key]["accuracy"] - one[key]["accuracy"]) <= 3 / 24 + 1e-9, (key, two[key], one[key])
    assert max(v["accuracy"] for v in two.values()) >= 0.5 and max(v["accuracy"] for v in one.values()) >= 0.5
