"""The benchmark's quick mode runs every part for real (no timings are asserted: see benchmarks/)."""

import json
import sys
from pathlib import Path

import optuna
import pytest
import torch

from hpo.params import configs

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402


@pytest.mark.postgres
def test_quick_benchmark_runs_every_part_and_writes_json_and_a_markdown_table(mnist_dir, tmp_path, capsys) -> None:
    threads = torch.get_num_threads()
    try:
        result = bench.main(["--quick", "--threads", "2,1", "--data-dir", str(mnist_dir), "--json", str(tmp_path / "bench.json")])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["quick"] is True
    assert set(saved["trial"]) == set(saved["ceiling"]) == {"1", "2"}
    for trial, ceiling in zip(saved["trial"].values(), saved["ceiling"].values()):
        assert trial["ours_s"] > 0 and trial["user_loop_s"] > 0
        assert 0.0 <= trial["ours_cv_accuracy"] <= 1.0 and 0.0 <= trial["user_loop_cv_accuracy"] <= 1.0
        assert ceiling["ceiling_pairs_per_s"] > 0 and ceiling["fraction_of_ceiling"] > 0
    for pruner in ("median", "none"):
        assert saved["study"][pruner]["finished"] >= bench.QUICK.study_trials
    workers = saved["workers"]
    assert workers["1 worker x 1 thread"]["finished"] >= bench.QUICK.worker_trials
    assert workers["2 workers x 1 thread"]["finished"] >= 2 * bench.QUICK.worker_trials
    assert workers["1 worker x 2 threads"]["finished"] >= bench.QUICK.worker_trials
    assert 100 < workers["peak_rss_mib"] < 64 * 1024
    assert result["workers"]["two_workers_speedup"] == workers["two_workers_speedup"]
    table = capsys.readouterr().out
    assert table.startswith("| measure | value | target |")
    assert "trial, 1 thread: speed-up" in table and "trial, 2 threads: speed-up" in table and "workers: peak RSS" in table and "GPU: one trial" in table


def test_benchmark_trial_trains_exactly_the_reference_configuration() -> None:
    """Not the default spec's own fixed values (shifts, cosine schedule): the user's loop has neither."""
    spec = bench.reference_spec(bench.QUICK)
    params = spec.suggest(optuna.trial.FixedTrial({}))
    assert params == bench.REFERENCE
    assert configs(params, 1, 25)[1].shift == 0 and configs(params, 1, 25)[1].schedule == "constant"


@pytest.mark.parametrize("threads", ["0", "one", "1,,2"])
def test_benchmark_rejects_thread_counts_that_are_not_positive_whole_numbers(threads, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--quick", "--parts", "trial", "--threads", threads])
    assert exit_.value.code == 2
    assert "--threads" in capsys.readouterr().err
