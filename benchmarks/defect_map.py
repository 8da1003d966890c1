"""How well the filling-defect map lights emboli, and how much else it lights.

The map (model/preprocess/defect.py) is an input channel, not a detector: the CNN must
tell the lit emboli from the other lit pixels. This measures both sides on synthetic
phantoms, whose embolus voxels the generator knows, for each map setting given:

- *recall*: on every slice of N positive phantoms that holds an embolus, whether the map
  reaches 0.3 within 2 source pixels of it, by the embolus's voxels on that slice;
- *other lit blobs*: on every sixth slice of N negative phantoms, the connected lit
  regions inside the chest cavity after the map is shrunk by the maximum to about the
  demo bundle's input pixel (1.6 mm), which is what the CNN has to reject; also how many
  of them lie within 5 mm of lung (where the segmental and subsegmental arteries run, so
  a lung-only map could not drop them).

    python benchmarks/defect_map.py [--n 14] [--first-seed 5006] [--difficulty realistic]
        [--setting SURROUND_HU:DROP_ISOLATED ...]

A setting is the pair of PreprocessConfig fields ``defect_surround_hu`` and
``defect_drop_isolated``: ``-500:0`` is the default (0.5.0's map), ``-60:1`` counts
mediastinal fat as an occluded artery's dark surround and clears isolated lit pixels.
"""

from __future__ import annotations

import argparse

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from model.preprocess.defect import LIT, filling_defect_map
from model.preprocess.segment import chest_mask_lowres
from model.synthetic import StudyParams, generate_study

INPUT_PIXEL_MM = 1.6
SIZE_BINS = ((1, 9), (10, 29), (30, 99), (100, 299), (300, None))


def cavity_mask(hu: NDArray[np.float32], pixel_mm: float) -> NDArray[np.bool_]:
    """The preprocessing's chest-cavity mask, on the source grid."""
    low, f = chest_mask_lowres(hu, (pixel_mm, pixel_mm))
    rows = np.minimum(np.arange(hu.shape[1]) // f, low.shape[1] - 1)
    cols = np.minimum(np.arange(hu.shape[2]) // f, low.shape[2] - 1)
    return low[:, rows][:, :, cols]


# Lung parenchyma, and how near it a blob counts as in the lungs.
LUNG_HU, NEAR_LUNG_MM = -400.0, 5.0


def near_lung(
    hu: NDArray[np.float32], cavity: NDArray[np.bool_], pixel_mm: float
) -> NDArray[np.bool_]:
    """Per slice, the lung inside the cavity dilated in-plane by NEAR_LUNG_MM."""
    iterations = max(1, round(NEAR_LUNG_MM / pixel_mm))
    return np.stack(
        [ndi.binary_dilation(s, iterations=iterations) for s in (hu < LUNG_HU) & cavity]
    )


def lit_blobs(
    score: NDArray[np.float32], near: NDArray[np.bool_], pixel_mm: float
) -> tuple[int, int]:
    """Connected lit regions of one slice after a max-shrink to about INPUT_PIXEL_MM, and
    how many of them touch ``near`` (the slice's :func:`near_lung`)."""
    f = max(1, round(INPUT_PIXEL_MM / pixel_mm))
    h, w = (score.shape[0] // f) * f, (score.shape[1] // f) * f
    small = score[:h, :w].reshape(h // f, f, w // f, f).max(axis=(1, 3))
    near_small = near[:h, :w].reshape(h // f, f, w // f, f).any(axis=(1, 3))
    labels, count = ndi.label(small >= LIT)
    in_lung = np.unique(labels[near_small & (labels > 0)])
    return count, len(in_lung)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=14, help="positive and negative phantoms each")
    parser.add_argument("--first-seed", type=int, default=5006)
    parser.add_argument("--difficulty", default="realistic", help="easy, realistic or hard")
    parser.add_argument(
        "--setting",
        action="append",
        help="SURROUND_HU:DROP_ISOLATED, repeatable (default: -500:0 and -60:1)",
    )
    args = parser.parse_args()
    settings = [
        (float(hu), drop == "1")
        for hu, drop in (s.rsplit(":", 1) for s in args.setting or ["-500:0", "-60:1"])
    ]
    recall: dict[int, list[tuple[int, bool]]] = {k: [] for k in range(len(settings))}
    blobs: dict[int, list[tuple[int, int]]] = {k: [] for k in range(len(settings))}
    for seed in range(args.first_seed, args.first_seed + args.n):
        for positive in (True, False):
            phantom = generate_study(
                seed, StudyParams(positive=positive, difficulty=args.difficulty)
            )
            pixel_mm = phantom.geometry.pixel_spacing
            hu = phantom.hu.astype(np.float32)
            if positive:
                chosen = np.flatnonzero(phantom.embolus_mask.any(axis=(1, 2)))
            else:
                chosen = np.arange(15, len(hu) - 15, 6)
            cavity = cavity_mask(hu, pixel_mm)[chosen]
            # Once per phantom, not per setting: it does not depend on the map.
            lung = None if positive else near_lung(hu[chosen], cavity, pixel_mm)
            for k, (surround_hu, drop) in enumerate(settings):
                score = filling_defect_map(
                    hu[chosen], pixel_mm, surround_hu=surround_hu, drop_isolated=drop
                )
                score *= cavity
                for j, z in enumerate(chosen):
                    if positive:
                        embolus = phantom.embolus_mask[z]
                        near = ndi.binary_dilation(embolus, iterations=2)
                        recall[k].append((int(embolus.sum()), bool(score[j][near].max() >= LIT)))
                    else:
                        assert lung is not None
                        blobs[k].append(lit_blobs(score[j], lung[j], pixel_mm))
    print(
        f"{args.n} positive and {args.n} negative {args.difficulty} phantoms from seed "
        f"{args.first_seed}; recall by embolus voxels on the slice"
    )
    bins = [f"{lo}-{hi}" if hi else f"{lo}+" for lo, hi in SIZE_BINS]
    print(
        "| surround HU | drop isolated | other lit blobs per slice (within 5 mm of lung) | "
        + " | ".join(bins)
        + " |"
    )
    print("| --- " * (3 + len(bins)) + "|")
    for k, (surround_hu, drop) in enumerate(settings):
        hits = np.array(recall[k])
        cells = []
        for lo, hi in SIZE_BINS:
            sel = (hits[:, 0] >= lo) & (hits[:, 0] <= (hi or np.inf))
            cells.append(f"{hits[sel, 1].mean():.2f} (n={sel.sum()})" if sel.any() else "-")
        counts = np.array(blobs[k])
        print(
            f"| {surround_hu:g} | {'yes' if drop else 'no'} | "
            f"{counts[:, 0].mean():.1f} ({counts[:, 1].mean():.1f}) | " + " | ".join(cells) + " |"
        )


if __name__ == "__main__":
    main()
