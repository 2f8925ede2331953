import math

import torch

from hpo.rng import generator
from hpo.training.augment import random_rotate_scale, random_shift, repair
from hpo.training.batched import _batch
from hpo.training.data import Pairs


def test_shift_zero_is_the_identity() -> None:
    x = torch.randn(2, 3, 2, 14, 14)
    assert random_shift(x, 0, [generator(0), generator(1)]) is x


def test_shifted_images_are_translated_copies_within_the_bound() -> None:
    x = torch.zeros(1, 40, 2, 14, 14)
    x[..., 7, 7] = 1.0  # one bright pixel in the middle
    y = random_shift(x, 2, [generator(5)])
    positions = torch.nonzero(y.view(80, 14, 14))[:, 1:]
    assert positions.shape[0] == 80, "each image keeps exactly its one bright pixel"
    assert ((positions - 7).abs() <= 2).all()
    assert len({tuple(p.tolist()) for p in positions}) > 5, "offsets vary between images"


def test_each_member_shifts_the_same_way_alone_or_beside_others() -> None:
    x = torch.randn(3, 4, 2, 14, 14)
    together = random_shift(x, 1, [generator(s) for s in (0, 1, 2)])
    alone = random_shift(x[2:], 1, [generator(2)])
    assert torch.equal(together[2], alone[0])


def test_rotate_and_scale_zero_is_the_identity() -> None:
    x = torch.randn(2, 3, 2, 14, 14)
    assert random_rotate_scale(x, 0.0, 0.0, [generator(0), generator(1)]) is x


def _bar_angle(image: torch.Tensor) -> float:
    """The angle (degrees from vertical) of the main axis of an image's bright pixels."""
    rows, cols = torch.meshgrid(torch.arange(14.0), torch.arange(14.0), indexing="ij")
    w = image.clamp(min=0)
    r, c = (w * rows).sum() / w.sum(), (w * cols).sum() / w.sum()
    dr, dc = rows - r, cols - c
    return math.degrees(0.5 * math.atan2(2 * (w * dr * dc).sum(), (w * (dr * dr - dc * dc)).sum()))


def test_rotation_turns_a_bar_by_varied_angles_within_the_bound() -> None:
    x = torch.zeros(1, 30, 2, 14, 14)
    x[..., 2:12, 6:8] = 1.0  # a vertical bar
    angles = [abs(_bar_angle(img)) for img in random_rotate_scale(x, 20.0, 0.0, [generator(3)]).view(60, 14, 14)]
    assert max(angles) <= 20.0 + 2.0  # interpolation blurs the bar a little
    assert max(angles) > 10.0 and min(angles) < 5.0, "angles vary between images"


def test_scaling_changes_a_bar_length_within_the_bound() -> None:
    x = torch.zeros(1, 30, 2, 14, 14)
    x[..., 2:12, 6:8] = 1.0
    mass = random_rotate_scale(x, 0.0, 0.2, [generator(4)]).view(60, -1).sum(1) / x.view(60, -1).sum(1)
    assert ((mass > 0.8**2 - 0.05) & (mass < 1.2**2 + 0.05)).all()
    assert mass.max() - mass.min() > 0.2, "factors vary between images"


def test_each_member_warps_the_same_way_alone_or_beside_others() -> None:
    x = torch.randn(3, 4, 2, 14, 14)
    together = random_rotate_scale(x, 10.0, 0.1, [generator(s) for s in (0, 1, 2)])
    alone = random_rotate_scale(x[2:], 10.0, 0.1, [generator(2)])
    assert torch.equal(together[2], alone[0])


def test_repairing_uses_each_training_digit_once_and_only_the_members_own() -> None:
    rows = torch.tensor([[0, 2, 4, 6], [1, 3, 5, 7]])
    digits = repair(rows, [generator(0), generator(1)])
    assert digits.shape == (2, 4, 2)
    for member in range(2):
        own = sorted(d for r in rows[member].tolist() for d in (2 * r, 2 * r + 1))
        assert sorted(digits[member].reshape(-1).tolist()) == own


def test_repairing_makes_new_pairs_and_each_member_repairs_alone_as_beside_others() -> None:
    rows = torch.arange(100).view(2, 50)
    together = repair(rows, [generator(3), generator(4)])
    alone = repair(rows[1:], [generator(4)])
    assert torch.equal(together[1], alone[0])
    kept = sum(int(p[1] == p[0] + 1 and p[0] % 2 == 0) for p in together[0].tolist())
    assert kept < 5, "most pairs are new"


def test_a_repaired_batch_is_labelled_by_its_digits_classes() -> None:
    classes = torch.tensor([[3, 1], [0, 9], [7, 7], [5, 2]])
    inputs = classes.float()[:, :, None, None].expand(4, 2, 14, 14).clone()  # an image shows its class
    train = Pairs(inputs, (classes[:, 0] <= classes[:, 1]).long(), classes)
    digits = torch.tensor([[[0, 3], [7, 4], [5, 6], [2, 1]]])  # flat digit indices: 3-9, 2-7, 7-5, 0-1
    x, targets, got = _batch(train, torch.zeros(1, 4, dtype=torch.long), digits)
    assert got.tolist() == [[[3, 9], [2, 7], [7, 5], [0, 1]]]
    assert targets.tolist() == [[1, 1, 0, 1]]
    assert torch.equal(x[..., 0, 0], got.float())
    digits = torch.tensor([[[1, 0], [3, 2]]])  # 1-3 and 9-0
    assert _batch(train, torch.zeros(1, 2, dtype=torch.long), digits)[1].tolist() == [[1, 0]]
