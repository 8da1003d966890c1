"""The predictor: one CT series in, a study probability and per-slice probabilities out.

:meth:`Predictor.load` reads and verifies a bundle and builds its networks once;
:meth:`Predictor.predict` then runs the shared preprocessing, the slice CNN encoder over
the real slices in batches, and the sequence model, for every fold, and averages the folds.

It runs on whichever Keras backend the process loaded (TensorFlow, JAX or PyTorch; see
:mod:`model.backend`), which places the work on a GPU when it sees one and on the CPU
otherwise. Nothing here imports TensorFlow unless it is that backend. On the CPU, the
thread count must be set before the backend runs its first operation, so pass
``threads`` to :meth:`Predictor.load` before anything else in the process runs the
backend (the daemon's workers do this first thing).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from numpy.typing import NDArray
from pydicom.dataset import Dataset

from model.bundle import Bundle, load_bundle
from model.parallel import available_cores, spawned_pool
from model.preprocess import PreprocessedSeries, preprocess_series

_log = structlog.get_logger(__name__)


class UntrainedBundleWarning(UserWarning):
    """The bundle holds untrained weights: its probabilities mean nothing."""


class PredictorError(ValueError):
    """The predictor cannot be set up as asked; the message says what to change."""


@dataclass
class Prediction:
    """What the model says about one series.

    Parameters
    ----------
    stack_probability : float
        Calibrated probability that the series shows pulmonary embolism: the bundle's
        stack calibrator applied to the mean over folds.
    slice_probabilities : dict of str to float
        Calibrated, per source slice, keyed by SOP Instance UID (the slice calibrator
        applied to the mean over folds; where resampling mapped several model slices to
        one source slice, the largest).
    slices_used : int
        Model slices that held image data (the rest of the slots were padding).
    sop_instance_uids : list of str
        The source slices used, cranial first, each once.
    timings : dict of str to float
        Seconds: ``read``, ``preprocess``, ``cnn``, ``sequence`` and ``total``.
    bundle : dict
        ``name``, ``version``, ``sha256`` (of the manifest) and ``trained``.
    precision : str
        Compute precision the CNN ran in.
    thresholds : dict
        The bundle's ``stack`` and ``slice`` thresholds, each ``{"value", "provenance"}``.
    series_instance_uid, study_instance_uid : str
        What was analysed.
    fold_stack_probabilities : list of float
        Each fold's raw (uncalibrated) stack probability, for a spread across the ensemble.
    raw_stack_probability : float or None
        The network's mean stack output before calibration.
    raw_slice_probabilities : dict of str to float
        The slice outputs before calibration, keyed as ``slice_probabilities``.
    device : str
        What the CNN ran on: ``CPU`` or ``cuda:N (GPU name)``.
    backend : str
        The Keras backend: ``tensorflow``, ``jax`` or ``torch``.
    headers : list of pydicom.Dataset
        The source slices' datasets without pixel data, cranial first, for a report on
        the series (left out of :meth:`to_dict`).
    series : PreprocessedSeries or None
        The model input the prediction was made on, for heat maps of it
        (:mod:`model.explain`) without preprocessing the series again (left out of
        :meth:`to_dict`).
    """

    stack_probability: float
    slice_probabilities: dict[str, float]
    slices_used: int
    sop_instance_uids: list[str]
    timings: dict[str, float]
    bundle: dict[str, Any]
    precision: str
    thresholds: dict[str, dict[str, Any]]
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    fold_stack_probabilities: list[float] = field(default_factory=list)
    raw_stack_probability: float | None = None
    raw_slice_probabilities: dict[str, float] = field(default_factory=dict)
    device: str = "CPU"
    backend: str = "tensorflow"
    headers: list[Dataset] = field(default_factory=list, repr=False)
    series: PreprocessedSeries | None = field(default=None, repr=False, compare=False)

    @property
    def positive(self) -> bool:
        """Whether the stack probability reaches the bundle's stack threshold."""
        return self.stack_probability >= float(self.thresholds["stack"]["value"])

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping of every field, plus ``positive``."""
        # Without the headers: they are not JSON, and asdict would deep-copy them.
        data = asdict(replace(self, headers=[], series=None))
        del data["headers"], data["series"]
        data["positive"] = self.positive
        return data


def configure_threads(threads: int | None) -> None:
    """Set the backend's CPU threads per operation; call before it runs any operation.

    Parameters
    ----------
    threads : int or None
        Threads for one operation (intra-op, which the convolutions use). None leaves
        the backend's default, one per core.

    Warns
    -----
    RuntimeWarning
        TensorFlow had already started with another count, which can no longer change;
        or the backend is JAX, whose CPU thread pool cannot be sized from Python.
    """
    if threads is None:
        return
    if threads < 1:
        raise PredictorError(f"threads must be at least 1, got {threads}")
    import keras

    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        torch.set_num_threads(threads)
        return
    if backend != "tensorflow":
        warnings.warn(
            f"the {backend} backend sizes its own CPU thread pool; threads={threads} is not "
            "applied",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == threads:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        # One op at a time: the CNN is a chain of large convolutions, and a second
        # concurrent op would only take cores from the one running.
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        warnings.warn(
            f"TensorFlow was already running, so its thread count stays as it was; to use "
            f"{threads} threads, load the predictor before anything else uses TensorFlow",
            RuntimeWarning,
            stacklevel=3,
        )


class Predictor:
    """Runs a bundle's ensemble on CT series; build it with :meth:`load`.

    Parameters
    ----------
    bundle : Bundle
        The verified bundle.
    models : list of (slice CNN, sequence model)
        One pair per fold, weights loaded.
    precision : str
        The CNN's compute precision.
    batch_size : int
        Slices per CNN call.
    jit_compile : bool
        Compile the CNN with XLA.
    threads : int, optional
        Threads that preprocess a series (its per-slice steps), and processes that decode
        compressed pixel data; None uses every core this process may run on.
    """

    def __init__(
        self,
        bundle: Bundle,
        models: list[tuple[Any, Any]],
        precision: str,
        batch_size: int = 16,
        jit_compile: bool = False,
        threads: int | None = None,
    ) -> None:
        import keras

        from model.backend import describe_device
        from model.compiled import inference_function, recompiles_per_shape
        from model.network import slice_encoder

        if batch_size < 1:
            raise PredictorError(f"batch_size must be at least 1, got {batch_size}")
        self.bundle = bundle
        self.precision = precision
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        # Preprocessing is on every study's critical path, before the CNN: on a GPU host
        # it takes longer than the CNN unless the cores share it.
        self.preprocess_threads = threads or available_cores()
        # Compressed pixel data is decoded in processes (the decoders hold the GIL); they
        # start with the first compressed series and serve the predictor's lifetime.
        self._decoders = spawned_pool(self.preprocess_threads)
        self.preprocess_config = bundle.preprocess_config()
        self.network_config = bundle.network_config()
        self.calibrators = bundle.calibrators()
        self.backend = keras.backend.backend()
        self.device = describe_device()
        # Where every new batch length costs a compilation, the last, shorter batch of
        # each study is padded to the full batch, so that one program serves them all.
        self._pad_batches = recompiles_per_shape(jit_compile)
        size, channels = self.network_config.input_size, self.network_config.channels
        self._encoders = [
            inference_function(
                slice_encoder(cnn),
                jit_compile=jit_compile,
                input_shape=(None, size, size, channels),
            )
            for cnn, _ in models
        ]
        self._sequences = [inference_function(sequence) for _, sequence in models]
        self._models = models

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        *,
        precision: str | None = None,
        threads: int | None = None,
        batch_size: int = 16,
        jit_compile: bool = False,
    ) -> Predictor:
        """Verify a bundle and build its networks, once per process.

        Parameters
        ----------
        bundle_dir : str or Path
            The bundle folder.
        precision : str, optional
            ``float32``, ``bfloat16`` or ``float16``; None uses the bundle's setting.
        threads : int, optional
            CPU threads per operation (see :func:`configure_threads`), and the threads
            and decoding processes that preprocess a series; must be given before
            TensorFlow has run anything in this process. None: the backend's default, and
            every core for preprocessing.
        batch_size : int
            Slices per CNN call (16 by default).
        jit_compile : bool
            TensorFlow only: compile the CNN with XLA (JAX always compiles).

        Raises
        ------
        BundleError
            The bundle is missing, corrupt, of another format version, or its weights do
            not fit the networks its manifest describes.
        """
        from model.network import PRECISIONS

        configure_threads(threads)
        bundle = load_bundle(bundle_dir)
        chosen = precision or bundle.precision
        if chosen not in PRECISIONS:
            raise PredictorError(
                f"unknown precision {chosen!r}; expected one of {', '.join(PRECISIONS)}"
            )
        if not bundle.trained:
            warnings.warn(
                f"bundle {bundle.name!r} at {bundle.path} holds untrained weights "
                '("trained": false); its probabilities mean nothing',
                UntrainedBundleWarning,
                stacklevel=2,
            )
        models = bundle.build_models(chosen)
        _log.info(
            "bundle_loaded",
            bundle=bundle.name,
            version=bundle.version,
            sha256=bundle.manifest_sha256,
            trained=bundle.trained,
            folds=len(models),
            precision=chosen,
        )
        predictor = cls(
            bundle,
            models,
            chosen,
            batch_size=batch_size,
            jit_compile=jit_compile,
            threads=threads,
        )
        predictor.warmup()
        return predictor

    @property
    def slice_cnns(self) -> list[Any]:
        """Each fold's slice CNN, the weights the predictor runs (for :mod:`model.explain`)."""
        return [cnn for cnn, _ in self._models]

    def warmup(self) -> None:
        """Trace (and with XLA, compile) every fold's functions on blank input.

        The first call of a traced function costs seconds; paying it at load keeps it out
        of the first study's time. It also checks the outputs, so that a backend that
        computes garbage in this precision fails at start-up, not on every study.

        Raises
        ------
        PredictorError
            The networks gave NaN or infinity.
        """
        config = self.network_config
        blank = np.zeros((1, config.input_size, config.input_size, config.channels), np.float32)
        encodings = np.zeros((1, config.num_slices, config.encoding_dim), np.float32)
        mask = np.zeros((1, config.num_slices), bool)
        mask[0, 0] = True
        for fold, sequence in enumerate(self._sequences):
            encoded = self.encode(blank, fold)
            outputs = sequence({"encodings": encodings, "mask": mask})
            self._require_finite(encoded, outputs["stack"], outputs["slice"])

    def _require_finite(self, *arrays: Any) -> None:
        """Raise if the networks gave NaN or infinity, which no weights here should.

        A NaN stack probability compares below every threshold: unchecked, a broken
        kernel would report every study as negative. (XLA's CPU compiler in jaxlib 0.11
        does this to the compact CNN in bfloat16, for one.)
        """
        if all(np.isfinite(np.asarray(a, dtype=np.float32)).all() for a in arrays):
            return
        raise PredictorError(
            f"the networks gave non-finite outputs in {self.precision} on the {self.backend} "
            f"backend ({self.device}): its kernels mishandle this model in that precision "
            "here; run it in float32 (model.precision, or --precision float32)"
        )

    def predict(self, files: Sequence[str | Path]) -> Prediction:
        """Preprocess one series and run the ensemble on it.

        Parameters
        ----------
        files : sequence of str or Path
            Every DICOM file of the series.

        Raises
        ------
        SeriesRejectedError
            The files are not one usable CT series.
        PredictorError
            The networks gave NaN or infinity (never a probability that means nothing).
        """
        start = time.perf_counter()
        series = self.preprocess(files)
        prediction = self.predict_preprocessed(series)
        prediction.timings["read"] = series.timings.get("read", 0.0)
        prediction.timings["preprocess"] = series.timings.get("preprocess", 0.0)
        prediction.timings["total"] = time.perf_counter() - start
        return prediction

    def preprocess(self, files: Sequence[str | Path]) -> PreprocessedSeries:
        """The bundle's preprocessing of one series, on the predictor's threads.

        Raises
        ------
        SeriesRejectedError
            The files are not one usable CT series.
        PredictorError
            A process decoding the pixel data died (the next call starts new ones).
        """
        try:
            return preprocess_series(
                files, self.preprocess_config, self.preprocess_threads, self._decoders
            )
        except BrokenProcessPool as err:
            # A decoding process died (a decoder crashed on this data, or the system
            # killed it): the pool serves nothing more, so the next series gets a new one.
            assert self._decoders is not None
            self._decoders.shutdown(wait=False, cancel_futures=True)
            self._decoders = spawned_pool(self.preprocess_threads)
            raise PredictorError(f"a process decoding the pixel data died: {err}") from err

    def encode(self, volume: NDArray[np.float32], fold: int = 0) -> NDArray[np.float32]:
        """Return one fold's slice encodings of a stack of images, in CNN batches."""
        if len(volume) == 0:
            return np.zeros((0, self.network_config.encoding_dim), np.float32)
        from model.compiled import run_in_batches

        encoded = run_in_batches(
            self._encoders[fold], volume, self.batch_size, pad=self._pad_batches
        )
        return np.asarray(encoded, dtype=np.float32)

    def predict_preprocessed(self, series: PreprocessedSeries) -> Prediction:
        """Run the ensemble on an already preprocessed series (timings: cnn, sequence)."""
        expected = (
            self.network_config.num_slices,
            self.network_config.input_size,
            self.network_config.input_size,
            self.network_config.channels,
        )
        if series.volume.shape != expected:
            raise PredictorError(
                f"preprocessed volume has shape {series.volume.shape}, but the bundle's "
                f"networks take {expected}"
            )
        mask = np.asarray(series.mask, dtype=bool)
        real = np.flatnonzero(mask)
        images = np.ascontiguousarray(series.volume[real], dtype=np.float32)
        cnn_s = sequence_s = 0.0
        stacks: list[float] = []
        slice_sum = np.zeros(len(mask), np.float64)
        for fold, sequence in enumerate(self._sequences):
            t0 = time.perf_counter()
            encodings = np.zeros((len(mask), self.network_config.encoding_dim), dtype=np.float32)
            encodings[real] = self.encode(images, fold)
            t1 = time.perf_counter()
            # Checked here too: the sequence model can turn NaN encodings into plausible
            # probabilities (0.5 per slice, on TensorFlow).
            self._require_finite(encodings)
            outputs = sequence({"encodings": encodings[None], "mask": mask[None]})
            stacks.append(float(np.asarray(outputs["stack"])[0, 0]))
            slice_sum += np.asarray(outputs["slice"], dtype=np.float64)[0]
            t2 = time.perf_counter()
            cnn_s += t1 - t0
            sequence_s += t2 - t1
        self._require_finite(stacks, slice_sum)
        slice_mean = slice_sum / len(self._sequences)
        # Calibration is monotone, so the largest raw value per SOP stays the largest.
        slice_calibrated = self.calibrators["slice"].apply(slice_mean)
        raw_stack = float(np.mean(stacks))

        per_sop: dict[str, float] = {}
        raw_per_sop: dict[str, float] = {}
        order: list[str] = []
        for index in real:
            uid = series.sop_instance_uids[index]
            if uid is None:
                continue
            value, raw = float(slice_calibrated[index]), float(slice_mean[index])
            if uid not in per_sop:
                order.append(uid)
                per_sop[uid], raw_per_sop[uid] = value, raw
            else:
                per_sop[uid] = max(per_sop[uid], value)
                raw_per_sop[uid] = max(raw_per_sop[uid], raw)
        bundle = self.bundle
        return Prediction(
            stack_probability=float(self.calibrators["stack"].apply(raw_stack)),
            slice_probabilities=per_sop,
            raw_stack_probability=raw_stack,
            raw_slice_probabilities=raw_per_sop,
            slices_used=len(real),
            sop_instance_uids=order,
            timings={
                "read": 0.0,
                "preprocess": 0.0,
                "cnn": cnn_s,
                "sequence": sequence_s,
                "total": cnn_s + sequence_s,
            },
            bundle={
                "name": bundle.name,
                "version": bundle.version,
                "sha256": bundle.manifest_sha256,
                "trained": bundle.trained,
            },
            precision=self.precision,
            thresholds={key: t.to_dict() for key, t in bundle.thresholds.items()},
            series_instance_uid=series.series_instance_uid,
            study_instance_uid=series.study_instance_uid,
            fold_stack_probabilities=stacks,
            device=self.device,
            backend=self.backend,
            headers=series.headers,
            series=series,
        )
