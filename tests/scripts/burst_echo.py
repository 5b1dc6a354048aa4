"""Opens COUNT TCP connections one after another, then writes one line to every one of them
in a single burst and waits for every echo: what a pool of connections warming up, or a
load generator, does to the session's TUN. Prints "echoed N of COUNT in S s" and exits 0 only
if every echo came back within the timeout.

    burst_echo.py HOST PORT COUNT
"""

import select
import socket
import sys
import time

HOST, PORT, COUNT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
TIMEOUT = 20

address = socket.getaddrinfo(HOST, PORT, type=socket.SOCK_STREAM)[0][4][:2]
sockets = [socket.create_connection(address, timeout=TIMEOUT) for _ in range(COUNT)]
for s in sockets:
    s.setblocking(False)
start = time.monotonic()
for s in sockets:
    s.send(b"x\n")
poller = select.epoll()
waiting = {s.fileno(): s for s in sockets}
for fd in waiting:
    poller.register(fd, select.EPOLLIN)
while waiting and time.monotonic() - start < TIMEOUT:
    for fd, _ in poller.poll(0.5):
        if waiting[fd].recv(16):
            poller.unregister(fd)
            del waiting[fd]
took = time.monotonic() - start
print(f"echoed {COUNT - len(waiting)} of {COUNT} in {took:.2f} s", flush=True)
sys.exit(1 if waiting else 0)
