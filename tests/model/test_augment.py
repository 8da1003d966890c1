"""Augmentation: the paper's recipes, seeded, and a plan that balances the classes."""

from __future__ import annotations

import numpy as np
import pytest

from model.augment import RECIPES, augment


def _slice() -> np.ndarray:
    img = np.zeros((96, 96, 3), np.float32)
    img[30:60, 20:50] = 0.8  # an off-centre block, so every transform moves something
    img[40:45, 60:80] = 0.4
    return img


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_each_recipe_changes_the_slice_and_stays_in_range(recipe: str) -> None:
    img = _slice()
    out = augment(img, np.random.default_rng(1), recipe)
    assert out.shape == img.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, img, atol=1e-3)
    # The anatomy is still there: a mild transform, not a different image.
    assert abs(float(out.mean()) - float(img.mean())) < 0.5 * float(img.mean())


def test_augmentation_is_seeded() -> None:
    img = _slice()
    a = augment(img, np.random.default_rng(5))
    b = augment(img, np.random.default_rng(5))
    c = augment(img, np.random.default_rng(6))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
