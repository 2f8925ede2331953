"""The bfloat16 precision option: validated, detected at run time, and it still learns."""

import pytest

from hpo.errors import HpoError
from hpo.rng import generator
from hpo.training.batched import TrainConfig, train_members
from hpo.training.data import cv_pairs, stratified_folds
from hpo.training.model import TwinConfig
from hpo.training.precision import native_bfloat16, resolve_precision

NATIVE = pytest.mark.skipif(not native_bfloat16(), reason="this CPU has no native bfloat16 (AVX512_BF16 or AMX)")


def test_precision_names_are_validated_and_auto_takes_the_faster_float32() -> None:
    assert resolve_precision("float32") == "float32"
    assert resolve_precision("auto") == "float32", "hpo's float32 kernels outrun bfloat16 autocast"
    with pytest.raises(HpoError, match="--precision must be auto, float32 or bfloat16; got 'fp16'"):
        resolve_precision("fp16")


def test_bfloat16_without_native_support_is_a_user_error(monkeypatch) -> None:
    monkeypatch.setattr("hpo.training.precision.native_bfloat16", lambda: False)
    with pytest.raises(HpoError, match="no native bfloat16"):
        resolve_precision("bfloat16")
    assert resolve_precision("auto") == "float32"


@NATIVE
def test_bfloat16_training_learns_the_task_on_real_pairs(mnist_dir) -> None:
    """Autocast forward, float32 loss and Adam: as good as float32 here, far above chance (0.5)."""
    pairs = cv_pairs(mnist_dir, 600, seed=1, download=False)
    folds = stratified_folds(pairs.targets, 2, generator(0, "folds"))
    cfg, train = (
        TwinConfig(conv1_channels=16, conv2_channels=32, hidden=64, batch_norm=True),
        TrainConfig(epochs=8, lr=3e-3),
    )
    results = {
        p: train_members(cfg, train, pairs, folds.train_index, pairs, folds.val_index, [0, 1], precision=p)
        for p in ("float32", "bfloat16")
    }
    bf16 = results["bfloat16"]
    assert min(bf16.accuracies) > 0.75, bf16.history
    assert min(bf16.digit_accuracies) > 0.7
    assert all(p.dtype.is_floating_point and p.dtype.itemsize == 4 for p in bf16.model.parameters())
    assert sum(bf16.accuracies) > sum(results["float32"].accuracies) - 0.1


def test_validation_only_after_the_last_epoch_when_asked(mnist_dir) -> None:
    pairs = cv_pairs(mnist_dir, 200, seed=0, download=False)
    folds = stratified_folds(pairs.targets, 2, generator(0, "folds"))
    seen: list[int] = []
    args = (TwinConfig(), TrainConfig(epochs=3), pairs, folds.train_index, pairs, folds.val_index, [0, 1])
    once = train_members(*args, on_epoch=lambda e, a: seen.append(e), validate_every_epoch=False)
    every = train_members(*args)
    assert seen == [3] and len(once.history) == 1 and len(every.history) == 3
    assert once.accuracies == every.accuracies  # validation draws no randomness: same training
