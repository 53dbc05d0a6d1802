"""The client of served mode: :class:`RemoteIndex` reads a sample index that a :class:`~.server.MixtureServer` serves.

:class:`RemoteIndex` is the part of :class:`~.index.SampleIndex` that the planner and the loader
use, with the same results (the same value types for domain keys, int64 id arrays, the same
ConfigError / DataError for a bad query): ``path``, ``properties``, ``sample_ids_by_value``,
``domain_counts``, ``read_texts``, ``files_fingerprint``, ``num_samples``, ``count``, ``query``,
``datasets``, ``close``, and use as a context manager.

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
import logging
import os
import socket
import threading
import time
from typing import Any

import numpy as np

from ...errors import DataError
from .protocol import (
    ERRORS, MAX_REPLY_PAYLOAD_BYTES, PROTOCOL_VERSION, ProtocolError, ids_bytes, ids_from, query_list, recv_frame,
    send_frame, texts_from,
)
from .query import Query

logger = logging.getLogger(__name__)


class RemoteIndex:
    """A sample index served by a :class:`MixtureServer` at ``host:port``, with the reading interface
    of :class:`SampleIndex` (see the module docstring). DataError at construction when the server
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
            error = ERRORS.get(header.get("error"), DataError)
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
        return self._call("count", {"query": query_list(query)})[0]

    def query(self, query: Query | None = None) -> np.ndarray:
        """Ids of the samples matching ``query``, ascending, int64."""
        return ids_from(self._call("query", {"query": query_list(query)})[1])

    def datasets(self) -> list[dict[str, Any]]:
        rows = self._call("datasets")[0]
        for row in rows:
            row["registered_at"] = datetime.datetime.fromisoformat(row["registered_at"])
        return rows

    def domain_counts(self, prop: str, query: Query | None = None) -> dict[Any, int]:
        pairs = self._call("domain_counts", {"property": prop, "query": query_list(query)})[0]
        return {value: n for value, n in pairs}

    def sample_ids_by_value(self, prop: str, values: list[Any], query: Query | None = None) -> dict[Any, np.ndarray]:
        values = list(values)
        sizes, payload = self._call(
            "sample_ids_by_value", {"property": prop, "values": values, "query": query_list(query)}
        )
        if len(sizes) != len(values) or 8 * sum(sizes) != len(payload):
            raise DataError(f"Mixture server {self.host}:{self.port} sent {len(payload)} bytes for id counts {sizes} "
                            f"of {len(values)} value(s); the reply is inconsistent.")
        out, offset = {}, 0
        for value, n in zip(values, sizes):  # keyed by the caller's values, as SampleIndex does
            out[value] = ids_from(payload, n, offset)
            offset += 8 * n
        return out

    def read_texts(self, ids: "list[int] | np.ndarray") -> list[str]:
        """The texts of sample ``ids`` in the order given."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return []
        count, payload = self._call("read_texts", None, ids_bytes(ids))
        try:
            return texts_from(payload, count)
        except (ProtocolError, UnicodeDecodeError) as e:
            raise DataError(f"Mixture server {self.host}:{self.port} sent malformed texts: {e}") from None


def _url(host: str, port: int, directory: str) -> str:
    return f"mixture://{host}:{port}{'' if directory.startswith('/') else '/'}{directory}"
