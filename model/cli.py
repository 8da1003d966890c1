"""``triage-model``: the training-side command line.

synth, stats, init-bundle, predict, train, evaluate and compare. Each subcommand is one
function in :data:`SUBCOMMANDS` that adds its parser and sets the runner.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from model.cli_types import add_workers, fraction, non_negative_int, positive_int
from model.quiet import quiet_keras_backend
from model.stats_cli import add_stats
from model.training.cli import add_compare, add_evaluate, add_train


def _add_synth(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from model.synthetic.difficulty import DIFFICULTIES

    p = sub.add_parser(
        "synth",
        help="write synthetic CTPA studies with weak labels, or a preview picture",
        description=(
            "Write N synthetic CTPA studies in the RSNA-STR PE layout "
            "(DIR/<StudyUID>/<SeriesUID>/<SOPUID>.dcm) with DIR/train.csv and DIR/patients.csv, "
            "or, with --preview, a montage of one study with its emboli outlined."
        ),
    )
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", type=Path, metavar="DIR", help="data set folder to write")
    target.add_argument("--preview", type=Path, metavar="OUT.png", help="write a montage PNG")
    p.add_argument("--studies", type=positive_int, default=10, metavar="N", help="default 10")
    p.add_argument(
        "--positive-fraction",
        type=fraction,
        default=0.5,
        metavar="F",
        help="fraction of studies with emboli (default 0.5)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help="default 0")
    p.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="realistic")
    p.add_argument(
        "--slices",
        type=positive_int,
        default=None,
        metavar="N",
        help="force the slice count (default: 80-160 at 3 mm, from the anatomy)",
    )
    p.add_argument("--matrix", type=positive_int, default=512, metavar="PX", help="default 512")
    p.add_argument(
        "--extra-series",
        action="store_true",
        help="add a localizer, a 1 mm reconstruction and a dose report to each study",
    )
    p.add_argument(
        "--uniform-storage",
        action="store_true",
        help="write every study as explicit VR, unsigned, head first (no scanner variation)",
    )
    add_workers(p, "generate studies in parallel; the output does not depend on it")
    p.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    from model.synthetic.dataset import write_dataset
    from model.synthetic.phantom import StudyParams, generate_study
    from model.synthetic.preview import write_preview

    if args.preview is not None:
        phantom = generate_study(
            args.seed,
            StudyParams(
                positive=True,
                difficulty=args.difficulty,
                n_slices=args.slices,
                matrix=args.matrix,
            ),
        )
        path = write_preview(phantom, args.preview)
        print(f"preview of study seed {args.seed} ({len(phantom.emboli)} emboli) written to {path}")
        return 0
    summary = write_dataset(
        args.out,
        args.studies,
        positive_fraction=args.positive_fraction,
        seed=args.seed,
        difficulty=args.difficulty,
        n_slices=args.slices,
        matrix=args.matrix,
        vary_storage=not args.uniform_storage,
        extra_series=args.extra_series,
        workers=args.workers,
    )
    print(
        f"{summary.out_dir}: {summary.studies} studies ({summary.positives} positive, "
        f"{summary.patients} patients), {summary.slices} slices "
        f"({summary.positive_slices} positive) in {summary.seconds:.1f} s"
    )
    return 0


def _add_init_bundle(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "init-bundle",
        help="write a weight bundle of seeded, untrained weights (tests, demos)",
        description=(
            'Write a bundle whose manifest says "trained": false, with thresholds 0.5. '
            "Its probabilities mean nothing; it exercises the whole pipeline."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="bundle folder")
    p.add_argument(
        "--backbone",
        choices=("small", "inception_resnet_v2"),
        default="small",
        help="default small",
    )
    p.add_argument(
        "--input-size",
        type=positive_int,
        default=None,
        metavar="N",
        help="default 386 for inception_resnet_v2, 128 for small",
    )
    p.add_argument("--channels", type=int, choices=(1, 3), default=3, help="default 3")
    p.add_argument("--folds", type=positive_int, default=1, metavar="K", help="default 1")
    p.add_argument(
        "--stack-head",
        choices=("reference", "attention"),
        default="reference",
        help="default reference",
    )
    p.add_argument("--num-slices", type=positive_int, default=96, metavar="N", help="default 96")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="S", help="default 0")
    p.set_defaults(func=_run_init_bundle)


def _run_init_bundle(args: argparse.Namespace) -> int:
    quiet_keras_backend()
    from model.bundle import init_bundle

    bundle = init_bundle(
        args.out,
        backbone=args.backbone,
        input_size=args.input_size,
        channels=args.channels,
        folds=args.folds,
        stack_head=args.stack_head,
        num_slices=args.num_slices,
        seed=args.seed,
    )
    print(
        f"{bundle.path}: untrained {args.backbone} bundle, {len(bundle.folds)} fold(s), "
        f"manifest sha256 {bundle.manifest_sha256}"
    )
    return 0


def _add_predict(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "predict",
        help="run a weight bundle on one CT series folder",
        description=(
            "Print the study probability, the decision against the bundle's threshold and "
            "the most suspicious slices; with --json, the full prediction for scripts. "
            "Runs on the Keras backend that KERAS_BACKEND names (tensorflow by default, jax, "
            "torch), on its GPU if it sees one. Errors print one line and exit 2."
        ),
    )
    p.add_argument("--bundle", type=Path, required=True, metavar="DIR", help="bundle folder")
    p.add_argument("series", type=Path, metavar="SERIES_DIR", help="folder of one series' files")
    p.add_argument("--json", action="store_true", help="print Prediction.to_dict() as JSON")
    p.add_argument(
        "--precision",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="CNN compute precision (default: the bundle's)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="CPU threads per operation and for preprocessing (default: one per core)",
    )
    p.add_argument(
        "--top",
        type=positive_int,
        default=5,
        metavar="N",
        help="slices to list in the text output (default 5)",
    )
    p.set_defaults(func=_run_predict)


@contextlib.contextmanager
def _log_warnings_to_stderr() -> Iterator[None]:
    """Send structlog's output to stderr, warnings only, unless an application set it up.

    structlog's default prints every event to stdout, which would corrupt ``--json``.
    """
    import logging

    import structlog

    if structlog.is_configured():
        yield
        return
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
    )
    try:
        yield
    finally:
        structlog.reset_defaults()


def _run_predict(args: argparse.Namespace) -> int:
    import json
    import warnings

    quiet_keras_backend()
    try:
        if not args.series.is_dir():
            raise ValueError(f"{args.series}: series folder does not exist")
        files = sorted(
            p for p in args.series.rglob("*") if p.is_file() and not p.name.startswith(".")
        )
        if not files:
            raise ValueError(f"{args.series}: series folder holds no files")
        from model.predict import Predictor

        with warnings.catch_warnings(record=True) as caught, _log_warnings_to_stderr():
            warnings.simplefilter("always")
            predictor = Predictor.load(args.bundle, precision=args.precision, threads=args.threads)
            prediction = predictor.predict(files)
    except ValueError as err:  # BundleError, SeriesRejectedError, PredictorError
        message = " ".join(str(err).split())
        print(f"triage-model predict: error: {message}", file=sys.stderr)
        return 2
    for warning in caught:
        print(f"triage-model predict: warning: {warning.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(prediction.to_dict(), indent=2))
        return 0
    threshold = prediction.thresholds["stack"]
    decision = "POSITIVE" if prediction.positive else "negative"
    print(f"series {prediction.series_instance_uid}")
    print(
        f"study probability {prediction.stack_probability:.3f}: {decision} "
        f"(threshold {threshold['value']:.3f}, {threshold['provenance']})"
    )
    top = sorted(prediction.slice_probabilities.items(), key=lambda kv: kv[1], reverse=True)
    print(f"top slices of {prediction.slices_used} used:")
    for uid, probability in top[: args.top]:
        print(f"  {probability:.3f}  {uid}")
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in prediction.timings.items())
    print(
        f"timings: {timings} ({prediction.precision}, backend={prediction.backend} "
        f"device={prediction.device})"
    )
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_synth,
    add_stats,
    _add_init_bundle,
    _add_predict,
    add_train,
    add_evaluate,
    add_compare,
]
"""Functions that each add one subcommand; each sets ``func`` to its runner."""


def build_parser() -> argparse.ArgumentParser:
    """Return the ``triage-model`` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="triage-model",
        description="Training-side tools for the CTPA pulmonary-embolism triage model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``triage-model``; return the exit status (2 for bad arguments)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ValueError as err:
        print(f"triage-model {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"triage-model {args.command}: error: {err}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
