"""Opens COUNT TCP connections at once, proves each one echoes, holds them all, then closes.

Every connection echoes one line as soon as it is open; only when all COUNT are open and
have echoed does each send a second line, so the second echo proves all COUNT flows were
alive at the same time. The name is resolved once, so the test measures connections, not DNS.
Prints "ok COUNT" and exits 0 only if every connection did both round trips.

    many_connections.py HOST PORT COUNT
"""

import asyncio
import socket
import sys

HOST, PORT, COUNT = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
TIMEOUT = 30


async def one(index, address, state):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), TIMEOUT)
    try:
        for phase in ("open", "held"):
            line = f"{phase} {index}\n".encode()
            writer.write(line)
            await writer.drain()
            echoed = await asyncio.wait_for(reader.readline(), TIMEOUT)
            if echoed != line:
                raise RuntimeError(f"connection {index}: sent {line!r}, got {echoed!r}")
            if phase == "open":
                state["open"] += 1
                if state["open"] == COUNT:
                    state["all_open"].set()
                await asyncio.wait_for(state["all_open"].wait(), TIMEOUT)
    finally:
        writer.close()


async def main():
    info = socket.getaddrinfo(HOST, PORT, type=socket.SOCK_STREAM)[0]
    address = info[4][:2]
    state = {"open": 0, "all_open": asyncio.Event()}
    results = await asyncio.gather(*(one(i, address, state) for i in range(COUNT)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    for failure in failures[:5]:
        print(f"failed: {failure!r}", file=sys.stderr)
    print(f"ok {COUNT - len(failures)} of {COUNT} (at most {state['open']} open at once)")
    sys.exit(1 if failures else 0)


asyncio.run(main())
