"""Poster fine-tuning inputs: training images are augmented, validation and test images are extracted as-is."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from extract.core.errors import UserError
from extract.images import Decoder, Preprocessing, prepare_image
from retrieval.genre.tuned import _Posters

PRE = Preprocessing(40, 32)
DEC = Decoder("pil", True, "torchvision")


@pytest.fixture()
def poster(tmp_path):
    """A 60x90 poster: left half red, right half blue, a green band at the top (any flip or crop shows)."""
    arr = np.zeros((90, 60, 3), np.uint8)
    arr[:, :30, 0] = 255
    arr[:, 30:, 2] = 255
    arr[:10, :, 1] = 255
    path = tmp_path / "poster.png"
    Image.fromarray(arr).save(path)
    return str(path)


def test_evaluation_images_are_preprocessed_like_extraction(poster):
    x, i = _Posters([poster], PRE, False, 10**8, DEC)[0]
    expected, _ = prepare_image(poster, PRE, decoder=DEC)
    assert i == 0 and x.dtype == torch.uint8 and x.shape == (3, 32, 32)
    np.testing.assert_array_equal(x.permute(1, 2, 0).numpy(), expected)
    again, _ = _Posters([poster], PRE, False, 10**8, DEC)[0]
    assert torch.equal(x, again)  # no randomness outside training


def test_training_images_are_randomly_cropped_flipped_and_jittered(poster):
    items = _Posters([poster], PRE, True, 10**8, DEC)
    torch.manual_seed(0)
    draws = [items[0][0] for _ in range(24)]
    assert all(x.dtype == torch.uint8 and x.shape == (3, 32, 32) for x in draws)
    assert len({x.numpy().tobytes() for x in draws}) == 24  # every draw differs
    left_red = [x[0, :, :8].float().mean() > x[2, :, :8].float().mean() for x in draws]
    assert 0 < sum(left_red) < 24  # flipped in some draws, not in others
    torch.manual_seed(0)
    assert all(torch.equal(a, items[0][0]) for a in draws)  # seeded: the same run twice gives the same images
    reference, _ = prepare_image(poster, PRE, decoder=DEC)
    assert not any(np.array_equal(x.permute(1, 2, 0).numpy(), reference) for x in draws)


def test_an_unreadable_poster_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    for train in (True, False):
        with pytest.raises(UserError, match=r"cannot read poster .*broken\.jpg: not a recognised image"):
            _Posters([str(bad)], PRE, train, 10**8, DEC)[0]
