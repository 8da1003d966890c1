"""Write a phantom as a DICOM CT study that a PACS would accept.

The main series is CT Image Storage, one file per slice. Options reproduce the variation
real scanners show: signed or unsigned storage, instance numbers running either way, files
named in random order, implicit or explicit VR, and lossless compression. A study may also
hold a localizer, a thin reconstruction and a dose report, to exercise series selection.
Every identifier is clearly synthetic and every UID and date derives from the seed, so the
same seed gives the same bytes.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)

from model.synthetic.phantom import Phantom, generate_study

TRANSFER_SYNTAXES = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
"""Short names of the transfer syntaxes the writer produces, all lossless."""

_COMPRESSED = {RLELossless, JPEGLSLossless, JPEG2000Lossless}

SCANNERS = (
    ("SYNTHETIC MEDICAL", "PhantomScan 64", "SYN-CT64"),
    ("SYNTHETIC MEDICAL", "PhantomScan 128 Flash", "SYN-CT128"),
    ("NOTAREAL SYSTEMS", "Simulacrum Edge", "NRS-EDGE"),
)
"""Manufacturer, model and station name of the make-believe scanners."""


@dataclass(frozen=True)
class StudyIdentity:
    """Who and when: the patient and study attributes, all clearly synthetic.

    Parameters
    ----------
    patient_name : str
        For example ``SYNTHETIC^PHANTOM000042``.
    patient_id : str
        For example ``SYN-000042``.
    accession_number : str
        For example ``SYNACC000042``.
    study_instance_uid : str
        Study Instance UID.
    study_date, study_time : str
        DICOM DA and TM strings.
    patient_birth_date : str
        DICOM DA string.
    patient_sex : str
        ``M`` or ``F``.
    study_id : str
        Short study identifier.
    """

    patient_name: str
    patient_id: str
    accession_number: str
    study_instance_uid: str
    study_date: str
    study_time: str
    patient_birth_date: str
    patient_sex: str
    study_id: str

    @classmethod
    def from_seed(cls, seed: int, patient_number: int | None = None) -> StudyIdentity:
        """Derive an identity from a study seed, and optionally the patient's number.

        Two studies with the same ``patient_number`` belong to one patient (same name, ID,
        sex and birth date) but have different accession numbers, UIDs and dates.
        """
        patient = seed if patient_number is None else patient_number
        prng = np.random.default_rng(np.random.SeedSequence([patient, 2000]))
        srng = np.random.default_rng(np.random.SeedSequence([seed, 2001]))
        birth = dt.date(1930, 1, 1) + dt.timedelta(days=int(prng.integers(0, 365 * 75)))
        when = dt.datetime(2020, 1, 1) + dt.timedelta(
            seconds=int(srng.integers(0, 4 * 365 * 86400))
        )
        return cls(
            patient_name=f"SYNTHETIC^PHANTOM{patient:06d}",
            patient_id=f"SYN-{patient:06d}",
            accession_number=f"SYNACC{seed:06d}",
            study_instance_uid=_uid("study", seed),
            study_date=when.strftime("%Y%m%d"),
            study_time=when.strftime("%H%M%S"),
            patient_birth_date=birth.strftime("%Y%m%d"),
            patient_sex="MF"[int(prng.integers(0, 2))],
            study_id=f"S{seed % 100000:05d}",
        )


@dataclass(frozen=True)
class WriteOptions:
    """How to encode and lay out a study.

    Parameters
    ----------
    transfer_syntax : str
        A key of :data:`TRANSFER_SYNTAXES` (``explicit``, ``implicit``, ``rle``,
        ``jpeg-ls``, ``jpeg2000``) or a transfer syntax UID.
    signed : bool
        Store pixels as signed (PixelRepresentation 1, BitsStored 16) rather than unsigned
        (PixelRepresentation 0, BitsStored 12).
    rescale_intercept : int or None
        The intercept; None uses -1024 for unsigned and 0 for signed storage.
    instance_order : str
        ``head_first`` numbers instances from the head down, ``feet_first`` from the feet up.
    file_names : str
        ``sop_uid`` names files ``<SOPInstanceUID>.dcm`` (the RSNA layout); ``shuffled``
        names them ``IM000001.dcm`` ... in a random order unrelated to position.
    localizer, thin, dose_report : bool
        Add a scout image, a thin reconstruction (a third of the slice thickness: 1 mm
        for the default 3 mm, over the same range and anatomy), or a dose report series.
    scanner : int or None
        Index into :data:`SCANNERS`; None picks one from the seed.
    """

    transfer_syntax: str = "explicit"
    signed: bool = False
    rescale_intercept: int | None = None
    instance_order: str = "head_first"
    file_names: str = "sop_uid"
    localizer: bool = False
    thin: bool = False
    dose_report: bool = False
    scanner: int | None = None

    def __post_init__(self) -> None:
        try:
            _ = self.syntax_uid
        except KeyError:
            raise ValueError(
                f"Unknown transfer syntax {self.transfer_syntax!r}; use one of "
                f"{', '.join(TRANSFER_SYNTAXES)}."
            ) from None
        if self.instance_order not in ("head_first", "feet_first"):
            raise ValueError("instance_order must be 'head_first' or 'feet_first'.")
        if self.file_names not in ("sop_uid", "shuffled"):
            raise ValueError("file_names must be 'sop_uid' or 'shuffled'.")
        if self.scanner is not None and not 0 <= self.scanner < len(SCANNERS):
            raise ValueError(f"scanner must be an index below {len(SCANNERS)}.")

    @property
    def syntax_uid(self) -> str:
        """The transfer syntax UID."""
        if self.transfer_syntax in TRANSFER_SYNTAXES:
            return str(TRANSFER_SYNTAXES[self.transfer_syntax])
        if self.transfer_syntax in {str(u) for u in TRANSFER_SYNTAXES.values()}:
            return self.transfer_syntax
        raise KeyError(self.transfer_syntax)

    @property
    def intercept(self) -> int:
        """The rescale intercept in use."""
        if self.rescale_intercept is not None:
            return self.rescale_intercept
        return 0 if self.signed else -1024

    @classmethod
    def random(cls, rng: np.random.Generator) -> WriteOptions:
        """Draw the storage variations a mix of real scanners shows (no extra series).

        Use :func:`dataclasses.replace` on the result to add extra series.
        """
        signed = bool(rng.random() < 0.5)
        syntax = str(rng.choice(list(TRANSFER_SYNTAXES), p=[0.4, 0.2, 0.15, 0.15, 0.1]))
        return cls(
            transfer_syntax=syntax,
            signed=signed,
            rescale_intercept=-1024 if (not signed or rng.random() < 0.3) else 0,
            instance_order="head_first" if rng.random() < 0.6 else "feet_first",
            file_names="sop_uid" if rng.random() < 0.7 else "shuffled",
            scanner=int(rng.integers(len(SCANNERS))),
        )


@dataclass(frozen=True)
class WrittenSeries:
    """One series as written.

    Parameters
    ----------
    kind : str
        ``axial``, ``thin``, ``localizer`` or ``dose_report``.
    series_instance_uid : str
        Series Instance UID.
    sop_instance_uids : tuple of str
        For CT series in slice order, head to foot (the phantom's slice order).
    paths : tuple of Path
        The files, in the same order.
    """

    kind: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    paths: tuple[Path, ...]


@dataclass(frozen=True)
class WrittenStudy:
    """A study as written: its identity and its series, the axial CTPA first."""

    identity: StudyIdentity
    series: tuple[WrittenSeries, ...] = field(default_factory=tuple)

    @property
    def axial(self) -> WrittenSeries:
        """The main axial CTPA series, to which the weak labels belong."""
        return self.series[0]

    @property
    def paths(self) -> list[Path]:
        """Every file written."""
        return [p for s in self.series for p in s.paths]


_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/ctpa-triage/synthetic")


def _uid(*parts: object) -> str:
    """A deterministic UID under the 2.25 (UUID) arc, derived from the given parts."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, '/'.join(map(str, parts))).int}"


def _common(identity: StudyIdentity, phantom: Phantom, options: WriteOptions) -> Dataset:
    """Patient, study, equipment and frame-of-reference attributes shared by all series."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = identity.patient_name
    ds.PatientID = identity.patient_id
    ds.PatientBirthDate = identity.patient_birth_date
    ds.PatientSex = identity.patient_sex
    ds.PatientIdentityRemoved = "NO"
    ds.StudyInstanceUID = identity.study_instance_uid
    ds.StudyDate = identity.study_date
    ds.StudyTime = identity.study_time
    ds.StudyID = identity.study_id
    ds.AccessionNumber = identity.accession_number
    ds.ReferringPhysicianName = "SYNTHETIC^REFERRER"
    ds.StudyDescription = "CT ANGIO CHEST PE PROTOCOL (SYNTHETIC)"
    scanner = SCANNERS[phantom.seed % len(SCANNERS) if options.scanner is None else options.scanner]
    ds.Manufacturer, ds.ManufacturerModelName, ds.StationName = scanner
    ds.InstitutionName = "SYNTHETIC DATA - NOT A PATIENT"
    ds.DeviceSerialNumber = f"SYN{phantom.seed % 1000:03d}"
    ds.SoftwareVersions = "ctpa-triage synthetic 1"
    ds.FrameOfReferenceUID = _uid("frame", identity.study_instance_uid)
    ds.PositionReferenceIndicator = ""
    ds.InstanceCreationDate = identity.study_date
    ds.InstanceCreationTime = identity.study_time
    return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _file_meta(ds: Dataset, syntax: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    if syntax in _COMPRESSED:
        ds.compress(syntax, generate_instance_uid=False)
    else:
        meta.TransferSyntaxUID = UID(syntax)


def _set_pixels(ds: Dataset, stored: NDArray[np.integer], signed: bool, bits: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated = 16
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = stored.astype("<i2" if signed else "<u2").tobytes()


def _store(hu: NDArray[np.int16], options: WriteOptions) -> tuple[NDArray[np.integer], int]:
    """Convert HU to stored values and return them with the BitsStored that holds them."""
    stored = hu.astype(np.int32) - options.intercept
    if options.signed:
        return np.clip(stored, -32768, 32767), 16
    if stored.min() < 0:
        raise ValueError(
            "Unsigned storage needs a rescale intercept at or below the lowest HU (-1024)."
        )
    return np.clip(stored, 0, 4095), 12


def _exposure(phantom: Phantom) -> tuple[float, int, float]:
    """Tube voltage, current and CTDIvol consistent with the study's noise level."""
    rng = np.random.default_rng(np.random.SeedSequence([phantom.seed, 3000]))
    kvp = float(rng.choice([80.0, 100.0, 120.0]))
    scale = (15.0 / phantom.contrast.noise_sd) ** 2
    current = int(np.clip(200.0 * scale, 40, 600))
    ctdi = round(float(np.clip(6.0 * scale, 0.8, 30.0)), 2)
    return kvp, current, ctdi


def _time_plus(hhmmss: str, seconds: float) -> str:
    t = dt.datetime.strptime(hhmmss, "%H%M%S") + dt.timedelta(seconds=seconds)
    return t.strftime("%H%M%S") + f".{round((seconds % 1) * 1e6):06d}"


def ct_series(
    phantom: Phantom,
    identity: StudyIdentity,
    options: WriteOptions | None = None,
    series_number: int = 2,
    description: str = "CTPA 3.0 mm",
    kind: str = "axial",
) -> list[Dataset]:
    """Build one CT Image Storage dataset per slice of a phantom, in head-to-foot order.

    Parameters
    ----------
    phantom : Phantom
        The images.
    identity : StudyIdentity
        Patient and study attributes.
    options : WriteOptions, optional
        Storage variant.
    series_number : int
        Series Number.
    description : str
        Series Description.
    kind : str
        Feeds the Series Instance UID, so that each series of a study has its own.

    Returns
    -------
    list of pydicom.Dataset
        Datasets with file meta, encoded in the requested transfer syntax.
    """
    options = options or WriteOptions()
    series_uid = _uid("series", identity.study_instance_uid, kind, series_number)
    common = _common(identity, phantom, options)
    stored, bits = _store(phantom.hu, options)
    geo = phantom.geometry
    n = phantom.n_slices
    kvp, current, ctdi = _exposure(phantom)
    datasets = []
    for k in range(n):
        ds = Dataset()
        ds.update(common)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = _uid("sop", series_uid, k)
        ds.Modality = "CT"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = description
        ds.SeriesDate = identity.study_date
        ds.SeriesTime = identity.study_time
        ds.BodyPartExamined = "CHEST"
        ds.PatientPosition = "HFS"
        ds.ProtocolName = "CTPA"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.InstanceNumber = k + 1 if options.instance_order == "head_first" else n - k
        ds.AcquisitionNumber = 1
        ds.ContentDate = identity.study_date
        ds.ContentTime = _time_plus(identity.study_time, 30 + 0.25 * k)
        ds.AcquisitionDate = identity.study_date
        ds.AcquisitionTime = _time_plus(identity.study_time, 20 + 0.05 * k)
        ds.ImagePositionPatient = [
            f"{v:.4f}".rstrip("0").rstrip(".") for v in geo.image_position(k)
        ]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = f"{geo.slice_z[k]:.4f}".rstrip("0").rstrip(".")
        ds.PixelSpacing = [f"{geo.pixel_spacing:.6f}".rstrip("0")] * 2
        ds.SliceThickness = f"{geo.slice_thickness:.4f}".rstrip("0").rstrip(".")
        ds.SpacingBetweenSlices = ds.SliceThickness
        ds.KVP = kvp
        ds.XRayTubeCurrent = current
        ds.ExposureTime = 500
        ds.CTDIvol = ctdi
        ds.CTDIPhantomTypeCodeSequence = [_code("113691", "DCM", "IEC Body Dosimetry Phantom")]
        ds.ConvolutionKernel = "SYN-B30f"
        ds.ReconstructionDiameter = f"{geo.pixel_spacing * geo.columns:.2f}"
        ds.DataCollectionDiameter = 500
        ds.GantryDetectorTilt = 0
        ds.TableHeight = 150
        ds.RotationDirection = "CW"
        ds.RescaleIntercept = options.intercept
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = [100, 40]
        ds.WindowWidth = [700, 400]
        ds.BurnedInAnnotation = "NO"
        _set_pixels(ds, stored[k], options.signed, bits)
        _file_meta(ds, options.syntax_uid)
        datasets.append(ds)
    return datasets


def localizer_dataset(
    phantom: Phantom, identity: StudyIdentity, options: WriteOptions | None = None
) -> Dataset:
    """Build a frontal scout (CT Image Storage, ImageType ``ORIGINAL\\PRIMARY\\LOCALIZER``).

    It is an antero-posterior projection of the phantom's attenuation, with rows running
    head to foot at the in-plane pixel spacing.
    """
    options = options or WriteOptions()
    geo = phantom.geometry
    mu = np.clip(phantom.hu.astype(np.float32) + 1000.0, 0.0, None).mean(axis=1)  # (z, x)
    height = geo.slice_z[0] - geo.slice_z[-1]
    rows = max(2, round(height / geo.pixel_spacing) + 1)
    idx = np.clip(
        np.rint(np.arange(rows) * geo.pixel_spacing / geo.slice_thickness), 0, len(mu) - 1
    )
    scout = mu[idx.astype(int)]
    scout = np.clip(scout * (4000.0 / max(float(scout.max()), 1.0)), 0, 4095).astype(np.uint16)

    ds = _common(identity, phantom, options)
    series_uid = _uid("series", identity.study_instance_uid, "localizer")
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = _uid("sop", series_uid, 0)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "Topogram 0.6 T20f"
    ds.SeriesDate, ds.SeriesTime = identity.study_date, identity.study_time
    ds.BodyPartExamined = "CHEST"
    ds.PatientPosition = "HFS"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.InstanceNumber = 1
    ds.AcquisitionNumber = 1
    ds.ContentDate, ds.ContentTime = identity.study_date, _time_plus(identity.study_time, 5)
    ds.ImagePositionPatient = [geo.origin[0], 0.0, geo.slice_z[0]]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.PixelSpacing = [f"{geo.pixel_spacing:.6f}".rstrip("0")] * 2
    ds.SliceThickness = ""
    ds.KVP = 120
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.BurnedInAnnotation = "NO"
    _set_pixels(ds, scout, False, 12)
    _file_meta(ds, options.syntax_uid)
    return ds


def dose_report_dataset(
    phantom: Phantom, identity: StudyIdentity, options: WriteOptions | None = None
) -> Dataset:
    """Build a dose report as scanners often send it: a Secondary Capture of a dose table."""
    options = options or WriteOptions()
    _, _, ctdi = _exposure(phantom)
    length_cm = (phantom.geometry.slice_z[0] - phantom.geometry.slice_z[-1]) / 10.0
    lines = [
        "DOSE REPORT (SYNTHETIC)",
        "",
        "Series   Type      Scan range     CTDIvol[mGy]   DLP[mGy*cm]",
        "1        Topogram  -              0.10           2.0",
        f"2        Spiral    {length_cm:5.1f} cm       {ctdi:6.2f}         {ctdi * length_cm:7.1f}",
        "",
        f"Total DLP: {ctdi * length_cm + 2.0:.1f} mGy*cm",
    ]
    image = Image.new("L", (512, 512), 0)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((16, 24 + 18 * i), line, fill=255)
    pixels = np.asarray(image)

    ds = _common(identity, phantom, options)
    # A secondary capture has no frame of reference; Laterality (2C) is empty: both lungs.
    del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator
    ds.Laterality = ""
    series_uid = _uid("series", identity.study_instance_uid, "dose")
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = _uid("sop", series_uid, 0)
    ds.Modality = "CT"
    ds.ConversionType = "WSD"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 999
    ds.SeriesDescription = "Dose Report"
    ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ContentDate, ds.ContentTime = identity.study_date, _time_plus(identity.study_time, 90)
    ds.BurnedInAnnotation = "NO"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    syntax = options.syntax_uid
    # Keep the dose report simple: 8-bit text compresses to nothing anyway.
    _file_meta(ds, syntax if syntax not in _COMPRESSED else str(ExplicitVRLittleEndian))
    return ds


def _write(datasets: Sequence[Dataset], folder: Path, names: Sequence[str]) -> tuple[Path, ...]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds, name in zip(datasets, names, strict=True):
        path = folder / name
        dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return tuple(paths)


def _names(datasets: Sequence[Dataset], options: WriteOptions, seed: int) -> list[str]:
    if options.file_names == "sop_uid":
        return [f"{ds.SOPInstanceUID}.dcm" for ds in datasets]
    order = np.random.default_rng(np.random.SeedSequence([seed, 3001])).permutation(len(datasets))
    return [f"IM{int(i) + 1:06d}.dcm" for i in order]


def write_study(
    phantom: Phantom,
    out_dir: str | Path,
    options: WriteOptions | None = None,
    identity: StudyIdentity | None = None,
) -> WrittenStudy:
    """Write a phantom as a DICOM study in ``out_dir/<StudyUID>/<SeriesUID>/<file>.dcm``.

    Parameters
    ----------
    phantom : Phantom
        From :func:`~model.synthetic.phantom.generate_study`.
    out_dir : str or Path
        Root folder; created if missing.
    options : WriteOptions, optional
        Storage variant and extra series; defaults to explicit VR little endian, unsigned,
        no extra series.
    identity : StudyIdentity, optional
        Patient and study attributes; defaults to ``StudyIdentity.from_seed(phantom.seed)``.

    Returns
    -------
    WrittenStudy
        The UIDs and paths of every series, the axial CTPA first.
    """
    options = options or WriteOptions()
    identity = identity or StudyIdentity.from_seed(phantom.seed)
    study_dir = Path(out_dir) / identity.study_instance_uid
    series: list[WrittenSeries] = []

    def add(kind: str, datasets: list[Dataset]) -> None:
        uid = str(datasets[0].SeriesInstanceUID)
        paths = _write(datasets, study_dir / uid, _names(datasets, options, phantom.seed))
        series.append(
            WrittenSeries(kind, uid, tuple(str(d.SOPInstanceUID) for d in datasets), paths)
        )

    thickness = phantom.geometry.slice_thickness
    add("axial", ct_series(phantom, identity, options, 2, f"CTPA {thickness:.1f} mm"))
    if options.thin:
        # A third of the slice thickness (1 mm for 3 mm) over the same range, same anatomy.
        forced = phantom.params.n_slices
        thin_params = replace(
            phantom.params,
            slice_thickness=max(0.5, phantom.params.slice_thickness / 3.0),
            n_slices=None if forced is None else 3 * (forced - 1) + 1,
        )
        thin = generate_study(phantom.seed, thin_params)
        desc = f"CTPA {thin.geometry.slice_thickness:.1f} mm thin"
        add("thin", ct_series(thin, identity, options, 3, desc, kind="thin"))
    if options.localizer:
        add("localizer", [localizer_dataset(phantom, identity, options)])
    if options.dose_report:
        add("dose_report", [dose_report_dataset(phantom, identity, options)])
    return WrittenStudy(identity=identity, series=tuple(series))
