"""Synthetic CT pulmonary angiograms with known emboli and weak labels.

Importable without TensorFlow. The entry points:

- :func:`generate_study` builds one study (a :class:`Phantom`: HU volume, masks, emboli,
  slice and exam labels) from a seed and :class:`StudyParams`.
- :func:`write_study` writes a phantom as DICOM files (:class:`WriteOptions` picks the
  storage variant and extra series) and returns a :class:`WrittenStudy`.
- :func:`write_dataset` writes many studies in the RSNA-STR PE layout with ``train.csv``
  and ``patients.csv``; :func:`plan_dataset` says what it writes (seeds, labels and
  patients), so a data set's phantoms can be generated again without reading it.
- :func:`write_preview` saves a montage of one study with the emboli outlined.
"""

from model.synthetic.dataset import DatasetSummary, PlannedStudy, plan_dataset, write_dataset
from model.synthetic.dicom_writer import (
    TRANSFER_SYNTAXES,
    StudyIdentity,
    WriteOptions,
    WrittenSeries,
    WrittenStudy,
    ct_series,
    dose_report_dataset,
    localizer_dataset,
    write_study,
)
from model.synthetic.difficulty import DIFFICULTIES, Difficulty
from model.synthetic.emboli import Embolus, EmbolusDistribution
from model.synthetic.labels import ALWAYS_ZERO, EXAM_COLUMNS, IMAGE_COLUMNS, ExamLabels
from model.synthetic.phantom import Geometry, Phantom, StudyParams, generate_study
from model.synthetic.preview import render_preview, write_preview
from model.synthetic.tissue import Tissue

__all__ = [
    "ALWAYS_ZERO",
    "DIFFICULTIES",
    "EXAM_COLUMNS",
    "IMAGE_COLUMNS",
    "TRANSFER_SYNTAXES",
    "DatasetSummary",
    "Difficulty",
    "Embolus",
    "EmbolusDistribution",
    "ExamLabels",
    "Geometry",
    "Phantom",
    "PlannedStudy",
    "StudyIdentity",
    "StudyParams",
    "Tissue",
    "WriteOptions",
    "WrittenSeries",
    "WrittenStudy",
    "ct_series",
    "dose_report_dataset",
    "generate_study",
    "localizer_dataset",
    "plan_dataset",
    "render_preview",
    "write_dataset",
    "write_preview",
    "write_study",
]
