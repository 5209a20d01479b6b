"""A TCP proxy that delays every byte, each way: the internet on loopback.

The local stack's internet profile puts one in front of the wormhole
mailbox and one in front of the transit relay, so that each peer is
``--delay-ms`` away from them, as a user on the internet is:

    python3 delayproxy.py --listen 127.0.0.1:4001 --to 127.0.0.1:PORT --delay-ms 40

Each direction of a connection is a delay line: a chunk read at time t is
written at t + delay, in order. That is latency, not a rate limit: many
chunks are in flight at once, up to LIMIT bytes a direction (then reading
pauses, as a full TCP window would). An end of data (a half close) is
passed on after the delay too; a connection that fails is closed both ways.
The TCP handshake itself is not delayed: a connection costs one round trip
less than on the internet.

It prints "proxy ready" once it listens, and one line per connection.
"""

import argparse
import asyncio
import signal
import sys

CHUNK = 64 * 1024
LIMIT = 16 << 20  # bytes in flight a direction: 400 MB/s at 40 ms, no limit here


async def carry(reader, writer, delay):
    """Copy reader to writer, each chunk delay s after it was read, then EOF."""
    loop = asyncio.get_running_loop()
    line = asyncio.Queue()  # (due time, data); b"" is the end of data
    in_flight = 0
    room = asyncio.Event()
    room.set()

    async def take():
        nonlocal in_flight
        while True:
            await room.wait()
            try:
                data = await reader.read(CHUNK)
            except OSError:
                data = b""  # a reset: what was read still goes on, then the end
            line.put_nowait((loop.time() + delay, data))
            in_flight += len(data)
            if in_flight >= LIMIT:
                room.clear()
            if not data:
                return

    async def give():
        nonlocal in_flight
        while True:
            due, data = await line.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()
            in_flight -= len(data)
            if in_flight < LIMIT:
                room.set()

    taker = asyncio.create_task(take())
    try:
        await give()
    finally:
        taker.cancel()  # it has ended, unless writing failed


class Proxy:
    def __init__(self, target, delay):
        self.target = target
        self.delay = delay

    async def handle(self, client_reader, client_writer):
        peer = client_writer.get_extra_info("peername")
        print("connection from %s:%s" % peer[:2], flush=True)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError as exc:
            print("cannot reach %s:%s: %s" % (self.target + (exc,)), flush=True)
            client_writer.close()
            return
        directions = [
            asyncio.create_task(carry(client_reader, server_writer, self.delay)),
            asyncio.create_task(carry(server_reader, client_writer, self.delay)),
        ]
        try:
            # Both ends of data passed on, or one direction failed: then the
            # other has nothing left to carry either.
            _, pending = await asyncio.wait(
                directions, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            await asyncio.gather(*directions, return_exceptions=True)
        finally:
            for writer in (client_writer, server_writer):
                writer.close()


def _address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve(listen, target, delay):
    proxy = Proxy(target, delay)
    server = await asyncio.start_server(proxy.handle, *listen)
    print("proxy ready on %s:%d for %s:%d, %g ms each way"
          % (listen + target + (delay * 1000,)), flush=True)
    async with server:
        await server.serve_forever()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", required=True, type=_address, metavar="HOST:PORT")
    parser.add_argument("--to", required=True, type=_address, metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(serve(args.listen, args.to, args.delay_ms / 1000.0))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
