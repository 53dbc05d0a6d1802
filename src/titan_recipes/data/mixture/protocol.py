"""The wire protocol of served mode (:mod:`.server`, :mod:`.client`): frames, their encoding, limits
and the errors that cross the wire.

Wire format (no pickle: nothing from the network is executed or unpickled). Every message, either
way, is one frame::

    [4-byte big-endian header length][UTF-8 JSON header][payload: header["payload"] bytes]

A request header is ``{"op": ..., "args": {...}, "payload": n}``; a reply is ``{"ok": true,
"result": ..., "payload": n}`` or ``{"ok": false, "error": "ConfigError" | "DataError" |
"FingerprintMismatchError" | "ProtocolError", "message": ...}``. Id arrays travel in the payload as
little-endian int64; texts as ``count`` little-endian int64 byte lengths followed by the UTF-8 texts
back to back. Queries travel as :meth:`~.query.Query.to_list` and are rebuilt with ``Query(*groups)``.
Domain values travel as JSON values in lists (never as object keys), so strings, ints, floats and
booleans come back with their own type. The first request on a connection is ``hello``: the
protocol version (must match), the served index directory and its ``files_fingerprint``.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError, FingerprintMismatchError
from .query import Query

PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777
MAX_HEADER_BYTES = 1 << 20
"""Largest JSON header either side accepts (1 MiB); a larger length prefix is a ProtocolError."""
MAX_REQUEST_PAYLOAD_BYTES = 256 << 20
"""Largest request payload the server accepts (256 MiB: 32M sample ids in one ``read_texts``)."""
MAX_REPLY_PAYLOAD_BYTES = 64 << 30
"""Largest reply payload the client accepts (64 MiB of ids per million samples; 64 GiB covers 8G ids)."""

ERRORS: dict[str, type[Exception]] = {
    "ConfigError": ConfigError, "DataError": DataError, "FingerprintMismatchError": FingerprintMismatchError,
}
"""Errors the server sends back by name and the client raises again as the same class."""
INT64 = np.dtype("<i8")


class ProtocolError(Exception):
    """A frame that does not follow the wire format (size limits, JSON, field types)."""


# -- frames ----------------------------------------------------------------------------------------
def send_frame(sock: socket.socket, header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> None:
    """Send one frame: the header (with ``payload`` set to the payload's length) and the payload."""
    blob = json.dumps({**header, "payload": len(payload)}, separators=(",", ":")).encode()
    sock.sendall(struct.pack(">I", len(blob)) + blob)
    if len(payload):
        sock.sendall(payload)


def _recv_exact(sock: socket.socket, n: int, *, at_boundary: bool = False) -> bytearray | None:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            if at_boundary and got == 0:
                return None
            raise ConnectionError(f"connection closed by the peer {got} bytes into a {n}-byte read")
        got += k
    return buf


def recv_frame(
    sock: socket.socket, *, max_payload: int, max_header: int = MAX_HEADER_BYTES
) -> tuple[dict[str, Any], bytearray] | None:
    """Receive one frame: ``(header, payload)``, or None when the peer closed between frames.
    ProtocolError for an oversized or malformed frame; ConnectionError when it closes mid-frame."""
    prefix = _recv_exact(sock, 4, at_boundary=True)
    if prefix is None:
        return None
    (size,) = struct.unpack(">I", prefix)
    if size > max_header:
        raise ProtocolError(f"frame header of {size} bytes is over the limit of {max_header} bytes")
    try:
        header = json.loads(_recv_exact(sock, size).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(f"frame header is not UTF-8 JSON ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict):
        raise ProtocolError(f"frame header must be a JSON object, got {type(header).__name__}")
    n = header.get("payload", 0)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ProtocolError(f"frame header 'payload' must be a byte count, got {n!r}")
    if n > max_payload:
        raise ProtocolError(f"frame payload of {n} bytes is over the limit of {max_payload} bytes")
    return header, _recv_exact(sock, n) if n else bytearray()


def ids_bytes(ids: "np.ndarray | list[int]") -> bytes:
    """Sample ids as a payload: little-endian int64."""
    return np.asarray(ids, dtype=np.int64).astype(INT64, copy=False).tobytes()


def ids_from(payload: bytearray | memoryview, count: int | None = None, offset: int = 0) -> np.ndarray:
    """``count`` int64 ids (all of the payload for None) from ``offset`` of an id payload."""
    if count is None:
        if len(payload) % 8:
            raise ProtocolError(f"an int64 id payload must be a multiple of 8 bytes, got {len(payload)}")
        count = len(payload) // 8
    return np.frombuffer(payload, dtype=INT64, count=count, offset=offset).astype(np.int64, copy=False)


def texts_bytes(texts: list[str]) -> bytes:
    """Texts as a payload: their UTF-8 byte lengths (int64), then the texts back to back."""
    # surrogatepass: json.loads turns an escaped lone surrogate ("\ud800") into a str that strict
    # UTF-8 cannot encode; such a text must travel as it is, as in embedded mode.
    blobs = [t.encode("utf-8", "surrogatepass") for t in texts]
    return np.asarray([len(b) for b in blobs], dtype=INT64).tobytes() + b"".join(blobs)


def texts_from(payload: bytearray, count: int) -> list[str]:
    """The ``count`` texts of a :func:`texts_bytes` payload; ProtocolError when it is inconsistent."""
    if len(payload) < 8 * count:
        raise ProtocolError(f"text payload of {len(payload)} bytes is too short for {count} lengths")
    ends = 8 * count + np.cumsum(ids_from(payload, count))
    if count and ends[-1] != len(payload):
        raise ProtocolError(f"text payload has {len(payload)} bytes, its lengths add up to {int(ends[-1])}")
    view, start, out = memoryview(payload), 8 * count, []
    for end in ends.tolist():
        out.append(str(view[start:end], "utf-8", "surrogatepass"))
        start = end
    return out


def query_from(groups: Any) -> Query:
    """A request's ``query`` argument (:meth:`~.query.Query.to_list`) as a Query."""
    if not isinstance(groups, list):
        raise ProtocolError(f"'query' must be a list of clause groups, got {type(groups).__name__}")
    return Query(*groups)


def arg(args: dict[str, Any], name: str, types: type | tuple[type, ...]) -> Any:
    """Request argument ``name``, which must be of ``types`` (ProtocolError otherwise)."""
    value = args.get(name)
    if not isinstance(value, types):
        raise ProtocolError(f"argument {name!r} must be {types}, got {value!r}")
    return value


def parse_address(server: str) -> tuple[str, int]:
    """``"host:port"`` (``"[::1]:7777"`` for IPv6) as ``(host, port)``; ConfigError for anything else."""
    host, sep, port = server.strip().rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"Mixture server address {server!r} is not HOST:PORT with a port in 1..65535 (e.g. "
            f"'127.0.0.1:{DEFAULT_PORT}'); fix the [mixture] server setting, or leave it empty to read the "
            f"index in-process."
        )
    return host, int(port)


def query_list(query: Query | None) -> list[Any]:
    """A query as it travels (all samples for None)."""
    return (query or Query()).to_list()
