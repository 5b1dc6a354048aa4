"""Servers on the target's loopback only: what sidecars of a pod look like.

    loopback_servers.py PORT

HTTP on 127.0.0.1, 127.0.0.2 and ::1, ports PORT and PORT+1, answering
"target ADDR PORT\n" (as JSON for a path ending in .json); a UDP echo on 127.0.0.1 and ::1 port PORT answering
"target ADDR DATA". Prints "listening" once every socket listens.
"""

import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        addr, port = self.server.server_address[:2]
        if self.path.endswith(".json"):  # for gron, a Go client
            body = f'{{"target": "{addr} {port}"}}\n'.encode()
        else:
            body = f"target {addr} {port}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    def server_bind(self):
        # HTTPServer's own looks the address up in DNS (getfqdn), which in a pod's namespace
        # waits for a resolver it cannot reach.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", self.server_address[1]


class Server6(Server):
    address_family = socket.AF_INET6


ThreadingHTTPServer.daemon_threads = True
servers = []
for port in (PORT, PORT + 1):
    servers.append(Server(("127.0.0.1", port), Handler))
    servers.append(Server(("127.0.0.2", port), Handler))
    servers.append(Server6(("::1", port), Handler))


def udp_echo(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((addr, PORT))
    return s


udp = [udp_echo(socket.AF_INET, "127.0.0.1"), udp_echo(socket.AF_INET6, "::1")]


def serve_udp(s, addr):
    while True:
        data, peer = s.recvfrom(2048)
        s.sendto(f"target {addr} ".encode() + data, peer)


for s, addr in zip(udp, ["127.0.0.1", "::1"]):
    threading.Thread(target=serve_udp, args=(s, addr), daemon=True).start()
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
print("listening", flush=True)
servers[0].serve_forever()
