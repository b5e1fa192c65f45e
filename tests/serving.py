"""A local HTTP server on 127.0.0.1 with scripted routes (shared by the fetch robustness tests)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Route = Callable[[BaseHTTPRequestHandler], None]


class ScriptedServer:
    """Serves `routes[path](handler)`; 404 otherwise. `log` holds (path, monotonic time) per request."""

    def __init__(self, routes: dict[str, Route]):
        self.routes = routes
        self.log: list[tuple[str, float]] = []
        self.closing = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                owner.log.append((self.path, time.monotonic()))
                route = owner.routes.get(self.path)
                if route is None:
                    self.send_error(404, "Not Found")
                else:
                    try:
                        route(self)
                    except (BrokenPipeError, ConnectionResetError):
                        pass  # the client gave up on us: what the slow routes are for

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def times(self, path: str) -> list[float]:
        return [t for p, t in self.log if p == path]

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def send_bytes(data: bytes, content_type: str = "image/png") -> Route:
    """A route answering 200 with `data`."""

    def route(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    return route


def trickle(server: ScriptedServer, *, in_headers: bool, interval: float = 0.1) -> Route:
    """A route that sends one byte every `interval` seconds until the server closes (never finishes)."""

    def route(h: BaseHTTPRequestHandler) -> None:
        if in_headers:
            h.wfile.write(b"HTTP/1.1 200 OK\r\n")
            while not server.closing.wait(interval):
                h.wfile.write(b"X")  # an endless header line
                h.wfile.flush()
            return
        h.send_response(200)
        h.send_header("Content-Type", "image/png")
        h.send_header("Content-Length", "100000000")
        h.end_headers()
        while not server.closing.wait(interval):
            h.wfile.write(b"\x89")
            h.wfile.flush()

    return route


def too_many_requests(retry_after: str, then: Route | None = None) -> Route:
    """A route answering 429 with `Retry-After: retry_after` (once, then `then`, when given)."""
    state = {"answered": False}

    def route(h: BaseHTTPRequestHandler) -> None:
        if then is not None and state["answered"]:
            then(h)
            return
        state["answered"] = True
        h.send_response(429, "Too Many Requests")
        h.send_header("Retry-After", retry_after)
        h.send_header("Content-Length", "0")
        h.end_headers()

    return route
