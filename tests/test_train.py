import math

import pytest
import torch

from hpo.rng import generator
from hpo.training.batched import Diverged, TrainConfig, learning_rate, train_members
from hpo.training.data import Pairs, cv_pairs, stratified_folds
from hpo.training.model import TwinConfig, TwinNet


@pytest.fixture(scope="module")
def pairs(mnist_dir) -> Pairs:
    return cv_pairs(mnist_dir, 200, seed=0, download=False)


@pytest.mark.parametrize("sharing", [True, False])
@pytest.mark.parametrize("batch_norm", [True, False])
def test_member_m_of_a_batched_net_equals_a_net_built_alone(sharing: bool, batch_norm: bool) -> None:
    cfg = TwinConfig(weight_sharing=sharing, batch_norm=batch_norm, dropout=0.0)
    gens = [generator(s, "init") for s in range(4)]
    batched = TwinNet(cfg, 4).init_(gens).train()
    alone = TwinNet(cfg, 1).init_([generator(2, "init")]).train()
    x = torch.randn(4, 9, 2, 14, 14)
    answer, digits = batched(x)
    answer1, digits1 = alone(x[2:3])
    torch.testing.assert_close(answer[2], answer1[0])
    torch.testing.assert_close(digits[2], digits1[0])


def test_weight_sharing_halves_the_encoder_parameters() -> None:
    shared = TwinNet(TwinConfig(weight_sharing=True)).parameters_per_member()
    separate = TwinNet(TwinConfig(weight_sharing=False)).parameters_per_member()
    head = 20 * 64 + 64 + 64 * 2 + 2
    assert separate - head == 2 * (shared - head)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def _train_together_and_alone(pairs: Pairs, cfg: TwinConfig, epochs: int, fold: int, **augment: object):
    folds = stratified_folds(pairs.targets, 4, generator(0, "folds"))
    train_cfg = TrainConfig(
        epochs=epochs, batch_size=16, lr=3e-3, beta1=0.8, weight_decay=1e-4, aux_weight=0.7, **augment
    )
    seeds = [11, 12, 13, 14]
    together = train_members(cfg, train_cfg, pairs, folds.train_index, pairs, folds.val_index, seeds)
    one = slice(fold, fold + 1)
    alone = train_members(cfg, train_cfg, pairs, folds.train_index[one], pairs, folds.val_index[one], [seeds[fold]])
    probe = pairs.inputs[:64].unsqueeze(0)
    out_together = together.model.eval()(probe.expand(4, -1, -1, -1, -1))
    out_alone = alone.model.eval()(probe)
    return together, alone, out_together[0][fold], out_alone[0][0]


CONFIGS = [
    TwinConfig(weight_sharing=True, batch_norm=True, dropout=0.0),
    TwinConfig(weight_sharing=False, batch_norm=False, dropout=0.0, head_input="softmax"),
    TwinConfig(weight_sharing=True, batch_norm=False, dropout=0.0, head="compare"),
]
IDS = ["shared-bn", "separate-softmax", "compare-head-augmented-cosine"]


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
@pytest.mark.parametrize("fold", [0, 3])
def test_fold_parallel_training_computes_exactly_what_one_fold_alone_computes(
    pairs: Pairs, cfg: TwinConfig, fold: int, float64
) -> None:
    """In float64 the batched and the single-fold run agree to rounding: the same computation."""
    pairs = Pairs(pairs.inputs.double(), pairs.targets, pairs.classes)
    # one case trains with every augmentation and the cosine schedule
    every = {"shift": 1, "rotate": 10.0, "scale": 0.1, "schedule": "cosine", "repair": True}
    augment = every if cfg.head == "compare" else {}
    together, alone, out_together, out_alone = _train_together_and_alone(pairs, cfg, epochs=3, fold=fold, **augment)
    assert [h[fold] for h in together.history] == [h[0] for h in alone.history]
    torch.testing.assert_close(out_together, out_alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("cfg", CONFIGS, ids=IDS)
def test_fold_parallel_training_matches_one_fold_alone_in_float32(pairs: Pairs, cfg: TwinConfig) -> None:
    """In float32 they differ only by rounding (grouped vs plain kernels), not by method.

    (With shift augmentation the float32 runs drift apart faster, by up to ~0.1 in a logit
    after one epoch, while the float64 test above still agrees to 1e-9: rounding, amplified.)
    """
    together, alone, out_together, out_alone = _train_together_and_alone(pairs, cfg, epochs=1, fold=2)
    assert together.history[0][2] == alone.history[0][0]
    # Probabilities, not logits: a log-probability near 0 or 1 magnifies rounding.
    torch.testing.assert_close(out_together.softmax(-1), out_alone.softmax(-1), rtol=0, atol=2e-3)


def test_training_learns_the_task(mnist_dir) -> None:
    pairs = cv_pairs(mnist_dir, 600, seed=1, download=False)
    folds = stratified_folds(pairs.targets, 2, generator(0, "folds"))
    result = train_members(
        TwinConfig(conv1_channels=16, conv2_channels=32, hidden=64),
        TrainConfig(epochs=10, lr=3e-3, aux_weight=1.0),
        pairs,
        folds.train_index,
        pairs,
        folds.val_index,
        [0, 1],
    )
    assert len(result.history) == 10
    assert min(result.accuracies) > 0.70, result.history
    assert min(result.digit_accuracies) > 0.6
    assert (
        result.n_params == TwinNet(TwinConfig(conv1_channels=16, conv2_channels=32, hidden=64)).parameters_per_member()
    )


def test_non_finite_loss_raises_diverged(pairs: Pairs) -> None:
    poisoned = Pairs(pairs.inputs.clone(), pairs.targets, pairs.classes)
    poisoned.inputs[0] = math.nan
    folds = stratified_folds(pairs.targets, 2, generator(0, "folds"))
    with pytest.raises(Diverged, match="epoch 1"):
        train_members(TwinConfig(), TrainConfig(epochs=2), poisoned, folds.train_index, pairs, folds.val_index, [0, 1])


def test_epoch_hook_sees_every_epoch_and_can_stop_training(pairs: Pairs) -> None:
    folds = stratified_folds(pairs.targets, 2, generator(0, "folds"))
    seen: list[int] = []

    def hook(epoch: int, accuracies: list[float]) -> None:
        assert len(accuracies) == 2
        seen.append(epoch)
        if epoch == 2:
            raise StopIteration

    with pytest.raises(StopIteration):
        train_members(
            TwinConfig(), TrainConfig(epochs=5), pairs, folds.train_index, pairs, folds.val_index, [0, 1], on_epoch=hook
        )
    assert seen == [1, 2]


def test_compare_head_is_the_probability_that_the_first_digit_is_not_larger() -> None:
    from hpo.training.model import compare_digits

    certain = torch.full((1, 3, 2, 10), -30.0)
    for row, (a, b) in enumerate([(3, 7), (7, 3), (5, 5)]):
        certain[0, row, 0, a] = certain[0, row, 1, b] = 30.0
    assert compare_digits(certain).argmax(-1).tolist() == [[1, 0, 1]]
    uniform = torch.zeros(1, 1, 2, 10)
    assert compare_digits(uniform)[0, 0, 1].exp().item() == pytest.approx(55 / 100, abs=1e-6)


def test_compare_head_has_no_parameters_of_its_own() -> None:
    mlp = TwinNet(TwinConfig(head="mlp")).parameters_per_member()
    compare = TwinNet(TwinConfig(head="compare")).parameters_per_member()
    assert mlp - compare == 20 * 64 + 64 + 64 * 2 + 2


def test_cosine_schedule_starts_at_the_rate_halves_midway_and_ends_near_zero() -> None:
    cosine, constant = TrainConfig(lr=2e-3, schedule="cosine"), TrainConfig(lr=2e-3)
    assert learning_rate(cosine, 0, 1000) == pytest.approx(2e-3)
    assert learning_rate(cosine, 500, 1000) == pytest.approx(1e-3)
    assert learning_rate(cosine, 999, 1000) < 1e-8
    rates = [learning_rate(cosine, s, 1000) for s in range(1000)]
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert {learning_rate(constant, s, 1000) for s in (0, 500, 999)} == {2e-3}
