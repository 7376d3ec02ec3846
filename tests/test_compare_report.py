"""The comparison section's tables and lines (train.reporting.compare_report), on hand-made results."""
from __future__ import annotations

from typing import Any


def test_report_ceiling_table_by_hand() -> None:
    from train.reporting.compare_report import ceiling_table

    board = [{"method": "mla", "patterns": {"a": {"mean": 0.95}, "b": {"mean": 0.80}}},
             {"method": "lf", "patterns": {"a": {"mean": 0.70}, "b": {"mean": None}}}]
    unimodal = {"a": {"test": {"accuracy": 0.97}, "label_probe": {"test": {"accuracy": 0.90}}},
                "b": {"test": {"accuracy": 0.85}, "label_probe": {"test": {"accuracy": 0.75}}}}
    base = {"metric": "accuracy", "modalities": ["a", "b"], "patterns": ["a+b", "a", "b"], "leaderboard": board,
            "unimodal": unimodal}
    # same labels: the own heads; mla a = 95 - 97 = -2.00, b = 80 - 85 = -5.00; lf a = 70 - 97 = -27.00
    assert ceiling_table({**base, "pretrain_task": "labels"}).split("\n") == [
        "| method | `a` minus 97.00 | `b` minus 85.00 |", "| --- | --- | --- |",
        "| mla | -2.00 | -5.00 |", "| lf | -27.00 | – |"]
    # coarse: the probes; mla a = 95 - 90 = +5.00, b = 80 - 75 = +5.00
    assert ceiling_table({**base, "pretrain_task": "coarse-parity"}).split("\n")[2] == "| mla | +5.00 | +5.00 |"
    assert ceiling_table({**base, "unimodal": {}}) is None


def test_report_lee_table_is_the_grid_diagonal_over_seeds() -> None:
    from train.reporting.compare_report import lee_table

    def lee(a: float, b: float) -> dict[str, Any]:
        grid = {"x": {"x": a, "y": 0.0}, "y": {"x": 0.0, "y": b}}  # off-diagonal cells are not in the table
        return {"cases": ["x", "y"], "descriptions": {"x": "x 30%"}, "grid": grid, "three_case_average": (a + b) / 2}

    results = {"leaderboard": [{"method": "pv"}, {"method": "lf"}, {"method": "srmm"}], "runs": [
        {"method": "pv", "seed": 1, "lee": lee(0.9, 0.8)}, {"method": "pv", "seed": 0, "lee": lee(0.7, 0.8)},
        {"method": "lf", "seed": 0, "lee": lee(0.5, 0.6)}, {"method": "srmm", "seed": 0}]}
    # pv: x = (0.9 + 0.7) / 2 = 80.00, sd = sqrt(2 * 0.1^2) = 14.14; y = 80.00 ± 0.00; average (0.85 + 0.75) / 2
    assert lee_table(results).split("\n") == [
        "| method | seeds | x (x 30%) | y | 3-case avg |", "| --- | --- | --- | --- | --- |",
        "| pv | 0, 1 | 80.00 ± 14.14 | 80.00 ± 0.00 | 80.00 ± 7.07 |", "| lf | 0 | 50.00 | 60.00 | 55.00 |"]
    assert lee_table({"leaderboard": [], "runs": [{"method": "pv", "seed": 0}]}) is None


def test_report_lines_for_proxy_r2_and_summed_training_time() -> None:
    from train.reporting.compare_report import proxy_r2_lines, training_time_text

    hist = [{"epoch": 0, "train_proxy_r2": -1.25}, {"epoch": 1, "train_proxy_r2": 0.125},
            {"epoch": 2, "train_proxy_r2": 0.5}]
    results = {"runs": [
        {"method": "cmpt", "seed": 1, "best_epoch": 0, "history": hist, "wall_time_s": {"train": 90.0}},
        {"method": "cmpt", "seed": 0, "best_epoch": 1, "history": hist, "wall_time_s": {"train": 30.0},
         "lee": {"wall_time_s": 600.0}},
        {"method": "late-fusion", "seed": 0, "best_epoch": 2, "history": [{"epoch": 0}], "wall_time_s": {"train": 60.0}},
    ]}
    assert proxy_r2_lines(results) == [
        "- cmpt: proxy-vs-CLS R² on the training batches, seeds 0, 1: 0.12 / -1.25 at the selected epoch; "
        "0.50 / 0.50 at the last epoch (3)."]
    # 90 + 30 + 60 s = 3.0 min; the one Lee grid 600 s = 10.0 min
    assert training_time_text(results) == "3 runs trained in 3.0 min summed, plus 10.0 min for their Lee et al. grids"
