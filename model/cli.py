"""``triage-model``: the training-side command line (synthetic data now; more subcommands later).

Each subcommand registers itself with :func:`_add_synth`-style functions in
:data:`SUBCOMMANDS`, so adding ``train`` or ``evaluate`` is one function and one entry.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from model.stats_cli import add_stats


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


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
    p.add_argument("--studies", type=_positive_int, default=10, metavar="N", help="default 10")
    p.add_argument(
        "--positive-fraction",
        type=_fraction,
        default=0.5,
        metavar="F",
        help="fraction of studies with emboli (default 0.5)",
    )
    p.add_argument("--seed", type=_seed, default=0, metavar="S", help="default 0")
    p.add_argument("--difficulty", choices=sorted(DIFFICULTIES), default="realistic")
    p.add_argument(
        "--slices",
        type=_positive_int,
        default=None,
        metavar="N",
        help="force the slice count (default: 80-160 at 3 mm, from the anatomy)",
    )
    p.add_argument("--matrix", type=_positive_int, default=512, metavar="PX", help="default 512")
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
    )
    print(
        f"{summary.out_dir}: {summary.studies} studies ({summary.positives} positive, "
        f"{summary.patients} patients), {summary.slices} slices "
        f"({summary.positive_slices} positive) in {summary.seconds:.1f} s"
    )
    return 0


SUBCOMMANDS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    _add_synth,
    add_stats,
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
