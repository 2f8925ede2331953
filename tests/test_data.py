import pytest
import torch

from hpo.errors import HpoError
from hpo.rng import generator
from hpo.training.data import (
    Digits,
    cv_pairs,
    load_mnist,
    make_pairs,
    resolve_data_dir,
    standardise,
    stratified_folds,
)


def unique_digits(n: int = 400) -> Digits:
    """Image i is filled with value i % 256 plus a marker row, so every image is identifiable."""
    images = torch.zeros(n, 28, 28, dtype=torch.uint8)
    images[:, 0, :2] = (torch.arange(n) // 256).view(n, 1).to(torch.uint8)
    images[:, 0, 2:4] = (torch.arange(n) % 256).view(n, 1).to(torch.uint8)
    return Digits(images=images, labels=torch.arange(n) % 10)


def image_ids(pooled: torch.Tensor) -> torch.Tensor:
    """Recover image ids from the pooled marker pixels (2x2 average pooling keeps them)."""
    hi = (pooled[..., 0, 0] * 4 / 2).round()
    lo = (pooled[..., 0, 1] * 4 / 2).round()
    return (hi * 256 + lo).long()


def test_pairs_follow_the_protocol_shapes_and_target_rule() -> None:
    digits = unique_digits()
    pairs = make_pairs(digits, 150, generator(0))
    assert pairs.inputs.shape == (150, 2, 14, 14)
    assert pairs.inputs.dtype == torch.float32
    assert pairs.classes.shape == (150, 2)
    assert torch.equal(pairs.targets, (pairs.classes[:, 0] <= pairs.classes[:, 1]).long())
    ids = image_ids(pairs.inputs)
    assert torch.equal(digits.labels[ids], pairs.classes), "classes belong to the images they label"


def test_no_image_appears_twice_in_one_draw() -> None:
    pairs = make_pairs(unique_digits(), 200, generator(3))  # 400 images, all used
    ids = image_ids(pairs.inputs).view(-1)
    assert ids.unique().numel() == 400


def test_pairs_are_average_pooled_from_28_to_14() -> None:
    images = torch.arange(28 * 28, dtype=torch.float32).view(1, 28, 28).repeat(4, 1, 1) % 200
    digits = Digits(images=images.to(torch.uint8), labels=torch.tensor([1, 2, 3, 4]))
    pairs = make_pairs(digits, 2, generator(0))
    expected = torch.nn.functional.avg_pool2d(images[:1].unsqueeze(1), 2)[0, 0]
    assert torch.allclose(pairs.inputs[0, 0], expected)


def test_pairs_are_deterministic_per_seed() -> None:
    digits = unique_digits()
    a, b, c = (make_pairs(digits, 100, generator(s)) for s in (7, 7, 8))
    assert torch.equal(a.inputs, b.inputs)
    assert not torch.equal(a.inputs, c.inputs)


def test_real_mnist_pairs_have_about_55_percent_class_one(mnist_dir, real_mnist) -> None:
    if not real_mnist:
        pytest.skip("needs real MNIST: set HPO_DATA_DIR")
    digits = load_mnist(mnist_dir, train=True, download=False)
    shares = [make_pairs(digits, 1000, generator(s)).targets.float().mean().item() for s in range(5)]
    assert 0.50 < sum(shares) / 5 < 0.60


def test_standardise_uses_training_statistics_only() -> None:
    digits = unique_digits()
    train, test = make_pairs(digits, 100, generator(0)), make_pairs(digits, 100, generator(1))
    s_train, s_test = standardise(train, test)
    assert abs(s_train.inputs.mean().item()) < 1e-5
    assert abs(s_train.inputs.std().item() - 1) < 1e-5
    mean, std = train.inputs.mean(), train.inputs.std()
    assert torch.allclose(s_test.inputs, (test.inputs - mean) / std)


@pytest.mark.parametrize("n,k", [(1000, 5), (1000, 3), (37, 4)])
def test_folds_are_equal_disjoint_and_stratified(n: int, k: int) -> None:
    targets = (torch.rand(n, generator=generator(1)) < 0.55).long()
    folds = stratified_folds(targets, k, generator(2))
    assert folds.val_index.shape == (k, n // k)
    assert folds.train_index.shape == (k, (k - 1) * (n // k))
    used = folds.val_index.reshape(-1)
    assert used.unique().numel() == used.numel() == n - n % k
    for f in range(k):
        assert set(folds.train_index[f].tolist()).isdisjoint(folds.val_index[f].tolist())
        assert set(folds.train_index[f].tolist()) | set(folds.val_index[f].tolist()) == set(used.tolist())
    counts = torch.stack([targets[v].sum() for v in folds.val_index])
    assert counts.max() - counts.min() <= 1, "each class is dealt evenly over the folds"


def test_folds_are_deterministic_per_seed() -> None:
    targets = (torch.arange(100) % 3 == 0).long()
    a, b = stratified_folds(targets, 5, generator(4)), stratified_folds(targets, 5, generator(4))
    assert torch.equal(a.val_index, b.val_index)


def test_cv_pairs_are_standardised_real_pairs(mnist_dir) -> None:
    pairs = cv_pairs(mnist_dir, 300, seed=0, download=False)
    assert len(pairs) == 300
    assert abs(pairs.inputs.mean().item()) < 1e-4


def test_missing_mnist_without_download_names_the_data_dir_flag(tmp_path) -> None:
    with pytest.raises(HpoError, match="--data-dir"):
        load_mnist(tmp_path / "empty", train=True, download=False)


def test_data_dir_comes_from_flag_then_environment_then_the_per_user_cache(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HPO_DATA_DIR", "/from/env")
    assert str(resolve_data_dir("/from/flag")) == "/from/flag"
    assert str(resolve_data_dir(None)) == "/from/env"
    monkeypatch.delenv("HPO_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(None) == tmp_path / "cache" / "hpo", "one download per user, whatever the folder"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_data_dir(None) == tmp_path / ".cache" / "hpo"
