"""A loopback HTTP server for download tests: 127.0.0.1 only, never the internet."""

from __future__ import annotations

import hashlib
import http.server
import threading


class Server:
    """A loopback HTTP server (127.0.0.1 only) serving in-memory files; it records the
    Authorization header of every request, can insist on one, and can redirect."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncate: set[str] = set()  # paths whose body is cut short (connection dropped)
        self.unsized: set[str] = set()  # paths sent without Content-Length
        self.redirects: dict[str, str] = {}  # path -> Location
        self.required: dict[str, str] = {}  # path -> the Authorization header it insists on
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization) per request
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                outer.seen.append((path, self.headers.get("Authorization")))
                if path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                wanted = outer.required.get(path)
                if wanted is not None and self.headers.get("Authorization") != wanted:
                    self.send_error(401, "Unauthorized")
                    return
                body = outer.files.get(path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                self.send_response(200)
                if path in outer.unsized:
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[: len(body) // 2] if path in outer.truncate else body)
                if path in outer.unsized:
                    self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, path: str, body: bytes) -> tuple[str, str]:
        self.files[path] = body
        return f"{self.base}{path}", hashlib.sha256(body).hexdigest()

    def authorizations(self, path: str) -> list[str | None]:
        return [auth for seen, auth in self.seen if seen == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
