"""Ingest throughput: ``triage serve`` against dcmtk's ``storescp``, same files, same run.

Prints figures, not pass/fail. For each concurrency K it sends the same set of 96-slice
512×512 CT series from K concurrent dcmtk ``storescu`` processes, first to one target and
then to the other, and prints images/s, MB/s and the ratio triage/storescp.

Fairness, as far as it can be had:

* Both targets get the same files over the same loopback, from the same ``storescu``
  binary with the same arguments.
* Both advertise the same maximum PDU (``--max-pdu``): it is the receiver's maximum that
  decides the size of the P-DATA PDUs ``storescu`` sends.
* ``TCP_NODELAY`` is read from the environment by dcmtk (``storescu`` and ``storescp``);
  ``--tcp-nodelay`` sets it for both. triage always sets TCP_NODELAY on its accepted
  sockets (it is not configurable: without it every C-STORE-RSP waits for a delayed ACK).
* ``storescp`` runs in its default output mode, which does NOT fsync: its files may still
  be in the page cache when it answers Success. triage answers Success only after the
  file is fsynced, renamed, its folder fsynced and its row committed.
* ``storescp`` handles one association at a time unless it forks; ``--storescp-fork``
  (default: when K > 1) lets it serve concurrent senders as well as it can.

Each K gets its own copy of the set with fresh Study/Series/SOP Instance UIDs, so triage
inserts new rows on every run instead of replacing files it already has. Within a run the
series are dealt round-robin to the K senders: the total work is the same for every K.

Usage::

    python benchmarks/ingest.py --series 4 --concurrency 1 4 --max-pdu 131072 --tcp-nodelay 1
    python benchmarks/ingest.py --series 4 --concurrency 1 4 --repeat 3 --processes 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
ECHOSCU = "/usr/bin/echoscu"


@dataclass(frozen=True)
class Result:
    """One timed run of K senders against one target."""

    target: str
    k: int
    images: int
    nbytes: int
    seconds: float

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / 1e6


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def slice_pixels(slices: int, rows: int, columns: int, seed: int) -> list[bytes]:
    """Noisy CT-like pixel data (air, body, contrast), so files are full-size and realistic."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:columns]
    body = ((yy - rows / 2) / (rows * 0.4)) ** 2 + ((xx - columns / 2) / (columns * 0.45)) ** 2 < 1
    out = []
    for _ in range(slices):
        img = np.where(body, 40, -1000) + rng.normal(0, 25, (rows, columns))
        out.append(np.clip(img, -1024, 3071).astype(np.int16).tobytes())
    return out


def write_set(folder: Path, series: int, pixels: list[bytes], rows: int, columns: int) -> int:
    """Write ``series`` CT series with fresh UIDs, one sub-folder per series; returns bytes."""
    total = 0
    for s in range(series):
        study_uid, series_uid = generate_uid(), generate_uid()
        sub = folder / f"series{s:03d}"
        sub.mkdir(parents=True)
        for i, pix in enumerate(pixels):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = CTImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.PatientName = "BENCH^INGEST"
            ds.PatientID = f"BENCH{s:04d}"
            ds.AccessionNumber = f"ACC{s:04d}"
            ds.StudyDate = "20260101"
            ds.StudyTime = "120000"
            ds.Modality = "CT"
            ds.SeriesDescription = "CTPA 3mm"
            ds.SeriesNumber = 2
            ds.InstanceNumber = i + 1
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ImagePositionPatient = [-180.0, -180.0, -i * 3.0]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.SliceThickness = 3.0
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
            ds.PixelData = pix
            path = sub / f"{i:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            total += path.stat().st_size
    return total


def wait_until_echo(port: int, aet: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll with C-ECHO until the target answers; fail early if it has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{aet} exited with {proc.returncode} before accepting associations")
        rc = subprocess.run(
            [ECHOSCU, "-aec", aet, "-to", "2", "127.0.0.1", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ).returncode
        if rc == 0:
            return
        time.sleep(0.2)
    raise SystemExit(f"{aet} did not answer C-ECHO on port {port} within {timeout} s")


def send(folders: list[Path], port: int, aet: str, max_pdu: int, env: dict[str, str]) -> float:
    """Run one storescu per folder, all at once; return the wall time until all are done."""
    cmds = []
    for folder in folders:
        cmd = [STORESCU, "-aet", "BENCHSCU", "-aec", aet, "-R", "+sd", "+r"]
        if max_pdu:
            cmd += ["--max-pdu", str(max_pdu), "--max-send-pdu", str(max_pdu)]
        cmds.append([*cmd, "127.0.0.1", str(port), str(folder)])
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in cmds
    ]
    failed = []
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            failed.append(err.decode(errors="replace")[-2000:])
    elapsed = time.perf_counter() - start
    if failed:
        raise SystemExit(f"storescu failed against {aet}:\n" + "\n".join(failed))
    return elapsed


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


def triage_rows(db: Path) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return int(conn.execute("SELECT count(*) FROM instances").fetchone()[0])


def start_triage(
    work: Path, port: int, max_pdu: int, log_level: str, processes: int
) -> tuple[subprocess.Popen[bytes], Path]:
    data_dir = work / "triage-data"
    config = work / "triage.yaml"
    lines = [
        f"data_dir: {data_dir}",
        "receiver:",
        "  ae_title: TRIAGE",
        "  host: 127.0.0.1",
        f"  port: {port}",
        f"  max_pdu: {max_pdu}",
        "  max_associations: 64",
        "  min_free_disk_mb: 64",
    ]
    if processes != 1:  # left out at the default, so the script also runs older triage
        lines.append(f"  processes: {processes}")
    lines += [
        "series:",
        "  stable_seconds: 86400",  # nothing becomes complete mid-benchmark
        "logging:",
        f"  level: {log_level}",
    ]
    config.write_text("\n".join(lines) + "\n")
    log = (work / "triage.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "triage.cli", "serve", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return proc, data_dir


def start_storescp(
    work: Path, port: int, max_pdu: int, fork: bool, env: dict[str, str]
) -> tuple[subprocess.Popen[bytes], Path]:
    out = work / "storescp-out"
    out.mkdir()
    cmd = [STORESCP, "-aet", "STORESCP", "-od", str(out)]
    if max_pdu:
        cmd += ["--max-pdu", str(max_pdu)]
    if fork:
        cmd.append("--fork")
    proc = subprocess.Popen(
        [*cmd, str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(work / "storescp.log").open("wb"),
    )
    return proc, out


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=4, help="series in the set (default 4)")
    parser.add_argument("--slices", type=int, default=96, help="slices per series (default 96)")
    parser.add_argument("--size", type=int, default=512, help="rows = columns (default 512)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4], metavar="K")
    parser.add_argument(
        "--max-pdu",
        type=int,
        default=131072,
        help="maximum PDU both receivers advertise and storescu sends "
        "(dcmtk allows 4096..131072; default 131072)",
    )
    parser.add_argument(
        "--tcp-nodelay",
        type=int,
        choices=[0, 1],
        default=1,
        help="TCP_NODELAY for dcmtk's storescu and storescp (default 1); triage always sets it",
    )
    parser.add_argument(
        "--storescp-fork",
        choices=["auto", "yes", "no"],
        default="auto",
        help="run storescp with --fork (auto: when K > 1)",
    )
    parser.add_argument(
        "--processes", type=int, default=1, help="triage's receiver.processes (default 1)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per target and K; median")
    parser.add_argument("--log-level", default="INFO", help="triage's logging.level")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--workdir", type=Path, help="parent of the temp folder")
    args = parser.parse_args(argv)

    for tool in (STORESCU, STORESCP, ECHOSCU):
        if not Path(tool).exists():
            raise SystemExit(f"{tool} is missing; install dcmtk")
    env = dict(os.environ, TCP_NODELAY=str(args.tcp_nodelay))
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-", dir=args.workdir))
    try:
        t0 = time.perf_counter()
        pixels = slice_pixels(args.slices, args.size, args.size, seed=0)
        # One copy of the set per (K, repetition), with fresh UIDs, dealt to K senders.
        sets: dict[tuple[int, int], tuple[list[Path], int]] = {}
        for k in args.concurrency:
            for r in range(args.repeat):
                root = work / "src" / f"k{k}-r{r}"
                nbytes = write_set(root, args.series, pixels, args.size, args.size)
                folders = [root / f"sender{j}" for j in range(k)]
                for j, series in enumerate(sorted(root.iterdir())):
                    folders[j % k].mkdir(exist_ok=True)
                    series.rename(folders[j % k] / series.name)
                sets[(k, r)] = ([f for f in folders if f.exists()], nbytes)
        images = args.series * args.slices
        print(
            f"generated {len(sets)} copies of {args.series} series × {args.slices} slices "
            f"({args.size}×{args.size} int16, {nbytes / images / 1024:.0f} KiB/file) "
            f"in {time.perf_counter() - t0:.1f} s",
            flush=True,
        )

        results: list[Result] = []
        tport, sport = free_port(), free_port()
        triage, data_dir = start_triage(work, tport, args.max_pdu, args.log_level, args.processes)
        try:
            wait_until_echo(tport, "TRIAGE", triage, 60)
            # With receiver.processes > 1 one process may answer before the others listen;
            # "serving" is logged once every one does.
            deadline = time.monotonic() + 60
            while '"serving"' not in (work / "triage.log").read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise SystemExit("triage did not log 'serving' within 60 s")
                time.sleep(0.1)
            for k in args.concurrency:
                fork = args.storescp_fork == "yes" or (args.storescp_fork == "auto" and k > 1)
                (work / f"k{k}").mkdir()
                scp, scp_out = start_storescp(work / f"k{k}", sport, args.max_pdu, fork, env)
                try:
                    wait_until_echo(sport, "STORESCP", scp, 30)
                    for r in range(args.repeat):
                        folders, nbytes = sets[(k, r)]
                        before = count_files(scp_out)
                        secs = send(folders, sport, "STORESCP", args.max_pdu, env)
                        got = count_files(scp_out) - before
                        if got != images:
                            raise SystemExit(f"storescp stored {got} of {images} files")
                        results.append(Result("storescp", k, images, nbytes, secs))
                        before = triage_rows(data_dir / "triage.db")
                        secs = send(folders, tport, "TRIAGE", args.max_pdu, env)
                        got = triage_rows(data_dir / "triage.db") - before
                        if got != images:
                            raise SystemExit(f"triage recorded {got} of {images} instances")
                        results.append(Result("triage", k, images, nbytes, secs))
                        print(
                            f"K={k} run {r + 1}: storescp {results[-2].images_per_s:.1f} img/s, "
                            f"triage {results[-1].images_per_s:.1f} img/s",
                            flush=True,
                        )
                finally:
                    stop(scp)
                    shutil.rmtree(scp_out, ignore_errors=True)
        finally:
            stop(triage)
        if count_files(data_dir / "spool") != images * len(sets):
            raise SystemExit("triage's spool does not hold every instance it acknowledged")

        print()
        print(
            f"triage receiver.processes={args.processes}; "
            f"max PDU {args.max_pdu or 'unlimited'}; TCP_NODELAY={args.tcp_nodelay} for dcmtk, "
            "always on in triage; triage: fsync file + rename + fsync folder + committed row "
            "before Success; storescp: default output mode, no fsync"
        )
        header = f"{'target':<9} {'K':>2} {'images':>7} {'seconds':>8} {'images/s':>9} {'MB/s':>7}"
        print(header)
        print("-" * len(header))
        for k in args.concurrency:
            med: dict[str, Result] = {}
            for target in ("storescp", "triage"):
                runs = [x for x in results if x.target == target and x.k == k]
                secs = statistics.median(x.seconds for x in runs)
                med[target] = Result(target, k, runs[0].images, runs[0].nbytes, secs)
                m = med[target]
                print(
                    f"{target:<9} {k:>2} {m.images:>7} {m.seconds:>8.2f} "
                    f"{m.images_per_s:>9.1f} {m.mb_per_s:>7.1f}"
                )
            ratio = med["triage"].images_per_s / med["storescp"].images_per_s
            print(f"{'ratio':<9} {k:>2} triage/storescp = {ratio:.2f}×")
        return 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
