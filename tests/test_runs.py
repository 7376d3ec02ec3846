"""One function turns a --dataset value into a run directory, for every command."""
from __future__ import annotations

from pathlib import Path

from export.build import BuildConfig
from train.recipes.method import TrainConfig, method_run_dir
from train.recipes.unimodal import UnimodalConfig, unimodal_run_dir
from train.runs import dataset_key, run_dir


def test_a_dataset_directory_maps_to_its_folder_name_everywhere(tmp_path: Path) -> None:
    data = tmp_path / "my" / "watch-data"
    assert dataset_key("av-digits") == "av-digits" and dataset_key(str(data) + "/") == "watch-data"
    runs = tmp_path / "runs"
    expected = runs / "watch-data" / "cmpt"
    assert run_dir(runs, data, "cmpt") == expected
    assert method_run_dir(TrainConfig(method="cmpt", dataset=str(data), runs_dir=runs)) == expected
    assert unimodal_run_dir(UnimodalConfig(dataset=str(data), modality="accel", runs_dir=runs)) == (
        runs / "watch-data" / "unimodal" / "accel")
    # export build --dataset DIR finds the run that `train run --dataset DIR` wrote
    assert BuildConfig(method="cmpt", dataset=str(data), runs_dir=runs).run_dir() == expected
