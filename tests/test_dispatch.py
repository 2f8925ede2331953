"""The kernel dispatch: one choice per network, by batch norm, device, precision and threads, named stably."""

from __future__ import annotations

import pytest
import torch

from hpo.kernels.dispatch import STEM, TORCH, WINOGRAD_MAX_THREADS, Kernels, choose
from hpo.spec.registry import TwinConfig
from hpo.training.model import TwinNet


@pytest.mark.parametrize("threads", range(1, WINOGRAD_MAX_THREADS + 1))
def test_on_few_threads_the_cpu_takes_the_stem_without_batch_norm_and_winograd_with_it(threads) -> None:
    assert choose(False, "cpu", "float32", threads) == STEM
    assert choose(True, "cpu", "float32", threads) == Kernels("fused", "winograd")


def test_on_more_threads_only_the_first_layer_is_fused() -> None:
    for batch_norm in (True, False):
        assert choose(batch_norm, "cpu", "float32", WINOGRAD_MAX_THREADS + 1) == Kernels(first="fused")


def test_the_cpu_kernels_are_declined_on_cuda_in_bfloat16_under_autocast_and_for_other_dtypes() -> None:
    for batch_norm in (True, False):
        assert choose(batch_norm, "cuda", "float32", 1) == TORCH
        assert choose(batch_norm, torch.device("cuda", 0), "float32", 1) == TORCH
        assert choose(batch_norm, "cpu", "bfloat16", 1) == TORCH
        assert choose(batch_norm, "cpu", "float32", 1, dtype=torch.float16) == TORCH
        assert choose(batch_norm, "cpu", "float32", 1, dtype=torch.float64) != TORCH
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert choose(batch_norm, "cpu", "float32", 1) == TORCH


def test_the_default_thread_count_is_torchs() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert choose(True) == Kernels("fused", "winograd")
        torch.set_num_threads(WINOGRAD_MAX_THREADS + 1)
        assert choose(True) == Kernels(first="fused")
    finally:
        torch.set_num_threads(threads)


def test_every_choice_has_a_stable_name_that_names_it_again() -> None:
    choices = [Kernels(f, s) for f in ("fused", "torch") for s in ("winograd", "winograd_pool", "torch")] + [STEM]
    names = [k.name for k in choices]
    assert len(set(names)) == len(choices)
    assert all(Kernels.named(k.name) == k for k in choices)
    assert (STEM.name, TORCH.name, Kernels("fused", "winograd").name) == ("stem", "torch+torch", "fused+winograd")


def test_unknown_choices_are_refused() -> None:
    for name in ("", "fast", "fused", "fused+direct", "torch+stem"):
        with pytest.raises(ValueError, match="unknown kernel choice"):
            Kernels.named(name)
    with pytest.raises(ValueError, match="unknown kernels"):
        Kernels(**{"first": "numba", "second": "torch"})
    with pytest.raises(ValueError, match="the stem is"):
        Kernels("torch", "winograd_pool", stem=True)


def test_twin_net_resolves_its_choice_once_when_not_given_and_keeps_a_given_one() -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        net = TwinNet(TwinConfig(batch_norm=False))
        torch.set_num_threads(WINOGRAD_MAX_THREADS + 1)
        assert net.kernels == STEM == net.encoder.kernels, "chosen at construction, not per forward pass"
        assert TwinNet(TwinConfig(batch_norm=False)).kernels == Kernels(first="fused")
        assert TwinNet(TwinConfig(batch_norm=False), kernels=STEM).kernels == STEM
    finally:
        torch.set_num_threads(threads)
