"""A TCP relay in front of the S3 endpoint that cuts response streams, to test resumed downloads.

It forwards every connection to `upstream` and counts the bytes coming back; when one connection has
returned `cut_after` bytes, it closes both sides (as a dropped NAT entry or a dying load balancer
would). `cuts` bounds how many connections are cut (`None`: every one). `on_request(first_line)` runs
before a request is forwarded, and `on_cut()` runs before a cut, so a test can change the object between
the HEAD and the GET, or between a cut and the resumed GET, at exactly that moment.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from types import TracebackType


class CuttingRelay:
    def __init__(
        self,
        upstream: tuple[str, int],
        cut_after: int | None = None,
        cuts: int | None = 1,
        on_request: Callable[[bytes], None] | None = None,
        on_cut: Callable[[], None] | None = None,
    ) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.on_request = on_request
        self.on_cut = on_cut
        self.cut_count = 0
        self.requests: list[bytes] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._closed = False

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CuttingRelay:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in list(self._sockets):
            _shut(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self._sockets += [client, server]
            self._spawn(self._requests, client, server)
            self._spawn(self._responses, server, client)

    def _requests(self, client: socket.socket, server: socket.socket) -> None:
        try:
            while data := client.recv(65536):
                for method in (b"GET ", b"HEAD ", b"PUT "):
                    if data.startswith(method):
                        line = data.split(b"\r\n", 1)[0]
                        self.requests.append(line)
                        if self.on_request is not None:
                            self.on_request(line)
                server.sendall(data)
        except OSError:
            pass
        finally:
            _shut(server)

    def _should_cut(self, sent: int) -> bool:
        if self.cut_after is None or sent < self.cut_after:
            return False
        with self._lock:
            if self.cuts_left is not None and self.cuts_left <= 0:
                return False
            if self.cuts_left is not None:
                self.cuts_left -= 1
            self.cut_count += 1
            return True

    def _responses(self, server: socket.socket, client: socket.socket) -> None:
        sent = 0
        try:
            while data := server.recv(65536):
                if (
                    self.cut_after is not None
                    and sent + len(data) > self.cut_after
                    and self._should_cut(sent + len(data))
                ):
                    client.sendall(data[: max((self.cut_after or 0) - sent, 0)])
                    if self.on_cut is not None:
                        self.on_cut()
                    break
                client.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _shut(client)
            _shut(server)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
