"""The session's side of the mirror tests: a server that writes one line per request it
gets to LOG_FILE and answers it (the mirror drops the answer):

    METHOD PATH CLIENT_IP:CLIENT_PORT BODY_LENGTH BODY_SHA256

HTTP/1.1 with exact lengths (keep-alive works). Prints "listening" once its socket listens.

    logging_httpd.py PORT LOG_FILE
"""

import hashlib
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
LOG = open(sys.argv[2], "a", buffering=1)
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def handle_any(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        line = "%s %s %s:%d %d %s\n" % (
            self.command,
            self.path,
            self.client_address[0],
            self.client_address[1],
            len(body),
            hashlib.sha256(body).hexdigest(),
        )
        with LOCK:
            LOG.write(line)
        answer = b"v2 mirrored\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    do_GET = handle_any
    do_POST = handle_any

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
print("listening", flush=True)
server.serve_forever()
