"""A TCP echo server that holds every connection open until the client closes it.

Lines come back as they were sent. The accept backlog is deep enough that hundreds of
connections opened at the same instant all get through.

    hold_echo.py PORT
"""

import asyncio
import sys


async def handle(reader, writer):
    try:
        while line := await reader.readline():
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port):
    server = await asyncio.start_server(handle, host=None, port=port, backlog=2048, reuse_address=True)
    async with server:
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1])))
