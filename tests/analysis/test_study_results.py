"""The norm study's table and curves (sn_detection.analysis.study_results) from synthetic run
records: mean and std over seeds, missing runs marked, the settings the runs were trained with."""

import csv
import io
import statistics

import cv2
import numpy as np
import pytest

from sn_detection.analysis import state_dict_shares, summarize
from sn_detection.analysis.study_results import (
    band,
    curves_pngs,
    results_csv,
    results_markdown,
    shares_summary,
    table_rows,
)
from sn_detection.testing import sparse_sn_model


def record(norm, seed, box_ap, status="finished", max_iter=30):
    """A run record as sn_detection.study writes it (box and mask AP, curves at 10, 20, 30)."""
    r = {
        "norm": norm,
        "seed": seed,
        "status": status,
        "run_dir": f"runs/{norm}/seed{seed}",
        "settings": {
            "config": {"SOLVER.MAX_ITER": max_iter},
            "overrides": ["SOLVER.MAX_ITER", "30"],
        },
    }
    if status == "failed":
        return {**r, "error": "exit status 1", "log_tail": ["boom"]}
    final = {
        "box": {"AP": box_ap, "AP50": 2 * box_ap, "AP75": box_ap / 2},
        "mask": {"AP": box_ap - 1, "AP50": 2 * box_ap - 1, "AP75": box_ap / 3},
    }
    curves = {
        "loss": [[10, 3.0 - seed], [20, 2.0], [30, 1.0 + seed]],
        "box_AP": [[10, box_ap / 2], [30, box_ap]],
        "mask_AP": [[10, box_ap / 3], [30, box_ap - 1]],
    }
    return {
        **r,
        "final": final,
        "curves": curves,
        "time_per_iter": 0.5 + seed,
        "peak_memory_mib": 1000.0 + seed,
        "peak_memory_kind": "max RSS",
    }


def test_each_value_is_the_mean_and_std_over_seeds():
    records = [record("GN", 0, 4.0), record("GN", 1, 6.0), record("SN", 0, 3.0)]
    rows = {r["norm"]: r for r in table_rows(records, ["GN", "SN"], seeds=2)}
    assert rows["GN"]["box_AP"] == (5.0, pytest.approx(statistics.stdev([4.0, 6.0])))
    assert rows["GN"]["mask_AP75"] == (
        pytest.approx(5 / 3),
        pytest.approx(statistics.stdev([4 / 3, 2])),
    )
    assert rows["GN"]["time_per_iter_s"] == (1.0, pytest.approx(statistics.stdev([0.5, 1.5])))
    assert rows["SN"]["box_AP"] == (3.0, 0.0)
    assert (rows["GN"]["runs"], rows["SN"]["runs"], rows["SN"]["planned"]) == (2, 1, 2)


def test_failed_runs_are_left_out_and_marked_as_missing():
    records = [
        record("GN", 0, 4.0),
        record("GN", 1, 0, status="failed"),
        record("SN", 0, 0, status="failed"),
    ]
    rows = table_rows(records, ["GN", "SN"], seeds=2)
    assert rows[0]["box_AP"] == (4.0, 0.0)
    markdown = results_markdown(rows, records, "cfg.yaml", 1, "tools/norm_study.py ...")
    assert "| GN | 1 of 2 | 4.0 ± 0.0 |" in markdown
    assert "| SN | 0 of 2 | missing | missing |" in markdown
    assert "- SN seed 0: exit status 1; log: `runs/SN/seed0/train.log`" in markdown
    table = list(csv.DictReader(io.StringIO(results_csv(rows))))
    assert (table[1]["runs"], table[1]["planned"], table[1]["box_AP_mean"]) == ("0", "2", "")


def test_the_table_is_labelled_with_the_settings_the_runs_were_trained_with():
    records = [record("GN", 0, 4.0, max_iter=30)]
    rows = table_rows(records, ["GN"], seeds=1)
    markdown = results_markdown(rows, records, "cfg.yaml", 1, "tools/norm_study.py ...")
    assert "seeds 0, 30 iterations, overrides `SOLVER.MAX_ITER 30`, 1 process(es)" in markdown


def test_band_spans_the_seeds_at_the_iterations_all_of_them_have():
    records = [record("GN", 0, 4.0), record("GN", 1, 6.0)]
    records[1]["curves"]["loss"] = records[1]["curves"]["loss"][1:]  # no value at 10
    assert band(records, "GN", "loss") == ([20, 30], [2.0, 1.5], [2.0, 1.0], [2.0, 2.0])
    assert band(records, "SN", "loss") is None


def test_curves_have_a_panel_per_task_and_the_loss():
    records = [record("GN", 0, 4.0), record("SN", 0, 3.0)]
    pngs = curves_pngs(records, ["GN", "SN"], seeds=1)
    ap, loss = (
        cv2.imdecode(np.frombuffer(pngs[n], np.uint8), 1) for n in ("ap_curve.png", "loss.png")
    )
    assert ap.shape == (360, 1000, 3) and loss.shape == (360, 500, 3)


def test_ssn_choices_are_averaged_over_seeds_per_part():
    summary = summarize(state_dict_shares(sparse_sn_model().state_dict()))
    other = {**summary, "res3": {**summary["res3"], "ssn": dict(summary["res3"]["ssn"])}}
    other["res3"]["ssn"]["mean_fixed"] = 0
    records = [
        {**record("SSN", 0, 4.0), "sn_shares": summary},
        {**record("SSN", 1, 6.0), "sn_shares": other},
    ]
    ssn = shares_summary(records, "SSN")["res3"]["ssn"]
    assert (ssn["mean_fixed"], ssn["var_fixed"]) == (1.0, 1.0)
    assert ssn["mean_choice"] == {"IN": 1.0, "LN": 1.0, "BN": 0.0}
    rows = table_rows(records, ["SSN"], seeds=2)
    markdown = results_markdown(rows, records, "cfg.yaml", 1, "tools/norm_study.py ...")
    assert "| res3 | 2 | 1 | 1 | 0 | 0 | 0 | 1 | 1 | 1 |" in markdown
