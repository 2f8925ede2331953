"""--jobs auto on a CUDA machine: workers by GPU, each given a GPU of its own (device counts faked)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hpo.pool import WORKERS_PER_GPU, cores, cuda_devices, resolve_jobs, worker_gpu

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("gpus", [1, 2, 8])
def test_auto_starts_workers_by_gpu_count_not_by_core_count(gpus) -> None:
    assert resolve_jobs("auto", None, gpus) == (gpus * WORKERS_PER_GPU, 1 if gpus * WORKERS_PER_GPU > 1 else None)
    assert resolve_jobs("auto", 4, gpus)[0] == gpus * WORKERS_PER_GPU, "--threads feeds a GPU; it does not divide it"


def test_without_gpus_auto_counts_cores_and_an_explicit_count_wins() -> None:
    assert resolve_jobs("auto", None, 0)[0] == cores()
    assert resolve_jobs("3", None, 8) == (3, 1)


def test_the_gpu_count_is_cudas_unless_the_device_is_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert cuda_devices("auto") == cuda_devices("cuda") == 4
    assert cuda_devices("cpu") == 0
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cuda_devices("auto") == 0


def test_each_worker_sees_one_gpu_round_robin() -> None:
    assert [worker_gpu(i, 2, None) for i in (1, 2, 3)] == [
        {"CUDA_VISIBLE_DEVICES": "0"},
        {"CUDA_VISIBLE_DEVICES": "1"},
        {"CUDA_VISIBLE_DEVICES": "0"},
    ]
    assert worker_gpu(2, 2, "5, 7") == {"CUDA_VISIBLE_DEVICES": "7"}, "within the devices the user made visible"
    assert worker_gpu(1, 1, None) == {} and worker_gpu(1, 0, None) == {}


def gpu_sh(*args: str, data_dir: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HPO_DATA_DIR": data_dir, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA the script runs for real (minutes)")
def test_the_gpu_script_checks_its_arguments_then_stops_clearly_without_cuda(mnist_dir, tmp_path) -> None:
    out = tmp_path / "gpu.json"
    bad = gpu_sh(str(out), "--trials", "0", data_dir=str(mnist_dir))
    assert bad.returncode == 2 and "--trials and --repeats must be at least 1" in bad.stderr
    missing = gpu_sh(str(out), data_dir=str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "no MNIST under" in missing.stderr
    done = gpu_sh(str(out), data_dir=str(mnist_dir))
    assert done.returncode == 3 and "torch sees no CUDA device" in done.stderr
    assert not out.exists()
