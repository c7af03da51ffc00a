"""A fault-injecting HTTP proxy in front of the local S3 server (moto): answers chosen requests
with a 5xx, a stall past the client's read timeout, or a connection reset, and forwards the rest
(boto3's requests and pyarrow's, whose AWS C++ SDK sends chunked bodies — Ray Train's own writes).

    with S3FaultProxy(moto_url) as proxy:
        proxy.fail("PUT", r"/step-00000002/", "503", times=2)
        ... point AWS_ENDPOINT_URL at proxy.url ...
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Fault:
    method: str
    path: re.Pattern
    kind: str  # "500" / "503" …, "reset", "timeout"
    times: int  # how many matching requests fail; -1: all of them
    seen: int = 0


class S3FaultProxy:
    def __init__(self, upstream: str, stall_seconds: float = 8.0):
        self.upstream = urllib.parse.urlparse(upstream)
        self.stall_seconds = stall_seconds
        self.faults: list[Fault] = []
        self.injected: list[tuple[str, str, str]] = []  # (method, path, kind) of every fault served
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                """The request body; the AWS C++ SDK (pyarrow's S3FileSystem, which Ray Train writes
                with) sends parts with `Transfer-Encoding: chunked` and no Content-Length."""
                if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                    return self.rfile.read(int(self.headers.get("Content-Length") or 0))
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()  # the CRLF after each chunk
                while self.rfile.readline().strip():  # trailer fields up to the blank line
                    pass
                return b"".join(chunks)

            def _any(self):
                body = self._body()
                fault = proxy._match(self.command, self.path)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.connection.close()
                    self.close_connection = True
                    return
                if fault == "timeout":
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                if fault:
                    payload = f"<Error><Code>ServiceUnavailable</Code><Message>injected {fault}</Message></Error>"
                    self.send_response(int(fault))
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload.encode())
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                # the body goes upstream whole: its length replaces any chunked framing
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("host", "transfer-encoding", "content-length", "expect")}
                headers["Host"] = proxy.upstream.netloc
                headers["Content-Length"] = str(len(body))
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(k, v)
                # a HEAD's length is the object's (its size), not the empty body's
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def fail(self, method: str, path: str, kind: str, times: int = 1) -> None:
        with self._lock:
            self.faults.append(Fault(method, re.compile(path), kind, times))

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()

    def _match(self, method: str, path: str) -> str | None:
        with self._lock:
            for f in self.faults:
                if f.method == method and f.path.search(urllib.parse.unquote(path)) and (f.times < 0 or f.seen < f.times):
                    f.seen += 1
                    self.injected.append((method, path, f.kind))
                    return f.kind
        return None

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
