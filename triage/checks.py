"""The offline checks of ``triage check-config``: what the schema cannot see.

The schema (:mod:`triage.config`) checks each value's form. These check what the values
point at on this machine, without starting anything or reaching the network: the weight
bundle (its manifest and every file's sha256), the TLS certificates and keys, the data
folder, and the database URL.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from model.bundle import BundleError, load_bundle
from triage.config import Config

Problem = tuple[str, str]


def check_offline(config: Config) -> list[Problem]:
    """Every problem found, as ``(key_path, reason)`` pairs; empty when all is well.

    Parameters
    ----------
    config : Config
        A configuration that passed the schema.
    """
    problems: list[Problem] = []
    try:
        load_bundle(config.model.bundle_dir)
    except BundleError as err:
        problems.append(("model.bundle", f"{config.model.bundle_dir}: {err}"))

    tls = config.receiver.tls
    if tls.enabled:
        problems += _server_tls(
            "receiver.tls", tls.certificate, tls.private_key, tls.private_key_password
        )
        if tls.ca_certificate is not None:
            problems += _ca("receiver.tls.ca_certificate", tls.ca_certificate)
    web_tls = config.web.tls
    if web_tls.enabled:
        problems += _server_tls(
            "web.tls", web_tls.certificate, web_tls.private_key, web_tls.private_key_password
        )
    for i, destination in enumerate(config.destinations):
        ca = getattr(destination, "ca_certificate", None)
        if ca is not None:
            problems += _ca(f"destinations[{i}].ca_certificate", ca)

    reason = _unusable_folder(config.data_dir)
    if reason:
        problems.append(("data_dir", f"{config.data_dir}: {reason}"))
    problems += _database(config)
    return problems


def _readable(key: str, path: Path | None) -> list[Problem]:
    if path is None:
        return [(key, "is required")]
    if not path.is_file():
        return [(key, f"{path} does not exist or is not a file")]
    if not os.access(path, os.R_OK):
        return [(key, f"{path} is not readable")]
    return []


def _server_tls(
    key: str, certificate: Path | None, private_key: Path | None, password: str | None
) -> list[Problem]:
    problems = _readable(f"{key}.certificate", certificate) + _readable(
        f"{key}.private_key", private_key
    )
    if problems:
        return problems
    try:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(certificate), str(private_key), password)
    except (OSError, ssl.SSLError) as err:
        return [
            (
                key,
                f"cannot load the certificate and private key: {err}; are they PEM, do "
                "they belong together, and is private_key_password right?",
            )
        ]
    return []


def _ca(key: str, path: Path) -> list[Problem]:
    problems = _readable(key, path)
    if problems:
        return problems
    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as err:
        return [(key, f"{path} is not a PEM CA bundle: {err}")]
    return []


def _unusable_folder(path: Path) -> str | None:
    """Why the daemon could not create or write ``path``, or None if it can."""
    if path.exists():
        if not path.is_dir():
            return "exists and is not a folder"
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            return f"cannot write in it: {err.strerror or err}"
        return None
    # Try where it would be created, leaving nothing behind.
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        return f"cannot be created: {parent} is not a folder"
    try:
        os.rmdir(tempfile.mkdtemp(dir=parent))
    except OSError as err:
        return f"cannot be created in {parent}: {err.strerror or err}"
    return None


def _database(config: Config) -> list[Problem]:
    if config.database.url is None:
        return []  # SQLite in data_dir, checked with it
    try:
        url = make_url(config.database.url)
    except ArgumentError as err:
        return [("database.url", f"not a database URL: {err}")]
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database and url.database != ":memory:":
            reason = _unusable_folder(Path(url.database).parent)
            if reason:
                return [("database.url", f"the SQLite file's folder {reason}")]
        return []
    if backend != "postgresql":
        return [("database.url", f"{backend} is not supported; use sqlite or postgresql")]
    try:
        create_engine(url).dispose()  # loads the driver; connects to nothing
    except (NoSuchModuleError, ImportError) as err:
        return [("database.url", f"the driver for {url.drivername} is not installed: {err}")]
    return []
