"""Small CT series built with pydicom, for the daemon's tests (no patient data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "ZZTESTNAME^LEAKCHECK"
PATIENT_ID = "ZZPID90817"
BIRTH_DATE = "19010203"
ACCESSION = "ZZACC55511"


def ct_slice(
    study_uid: str,
    series_uid: str,
    index: int,
    *,
    rows: int = 32,
    columns: int = 32,
    thickness: float = 3.0,
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    modality: str = "CT",
    description: str = "CTPA 3mm",
    sop_uid: str | None = None,
) -> Dataset:
    """One axial CT slice with the identifying test values in the patient fields."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.AccessionNumber = ACCESSION
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.SeriesNumber = 2
    ds.InstanceNumber = index + 1
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [0.0, 0.0, -index * thickness]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceThickness = thickness
    ds.PixelSpacing = [0.7, 0.7]
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.PixelData = (np.full((rows, columns), index, dtype=np.int16)).tobytes()
    return ds


def write_series(
    folder: Path, count: int, *, study_uid: str | None = None, **kwargs: object
) -> tuple[str, str, list[Path]]:
    """Write ``count`` slices of one new series to ``folder``; returns (study, series, files)."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    files = []
    for i in range(count):
        ds = ct_slice(study_uid, series_uid, i, **kwargs)  # type: ignore[arg-type]
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study_uid, series_uid, files
