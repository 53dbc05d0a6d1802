"""Served mode: one process serves a sample index over TCP; training ranks read it as a :class:`RemoteIndex`.

Embedded mode (the default) opens the index in every training process. Served mode runs
``titan-recipes mixture serve INDEX_DIR --host H --port P`` once (e.g. on the node that holds the
data) and the ranks connect to it; many ranks share one server. Only the index moves to the server:
every rank still plans the chunks itself (:class:`~.chunks.ChunkPlanner` is deterministic and
cheap), so the server holds no training state. A restarted server loses nothing, and a checkpoint
written in embedded mode resumes in served mode and vice versa (the fingerprints are the same).

:class:`RemoteIndex` is the part of :class:`~.index.MixteraIndex` that the planner and the loader
use, with the same results (the same value types for domain keys, int64 id arrays, the same
ConfigError / DataError for a bad query): ``path``, ``properties``, ``sample_ids_by_value``,
``domain_counts``, ``read_texts``, ``files_fingerprint``, ``num_samples``, ``count``, ``query``,
``datasets``, ``close``, and use as a context manager.

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

The server rejects a header over ``MAX_HEADER_BYTES``, a request payload over
``MAX_REQUEST_PAYLOAD_BYTES``, bad JSON and unknown ops with an error reply and a logged warning; after
a malformed frame it closes that connection (the stream cannot be resynchronised) and keeps serving
the others. It answers from one read-only :class:`MixteraIndex` under a lock (a DuckDB connection is
not safe to share between threads, and one index keeps one cache of decompressed files for all
clients); replies are sent outside the lock. Each connection has a thread.

The client connects with ``connect_timeout`` and waits ``request_timeout`` for each reply. A broken
connection (server killed, restarted, network) is retried ``retries`` times with exponential backoff
from ``retry_backoff`` seconds (requests are read-only, so resending is safe); if the server comes
back within that time the run goes on. Otherwise, and when the server is down at construction, it
raises a DataError naming the address, what failed, the command that restarts the server, and that
the training run can be relaunched to resume from its last checkpoint. A server that comes back
serving another index (another files fingerprint) is a DataError too.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...config import ConfigError
from ..common import DataError, FingerprintMismatchError
from .index import MixteraIndex
from .query import Query

logger = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7777
MAX_HEADER_BYTES = 1 << 20
"""Largest JSON header either side accepts (1 MiB); a larger length prefix is a ProtocolError."""
MAX_REQUEST_PAYLOAD_BYTES = 256 << 20
"""Largest request payload the server accepts (256 MiB: 32M sample ids in one ``read_texts``)."""
MAX_REPLY_PAYLOAD_BYTES = 64 << 30
"""Largest reply payload the client accepts (64 MiB of ids per million samples; 64 GiB covers 8G ids)."""

_ERRORS: dict[str, type[Exception]] = {
    "ConfigError": ConfigError, "DataError": DataError, "FingerprintMismatchError": FingerprintMismatchError,
}
"""Errors the server sends back by name and the client raises again as the same class."""
_INT64 = np.dtype("<i8")


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


def _ids_bytes(ids: "np.ndarray | list[int]") -> bytes:
    return np.asarray(ids, dtype=np.int64).astype(_INT64, copy=False).tobytes()


def _ids_from(payload: bytearray | memoryview, count: int | None = None, offset: int = 0) -> np.ndarray:
    if count is None:
        if len(payload) % 8:
            raise ProtocolError(f"an int64 id payload must be a multiple of 8 bytes, got {len(payload)}")
        count = len(payload) // 8
    return np.frombuffer(payload, dtype=_INT64, count=count, offset=offset).astype(np.int64, copy=False)


def _texts_bytes(texts: list[str]) -> bytes:
    # surrogatepass: json.loads turns an escaped lone surrogate ("\ud800") into a str that strict
    # UTF-8 cannot encode; such a text must travel as it is, as in embedded mode.
    blobs = [t.encode("utf-8", "surrogatepass") for t in texts]
    return np.asarray([len(b) for b in blobs], dtype=_INT64).tobytes() + b"".join(blobs)


def _texts_from(payload: bytearray, count: int) -> list[str]:
    if len(payload) < 8 * count:
        raise ProtocolError(f"text payload of {len(payload)} bytes is too short for {count} lengths")
    ends = 8 * count + np.cumsum(_ids_from(payload, count))
    if count and ends[-1] != len(payload):
        raise ProtocolError(f"text payload has {len(payload)} bytes, its lengths add up to {int(ends[-1])}")
    view, start, out = memoryview(payload), 8 * count, []
    for end in ends.tolist():
        out.append(str(view[start:end], "utf-8", "surrogatepass"))
        start = end
    return out


def _query_from(groups: Any) -> Query:
    if not isinstance(groups, list):
        raise ProtocolError(f"'query' must be a list of clause groups, got {type(groups).__name__}")
    return Query(*groups)


def _arg(args: dict[str, Any], name: str, types: type | tuple[type, ...]) -> Any:
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


# -- server ----------------------------------------------------------------------------------------
class _Handler(socketserver.BaseRequestHandler):
    server: "_TCPServer"

    def handle(self) -> None:
        owner, sock = self.server.owner, self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        peer = "%s:%s" % self.client_address[:2]
        owner._connected(peer, sock)
        try:
            while True:
                try:
                    frame = recv_frame(sock, max_payload=owner.max_request_bytes)
                except ProtocolError as e:
                    logger.warning("Mixture server: bad frame from %s, closing the connection: %s", peer, e)
                    owner._count("<bad frame>")
                    send_frame(sock, {"ok": False, "error": "ProtocolError", "message": str(e)})
                    return
                if frame is None:
                    return
                header, payload = frame
                reply, out = owner.answer(header, payload, peer)
                send_frame(sock, reply, out)
        except OSError as e:  # the client went away mid-frame or mid-reply
            logger.info("Mixture server: connection from %s broke: %s", peer, e)
        finally:
            owner._connected(peer, None)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True  # a restart may bind the port while the old sockets are in TIME_WAIT
    daemon_threads = True
    owner: "MixtureServer"

    def service_actions(self) -> None:  # called by serve_forever every poll interval
        self.owner._log_stats()


class MixtureServer:
    """Serves the sample index in ``index_dir`` (opened read-only) on ``host:port`` (port 0: any free
    port; see :attr:`port`). The socket is bound at construction; :meth:`serve_forever` answers until
    :meth:`shutdown`; :meth:`start` does that in a background thread. Request counts are logged every
    ``log_interval`` seconds while there is traffic."""

    def __init__(
        self,
        index_dir: str | os.PathLike[str],
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        log_interval: float = 60.0,
        max_request_bytes: int = MAX_REQUEST_PAYLOAD_BYTES,
    ):
        self.index = MixteraIndex(index_dir, read_only=True)
        self.index_dir = str(Path(index_dir).resolve())
        self.log_interval = log_interval
        self.max_request_bytes = max_request_bytes
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._bytes_out = 0
        self._total_requests = 0
        self._clients: dict[str, socket.socket] = {}
        self._last_log = time.monotonic()
        self._thread: threading.Thread | None = None
        try:
            self._tcp = _TCPServer((host, port), _Handler, bind_and_activate=False)
            self._tcp.owner = self
            self._tcp.server_bind()
            self._tcp.server_activate()
        except OSError as e:
            self._tcp.server_close()
            self.index.close()
            raise DataError(
                f"Mixture server cannot listen on {host}:{port}: {e}. Is another server running there? Pick "
                f"another --port, or stop the other process."
            ) from None
        self.host, self.port = self._tcp.server_address[:2]
        self._ops: dict[str, Callable[[dict[str, Any], bytearray], tuple[Any, bytes]]] = {
            "hello": self._op_hello, "properties": self._op_properties, "files_fingerprint": self._op_fingerprint,
            "num_samples": self._op_num_samples, "count": self._op_count, "query": self._op_query,
            "datasets": self._op_datasets, "domain_counts": self._op_domain_counts,
            "sample_ids_by_value": self._op_sample_ids_by_value, "read_texts": self._op_read_texts,
        }

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def serve_forever(self) -> None:
        logger.info(
            "Mixture server: serving %s (%d samples, files fingerprint %s) on %s, protocol %d",
            self.index_dir, self.index.num_samples(), self.index.files_fingerprint(), self.address,
            PROTOCOL_VERSION,
        )
        self._tcp.serve_forever(poll_interval=0.5)

    def start(self) -> "MixtureServer":
        """Serve in a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"mixture-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Make :meth:`serve_forever` return soon; safe in a signal handler of the serving thread."""
        threading.Thread(target=self._tcp.shutdown, name="mixture-server-stop", daemon=True).start()

    def shutdown(self) -> None:
        """Stop serving (from another thread than :meth:`serve_forever`'s); close the listening socket,
        the clients' connections and the index."""
        if self._thread is not None:
            self._tcp.shutdown()
            self._thread.join()
            self._thread = None
        self._tcp.server_close()
        with self._stats_lock:
            clients = list(self._clients.values())
        for sock in clients:  # their handler threads see the connection end and return
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the client
                pass
        with self._lock:
            self.index.close()
        logger.info("Mixture server on %s stopped after %d request(s).", self.address, self._total_requests)

    def __enter__(self) -> "MixtureServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # -- bookkeeping -------------------------------------------------------------------------------
    def _connected(self, peer: str, sock: socket.socket | None) -> None:
        """Track the open connections (``sock`` None: ``peer`` disconnected), to close them at shutdown."""
        with self._stats_lock:
            if sock is None:
                self._clients.pop(peer, None)
            else:
                self._clients[peer] = sock
            clients = len(self._clients)
        logger.info("Mixture server: client %s %s (%d connected)", peer, "disconnected" if sock is None else
                    "connected", clients)

    def _count(self, op: str, nbytes: int = 0) -> None:
        with self._stats_lock:
            self._requests[op] += 1
            self._total_requests += 1
            self._bytes_out += nbytes

    def _log_stats(self) -> None:
        now = time.monotonic()
        if now - self._last_log < self.log_interval:
            return
        with self._stats_lock:
            requests, nbytes, clients = dict(self._requests), self._bytes_out, len(self._clients)
            self._requests.clear()
            self._bytes_out = 0
        if requests:
            logger.info(
                "Mixture server: %d request(s) in the last %.0f s %s, %.1f MiB sent, %d client(s) connected",
                sum(requests.values()), now - self._last_log, requests, nbytes / 2**20, clients,
            )
        self._last_log = now

    # -- requests ----------------------------------------------------------------------------------
    def answer(self, header: dict[str, Any], payload: bytearray, peer: str = "?") -> tuple[dict[str, Any], bytes]:
        """The reply frame ``(header, payload)`` to one request frame; never raises for bad requests."""
        op = header.get("op")
        handler = self._ops.get(op) if isinstance(op, str) else None
        try:
            if handler is None:
                raise ProtocolError(
                    f"unknown op {op!r}; this server (protocol {PROTOCOL_VERSION}) knows {sorted(self._ops)}"
                )
            args = header.get("args", {})
            if not isinstance(args, dict):
                raise ProtocolError(f"'args' must be a JSON object, got {type(args).__name__}")
            result, out = handler(args, payload)
        except ProtocolError as e:
            logger.warning("Mixture server: bad request from %s: %s", peer, e)
            self._count("<bad request>")
            return {"ok": False, "error": "ProtocolError", "message": str(e)}, b""
        except (ConfigError, DataError) as e:  # the index's own errors, raised again on the client
            self._count(op)
            return {"ok": False, "error": type(e).__name__, "message": str(e)}, b""
        except Exception as e:  # a request the index cannot answer must not stop the server
            logger.warning("Mixture server: request %s from %s failed", op, peer, exc_info=True)
            self._count(op)
            return {"ok": False, "error": "DataError", "message": f"mixture server failed on {op}: "
                    f"{type(e).__name__}: {e}"}, b""
        self._count(op, len(out))
        return {"ok": True, "result": result}, out

    def _op_hello(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        version = args.get("protocol")
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"client speaks protocol {version!r}, this server {PROTOCOL_VERSION}; use the same titan-recipes "
                f"version on both sides"
            )
        with self._lock:
            return {"protocol": PROTOCOL_VERSION, "index_dir": self.index_dir,
                    "files_fingerprint": self.index.files_fingerprint(), "properties": self.index.properties}, b""

    def _op_properties(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        with self._lock:
            return self.index.properties, b""

    def _op_fingerprint(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        with self._lock:
            return self.index.files_fingerprint(), b""

    def _op_num_samples(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        dataset = _arg(args, "dataset", (str, type(None)))
        with self._lock:
            return self.index.num_samples(dataset), b""

    def _op_count(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        query = _query_from(args.get("query", []))
        with self._lock:
            return self.index.count(query), b""

    def _op_query(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        query = _query_from(args.get("query", []))
        with self._lock:
            ids = self.index.query(query)
        return None, _ids_bytes(ids)

    def _op_datasets(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        with self._lock:
            rows = self.index.datasets()
        for row in rows:  # a TIMESTAMP; the client turns it back into a datetime
            row["registered_at"] = row["registered_at"].isoformat()
        return rows, b""

    def _op_domain_counts(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        prop, query = _arg(args, "property", str), _query_from(args.get("query", []))
        with self._lock:
            counts = self.index.domain_counts(prop, query)
        return [[value, n] for value, n in counts.items()], b""

    def _op_sample_ids_by_value(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        prop, values = _arg(args, "property", str), _arg(args, "values", list)
        query = _query_from(args.get("query", []))
        with self._lock:
            ids = self.index.sample_ids_by_value(prop, values, query)
        arrays = [ids[v] for v in values]
        return [len(a) for a in arrays], b"".join(_ids_bytes(a) for a in arrays)

    def _op_read_texts(self, args: dict[str, Any], payload: bytearray) -> tuple[Any, bytes]:
        ids = _ids_from(payload)
        with self._lock:
            texts = self.index.read_texts(ids)
        return len(texts), _texts_bytes(texts)


# -- client ----------------------------------------------------------------------------------------
class RemoteIndex:
    """A sample index served by a :class:`MixtureServer` at ``host:port``, with the reading interface
    of :class:`MixteraIndex` (see the module docstring). DataError at construction when the server
    cannot be reached after ``retries`` reconnects.

    Args:
        host, port: the server's address.
        index_dir: the index directory the run is configured with, for messages (and a logged warning
            when the server serves another directory); None to use the server's.
        connect_timeout: seconds to wait for a TCP connection.
        request_timeout: seconds to wait for one reply (the first ``sample_ids_by_value`` of a big
            index and the first read of a large compressed file are the slow ones).
        retries: reconnect attempts after a broken connection, waiting ``retry_backoff * 2**k``
            seconds before reconnect ``k + 1`` (defaults: 3 reconnects over 3.5 s).
    """

    read_only = True

    def __init__(
        self,
        host: str,
        port: int,
        *,
        index_dir: str | os.PathLike[str] | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 300.0,
        retries: int = 3,
        retry_backoff: float = 0.5,
    ):
        self.host, self.port = host, int(port)
        self.connect_timeout, self.request_timeout = connect_timeout, request_timeout
        self.retries, self.retry_backoff = retries, retry_backoff
        self.configured_dir = None if index_dir is None else str(index_dir)
        self.served_dir: str | None = None
        self.path = _url(host, self.port, self.configured_dir or "")
        self._fingerprint: str | None = None
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._closed = False
        with self._lock:
            self._reconnect("connect")

    # -- connection --------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except socket.timeout:
            raise ConnectionError(f"no TCP connection within connect_timeout = {self.connect_timeout} s") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self.request_timeout)
        self._sock = sock
        try:
            hello = self._exchange("hello", {"protocol": PROTOCOL_VERSION}, b"")[0]
        except BaseException:
            self._drop()  # no half-open connection without a handshake
            raise
        served, fp = hello["index_dir"], hello["files_fingerprint"]
        if self._fingerprint is not None and fp != self._fingerprint:
            self._drop()
            raise DataError(
                f"The mixture server at {self.host}:{self.port} came back serving other data ({served}, files "
                f"fingerprint {fp}) than before ({self.served_dir}, {self._fingerprint}); this run's sample order "
                f"would change. Serve the original index again, then relaunch the run to resume from its last "
                f"checkpoint."
            )
        if self.served_dir is None:
            if self.configured_dir is not None and os.path.abspath(self.configured_dir) != served:
                logger.warning(
                    "Mixture server %s:%d serves %s, not the configured index directory %s; reading the served one.",
                    self.host, self.port, served, self.configured_dir,
                )
            logger.info("Mixture index served by %s:%d: %s (files fingerprint %s)", self.host, self.port, served, fp)
        self.served_dir, self._fingerprint = served, fp
        self.path = _url(self.host, self.port, served)

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _reconnect(self, what: str) -> None:
        """Connect, retrying with backoff; DataError when every attempt fails."""
        start, last = time.monotonic(), None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.retry_backoff * 2 ** (attempt - 1))
            try:
                self._open()
                return
            except (OSError, EOFError) as e:
                self._drop()
                last = e
                logger.warning("Mixture server %s:%d: %s, attempt %d of %d: %s: %s", self.host, self.port, what,
                               attempt + 1, self.retries + 1, type(e).__name__, e)
        raise self._unreachable(what, last, time.monotonic() - start)

    def _unreachable(self, what: str, error: BaseException | None, seconds: float) -> DataError:
        index_dir = self.served_dir or self.configured_dir or "INDEX_DIR"
        return DataError(
            f"Mixture server {self.host}:{self.port} is unreachable: {what} failed after {self.retries + 1} "
            f"attempt(s) over {seconds:.1f} s ({type(error).__name__}: {error}). Start it (again) with "
            f"`titan-recipes mixture serve {index_dir} --host {self.host} --port {self.port}`, then relaunch the "
            f"training run: it resumes from its last checkpoint with no sample lost or repeated (or read the "
            f"index in-process: leave the server setting empty)."
        )

    def _exchange(self, op: str, args: dict[str, Any], payload: bytes) -> tuple[Any, bytearray]:
        """One request on the open connection. OSError/EOFError when the connection breaks."""
        try:
            send_frame(self._sock, {"op": op, "args": args}, payload)
            frame = recv_frame(self._sock, max_payload=MAX_REPLY_PAYLOAD_BYTES)
        except socket.timeout:
            self._drop()
            raise DataError(
                f"Mixture server {self.host}:{self.port} sent no reply to {op} within request_timeout = "
                f"{self.request_timeout} s; it is overloaded or stuck. Raise request_timeout, or check its log."
            ) from None
        except ProtocolError as e:
            self._drop()
            raise DataError(f"Mixture server {self.host}:{self.port} sent a malformed reply to {op}: {e}; is it a "
                            f"titan-recipes mixture server of the same version?") from None
        if frame is None:
            raise EOFError("the server closed the connection")
        header, out = frame
        if not header.get("ok"):
            error = _ERRORS.get(header.get("error"), DataError)
            raise error(str(header.get("message")))
        return header.get("result"), out

    def _call(self, op: str, args: dict[str, Any] | None = None, payload: bytes = b"") -> tuple[Any, bytearray]:
        with self._lock:
            if self._closed:
                raise DataError(f"RemoteIndex {self.path} is closed.")
            if self._sock is None:
                self._reconnect(op)
            try:
                return self._exchange(op, args or {}, payload)
            except (OSError, EOFError) as e:
                self._drop()
                logger.warning("Mixture server %s:%d: connection broke during %s (%s: %s); reconnecting",
                               self.host, self.port, op, type(e).__name__, e)
            start = time.monotonic()
            self._reconnect(op)  # the server may be back (restarted); DataError if it stays away
            try:
                return self._exchange(op, args or {}, payload)
            except (OSError, EOFError) as e:  # it accepted the handshake, then broke again
                self._drop()
                raise self._unreachable(op, e, time.monotonic() - start) from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop()

    def __enter__(self) -> "RemoteIndex":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RemoteIndex({self.path})"

    # -- the index interface -----------------------------------------------------------------------
    @property
    def properties(self) -> dict[str, str]:
        """Property columns of ``samples``: name -> DuckDB type."""
        return self._call("properties")[0]

    def files_fingerprint(self) -> str:
        return self._call("files_fingerprint")[0]

    def num_samples(self, dataset: str | None = None) -> int:
        return self._call("num_samples", {"dataset": dataset})[0]

    def count(self, query: Query | None = None) -> int:
        return self._call("count", {"query": _query_list(query)})[0]

    def query(self, query: Query | None = None) -> np.ndarray:
        """Ids of the samples matching ``query``, ascending, int64."""
        return _ids_from(self._call("query", {"query": _query_list(query)})[1])

    def datasets(self) -> list[dict[str, Any]]:
        rows = self._call("datasets")[0]
        for row in rows:
            row["registered_at"] = datetime.datetime.fromisoformat(row["registered_at"])
        return rows

    def domain_counts(self, prop: str, query: Query | None = None) -> dict[Any, int]:
        pairs = self._call("domain_counts", {"property": prop, "query": _query_list(query)})[0]
        return {value: n for value, n in pairs}

    def sample_ids_by_value(self, prop: str, values: list[Any], query: Query | None = None) -> dict[Any, np.ndarray]:
        values = list(values)
        sizes, payload = self._call(
            "sample_ids_by_value", {"property": prop, "values": values, "query": _query_list(query)}
        )
        if len(sizes) != len(values) or 8 * sum(sizes) != len(payload):
            raise DataError(f"Mixture server {self.host}:{self.port} sent {len(payload)} bytes for id counts {sizes} "
                            f"of {len(values)} value(s); the reply is inconsistent.")
        out, offset = {}, 0
        for value, n in zip(values, sizes):  # keyed by the caller's values, as MixteraIndex does
            out[value] = _ids_from(payload, n, offset)
            offset += 8 * n
        return out

    def read_texts(self, ids: "list[int] | np.ndarray") -> list[str]:
        """The texts of sample ``ids`` in the order given."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return []
        count, payload = self._call("read_texts", None, _ids_bytes(ids))
        try:
            return _texts_from(payload, count)
        except (ProtocolError, UnicodeDecodeError) as e:
            raise DataError(f"Mixture server {self.host}:{self.port} sent malformed texts: {e}") from None


def _url(host: str, port: int, directory: str) -> str:
    return f"mixture://{host}:{port}{'' if directory.startswith('/') else '/'}{directory}"


def _query_list(query: Query | None) -> list[Any]:
    return (query or Query()).to_list()


def open_index(index_dir: str, server: str = "", **client_options: Any) -> MixteraIndex | RemoteIndex:
    """The index a training rank reads: ``index_dir`` in-process (embedded mode) when ``server`` is
    empty, else a :class:`RemoteIndex` of the server at ``server`` (``"host:port"``; ConfigError for a
    bad address, DataError when it cannot be reached). ``client_options`` go to RemoteIndex."""
    if not server:
        return MixteraIndex(index_dir, read_only=True)
    host, port = parse_address(server)
    return RemoteIndex(host, port, index_dir=index_dir or None, **client_options)


# -- a server in a subprocess (tests, benchmarks, scripts) -------------------------------------------
def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def spawn_server(
    index_dir: str | os.PathLike[str], port: int, *, host: str = "127.0.0.1", log: str | os.PathLike[str] | None = None,
    timeout: float = 120.0,
) -> subprocess.Popen:
    """Start ``titan-recipes mixture serve INDEX_DIR --host HOST --port PORT`` in a subprocess (its log
    appended to ``log``, else discarded) and return once it accepts connections; RuntimeError with the
    end of the log if it exits or does not listen within ``timeout`` seconds. Stop it with SIGTERM
    (graceful) or SIGKILL (what a crash looks like to the clients)."""
    src = str(Path(__file__).resolve().parents[3])  # this checkout's src/, for a child with another cwd
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "titan_recipes.cli", "mixture", "serve", str(index_dir), "--host", host,
               "--port", str(port)]
    with open(log if log is not None else os.devnull, "ab") as out:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=out, env=env)

    def tail() -> str:
        return Path(log).read_text(errors="replace")[-3000:] if log is not None else "(no log kept)"

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mixture serve exited with {proc.returncode}: {tail()}")
        try:
            socket.create_connection((host, port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"mixture serve did not listen on {host}:{port} within {timeout:.0f} s: {tail()}")
