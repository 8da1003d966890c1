"""Latency from the last acknowledged instance of a 96-slice study to the SR acknowledged
by the PACS, by stage, against ``triage-model predict`` on the same series in the same run.

The wait for ``series.stable_seconds`` (the completeness rule) is left out: it is policy,
not work. Prints figures; asserts nothing.

    python benchmarks/latency.py [--bundle DIR] [--studies 4] [--stable-seconds 6]
        [--backend tensorflow|jax|torch] [--device auto|cpu|cuda:N] [--syntax explicit]
        [--no-preprocess-early]

``--syntax`` is the transfer syntax the studies are stored and sent in (``jpeg-ls`` or
``jpeg2000``: what many PACS archives hold; their decoding is part of the model stage).

The worker runs on ``--backend`` and ``--device`` (``model.backend`` and ``model.device``),
and so does ``triage-model predict``. ``--no-preprocess-early`` sets
``worker.preprocess_early: false``: the worker then reads and preprocesses each series
after it is complete, on the critical path, instead of while it waits out
``stable_seconds`` (``early-prep`` is that work's time when it is done early).

Columns: the stages of the end-to-end time, ``triage-model predict``'s own time on the
same series (its ``timings.total``: read, preprocess, CNN, sequence model; not the
process start), ``vs-predict`` = (end-to-end - predict) / predict, and ``non-model`` =
(end-to-end - the worker's model stage) / predict, which is what the daemon adds
whatever the two model runs' own variation; ``heat-maps`` is what the worker spends on the
study view's heat maps after the SR is stored (``worker.heatmap_slices`` slices,
on the model input the prediction kept; from ``key_images.json``), and ``heat/model`` that
against the worker's model stage. The last row holds the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import yaml
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
)

from model.backend import select_device
from model.synthetic import TRANSFER_SYNTAXES
from triage.config import DEMO_BUNDLE
from triage.demo import free_port, wait_for_port
from triage.send import send_files


def _pacs() -> tuple[int, dict[str, float], threading.Event]:
    """A Storage SCP that records when each SR arrives (keyed by Study Instance UID)."""
    arrivals: dict[str, float] = {}
    got = threading.Event()

    def on_store(event: evt.Event) -> int:
        ds = event.dataset
        if ds.Modality == "SR":
            arrivals[str(ds.StudyInstanceUID)] = time.time()
            got.set()
        return 0x0000

    ae = AE(ae_title="PACS")
    ae.add_supported_context(Comprehensive3DSRStorage)
    ae.add_supported_context(KeyObjectSelectionDocumentStorage)
    port = free_port()
    ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    return port, arrivals, got


def _epoch(text: str) -> float:
    # The database keeps naive UTC.
    return datetime.fromisoformat(text + "+00:00").timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, default=DEMO_BUNDLE)
    parser.add_argument("--studies", type=int, default=4)
    # At least the completeness sweep's default interval (5 s), so that a sweep sees the
    # series while it is still receiving and schedules the next one for when it turns quiet.
    parser.add_argument("--stable-seconds", type=float, default=6.0)
    parser.add_argument("--backend", choices=("tensorflow", "jax", "torch"), default="tensorflow")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--syntax", default="explicit", choices=sorted(TRANSFER_SYNTAXES))
    parser.add_argument("--preprocess-early", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()
    # The same device for `triage-model predict` as for the worker.
    device_env: dict[str, str] = {}
    if args.device != "auto":
        select_device(args.device, device_env)

    from model.synthetic import StudyParams, WriteOptions, generate_study, write_study

    work = Path(tempfile.mkdtemp(prefix="triage-latency-"))
    pacs_port, arrivals, _ = _pacs()
    port, web = free_port(), free_port()
    config = {
        "data_dir": str(work / "var"),
        "receiver": {"port": port, "min_free_disk_mb": 100},
        # The sweep intervals and the worker's poll are the defaults: the daemon must not
        # make a study wait for them.
        "series": {"stable_seconds": args.stable_seconds},
        "worker": {"processes": 1, "preprocess_early": args.preprocess_early},
        "model": {"bundle": str(args.bundle), "backend": args.backend, "device": args.device},
        "web": {"port": web},
        "destinations": [
            {
                "name": "pacs",
                "type": "dicom",
                "ae_title": "PACS",
                "host": "127.0.0.1",
                "port": pacs_port,
            }
        ],
        "logging": {"level": "WARNING"},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    log = (work / "daemon.log").open("ab")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "triage.cli", "serve", "--config", str(work / "config.yaml")],
        stdout=log,
        stderr=log,
    )
    rows = []
    worker = None
    try:
        wait_for_port(port, daemon)
        # Let the worker load the bundle (it then writes its heartbeat) before the clock
        # starts.
        deadline = time.time() + 600
        while time.time() < deadline:
            with sqlite3.connect(work / "var" / "triage.db") as db:
                worker = db.execute("SELECT backend, device FROM worker_heartbeats").fetchone()
                if worker:
                    break
            time.sleep(0.5)
        time.sleep(1)
        for i in range(args.studies):
            phantom = generate_study(7000 + i, StudyParams(n_slices=96, positive=i % 2 == 0))
            options = WriteOptions(transfer_syntax=args.syntax)
            series_dir = write_study(phantom, work / "studies", options).axial.paths[0].parent
            send_files([series_dir], "127.0.0.1", port, "BENCH", "TRIAGE")
            last_ack = time.time()
            study_uid = str(
                dcmread(next(series_dir.iterdir()), stop_before_pixels=True).StudyInstanceUID
            )
            deadline = time.time() + 600
            while study_uid not in arrivals and time.time() < deadline:
                time.sleep(0.05)
            sr_at = arrivals[study_uid]
            db = sqlite3.connect(work / "var" / "triage.db")
            completed, result_at, timings, result_id = db.execute(
                "SELECT s.completed_at, r.created_at, r.timings, r.id FROM series s "
                "JOIN studies st ON st.id = s.study_id JOIN results r ON r.series_id = s.id "
                "WHERE st.study_instance_uid = ? ORDER BY r.id DESC LIMIT 1",
                (study_uid,),
            ).fetchone()
            t = json.loads(timings)
            # The key images come after the SR; wait for them.
            index = work / "var" / "outbox" / str(result_id) / "key_images" / "key_images.json"
            deadline = time.time() + 300
            while not index.exists() and time.time() < deadline:
                time.sleep(0.1)
            heatmaps = json.loads(index.read_text())["seconds"]["heatmaps"]
            predict = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "model.cli",
                    "predict",
                    "--bundle",
                    str(args.bundle),
                    str(series_dir),
                    "--json",
                ],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "KERAS_BACKEND": args.backend, **device_env},
            )
            p = json.loads(predict.stdout)["timings"]
            rows.append(
                {
                    "end_to_end": sr_at - last_ack - args.stable_seconds,
                    "to_complete": _epoch(completed) - last_ack - args.stable_seconds,
                    "model": t.get("total", 0.0),
                    "cnn": t.get("cnn", 0.0),
                    "report": t.get("report", 0.0),
                    "result_to_sr": sr_at - _epoch(result_at),
                    "predict_total": p["total"],
                    "predict_cnn": p["cnn"],
                    "heatmaps": heatmaps,
                    "early": t.get("early_preprocess", 0.0),
                }
            )
    finally:
        daemon.terminate()
        daemon.wait(60)
    print(
        f"bundle {args.bundle}; worker (backend, device) {worker}; "
        f"stable_seconds {args.stable_seconds} s excluded; "
        f"preprocess_early {args.preprocess_early}; "
        f"{args.studies} studies of 96 slices in {args.syntax}; seconds"
    )
    columns = {
        # last instance acknowledged -> SR acknowledged by the PACS
        "end-to-end": lambda r: r["end_to_end"],
        # series marked complete, after its quiet period
        "complete": lambda r: r["to_complete"],
        # the worker's predictor: read, preprocess, CNN, sequence model
        "model": lambda r: r["model"],
        "of-it-CNN": lambda r: r["cnn"],
        # read + preprocess done while the series waited out stable_seconds (not in it)
        "early-prep": lambda r: r["early"],
        # SR and KOS built and written to the outbox
        "report": lambda r: r["report"],
        # result row inserted -> SR acknowledged: outbox files, commit, wake-up,
        # association, C-STORE (the reports are built before the row)
        "dispatch": lambda r: r["result_to_sr"],
        # the rest: claiming the job, reading its files' list, database work
        "other": lambda r: (
            r["end_to_end"] - r["to_complete"] - r["model"] - r["report"] - r["result_to_sr"]
        ),
        "predict-CLI": lambda r: r["predict_total"],
        "its-CNN": lambda r: r["predict_cnn"],
        # after the SR: the study view's heat maps (not part of end-to-end)
        "heat-maps": lambda r: r["heatmaps"],
    }
    ratios = {
        # what the daemon adds over `triage-model predict` on the same series
        "vs-predict": lambda r: (r["end_to_end"] - r["predict_total"]) / r["predict_total"],
        # everything but the worker's own model stage, against the predict CLI's time
        "non-model": lambda r: (r["end_to_end"] - r["model"]) / r["predict_total"],
        "heat/model": lambda r: r["heatmaps"] / r["model"],
    }
    print("  ".join(f"{h:>11}" for h in [*columns, *ratios]))

    def line(values: list[float], shares: list[float]) -> str:
        return "  ".join([f"{v:>11.2f}" for v in values] + [f"{v:>11.0%}" for v in shares])

    for r in rows:
        print(line([f(r) for f in columns.values()], [f(r) for f in ratios.values()]))
    if len(rows) > 1:
        print(
            line(
                [statistics.median(f(r) for r in rows) for f in columns.values()],
                [statistics.median(f(r) for r in rows) for f in ratios.values()],
            )
            + "  (median)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
