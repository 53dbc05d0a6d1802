"""Served mode: one process serves a sample index over TCP; training ranks read it as a :class:`RemoteIndex`.

Embedded mode (the default) opens the index in every training process. Served mode runs
``titan-recipes mixture serve INDEX_DIR --host H --port P`` once (e.g. on the node that holds the
data) and the ranks connect to it; many ranks share one server. Only the index moves to the server:
every rank still plans the chunks itself (:class:`~.chunks.ChunkPlanner` is deterministic and
cheap), so the server holds no training state. A restarted server loses nothing, and a checkpoint
written in embedded mode resumes in served mode and vice versa (the fingerprints are the same).

The wire format is in :mod:`.protocol`, the client (:class:`~.client.RemoteIndex`) in :mod:`.client`,
and :func:`~.reader.open_index` picks embedded or served mode.

The server rejects a header over ``MAX_HEADER_BYTES``, a request payload over
``MAX_REQUEST_PAYLOAD_BYTES``, bad JSON and unknown ops with an error reply and a logged warning; after
a malformed frame it closes that connection (the stream cannot be resynchronised) and keeps serving
the others. It answers from one read-only :class:`SampleIndex` under a lock (a DuckDB connection is
not safe to share between threads, and one index keeps one cache of decompressed files for all
clients); replies are sent outside the lock. Each connection has a thread.
"""

from __future__ import annotations

import logging
import os
import socket
import socketserver
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from ...errors import ConfigError, DataError
from .index import SampleIndex
from .protocol import (
    DEFAULT_HOST, DEFAULT_PORT, MAX_REQUEST_PAYLOAD_BYTES, PROTOCOL_VERSION, ProtocolError, arg, ids_bytes, ids_from,
    query_from, recv_frame, send_frame, texts_bytes,
)

logger = logging.getLogger(__name__)


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
        self.index = SampleIndex(index_dir, read_only=True)
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
        dataset = arg(args, "dataset", (str, type(None)))
        with self._lock:
            return self.index.num_samples(dataset), b""

    def _op_count(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        query = query_from(args.get("query", []))
        with self._lock:
            return self.index.count(query), b""

    def _op_query(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        query = query_from(args.get("query", []))
        with self._lock:
            ids = self.index.query(query)
        return None, ids_bytes(ids)

    def _op_datasets(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        with self._lock:
            rows = self.index.datasets()
        for row in rows:  # a TIMESTAMP; the client turns it back into a datetime
            row["registered_at"] = row["registered_at"].isoformat()
        return rows, b""

    def _op_domain_counts(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        prop, query = arg(args, "property", str), query_from(args.get("query", []))
        with self._lock:
            counts = self.index.domain_counts(prop, query)
        return [[value, n] for value, n in counts.items()], b""

    def _op_sample_ids_by_value(self, args: dict[str, Any], _: bytearray) -> tuple[Any, bytes]:
        prop, values = arg(args, "property", str), arg(args, "values", list)
        query = query_from(args.get("query", []))
        with self._lock:
            ids = self.index.sample_ids_by_value(prop, values, query)
        arrays = [ids[v] for v in values]
        return [len(a) for a in arrays], b"".join(ids_bytes(a) for a in arrays)

    def _op_read_texts(self, args: dict[str, Any], payload: bytearray) -> tuple[Any, bytes]:
        ids = ids_from(payload)
        with self._lock:
            texts = self.index.read_texts(ids)
        return len(texts), texts_bytes(texts)
