"""One UDP round trip on an unconnected socket: sendto() out, recvfrom() back.

Never calls connect(), so the kernel (and whatever carries the packets) must route each
datagram by its own destination, and the reply's source address is what recvfrom() reports.
Prints "REPLY SENT_TO FROM" (the address getaddrinfo chose, and the source address of the
reply) and exits 0 on an echo of MESSAGE from the address it was sent to, 1 otherwise.

    udp_sendto.py HOST PORT MESSAGE
"""

import socket
import sys

host, port, message = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.settimeout(2)
for _ in range(3):
    sock.sendto(message, address)
    try:
        reply, peer = sock.recvfrom(65535)
    except socket.timeout:
        continue
    print(reply.decode(), address[0], peer[0])
    sys.exit(0 if reply == message and peer[0] == address[0] else 1)
sys.exit("no reply after 3 tries")
