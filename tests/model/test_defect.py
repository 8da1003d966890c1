"""The filling-defect channel: lit at clot inside enhanced blood and at occluded arteries
in the lung, dark at patent vessels, and kept through the shrink to the input size."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from model.preprocess import CTVolume, PreprocessConfig, preprocess_volume
from model.preprocess.defect import box_extreme, filling_defect_map
from model.preprocess.transform import _max_resize

PIXEL_MM = 0.7
LUNG, BLOOD, CLOT = -850.0, 350.0, 50.0


def _disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def _lung_slice() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One slice of lung holding three arteries: patent and with a partial defect (a clot
    disc 2.8 mm across inside the blood), both 8 mm across, and an occluded segmental
    one 5 mm across (all clot)."""
    shape = (96, 96)
    hu = np.full(shape, LUNG, dtype=np.float32)
    parts = {
        "patent": _disc(shape, (24, 24), 5.7),
        "partial": _disc(shape, (24, 70), 5.7),
        "occluded": _disc(shape, (70, 48), 3.6),
    }
    hu[parts["patent"]] = BLOOD
    hu[parts["partial"]] = BLOOD
    parts["clot"] = _disc(shape, (24, 70), 2.0)
    hu[parts["clot"]] = CLOT
    hu[parts["occluded"]] = CLOT
    return hu, parts


def test_clot_in_blood_and_occluded_arteries_light_and_patent_ones_do_not() -> None:
    hu, parts = _lung_slice()
    score = filling_defect_map(hu[None], PIXEL_MM)[0]
    assert score.shape == hu.shape and score.dtype == np.float32
    assert score.min() >= 0.0 and score.max() <= 1.0
    # The partial defect: 300 HU darker than the blood that closes over it.
    assert score[24, 70] > 0.9
    # The occluded artery's core: a plateau of clot density with lung around it.
    assert score[70, 48] == 1.0
    # A patent artery, its rim (partial volume runs through the clot range) and the lung
    # stay dark; so does the rim of the occluded one, which is not a plateau.
    assert score[parts["patent"]].max() == 0.0
    rim = ndimage.binary_dilation(parts["patent"], iterations=2) & ~parts["patent"]
    assert score[rim].max() == 0.0
    lung = ~ndimage.binary_dilation(
        parts["patent"] | parts["partial"] | parts["occluded"], iterations=3
    )
    assert score[lung].max() == 0.0


def test_soft_tissue_outside_the_lung_is_not_an_occluded_artery() -> None:
    # Muscle (50 HU) with no blood and no lung around it: neither term applies.
    hu = np.full((1, 48, 48), CLOT, dtype=np.float32)
    assert not filling_defect_map(hu, PIXEL_MM).any()


@pytest.mark.parametrize("side", [3, 5, 11])
def test_box_extreme_matches_scipys_rank_filters(side: int) -> None:
    image = np.random.default_rng(side).normal(size=(3, 37, 41)).astype(np.float32)
    size = (1, side, side)
    high = ndimage.maximum_filter(image, size=size, mode="constant", cval=-np.inf)
    low = ndimage.minimum_filter(image, size=size, mode="constant", cval=np.inf)
    assert np.array_equal(box_extreme(image, side, peak=True), high)
    assert np.array_equal(box_extreme(image, side, peak=False), low)


@pytest.mark.parametrize(("source", "size"), [(350, 192), (512, 192), (100, 64), (64, 64)])
def test_a_single_lit_source_pixel_survives_the_shrink(source: int, size: int) -> None:
    rng = np.random.default_rng(source)
    for row, col in rng.integers(0, source, size=(40, 2)):
        stack = np.zeros((1, source, source), dtype=np.float32)
        stack[0, row, col] = 0.8
        out = _max_resize(stack, size)
        assert out.shape == (1, size, size)
        assert out.max() == pytest.approx(0.8)
        # ... at the output pixel that shows its place, give or take the box.
        (r, c) = np.argwhere(out[0] > 0)[0]
        assert abs((r + 0.5) * source / size - row) <= source / size + 1
        assert abs((c + 0.5) * source / size - col) <= source / size + 1


def test_the_defect_channel_keeps_a_defect_that_a_bilinear_resize_loses() -> None:
    hu, _ = _lung_slice()
    volume = CTVolume(
        hu=np.repeat(hu[None], 6, axis=0),
        positions_mm=3.0 * np.arange(6)[::-1].astype(np.float64),
        pixel_spacing=(PIXEL_MM, PIXEL_MM),
        sop_instance_uids=[f"1.2.3.{k}" for k in range(6)],
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
    )
    config = PreprocessConfig(
        input_size=24, num_slices=8, segment=False, min_slices=4, channel_windows="pe_lung_defect"
    )
    out = preprocess_volume(volume, config).volume
    assert out.shape == (8, 24, 24, 3)
    # At a quarter of the size the clot disc no longer shows in the PE window: its pixel
    # there is as bright as blood, all but its contrast averaged away.
    spot = (24 * 24 // 96, 70 * 24 // 96)
    pe_clot = (CLOT + 250.0) / 700.0
    assert out[0, *spot, 0] > pe_clot + 0.2
    # The defect channel still lights it, and the patent artery stays dark.
    assert out[0, *spot, 2] > 0.9
    assert out[:6, :12, :12, 2].max() == 0.0
    # The other channels are the PE and lung windows; padding stays empty.
    flat_lung = out[0, 2, 12]
    assert flat_lung[0] == 0.0 and flat_lung[1] == pytest.approx((LUNG + 1350.0) / 1500.0)
    assert not out[6:].any()
    with pytest.raises(ValueError, match="needs channels: 3"):
        PreprocessConfig(channels=1, channel_windows="pe_lung_defect")


def _hilar_slice() -> tuple[np.ndarray, np.ndarray]:
    """Mediastinal fat (-100 HU) with lung beside it, and an occluded artery 5 mm across
    at their border, more of it in fat than in lung: a hilar segmental artery."""
    shape = (64, 64)
    hu = np.full(shape, -100.0, dtype=np.float32)
    hu[:, 36:] = LUNG
    artery = _disc(shape, (32, 32), 3.6)
    hu[artery] = CLOT
    return hu, artery


def test_an_occluded_artery_in_mediastinal_fat_lights_only_with_fat_as_its_surround() -> None:
    hu, artery = _hilar_slice()
    core = (32, 32)
    # Lung alone is too little of its surround, so 0.5.0's map leaves it dark ...
    assert filling_defect_map(hu[None], PIXEL_MM)[0][core] == 0.0
    # ... and counting fat as dark finds it.
    score = filling_defect_map(hu[None], PIXEL_MM, surround_hu=-60.0)[0]
    assert score[core] == 1.0
    # The fat and the lung themselves stay dark either way.
    assert score[~ndimage.binary_dilation(artery, iterations=2)].max() == 0.0


def test_drop_isolated_clears_single_lit_pixels_and_keeps_defects() -> None:
    hu, _ = _lung_slice()
    # One dark source pixel inside the patent artery's blood (noise): after the map's
    # smoothing it alone falls into the clot range, its neighbours stay blood.
    hu[24, 24] = -300.0
    full = filling_defect_map(hu[None], PIXEL_MM)[0]
    kept = filling_defect_map(hu[None], PIXEL_MM, drop_isolated=True)[0]
    lit = full >= 0.3
    isolated = lit & (ndimage.convolve(lit.astype(int), np.ones((3, 3)), mode="constant") == 1)
    assert isolated.any()
    assert not kept[isolated].any()
    # Everything else is untouched: the partial defect and the occluded artery still light.
    assert np.array_equal(kept[~isolated], full[~isolated])
    assert kept[24, 70] > 0.9 and kept[70, 48] == 1.0
