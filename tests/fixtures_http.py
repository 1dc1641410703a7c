"""A real HTTP file server on loopback, with scripted faults, for download tests.

    srv.files["/a.h5"] = b"..."                  # serve these bytes at srv.url + "/a.h5"
    srv.faults["/a.h5"] = [("status", 500)]      # consumed one per request, in order
    srv.requests                                  # [(path, headers dict), ...] as received (path without query)
    srv.queries                                   # [(path, query string), ...] as received

Faults: ("status", code) answers that status with no body; ("truncate", nbytes) announces the full
length, sends nbytes of the body and drops the connection; ("bytes", data) serves `data` instead of the
file once; ("delay", seconds) sleeps, then serves normally; ("trickle", seconds) announces the full
length and sends one byte every `seconds` until the client hangs up; ("endless",) sends zeros without a
Content-Length until the client hangs up; ("redirect", location) answers 302 to `location`.
GET honours `Range: bytes=N-` with 206. `srv.stalls[prefix] = threading.Event()` holds every request
(GET or POST) whose path starts with `prefix` until the event is set (at most 20 s), then answers 503;
`srv.stalls_answered` counts the held requests answered so far.
"""
import hashlib
import io
import itertools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

__all__ = ["http_server", "FileServer", "genmetrics_home", "npz_bytes", "sha256_of"]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._serve(head=True)

    def do_GET(self):
        self._serve(head=False)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._serve(head=False)

    def _serve(self, head):
        srv = self.server.owner
        path, _, query = self.path.partition("?")
        with srv.lock:
            srv.requests.append((path, dict(self.headers.items())))
            srv.queries.append((path, query))
            faults = srv.faults.get(path)
            fault = faults.pop(0) if faults else None
            body = srv.files.get(path)
            stall = next((event for prefix, event in srv.stalls.items() if path.startswith(prefix)), None)
        if stall is not None:
            stall.wait(20)
            with srv.lock:
                srv.stalls_answered += 1
            self._send_status(503)
            return
        if fault and fault[0] in ("trickle", "endless", "redirect"):
            self._misbehave(fault, body or b"")
            return
        if fault and fault[0] == "delay":
            time.sleep(fault[1])
            fault = None
        if fault and fault[0] == "status":
            self._send_status(fault[1])
            return
        if body is None:
            self._send_status(404)
            return
        if fault and fault[0] == "bytes":
            body = fault[1]
        start = self._range_start(len(body))
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body) - start))
        self.send_header("Accept-Ranges", "bytes")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        if fault and fault[0] == "truncate":
            self.send_header("Connection", "close")
        self.end_headers()
        if head:
            return
        if fault and fault[0] == "truncate":
            self.wfile.write(body[start:start + fault[1]])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body[start:])

    def _misbehave(self, fault, body):
        """Serve a slow, endless or looping answer (see the module docstring)."""
        if fault[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", fault[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if fault[0] == "trickle":
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        try:
            if fault[0] == "trickle":
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(fault[1])
            else:
                for _ in itertools.count():
                    self.wfile.write(bytes(1 << 16))
        except OSError:  # the client hung up, as it should
            pass

    def _range_start(self, size):
        header = self.headers.get("Range", "")
        if header.startswith("bytes=") and header.endswith("-"):
            start = int(header[len("bytes="):-1])
            if 0 < start < size:
                return start
        return 0

    def _send_status(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


class FileServer:
    """Threaded HTTP server on 127.0.0.1 (random free port) serving `files` with scripted `faults`."""

    def __init__(self):
        self.files = {}
        self.faults = {}
        self.requests = []
        self.queries = []
        self.stalls = {}
        self.stalls_answered = 0
        self.lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def get_requests(self, path):
        """Headers of every request received for `path`."""
        with self.lock:
            return [headers for p, headers in self.requests if p == path]

    def close(self):
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def http_server():
    srv = FileServer()
    yield srv
    srv.close()


def npz_bytes(seed=0, dim=16, n=50):
    """(bytes of an upstream-style .npz with mu and sigma of `n` seeded (n, dim) features, the features)."""
    x = np.random.default_rng(seed).normal(size=(n, dim))
    buffer = io.BytesIO()
    np.savez(buffer, mu=x.mean(axis=0), sigma=np.cov(x, rowvar=False))
    return buffer.getvalue(), x


def sha256_of(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def genmetrics_home(tmp_path, monkeypatch):
    """An empty $GENMETRICS_HOME with downloads allowed (GENMETRICS_OFFLINE unset)."""
    monkeypatch.setenv("GENMETRICS_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("GENMETRICS_OFFLINE", raising=False)
    return tmp_path / "home"
