#!/usr/bin/python3
"""Upstream servers for the agent's HTTP filter tests, on 127.0.0.1, a free port printed first.

    upstream.py h1 TAG      HTTP/1.1 keep-alive server (http.server); answers "TAG METHOD PATH
                            BODYLEN" with a Content-Length (HEAD: the header only), reads Content-Length and chunked
                            bodies, answers Expect: 100-continue, and turns a request with
                            Upgrade into an echo pipe ("TAG:" before each echoed read) after 101
    upstream.py h2 TAG      HTTP/2 cleartext (prior knowledge) server (the h2 package), same
                            answers, copies request trailers back as response trailers
    upstream.py echo        echoes every byte back
    upstream.py banner      sends "banner\\n" as soon as a client connects, then echoes
"""
import asyncio
import http.server
import socket
import socketserver
import sys


def h1(tag):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def answer(self):
            if self.headers.get("Upgrade"):
                self.send_response(101)
                self.send_header("Upgrade", self.headers["Upgrade"])
                self.send_header("Connection", "Upgrade")
                self.end_headers()
                self.wfile.flush()
                while True:
                    data = self.rfile.read1(65536)
                    if not data:
                        break
                    self.wfile.write(tag.encode() + b":" + data)
                    self.wfile.flush()
                self.close_connection = True
                return
            body = self.read_body()
            out = f"{tag} {self.command} {self.path} {len(body)}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = answer

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    server = Server(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


async def h2_connection(tag, reader, writer):
    import h2.config
    import h2.connection
    import h2.events

    config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    heads, lengths, trailers = {}, {}, {}
    while True:
        data = await reader.read(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                heads[event.stream_id] = dict(event.headers)
                lengths[event.stream_id] = 0
            elif isinstance(event, h2.events.DataReceived):
                lengths[event.stream_id] += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers[event.stream_id] = event.headers
            elif isinstance(event, h2.events.StreamEnded):
                head = heads.pop(event.stream_id)
                out = f"{tag} {head[':method']} {head[':path']} {lengths.pop(event.stream_id)}"
                out = out.encode()
                sid = event.stream_id
                echo = trailers.pop(sid, None)
                conn.send_headers(sid, [(":status", "200"), ("content-length", str(len(out)))])
                conn.send_data(sid, out, end_stream=echo is None)
                if echo is not None:
                    conn.send_headers(sid, echo, end_stream=True)
        writer.write(conn.data_to_send())
        await writer.drain()
    writer.close()


async def serve_async(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


async def echo(reader, writer, banner=False):
    if banner:
        writer.write(b"banner\n")
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def main():
    mode = sys.argv[1]
    if mode == "h1":
        h1(sys.argv[2])
    elif mode == "h2":
        tag = sys.argv[2]
        asyncio.run(serve_async(lambda r, w: h2_connection(tag, r, w)))
    elif mode == "echo":
        asyncio.run(serve_async(echo))
    elif mode == "banner":
        asyncio.run(serve_async(lambda r, w: echo(r, w, banner=True)))
    else:
        sys.exit(f"unknown mode {mode}")


main()
