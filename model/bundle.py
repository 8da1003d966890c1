"""The weight bundle: a folder of Keras weights and the manifest that says how to use them.

A bundle holds ``manifest.json`` and, per cross-validation fold, one slice CNN and one
sequence model weights file (``fold0_slice_cnn.weights.h5``, ``fold0_sequence.weights.h5``,
...); a single model is a one-fold bundle. The manifest records everything needed to
rebuild the networks and to interpret their output: the preprocessing and network configs,
the thresholds and where they came from, what the models were trained on and how well they
did, the package versions, and a sha256 for every file. Loading checks the format version
and every hash before any weight is read, so a truncated copy or an edited file is refused
with its name.

This module imports neither TensorFlow nor Keras; :meth:`Bundle.build_models` imports
:mod:`model.network` when called.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
"""The manifest format this code reads and writes."""

MANIFEST = "manifest.json"

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_REQUIRED = (
    "format_version",
    "name",
    "version",
    "trained",
    "preprocess",
    "network",
    "thresholds",
    "folds",
    "files",
)


class BundleError(ValueError):
    """A bundle cannot be written or used; the message names the file and what is wrong."""


@dataclass(frozen=True)
class Threshold:
    """A decision threshold and how it was chosen (for example "Youden on out-of-fold")."""

    value: float
    provenance: str

    def to_dict(self) -> dict[str, Any]:
        """Return the threshold as a JSON-ready mapping."""
        return {"value": self.value, "provenance": self.provenance}


@dataclass(frozen=True)
class FoldFiles:
    """The two weight files of one fold."""

    fold: int
    slice_cnn: str
    sequence: str


@dataclass(frozen=True)
class Bundle:
    """A loaded, verified bundle: its manifest and where its files are.

    Parameters
    ----------
    path : Path
        The bundle folder.
    manifest : dict
        The parsed ``manifest.json``.
    manifest_sha256 : str
        Hash of ``manifest.json``; it covers every file's hash, so it identifies the whole
        bundle. Results record it.
    """

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    folds: tuple[FoldFiles, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        """The bundle's name."""
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        """The bundle's version."""
        return str(self.manifest["version"])

    @property
    def trained(self) -> bool:
        """False for bundles of untrained weights (``init-bundle``), which mean nothing."""
        return bool(self.manifest["trained"])

    @property
    def precision(self) -> str:
        """The CNN's default compute precision (``float32``, ``bfloat16`` or ``float16``)."""
        return str(self.manifest.get("precision", "float32"))

    @property
    def thresholds(self) -> dict[str, Threshold]:
        """``stack`` and ``slice`` thresholds."""
        return {
            key: Threshold(float(value["value"]), str(value.get("provenance", "")))
            for key, value in self.manifest["thresholds"].items()
        }

    def calibrators(self) -> dict[str, Any]:
        """``stack`` and ``slice`` :class:`~model.calibration.Calibrator`; identity if none.

        Bundles written before calibration existed have no ``calibration`` field, and
        their probabilities pass through unchanged.
        """
        from model.calibration import IDENTITY, Calibrator

        stored = self.manifest.get("calibration") or {}
        return {
            key: Calibrator.from_dict(stored[key]) if key in stored else IDENTITY
            for key in ("stack", "slice")
        }

    def network_config(self) -> Any:
        """Return the :class:`~model.network.NetworkConfig` (imports TensorFlow)."""
        from model.network import NetworkConfig

        return NetworkConfig.from_dict(self.manifest["network"])

    def preprocess_config(self) -> Any:
        """Return the :class:`~model.preprocess.PreprocessConfig` the models were trained on."""
        from model.preprocess import PreprocessConfig

        return PreprocessConfig.from_dict(self.manifest["preprocess"])

    def build_models(self, precision: str | None = None) -> list[tuple[Any, Any]]:
        """Build each fold's (slice CNN, sequence model) and load its weights.

        Parameters
        ----------
        precision : str, optional
            Compute precision of the slice CNNs; None uses the manifest's. Weights are
            stored in float32 and load into either.
        """
        from model.network import build_networks

        config = self.network_config()
        models = []
        for fold in self.folds:
            cnn, sequence = build_networks(config, precision=precision or self.precision)
            for model, name in ((cnn, fold.slice_cnn), (sequence, fold.sequence)):
                try:
                    model.load_weights(str(self.path / name))
                except (ValueError, OSError, KeyError) as err:
                    raise BundleError(
                        f"{name}: cannot be loaded into the {model.name} network that the "
                        f"manifest describes ({err})"
                    ) from err
            models.append((cnn, sequence))
        return models


def file_sha256(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Return the versions of the packages that shape the bundle's numbers."""
    versions: dict[str, str | None] = {}
    for key, dist in (
        ("tensorflow", "tensorflow"),
        ("keras", "keras"),
        ("numpy", "numpy"),
        ("pydicom", "pydicom"),
        ("project", "ctpa-triage"),
    ):
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def write_bundle(
    out_dir: str | Path,
    manifest_fields: Mapping[str, Any],
    models_per_fold: Sequence[tuple[Any, Any]],
) -> Bundle:
    """Write models and a manifest as a bundle folder, and return it loaded.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write; created if missing. Existing bundle files in it are replaced.
    manifest_fields : mapping
        At least ``name``, ``version``, ``trained``, ``preprocess``
        (``PreprocessConfig.to_dict()``), ``network`` (``NetworkConfig.to_dict()``) and
        ``thresholds`` (``{"stack": {"value", "provenance"}, "slice": {...}}``); optionally
        ``precision``, ``training`` and ``metrics``. ``format_version``, ``created``,
        ``folds``, ``files`` and ``packages`` are filled in here.
    models_per_fold : sequence of (slice CNN, sequence model)
        One pair per fold, in fold order.

    Returns
    -------
    Bundle
        The bundle as :func:`load_bundle` reads it back.
    """
    if not models_per_fold:
        raise BundleError("a bundle needs at least one (slice CNN, sequence model) pair")
    for key in ("name", "version", "trained", "preprocess", "network", "thresholds"):
        if key not in manifest_fields:
            raise BundleError(f"{MANIFEST}: the manifest needs a {key!r} field")
    _check_thresholds(manifest_fields["thresholds"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    folds = []
    files: dict[str, str] = {}
    for index, (cnn, sequence) in enumerate(models_per_fold):
        cnn_name = f"fold{index}_slice_cnn.weights.h5"
        sequence_name = f"fold{index}_sequence.weights.h5"
        cnn.save_weights(str(out / cnn_name))
        sequence.save_weights(str(out / sequence_name))
        for name in (cnn_name, sequence_name):
            files[name] = file_sha256(out / name)
        folds.append({"fold": index, "slice_cnn": cnn_name, "sequence": sequence_name})

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "precision": "float32",
        "training": {},
        "metrics": {},
        **dict(manifest_fields),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "folds": folds,
        "files": files,
        "packages": package_versions(),
    }
    manifest["format_version"] = FORMAT_VERSION
    # Write then rename, so a crash never leaves a half-written manifest that looks valid.
    with tempfile.NamedTemporaryFile(
        "w", dir=out, prefix=".manifest.", suffix=".tmp", delete=False, encoding="utf-8"
    ) as handle:
        json.dump(manifest, handle, indent=2, sort_keys=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(handle.name, out / MANIFEST)
    return load_bundle(out)


def _check_thresholds(thresholds: Any) -> None:
    if not isinstance(thresholds, Mapping) or not {"stack", "slice"} <= set(thresholds):
        raise BundleError(f"{MANIFEST}: thresholds must hold 'stack' and 'slice'")
    for key in ("stack", "slice"):
        entry = thresholds[key]
        if not isinstance(entry, Mapping) or "value" not in entry or "provenance" not in entry:
            raise BundleError(f"{MANIFEST}: threshold {key!r} needs a 'value' and a 'provenance'")
        value = entry["value"]
        if not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
            raise BundleError(f"{MANIFEST}: threshold {key!r} must be in [0, 1], got {value!r}")


def _check_calibration(calibration: Any) -> None:
    from model.calibration import Calibrator

    if calibration is None:
        return
    if not isinstance(calibration, Mapping) or not set(calibration) <= {"stack", "slice"}:
        raise BundleError(f"{MANIFEST}: calibration may hold only 'stack' and 'slice'")
    for key, entry in calibration.items():
        if not isinstance(entry, Mapping):
            raise BundleError(f"{MANIFEST}: calibration {key!r} must be an object")
        try:
            Calibrator.from_dict(entry)
        except ValueError as err:
            raise BundleError(f"{MANIFEST}: calibration {key!r}: {err}") from err


def load_bundle(bundle_dir: str | Path) -> Bundle:
    """Read and verify a bundle folder; weights are loaded later by :meth:`Bundle.build_models`.

    Raises
    ------
    BundleError
        The folder or manifest is missing or unreadable, the format version is not
        :data:`FORMAT_VERSION`, a field is missing, or a listed file is missing or its
        sha256 differs. The message names the file.
    """
    path = Path(bundle_dir)
    if not path.is_dir():
        raise BundleError(f"{path}: bundle folder does not exist")
    manifest_path = path / MANIFEST
    try:
        raw = manifest_path.read_bytes()
    except FileNotFoundError:
        raise BundleError(f"{MANIFEST}: missing from {path}; this is not a bundle") from None
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BundleError(f"{MANIFEST}: not valid JSON ({err}); the bundle is corrupt") from err
    if not isinstance(manifest, dict):
        raise BundleError(f"{MANIFEST}: expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{MANIFEST}: format_version {version!r} is not supported; this code reads "
            f"version {FORMAT_VERSION} (use the matching version of the software)"
        )
    missing = [key for key in _REQUIRED if key not in manifest]
    if missing:
        raise BundleError(f"{MANIFEST}: missing fields {', '.join(missing)}")
    _check_thresholds(manifest["thresholds"])
    _check_calibration(manifest.get("calibration"))

    files = manifest["files"]
    if not isinstance(files, dict):
        raise BundleError(f"{MANIFEST}: 'files' must map file names to sha256 hashes")
    for name, expected in files.items():
        # Names come from a file someone may have edited: never let one leave the folder.
        if not _FILE_NAME.match(name) or name == MANIFEST:
            raise BundleError(f"{MANIFEST}: invalid file name {name!r} in 'files'")
        file_path = path / name
        if not file_path.is_file():
            raise BundleError(f"{name}: listed in the manifest but missing from {path}")
        found = file_sha256(file_path)
        if found != expected:
            raise BundleError(
                f"{name}: sha256 mismatch (expected {expected}, found {found}); the bundle is "
                "corrupt or was modified"
            )

    folds = []
    if not isinstance(manifest["folds"], list) or not manifest["folds"]:
        raise BundleError(f"{MANIFEST}: 'folds' must list at least one fold")
    for entry in manifest["folds"]:
        try:
            fold = FoldFiles(int(entry["fold"]), str(entry["slice_cnn"]), str(entry["sequence"]))
        except (KeyError, TypeError, ValueError) as err:
            raise BundleError(f"{MANIFEST}: malformed fold entry {entry!r}") from err
        for name in (fold.slice_cnn, fold.sequence):
            if name not in files:
                raise BundleError(f"{name}: used by fold {fold.fold} but has no sha256 in 'files'")
        folds.append(fold)
    return Bundle(
        path=path,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(raw).hexdigest(),
        folds=tuple(folds),
    )


def bundle_sha256(bundle_dir: str | Path) -> str:
    """Return the sha256 of a bundle's manifest, which identifies the whole bundle."""
    return file_sha256(Path(bundle_dir) / MANIFEST)


def init_bundle(
    out_dir: str | Path,
    *,
    backbone: str = "small",
    input_size: int | None = None,
    channels: int = 3,
    folds: int = 1,
    stack_head: str = "reference",
    num_slices: int = 96,
    seed: int = 0,
    name: str | None = None,
) -> Bundle:
    """Write a bundle of seeded, untrained weights, for tests, demos and wiring checks.

    Its manifest says ``"trained": false`` and its thresholds are 0.5 ("untrained
    default"); the predictor warns when it loads one.

    Parameters
    ----------
    out_dir : str or Path
        Folder to write.
    backbone : str
        ``small`` or ``inception_resnet_v2``.
    input_size : int, optional
        Defaults to 386 for inception_resnet_v2 and 128 for small.
    channels, folds, stack_head, num_slices, seed
        Network shape, number of folds, stack head and the seed of fold 0 (fold k uses
        ``seed + 10 k``).
    """
    from model.network import NetworkConfig, build_networks
    from model.preprocess import PreprocessConfig

    if folds < 1:
        raise BundleError(f"folds must be at least 1, got {folds}")
    size = input_size or (386 if backbone == "inception_resnet_v2" else 128)
    network = NetworkConfig(
        backbone=backbone,
        input_size=size,
        channels=channels,
        num_slices=num_slices,
        stack_head=stack_head,
        weights_init=None,
    )
    preprocess = PreprocessConfig(num_slices=num_slices, input_size=size, channels=channels)
    models = [build_networks(network, seed=seed + 10 * k) for k in range(folds)]
    untrained = {"value": 0.5, "provenance": "untrained default"}
    return write_bundle(
        out_dir,
        {
            "name": name or f"untrained-{backbone}",
            "version": "0",
            "trained": False,
            "preprocess": preprocess.to_dict(),
            "network": network.to_dict(),
            "precision": "float32",
            "thresholds": {"stack": dict(untrained), "slice": dict(untrained)},
            "training": {"note": f"untrained weights, seed {seed}"},
            "metrics": {},
        },
        models,
    )
