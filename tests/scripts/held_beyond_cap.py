"""Holds more connections to a port stolen with a filter than the agent takes at once, and
proves that the ones beyond the cap wait rather than fail, and are served as soon as others
end.

The target's service echoes lines; the session's answers HTTP. Lines are not HTTP, so the
agent relays each connection to the target, holding it for its whole life.

1. probes until a request tagged `X-Verifier-Run: KEY` is answered by the session (the
   steal is on);
2. opens HELD connections, each echoing one line (from the target), and keeps them;
3. opens EXTRA more: every connect succeeds (the kernel queues them on the agent's
   listener), each sends a line and none is echoed within WAIT seconds; prints
   "extra waiting" and keeps checking until the WAIT is over;
4. closes EXTRA of the held connections: every extra one is then echoed within 10 s.

Prints "ok HELD EXTRA" and exits 0 only if all of that held.

    held_beyond_cap.py HOST PORT HELD EXTRA KEY
"""

import asyncio
import resource
import sys
import time

HOST, PORT, HELD, EXTRA, KEY = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
WAIT = 1.5
TIMEOUT = 30
BATCH = 256


async def echo(reader, writer, line, timeout):
    writer.write(line)
    await writer.drain()
    got = await asyncio.wait_for(reader.readline(), timeout)
    if got != line:
        raise RuntimeError(f"sent {line!r}, got {got!r}")


async def read_answer(reader):
    """One HTTP/1.1 answer with a Content-Length (the connection may stay open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + await reader.readexactly(length)


async def probe():
    request = (
        f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Verifier-Run: {KEY}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + TIMEOUT
    answer = None
    while True:
        try:
            reader, writer = await asyncio.open_connection(HOST, PORT)
            try:
                writer.write(request)
                await writer.drain()
                answer = await asyncio.wait_for(read_answer(reader), 1)
                if answer.startswith(b"HTTP/1.1 200") and b"\r\n\r\nv2 " in answer:
                    return
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as err:
            answer = err
        if time.monotonic() > deadline:
            raise RuntimeError(f"tagged requests never reached the session; the last got {answer!r}")
        await asyncio.sleep(0.1)


async def open_echoing(tag, index):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, PORT), TIMEOUT)
    await echo(reader, writer, f"{tag} {index}\n".encode(), TIMEOUT)
    return reader, writer


async def main():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    await probe()

    held = []
    for start in range(0, HELD, BATCH):
        batch = range(start, min(start + BATCH, HELD))
        held += await asyncio.gather(*(open_echoing("held", i) for i in batch))

    extra = []
    for i in range(EXTRA):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, PORT), TIMEOUT)
        line = f"extra {i}\n".encode()
        writer.write(line)
        await writer.drain()
        extra.append((reader, writer, line))
    print("extra waiting", flush=True)
    pending = [asyncio.ensure_future(reader.readline()) for reader, _, _ in extra]
    done, _ = await asyncio.wait(pending, timeout=WAIT)
    if done:
        got = [repr(f.exception() or f.result()) for f in list(done)[:3]]
        raise RuntimeError(
            f"{len(done)} of {EXTRA} connections beyond the cap got an answer while {HELD} "
            f"were held, e.g. {', '.join(got)}"
        )

    for _, writer in held[:EXTRA]:
        writer.close()
    start = time.monotonic()
    for (_, _, line), future in zip(extra, pending):
        got = await asyncio.wait_for(future, 10)
        if got != line:
            raise RuntimeError(f"a connection beyond the cap: sent {line!r}, got {got!r}")
    print(f"extra served {time.monotonic() - start:.2f} s after {EXTRA} held ones closed", flush=True)
    print(f"ok {HELD} {EXTRA}", flush=True)


asyncio.run(main())
