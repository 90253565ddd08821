"""A loopback stand-in for the Hugging Face hub, serving one folder as one model repo.

It answers the requests ``huggingface_hub`` makes to download a snapshot: the repo
info (``/api/models/{id}/revision/{rev}``), the recursive tree listing
(``/api/models/{id}/tree/{rev}``) and file downloads (``HEAD``/``GET``
``/{id}/resolve/{rev}/{path}``). Every request path is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo_id: str, folder: Path):
        self.repo_id = repo_id
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes()
                      for p in sorted(folder.rglob("*")) if p.is_file()}
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def downloaded(self) -> set[str]:
        prefix = f"/{self.repo_id}/resolve/"
        return {path[len(prefix):].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and path.startswith(prefix)}

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:   # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict[str, str], head: bool) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, value, head: bool = False) -> None:
                self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"}, head)

            def _route(self, head: bool) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(("HEAD" if head else "GET", path))
                api = f"/api/models/{hub.repo_id}/"
                resolve = f"/{hub.repo_id}/resolve/"
                if path.startswith(api + "revision/"):
                    return self._json({"id": hub.repo_id, "modelId": hub.repo_id, "sha": COMMIT,
                                       "private": False,
                                       "siblings": [{"rfilename": name} for name in hub.files]}, head)
                if path.startswith(api + "tree/"):
                    return self._json([{"type": "file", "path": name, "size": len(data),
                                        "oid": hashlib.sha1(data).hexdigest()}
                                       for name, data in hub.files.items()], head)
                if path.startswith(resolve):
                    _, _, name = path[len(resolve):].partition("/")
                    if name in hub.files:
                        data = hub.files[name]
                        return self._send(200, data, {
                            "X-Repo-Commit": COMMIT,
                            "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                            "Content-Type": "application/octet-stream"}, head)
                self._send(404, b'{"error": "not found"}', {"X-Error-Code": "EntryNotFound"}, head)

            def do_GET(self) -> None:
                self._route(head=False)

            def do_HEAD(self) -> None:
                self._route(head=True)

        return Handler
