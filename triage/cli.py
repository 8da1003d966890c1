"""The ``triage`` command line: serve, worker, reload, check-config, status, monitor, send,
migrate, demo and retry."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from triage import __version__
from triage.config import Config, load_config
from triage.errors import AlreadyRunningError, ConfigError, TriageError
from triage.logs import configure_logging

if TYPE_CHECKING:
    from sqlalchemy import Engine


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-format",
        choices=["json", "console"],
        help="log rendering (default: logging.format from the config, else json)",
    )
    common.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="lowest level logged (default: logging.level from the config, else INFO)",
    )
    return common


def _date(text: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date as YYYY-MM-DD") from err


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, also used to render ``--help``."""
    parser = argparse.ArgumentParser(
        prog="triage",
        description="CTPA pulmonary-embolism triage daemon: receives CT pulmonary angiograms "
        "over DICOM, queues them durably and raises PE-positive studies on the worklist.",
    )
    parser.add_argument("--version", action="version", version=f"triage {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="run the daemon in the foreground",
        description="Run the DICOM receiver and the scheduler until SIGTERM or SIGINT. "
        "Associations in flight finish first, or are aborted after "
        "receiver.shutdown_timeout seconds. One daemon per data_dir: a second one exits 2; "
        "any other start-up failure exits 1 with one error line.",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")

    p = sub.add_parser(
        "worker",
        parents=[common],
        help="run inference workers alone (for example on a GPU host)",
        description="Run worker.processes inference workers (1 if it is 0) in the "
        "foreground until SIGTERM or SIGINT, claiming jobs from the configured database. "
        "Each finishes its current job first. SIGHUP re-reads the thresholds.",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")

    p = sub.add_parser(
        "reload",
        parents=[common],
        help="apply the configuration's thresholds to the running daemon",
        description="Validate the file and send SIGHUP to the running daemon "
        "(its pid is in <data_dir>/triage.pid), which applies the new thresholds to new "
        "jobs and records an audit event. Prints what changed. An invalid file is "
        "rejected with its errors (exit 2) and the daemon keeps its thresholds.",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")

    p = sub.add_parser(
        "check-config",
        parents=[common],
        help="validate a configuration file",
        description="Validate the file without starting anything or reaching the "
        "network: every key, and what the keys point at on this machine (the bundle's "
        "manifest and file hashes, the TLS certificates and keys, that data_dir can be "
        "created and written, the database URL and driver). Exit 0 if valid; otherwise "
        "print each error with its key path and exit 2.",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")

    p = sub.add_parser(
        "status",
        parents=[common],
        help="show studies, series, jobs and counts",
        description="Show the queue: studies, series with their state and skip reason, "
        "jobs with their state, and counts. Patient identifiers are never shown here.",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser(
        "monitor",
        parents=[common],
        help="per week: flags, confirmed and rejected, and the PPV with its CI",
        description="Post-deployment monitoring from the radiologists' feedback: per ISO week "
        "(Monday to Sunday, UTC), the studies flagged positive, how many a radiologist "
        "confirmed or rejected, how many are not reviewed yet, and the positive predictive "
        "value (confirmed / reviewed) with its Wilson score interval with continuity "
        "correction; then the whole period. Says so when there is no feedback yet.",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument(
        "--since",
        type=_date,
        metavar="DATE",
        help="only results made on or after this day (YYYY-MM-DD, UTC)",
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")

    p = sub.add_parser(
        "send",
        parents=[common],
        help="send DICOM files with C-STORE",
        description="Send DICOM files and folders (recursively) to a Storage SCP. "
        "Files that are not DICOM (a train.csv beside a study) are skipped with one note. "
        "If the association cannot be made, the cause (connection refused, or rejected "
        "with the peer's reason) is printed once. Exits 1 if any instance failed, listing "
        "each failure.",
    )
    p.add_argument("--host", required=True)
    p.add_argument("--port", required=True, type=int)
    p.add_argument("--calling-aet", default="TRIAGESCU", help="our AE title (default TRIAGESCU)")
    p.add_argument("--called-aet", default="TRIAGE", help="the peer's AE title (default TRIAGE)")
    p.add_argument(
        "--max-pdu", type=int, default=0, help="maximum PDU size to receive, 0 = unlimited"
    )
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")

    p = sub.add_parser(
        "migrate",
        parents=[common],
        help="create or upgrade the database schema",
        description="Create or upgrade the database schema to this version "
        "(serve does this at start-up too).",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")

    p = sub.add_parser(
        "demo",
        parents=[common],
        help="the whole loop on this machine with synthetic studies",
        description="Start a receiving PACS (Orthanc if installed, else a built-in receiver), "
        "the daemon with the shipped demo bundle on a temporary folder, send a positive and a "
        "negative synthetic CTPA, and print the worklist and, per study, its study-view URL and "
        "the SR, KOS and summary images that landed in the PACS. The servers stay up until "
        "Ctrl-C. The demo bundle was trained on synthetic phantoms only: not for clinical use.",
    )
    p.add_argument(
        "--keep-running",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="leave the daemon and PACS running until Ctrl-C (the default); "
        "--no-keep-running stops them once the results are printed",
    )
    p.add_argument(
        "--bundle", type=Path, help="weight bundle to use (default: the shipped demo bundle)"
    )

    p = sub.add_parser(
        "retry",
        parents=[common],
        help="re-queue dead deliveries",
        description="Put deliveries that went dead (attempts used up, or a permanent error) "
        "back in the queue, due now with their attempts reset. The running daemon sends "
        "them; the same SOP Instance UIDs are resent.",
    )
    p.add_argument("--config", required=True, type=Path, help="the YAML configuration file")
    p.add_argument("--destination", metavar="NAME", help="only deliveries to this destination")
    return parser


def _setup_logging(args: argparse.Namespace, config: Config | None) -> None:
    fmt = args.log_format or (config.logging.format if config else "json")
    level = args.log_level or (config.logging.level if config else "INFO")
    configure_logging(fmt, level)


def _run(args: argparse.Namespace) -> int:
    if args.command == "send":
        from triage.send import send_files

        _setup_logging(args, None)
        result = send_files(
            args.paths, args.host, args.port, args.calling_aet, args.called_aet, args.max_pdu
        )
        for failure in result.association_failures:
            count = len(failure.files)
            print(
                f"FAILED: {failure.cause}; {count} file{'' if count == 1 else 's'} not sent",
                file=sys.stderr,
            )
        for path, reason in result.file_failures:
            print(f"FAILED {path}: {reason}", file=sys.stderr)
        if result.skipped:
            names = ", ".join(p.name for p in result.skipped[:3])
            more = f" and {len(result.skipped) - 3} more" if len(result.skipped) > 3 else ""
            print(f"skipped {len(result.skipped)} non-DICOM file(s): {names}{more}")
        print(f"sent {result.sent}, failed {len(result.failures)}")
        return 1 if result.failures else 0

    if args.command == "demo":
        from triage.demo import run_demo

        return run_demo(keep_running=args.keep_running, bundle=args.bundle)

    config = load_config(args.config)
    _setup_logging(args, config)
    if args.command == "check-config":
        from triage.checks import check_offline

        problems = check_offline(config)
        if problems:
            raise ConfigError(problems)
        print(f"{args.config}: valid")
        return 0
    if args.command == "serve":
        from triage.daemon import serve

        return serve(
            config,
            log_format=args.log_format or config.logging.format,
            log_level=args.log_level or config.logging.level,
            config_path=args.config,
        )
    if args.command == "worker":
        from triage.analyse.processes import run_workers

        return run_workers(
            args.config,
            config,
            log_format=args.log_format or config.logging.format,
            log_level=args.log_level or config.logging.level,
        )

    from triage.db import create_db_engine, migrate, session_factory

    engine = create_db_engine(config.database_url, config.database.busy_timeout_ms)
    migrate(engine)
    if args.command == "migrate":
        print(f"database schema is up to date at {engine.url.render_as_string(True)}")
        return 0
    if args.command == "retry":
        from triage.dispatch import retry_dead

        count = retry_dead(session_factory(engine), args.destination)
        target = f" to {args.destination}" if args.destination else ""
        print(f"re-queued {count} dead deliver{'y' if count == 1 else 'ies'}{target}")
        return 0
    if args.command == "reload":
        from triage.reload import request_reload

        outcome = request_reload(args.config, session_factory(engine))
        if not outcome.changed:
            print("reloaded; the thresholds are unchanged")
        for key, change in outcome.changed.items():
            print(f"thresholds.{key}: {change['old']} -> {change['new']}")
        return 0
    if args.command == "monitor":
        return _monitor(engine, args.since, args.json)
    from triage.status import collect_status, format_status

    status = collect_status(session_factory(engine), config.destinations)
    print(json.dumps(status, indent=2) if args.json else format_status(status))
    return 0


def _monitor(engine: Engine, since: datetime.date | None, as_json: bool) -> int:
    from triage.monitor import format_weeks, read_records, weekly_ppv

    records = read_records(engine)
    if records is None:
        message = "no feedback yet: this database has no feedback table"
        print(json.dumps({"feedback": False, "message": message}) if as_json else message)
        return 0
    weeks, total = weekly_ppv(records, since)
    if as_json:
        report = {
            "feedback": True,
            "since": since.isoformat() if since else None,
            "confidence": 0.95,
            "weeks": [w.to_dict() for w in weeks],
            "total": total.to_dict(),
        }
        print(json.dumps(report, indent=2))
    else:
        print(format_weeks(weeks, total, 0.95))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``triage`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except ConfigError as err:
        for path, reason in err.problems:
            print(f"{args.config}: {path}: {reason}", file=sys.stderr)
        return 2
    except AlreadyRunningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TriageError as err:
        # One line: a library's message may trail a second (SQLAlchemy's "Background on
        # this error at ..."), which says nothing more about what went wrong.
        print(f"error: {(str(err).splitlines() or [type(err).__name__])[0]}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
