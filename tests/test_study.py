"""The ablation study: one command writes the table, the ε-error curves and the window sweeps."""

from __future__ import annotations

import json

from playground.study import BANDS, main, markdown_table, part_groups, single_part_ablations
from playground.sampling import load_pipeline
from tiny_weights import make_tiny_weights


def test_the_study_writes_a_row_per_model_and_ablation_and_a_sweep_per_part(tmp_path, mnist_slice):
    weights = make_tiny_weights(tmp_path / "weights")
    out = tmp_path / "study"
    status = main(["--models", str(weights / "tiny"), str(weights / "tiny-noskip"), "--data-dir", str(mnist_slice),
                   "--classifier", str(weights / "classifier"), "--num", "4", "--per-digit", "1", "--steps", "3",
                   "--eps-images", "8", "--windows", "3", "--sweep-batch", "2", "--out", str(out)])
    assert status == 0
    record = json.loads((out / "study.json").read_text())
    tiny, noskip = load_pipeline(weights / "tiny"), load_pipeline(weights / "tiny-noskip")
    expected_rows = [("tiny", label) for label in single_part_ablations(tiny)] + \
                    [("tiny-noskip", label) for label in single_part_ablations(noskip)]
    assert [(row["model"], row["ablation"]) for row in record["ablations"]] == expected_rows
    # a model trained without skips has no skips to switch off, in the single ablations and in the sweeps
    assert not any(label.startswith("skips") for label in single_part_ablations(noskip))
    assert set(record["sweeps"]["tiny"]) == set(part_groups(tiny)) == {"skips off", "attention off", "time off"}
    assert set(record["sweeps"]["tiny-noskip"]) == {"attention off", "time off"}
    for sweep in record["sweeps"]["tiny"].values():
        assert len(sweep["windows"]) == len(sweep["change"]) == 3
        assert all(change >= 0 for change in sweep["change"])
    table = (out / "study.md").read_text()
    assert table.count("| tiny |") == len(single_part_ablations(tiny))
    assert "**tiny-noskip**" in table
    for name in ("eps-tiny.png", "eps-tiny-noskip.png", "sweep-tiny.png", "sweep-tiny-noskip.png"):
        assert (out / name).stat().st_size > 1000
    assert all(row["peak"] > 0 for row in record["ablations"])


def _row(ablation, confident, peak):
    return {"model": "m", "ablation": ablation, "confident": confident, "class_entropy": 0.0, "fd": 10.0, "peak": peak,
            "digit_accuracy": None, **{band: 0.1 for band in BANDS}}


def test_the_table_gives_each_rows_peak_and_explains_it_once_a_row_left_the_data_range():
    table = markdown_table([_row("intact", 0.79, 1.0), _row("skips 28px off", 1.0, 529.4)], 4, 3, 1.5, 1, 8)
    intact, diverged = (line for line in table.splitlines() if line.startswith("| m |"))
    assert "| 0.790 | 0.000 | 10.00 | 1 |" in intact and "| 1.000 | 0.000 | 10.00 | 529 |" in diverged
    assert "at least one sample has left the data range" in table
    assert "left the data range" not in markdown_table([_row("intact", 0.79, 1.0)], 4, 3, 1.5, 1, 8)
