"""A stand-in for Kaggle's API and its storage on 127.0.0.1, for the real ``kaggle`` client.

The client (kaggle 2.2.5) sends ``KAGGLE_API_ENVIRONMENT=LOCALHOST`` requests to ``http://localhost/api/v1/``;
with ``http_proxy`` pointing here, this server receives them, and the storage download they redirect to.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

SIGNATURE = "X-Goog-Signature=s3cr3t-signature"
STORAGE_URL = f"http://storage.test/competitions/dogs-vs-cats/train.zip?{SIGNATURE}"
ETAG = '"v1"'


@dataclass
class Behaviour:
    """What the stand-in does: the API's status, and how storage serves ``body``."""

    body: bytes = b""
    api_status: int = 302  # 302: redirect to storage, as Kaggle does; else that error
    storage_status: int = 200
    content_length: bool = True
    drop_after: int | None = None  # the connection is cut at this byte of the body, on every request
    requests: list[tuple[str, str, dict]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    behaviour: Behaviour

    def log_message(self, *args: object) -> None:
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self.behaviour.requests.append((self.command, self.path, dict(self.headers)))
        if self.path.startswith("http://localhost/api/"):
            self.send_response(self.behaviour.api_status)
            if self.behaviour.api_status == 302:
                self.send_header("Location", STORAGE_URL)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._storage()

    def _storage(self) -> None:
        b = self.behaviour
        if b.storage_status != 200:
            self.send_response(b.storage_status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        ranged = self.headers.get("Range", "")
        if ranged.startswith("bytes=") and self.headers.get("If-Range", ETAG) == ETAG:
            start = int(ranged[len("bytes=") :].rstrip("-"))
        body = b.body[start:]
        self.send_response(206 if start else 200)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", ETAG)
        self.send_header("Last-Modified", "Wed, 01 Jan 2014 00:00:00 GMT")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(b.body) - 1}/{len(b.body)}")
        if b.content_length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if b.drop_after is not None:
            self.wfile.write(b.body[start : b.drop_after])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)
        if not b.content_length:
            self.close_connection = True

    do_GET = do_POST = _serve


@contextmanager
def standin_kaggle(behaviour: Behaviour) -> Iterator[str]:
    """Serve ``behaviour`` on 127.0.0.1; yields the proxy URL to put in ``http_proxy``."""
    handler = type("Handler", (_Handler,), {"behaviour": behaviour})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
