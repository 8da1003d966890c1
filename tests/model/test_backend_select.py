"""Choosing the Keras backend and the device before Keras loads; spreading GPUs over workers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.backend import (
    BackendError,
    assign_device,
    configured_backend,
    select_backend,
    select_device,
    visible_gpus,
)


def test_auto_spreads_workers_over_the_gpus_one_device_each() -> None:
    gpus = ["0", "1", "2", "3"]
    assert [assign_device("auto", i, gpus) for i in range(4)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
    ]
    # More workers than GPUs: round robin, so no GPU gets two before every one has one.
    assert [assign_device("auto", i, ["0", "1"]) for i in range(5)] == [
        "cuda:0",
        "cuda:1",
        "cuda:0",
        "cuda:1",
        "cuda:0",
    ]
    # The host's numbering is kept where CUDA_VISIBLE_DEVICES lists a subset.
    assert [assign_device("auto", i, ["2", "5"]) for i in range(2)] == ["cuda:2", "cuda:5"]


def test_auto_without_a_gpu_and_cpu_and_a_fixed_gpu() -> None:
    assert assign_device("auto", 3, []) == "cpu"
    assert assign_device("cpu", 1, ["0", "1"]) == "cpu"
    assert [assign_device("cuda:1", i, ["0", "1"]) for i in range(3)] == ["cuda:1"] * 3
    with pytest.raises(BackendError, match=r"cuda:2.*visible GPUs are: 0, 1"):
        assign_device("cuda:2", 0, ["0", "1"])
    with pytest.raises(BackendError, match="visible GPUs are: none"):
        assign_device("cuda:0", 0, [])
    with pytest.raises(BackendError, match="auto, cpu or cuda:N"):
        assign_device("gpu", 0, ["0"])


def test_visible_gpus_from_the_environment_or_the_driver(tmp_path: Path) -> None:
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "1,3"}) == ["1", "3"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
    # CUDA stops at the first invalid entry: -1 hides everything after it.
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,3"}) == ["2"]
    driver = tmp_path / "gpus"
    driver.mkdir()
    for pci in ("0000:1b:00.0", "0000:3d:00.0"):
        (driver / pci).mkdir()
    assert visible_gpus({}, proc=driver) == ["0", "1"]
    assert visible_gpus({}, proc=tmp_path / "no-driver") == []


def test_select_device_sets_what_the_cuda_runtimes_read() -> None:
    env: dict[str, str] = {"CUDA_VISIBLE_DEVICES": "0,1"}
    select_device("cuda:1", env)
    assert env == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    env = {}
    select_device("cpu", env)
    assert env == {"CUDA_VISIBLE_DEVICES": "", "JAX_PLATFORMS": "cpu"}
    env = {"CUDA_VISIBLE_DEVICES": "3"}
    select_device("auto", env)
    assert env == {"CUDA_VISIBLE_DEVICES": "3"}


def test_select_backend_and_what_keras_will_load(tmp_path: Path) -> None:
    env: dict[str, str] = {"KERAS_HOME": str(tmp_path)}
    assert configured_backend(env) == "tensorflow"
    (tmp_path / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert configured_backend(env) == "jax"
    select_backend("torch", env)
    assert env["KERAS_BACKEND"] == "torch"
    assert configured_backend(env) == "torch"
    with pytest.raises(BackendError, match="unknown Keras backend 'mxnet'"):
        select_backend("mxnet", env)


_BLOCKED = """
import importlib.util, json, sys
from model.backend import block_tensorflow
block_tensorflow()
# What PyTorch's compiler does as Keras's torch backend loads: it asks where TensorFlow
# lives (to leave its code alone) and must be told nowhere, not be stopped.
spec = importlib.util.find_spec("tensorflow")
try:
    import tensorflow
    refused = None
except ModuleNotFoundError as err:
    refused = err.name
print(json.dumps({"origin": spec.origin, "refused": refused,
                  "loaded": "tensorflow" in sys.modules}))
"""


def test_blocked_tensorflow_can_be_looked_up_but_not_imported() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _BLOCKED], capture_output=True, text=True, check=True
    )
    result = json.loads(out.stdout)
    assert result == {"origin": None, "refused": "tensorflow", "loaded": False}
