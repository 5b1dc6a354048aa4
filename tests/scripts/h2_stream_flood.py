"""A client that opens more HTTP/2 streams at once than the agent allows one connection
(prior knowledge): COUNT requests, half of them tagged "x-verifier-run: KEY", all sent
before the server's SETTINGS arrive (until then a client may assume no limit). Then one
more tagged request on the same connection, once the flood is over.

Every stream must end one of two ways: answered (200, "TAG ADDRESS") or refused
(RST_STREAM with REFUSED_STREAM, which tells a client it may retry). At least one must be
refused, and the last request must be answered: the connection survives its flood.
Prints "answered A refused R, then TAG" and exits 0 only if all of that held.

    h2_stream_flood.py HOST PORT KEY COUNT
"""

import socket
import sys

import h2.config
import h2.connection
import h2.errors
import h2.events

HOST, PORT, KEY, COUNT = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])

conn = h2.connection.H2Connection(
    config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
)


def headers(i, tagged):
    h = [(":method", "GET"), (":path", "/item/%d" % i), (":scheme", "http"),
         (":authority", "%s:%d" % (HOST, PORT))]
    if tagged:
        h.append(("x-verifier-run", KEY))
    return h


def wait_for(streams):
    """Reads until every stream in `streams` ended: {stream: ("answered", tag) | ("refused",)}."""
    status, body, outcome = {}, {}, {}
    while len(outcome) < len(streams):
        data = sock.recv(65536)
        if not data:
            sys.exit("the connection closed with %d of %d streams open" % (
                len(streams) - len(outcome), len(streams)))
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status[event.stream_id] = dict(event.headers)[":status"]
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                body[event.stream_id] = body.get(event.stream_id, b"") + event.data
            elif isinstance(event, h2.events.StreamEnded):
                words = body.get(event.stream_id, b"").decode().split()
                if status.get(event.stream_id) != "200" or len(words) != 2:
                    sys.exit("stream %d: bad answer %s %r" % (
                        event.stream_id, status.get(event.stream_id), words))
                outcome[event.stream_id] = ("answered", words[0])
            elif isinstance(event, h2.events.StreamReset):
                if event.error_code != h2.errors.ErrorCodes.REFUSED_STREAM:
                    sys.exit("stream %d reset with %r" % (event.stream_id, event.error_code))
                outcome[event.stream_id] = ("refused",)
            elif isinstance(event, h2.events.ConnectionTerminated):
                sys.exit("the connection was ended: %r" % event)
        sock.sendall(conn.data_to_send())
    return outcome


# Every frame is made before connecting: a filtered port gives a connection whose client is
# silent for 200 ms to the target untouched, and making 1,500 frames takes longer than that
# on a busy machine.
conn.initiate_connection()
streams = []
for i in range(COUNT):
    stream_id = conn.get_next_available_stream_id()
    conn.send_headers(stream_id, headers(i, i % 2 == 0), end_stream=True)
    streams.append(stream_id)
flood = conn.data_to_send()
sock = socket.create_connection((HOST, PORT), timeout=20)
sock.sendall(flood)
outcome = wait_for(streams)
answered = sum(1 for o in outcome.values() if o[0] == "answered")
refused = len(outcome) - answered
if refused == 0:
    sys.exit("all %d streams were answered: none was refused" % COUNT)

stream_id = conn.get_next_available_stream_id()
conn.send_headers(stream_id, headers(COUNT, True), end_stream=True)
sock.sendall(conn.data_to_send())
last = wait_for([stream_id])[stream_id]
if last[0] != "answered":
    sys.exit("the request after the flood was refused")
print("answered %d refused %d, then %s" % (answered, refused, last[1]), flush=True)
sock.close()
