"""Preprocessing: DICOM series in, fixed-size model input and slice-to-SOP mapping out."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from model.preprocess import (
    CTVolume,
    PreprocessConfig,
    PreprocessedSeries,
    SeriesRejectedError,
    preprocess_series,
    preprocess_volume,
    read_series,
)
from model.preprocess.transform import lung_window
from model.synthetic import Phantom, StudyParams, WriteOptions, generate_study, write_study

SMALL = PreprocessConfig(input_size=64, num_slices=32, min_slices=4)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return generate_study(5, StudyParams(positive=True, n_slices=20, matrix=128))


def _write(phantom: Phantom, root: Path, **options: object) -> list[Path]:
    return list(write_study(phantom, root, WriteOptions(**options)).axial.paths)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def reference(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> PreprocessedSeries:
    return preprocess_series(_write(phantom, tmp_path_factory.mktemp("ref")), SMALL)


def _assert_same(a: PreprocessedSeries, b: PreprocessedSeries) -> None:
    assert np.array_equal(a.volume, b.volume)
    assert np.array_equal(a.mask, b.mask)
    assert a.sop_instance_uids == b.sop_instance_uids


# --- configuration ---------------------------------------------------------------------


def test_config_defaults_round_trip_through_json() -> None:
    config = PreprocessConfig()
    assert (config.num_slices, config.slice_spacing_mm, config.input_size, config.channels) == (
        96,
        3.0,
        386,
        3,
    )
    assert (config.window_center, config.window_width, config.segment) == (100.0, 700.0, True)
    restored = PreprocessConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert PreprocessConfig.from_dict({"input_size": 64}).input_size == 64


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="window_centre"):
        PreprocessConfig.from_dict({"window_centre": 40})
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        PreprocessConfig(channels=2)
    with pytest.raises(ValueError, match="input_size must be at least 1"):
        PreprocessConfig(input_size=0)
    with pytest.raises(ValueError, match="segment must be true or false"):
        PreprocessConfig.from_dict({"segment": "yes"})


# --- ordering and storage ----------------------------------------------------------------


def test_output_is_cranial_first_and_maps_to_source_slices(
    phantom: Phantom, tmp_path: Path, reference: PreprocessedSeries
) -> None:
    written = write_study(phantom, tmp_path).axial
    n = phantom.n_slices
    # 20 slices over the phantom's range are coarser than 3 mm, so they are resampled;
    # every output slice maps to a source slice, the first to the most cranial one.
    assert reference.mask.sum() > 0
    assert reference.sop_instance_uids[0] == written.sop_instance_uids[0]
    real = [u for u in reference.sop_instance_uids if u is not None]
    order = [written.sop_instance_uids.index(u) for u in real]
    assert order == sorted(order) and order[-1] <= n - 1
    assert np.all(np.diff(reference.slice_positions_mm[reference.mask]) < 0)


def test_headers_come_back_cranial_first_without_pixel_data(
    phantom: Phantom, tmp_path: Path
) -> None:
    written = write_study(phantom, tmp_path).axial
    # Reversed on purpose: the headers follow the anatomy, not the order of the files.
    volume = read_series(list(reversed(written.paths)))
    assert [str(h.SOPInstanceUID) for h in volume.headers] == volume.sop_instance_uids
    assert volume.sop_instance_uids == list(written.sop_instance_uids)
    assert all("PixelData" not in h for h in volume.headers)
    assert volume.headers[0].StudyInstanceUID == volume.study_instance_uid


@pytest.mark.parametrize(
    ("instance_order", "file_names"),
    [("feet_first", "sop_uid"), ("head_first", "shuffled"), ("feet_first", "shuffled")],
)
def test_instance_numbers_and_file_order_do_not_change_the_output(
    phantom: Phantom,
    tmp_path: Path,
    reference: PreprocessedSeries,
    instance_order: str,
    file_names: str,
) -> None:
    files = _write(phantom, tmp_path, instance_order=instance_order, file_names=file_names)
    _assert_same(preprocess_series(files[::-1], SMALL), reference)
    rng = np.random.default_rng(0)
    shuffled = [files[i] for i in rng.permutation(len(files))]
    _assert_same(preprocess_series(shuffled, SMALL), reference)


def test_a_normal_pointing_to_the_feet_still_gives_cranial_first(
    phantom: Phantom, tmp_path: Path
) -> None:
    written = write_study(phantom, tmp_path).axial
    for path in written.paths:
        ds = dcmread(path)
        # Columns running right-to-left flip the normal to point to the feet.
        ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
        ds.save_as(path)
    volume = read_series(written.paths, min_slices=4)
    assert volume.sop_instance_uids == list(written.sop_instance_uids)
    assert np.all(np.diff(volume.positions_mm) < 0)


@pytest.mark.parametrize(
    ("syntax", "signed", "intercept"),
    [
        ("explicit", True, None),
        ("implicit", True, -1024),
        ("rle", False, None),
        ("jpeg-ls", True, None),
        ("jpeg2000", False, None),
    ],
)
def test_storage_and_compression_do_not_change_the_output(
    phantom: Phantom,
    tmp_path: Path,
    reference: PreprocessedSeries,
    syntax: str,
    signed: bool,
    intercept: int | None,
) -> None:
    files = _write(
        phantom, tmp_path, transfer_syntax=syntax, signed=signed, rescale_intercept=intercept
    )
    _assert_same(preprocess_series(files, SMALL), reference)


def test_hu_are_read_exactly(phantom: Phantom, tmp_path: Path) -> None:
    for i, (signed, syntax) in enumerate([(False, "explicit"), (True, "jpeg-ls")]):
        files = _write(phantom, tmp_path / str(i), signed=signed, transfer_syntax=syntax)
        volume = read_series(files, min_slices=4)
        assert volume.hu.dtype == np.float32
        assert np.array_equal(volume.hu, phantom.hu.astype(np.float32))


# --- slice spacing -----------------------------------------------------------------------


def _volume(hu: np.ndarray, spacing_mm: float) -> CTVolume:
    positions = 100.0 - spacing_mm * np.arange(len(hu), dtype=np.float64)
    n = len(hu)
    return CTVolume(
        hu=hu.astype(np.float32),
        positions_mm=positions,
        pixel_spacing=(1.0, 1.0),
        sop_instance_uids=[f"1.2.3.{k}" for k in range(n)],
        series_instance_uid="1.2.3",
        study_instance_uid="1.2",
    )


def test_a_1_5_mm_series_lands_on_3_mm(tmp_path: Path) -> None:
    phantom = generate_study(8, StudyParams(slice_thickness=1.5, matrix=64))
    files = _write(phantom, tmp_path)
    config = PreprocessConfig(input_size=32, num_slices=256, segment=False, min_slices=4)
    result = preprocess_series(files, config)
    assert result.source_spacing_mm == pytest.approx(1.5, abs=0.01)
    positions = result.slice_positions_mm[result.mask]
    assert np.allclose(np.diff(positions), -3.0)
    assert result.mask.sum() == (phantom.n_slices - 1) // 2 + 1
    # Each 3 mm slice lies on an even source slice, and maps to it.
    uids = write_study(phantom, tmp_path / "again").axial.sop_instance_uids
    real = [u for u in result.sop_instance_uids if u is not None]
    assert real == list(uids[::2][: len(real)])


def test_resampling_interpolates_and_maps_to_the_nearest_slice() -> None:
    rng = np.random.default_rng(1)
    hu = rng.uniform(-300, 500, size=(25, 16, 16))
    config = PreprocessConfig(input_size=16, num_slices=30, segment=False, min_slices=4)
    result = preprocess_volume(_volume(hu, 2.5), config)
    n = int(result.mask.sum())
    assert n == int(24 * 2.5 // 3) + 1
    source = 1.2 * np.arange(n)  # 3 mm in units of 2.5 mm
    nearest = np.rint(source).astype(int)
    assert result.sop_instance_uids[:n] == [f"1.2.3.{k}" for k in nearest]
    lower = np.floor(source).astype(int)
    w = (source - lower)[:, None, None]
    upper = np.minimum(lower + 1, 24)
    expected = np.clip(((1 - w) * hu[lower] + w * hu[upper] + 250.0) / 700.0, 0, 1)
    assert np.allclose(result.volume[:n, ..., 0], expected, atol=1e-5)


def test_spacing_within_tolerance_is_not_resampled() -> None:
    hu = np.zeros((12, 16, 16))
    config = PreprocessConfig(input_size=16, num_slices=8, segment=False, min_slices=4)
    result = preprocess_volume(_volume(hu, 3.1), config)
    assert result.sop_instance_uids == [f"1.2.3.{k}" for k in range(8)]


def test_short_series_are_padded_and_masked_long_ones_keep_the_top() -> None:
    hu = np.full((10, 16, 16), 100.0)
    config = PreprocessConfig(input_size=16, num_slices=16, segment=False, min_slices=4)
    short = preprocess_volume(_volume(hu, 3.0), config)
    assert short.mask.tolist() == [True] * 10 + [False] * 6
    assert short.sop_instance_uids[10:] == [None] * 6
    assert not short.volume[10:].any()
    assert np.allclose(short.volume[:10], 0.5)  # HU 100 is the window centre
    long = preprocess_volume(_volume(np.zeros((40, 16, 16)), 3.0), config)
    assert long.mask.all()
    assert long.sop_instance_uids == [f"1.2.3.{k}" for k in range(16)]


def test_a_single_slice_is_accepted_when_allowed() -> None:
    config = PreprocessConfig(input_size=16, num_slices=4, segment=False, min_slices=1)
    result = preprocess_volume(_volume(np.zeros((1, 16, 16)), 3.0), config)
    assert result.mask.tolist() == [True, False, False, False]


def test_window_maps_w700_l100_to_unit_range() -> None:
    hu = np.zeros((6, 4, 4))
    hu[:, 0], hu[:, 1], hu[:, 2], hu[:, 3] = -1000.0, -250.0, 450.0, 2000.0
    config = PreprocessConfig(input_size=4, num_slices=6, segment=False, min_slices=4, channels=1)
    out = preprocess_volume(_volume(hu, 3.0), config).volume
    assert out.shape == (6, 4, 4, 1)
    assert np.allclose(out[:, :, :, 0].mean(axis=(0, 2)), [0.0, 0.0, 1.0, 1.0])


def test_default_config_gives_the_model_input_shape(tmp_path: Path) -> None:
    phantom = generate_study(2, StudyParams(n_slices=40, matrix=512))
    result = preprocess_series(_write(phantom, tmp_path), PreprocessConfig())
    assert result.volume.shape == (96, 386, 386, 3)
    assert result.volume.dtype == np.float32
    assert result.volume.min() >= 0.0 and result.volume.max() <= 1.0
    assert np.array_equal(result.volume[..., 0], result.volume[..., 2])
    # 40 slices over the phantom's range are thicker than 3 mm: resampled, then clipped.
    extent = 39 * result.source_spacing_mm
    assert int(result.mask.sum()) == min(96, int(extent // 3.0) + 1)
    assert len(result.sop_instance_uids) == 96
    assert set(result.timings) == {"read", "preprocess"}
    assert result.series_instance_uid and result.study_instance_uid
    assert result.source_slices == 40


# --- rejections ----------------------------------------------------------------------------


@pytest.fixture()
def series(tmp_path: Path) -> list[Path]:
    phantom = generate_study(3, StudyParams(n_slices=12, matrix=32))
    return _write(phantom, tmp_path / "a")


def _edit(path: Path, **changes: object) -> None:
    ds = dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def test_rejects_mixed_series(series: list[Path], tmp_path: Path) -> None:
    other = _write(generate_study(4, StudyParams(n_slices=12, matrix=32)), tmp_path / "b")
    with pytest.raises(SeriesRejectedError, match="2 different Series Instance UIDs"):
        read_series([*series, other[0]])


def test_a_truncated_file_is_named_as_such(series: list[Path]) -> None:
    """Issue 12: a cut file read as an almost empty dataset was reported as a second series."""
    data = series[5].read_bytes()
    series[5].write_bytes(data[: data.index(b"\x20\x00\x0d\x00")])  # cut before Study UID
    with pytest.raises(SeriesRejectedError) as info:
        read_series(series)
    assert str(series[5]) in str(info.value)
    assert "truncated" in str(info.value)
    assert "different Series" not in str(info.value)


def test_rejects_non_ct(series: list[Path]) -> None:
    _edit(series[3], Modality="MR")
    with pytest.raises(SeriesRejectedError, match=r"not CT.*'MR'"):
        read_series(series)


def test_rejects_missing_pixel_data(series: list[Path]) -> None:
    _edit(series[5], PixelData=None)
    with pytest.raises(SeriesRejectedError, match="no pixel data"):
        read_series(series)


def test_rejects_inconsistent_orientation(series: list[Path]) -> None:
    _edit(series[2], ImageOrientationPatient=[1, 0, 0, 0, 0.9, 0.43589])
    with pytest.raises(SeriesRejectedError, match="inconsistent orientation"):
        read_series(series)


def test_rejects_inconsistent_pixel_size(series: list[Path]) -> None:
    _edit(series[7], PixelSpacing=[0.5, 0.5])
    with pytest.raises(SeriesRejectedError, match="inconsistent pixel size"):
        read_series(series)


def test_rejects_too_few_slices(series: list[Path]) -> None:
    with pytest.raises(SeriesRejectedError, match="has 12 slices; at least 20"):
        read_series(series, min_slices=20)
    with pytest.raises(SeriesRejectedError, match="has 12 slices; at least 13"):
        preprocess_series(series, PreprocessConfig(min_slices=13))


def test_rejects_duplicate_positions(series: list[Path]) -> None:
    copy = series[0].with_name("copy.dcm")
    shutil.copy(series[4], copy)
    _edit(copy, SOPInstanceUID=generate_uid())
    with pytest.raises(SeriesRejectedError, match="duplicate positions"):
        read_series([*series, copy])


def test_rejects_files_that_are_not_dicom(series: list[Path]) -> None:
    series[1].write_bytes(b"not a dicom file")
    with pytest.raises(SeriesRejectedError, match="not a readable DICOM file"):
        read_series(series)


def test_rejection_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="0 slices"):
        read_series([])


def test_crop_fills_the_input_with_the_chest(phantom: Phantom, tmp_path: Path) -> None:
    files = _write(phantom, tmp_path)
    config = PreprocessConfig(input_size=64, channels=1)
    whole = preprocess_series(files, config)
    cropped = preprocess_series(files, replace(config, crop=True))
    assert cropped.volume.shape == whole.volume.shape
    assert np.array_equal(cropped.mask, whole.mask)
    assert cropped.sop_instance_uids == whole.sop_instance_uids

    def chest_width(volume: np.ndarray) -> int:
        columns = np.flatnonzero(volume[..., 0].max(axis=(0, 1)) > 0)
        return int(columns[-1] - columns[0] + 1)

    # The cavity spans most of the cropped input's width, much less of the whole image's.
    assert chest_width(cropped.volume) >= 0.85 * 64
    assert chest_width(cropped.volume) > 1.2 * chest_width(whole.volume)
    with pytest.raises(ValueError, match="crop needs segment"):
        PreprocessConfig(segment=False, crop=True)


# --- which slices: the lung window -------------------------------------------------------


def _neck_to_abdomen(n: int = 150, neck: int = 50, chest: int = 80) -> np.ndarray:
    """A long scan: ``neck`` slices of body without lungs, then ``chest`` with two lungs
    (and a bright artery in each), then abdomen; drawn on 64 pixels, returned on 128 (1 mm
    pixels: the segmentation's 3 mm opening needs a body wall thicker than a few pixels)."""
    yy, xx = np.mgrid[:64, :64]
    body = (yy - 32) ** 2 / 28**2 + (xx - 32) ** 2 / 30**2 <= 1
    lungs = ((yy - 32) ** 2 / 14**2 + (xx - 20) ** 2 / 7**2 <= 1) | (
        (yy - 32) ** 2 / 14**2 + (xx - 44) ** 2 / 7**2 <= 1
    )
    arteries = ((yy - 32) ** 2 + (xx - 20) ** 2 <= 4) | ((yy - 32) ** 2 + (xx - 44) ** 2 <= 4)
    hu = np.full((n, 64, 64), -1000.0, np.float32)
    hu[:, body] = 40.0
    for k in range(neck, neck + chest):
        hu[k, lungs] = -850.0
        hu[k, arteries] = 400.0
    return np.repeat(np.repeat(hu, 2, axis=1), 2, axis=2)


def test_lung_window_holds_the_most_cavity_and_centres_it() -> None:
    area = np.zeros(150, dtype=np.int64)
    area[50:130] = 10
    assert lung_window(area, 96) == 42  # the 80 chest slices centred: 8 either side
    area[50:60] = 1  # a narrow apex, wide bases: a short window keeps the bases (60-129)
    assert lung_window(area, 60) == 65
    assert lung_window(np.zeros(150, dtype=np.int64), 96) == 0  # no cavity: the top
    assert lung_window(area[:90], 96) == 0  # it all fits


def test_a_long_scan_keeps_its_low_emboli_with_the_lung_window() -> None:
    hu = _neck_to_abdomen()
    low = 125  # the only embolus: a filling defect in the right artery near the base
    hu[low, 62:68, 38:44] = 20.0
    volume = _volume(hu, 3.0)
    top = PreprocessConfig(input_size=64, segment=True, min_slices=4)
    lungs = replace(top, z_window="lungs")
    assert f"1.2.3.{low}" not in preprocess_volume(volume, top).sop_instance_uids
    result = preprocess_volume(volume, lungs)
    # The window covers the chest (slices 50-129), centred: 42 to 137.
    assert result.mask.all()
    assert result.sop_instance_uids == [f"1.2.3.{k}" for k in range(42, 138)]
    assert np.allclose(result.slice_positions_mm, 100.0 - 3.0 * np.arange(42, 138))
    # The slice-to-SOP mapping is honest: the slot named for the embolus shows it.
    slot = result.sop_instance_uids.index(f"1.2.3.{low}")
    unit = (20.0 + 250.0) / 700.0  # the defect's HU in the PE window
    assert np.isclose(result.volume[slot, 32, 20, 0], unit, atol=1e-3)
    assert not np.isclose(result.volume[slot - 1, 32, 20, 0], unit, atol=1e-3)
    # A resampled long scan too: 1.5 mm slices land on 3 mm inside the same window.
    fine = np.repeat(hu, 2, axis=0)
    result = preprocess_volume(_volume(fine, 1.5), lungs)
    assert f"1.2.3.{2 * low}" in result.sop_instance_uids


@pytest.mark.parametrize(
    ("layout", "windows"),
    [
        ("pe_lung_mediastinum", ((100, 700), (-600, 1500), (40, 400))),
        ("pe_clot_mediastinum", ((100, 700), (50, 150), (40, 400))),
    ],
)
def test_three_ct_windows_as_channels(layout: str, windows: tuple[tuple[int, int], ...]) -> None:
    hu = np.zeros((6, 4, 4))
    hu[:, 0], hu[:, 1], hu[:, 2], hu[:, 3] = -1000.0, -600.0, 40.0, 400.0
    config = PreprocessConfig(
        input_size=4, num_slices=6, segment=False, min_slices=4, channel_windows=layout
    )
    out = preprocess_volume(_volume(hu, 3.0), config).volume
    rows = out.mean(axis=(0, 2))  # (row, channel)
    expected = [[(h - c + w / 2) / w for c, w in windows] for h in (-1000.0, -600.0, 40.0, 400.0)]
    assert np.allclose(rows, np.clip(expected, 0, 1), atol=1e-5)
    if layout == "pe_clot_mediastinum":
        # Clot (40 HU) is mid-grey in the clot window; air and enhanced blood saturate.
        assert rows[2, 1] == pytest.approx(65 / 150, abs=1e-5)
        assert rows[0, 1] == 0.0 and rows[3, 1] == 1.0
    with pytest.raises(ValueError, match="needs channels: 3"):
        PreprocessConfig(channels=1, channel_windows=layout)
    with pytest.raises(ValueError, match="z_window"):
        PreprocessConfig(z_window="middle")


def test_neighbouring_slices_as_channels() -> None:
    # Slice k is uniform at 10 * k HU: channel 0 shows the slice above, 1 itself, 2 below.
    hu = np.repeat(10.0 * np.arange(6), 16).reshape(6, 4, 4)
    config = PreprocessConfig(
        input_size=4, num_slices=8, segment=False, min_slices=4, channel_windows="pe_neighbours"
    )
    out = preprocess_volume(_volume(hu, 3.0), config)
    unit = (10.0 * np.arange(6) + 250.0) / 700.0  # the PE window of each slice
    above = unit[[0, 0, 1, 2, 3, 4]]  # the first slice stands in for its missing neighbour
    below = unit[[1, 2, 3, 4, 5, 5]]
    assert np.allclose(out.volume[:6].mean(axis=(1, 2)), np.stack([above, unit, below], 1))
    # Padding stays empty, and the slice-to-SOP mapping is the PE channel's slice.
    assert not out.volume[6:].any()
    assert out.sop_instance_uids[:6] == [f"1.2.3.{k}" for k in range(6)]
    with pytest.raises(ValueError, match="needs channels: 3"):
        PreprocessConfig(channels=1, channel_windows="pe_neighbours")


@pytest.fixture(scope="module")
def volume(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> CTVolume:
    return read_series(_write(phantom, tmp_path_factory.mktemp("volume")))


@pytest.mark.parametrize(
    "layout", ["repeat", "pe_lung_mediastinum", "pe_lung_defect", "pe_neighbours"]
)
def test_the_input_is_the_same_on_any_number_of_threads(volume: CTVolume, layout: str) -> None:
    # The per-slice steps are shared out among threads: the edges between the threads'
    # ranges must not show (a filter reaching across slices would show them).
    config = replace(SMALL, channel_windows=layout, crop=True, defect_drop_isolated=True)
    one = preprocess_volume(volume, config, threads=1)
    assert one.volume[: int(one.mask.sum())].any()
    for threads in (2, 3, 7):
        _assert_same(one, preprocess_volume(volume, config, threads=threads))


@pytest.mark.parametrize("syntax", ["jpeg-ls", "jpeg2000"])
def test_compressed_slices_decoded_in_processes_give_the_same_volume(
    phantom: Phantom, tmp_path: Path, syntax: str
) -> None:
    from pydicom.encaps import encapsulate

    from model.parallel import spawned_pool

    files = _write(phantom, tmp_path, transfer_syntax=syntax)
    decoders = spawned_pool(2)
    assert decoders is not None
    with decoders:
        alone = read_series(files)
        shared = read_series(files, decoders=decoders)
        assert np.array_equal(alone.hu, shared.hu)
        assert alone.sop_instance_uids == shared.sop_instance_uids
        # A slice that cannot be decoded is named, wherever it was decoded.
        broken = dcmread(files[7])
        broken.PixelData = encapsulate([b"\x00" * 64])
        broken.save_as(files[7])
        for pool in (None, decoders):
            with pytest.raises(SeriesRejectedError, match="cannot decode the pixel data") as info:
                read_series(files, decoders=pool)
            assert str(files[7]) in str(info.value)


def test_an_unknown_transfer_syntax_is_rejected_with_or_without_decoding_processes(
    series: list[Path],
) -> None:
    from model.parallel import spawned_pool

    ds = dcmread(series[0])
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"  # a private syntax nobody here decodes
    ds.save_as(series[0], enforce_file_format=True)
    decoders = spawned_pool(2)
    assert decoders is not None
    with decoders:
        for pool in (None, decoders):
            with pytest.raises(SeriesRejectedError, match=r"transfer syntax 1\.2\.3\.4\.5"):
                read_series(series, min_slices=4, decoders=pool)
