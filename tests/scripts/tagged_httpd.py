"""A service that says who it is and who called: the "deployed" and "patched" copies of the
incoming tests.

    GET /anything  ->  "TAG CLIENT_IP:CLIENT_PORT\n"
    POST (Content-Length body, read whole) -> the same

HTTP/1.1 with exact lengths (keep-alive works). Prints "listening" once its socket listens.
With a STOP_FILE, exits (closing its socket) as soon as that file exists; with `drain`
after it, closes only its listening socket then and goes on answering on the connections it
has (as a server draining before a restart).

    tagged_httpd.py PORT TAG [STOP_FILE [drain]]
"""

import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
TAG = sys.argv[2]
STOP_FILE = sys.argv[3] if len(sys.argv) > 3 else None
DRAIN = len(sys.argv) > 4 and sys.argv[4] == "drain"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"{TAG} {self.client_address[0]}:{self.client_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.do_GET()

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
print("listening", flush=True)
if STOP_FILE:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while not os.path.exists(STOP_FILE):
        time.sleep(0.05)
    if DRAIN:
        # No more accepts; the handler threads of open connections go on.
        server.shutdown()
    server.server_close()
    print("stopped", flush=True)
    if DRAIN:
        while True:
            time.sleep(3600)
    os._exit(0)
server.serve_forever()
