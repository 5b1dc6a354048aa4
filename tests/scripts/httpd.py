"""The services namespace's web server: known pages, a bulk stream and an upload sink.

    GET  /                  index.html (names the pod, so a test knows whose server answered)
    GET  /data.json         a small JSON document (for clients that parse what they fetch)
    GET  /blob/SIZE         SIZE bytes of blob.py's deterministic stream
    GET  /blob/SIZE.sha256  the stream's sha256, as hex
    PUT  /upload            hashes the body (Content-Length or chunked) and answers "SHA256 BYTES"

One dual-stack socket on [::] answers IPv4 and IPv6 alike. HTTP/1.1 with exact lengths, so
keep-alive clients behave as they would against a real service.

    httpd.py ROOT PORT
"""

import hashlib
import os
import socket
import socketserver
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blob  # noqa: E402

ROOT = sys.argv[1]
PORT = int(sys.argv[2])
STATIC = {"/": ("index.html", "text/html"), "/data.json": ("data.json", "application/json")}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path in STATIC:
            name, kind = STATIC[self.path]
            with open(os.path.join(ROOT, name), "rb") as f:
                self._reply(200, f.read(), kind)
        elif self.path.startswith("/blob/") and self.path.endswith(".sha256"):
            size = int(self.path[len("/blob/") : -len(".sha256")])
            self._reply(200, (blob.sha256(size) + "\n").encode(), "text/plain")
        elif self.path.startswith("/blob/"):
            size = int(self.path[len("/blob/") :])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            for chunk in blob.chunks(size):
                self.wfile.write(chunk)
        else:
            self._reply(404, b"not found\n", "text/plain")

    def do_PUT(self):
        digest = hashlib.sha256()
        count = 0
        for chunk in self._body():
            digest.update(chunk)
            count += len(chunk)
        self._reply(200, f"{digest.hexdigest()} {count}\n".encode(), "text/plain")

    do_POST = do_PUT

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    # Trailers, if any, end with an empty line.
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                yield from self._read_exactly(size)
                self.rfile.readline()
        else:
            yield from self._read_exactly(int(self.headers.get("Content-Length", "0")))

    def _read_exactly(self, size):
        while size > 0:
            chunk = self.rfile.read(min(size, 1 << 20))
            if not chunk:
                raise ConnectionError("body ended early")
            size -= len(chunk)
            yield chunk

    def _reply(self, status, body, kind):
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # HTTPServer.server_bind would look up our FQDN, which needs a resolver this
        # namespace does not have.
        socketserver.TCPServer.server_bind(self)
        self.server_name = "web"
        self.server_port = PORT


Server(("::", PORT), Handler).serve_forever()
