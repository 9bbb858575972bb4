"""A loopback stand-in for the Kaggle API, for tests that run the real `kaggle` client.

The client is pointed at it with KAGGLE_API_ENVIRONMENT=LOCALHOST (it then calls
http://localhost/api/v1/<service>/<Rpc>) and HTTP_PROXY=http://127.0.0.1:<port>, so every request
arrives here whatever host it names. The stub records each request and answers from a table:
RPC name ("competitions.CompetitionApiService/DownloadDataFiles") -> handler(request) returning
(status, headers, body); `files` serves GET downloads by path. Only the loopback address is used.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

Reply = tuple[int, dict[str, str], bytes]


@dataclass
class Request:
    method: str
    path: str  # e.g. /api/v1/kernels.KernelsApiService/SaveKernel
    headers: dict[str, str]
    body: bytes

    @property
    def rpc(self) -> str:
        """`service/Rpc` of an API call, '' for other paths."""
        prefix = "/api/v1/"
        return self.path[len(prefix) :] if self.path.startswith(prefix) else ""

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


def json_reply(obj: Any, status: int = 200) -> Reply:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def redirect(location: str) -> Reply:
    return 302, {"Location": location}, b""


@dataclass
class KaggleStub:
    """Start with `with KaggleStub() as stub:`; set `stub.handlers[rpc]` and `stub.files[path]`."""

    handlers: dict[str, Callable[[Request], Reply]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)  # PUT bodies by path
    requests: list[Request] = field(default_factory=list)

    def __enter__(self) -> KaggleStub:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request = Request(
                    self.command,
                    urlsplit(self.path).path,
                    dict(self.headers),
                    self.rfile.read(length),
                )
                stub.requests.append(request)
                status, headers, body = stub.reply(request)
                self.send_response(status)
                for key, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_HEAD = do_PUT = _serve

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def reply(self, request: Request) -> Reply:
        if request.rpc in self.handlers:
            return self.handlers[request.rpc](request)
        if request.method in ("GET", "HEAD") and request.path in self.files:
            return 200, {"Content-Type": "application/octet-stream"}, self.files[request.path]
        if request.method == "PUT" and not request.rpc:  # a file upload to a storage URL
            self.uploads[request.path] = request.body
            return 200, {}, b""
        return json_reply({"error": f"no stub for {request.method} {request.path}"}, 404)

    def calls(self, rpc: str) -> list[Request]:
        return [r for r in self.requests if r.rpc == rpc]


def client_env(monkeypatch, stub: KaggleStub | None, config_dir, credentials: bool = True) -> None:
    """Point the kaggle client at `stub` (or nowhere), with dummy or no credentials."""
    for name in (
        "KAGGLE_USERNAME",
        "KAGGLE_KEY",
        "KAGGLE_API_TOKEN",
        "NO_PROXY",
        "no_proxy",
        "HTTPS_PROXY",
        "https_proxy",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
    if stub is not None:
        monkeypatch.setenv("HTTP_PROXY", stub.proxy)
        monkeypatch.setenv("http_proxy", stub.proxy)
    if credentials:
        monkeypatch.setenv("KAGGLE_USERNAME", "tester")
        monkeypatch.setenv("KAGGLE_KEY", "0123456789abcdef")
