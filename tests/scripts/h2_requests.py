"""keepalive_requests.py over HTTP/2: N pairs of requests on ONE HTTP/2 connection, one after
another, alternating a request tagged "x-verifier-run: KEY" and an untagged one, one line per
request:

    match|other TAG SEEN_CLIENT OWN_ADDRESS

    h2_requests.py HOST PORT KEY N prior     prior knowledge (the preface first)
    h2_requests.py HOST PORT KEY N upgrade   HTTP/1.1 `Upgrade: h2c` first: the first (tagged)
                                             request is the upgrade, answered on stream 1

Exits 1 if the connection breaks (a request lost) or the upgrade is refused.
"""

import socket
import sys

import h2.config
import h2.connection
import h2.events

HOST, PORT, KEY, N, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]

sock = socket.create_connection((HOST, PORT), timeout=5)
own = "%s:%d" % sock.getsockname()[:2]
conn = h2.connection.H2Connection(
    config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
)


def answer(stream_id):
    """Reads until the stream ends; its body split in words."""
    body, status = b"", None
    while True:
        data = sock.recv(65536)
        if not data:
            sys.exit("connection closed early")
        ended = False
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                status = dict(event.headers)[":status"]
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if event.stream_id == stream_id:
                    body += event.data
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                ended = True
            elif isinstance(event, h2.events.StreamReset):
                sys.exit("stream %d reset" % event.stream_id)
        sock.sendall(conn.data_to_send())
        if ended:
            words = body.decode().split()
            if status != "200" or len(words) != 2:
                sys.exit("bad answer %s %r" % (status, words))
            return words


def report(kind, words):
    print(kind, words[0], words[1], own, flush=True)


first = 0
if MODE == "upgrade":
    settings = conn.initiate_upgrade_connection().decode()
    sock.sendall(
        (
            "GET /item/0 HTTP/1.1\r\nHost: %s:%d\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            "Upgrade: h2c\r\nHTTP2-Settings: %s\r\nX-Verifier-Run: %s\r\n\r\n"
            % (HOST, PORT, settings, KEY)
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        if not byte:
            sys.exit("closed before the upgrade's answer: %r" % head)
        head += byte
    if head.split(b" ")[1] != b"101":
        sys.exit("upgrade refused: %r" % head)
    sock.sendall(conn.data_to_send())
    report("match", answer(1))
else:
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())

for i in range(N):
    for kind in ("match", "other"):
        if MODE == "upgrade" and i == 0 and kind == "match":
            continue
        stream_id = conn.get_next_available_stream_id()
        headers = [(":method", "GET"), (":path", "/item/%d" % i), (":scheme", "http"),
                   (":authority", "%s:%d" % (HOST, PORT))]
        if kind == "match":
            headers.append(("x-verifier-run", KEY))
        conn.send_headers(stream_id, headers, end_stream=True)
        sock.sendall(conn.data_to_send())
        report(kind, answer(stream_id))
sock.close()
