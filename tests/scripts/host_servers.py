"""Servers on this machine's own network, outside every test namespace.

    host_servers.py ADDR LABEL

HTTP on ADDR at a free port P, answering "LABEL ADDR P\n"; a UDP echo on ADDR port P
answering "LABEL ADDR DATA". Prints "listening P" once both listen.
"""

import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ADDR, LABEL = sys.argv[1], sys.argv[2]
FAMILY = socket.AF_INET6 if ":" in ADDR else socket.AF_INET


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = f"{LABEL} {ADDR} {self.server.server_address[1]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    address_family = FAMILY
    daemon_threads = True

    def server_bind(self):
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


# A TCP port whose UDP twin is free too.
for _ in range(100):
    server = Server((ADDR, 0), Handler)
    port = server.server_address[1]
    udp = socket.socket(FAMILY, socket.SOCK_DGRAM)
    try:
        udp.bind((ADDR, port))
        break
    except OSError:
        udp.close()
        server.server_close()
else:
    sys.exit("no port free for both TCP and UDP")


def serve_udp():
    while True:
        data, peer = udp.recvfrom(2048)
        udp.sendto(f"{LABEL} {ADDR} ".encode() + data, peer)


threading.Thread(target=serve_udp, daemon=True).start()
print("listening", port, flush=True)
server.serve_forever()
