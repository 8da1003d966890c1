"""What a radiologist would check in a synthetic CTPA: tissues, emboli, labels, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from model.synthetic import ALWAYS_ZERO, EXAM_COLUMNS, Phantom, StudyParams, Tissue, generate_study

T = Tissue


@pytest.fixture(scope="module")
def positive() -> Phantom:
    return generate_study(
        101, StudyParams(positive=True, difficulty="easy", n_emboli=3, n_slices=48, matrix=256)
    )


@pytest.fixture(scope="module")
def negative() -> Phantom:
    return generate_study(202, StudyParams(positive=False, n_slices=48, matrix=256))


def _interior_median(p: Phantom, label: int) -> float:
    """Median HU of a tissue away from its edges (out of reach of partial volume)."""
    mask = p.tissue == label
    interior = ndimage.binary_erosion(mask, structure=np.ones((1, 5, 5), bool))
    assert interior.sum() > 50, f"{Tissue(label).name} has no interior"
    return float(np.median(p.hu[interior]))


@pytest.mark.parametrize(
    ("label", "lo", "hi"),
    [
        (T.FAT, -125.0, -75.0),
        (T.MUSCLE, 20.0, 65.0),
        (T.LUNG, -910.0, -780.0),
        (T.BONE_MARROW, 380.0, 460.0),
        (T.PULMONARY_ARTERY, 250.0, 500.0),
        (T.AIRWAY, -1024.0, -950.0),
        (T.AIR, -1024.0, -960.0),
    ],
)
def test_tissues_have_plausible_hounsfield_units(
    positive: Phantom, label: int, lo: float, hi: float
) -> None:
    assert lo <= _interior_median(positive, label) <= hi


def test_bone_is_dense(positive: Phantom) -> None:
    bone = np.isin(positive.tissue, [T.BONE_CORTICAL, T.BONE_MARROW])
    assert 400.0 <= float(np.percentile(positive.hu[bone], 90)) <= 1250.0
    assert 900.0 <= positive.contrast.bone_hu <= 1200.0


def test_pulmonary_arteries_enhance_more_than_clot(positive: Phantom) -> None:
    assert 250.0 <= positive.contrast.pa_hu <= 500.0
    assert 20.0 <= positive.contrast.embolus_hu <= 70.0
    clot = ndimage.binary_erosion(positive.embolus_mask, structure=np.ones((1, 3, 3), bool))
    assert clot.sum() > 10
    assert 0.0 <= float(np.median(positive.hu[clot])) <= 110.0
    assert (
        np.median(positive.hu[clot])
        < np.median(positive.hu[positive.tissue == T.PULMONARY_ARTERY]) - 150
    )


def test_emboli_lie_inside_pulmonary_arteries(positive: Phantom) -> None:
    assert positive.embolus_mask.any()
    assert not (positive.embolus_mask & ~positive.artery_mask).any()
    assert np.array_equal(positive.embolus_mask, positive.tissue == T.EMBOLUS)
    # No clot in the aorta, heart, airways or lung parenchyma.
    assert not np.isin(positive.tissue[positive.artery_mask], [T.AORTA, T.LUNG, T.AIRWAY]).any()


def test_slice_labels_match_the_voxels(positive: Phantom) -> None:
    per_slice = positive.embolus_mask.any(axis=(1, 2))
    assert np.array_equal(positive.slice_labels, per_slice)
    from_emboli = sorted({k for e in positive.emboli for k in e.slices})
    assert from_emboli == list(np.nonzero(positive.slice_labels)[0])
    assert 0 < positive.slice_labels.sum() < positive.n_slices
    assert positive.positive


def test_negative_study_has_no_positive_slice(negative: Phantom) -> None:
    assert not negative.positive
    assert not negative.slice_labels.any()
    assert not negative.embolus_mask.any()
    assert not (negative.tissue == T.EMBOLUS).any()
    row = negative.exam.as_row()
    assert row["negative_exam_for_pe"] == 1
    assert all(v == 0 for k, v in row.items() if k != "negative_exam_for_pe")


def test_exam_labels_are_consistent(positive: Phantom) -> None:
    row = positive.exam.as_row()
    assert list(row) == list(EXAM_COLUMNS)
    assert row["negative_exam_for_pe"] == 0
    assert row["rv_lv_ratio_gte_1"] + row["rv_lv_ratio_lt_1"] == 1
    assert row["rightsided_pe"] + row["leftsided_pe"] + row["central_pe"] >= 1
    assert all(row[k] == 0 for k in ALWAYS_ZERO)
    assert row["central_pe"] == int(any(e.central for e in positive.emboli))
    assert row["leftsided_pe"] == int(any(e.left for e in positive.emboli))
    assert row["rightsided_pe"] == int(any(e.right for e in positive.emboli))


def test_laterality_follows_where_the_clot_is() -> None:
    checked = 0
    for seed in range(6):
        p = generate_study(seed, StudyParams(positive=True, n_slices=40, matrix=160))
        for e in p.emboli:
            if e.central or e.left == e.right:
                continue
            x = np.mean(p.grid.x[np.nonzero(p.embolus_mask[list(e.slices)])[2]])
            # Columns run towards the patient's left: left-sided clots lie at positive x.
            assert (x > 0) == e.left
            checked += 1
    assert checked >= 3


def test_rv_lv_label_matches_the_ventricles() -> None:
    seen = set()
    for seed in range(12):
        p = generate_study(seed, StudyParams(positive=True, n_slices=60, matrix=192))
        widths = []
        for label in (T.RIGHT_VENTRICLE, T.LEFT_VENTRICLE):
            cols = np.nonzero((p.tissue == label).any(axis=1))
            per_slice = [np.ptp(cols[1][cols[0] == k]) for k in np.unique(cols[0])]
            widths.append(max(per_slice))
        measured = widths[0] / widths[1]
        if abs(measured - 1.0) > 0.12:
            assert p.exam.rv_lv_ratio_gte_1 == int(measured >= 1.0), (seed, measured)
        seen.add(p.exam.rv_lv_ratio_gte_1)
    assert seen == {0, 1}


def test_same_seed_gives_identical_volumes() -> None:
    params = StudyParams(n_slices=16, matrix=96)
    a, b = generate_study(7, params), generate_study(7, params)
    assert a.hu.tobytes() == b.hu.tobytes()
    assert a.exam == b.exam
    c = generate_study(8, params)
    assert a.hu.tobytes() != c.hu.tobytes()


def test_default_geometry_is_a_clinical_ctpa() -> None:
    p = generate_study(3)
    assert p.hu.shape[1:] == (512, 512)
    assert p.hu.dtype == np.int16
    assert 80 <= p.n_slices <= 160
    assert p.geometry.slice_thickness == 3.0
    assert 0.6 <= p.geometry.pixel_spacing <= 0.9
    z = np.asarray(p.geometry.slice_z)
    assert np.allclose(np.diff(z), -3.0)
    # The scan covers the lung apices to below the diaphragm.
    lung_slices = np.nonzero((p.tissue == T.LUNG).any(axis=(1, 2)))[0]
    assert lung_slices[0] > 0 and lung_slices[-1] < p.n_slices - 1
    assert (p.tissue[-1] == T.ABDOMEN).any()


def test_dose_and_bolus_vary_between_studies() -> None:
    contrasts = [generate_study(s, StudyParams(n_slices=8, matrix=64)).contrast for s in range(8)]
    assert np.ptp([c.noise_sd for c in contrasts]) > 4.0
    assert np.ptp([c.pa_hu for c in contrasts]) > 50.0


def test_hard_emboli_are_smaller_than_easy_ones() -> None:
    def mean_voxels(difficulty: str) -> float:
        sizes = [
            e.voxels
            for s in range(5)
            for e in generate_study(
                s, StudyParams(positive=True, difficulty=difficulty, n_slices=60, matrix=192)
            ).emboli
        ]
        return float(np.mean(sizes))

    assert mean_voxels("hard") * 4 < mean_voxels("easy")


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="difficulty"):
        StudyParams(difficulty="impossible")
    with pytest.raises(ValueError, match="seed"):
        generate_study(-1)
