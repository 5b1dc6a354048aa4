"""Sends N pairs of requests on ONE keep-alive HTTP/1.1 connection, alternating a request
that a session's filter matches and one it does not, and prints one line per request:

    match|other TAG SEEN_CLIENT OWN_ADDRESS

    keepalive_requests.py HOST PORT header KEY N   (match: X-Verifier-Run: KEY, path /)
    keepalive_requests.py HOST PORT path - N       (match: path /api/N, other: /web/N)

Exits 1 if the connection breaks (a request lost).
"""

import http.client
import sys

HOST, PORT, MODE, KEY, N = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])

conn = http.client.HTTPConnection(HOST, PORT, timeout=5)
conn.connect()
own = "%s:%d" % conn.sock.getsockname()[:2]
for i in range(N):
    for kind in ("match", "other"):
        if MODE == "header":
            headers = {"X-Verifier-Run": KEY} if kind == "match" else {}
            path = "/item/%d" % i
        else:
            headers = {}
            path = ("/api/%d" if kind == "match" else "/web/%d") % i
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read().decode().split()
        if response.status != 200 or len(body) != 2:
            sys.exit("bad answer %d %r" % (response.status, body))
        print(kind, body[0], body[1], own, flush=True)
conn.close()
