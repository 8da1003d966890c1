"""Which device each worker process gets, from model.device and the host's GPUs."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import make_config

from model.backend import BackendError
from triage.analyse.placement import worker_device


def test_workers_spread_over_the_visible_gpus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2")
    config = make_config(tmp_path, model={"device": "auto"}, worker={"processes": 4})
    assert [worker_device(config, i) for i in range(4)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:0",
    ]
    pinned = make_config(tmp_path, model={"device": "cuda:2"})
    assert worker_device(pinned, 1) == "cuda:2"
    missing = make_config(tmp_path, model={"device": "cuda:7"})
    with pytest.raises(BackendError, match="cuda:7"):
        worker_device(missing, 0)


def test_no_gpu_or_cpu_means_the_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert worker_device(make_config(tmp_path), 0) == "cpu"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert worker_device(make_config(tmp_path, model={"device": "cpu"}), 0) == "cpu"
