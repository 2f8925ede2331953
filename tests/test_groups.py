"""On two threads a trial's members train in two groups, one thread each, and the result is the
one-thread run's bit for bit (where the widths with batch norm are multiples of 16, as the
default spec's are; otherwise PyTorch's batch-norm reductions sum a channel tail their own way
and the two agree to float32 rounding)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from hpo.rng import generator
from hpo.training.batched import Diverged, TrainConfig, train_members
from hpo.training.data import Pairs, cv_pairs, stratified_folds
from hpo.training.groups import Lockstep, member_groups
from hpo.training.model import TwinConfig


@pytest.fixture(scope="module")
def pairs(mnist_dir) -> Pairs:
    return cv_pairs(mnist_dir, 250, seed=0, download=False)


@pytest.fixture
def threads():
    """Sets torch's thread count for a test and restores it."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_groups_are_made_on_two_cpu_threads_only_larger_first() -> None:
    assert member_groups(5, "cpu", 2) == [range(3), range(3, 5)]
    assert member_groups(10, "cpu", 2) == [range(5), range(5, 10)]
    assert member_groups(2, "cpu", 2) == [range(1), range(1, 2)]
    assert member_groups(5, "cpu", 1) == [range(5)]  # one thread: one computation
    assert member_groups(5, "cpu", 4) == [range(5)]  # not measured beyond two: torch's threads
    assert member_groups(1, "cpu", 2) == [range(1)]
    assert member_groups(5, "cuda", 2) == [range(5)]


CONFIGS = {
    # the default study's common trial, with every stream a member draws from in use
    "shared-bn-compare": (
        TwinConfig(batch_norm=True, head="compare", dropout=0.3, hidden=64),
        {"shift": 1, "schedule": "cosine", "rotate": 8.0, "scale": 0.05, "repair": True},
    ),
    # 16 channels: a member's batch-norm gradients fill half a 32-float block
    "narrow-bn": (TwinConfig(batch_norm=True, conv1_channels=16, conv2_channels=32, hidden=64), {}),
    "separate-mlp": (
        TwinConfig(weight_sharing=False, batch_norm=False, dropout=0.2, head_input="softmax"),
        {"shift": 1},
    ),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_threads_train_what_one_thread_trains_bit_for_bit(pairs: Pairs, threads, name: str) -> None:
    cfg, augment = CONFIGS[name]
    folds = stratified_folds(pairs.targets, 5, generator(0, "folds"))  # groups of 3 and 2
    train_cfg = TrainConfig(epochs=3, batch_size=25, lr=3e-3, weight_decay=1e-4, **augment)
    args = (cfg, train_cfg, pairs, folds.train_index, pairs, folds.val_index, [7, 8, 9, 10, 11])
    runs = {}
    for count in (1, 2):
        threads(count)
        runs[count] = train_members(*args)
        assert torch.get_num_threads() == count  # the groups' one thread each, then the caller's count again
    one, two = runs[1], runs[2]
    assert one.history == two.history and len(two.history) == 3
    assert one.digit_accuracies == two.digit_accuracies
    assert two.model.members == 5
    for (name_, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values()):
        assert torch.equal(a, b), name_


def test_the_epoch_hook_sees_every_member_and_stops_both_groups(pairs: Pairs, threads) -> None:
    threads(2)
    folds = stratified_folds(pairs.targets, 3, generator(0, "folds"))
    seen: list[tuple[int, int, str]] = []

    def hook(epoch: int, accuracies: list[float]) -> None:
        seen.append((epoch, len(accuracies), threading.current_thread().name))
        if epoch == 2:
            raise StopIteration

    with pytest.raises(StopIteration):
        train_members(
            TwinConfig(hidden=64), TrainConfig(epochs=5), pairs, folds.train_index, pairs, folds.val_index,
            [0, 1, 2], on_epoch=hook,
        )  # fmt: skip
    me = threading.current_thread().name
    assert seen == [(1, 3, me), (2, 3, me)]
    assert torch.get_num_threads() == 2


def test_a_group_that_diverges_stops_the_trial(pairs: Pairs, threads) -> None:
    threads(2)
    poisoned = Pairs(pairs.inputs.clone(), pairs.targets, pairs.classes)
    folds = stratified_folds(pairs.targets, 4, generator(0, "folds"))
    poisoned.inputs[folds.train_index[3]] = float("nan")  # only the second group's last member
    with pytest.raises(Diverged, match="epoch 1"):
        train_members(TwinConfig(), TrainConfig(epochs=2), poisoned, folds.train_index, pairs, folds.val_index, [0] * 4)
    assert torch.get_num_threads() == 2


def test_lockstep_waits_for_every_group_before_raising_an_error() -> None:
    finished: list[str] = []

    def fails() -> None:
        raise ValueError("the first group failed")

    def slow() -> str:
        time.sleep(0.2)
        finished.append("second")
        return "second"

    lockstep = Lockstep(2)
    try:
        assert lockstep([lambda: "first", slow]) == ["first", "second"]
        with pytest.raises(ValueError, match="first group failed"):
            lockstep([fails, slow])
        assert finished == ["second", "second"]  # the second group had finished when the error came
    finally:
        lockstep.close()
