"""A stand-in for the pico.sh pipe board, faithful to the real service.

It implements what ../shared/notes/pico-pipe.md describes, the surprising
parts included, so that p2p.py is tested against the service as it is:

* per-user namespaces: user U asking for topic T lands on ``U/T``;
* access lists stored by a channel's first connector, the *silent*
  fall-back to your own namespace, and the two access-list bugs of the real
  server (``--fixed`` gives the intended semantics instead):
  bug A, a stranger's first connection joins a listed channel;
  bug B, a member's first connection deletes the owner's list when it ends;
* multicast to the other clients only (``-r`` echoes back), no history,
  data forwarded in chunks as read, so long lines arrive in pieces;
* session endings: EOF on a pipe's or pub's stdin ends the session with no
  exit status (ssh exits 255), and when a client leaves and no publisher
  and at most one pipe remain, the remaining clients are thrown off;
* ``pub`` blocks until a reader exists, ``sub`` until the last publisher
  leaves; ``ls`` names each client's pico user; ``user`` on the pico.sh
  host answers like ``ssh pico.sh user``.

Two options play the internet and stress line handling (both off by
default, so the board is as fast as loopback lets it be):

* ``--delay-ms D``: each chunk a client writes reaches the other clients D
  ms after the board read it, in order, and so does a drop that another
  client's leaving causes: a delay line, not a rate limit (see DelayLine).
  ``--ssh-delay-ms S``: every session (pipe, ls, user, ...) starts S ms
  late, as opening a session costs round trips on the internet (the stack
  delays each new connection's set-up on its own: connectlate.py).
* ``--chop N``: forward each read in pieces of at most N bytes, each a
  delivery of its own, so concurrent writers' long lines interleave often.
  pico.sh forwards chunks of up to 32 KiB as read; this is that, exaggerated.

Two programs live here. ``serve`` is the board: one asyncio process that
owns every channel. ``session`` is the forced command that sshd runs for
each connection (authorized_keys maps each key to its pico user): it
relays the ssh session's stdin to the board over a unix socket and the
board's framed answers back to stdout, stderr and the exit status.

    python3 picoboard.py serve --socket S --pipe-port P --pico-port Q [--fixed]
                               [--delay-ms D] [--ssh-delay-ms S] [--chop N]
    python3 picoboard.py session --socket S --user alice [--fingerprint F]
"""

import argparse
import asyncio
import collections
import json
import os
import random
import re
import select
import shlex
import signal
import socket
import struct
import sys
import threading
import uuid

CHUNK = 32 * 1024  # the real server forwards data as read, up to 32 KiB
PUBLIC = "public"  # the user name of a key with no account

# Frames from the board to a session: kind (1 byte), length (4 bytes), data.
_FRAME = struct.Struct("!cI")
OUT, ERR, EXIT, DROP, PING_FRAME = b"o", b"e", b"x", b"d", b"p"
PING = 5.0  # seconds between the server's pings, as on pico.sh

HELP = """Command: ssh pipe.pico.sh <help | ls | pub | sub | pipe> <topic> [-h | args...]

The simplest authenticated pubsub system.  Send messages through
user-defined topics.  Topics are private to the authenticated
ssh user.  The default pubsub model is multicast with bidirectional
blocking, meaning a publisher ("pub") will send its message to all
subscribers ("sub").  Further, both "pub" and "sub" will wait for
at least one event to be sent or received. Pipe ("pipe") allows
for bidirectional messages to be sent between any clients connected
to a pipe.
"""

NO_ACCOUNT = (
    "ERROR: you need to create an account before using the remote cli: "
    "run `ssh pico.sh` to sign up\n"
)


# -- the session relay: what sshd runs for each connection --------------------

def relay_session(socket_path, user, fingerprint):
    """Carry one ssh session to the board and its answers back; never returns."""
    command = os.environ.get("SSH_ORIGINAL_COMMAND", "")
    board = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        board.connect(socket_path)
    except OSError as exc:
        sys.stderr.write("pico stand-in: board is down (%s)\n" % exc)
        os._exit(1)
    header = {
        "user": user,
        "fingerprint": fingerprint,
        "command": command,
        "connection": os.environ.get("SSH_CONNECTION", ""),
    }
    board.sendall(json.dumps(header).encode() + b"\n")
    # A sub reads nothing: its stdin ending says nothing about the session.
    forward_eof = not command.strip().startswith("sub")
    threading.Thread(
        target=_pump_stdin, args=(board, forward_eof), daemon=True
    ).start()
    _pump_frames(board)


def _pump_stdin(board, forward_eof):
    while True:
        try:
            data = os.read(0, CHUNK)
        except OSError:
            data = b""
        if not data:
            if forward_eof:
                try:
                    board.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            return
        try:
            board.sendall(data)
        except OSError:
            return


def _pump_frames(board):
    # Watch stdout too: when the ssh client vanishes sshd closes our stdout,
    # and a sub that is sent nothing would otherwise never notice.
    poller = select.poll()
    poller.register(board, select.POLLIN)
    poller.register(1, select.POLLERR | select.POLLHUP)
    buffer = b""
    while True:
        events = dict(poller.poll())
        if 1 in events:
            os._exit(255)
        data = board.recv(CHUNK + _FRAME.size)
        if not data:
            _end_without_status()
        buffer += data
        while len(buffer) >= _FRAME.size:
            kind, length = _FRAME.unpack_from(buffer)
            if len(buffer) < _FRAME.size + length:
                break
            payload = buffer[_FRAME.size:_FRAME.size + length]
            buffer = buffer[_FRAME.size + length:]
            if kind == OUT:
                _write_all(1, payload)
            elif kind == ERR:
                _write_all(2, payload)
            elif kind == EXIT:
                os._exit(int(payload))
            elif kind == DROP:
                _end_without_status()


def _write_all(fd, data):
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        os._exit(255)


def _end_without_status():
    # Killed by a signal, sshd sends no exit status and ssh exits 255, which
    # is how the real server ends a pipe session.
    os.kill(os.getpid(), signal.SIGKILL)


# -- the board: channels, access lists and delivery ---------------------------

class Usage(Exception):
    """A command line the real server rejects with its usage text."""


class Client:
    """One connected pub, sub or pipe session."""

    def __init__(self, session, kind, replay=False, keep_alive=False):
        self.session = session
        self.kind = kind
        self.replay = replay
        self.keep_alive = keep_alive
        self.id = "%s (%s@%s)" % (uuid.uuid4(), session.user, session.address)

    @property
    def reads(self):
        return self.kind in ("pipe", "sub")


class DelayLine:
    """A channel's deliveries, run in order, each ``delay`` s after it was queued.

    This is latency, not a rate limit: any number of deliveries are in
    flight at once, each due at the time the board read its data plus the
    delay. Up to LIMIT bytes may be in flight; beyond that, queuing waits,
    so a reader that stalls still stalls the channel, as on pico.sh.
    """

    LIMIT = 4 << 20

    def __init__(self, delay):
        self.delay = delay
        self.queue = collections.deque()  # (due time, action, size)
        self.in_flight = 0
        self.room = asyncio.Event()
        self.room.set()
        self.runner = None

    async def put(self, action, size=0):
        """Run ``await action()`` delay s from now, after what was put before."""
        await self.room.wait()
        loop = asyncio.get_running_loop()
        self.queue.append((loop.time() + self.delay, action, size))
        self.in_flight += size
        if self.in_flight >= self.LIMIT:
            self.room.clear()
        # The runner ends when the queue is empty; nothing else awaits between
        # its last look at the queue and its end, so this never misses one.
        if self.runner is None or self.runner.done():
            self.runner = asyncio.create_task(self._run())

    async def _run(self):
        loop = asyncio.get_running_loop()
        while self.queue:
            due, action, size = self.queue.popleft()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            await action()
            self.in_flight -= size
            if self.in_flight < self.LIMIT:
                self.room.set()


class Board:
    """Every channel and stored access list of one pico pipe server.

    delay and ssh_delay (seconds) and chop (bytes) are the options of
    the module's docstring; 0 turns each off.
    """

    def __init__(self, pipe_port, pico_port, fixed=False, delay=0.0, ssh_delay=0.0,
                 chop=0):
        self.pipe_port = pipe_port
        self.pico_port = pico_port
        self.fixed = fixed
        self.delay = delay
        self.ssh_delay = ssh_delay
        self.chop = chop
        self.channels = {}  # channel name -> [Client]
        self.access = {}  # channel name -> [user or fingerprint]
        self.waiting = {}  # channel name -> [client id] of blocked pubs
        self.lines = {}  # channel name -> DelayLine, when delay is on
        self.changed = asyncio.Condition()

    async def handle(self, reader, writer):
        session = None
        try:
            header = json.loads(await reader.readline())
            if "inspect" in header:  # a test's question, never a session's
                writer.write(json.dumps(self.clients(header["inspect"])).encode())
                await writer.drain()
                return
            if self.ssh_delay:
                # The round trips of ssh's set-up on the internet: the session
                # starts late, whatever it runs; its stdin waits in the socket.
                await asyncio.sleep(self.ssh_delay)
            session = Session(self, reader, writer, header)
            await session.run()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            if session is not None:
                await session.close()
            writer.close()

    def clients(self, prefix):
        """{channel: [[kind, user]...]} of the channels whose names start
        with prefix, which ls may not show (public ones); a pub waiting for
        a reader is a "waiting pub"."""
        found = {}
        for name in list(self.channels) + list(self.waiting):
            if name.startswith(prefix):
                found[name] = [[c.kind, c.session.user] for c in self.channels.get(
                    name, [])] + [["waiting pub", pub.split("(", 1)[1].rsplit("@", 1)[0]]
                                  for pub in self.waiting.get(name, [])]
        return found

    # Channels and access lists, as the real server resolves them.

    def enter(self, session, topic, access_list, public):
        """Return (channel, forget) for a client; forget() runs on leaving.

        The channel is None when a public channel's list shuts the user out.
        """
        user = session.user
        if public:
            name = joined = "public/" + topic
        else:
            name = topic if topic.startswith(user + "/") else user + "/" + topic
            joined = topic
        own = name
        creator = name not in self.access
        if creator:
            self.access[name] = list(access_list)
        stored = self.access.get(joined)
        if stored:
            if session.allowed(stored) or self._may_join(creator, joined, own):
                name = joined
            elif public:
                name = None  # pipe and pub go to a random channel, sub is denied

        def forget():
            if creator:
                # Bug B: the real server deletes under the name it switched
                # to, which is the owner's entry when a member joined.
                self.access.pop(own if self.fixed else name, None)

        return name, forget

    def _may_join(self, creator, joined, own):
        if self.fixed:
            return joined == own
        return creator  # bug A: "creator" of one's own entry, not of joined

    async def join(self, channel, client):
        self.channels.setdefault(channel, []).append(client)
        async with self.changed:
            self.changed.notify_all()

    async def leave(self, channel, client):
        clients = self.channels.get(channel, [])
        if client not in clients:
            return
        clients.remove(client)
        if not clients:
            del self.channels[channel]
            # Deliveries still in flight go on: the line's runner holds them.
            self.lines.pop(channel, None)
        elif not any(c.kind == "pub" for c in clients) and sum(
            c.kind == "pipe" for c in clients
        ) <= 1:
            for other in list(clients):
                if not (other.kind == "sub" and other.keep_alive):
                    # After what is in flight to them: a sub is sent pub -e's
                    # NUL byte before it is thrown off, also with a delay.
                    await self.in_order(channel, other.session.drop)
        async with self.changed:
            self.changed.notify_all()

    def has_reader(self, channel):
        return any(c.reads for c in self.channels.get(channel, []))

    async def deliver(self, channel, sender, data):
        # Who receives is settled now, as the board reads the data; with a
        # delay it arrives later, also at those who have left meanwhile
        # (their sessions ignore it). Delivery is synchronous per channel:
        # one slow reader stalls all.
        readers = [client for client in self.channels.get(channel, [])
                   if client.reads and (client is not sender or client.replay)]

        async def send():
            for client in readers:
                await client.session.send(OUT, data)

        await self.in_order(channel, send, len(data))

    async def in_order(self, channel, action, size=0):
        """Run action for the channel's clients now, or through its delay line."""
        if not self.delay:
            await action()
            return
        line = self.lines.get(channel)
        if line is None:
            line = self.lines[channel] = DelayLine(self.delay)
        await line.put(action, size)

    def listing(self, user):
        prefix = user + "/"
        names = dict.fromkeys(list(self.channels) + list(self.waiting))
        entries = [n for n in names if n.startswith(prefix)]
        if not entries:
            return "no pubsub channels found\n"
        random.shuffle(entries)  # the real server lists in no fixed order
        lines = ["Channel Information"]
        for name in entries:
            stored = self.access.get(name)
            extra = " (Access List: %s)" % ", ".join(stored) if stored else ""
            lines.append("- %s:%s" % (name, extra))
            clients = self.channels.get(name, [])
            for title, kind in (("Pubs", "pub"), ("Subs", "sub"), ("Pipes", "pipe")):
                ids = [c.id for c in clients if c.kind == kind]
                if ids:
                    lines.append("  %s:" % title)
                    lines.extend("  - %s" % i for i in ids)
            if self.waiting.get(name):
                lines.append("  Waiting Pubs:")
                lines.extend("  - %s" % i for i in self.waiting[name])
        return "\r\n".join(lines) + "\r\n"


async def serve_board(socket_path, pipe_port, pico_port, fixed=False, delay=0.0,
                      ssh_delay=0.0, chop=0):
    """Run a board on a unix socket until cancelled."""
    board = Board(pipe_port, pico_port, fixed, delay, ssh_delay, chop)
    server = await asyncio.start_unix_server(board.handle, path=socket_path)
    print("board ready on", socket_path, flush=True)
    async with server:
        await server.serve_forever()


class Session:
    """One ssh session: parses its command and runs it against the board."""

    def __init__(self, board, reader, writer, header):
        self.board = board
        self.reader = reader
        self.writer = writer
        self.user = header["user"] or PUBLIC
        self.fingerprint = header.get("fingerprint") or ""
        self.command = header.get("command", "")
        parts = header.get("connection", "").split()
        self.address = "%s:%s" % tuple(parts[:2]) if len(parts) >= 4 else "?"
        self.port = int(parts[3]) if len(parts) >= 4 else board.pipe_port
        self.ended = False
        self.leaving = []  # what to undo when the session ends

    def allowed(self, access_list):
        return self.user in access_list or (
            bool(self.fingerprint) and self.fingerprint in access_list)

    async def send(self, kind, data):
        if self.ended:
            return
        try:
            self.writer.write(_FRAME.pack(kind, len(data)) + data)
            await self.writer.drain()
        except (OSError, RuntimeError):
            self.ended = True
        if self.writer.is_closing():
            self.ended = True

    async def say(self, text, kind=OUT):
        await self.send(kind, text.encode())

    async def exit(self, status):
        await self.send(EXIT, str(status).encode())
        self.ended = True

    async def drop(self):
        await self.send(DROP, b"")
        self.ended = True
        self.writer.close()

    async def close(self):
        for undo in reversed(self.leaving):
            await undo()
        self.leaving = []
        if not self.ended:
            await self.drop()

    async def run(self):
        try:
            args = shlex.split(self.command)
        except ValueError:
            args = self.command.split()
        if self.port == self.board.pico_port:
            await self.pico_command(args)
            return
        verb = args[0].strip() if args else "help"
        if verb == "help":
            await self.say(HELP + "\n")
            await self.exit(0)
        elif verb == "ls":
            if self.user == PUBLIC:
                await self.say("access denied\n", ERR)
                await self.exit(1)
            else:
                await self.say(self.board.listing(self.user))
                await self.exit(0)
        elif verb in ("pub", "sub", "pipe"):
            try:
                topic, flags = parse_flags(verb, args[1:])
            except Usage as exc:
                await self.say(str(exc))
                await self.exit(1)
                return
            await getattr(self, verb)(topic, flags)
        else:
            await self.exit(0)  # pipe.pico.sh answers other words with nothing

    async def pico_command(self, args):
        if self.user == PUBLIC:
            await self.say(NO_ACCOUNT, ERR)
            await self.exit(1)
        elif args[:1] == ["user"]:
            user_id = uuid.uuid5(uuid.NAMESPACE_DNS, self.user + ".pico.sh")
            await self.say("%s\n%s\n2025-08-01T10:00:00Z\n\n" % (self.user, user_id))
            await self.exit(0)
        else:
            await self.say("unknown command, try: ssh pico.sh user\n", ERR)
            await self.exit(1)

    async def _enter(self, topic, flags):
        channel, forget = self.board.enter(
            self, topic, _split_list(flags["a"]), flags["p"]
        )

        async def undo():
            forget()

        self.leaving.append(undo)
        return channel

    async def _attach(self, channel, client):
        await self.board.join(channel, client)

        async def undo():
            await self.board.leave(channel, client)

        self.leaving.append(undo)

    async def pipe(self, topic, flags):
        channel = await self._enter(topic or str(uuid.uuid4()), flags)
        channel = channel or "public/%s" % uuid.uuid4()
        client = Client(self, "pipe", replay=flags["r"])
        await self._attach(channel, client)
        await self._forward(channel, client)

    async def sub(self, topic, flags):
        channel = await self._enter(topic or str(uuid.uuid4()), flags)
        if channel is None:
            await self.say("access denied\n", ERR)
            await self.exit(1)
            return
        await self._attach(channel, Client(self, "sub", keep_alive=flags["k"]))
        while await self.reader.read(CHUNK):
            pass  # a sub sends nothing; this waits for the session to end

    async def pub(self, topic, flags):
        topic = topic or str(uuid.uuid4())
        channel = await self._enter(topic, flags)
        if channel is None:
            topic = str(uuid.uuid4())
            channel = "public/" + topic
        clean = flags["c"]
        if not clean:
            shown = ("-p " if flags["p"] else "") + topic
            await self.say(
                "subscribe to this channel:\n  ssh pipe.pico.sh sub %s\n" % shown
            )
        if flags["b"] and not self.board.has_reader(channel):
            if not await self._wait_for_reader(channel, flags):
                return
        if not clean:
            await self.say("sending msg ...\n")
        client = Client(self, "pub")
        await self._attach(channel, client)
        if flags["e"]:
            await self.board.deliver(channel, client, b"\0")
            await self.drop()
            return
        await self._forward(channel, client)

    async def _wait_for_reader(self, channel, flags):
        timeout = flags["t"]
        if not flags["c"]:
            await self.say("no subs found ... waiting %s\n" % _go_duration(timeout))
        pub_id = "%s (%s@%s)" % (uuid.uuid4(), self.user, self.address)
        waiting = self.board.waiting.setdefault(channel, [])
        waiting.append(pub_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not self.board.has_reader(channel) and not self.ended:
                left = deadline - loop.time()
                if left <= 0:
                    break
                async with self.board.changed:
                    try:
                        await asyncio.wait_for(
                            self.board.changed.wait(), min(left, PING)
                        )
                    except asyncio.TimeoutError:
                        # The stdin of a waiting pub may already be closed
                        # (echo hi | ssh ... pub t): only a failed ping tells
                        # that the ssh session is gone.
                        await self.send(PING_FRAME, b"")
        finally:
            waiting.remove(pub_id)
            if not waiting:
                del self.board.waiting[channel]
        if self.board.has_reader(channel) and not self.ended:
            return True
        if self.ended:
            await self.drop()
        elif flags["c"]:
            await self.exit(1)
        else:
            await self.say("timeout reached, exiting\n", ERR)
            await self.exit(1)
        return False

    async def _forward(self, channel, client):
        chop = self.board.chop
        while True:
            data = await self.reader.read(CHUNK)
            if not data:
                break
            if not chop:
                await self.board.deliver(channel, client, data)
                continue
            for start in range(0, len(data), chop):
                await self.board.deliver(channel, client, data[start:start + chop])
                # Let the other writers' sessions forward a piece in between:
                # nothing above has to wait, so without this they never would.
                await asyncio.sleep(0)
        await self.close()


def _split_list(text):
    return [item.strip() for item in text.split(",")] if text else []


# -- command lines, parsed the way Go's flag package parses them ---------------

_FLAGS = {
    "pipe": {"a": "", "p": False, "r": False, "c": False},
    "sub": {"a": "", "p": False, "k": False, "c": False},
    "pub": {"a": "", "e": False, "p": False, "b": True,
            "t": 30 * 24 * 3600.0, "c": False},
}


def parse_flags(verb, args):
    """Return (topic, flags) for ``verb TOPIC [flags]``, or raise Usage."""
    topic = ""
    if args and not args[0].startswith("-"):
        topic, args = args[0].strip(), args[1:]
    flags = dict(_FLAGS[verb])
    rest = list(args)
    while rest:
        word = rest[0]
        if word == "--":
            rest.pop(0)
            break
        if not word.startswith("-") or word == "-":
            break
        rest.pop(0)
        name, has_value, value = word.lstrip("-").partition("=")
        if name not in flags:
            raise Usage(
                "flag provided but not defined: -%s\n%s" % (name, _usage(verb))
            )
        default = flags[name]
        if isinstance(default, bool):
            if has_value and value.lower() not in ("true", "false", "1", "0", "t", "f"):
                raise Usage(
                    'invalid boolean value "%s" for -%s\n%s'
                    % (value, name, _usage(verb))
                )
            flags[name] = (not has_value) or value.lower() in ("true", "1", "t")
            continue
        if not has_value:
            if not rest:
                raise Usage("flag needs an argument: -%s\n%s" % (name, _usage(verb)))
            value = rest.pop(0)
        if isinstance(default, float):
            try:
                value = _parse_go_duration(value)
            except ValueError:
                raise Usage(
                    'invalid value "%s" for flag -%s: parse error\n%s'
                    % (value, name, _usage(verb))
                ) from None
        flags[name] = value
    if len(rest) == 1 and not topic:
        topic = rest[0]
    return topic, flags


def _usage(verb):
    lines = ["Usage: %s <topic> [args...]" % verb, "Args:"]
    for name, default in _FLAGS[verb].items():
        lines.append("  -%s" % name)
    return "\n".join(lines) + "\n"


_DURATION_UNITS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def _parse_go_duration(text):
    if text in ("0", "+0", "-0"):
        return 0.0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(text)
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def _go_duration(seconds):
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return "%dh%dm%ds" % (hours, minutes, secs)
    if minutes:
        return "%dm%ds" % (minutes, secs)
    return "%gs" % seconds


# -- command line -------------------------------------------------------------

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the board")
    serve.add_argument("--socket", required=True)
    serve.add_argument("--pipe-port", type=int, required=True)
    serve.add_argument("--pico-port", type=int, required=True)
    serve.add_argument("--fixed", action="store_true",
                       help="intended semantics: no bug A or B")
    serve.add_argument("--delay-ms", type=float, default=0.0,
                       help="deliver each chunk this long after it was read")
    serve.add_argument("--ssh-delay-ms", type=float, default=0.0,
                       help="start every session this much later")
    serve.add_argument("--chop", type=int, default=0, metavar="N",
                       help="forward each read in pieces of at most N bytes")
    session = commands.add_parser("session", help="relay one ssh session")
    session.add_argument("--socket", required=True)
    session.add_argument("--user", default="")
    session.add_argument("--fingerprint", default="")
    args = parser.parse_args(argv)
    if args.command == "session":
        relay_session(args.socket, args.user, args.fingerprint)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(serve_board(args.socket, args.pipe_port, args.pico_port,
                                args.fixed, args.delay_ms / 1000.0,
                                args.ssh_delay_ms / 1000.0, args.chop))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
