import torch

from hpo.augment import random_shift
from hpo.rng import generator


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
