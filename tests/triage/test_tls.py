"""DICOM TLS on the receiver, with a throwaway CA the test creates with openssl."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from dicom_factory import ct_slice
from pydicom.uid import CTImageStorage
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from support import make_test_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def _client_context(pki: Path, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    ctx.check_hostname = False
    if with_cert:
        ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    return ctx


def _tls(pki: Path, require: bool) -> dict:
    return {
        "enabled": True,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
        "ca_certificate": str(pki / "ca.pem"),
        "require_client_certificate": require,
    }


def test_store_over_tls(start_receiver, pki: Path) -> None:
    rx = start_receiver(receiver={"tls": _tls(pki, require=False)})
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        rx.port,
        ae_title="TRIAGE",
        tls_args=(_client_context(pki, with_cert=False), None),
    )
    assert assoc.is_established
    assert assoc.send_c_store(ct_slice("1.2.11", "1.2.11.1", 0)).Status == 0x0000
    assoc.release()
    assert len(list(rx.spool.rglob("*.dcm"))) == 1

    # A client speaking plain DICOM to a TLS port gets nowhere.
    plain = AE(ae_title="PLAIN")
    plain.add_requested_context(Verification)
    plain.acse_timeout = 3
    plain.network_timeout = 3
    assert not plain.associate("127.0.0.1", rx.port, ae_title="TRIAGE").is_established


def test_client_certificate_required(start_receiver, pki: Path) -> None:
    rx = start_receiver(receiver={"tls": _tls(pki, require=True)})
    ae = AE(ae_title="TLSSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 3
    ae.network_timeout = 3
    refused = ae.associate(
        "127.0.0.1",
        rx.port,
        ae_title="TRIAGE",
        tls_args=(_client_context(pki, with_cert=False), None),
    )
    assert not refused.is_established
    accepted = ae.associate(
        "127.0.0.1",
        rx.port,
        ae_title="TRIAGE",
        tls_args=(_client_context(pki, with_cert=True), None),
    )
    assert accepted.is_established
    assert accepted.send_c_echo().Status == 0x0000
    accepted.release()


def test_bad_tls_files_give_a_clear_error(tmp_path: Path) -> None:
    from triage.config import ReceiverConfig, TLSConfig
    from triage.errors import TriageError
    from triage.receive.scp import build_ssl_context

    cfg = ReceiverConfig(
        tls=TLSConfig(
            enabled=True, certificate=tmp_path / "no.pem", private_key=tmp_path / "no.key"
        )
    )
    with pytest.raises(TriageError, match=r"receiver\.tls"):
        build_ssl_context(cfg)


# --- HTTPS for the worklist ------------------------------------------------------------


def test_worklist_over_https_with_a_real_tls_client(tmp_path: Path, pki: Path) -> None:
    import http.client
    import json
    import urllib.request

    from support import make_config, open_db

    from triage.web import start_web

    web_tls = {
        "enabled": True,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "server.key"),
    }
    config = make_config(tmp_path, web={"port": 0, "token": "s3cret-token", "tls": web_tls})
    web = start_web(config, open_db(config))
    try:
        assert web.url == f"https://127.0.0.1:{web.port}/"
        verified = ssl.create_default_context(cafile=str(pki / "ca.pem"))  # checks the name
        request = urllib.request.Request(
            f"{web.url}api/worklist", headers={"Authorization": "Bearer s3cret-token"}
        )
        with urllib.request.urlopen(request, context=verified, timeout=10) as response:
            assert response.status == 200
            assert json.load(response)["rows"] == []
        with (
            ssl.create_connection(("127.0.0.1", web.port), timeout=10) as raw,
            verified.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")

        # The session cookie set over HTTPS is Secure: a browser never sends it in clear.
        conn = http.client.HTTPSConnection("127.0.0.1", web.port, context=verified, timeout=10)
        conn.request("GET", "/?token=s3cret-token")
        answer = conn.getresponse()
        assert answer.status == 303
        assert "Secure" in (answer.getheader("set-cookie") or "")
        conn.close()

        # Clear text gets no worklist: the port speaks TLS only.
        plain = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            plain.request("GET", "/healthz")
            plain.getresponse()
        plain.close()
    finally:
        web.stop()


def test_bad_web_tls_files_give_a_clear_error(tmp_path: Path, pki: Path) -> None:
    from support import make_config, open_db

    from triage.web import WebError, start_web

    web_tls = {
        "enabled": True,
        "certificate": str(pki / "server.pem"),
        "private_key": str(pki / "client.key"),  # the key of another certificate
    }
    config = make_config(tmp_path, web={"port": 0, "tls": web_tls})
    with pytest.raises(WebError, match=r"web\.tls"):
        start_web(config, open_db(config))


def test_a_silent_tls_peer_does_not_stop_the_accept_loop(start_receiver, pki: Path) -> None:
    """Issue 12: the TLS handshake ran in the thread that accepts connections, with no
    deadline, so one peer that connected and said nothing stopped every other one."""
    import socket
    import time

    rx = start_receiver(
        receiver={"tls": _tls(pki, require=False), "network_timeout": 2, "acse_timeout": 2}
    )
    with socket.create_connection(("127.0.0.1", rx.port)) as silent:
        time.sleep(0.3)  # accepted, and waiting for a ClientHello that never comes
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context(Verification)
        ae.acse_timeout = 5
        ae.network_timeout = 5
        assoc = ae.associate(
            "127.0.0.1",
            rx.port,
            ae_title="TRIAGE",
            tls_args=(_client_context(pki, with_cert=False), None),
        )
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
        # The silent one is dropped once its handshake deadline has passed.
        silent.settimeout(5)
        start = time.monotonic()
        assert silent.recv(100) == b""
        assert time.monotonic() - start < 4
