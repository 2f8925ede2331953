"""The benchmark's quick mode runs every part for real (no timings are asserted: see benchmarks/)."""

import datetime
import json
import sys
from pathlib import Path

import optuna
import pytest
import torch

from hpo.kernels import winograd, winograd_tiles
from hpo.kernels.dispatch import STEM, Kernels
from hpo.spec.registry import configs
from hpo.training.model import TwinNet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402
import levers  # noqa: E402
import per_core  # noqa: E402
import tile_transforms  # noqa: E402


@pytest.mark.postgres
def test_quick_benchmark_runs_every_part_and_writes_json_and_a_markdown_table(mnist_dir, tmp_path, capsys) -> None:
    threads = torch.get_num_threads()
    try:
        result = bench.main(
            [
                "--quick",
                "--threads",
                "2,1",
                "--references",
                "plain",
                "--data-dir",
                str(mnist_dir),
                "--json",
                str(tmp_path / "bench.json"),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["quick"] is True
    assert set(saved["trial"]) == set(saved["large_batch"]) == set(saved["peak"]) == {"1", "2"}
    for trial, large, peak in zip(saved["trial"].values(), saved["large_batch"].values(), saved["peak"].values()):
        assert trial["ours_s"] > 0 and trial["user_loop_s"] > 0
        assert 0.0 <= trial["ours_cv_accuracy"] <= 1.0 and 0.0 <= trial["user_loop_cv_accuracy"] <= 1.0
        assert large["pairs_per_s"] > 0 and large["ours_share"] > 0
        assert peak["float32_gflops"] > 0 and trial["ours_gflops"] > 0
        assert ("bfloat16_gflops" in peak) == peak["bfloat16_native"] == ("ours_bfloat16_s" in trial)
        # Each variant's trials recorded the precision they trained in (an earlier version
        # timed float32 twice, its bfloat16 setting overridden by the objective's own).
        assert trial["trained_in"] == {
            "float32": ["float32"],
            **({"bfloat16": ["bfloat16"]} if peak["bfloat16_native"] else {}),
        }
    assert "trial_common" not in saved
    assert all(t["kernels"]["float32"] == ["stem"] for t in saved["trial"].values()), "on 1 and 2 threads"
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
    assert (
        "trial, 1 thread: speed-up" in table
        and "trial, 2 threads: speed-up" in table
        and "workers: peak RSS" in table
        and "GPU: one trial" in table
    )
    assert "fraction of the float32 GEMM peak" in table and "GEMM peak, 1 thread" in table and "ceiling" not in table


def test_quick_trial_part_runs_the_common_trial_beside_the_plain_one(mnist_dir, tmp_path) -> None:
    threads = torch.get_num_threads()
    try:
        argv = ["--quick", "--parts", "trial", "--threads", "1,2", "--data-dir", str(mnist_dir)]
        bench.main([*argv, "--references", "common,plain", "--json", str(tmp_path / "bench.json")])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads((tmp_path / "bench.json").read_text())
    # What each trial trained with: batch norm's path (Winograd, then PyTorch's batch norm and
    # pooling) and, without batch norm, the stem; on 1 and 2 threads alike.
    for n in ("1", "2"):
        common, plain = saved["trial_common"][n], saved["trial"][n]
        assert common["reference"] == "common" and common["ours_s"] > 0 and common["user_loop_s"] > 0
        assert 0.0 <= common["ours_cv_accuracy"] <= 1.0 and 0.0 <= common["user_loop_cv_accuracy"] <= 1.0
        assert common["kernels"]["float32"] == ["fused+winograd"] and plain["kernels"]["float32"] == ["stem"]


def test_trial_flops_are_counted_from_the_network_shapes() -> None:
    """The reference network: 1.48 MFLOP per pair forward, 3x less the first layer's input gradient to train."""
    cfg = configs(bench.REFERENCE, 1, 25)[0]
    forward, conv1 = bench.forward_flops(cfg)
    assert conv1 == 2 * (2 * 12 * 12 * 32 * 9)
    assert (
        forward
        == 2 * (2 * 12 * 12 * 32 * 9 + 2 * 16 * 64 * 32 * 9 + 2 * 256 * 128 + 2 * 128 * 10) + 2 * 20 * 64 + 2 * 64 * 2
    )
    flops = bench.trial_flops(cfg, folds=5, train_pairs=800, val_pairs=200, epochs=25)
    assert round(flops["val_mflop_per_pair"], 2) == 1.48 and round(flops["train_mflop_per_pair"], 2) == 4.29
    assert 460 < flops["trial_gflop"] < 470


def test_user_loop_network_is_a_plain_sequential_of_the_reference_shape() -> None:
    cfg = configs(bench.REFERENCE, 1, 25)[0]
    encoder, head = bench.user_net(cfg)
    assert isinstance(encoder, torch.nn.Sequential) and isinstance(head, torch.nn.Sequential)
    digits = encoder(torch.zeros(6, 1, 14, 14))
    assert digits.shape == (6, 10) and head(digits.view(3, 20)).shape == (3, 2)
    ours = sum(p.numel() for p in encoder.parameters()) + sum(p.numel() for p in head.parameters())
    assert ours == TwinNet(cfg).parameters_per_member()


def test_user_loop_network_of_the_common_trial_has_batch_norm_and_the_compare_head() -> None:
    cfg = configs(bench.COMMON, 1, 25)[0]
    assert cfg.batch_norm and cfg.head == "compare" and (cfg.conv1_channels, cfg.conv2_channels) == (32, 64)
    encoder, head = bench.user_net(cfg)
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in encoder) == 2
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in encoder) == 1 and len(head) == 0
    ours = sum(p.numel() for p in encoder.parameters())
    assert ours == TwinNet(cfg).parameters_per_member()
    answer = bench.user_answer(cfg, head, encoder.eval()(torch.zeros(6, 1, 14, 14)).view(3, 2, 10))
    assert answer.shape == (3, 2) and torch.allclose(answer.exp().sum(-1), torch.ones(3))


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


def run_quick(main, out: Path) -> dict:
    """A benchmark's --quick run (torch's thread count restored after): the JSON it saved,
    checked equal to what it returned."""
    threads = torch.get_num_threads()
    try:
        result = main(["--quick", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    return saved


def test_levers_benchmark_checks_conv2_as_bmm_against_the_convolution_and_times_every_lever(
    mnist_dir, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("HPO_DATA_DIR", str(mnist_dir))
    saved = run_quick(levers.main, tmp_path / "levers.json")
    assert saved["conv2"]["onednn_ms"] > 0 and saved["conv2"]["im2col_bmm_ms"] > 0 and saved["conv2"]["winograd_ms"] > 0
    assert set(saved["step"]) == {f"step_ms_at_{b}_pairs_per_member" for b in (1, 5, 25)}
    heap = saved["heap"]["runs"]  # each side in its own process, glibc's thresholds raised in one
    assert [r["kept"] for r in heap["glibc_default"]] == [False] and [r["kept"] for r in heap["kept_heap"]] == [True]
    assert all(r["trial_s"] > 0 and 0 <= r["trial_cv_accuracy"] <= 1 for rs in heap.values() for r in rs)
    shares = saved["profile"]["share"]  # on one thread, without batch norm: both convolutions in stem.py's pass
    stem = "first two layers but their products (stem.py: first layer, Winograd's transforms, pooling; both passes)"
    assert abs(sum(shares.values()) - 1) < 1e-6 and shares[stem] > 0 and shares["batched products"] > 0
    assert "convolution forward" not in shares and "first layer (fused, both passes)" not in shares
    trial = saved["trial"]
    # Every lever computes the same trial: the same CV accuracy to float32 rounding.
    accuracies = list(trial["cv_accuracy"].values())
    assert len(accuracies) == 6 and max(accuracies) - min(accuracies) < 0.01
    levers_ = ("direct_conv2", "winograd_any_threads", "unfused_first_layer", "no_stem", "unpooled_conv2")
    assert all(trial[f"{n}_over_as_is"] > 0 for n in levers_)
    # Each variant trained with the kernels it names, passed through the dispatch's choices (1 thread).
    assert trial["kernels"] == {
        "as_is": "stem",
        "direct_conv2": "fused+torch",
        "winograd_any_threads": "stem",
        "unfused_first_layer": "torch+winograd_pool",
        "no_stem": "fused+winograd_pool",
        "unpooled_conv2": "fused+winograd",
    }
    with_norm = saved["trial_batch_norm"]  # the first layer with batch norm, fused and not
    assert (
        with_norm["unfused_first_layer_over_as_is"] > 0
        and abs(with_norm["cv_accuracy"]["as_is"] - with_norm["cv_accuracy"]["unfused_first_layer"]) < 0.05
    )
    assert with_norm["kernels"]["as_is"] == "fused+winograd" and with_norm["kernels"]["direct_conv2"] == "fused+torch"


def test_levers_are_kernel_choices_through_the_dispatch() -> None:
    assert levers.lever("as_is", False, 1) is None
    assert levers.lever("winograd_any_threads", False, 4) == STEM
    assert levers.lever("direct_conv2", True, 1) == Kernels("fused", "torch")
    assert levers.lever("unfused_first_layer", True, 1) == Kernels("torch", "winograd")
    assert levers.lever("unfused_first_layer", True, 4) == Kernels("torch", "torch")


@pytest.mark.parametrize(
    "batch_norm,variants", [(True, ("as_is", "unfused_first_layer")), (False, ("winograd_any_threads", "direct_conv2"))]
)
def test_accuracy_part_scores_two_variants_per_seed(batch_norm, variants, mnist_dir, monkeypatch) -> None:
    monkeypatch.setenv("HPO_DATA_DIR", str(mnist_dir))
    result = levers.accuracy_part(2, 1, batch_norm, variants)
    assert {n: len(a) for n, a in result["cv_accuracy"].items()} == {n: 2 for n in variants}
    assert all(0.3 < a <= 1 for accs in result["cv_accuracy"].values() for a in accs)


def test_per_core_benchmark_trains_one_trial_per_process_at_once_and_rates_the_machine(
    mnist_dir, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("HPO_DATA_DIR", str(mnist_dir))
    threads = torch.get_num_threads()
    try:
        result = per_core.main(["--quick", "--processes", "2", "--json", str(tmp_path / "per_core.json")])
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / "per_core.json").read_text()) == json.loads(json.dumps(result))
    [seconds] = result["rounds_s"]
    assert len(seconds) == 2 and all(s > 0 for s in seconds) and result["slowest_s"] == max(seconds)
    assert all(0.3 < a <= 1 for a in result["cv_accuracies"][0]), "each process trained its own seed"
    assert result["machine_gflops"] == pytest.approx(2 * result["trial_gflop"] / max(seconds))
    assert 0 < result["fraction_of_peak"] == pytest.approx(result["machine_gflops"] / result["peak_gflops_all_cores"])


def test_jobs_benchmark_splits_the_main_commands_wall_time_by_phase_class_and_state(
    write_spec, mnist_dir, tmp_path
) -> None:
    import jobs

    spec = write_spec(epochs=2)
    out = tmp_path / "jobs.json"
    argv = ["--trials", "4", "--jobs", "1", "--spec", str(spec), "--data-dir", str(mnist_dir)]
    result = jobs.main([*argv, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    [run] = result["runs"]
    where = run["where"]
    phases = where["phases_s"]
    assert all(v >= 0 for v in phases.values()) and abs(sum(phases.values()) - where["wall_s"]) < 0.5
    assert where["wall_s"] >= where["trial_s"] > 0, "one worker: its trials ran one after another"
    assert sum(g["trials"] for g in where["by_class"].values()) == run["finished"] >= 4
    assert sum(g["trials"] for g in where["by_state"].values()) == run["finished"]
    assert where["by_state"].get("pruned", {}).get("trials", 0) == run["pruned"]
    assert all(name.endswith(("complete", "pruned")) for name in where["by_class_and_state"])
    assert all(", 8/16, " in name for name in where["by_class"]), "the small spec's widths"
    assert set(where["by_kernels"]) <= {"stem", "fused+winograd", "fused+torch"}


def test_jobs_benchmark_reads_where_a_finished_commands_time_went_from_its_store(
    write_spec, mnist_dir, tmp_path, cli
) -> None:
    import jobs

    store = tmp_path / "hpo.db"
    started = datetime.datetime.now()
    done = cli(
        "optimize",
        "--trials",
        3,
        "--jobs",
        1,
        "--spec",
        write_spec(epochs=1),
        "--data-dir",
        mnist_dir,
        "--storage",
        f"sqlite:///{store}",
    )
    assert done.exit_code == 0, done.stderr[-2000:]
    wall = (datetime.datetime.now() - started).total_seconds()
    out = tmp_path / "where.json"
    where = jobs.main(
        ["--store", str(store), "--started", started.isoformat(), "--wall", str(wall), "--json", str(out)]
    )
    assert json.loads(out.read_text()) == json.loads(json.dumps(where))
    assert where["wall_s"] == round(wall, 1) and where["phases_s"]["start_up"] > 0
    assert sum(g["trials"] for g in where["by_state"].values()) >= 3
    with pytest.raises(SystemExit):
        jobs.main(["--store", str(store), "--wall", "1"])
    missing = tmp_path / "missing.db"
    with pytest.raises(SystemExit) as exit_:
        jobs.main(["--store", str(missing), "--started", started.isoformat(), "--wall", "1"])
    assert exit_.value.code == 2 and not missing.exists(), "a store that is not there is not created"
    with pytest.raises(SystemExit) as exit_:
        jobs.main(["--store", str(store), "--started", "yesterday", "--wall", "1"])
    assert exit_.value.code == 2


def test_transforms_benchmark_times_each_winograd_transform_in_training_and_warm(
    mnist_dir, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("HPO_DATA_DIR", str(mnist_dir))
    saved = run_quick(tile_transforms.main, tmp_path / "transforms.json")
    assert set(saved["transforms"]) == set(tile_transforms.TRANSFORMS)
    for row in saved["transforms"].values():
        # one epoch of 667 pairs in batches of 25: 27 steps, each transform once a step
        assert row["calls"] >= 26 and row["in_training_us"] > 0 and row["warm_us"] > 0
    # the training batch's shapes: 25 pairs (50 images) x 3 folds, 16 -> 64 channels
    assert saved["transforms"]["_input_to_points"]["shapes"] == [[50, 6, 6, 48], [6, 6, 3, 50, 16]]
    assert all(getattr(winograd, name) is getattr(winograd_tiles, name) for name in tile_transforms.TRANSFORMS), (
        "the timed wrappers are removed after the run"
    )
