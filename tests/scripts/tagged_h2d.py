"""The HTTP/2 (cleartext, prior knowledge) twin of tagged_httpd.py: every stream is answered
"TAG CLIENT_IP:CLIENT_PORT\n". Needs the Debian package python3-h2. Prints "listening" once
its socket listens.

    tagged_h2d.py PORT TAG
"""

import asyncio
import sys

import h2.config
import h2.connection
import h2.events
import h2.exceptions

PORT = int(sys.argv[1])
TAG = sys.argv[2]


async def connection(reader, writer):
    peer = writer.get_extra_info("peername")
    conn = h2.connection.H2Connection(
        config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
    )
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    try:
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    body = f"{TAG} {peer[0]}:{peer[1]}\n".encode()
                    conn.send_headers(
                        event.stream_id,
                        [(":status", "200"), ("content-length", str(len(body)))],
                    )
                    conn.send_data(event.stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
    except (ConnectionError, h2.exceptions.ProtocolError):
        pass
    writer.close()


async def main():
    server = await asyncio.start_server(connection, "0.0.0.0", PORT)
    print("listening", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
