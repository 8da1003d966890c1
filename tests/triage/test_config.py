"""Configuration: typed, validated, every error with its key path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from triage.cli import main
from triage.config import Config, load_config
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
