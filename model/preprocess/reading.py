"""Read one CT series from DICOM files into a HU volume, cranial slice first."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

# Positions closer than this along the normal are the same slice written twice.
_DUPLICATE_MM = 0.01
# Direction cosines and pixel sizes agree when within this (they are printed decimals).
_GEOMETRY_ATOL = 1e-3


class SeriesRejectedError(ValueError):
    """A series cannot be turned into model input; the message says what is wrong."""


@dataclass
class CTVolume:
    """One CT series as a HU volume, ordered cranial (superior) slice first.

    Parameters
    ----------
    hu : numpy.ndarray
        ``(slices, rows, columns)`` float32 Hounsfield units.
    positions_mm : numpy.ndarray
        Position of each slice along the slice normal, oriented so that it grows towards
        the head; strictly decreasing.
    pixel_spacing : tuple of float
        Row and column spacing in millimetres (DICOM PixelSpacing order).
    sop_instance_uids : list of str
        SOP Instance UID of each slice.
    series_instance_uid, study_instance_uid : str
        The series and its study.
    headers : list of pydicom.Dataset
        Each slice's dataset without its pixel data, in the order of ``hu``, so that
        whoever reports on the series need not read its files a second time.
    """

    hu: NDArray[np.float32]
    positions_mm: NDArray[np.float64]
    pixel_spacing: tuple[float, float]
    sop_instance_uids: list[str]
    series_instance_uid: str
    study_instance_uid: str
    headers: list[Dataset] = field(default_factory=list, repr=False)

    @property
    def spacing_mm(self) -> float:
        """Median spacing between neighbouring slices along the normal."""
        if len(self.positions_mm) < 2:
            return 0.0
        return float(np.median(-np.diff(self.positions_mm)))


def _read(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError) as err:
        raise SeriesRejectedError(f"{path} is not a readable DICOM file: {err}") from err


def _floats(ds: Dataset, keyword: str, n: int, path: Path) -> NDArray[np.float64]:
    value = ds.get(keyword)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.empty(0)
    if out.shape != (n,):
        raise SeriesRejectedError(f"{path} has no valid {keyword} ({value!r}).")
    return out


def _check_headers(datasets: list[Dataset], paths: list[Path], min_slices: int) -> None:
    """Reject what cannot be one axial CT volume, before paying for pixel decoding."""
    uids = [str(ds.get("SeriesInstanceUID", "")) for ds in datasets]
    for uid, path in zip(uids, paths, strict=True):
        if not uid:
            # pydicom reads a file cut short as the few elements before the cut, so a
            # missing Series Instance UID is what a truncated file looks like here.
            raise SeriesRejectedError(
                f"{path} has no Series Instance UID: the file is truncated or corrupt."
            )
    if len(set(uids)) > 1:
        odd = next(path for uid, path in zip(uids, paths, strict=True) if uid != uids[0])
        raise SeriesRejectedError(
            f"series has {len(set(uids))} different Series Instance UIDs: {odd} is not in "
            f"the series of {paths[0]}; pass one series."
        )
    for ds, path in zip(datasets, paths, strict=True):
        modality = ds.get("Modality", "")
        if modality != "CT":
            raise SeriesRejectedError(
                f"series is not CT: {path} has Modality {modality!r}; only CT is supported."
            )
        if "PixelData" not in ds:
            raise SeriesRejectedError(f"{path} has no pixel data; it is not an image.")
        if int(ds.get("NumberOfFrames", 1) or 1) != 1 or int(ds.get("SamplesPerPixel", 1)) != 1:
            raise SeriesRejectedError(
                f"{path} is multi-frame or colour; only single-frame greyscale CT is supported."
            )
    if len(datasets) < min_slices:
        raise SeriesRejectedError(
            f"series has {len(datasets)} slices; at least {min_slices} are needed."
        )
    first, path0 = datasets[0], paths[0]
    iop0 = _floats(first, "ImageOrientationPatient", 6, path0)
    ps0 = _floats(first, "PixelSpacing", 2, path0)
    shape0 = (first.get("Rows"), first.get("Columns"))
    for ds, path in zip(datasets[1:], paths[1:], strict=True):
        if not np.allclose(
            _floats(ds, "ImageOrientationPatient", 6, path), iop0, atol=_GEOMETRY_ATOL
        ):
            raise SeriesRejectedError(
                f"series has inconsistent orientation: ImageOrientationPatient of {path} "
                f"differs from {path0}."
            )
        if not np.allclose(_floats(ds, "PixelSpacing", 2, path), ps0, atol=_GEOMETRY_ATOL):
            raise SeriesRejectedError(
                f"series has inconsistent pixel size: PixelSpacing of {path} differs from {path0}."
            )
        if (ds.get("Rows"), ds.get("Columns")) != shape0:
            raise SeriesRejectedError(
                f"series has inconsistent image size: {path} is not {shape0[0]}x{shape0[1]}."
            )


def _superior_positions(datasets: list[Dataset], paths: list[Path]) -> NDArray[np.float64]:
    """Position of each slice along the slice normal, signed so that larger is cranial."""
    iop = _floats(datasets[0], "ImageOrientationPatient", 6, paths[0])
    normal = np.cross(iop[:3], iop[3:])
    if np.linalg.norm(normal) < 0.5:
        raise SeriesRejectedError("ImageOrientationPatient does not give two orthogonal axes.")
    # LPS: +z is superior. The normal may point either way; flip it to point to the head.
    if normal[2] < 0:
        normal = -normal
    ipp = np.stack(
        [_floats(ds, "ImagePositionPatient", 3, p) for ds, p in zip(datasets, paths, strict=True)]
    )
    return ipp @ normal


def _stored_pixels(ds: Dataset, path: Path) -> NDArray[np.integer]:
    """The stored integers of one slice; compressed syntaxes go through pylibjpeg."""
    try:
        # pydicom applies PixelRepresentation, so signed and unsigned storage both arrive
        # as the stored integers.
        return ds.pixel_array
    except Exception as err:  # decoders raise many types; all mean the same to the caller
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise SeriesRejectedError(
            f"cannot decode the pixel data of {path} (transfer syntax {syntax}): {err}"
        ) from err


def decode_file(path: Path) -> NDArray[np.integer]:
    """:func:`_stored_pixels` of a file, for a decoding process (see :func:`read_series`)."""
    return _stored_pixels(_read(path), path)


def _to_hu(ds: Dataset, stored: NDArray[np.integer]) -> NDArray[np.float32]:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    hu = stored.astype(np.float32)
    if slope != 1.0:
        hu *= np.float32(slope)
    if intercept != 0.0:
        hu += np.float32(intercept)
    return hu


def _compressed(ds: Dataset) -> bool:
    """Whether the file's transfer syntax compresses the pixel data (False if unknown:
    decoding it where it was read then names the problem, as for any file)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        return bool(syntax is not None and syntax.is_compressed)
    except ValueError:  # not a transfer syntax pydicom knows
        return False


def read_series(
    files: Sequence[str | Path], min_slices: int = 10, decoders: Executor | None = None
) -> CTVolume:
    """Read the DICOM files of one CT series into a HU volume, cranial slice first.

    Slices are ordered by their position along the slice normal, never by InstanceNumber.

    Parameters
    ----------
    files : sequence of str or Path
        Every file of the series, in any order.
    min_slices : int
        Fewer slices are rejected.
    decoders : concurrent.futures.Executor, optional
        Processes that decode compressed pixel data (JPEG-LS, JPEG 2000, ...), a slice
        each (:func:`decode_file`). The decoders hold the GIL, so threads would not help,
        and a 96-slice JPEG 2000 series takes seconds on one core. Uncompressed data is
        read here: handing it over would cost more than it saves.

    Returns
    -------
    CTVolume
        The volume, its slice positions and the SOP Instance UID of each slice.

    Raises
    ------
    SeriesRejectedError
        If the files are not one usable CT series: mixed series, non-CT, missing pixel
        data, inconsistent orientation, pixel size or image size, too few slices, duplicate
        positions, or undecodable pixel data.
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise SeriesRejectedError(f"series has 0 slices; at least {min_slices} are needed.")
    datasets = [_read(p) for p in paths]
    _check_headers(datasets, paths, min_slices)
    positions = _superior_positions(datasets, paths)
    order = np.argsort(-positions, kind="stable")
    positions = positions[order]
    gaps = -np.diff(positions)
    if (gaps < _DUPLICATE_MM).any():
        k = int(np.argmax(gaps < _DUPLICATE_MM))
        raise SeriesRejectedError(
            f"series has duplicate positions: {paths[order[k]]} and {paths[order[k + 1]]} "
            f"both lie at {positions[k]:.2f} mm along the slice normal."
        )
    first = datasets[0]
    hu = np.empty((len(paths), int(first.Rows), int(first.Columns)), dtype=np.float32)
    if decoders is not None and _compressed(first):
        # Submitted all at once, collected in order: a rejection raises at its slice.
        decoded = [decoders.submit(decode_file, paths[src]) for src in order]
        stored = (future.result() for future in decoded)
    else:
        stored = (_stored_pixels(datasets[src], paths[src]) for src in order)
    for out_index, (src, pixels) in enumerate(zip(order, stored, strict=True)):
        hu[out_index] = _to_hu(datasets[src], pixels)
        # The pixels are in `hu` now; the rest of the dataset is kept as the header.
        del datasets[src].PixelData
    spacing = _floats(first, "PixelSpacing", 2, paths[0])
    return CTVolume(
        hu=hu,
        positions_mm=positions,
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        sop_instance_uids=[str(datasets[i].SOPInstanceUID) for i in order],
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        study_instance_uid=str(first.get("StudyInstanceUID", "")),
        headers=[datasets[i] for i in order],
    )
