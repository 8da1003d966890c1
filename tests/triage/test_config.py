"""Configuration: typed, validated, every error with its key path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from support import make_test_pki

from triage.cli import main
from triage.config import DEMO_BUNDLE, Config, load_config
from triage.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "config.example.yaml"


def test_example_config_is_valid_and_equals_the_defaults() -> None:
    """config.example.yaml documents every key with its default value."""
    cfg = load_config(EXAMPLE)
    defaults = Config(data_dir=cfg.data_dir)
    assert cfg == defaults


def test_example_config_names_every_key() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())

    def walk(model: type, node: dict, path: str) -> None:
        from pydantic import BaseModel

        for name, field in model.model_fields.items():  # type: ignore[attr-defined]
            assert name in node, f"{path}{name} is missing from config.example.yaml"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, node[name], f"{path}{name}.")

    walk(Config, data, "")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_unknown_and_wrong_keys_name_their_paths(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "receiver:\n  port: seventy\n  ae_titel: X\nseries:\n  stable_secs: 3\n"
        "  selection:\n    min_slices: -1\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    paths = {p for p, _ in info.value.problems}
    assert paths == {
        "receiver.port",
        "receiver.ae_titel",
        "series.stable_secs",
        "series.selection.min_slices",
    }
    reasons = dict(info.value.problems)
    assert reasons["receiver.ae_titel"] == "unknown key"


def test_check_config_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = _write(tmp_path, "receiver:\n  port: 4242\n")
    assert main(["check-config", "--config", str(good)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("receiver:\n  ae_title: 'THIS TITLE IS FAR TOO LONG'\nlogging:\n  level: LOUD\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "receiver.ae_title:" in err
    assert "logging.level:" in err
    assert main(["check-config", "--config", str(tmp_path / "absent.yaml")]) == 2


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    sub = tmp_path / "etc"
    sub.mkdir()
    path = _write(sub, "data_dir: ../data\n")
    assert load_config(path).data_dir == (tmp_path / "data").resolve()
    assert load_config(_write(sub, "{}\n")).data_dir == (sub / "var").resolve()


def test_secrets_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "receiver:\n  tls:\n    enabled: true\n    certificate: c.pem\n    private_key: k.pem\n"
        "    private_key_password: ${TRIAGE_TEST_KEY_PASSWORD}\n"
    )
    monkeypatch.setenv("TRIAGE_TEST_KEY_PASSWORD", "s3cret")
    cfg = load_config(_write(tmp_path, text))
    assert cfg.receiver.tls.private_key_password == "s3cret"
    assert cfg.receiver.tls.certificate == tmp_path / "c.pem"
    monkeypatch.delenv("TRIAGE_TEST_KEY_PASSWORD")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text))
    assert info.value.problems == [
        (
            "receiver.tls.private_key_password",
            "environment variable TRIAGE_TEST_KEY_PASSWORD is not set",
        )
    ]


def test_tls_needs_its_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, "receiver:\n  tls:\n    enabled: true\n"))
    assert info.value.problems[0][0] == "receiver.tls"


def test_default_database_is_sqlite_in_data_dir(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, "data_dir: d\n"))
    assert cfg.database_url == f"sqlite:///{tmp_path / 'd' / 'triage.db'}"


# --- check-config: everything that can be checked offline ------------------------------


def _check(tmp_path: Path, data: dict, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "check.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "var"), **data}))
    code = main(["check-config", "--config", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def _copy_bundle(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO_BUNDLE, bundle)
    return bundle


def _pki(tmp_path: Path) -> Path:
    return make_test_pki(tmp_path / "pki", names=("server", "other"))


@pytest.mark.parametrize(
    ("case", "key", "reason"),
    [
        ("bundle folder missing", "model.bundle", "bundle folder does not exist"),
        ("bundle manifest missing", "model.bundle", "manifest.json: missing"),
        ("bundle weights edited", "model.bundle", "sha256 mismatch"),
        ("receiver TLS files absent", "receiver.tls.certificate", "does not exist"),
        ("receiver TLS key of another cert", "receiver.tls", "cannot load the certificate"),
        ("receiver TLS CA absent", "receiver.tls.ca_certificate", "does not exist"),
        ("web TLS files absent", "web.tls.private_key", "does not exist"),
        ("destination CA absent", "destinations[0].ca_certificate", "does not exist"),
        ("webhook URL with a space", "destinations[0].webhook.url", "spaces"),
        ("webhook URL port too big", "destinations[0].webhook.url", "invalid port"),
        ("DICOM host not a host", "destinations[0].dicom.host", "not a host name"),
        ("HL7 host empty", "destinations[0].hl7.host", "not a host name"),
        ("receiver host not a host", "receiver.host", "not a host name"),
        ("data_dir in /proc", "data_dir", "cannot be created"),
        ("data_dir is a file", "data_dir", "is not a folder"),
        ("database driver absent", "database.url", "not installed"),
    ],
)
def test_check_config_refuses_what_cannot_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, key: str, reason: str
) -> None:
    pki = _pki(tmp_path) if "TLS" in case or "CA" in case else tmp_path
    server_tls = {"enabled": True, "certificate": str(pki / "server.pem")}
    data: dict = {
        "bundle folder missing": {"model": {"bundle": str(tmp_path / "no-bundle")}},
        "receiver TLS files absent": {
            "receiver": {
                "tls": {**server_tls, "certificate": str(pki / "x.pem"), "private_key": "k"}
            }
        },
        "receiver TLS key of another cert": {
            "receiver": {"tls": {**server_tls, "private_key": str(pki / "other.key")}}
        },
        "receiver TLS CA absent": {
            "receiver": {
                "tls": {
                    **server_tls,
                    "private_key": str(pki / "server.key"),
                    "ca_certificate": str(pki / "no-ca.pem"),
                }
            }
        },
        "web TLS files absent": {
            "web": {"tls": {**server_tls, "private_key": str(pki / "gone.key")}}
        },
        "destination CA absent": {
            "destinations": [
                {
                    "name": "pacs",
                    "type": "dicom",
                    "ae_title": "PACS",
                    "host": "pacs.example.org",
                    "port": 104,
                    "tls": True,
                    "ca_certificate": str(pki / "no-ca.pem"),
                }
            ]
        },
        "webhook URL with a space": {
            "destinations": [{"name": "w", "type": "webhook", "url": "http://exa mple.com:99999/x"}]
        },
        "webhook URL port too big": {
            "destinations": [{"name": "w", "type": "webhook", "url": "http://example.com:99999/x"}]
        },
        "DICOM host not a host": {
            "destinations": [
                {"name": "p", "type": "dicom", "ae_title": "P", "host": "not a host!!", "port": 1}
            ]
        },
        "HL7 host empty": {"destinations": [{"name": "r", "type": "hl7", "host": "", "port": 1}]},
        "receiver host not a host": {"receiver": {"host": "not a host!!"}},
        "data_dir in /proc": {"data_dir": "/proc/triage"},
        "data_dir is a file": {"data_dir": str(tmp_path / "file")},
        "database driver absent": {"database": {"url": "postgresql+nosuchdriver://h/db"}},
    }.get(case, {})
    if case.startswith("bundle") and case != "bundle folder missing":
        bundle = _copy_bundle(tmp_path)
        if case == "bundle manifest missing":
            (bundle / "manifest.json").unlink()
        else:
            weights = bytearray((bundle / "fold0_sequence.weights.h5").read_bytes())
            weights[-1] ^= 0xFF  # one bit flipped: the file still opens, the hash differs
            (bundle / "fold0_sequence.weights.h5").write_bytes(weights)
        data = {"model": {"bundle": str(bundle)}}
    (tmp_path / "file").write_text("not a folder")

    code, output = _check(tmp_path, data, capsys)

    assert code == 2, output
    assert not output.rstrip().endswith(": valid")
    assert f": {key}: " in output and reason in output, output
    assert not (tmp_path / "var").exists()  # nothing was created


def test_check_config_accepts_what_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = _pki(tmp_path)
    server_tls = {
        "enabled": True,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
    }
    data = {
        "model": {"bundle": str(_copy_bundle(tmp_path))},
        "receiver": {
            "host": "0.0.0.0",
            "tls": {**server_tls, "ca_certificate": str(pki / "ca.pem")},
        },
        "web": {"host": "::1", "tls": server_tls},
        "destinations": [
            {
                "name": "p",
                "type": "dicom",
                "ae_title": "P",
                "host": "pacs-01.example.org",
                "port": 104,
                "tls": True,
                "ca_certificate": str(pki / "ca.pem"),
            },
            {"name": "r", "type": "hl7", "host": "10.0.0.6", "port": 2575},
            {"name": "w", "type": "webhook", "url": "https://[::1]:8443/hook"},
        ],
        "database": {"url": "postgresql+psycopg://triage@db.example.org/triage"},
    }
    code, output = _check(tmp_path, data, capsys)
    assert code == 0, output
    assert output.strip().endswith(": valid")
    assert not (tmp_path / "var").exists()


def test_model_backend_device_and_precision(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, "model:\n  backend: jax\n  device: cuda:1\n  precision: float16\n")
    )
    assert (cfg.model.backend, cfg.model.device, cfg.model.precision) == (
        "jax",
        "cuda:1",
        "float16",
    )
    defaults = load_config(_write(tmp_path, "{}\n")).model
    assert (defaults.backend, defaults.device, defaults.precision) == ("tensorflow", "auto", None)
    with pytest.raises(ConfigError) as info:
        load_config(
            _write(tmp_path, "model:\n  backend: mxnet\n  device: gpu0\n  precision: int8\n")
        )
    assert {p for p, _ in info.value.problems} == {
        "model.backend",
        "model.device",
        "model.precision",
    }
