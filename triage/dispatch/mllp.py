"""MLLP: HL7 v2 messages framed as ``<VT> message <FS><CR>`` over TCP, and their ACKs."""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass

START = b"\x0b"
END = b"\x1c\x0d"
_MAX_ACK_BYTES = 1 << 20  # an ACK is a few hundred bytes; a peer streaming more is broken


class MLLPError(OSError):
    """The peer broke the MLLP framing, closed early, or did not answer in time."""


def frame(message: bytes) -> bytes:
    """Wrap one HL7 message in MLLP's start and end blocks."""
    return START + message + END


def exchange(host: str, port: int, message: bytes, timeout: float) -> bytes:
    """Send one framed message and return the peer's reply, unframed.

    Parameters
    ----------
    host, port : str, int
        The HL7 listener.
    message : bytes
        The HL7 message, segments separated by carriage returns.
    timeout : float
        Seconds for connecting and, separately, for the whole reply to arrive.

    Raises
    ------
    OSError
        If the connection fails (``ConnectionRefusedError`` and the like), or
        :class:`MLLPError` if the reply is late or not framed.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(frame(message))
        deadline = time.monotonic() + timeout
        buffer = b""
        while END not in buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise MLLPError(f"no ACK from {host}:{port} within {timeout:g} s")
            sock.settimeout(left)
            try:
                chunk = sock.recv(65536)
            except TimeoutError as err:
                raise MLLPError(f"no ACK from {host}:{port} within {timeout:g} s") from err
            if not chunk:
                raise MLLPError(f"{host}:{port} closed the connection without an ACK")
            buffer += chunk
            if len(buffer) > _MAX_ACK_BYTES:
                raise MLLPError(f"{host}:{port} sent more than 1 MiB without an end block")
    start = buffer.find(START)
    if start < 0:
        raise MLLPError(f"{host}:{port} answered without an MLLP start block")
    return buffer[start + 1 : buffer.index(END, start)]


@dataclass(frozen=True)
class Ack:
    """An HL7 acknowledgment: MSA-1's code, MSA-2's control ID and the reason text."""

    code: str
    control_id: str
    text: str

    @property
    def accepted(self) -> bool:
        """AA (or CA in enhanced mode): the receiver has the message."""
        return self.code in ("AA", "CA")

    @property
    def rejected(self) -> bool:
        """AR (or CR): the receiver will never take this message as it is."""
        return self.code in ("AR", "CR")


def parse_ack(payload: bytes) -> Ack:
    """Read MSA and ERR from an ACK.

    Raises
    ------
    ValueError
        If there is no MSH or no MSA segment.
    """
    text = payload.decode("utf-8", errors="replace")
    segments = [s for s in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    if not segments or not segments[0].startswith("MSH") or len(segments[0]) < 8:
        raise ValueError("the ACK has no MSH segment")
    sep = segments[0][3]
    component = segments[0][4]
    msa: list[str] | None = None
    reasons: list[str] = []
    for segment in segments[1:]:
        fields = segment.split(sep)
        if fields[0] == "MSA":
            msa = fields
        elif fields[0] == "ERR":
            # ERR-8 is the user message (v2.5); ERR-3's text component, then v2.4's
            # ERR-1, are what older engines fill.
            for index in (8, 3, 1):
                if len(fields) > index and fields[index]:
                    parts = fields[index].split(component)
                    reasons.append(parts[1] if index == 3 and len(parts) > 1 else fields[index])
                    break
    if msa is None or len(msa) < 2:
        raise ValueError("the ACK has no MSA segment")
    msa_text = msa[3] if len(msa) > 3 else ""
    reason = "; ".join(r for r in [msa_text, *reasons] if r)
    return Ack(code=msa[1].strip(), control_id=msa[2] if len(msa) > 2 else "", text=reason)
