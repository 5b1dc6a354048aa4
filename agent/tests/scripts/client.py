#!/usr/bin/python3
"""Clients for the agent's HTTP filter tests. Each prints one line per answer, in request order:
"INDEX STATUS BODY".

    client.py pipeline PORT N KEY   N requests written at once on one connection (GET, POST with
                                    Content-Length, POST chunked, in turn), every other one
                                    tagged "X-Verifier-Run: KEY"; then the answers read in order
    client.py upgrade PORT KEY      an Upgrade request tagged with KEY; after the 101, "ping"
                                    sent and the echo printed
    client.py h2 PORT N KEY         N HTTP/2 streams opened at once on one connection (the h2
                                    package), every other one tagged x-verifier-run: KEY, odd
                                    ones with a body and trailers
    client.py h2c PORT N KEY        the same after an HTTP/1.1 `Upgrade: h2c`: request 0 is the
                                    upgrade request (tagged, answered on stream 1), requests
                                    1.. are streams opened after the 101
"""
import http.client
import io
import socket
import sys


def pipeline(port, n, key):
    sock = socket.create_connection(("127.0.0.1", port))
    requests = []
    for i in range(n):
        tag = f"X-Verifier-Run: {key}\r\n" if i % 2 == 0 else ""
        kind = i % 3
        if kind == 0:
            requests.append(f"GET /r/{i} HTTP/1.1\r\nHost: t\r\n{tag}\r\n".encode())
        elif kind == 1:
            requests.append(
                f"POST /r/{i} HTTP/1.1\r\nHost: t\r\n{tag}Content-Length: 5\r\n\r\nhello".encode()
            )
        else:
            requests.append(
                f"POST /r/{i} HTTP/1.1\r\nHost: t\r\n{tag}Transfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n4;x=y\r\ndefg\r\n0\r\nT: 1\r\n\r\n".encode()
            )
    sock.sendall(b"".join(requests))

    class KeptOpen(io.BufferedReader):
        # http.client closes its file after each answer; the connection goes on.
        def close(self):
            pass

    stream = KeptOpen(socket.SocketIO(sock, "rb"), 65536)

    class Source:
        def makefile(self, *args, **kwargs):
            return stream

    for i in range(n):
        response = http.client.HTTPResponse(Source())
        response.begin()
        print(i, response.status, response.read().decode(), flush=True)


def upgrade(port, key):
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: t\r\nX-Verifier-Run: {key}\r\n"
        "Connection: Upgrade\r\nUpgrade: echo\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    print(0, head.split(b" ")[1].decode(), "switched", flush=True)
    sock.sendall(b"ping")
    print(1, 0, sock.recv(100).decode(), flush=True)


def h2_streams(port, n, key):
    import h2.config
    import h2.connection
    import h2.events

    sock = socket.create_connection(("127.0.0.1", port))
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    sock.sendall(conn.data_to_send())
    h2_exchange(sock, conn, {}, list(range(n)), key)


def h2c_upgrade(port, n, key):
    import h2.config
    import h2.connection

    sock = socket.create_connection(("127.0.0.1", port))
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    settings = conn.initiate_upgrade_connection().decode()
    sock.sendall(
        f"GET /s/0 HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: h2c\r\nHTTP2-Settings: {settings}\r\nX-Verifier-Run: {key}\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        if not byte:
            sys.exit(f"connection closed before the answer to the upgrade: {head!r}")
        head += byte
    if head.split(b" ")[1] != b"101":
        sys.exit(f"upgrade not accepted: {head!r}")
    sock.sendall(conn.data_to_send())
    h2_exchange(sock, conn, {1: 0}, list(range(1, n)), key)


def h2_exchange(sock, conn, streams, pending, key):
    """Opens a stream per pending request (as many at once as the server allows), then prints
    every answer in request order."""
    import h2.events

    n = len(streams) + len(pending)
    answers, statuses, trailers, ended = {}, {}, {}, set()

    def open_streams():
        while pending and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams:
            i = pending.pop(0)
            sid = conn.get_next_available_stream_id()
            streams[sid] = i
            headers = [(":method", "POST" if i % 2 else "GET"), (":path", f"/s/{i}"),
                       (":scheme", "http"), (":authority", "t")]
            if i % 2 == 0:
                headers.append(("x-verifier-run", key))
            conn.send_headers(sid, headers, end_stream=i % 2 == 0)
            if i % 2:
                conn.send_data(sid, b"x" * 100)
                conn.send_headers(sid, [("t", str(i))], end_stream=True)
        sock.sendall(conn.data_to_send())

    open_streams()
    while len(ended) < n:
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed early")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                statuses[event.stream_id] = dict(event.headers)[":status"]
            elif isinstance(event, h2.events.DataReceived):
                answers[event.stream_id] = answers.get(event.stream_id, b"") + event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                trailers[event.stream_id] = dict(event.headers)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, h2.events.StreamReset):
                sys.exit(f"stream {event.stream_id} reset")
        open_streams()
        sock.sendall(conn.data_to_send())
    for sid, i in sorted(streams.items(), key=lambda item: item[1]):
        trailer = trailers.get(sid, {}).get("t", "-")
        print(i, statuses[sid], answers.get(sid, b"").decode(), f"trailer={trailer}", flush=True)


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "pipeline":
        pipeline(port, int(sys.argv[3]), sys.argv[4])
    elif mode == "upgrade":
        upgrade(port, sys.argv[3])
    elif mode == "h2":
        import h2.settings  # noqa: F401
        h2_streams(port, int(sys.argv[3]), sys.argv[4])
    elif mode == "h2c":
        h2c_upgrade(port, int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(f"unknown mode {mode}")


main()
