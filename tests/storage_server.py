"""A stand-in for Supabase Storage (which cannot run here): its object download routes over the
files of a folder, <root>/<bucket>/<path>, answered as the real server answers them.

From supabase/storage (src/http/routes/object/getObject.ts, src/internal/errors/codes.ts,
src/http/error-handler.ts): GET /object/authenticated/{bucket}/{path} needs a valid JWT, else
AccessDenied; GET /object/{bucket}/{path} (storage3's download()) takes an invalid one for the
anonymous role, which sees no private bucket. Errors are HTTP 400 with the real status in the
body's statusCode (500 stays 500), e.g. {"statusCode": "404", "code": "NoSuchKey", "error":
"not_found", "message": "Object not found"}. In front of it, as on a hosted project, a gateway
refuses a wrong apikey header with 401 (check_apikey=False: no gateway). Every bucket is
private; the key is the only valid JWT.

Knobs: fail_next(n) answers the next n requests 503 with a gateway's text body; delay holds each
answer back; chunked sends bodies without Content-Length; requests counts what was asked.
"""

import contextlib
import json
import mimetypes
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

PREFIX = "/storage/v1/object/"


class StorageServer:
    def __init__(self, root: Path, key: str, *, check_apikey: bool = True) -> None:
        self.root, self.key, self.check_apikey = root, key, check_apikey
        self.delay = 0.0
        self.chunked = False
        self.requests: list[str] = []  # the paths asked for, in order
        self._failures = 0
        self._lock = threading.Lock()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._http.daemon_threads = True  # a delayed answer must not hold the stop up
        self.url = f"http://127.0.0.1:{self._http.server_port}"  # the project's URL

    def put(self, bucket: str, path: str, data: bytes) -> None:
        file = self.root / bucket / path
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)

    def fail_next(self, n: int) -> None:
        with self._lock:
            self._failures = n

    def __enter__(self) -> "StorageServer":
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._http.shutdown()
        self._http.server_close()

    def _take_failure(self) -> bool:
        with self._lock:
            failing = self._failures > 0
            self._failures -= failing
            return failing

    def answer(self, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        """Status, headers and body for a request."""
        path = urlsplit(target).path
        with self._lock:
            self.requests.append(path)
        if self._take_failure():
            return 503, {"Content-Type": "text/plain"}, b"upstream connect error"
        if self.check_apikey and headers.get("apikey") != self.key:
            hint = "Double check your Supabase `anon` or `service_role` API key."
            return 401, {}, _json({"message": "Invalid API key", "hint": hint})
        if method != "GET" or not path.startswith(PREFIX):
            return _not_found(method, target)
        route = path.removeprefix(PREFIX)
        authenticated = route.startswith("authenticated/")
        bucket, _, name = route.removeprefix("authenticated/").partition("/")
        bucket, name = unquote(bucket), unquote(name)
        if not (bucket and name):
            return _not_found(method, target)
        bearer = headers.get("authorization", "")
        valid_jwt = bearer.lower().startswith("bearer ") and bearer[7:].strip() == self.key
        if not valid_jwt and authenticated:
            return _error("403", "AccessDenied", "Unauthorized", "signature verification failed")
        folder = self.root / bucket
        if not valid_jwt or not folder.is_dir():  # the anonymous role sees no private bucket
            return _error("404", "NoSuchBucket", "Bucket not found", "Bucket not found")
        file = (folder / name).resolve()
        if not (file.is_relative_to(folder.resolve()) and file.is_file()):
            return _error("404", "NoSuchKey", "not_found", "Object not found")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return 200, {"Content-Type": kind, "Cache-Control": "no-cache"}, file.read_bytes()


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


def _error(status: str, code: str, error: str, message: str) -> tuple[int, dict, bytes]:
    body = {"statusCode": status, "code": code, "error": error, "message": message}
    return (500 if status == "500" else 400), {}, _json(body)


def _not_found(method: str, target: str) -> tuple[int, dict, bytes]:
    message = f"Route {method}:{target} not found"
    body = {"statusCode": "404", "error": "Not Found", "message": message, "code": "InvalidRequest"}
    return 404, {}, _json(body)


def _handler(server: StorageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self._answer()

        def do_POST(self) -> None:
            self._answer()

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            status, headers, body = server.answer(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
            )
            time.sleep(server.delay)
            # A client that gave up waiting (a timeout test) is gone: nothing to report.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self._send(status, headers, body)

        def _send(self, status: int, headers: dict, body: bytes) -> None:
            self.send_response(status)
            headers.setdefault("Content-Type", "application/json")
            for name, value in headers.items():
                self.send_header(name, value)
            if server.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for start in range(0, len(body), 64 * 1024):
                    piece = body[start : start + 64 * 1024]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the tests assert on server.requests instead

    return Handler
