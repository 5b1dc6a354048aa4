"""The pod's clients in the mirror tests: requests on keep-alive connections and on new
connections, each checked to be answered by the target ("v1", naming this client's own
address), and one line per request printed in the logging server's words:

    METHOD PATH OWN_IP:OWN_PORT BODY_LENGTH BODY_SHA256

The first request of each keep-alive connection is a POST of BIG bytes (many segments);
every fifth other request is a small POST; the rest are GETs. Paths are unique (PREFIX).

    mirror_requests.py HOST PORT PREFIX KEEPALIVE_CONNECTIONS PER_CONNECTION NEW_CONNECTIONS BIG [TAG]

Exits 1 on the first request not answered TAG (default "v1", the target).
"""

import hashlib
import http.client
import os
import sys

HOST, PORT, PREFIX = sys.argv[1], int(sys.argv[2]), sys.argv[3]
KEEPALIVE, PER, NEW, BIG = (int(v) for v in sys.argv[4:8])
TAG = sys.argv[8] if len(sys.argv) > 8 else "v1"


def one(conn, own, method, path, body):
    conn.request(method, path, body=body)
    response = conn.getresponse()
    answer = response.read().decode().split()
    if response.status != 200 or answer != [TAG, own]:
        sys.exit("%s %s: answer %d %r (own address %s)" % (method, path, response.status, answer, own))
    print(method, path, own, len(body or b""), hashlib.sha256(body or b"").hexdigest(), flush=True)


def connect():
    conn = http.client.HTTPConnection(HOST, PORT, timeout=10)
    conn.connect()
    return conn, "%s:%d" % conn.sock.getsockname()[:2]


for c in range(KEEPALIVE):
    conn, own = connect()
    for i in range(PER):
        path = "/%s/keepalive/%d/%d" % (PREFIX, c, i)
        if i == 0:
            one(conn, own, "POST", path, os.urandom(BIG))
        elif i % 5 == 0:
            one(conn, own, "POST", path, os.urandom(100 + i))
        else:
            one(conn, own, "GET", path, None)
    conn.close()
for n in range(NEW):
    conn, own = connect()
    one(conn, own, "GET", "/%s/new/%d" % (PREFIX, n), None)
    conn.close()
