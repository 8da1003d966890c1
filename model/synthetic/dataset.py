"""A data set of synthetic studies in the RSNA-STR PE layout, with train.csv and patients.csv."""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from model.parallel import process_map
from model.synthetic.dicom_writer import StudyIdentity, WriteOptions, write_study
from model.synthetic.difficulty import Difficulty, get_difficulty
from model.synthetic.labels import EXAM_COLUMNS, IMAGE_COLUMNS
from model.synthetic.phantom import StudyParams, generate_study

PATIENT_COLUMNS = ("StudyInstanceUID", "PatientID")
"""Columns of ``patients.csv``."""


@dataclass(frozen=True)
class DatasetSummary:
    """What :func:`write_dataset` wrote.

    Parameters
    ----------
    out_dir : Path
        Root folder.
    studies, positives : int
        Number of studies, and of those with emboli.
    patients : int
        Number of distinct patients (some have two studies).
    slices, positive_slices : int
        Number of axial slices, and of those with an embolus.
    seconds : float
        Wall time taken.
    """

    out_dir: Path
    studies: int
    positives: int
    patients: int
    slices: int
    positive_slices: int
    seconds: float


def study_seeds(seed: int, n_studies: int) -> list[int]:
    """Return the per-study seeds of a data set: distinct, and stable for a given ``seed``."""
    state = np.random.SeedSequence([seed, 4000]).generate_state(n_studies, dtype=np.uint32)
    seeds: list[int] = []
    for s in state:
        value = int(s)
        while value in seeds:
            value += 1
        seeds.append(value)
    return seeds


@dataclass(frozen=True)
class PlannedStudy:
    """One study of a data set before it is written: everything it is generated from.

    Parameters
    ----------
    seed : int
        The study's seed (:func:`~model.synthetic.phantom.generate_study`).
    params : StudyParams
        Positive or not, difficulty, slices, matrix and patient.
    options : WriteOptions
        How its files are stored.
    """

    seed: int
    params: StudyParams
    options: WriteOptions

    @property
    def patient(self) -> int:
        """The patient's number; two studies of one patient share it (without one given,
        the study is its own patient, as in :func:`generate_study`)."""
        return self.seed if self.params.patient_seed is None else self.params.patient_seed

    @property
    def identity(self) -> StudyIdentity:
        """The UIDs and patient the study is written with."""
        return StudyIdentity.from_seed(self.seed, self.patient)


def plan_dataset(
    n_studies: int,
    positive_fraction: float = 0.5,
    seed: int = 0,
    difficulty: str | Difficulty = "realistic",
    n_slices: int | None = None,
    matrix: int = 512,
    vary_storage: bool = True,
    extra_series: bool = False,
    second_study_fraction: float = 0.2,
) -> list[PlannedStudy]:
    """The studies :func:`write_dataset` writes for these arguments, in order, unwritten.

    A held-out set's phantoms can be generated again from it (their embolus voxels are
    not in the files), to split an evaluation by what each positive holds.
    """
    if n_studies < 1:
        raise ValueError("n_studies must be at least 1.")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError("positive_fraction must be between 0 and 1.")
    if not 0.0 <= second_study_fraction <= 1.0:
        raise ValueError("second_study_fraction must be between 0 and 1.")
    get_difficulty(difficulty)
    # One stream, drawn in this order (positives, patients, storage in study order), so
    # the data set is the same whatever the number of workers that write it.
    rng = np.random.default_rng(np.random.SeedSequence([seed, 4001]))
    n_pos = round(n_studies * positive_fraction)
    positive = np.zeros(n_studies, dtype=bool)
    positive[rng.permutation(n_studies)[:n_pos]] = True
    seeds = study_seeds(seed, n_studies)

    patients: list[int] = []
    for i, s in enumerate(seeds):
        repeat = (
            i > 0 and patients.count(patients[-1]) == 1 and rng.random() < second_study_fraction
        )
        patients.append(patients[-1] if repeat else s)

    plan = []
    for i, study_seed in enumerate(seeds):
        options = (
            WriteOptions.random(rng) if vary_storage else WriteOptions(transfer_syntax="explicit")
        )
        options = replace(
            options, localizer=extra_series, thin=extra_series, dose_report=extra_series
        )
        params = StudyParams(
            positive=bool(positive[i]),
            difficulty=difficulty,
            n_slices=n_slices,
            matrix=matrix,
            patient_seed=patients[i],
        )
        plan.append(PlannedStudy(study_seed, params, options))
    return plan


@dataclass(frozen=True)
class _WrittenStudy:
    """One study of a data set, as the parent process needs it for the CSVs."""

    study_instance_uid: str
    patient_id: str
    rows: list[list[object]]
    slices: int
    positive_slices: int


def _write_one(job: tuple[PlannedStudy, Path]) -> _WrittenStudy:
    """Generate and write one study (in a worker process)."""
    study, out = job
    phantom = generate_study(study.seed, study.params)
    identity = study.identity
    axial = write_study(phantom, out, study.options, identity).axial
    exam = [phantom.exam.as_row()[c] for c in EXAM_COLUMNS]
    rows: list[list[object]] = [
        [
            identity.study_instance_uid,
            axial.series_instance_uid,
            sop,
            int(phantom.slice_labels[k]),
            *exam,
        ]
        for k, sop in enumerate(axial.sop_instance_uids)
    ]
    return _WrittenStudy(
        identity.study_instance_uid,
        identity.patient_id,
        rows,
        phantom.n_slices,
        int(phantom.slice_labels.sum()),
    )


def write_dataset(
    out_dir: str | Path,
    n_studies: int,
    positive_fraction: float = 0.5,
    seed: int = 0,
    difficulty: str | Difficulty = "realistic",
    n_slices: int | None = None,
    matrix: int = 512,
    vary_storage: bool = True,
    extra_series: bool = False,
    second_study_fraction: float = 0.2,
    workers: int = 1,
) -> DatasetSummary:
    """Write ``n_studies`` studies with weak labels in the RSNA-STR PE layout.

    Files go to ``out_dir/<StudyUID>/<SeriesUID>/<file>.dcm``. ``out_dir/train.csv`` has one
    row per axial image with the RSNA columns (:data:`~model.synthetic.labels.IMAGE_COLUMNS`
    then :data:`~model.synthetic.labels.EXAM_COLUMNS`), and ``out_dir/patients.csv`` maps
    each study to its patient, so folds can be grouped by patient.

    Parameters
    ----------
    out_dir : str or Path
        Root folder; created if missing.
    n_studies : int
        How many studies.
    positive_fraction : float
        Fraction of studies with emboli (rounded to a whole number of studies).
    seed : int
        Seed of the whole data set.
    difficulty : str or Difficulty
        Preset name or custom :class:`Difficulty`.
    n_slices : int or None
        Force the slice count of every study (for quick tests); None gives 80 to 160.
    matrix : int
        Rows and columns of each image.
    vary_storage : bool
        Draw each study's transfer syntax, pixel signedness, instance order and file
        naming, as a mix of scanners would send; otherwise explicit VR, unsigned, head first.
    extra_series : bool
        Add a localizer, a 1 mm reconstruction and a dose report to every study. Only the
        axial series appears in ``train.csv``.
    second_study_fraction : float
        Chance that a study belongs to the patient of the study before it (each patient
        has at most two).
    workers : int
        Processes that generate and write studies in parallel; the bytes written do not
        depend on it.

    Returns
    -------
    DatasetSummary
        Counts and timing.
    """
    plan = plan_dataset(
        n_studies,
        positive_fraction,
        seed,
        difficulty,
        n_slices,
        matrix,
        vary_storage,
        extra_series,
        second_study_fraction,
    )
    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    slices = positive_slices = 0
    with (
        open(out / "train.csv", "w", newline="") as train_file,
        open(out / "patients.csv", "w", newline="") as patient_file,
    ):
        train = csv.writer(train_file)
        train.writerow([*IMAGE_COLUMNS, *EXAM_COLUMNS])
        patient_rows = csv.writer(patient_file)
        patient_rows.writerow(PATIENT_COLUMNS)
        jobs = [(study, out) for study in plan]
        for written in process_map(_write_one, jobs, workers):
            train.writerows(written.rows)
            patient_rows.writerow([written.study_instance_uid, written.patient_id])
            slices += written.slices
            positive_slices += written.positive_slices
    return DatasetSummary(
        out_dir=out,
        studies=n_studies,
        positives=sum(bool(study.params.positive) for study in plan),
        patients=len({study.patient for study in plan}),
        slices=slices,
        positive_slices=positive_slices,
        seconds=time.perf_counter() - start,
    )
