"""p2p.py: a peer-to-peer compute cluster for Python over outbound SSH.

    # alice opens a cluster:      python -m p2p host alice/p2p --users bob,carol
    # anyone on it adds compute:  python -m p2p worker alice/p2p
    import os, p2p

    with p2p.Executor("alice/p2p") as ex:        # a concurrent.futures.Executor
        print(ex.submit(pow, 2, 10).result())    # 1024, computed by a worker
        print(list(ex.map(lambda x: x * x, range(10))))
    f = p2p.submit(os.getpid)      # on P2P_CLUSTER, else your personal cluster
    print(f.result())              # a worker's pid

Peers meet on a pico.sh pipe (``ssh pipe.pico.sh pipe TOPIC``), a message
board of short lines. Every task and result is sealed in-process
(encrypted and authenticated) under a key only its client and worker can
compute; small ones ride the board itself, large ones go peer to peer with
wormhole-william.

How a task travels (one board round trip):

    client                         board                        worker
      |  <------------------- idle W, key share g^b --------------- |
      |  -- assign T to W, g^a, the task sealed -----------------> |  runs T
      |  <-------------------- result T, sealed ------------------- |
      |  -- took T ------------------------------------------------> |

Functions and classes that pickle cannot send by reference (lambdas,
closures, those of ``__main__``) are sent by value. Each task runs in a
child process of its worker, so a task that crashes fails alone. A client
loads results with a restricted unpickler unless told to trust the cluster
(P2P_TRUST=1); with a cluster secret (P2P_SECRET_FILE) every board line is
signed and every key depends on the secret, so strangers on the board can
do nothing.
"""

import argparse
import atexit
import base64
import builtins
import collections
import concurrent.futures
import contextlib
import copy
import dis
import hashlib
import hmac
import importlib
import io
import itertools
import json
import logging
import marshal
import os
import pickle
import platform
import queue
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import urllib.parse
import warnings

try:
    import resource
except ImportError:  # Windows
    resource = None

__version__ = "0.1.0"
__all__ = [
    "Executor", "submit", "map", "whoami",
    "P2PError", "ClusterError", "TransferError", "TaskCrashed", "WorkerLost",
    "__version__",
]

log = logging.getLogger("p2p")


# -- errors -------------------------------------------------------------------

class P2PError(Exception):
    """Something p2p.py cannot do; the message says what to do about it."""


class ClusterError(P2PError):
    """The cluster cannot be reached as you: not hosted, or you are not a member."""


class TransferError(P2PError):
    """A wormhole transfer failed, stalled or brought the wrong payload."""


class TaskCrashed(P2PError):
    """The process running a task died (os._exit, a signal, a segfault)."""


class WorkerLost(P2PError):
    """The workers of a task vanished, more often than the retries allowed."""


class _RemoteTraceback(Exception):
    """Carries a worker's traceback text as the __cause__ of its exception."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


# -- configuration ------------------------------------------------------------

PY = "%d.%d" % sys.version_info[:2]  # by-value code runs only on the same minor
JOIN_TIMEOUT = 15.0  # seconds to find a cluster's host before giving up
ANSWER_TIMEOUT = 3.0  # seconds to wait for a host's welcome on one connection
HOST_CHECK = 3.0  # seconds between the host's looks at ls
IDLE_EVERY = 15.0  # seconds between an idle worker's announcements
ALIVE_EVERY = 5.0  # seconds between the "alive" lines of a peer with work in flight
LOST_AFTER = 20.0  # seconds of silence after which such a peer is lost
RETRIES = 2  # default: new assignments of a task after its worker or transfer failed
# Sealed payloads up to this size ride the board; larger ones go by wormhole.
# Measured on the local stack (bench/RESULTS.md): 64 KiB crosses the board in
# 11 lines in ~15 ms on loopback (+80 ms on the internet profile), while the
# smallest wormhole transfer costs 0.2 s on loopback and 1.7 s there; every
# member hears every board byte, so the board takes no more than that.
BOARD_MAX = 64 * 1024
_PIECE = 6 * 1024  # payload bytes per board line: 8 KiB of base64
MAX_LINE = 9 * 1024  # longer board lines are noise
# Tasks a worker slot holds at once: one running, two in hand. One in hand
# is what keeps a slot from waiting a board round trip between tasks; the
# second covers a round trip of 160 ms when tasks take less than that. A
# deeper queue lets one slot hoard tasks another could run, so a client
# fills a slot that deep only once its tasks there proved QUICK; until then,
# and for long tasks (where a round trip between them is a small cost), it
# gives a slot one task at a time.
DEPTH = 3
QUICK = 1.0  # seconds from assignment to result of a task that counts as quick
_LOST_TASK = "the task did not arrive"  # a worker's decline after a failed transfer


class Config:
    """Settings, from arguments or else the environment (same names).

    host      P2P_HOST       the board's ssh host (pipe.pico.sh)
    ssh_args  P2P_SSH_ARGS   extra ssh arguments, a shell-like string
                             ("-J somehost", "-F ~/.ssh/pico_config")
    wormhole  P2P_WORMHOLE   the wormhole tool: default wormhole-william on
                             PATH, else the one install-wormhole fetched,
                             else magic-wormhole's ``wormhole``
    debug     P2P_DEBUG=1    log every ssh and wormhole command and message
    trust     P2P_TRUST=1    load results as plain pickle, code and all: only
                             for clusters whose members you all trust
    timeout   P2P_TIMEOUT    seconds a wormhole transfer may take (60), plus
                             one per 2 MB; then it is tried again, new code
    secret    P2P_SECRET     the cluster's secret, handed out by its owner: it
              P2P_SECRET_FILE  (or a file holding it) signs every board line
                             and goes into every wormhole code
    """

    def __init__(self, host=None, ssh_args=None, wormhole=None, debug=None,
                 trust=None, secret=None, secret_file=None, timeout=None):
        env = os.environ
        self.host = host or env.get("P2P_HOST") or "pipe.pico.sh"
        if ssh_args is None:
            ssh_args = env.get("P2P_SSH_ARGS", "")
        self.ssh_args = shlex.split(ssh_args) if isinstance(ssh_args, str) else list(ssh_args)
        self.wormhole = wormhole or env.get("P2P_WORMHOLE")
        self.debug = _flag("P2P_DEBUG") if debug is None else debug
        self.trust = _flag("P2P_TRUST") if trust is None else trust
        self.timeout = _number("P2P_TIMEOUT", timeout, 60.0, float)
        secret_file = secret_file or env.get("P2P_SECRET_FILE")
        self.secret = secret or env.get("P2P_SECRET") or (
            _read_secret(secret_file) if secret_file else None)
        if self.secret is not None and len(self.secret) < 16:
            raise P2PError("a cluster secret needs 16 characters or more: use the one "
                           "`python -m p2p host ... --secret-file FILE` writes")

    @property
    def account_host(self):
        """Where ``ssh HOST user`` answers: pico.sh for pipe.pico.sh."""
        return self.host[len("pipe."):] if self.host.startswith("pipe.") else self.host


def _flag(name):
    return os.environ.get(name, "") not in ("", "0")


def _number(name, value, default, kind):
    """value, else the environment variable name, else default, as a kind."""
    text = os.environ.get(name, default) if value is None else value
    try:
        return kind(text)
    except ValueError:
        raise P2PError("%s must be a number, not %r" % (name, text)) from None


def _read_secret(path):
    try:
        with open(os.path.expanduser(path)) as f:
            return f.read().strip()
    except OSError as exc:
        raise P2PError("cannot read the cluster secret from %s (%s): ask the cluster's "
                       "owner for the file their host wrote" % (path, exc.strerror)) from None


def _issue_secret(path):
    """Write a new secret to path, readable by you only; False if it has one already."""
    try:
        fd = os.open(os.path.expanduser(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    except OSError as exc:
        raise P2PError("cannot write a new secret to %s: %s" % (path, exc.strerror)) from None
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return True


def _keys(secret, cluster):
    """(board key, code salt) of a cluster: one signs lines, one goes into codes."""
    if not secret:
        return None, b""
    root = hashlib.sha256(secret.encode()).digest()
    return tuple(hmac.new(root, use + cluster.channel.encode(), "sha256").digest()
                 for use in (b"board ", b"codes "))


class Cluster:
    """A cluster name, ``owner/name``; its board is the pipe ``owner/name/board``."""

    def __init__(self, name):
        owner, _, rest = str(name).partition("/")
        if not owner or not rest or any(c.isspace() for c in name) or "/" in rest:
            raise P2PError(
                "%r is not a cluster name: use owner/name, e.g. alice/p2p "
                "(owner is the pico.sh user who hosts it)" % (name,))
        self.name, self.owner, self.short = name, owner, rest
        self.channel = name + "/board"
        self.personal = rest == "personal"

    def __str__(self):
        return self.name


def _default_cluster(user):
    return os.environ.get("P2P_CLUSTER") or "%s/personal" % user


# -- identity -----------------------------------------------------------------

def _require_ssh():
    path = shutil.which("ssh")
    if path is None:
        raise P2PError("ssh was not found on PATH: install the OpenSSH client "
                       "(e.g. apt install openssh-client) and try again")
    return path


def _ssh(config, host, words, **popen):
    """Start ``ssh HOST WORDS...`` with the configured arguments: the one way to ssh."""
    _require_ssh()
    argv = (["ssh", "-T"] + config.ssh_args +
            ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15",
             "-o", "ServerAliveCountMax=3", host] + list(words))
    if config.debug:
        log.debug("run: %s", shlex.join(argv))
    popen.setdefault("stdin", subprocess.DEVNULL)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(argv, **popen)


def _ssh_output(config, host, words, timeout=30.0):
    """Run an ssh command to completion and return its stdout, or raise P2PError."""
    process = _ssh(config, host, words)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise P2PError("`ssh %s %s` did not answer within %gs: check your network "
                       "and P2P_SSH_ARGS" % (host, " ".join(words), timeout)) from None
    if process.returncode != 0:
        said = "; ".join(line.strip().rstrip(".") for line in err.decode(
            errors="replace").splitlines() if line.strip()) or "nothing"
        hint = ""
        if "need to create an account" in said:
            hint = " Create a pico.sh account first: run `ssh pico.sh` and pick a user name."
        elif "Permission denied" in said:
            hint = " Your ssh key is not registered with pico.sh: run `ssh pico.sh`."
        elif "Host key verification failed" in said:
            hint = (" Accept pico.sh's host key once: run `ssh %s` and answer yes."
                    % host)
        raise P2PError("`ssh %s %s` failed (exit %d); ssh said: %s.%s"
                       % (host, " ".join(words), process.returncode, said, hint))
    return out.decode(errors="replace")


_users = {}


def whoami(config=None):
    """Your pico.sh user name, as ``ssh pico.sh user`` tells it."""
    config = config or Config()
    key = (config.account_host, tuple(config.ssh_args))
    if key not in _users:
        text = _ssh_output(config, config.account_host, ["user"])
        name = text.splitlines()[0].strip() if text.strip() else ""
        if not name or " " in name:
            raise P2PError("`ssh %s user` gave no user name (it said %r): check "
                           "P2P_HOST" % (config.account_host, text[:200]))
        _users[key] = name
    return _users[key]


def _peer_id(user):
    """How peers name a process on the board: user@host:pid."""
    return "%s@%s:%d" % (user, socket.gethostname(), os.getpid())


def _process_of(peer_id):
    """The process id of a peer id: a worker's slots are user@host:pid#N."""
    return peer_id.split("#", 1)[0]


def _machine_of(peer_id):
    """user@host, of a peer id."""
    return peer_id.rsplit(":", 1)[0]


# -- board --------------------------------------------------------------------

class _Board:
    """One ssh pipe to a cluster's board.

    Its reader thread only frames lines: each complete line, and the end of
    each session ("drop"), goes to the peer's inbox, where the peer's own
    thread decides what they mean. A line longer than MAX_LINE (a piece of
    a line the server cut, glued to another writer's) is skipped whole.
    """

    def __init__(self, config, channel, inbox, access=None):
        self.config = config
        self.channel = channel
        self.access = access
        self.inbox = inbox
        self._process = None
        self._lock = threading.Lock()
        self._closed = False
        self._errors = collections.deque(maxlen=20)  # the current session's stderr

    def connect(self):
        """Open a new ssh session to the board (closing any previous one)."""
        words = ["pipe", self.channel]
        if self.access is not None:
            words += ["-a", ",".join(self.access)]
        with self._lock:
            self._drop_process()
            self._process = _ssh(self.config, self.config.host, words,
                                 stdin=subprocess.PIPE)
            process, self._errors = self._process, collections.deque(maxlen=20)
        threading.Thread(target=self._read, args=(process,), daemon=True,
                         name="p2p-board").start()
        threading.Thread(target=self._read_errors, args=(process, self._errors),
                         daemon=True, name="p2p-board-errors").start()

    def send(self, line):
        """Write lines; what is written while disconnected is lost."""
        if self.config.debug:
            log.debug("send: %s", line[:300].decode(errors="replace").rstrip())
        with self._lock:
            try:
                self._process.stdin.write(line)
                self._process.stdin.flush()
            except (AttributeError, OSError, ValueError):
                pass  # the reader notices the drop and reconnects

    def disconnect(self):
        """End the current session without reconnecting."""
        with self._lock:
            self._drop_process()

    def close(self):
        with self._lock:
            self._closed = True
            self._drop_process()

    def _drop_process(self):
        if self._process is not None:
            try:
                self._process.stdin.close()  # EOF: pico.sh ends the session
            except OSError:
                pass
            for stop in (None, self._process.terminate, self._process.kill):
                if stop is not None:
                    stop()
                try:
                    self._process.wait(1.0)  # time for our last lines to go out
                    break
                except subprocess.TimeoutExpired:
                    pass
            self._process = None

    def _read(self, process):
        pending, skipping = b"", False
        for chunk in iter(lambda: process.stdout.read1(65536), b""):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if not skipping and self.inbox is not None:
                    self.inbox.put(line)
                skipping = False
            if len(pending) > MAX_LINE:
                pending, skipping = b"", True
        with self._lock:
            current = process is self._process and not self._closed
        if current and self.inbox is not None:
            self.inbox.put(_DROP)

    def _read_errors(self, process, errors):
        for line in process.stderr:
            errors.append(line.decode(errors="replace").strip())

    def running(self):
        with self._lock:
            return self._process is not None and self._process.poll() is None

    def failure(self):
        """What ssh said, when the current session ended with an error."""
        with self._lock:
            process, errors = self._process, self._errors
        if process is None or process.poll() is None or not errors:
            return None  # running, or dropped by the server (no message)
        return "; ".join(errors)


_DROP = "drop"  # in an inbox: the board ended our session


class _Backoff:
    """Pauses before reconnecting: none after a long session, growing after short ones."""

    def __init__(self):
        self.delay = 0.0
        self.since = time.monotonic()

    def connected(self):
        self.since = time.monotonic()

    def wait(self):
        quick = time.monotonic() - self.since < 10.0
        self.delay = min(max(self.delay * 2, 0.5), 30.0) if quick else 0.0
        time.sleep(self.delay)


def _ls(config):
    """{channel: (access list or None, [pico users connected])} from ssh ls."""
    channels, current = {}, None
    for line in _ssh_output(config, config.host, ["ls"]).splitlines():
        line = line.rstrip("\r")
        if line.startswith("- ") and ":" in line:
            name, _, rest = line[2:].partition(":")
            listed = None
            if "(Access List: " in rest:
                listed = rest.split("(Access List: ", 1)[1].rstrip(")").split(", ")
            current = channels[name.strip()] = (listed, [])
        elif current is not None and "(" in line and "@" in line:
            current[1].append(line.rsplit("(", 1)[1].split("@", 1)[0])
    return channels


class _Peer:
    """A process on a cluster's board, and the one thread that acts for it.

    Everything a peer hears (board lines, the end of a session) and
    everything it is asked to do by other threads (a task submitted, a
    transfer done) lands in its inbox; its loop handles one item at a time
    under self.lock, and calls tick() twice a second. A handler that fails
    is logged with what it was handling, and the peer goes on.
    """

    role = "peer"
    TICK = 0.5

    def __init__(self, config, cluster, user, peer_id, access=None):
        self.config = config
        self.cluster = cluster
        self.user = user
        self.id = peer_id
        self.key, self.salt = _keys(config.secret, cluster)
        self.inbox = queue.Queue()
        self.lock = threading.RLock()
        self.board = _Board(config, cluster.channel, self.inbox, access)
        self.heard = {}  # peer process id -> when we last heard from it
        self._versions = set()  # other protocol versions heard, told once each
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name="p2p-" + self.role)
        self._stopped = False

    def start_loop(self):
        self._thread.start()

    def stop_loop(self):
        self._stopped = True
        self.inbox.put(None)
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(10.0)

    def post(self, action, *args):
        """Have the peer's thread run action(*args)."""
        self.inbox.put((action, args))

    def call(self, action, *args, timeout=30.0):
        """Run action(*args) on the peer's thread and wait for it."""
        if threading.current_thread() is self._thread or not self._thread.is_alive():
            with self.lock:
                return action(*args)
        done, answer = threading.Event(), []

        def run():
            try:
                answer.append(action(*args))
            finally:
                done.set()

        self.post(run)
        if not done.wait(timeout) or not answer:
            raise P2PError("p2p.py's board thread did not do its part within %gs; "
                           "run with P2P_DEBUG=1 to see why" % timeout)
        return answer[0]

    def say(self, kind, to="*", signed=True, **fields):
        self.board.send(_encode(kind, to, self.key if signed else None, **fields))

    def say_payload(self, kind, payload, only=None, **fields):
        """Say a sealed payload: its pieces on the board (only these numbers,
        if given), or, for a size, that it comes by wormhole."""
        if isinstance(payload, int):
            self.say(kind, size=payload, n=0, of=0, data="", **fields)
            return
        pieces = _pieces(payload)
        for n, data in enumerate(pieces):
            if only is None or n in only:
                self.say(kind, size=len(payload), n=n, of=len(pieces), data=data, **fields)

    def wants(self, kind, to):
        """Whether a line of this kind, to this peer id, concerns us (decoded only then)."""
        return to == "*" or to == self.id

    def tick(self):
        """Called twice a second on the peer's thread."""

    def _loop(self):
        next_tick = time.monotonic() + self.TICK
        while not self._stopped:
            try:
                item = self.inbox.get(timeout=max(0.0, next_tick - time.monotonic()))
            except queue.Empty:
                item = None
            with self.lock:
                try:
                    if isinstance(item, bytes):
                        self._hear(item)
                    elif item == _DROP:
                        self.on_drop()
                    elif item is not None:
                        action, args = item
                        action(*args)
                    if time.monotonic() >= next_tick and not self._stopped:
                        next_tick = time.monotonic() + self.TICK
                        self.tick()
                except Exception:
                    shown = item[:300] if isinstance(item, bytes) else item
                    log.exception("%s: failed while handling %r; going on", self.role, shown)

    def _hear(self, line):
        msg = _decode(line, self.key, self.wants)
        if msg is None:
            return
        if isinstance(msg, _OtherVersion):
            if msg.version not in self._versions:
                self._versions.add(msg.version)
                log.warning("a peer on %s speaks protocol %s, we speak %d: everyone on a "
                            "cluster needs a p2p.py of the same protocol; upgrade %s",
                            self.cluster, msg.version, _VERSION, "ours" if
                            msg.version.isdigit() and int(msg.version) > _VERSION else
                            "theirs")
            return
        if self.config.debug:
            log.debug("board: %s", line[:300].decode(errors="replace"))
        if not msg.authentic:
            self.on_unsigned(msg)
            return
        self.heard[_process_of(msg["id"])] = time.monotonic()
        handler = getattr(self, "_on_" + msg.kind, None)
        if handler is not None:
            handler(msg)

    def on_unsigned(self, msg):
        """A well-formed line without our cluster's signature: it counts for nothing."""

    def on_drop(self):
        """The board ended our session."""


class _Member(_Peer):
    """A member's presence on a cluster's board: joins, checks, rejoins.

    pico.sh puts anyone who is not on the host's access list on a channel
    of their own, silently. So a member is joined only when the host has
    welcomed it; the owner's own processes must also never be the first
    to connect (they would store an empty list and lock members out).
    """

    role = "client"

    def __init__(self, config, cluster, user, peer_id):
        super().__init__(config, cluster, user, peer_id)
        self.intruders = []
        self._welcome = threading.Event()
        self._denied = None
        self._hint = None  # an unsigned "denied": anyone may have said it
        self._closing = False
        self._joining = False
        self._backoff = _Backoff()
        self._preconnected = False  # the board's first session is open already
        self.started = int(time.time())
        # None while our own link is down: peers are not silent, we are deaf.
        self.online_since = None

    @property
    def exposed(self):
        """A non-member is on the board, and no secret keeps them from acting."""
        return bool(self.intruders) and self.key is None

    def join(self, timeout=JOIN_TIMEOUT):
        """Connect and make sure we are on the cluster's channel, or raise."""
        if not self._thread.is_alive():
            self.start_loop()
        deadline = time.monotonic() + timeout
        self._joining = True
        try:
            while not self._closing:
                if self._try_join():
                    self._backoff.connected()
                    self.online_since = time.monotonic()
                    return
                if self._denied:
                    raise ClusterError(self._denied)
                failure = self.board.failure()
                if failure:
                    raise P2PError("cannot open the board of %s with `ssh %s pipe "
                                   "...`; ssh said: %s" % (self.cluster,
                                                           self.config.host, failure))
                if time.monotonic() > deadline:
                    raise ClusterError(self._unreachable())
            raise ClusterError("left %s while joining it" % self.cluster)
        except BaseException:
            self.board.disconnect()
            raise
        finally:
            self._joining = False

    def _try_join(self):
        owner = self.user == self.cluster.owner
        if self.cluster.personal and owner:
            if not self._preconnected:
                self.board.connect()
            self._preconnected = False
            self._say_hello()
            self.post(self._joined)
            return True
        if owner and not self._host_holds_list():
            time.sleep(1.0)  # wait for the host; connecting now would lock members out
            return False
        self._welcome.clear()
        self.board.connect()
        if owner and not self._host_holds_list():
            self.board.disconnect()  # we stored an empty list: step aside
            time.sleep(1.0)
            return False
        self._say_hello()
        if self._welcome.wait(ANSWER_TIMEOUT) and not self._denied:
            self.post(self._joined)
            return True
        return False

    def _say_hello(self):
        self.say("hello", id=self.id, role=self.role, user=self.user, py=PY)

    def _host_holds_list(self):
        listed, _ = _ls(self.config).get(self.cluster.channel, (None, []))
        return bool(listed)

    def _unreachable(self):
        if self._hint:
            return "%s: %s (an unsigned answer)" % (self.cluster, self._hint)
        if self.cluster.personal:
            return ("%s is a personal cluster: only %s can use it (you are %s)"
                    % (self.cluster, self.cluster.owner, self.user))
        return (
            "%s cannot reach cluster %s: no host answered within %gs. Either it "
            "is not hosted right now, or %s is not on its access list (pico.sh then "
            "silently puts %s on a channel of their own). %s must run: "
            "python -m p2p host %s --users ...,%s"
            % (self.user, self.cluster, JOIN_TIMEOUT, self.user, self.user,
               self.cluster.owner, self.cluster, self.user))

    def _joined(self):
        """Called on the peer's thread once welcomed (again after each reconnect)."""

    def on_unsigned(self, msg):
        if msg.kind == "denied" and msg.to == self.id:
            self._hint = msg["why"]

    def _on_welcome(self, msg):
        if msg.to == self.id:
            self.intruders = msg["intruders"]
            self._welcome.set()

    def _on_denied(self, msg):
        if msg.to == self.id:
            self._denied = "%s: %s" % (self.cluster, msg["why"])
            self._welcome.set()
            self.denied()

    def _on_intruders(self, msg):
        if msg["users"] != self.intruders:
            self.intruders = msg["users"]
            self.intruders_changed()

    def _on_who(self, msg):
        if self.role != "observer":
            self.say("here", to=msg["id"], id=self.id, role=self.role, user=self.user,
                     py=PY, since=self.started, about=self.about())

    def about(self):
        """What this member tells a roll call (python -m p2p status)."""
        return {}

    def denied(self):
        """The host said we are not a member."""

    def intruders_changed(self):
        """The host's list of non-members on the board changed."""

    def on_drop(self):
        self.online_since = None
        if self._closing or self._joining:
            return  # joining retries by itself
        log.info("the board dropped our session; reconnecting")
        threading.Thread(target=self._rejoin, daemon=True).start()

    def _rejoin(self):
        delay = 0.5
        self._backoff.wait()
        while not self._closing:
            try:
                self.join()
                return
            except P2PError as exc:
                log.warning("cannot rejoin %s yet: %s", self.cluster, exc)
                if self._denied:
                    return
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def leave(self):
        if not self._closing:
            self._closing = True
            self.say("bye", id=self.id)
            self.board.close()
        self.stop_loop()


# -- wire messages ------------------------------------------------------------

# A board line: b"p2p2 KIND TO {json}[ SIGNATURE]\n". Kind and addressee come
# first, so a peer skips lines for others without parsing them; TO is a peer
# id, or * for everyone. With a cluster key, the signature covers the rest.
_VERSION = 2
_PREFIX = b"p2p%d " % _VERSION
_NAMES = "names"  # a field type: a list of strings
# Each kind's fields and their types (other fields are ignored); whoever
# handles a kind does it in its method _on_KIND.
_MESSAGES = {
    "hello": {"id": str, "role": str, "user": str, "py": str},  # host; workers
    "welcome": {"id": str, "intruders": _NAMES},  # members
    "denied": {"id": str, "why": str},  # members
    "intruders": {"id": str, "users": _NAMES},  # members
    # A worker slot can take `free` more tasks, sealed for its key share dh.
    "idle": {"id": str, "py": str, "dh": str, "free": int},  # clients
    # A task, sealed: `of` pieces of data on the board (0: it comes by wormhole).
    "assign": {"id": str, "task": str, "dh": str, "py": str, "size": int,
               "n": int, "of": int, "data": str},  # workers; other clients
    # These five also carry a tag only the task's two peers can make (_tag).
    "decline": {"id": str, "task": str, "why": str, "tag": str},  # clients
    "result": {"id": str, "task": str, "size": int, "free": int,
               "n": int, "of": int, "data": str, "tag": str},  # clients
    "took": {"id": str, "task": str, "tag": str},  # workers: the result arrived
    # The pieces of a payload that did not arrive ("0,3"), asked of its sender.
    "again": {"id": str, "task": str, "missing": str, "tag": str},  # clients; workers
    "withdraw": {"id": str, "task": str, "tag": str},  # workers
    "alive": {"id": str, "held": _NAMES},  # everyone; held: a worker's tasks
    "bye": {"id": str},  # everyone
    "who": {"id": str},  # everyone: a roll call, answered with "here"
    "here": {"id": str, "role": str, "user": str, "py": str, "since": int,
             "about": dict},  # observers
}
_BIGGEST = 1 << 48  # no number on the board is larger (nor negative)


class _Message(dict):
    """A decoded board line: msg.kind, msg.to, msg["field"], msg.authentic."""

    authentic = True  # signed with the cluster's key, or neither has one

    def __init__(self, kind, to, fields):
        super().__init__(fields)
        self.kind, self.to = kind, to


class _OtherVersion:
    """A line of another version of the protocol."""

    def __init__(self, version):
        self.version = version


def _encode(kind, to="*", key=None, **fields):
    """A board line; with a cluster key it ends with its signature."""
    line = b"%s%s %s %s" % (_PREFIX, kind.encode(), to.encode(),
                            json.dumps(fields, separators=(",", ":")).encode())
    if key is not None:
        line += b" " + _signature(key, line)
    return line + b"\n"


def _signature(key, line):
    return hmac.new(key, line, "sha256").hexdigest()[:32].encode()


def _decode(line, key=None, wants=None):
    """The message on a board line, or None for anything malformed (or, when
    wants(kind, to) says so, not ours); an _OtherVersion for other versions."""
    line = line.strip()
    if not line.startswith(_PREFIX):
        version = line[3:line.find(b" ")] if line.startswith(b"p2p") else b""
        if version.isdigit() and len(version) < 4:
            return _OtherVersion(version.decode())
        return None
    head = line.split(b" ", 3)
    if len(head) < 4 or len(line) > MAX_LINE:
        return None
    kind, to, body = head[1].decode(errors="replace"), head[2].decode(errors="replace"), head[3]
    if kind not in _MESSAGES or (wants is not None and not wants(kind, to)):
        return None
    signature = None
    if not body.endswith(b"}"):
        body, _, signature = body.rpartition(b" ")
        line = line[:len(line) - len(signature) - 1]
    try:
        fields = json.loads(body)
    except (ValueError, RecursionError):  # deep nesting is a RecursionError
        return None
    if not isinstance(fields, dict) or not all(
            _fits(fields.get(name), shape) for name, shape in _MESSAGES[kind].items()):
        return None
    message = _Message(kind, to, fields)
    if key is None:
        message.authentic = signature is None
    else:
        message.authentic = signature is not None and hmac.compare_digest(
            signature, _signature(key, line))
    return message


def _fits(value, kind):
    if kind is _NAMES:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind is int:
        return type(value) is int and 0 <= value < _BIGGEST
    return isinstance(value, kind)


# -- serialization ------------------------------------------------------------

def _importable(obj):
    """True when pickle can send obj by reference (module + qualified name)."""
    module_name = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", "")
    if module_name in (None, "__main__") or "<" in qualname:
        return False
    found = sys.modules.get(module_name)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


class _Pickler(pickle.Pickler):
    """Pickles what plain pickle refuses: lambdas, closures, __main__ code."""

    def __init__(self, file):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.by_value = False  # True when the payload carries code objects
        # Functions that share a module's globals share one dict on arrival,
        # so that one's ``global x`` is seen by the others.
        self.namespaces = {}

    def reducer_override(self, obj):
        if isinstance(obj, types.FunctionType) and not _importable(obj):
            self.by_value = True
            namespace = self.namespaces.setdefault(id(obj.__globals__), {})
            return _reduce_function(obj, namespace)
        if isinstance(obj, type) and not _importable(obj):
            self.by_value = True
            return _reduce_class(obj)
        if isinstance(obj, types.ModuleType):
            return _import_module, (obj.__name__,)
        if isinstance(obj, (staticmethod, classmethod)):
            return type(obj), (obj.__func__,)
        if isinstance(obj, property):
            return property, (obj.fget, obj.fset, obj.fdel, obj.__doc__)
        if isinstance(obj, types.MappingProxyType):  # e.g. in a dataclass's fields
            return types.MappingProxyType, (dict(obj),)
        return NotImplemented


def _dump(obj, file):
    """Pickle obj into file; True when it carries code by value."""
    pickler = _Pickler(file)
    pickler.dump(obj)
    return pickler.by_value


def _dumps(obj):
    """(bytes, by_value) for obj."""
    buffer = io.BytesIO()
    by_value = _dump(obj, buffer)
    return buffer.getvalue(), by_value


class _EmptyCell:
    """Stands for a closure cell with no value yet."""


_GLOBAL_OPS = {"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"}


def _global_names(code):
    """The global names code uses (not attribute names, which share co_names)."""
    names = {op.argval for op in dis.get_instructions(code) if op.opname in _GLOBAL_OPS}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _reduce_function(func, namespace):
    cells = [c.cell_contents if _cell_filled(c) else _EmptyCell
             for c in func.__closure__ or ()]
    known = func.__globals__
    state = {
        "globals": {n: known[n] for n in _global_names(func.__code__) if n in known},
        "defaults": func.__defaults__, "kwdefaults": func.__kwdefaults__,
        "closure": cells, "dict": func.__dict__, "module": func.__module__,
        "qualname": func.__qualname__, "doc": func.__doc__,
    }
    args = (PY, marshal.dumps(func.__code__), func.__name__, len(cells), namespace)
    # State comes after the function is memoized, so recursion resolves.
    return _make_function, args, state, None, None, _fill_function


def _cell_filled(cell):
    try:
        cell.cell_contents
    except ValueError:
        return False
    return True


def _make_function(py, code, name, ncells, namespace):
    if py != PY:
        raise P2PError("this task's code was written for Python %s and cannot run "
                       "on Python %s" % (py, PY))
    cells = tuple(types.CellType() for _ in range(ncells))
    namespace.setdefault("__builtins__", builtins)
    return types.FunctionType(marshal.loads(code), namespace, name, None, cells)


def _fill_function(func, state):
    func.__globals__.update(state["globals"])
    func.__defaults__ = state["defaults"]
    func.__kwdefaults__ = state["kwdefaults"]
    for cell, value in zip(func.__closure__ or (), state["closure"]):
        if value is not _EmptyCell:
            cell.cell_contents = value
    func.__dict__.update(state["dict"])
    func.__module__ = state["module"]
    func.__qualname__ = state["qualname"]
    func.__doc__ = state["doc"]


def _reduce_class(cls):
    slots = getattr(cls, "__slots__", ())
    slots = (slots,) if isinstance(slots, str) else tuple(slots)
    # The metaclass makes these anew (ABCMeta's cache, for one).
    skip = ("__dict__", "__weakref__", "_abc_impl") + slots
    attrs = {k: v for k, v in vars(cls).items() if k not in skip}
    args = (type(cls), cls.__name__, cls.__qualname__, cls.__module__, cls.__bases__,
            {"__slots__": slots} if slots else {})
    return _make_class, args, attrs, None, None, _fill_class


def _make_class(metaclass, name, qualname, module, bases, namespace):
    # Back home (a result on the client), a class is the client's own class,
    # so ``except MyError`` and isinstance() work.
    home = sys.modules.get(module)
    for part in qualname.split("."):
        home = getattr(home, part, None)
    if isinstance(home, type) and home.__name__ == name:
        return home
    namespace = dict(namespace, __module__=module, __qualname__=qualname)
    return metaclass(name, bases, namespace)


def _fill_class(cls, attrs):
    for key, value in attrs.items():
        if key not in vars(cls):
            setattr(cls, key, value)


def _import_module(name):
    return importlib.import_module(name)


# Results are loaded by a pickle that names only harmless things: a worker
# could otherwise send back a pickle that calls os.system on the client.
# Whatever these modules hold can run commands or code, or write files.
_UNSAFE_MODULES = frozenset("""
    os posix nt subprocess _posixsubprocess sys builtins importlib pkgutil zipimport
    runpy code codeop pickle _pickle marshal types shutil pty ctypes _ctypes
    multiprocessing concurrent asyncio threading _thread signal socket _socket ssl
    select selectors mmap resource fcntl io _io codecs tempfile fileinput glob
    zipfile tarfile shelve dbm sqlite3 logging operator gc inspect pdb bdb trace
    faulthandler timeit doctest unittest profile cProfile pydoc rlcompleter
    webbrowser http urllib ftplib smtplib xmlrpc telnetlib platform sysconfig site
    ensurepip venv distutils setuptools pip atexit gzip bz2 lzma wave aifc sunau
    mailbox zipapp
""".split())
_SAFE_NAMES = {("types", "SimpleNamespace"), ("types", "MappingProxyType")}
# These builtins run code, reach any attribute or touch files.
_UNSAFE_BUILTINS = frozenset("""
    eval exec compile open getattr setattr delattr __import__ __build_class__
    globals locals vars breakpoint input help exit quit
""".split())


class _Withheld:
    """Stands for code that came back in a result and was not loaded."""

    def __init__(self, what):
        self.what = what

    def __call__(self, *args, **kwargs):
        raise P2PError("%s came back from a worker as code, which p2p.py does not "
                       "load unless you trust the cluster: set P2P_TRUST=1 (or "
                       "Config(trust=True)) if you trust all its members" % self.what)

    def __repr__(self):
        return "<%s, withheld>" % self.what


class _ResultUnpickler(pickle.Unpickler):
    """Loads a worker's result, naming only what the client already has.

    Globals come only from modules already imported here: error classes from
    any, nothing else from _UNSAFE_MODULES or p2p.py (but its rebuilders);
    code sent by value (functions, modules) is withheld.
    A filter against pickle exploits, not a sandbox: Config(trust=True)
    loads everything.
    """

    _rebuilders = {
        "_make_function": lambda py, code, name, ncells, namespace: _Withheld(
            "the function %s" % name),
        "_fill_function": lambda func, state: None,
        "_import_module": lambda name: _Withheld("the module %s" % name),
        "_make_class": _make_class, "_fill_class": _fill_class, "_EmptyCell": _EmptyCell,
    }

    def find_class(self, module, name):
        if module == __name__ and name in self._rebuilders:
            return self._rebuilders[name]
        found = sys.modules.get(module)
        for part in name.split("."):
            found = getattr(found, part, None)
        home = getattr(found, "__module__", None) or module
        if isinstance(found, type) and issubclass(found, BaseException):
            allowed = True  # an error class, from anywhere
        elif isinstance(found, types.ModuleType) or ("." in name and
                                                     not isinstance(found, type)):
            allowed = False  # a module, a method (Path.write_text), another module's name
        elif "builtins" in (module, home):  # also eval re-exported elsewhere
            allowed = getattr(found, "__name__", name) not in _UNSAFE_BUILTINS
        else:
            packages = {module.partition(".")[0], home.partition(".")[0]}
            allowed = (module, name) in _SAFE_NAMES or not (
                __name__ in (module, home) or packages & _UNSAFE_MODULES)
        if found is None or not allowed:
            raise TransferError(
                "it names %s.%s, which p2p.py does not load from a worker (%s); "
                "set P2P_TRUST=1 if you trust every member of the cluster"
                % (module, name, "not imported here" if allowed else "it could run "
                   "commands on your machine"))
        return found


def _load(file, trust=False):
    """Load a pickle from a peer: fully if trusted, else as a result (see above)."""
    return (pickle.Unpickler if trust else _ResultUnpickler)(file).load()


def _describe_unpicklable(fn, args, kwargs):
    """Name the first piece of a task that cannot be pickled."""
    pieces = [("the function %r" % (fn,), fn)]
    pieces += [("argument %d (%r)" % (i + 1, a), a) for i, a in enumerate(args)]
    pieces += [("keyword argument %s=%r" % (k, v), v) for k, v in kwargs.items()]
    for label, piece in pieces:
        try:
            _dumps(piece)
        except Exception as exc:
            return "%s cannot be sent to a worker: %s" % (label[:200], exc)
    return "the task cannot be sent to a worker"


# -- transfer -----------------------------------------------------------------

# RFC 3526 group 14: each worker and each client has a Diffie-Hellman key
# share, said on the board (in idle and assign lines); the key of each
# payload between two peers comes from their shared secret (and the
# cluster's secret, where it has one), which no one else on the board can
# compute.
_DH_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF", 16)


class _KeyShare:
    """One peer's side of its Diffie-Hellman exchanges, for its whole life."""

    def __init__(self):
        self._secret = secrets.randbits(256) | (1 << 255)
        public = pow(2, self._secret, _DH_PRIME)
        self.public = base64.b64encode(public.to_bytes(256, "big")).decode()
        self.fingerprint = _fingerprint(self.public)
        self._roots = {}  # (peer's share, salt) -> the key we share
        self._shares = {}  # fingerprint -> a peer's share we have used

    def root(self, peer_public, salt=b""):
        """The key shared with the peer whose share (or its fingerprint, once
        we used the share) this is, or P2PError."""
        if len(peer_public) == len(self.fingerprint):
            if peer_public not in self._shares:
                raise P2PError(_UNKNOWN_SHARE)
            peer_public = self._shares[peer_public]
        if (peer_public, salt) not in self._roots:
            try:
                value = int.from_bytes(base64.b64decode(peer_public, validate=True), "big")
            except ValueError:
                value = 0
            # In the subgroup of prime order (p-1)/2 that 2 generates, or a
            # peer could steer the shared secret into a tiny subgroup.
            if not (1 < value < _DH_PRIME - 1 and
                    pow(value, (_DH_PRIME - 1) // 2, _DH_PRIME) == 1):
                raise P2PError("a peer sent an invalid key share")
            shared = pow(value, self._secret, _DH_PRIME).to_bytes(256, "big")
            if len(self._roots) > 4096:
                self._roots.clear()
                self._shares.clear()
            self._shares[_fingerprint(peer_public)] = peer_public
            self._roots[peer_public, salt] = hmac.new(salt or b"p2p", shared,
                                                      "sha256").digest()
        return self._roots[peer_public, salt]


_UNKNOWN_SHARE = "unknown key share"  # a fingerprint of a share we never had


def _fingerprint(share):
    """A key share's short name: a client names its share so once a worker
    has it, 16 characters on the board instead of 344."""
    return hashlib.sha256(share.encode()).hexdigest()[:16]


def _payload_key(root, task, what):
    """The key of one payload: what is b"task" or b"result" (or b"lines", for _tag)."""
    return hmac.new(root, what + b" " + task.encode(), "sha256").digest()


def _tag(key, kind, sender, task):
    """What proves a line about a task came from one of its two peers: a cluster
    key only proves it came from some member, who could end others' tasks."""
    return hmac.new(key, ("%s %s %s" % (kind, sender, task)).encode(),
                    "sha256").hexdigest()[:32]


def _tagged(msg, key):
    return key is not None and hmac.compare_digest(
        msg["tag"], _tag(key, msg.kind, msg["id"], msg["task"]))


# A sealed payload is MAGIC, a random nonce, the payload XORed with a
# SHAKE-256 keystream, and an HMAC-SHA256 tag over all that (encrypt, then
# MAC). SHAKE-256 of key || nonce || block number is a pseudorandom function
# (it is how KMAC and cSHAKE build one), so the keystream is a stream cipher;
# the tag, under a second key, is checked in constant time before a byte of
# the payload is used, and encrypt-then-MAC with a secure MAC is what makes
# a forged or altered payload fail (Bellare and Namprempre, 2000). Keys are
# never reused across payloads: each one is derived from its task's id.
_SEAL_MAGIC = b"p2s1"
_NONCE = 16
_TAG = 32
SEAL_OVERHEAD = len(_SEAL_MAGIC) + _NONCE + _TAG
_BLOCK = 1 << 20  # bytes of keystream per SHAKE-256 call


def _seal_keys(key):
    return (hmac.new(key, b"encrypt", "sha256").digest(),
            hmac.new(key, b"authenticate", "sha256").digest())


def _xor(cipher_key, nonce, number, block):
    pad = hashlib.shake_256(cipher_key + nonce + number.to_bytes(8, "big")).digest(len(block))
    return (int.from_bytes(block, "little") ^ int.from_bytes(pad, "little")).to_bytes(
        len(block), "little")


def _seal_stream(key, source, sink):
    """Seal what source.read gives into sink.write."""
    cipher_key, mac_key = _seal_keys(key)
    nonce = secrets.token_bytes(_NONCE)
    tag = hmac.new(mac_key, _SEAL_MAGIC + nonce, "sha256")
    sink.write(_SEAL_MAGIC + nonce)
    for number, block in enumerate(iter(lambda: source.read(_BLOCK), b"")):
        sealed = _xor(cipher_key, nonce, number, block)
        tag.update(sealed)
        sink.write(sealed)
    sink.write(tag.digest())


def _open_stream(key, source, size, sink):
    """Open size sealed bytes from source into sink; TransferError, having
    written garbage to sink, when the seal is broken: discard sink then."""
    cipher_key, mac_key = _seal_keys(key)
    head = source.read(len(_SEAL_MAGIC) + _NONCE)
    left = size - len(head) - _TAG
    if not head.startswith(_SEAL_MAGIC) or len(head) < len(_SEAL_MAGIC) + _NONCE or left < 0:
        raise TransferError("it is not a sealed payload")
    nonce = head[len(_SEAL_MAGIC):]
    tag = hmac.new(mac_key, head, "sha256")
    number = 0
    while left:
        block = source.read(min(_BLOCK, left))
        if not block:
            raise TransferError("the sealed payload is cut short")
        tag.update(block)
        sink.write(_xor(cipher_key, nonce, number, block))
        left -= len(block)
        number += 1
    if not hmac.compare_digest(source.read(_TAG), tag.digest()):
        raise TransferError("its seal is broken: it was altered, or not sealed for us")


def _seal(key, data):
    sink = io.BytesIO()
    _seal_stream(key, io.BytesIO(data), sink)
    return sink.getvalue()


def _open(key, sealed):
    sink = io.BytesIO()
    _open_stream(key, io.BytesIO(sealed), len(sealed), sink)
    return sink.getvalue()


def _seal_file(key, source_path, sealed_path):
    with open(source_path, "rb") as source, open(sealed_path, "wb") as sink:
        _seal_stream(key, source, sink)


def _open_file(key, sealed_path, path):
    """Open a sealed file into path; on a broken seal nothing is left at path."""
    try:
        with open(sealed_path, "rb") as source, open(path, "wb") as sink:
            _open_stream(key, source, os.path.getsize(sealed_path), sink)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise


def _pieces(sealed):
    """A sealed payload as the base64 data of its board lines."""
    return [base64.b64encode(sealed[at:at + _PIECE]).decode()
            for at in range(0, len(sealed), _PIECE)] or [""]


class _Partial:
    """A payload of which some pieces have arrived."""

    def __init__(self, first, now):
        self.first = first  # a piece of it: who sent it, for which task
        self.size, self.of = first["size"], first["of"]
        self.got = {}  # piece number -> bytes
        self.since = self.heard = now
        self.asked = 0  # times its missing pieces were asked for


class _Assembly:
    """Payloads arriving on the board in pieces, by sender, task and kind.

    A piece can be lost (a cut or mixed line is noise): the receiver asks
    for the missing pieces of a payload that stopped arriving (stalled);
    one whose pieces were all lost is sent again by its sender (a worker
    repeats its result until it is taken, a client its task until the
    worker says it holds it). An incomplete payload is dropped after KEEP.
    """

    KEEP = 60.0  # seconds an incomplete payload is kept
    MOST = 256  # incomplete payloads kept at once
    ASK_AFTER = 0.5  # seconds without a piece before asking for the rest
    ASKS = 5  # times we ask

    def __init__(self):
        self._partial = {}  # (sender, task, kind) -> _Partial

    def add(self, msg):
        """The whole sealed payload once its last piece is in, else None."""
        size, of, n = msg["size"], msg["of"], msg["n"]
        if not 0 <= n < of or of != -(-size // _PIECE) or size > BOARD_MAX:
            return None  # not a shape our peers send
        try:
            data = base64.b64decode(msg["data"], validate=True)
        except ValueError:
            return None
        if len(data) != min(_PIECE, size - n * _PIECE):
            return None
        if of == 1:
            return data
        now = time.monotonic()
        for stale in [k for k, v in self._partial.items() if now - v.since > self.KEEP]:
            del self._partial[stale]
        which = (msg["id"], msg["task"], msg.kind)
        entry = self._partial.get(which)
        if entry is None or (entry.size, entry.of) != (size, of):
            entry = _Partial(msg, now)  # another payload under that name: the new one counts
        entry.got[n], entry.heard = data, now
        if len(entry.got) < of:
            if len(self._partial) < self.MOST or which in self._partial:
                self._partial[which] = entry
            return None
        self._partial.pop(which, None)
        return b"".join(entry.got[i] for i in range(of))

    def stalled(self):
        """[(a piece, the numbers of the missing ones)] of payloads that
        stopped arriving: to ask their senders for again."""
        now, asks = time.monotonic(), []
        for entry in self._partial.values():
            if now - entry.heard > self.ASK_AFTER and entry.asked < self.ASKS:
                entry.asked, entry.heard = entry.asked + 1, now
                asks.append((entry.first, ",".join(
                    str(n) for n in range(entry.of) if n not in entry.got)))
        return asks


def _missing(msg):
    """The piece numbers an "again" line asks for."""
    return {int(n) for n in msg["missing"].split(",")[:BOARD_MAX // _PIECE + 1]
            if n.isdigit() and len(n) < 4}


def _code(digest):
    nameplate = int.from_bytes(digest[:4], "big") % 9000000 + 1000000
    return "%d-%s" % (nameplate, digest[4:16].hex())


def _wormhole_code(key):
    """The wormhole code of a payload too large for the board: the sealed
    bytes are all that someone who reads it (say, from ps) can get."""
    return _code(hmac.new(key, b"code", "sha256").digest())


WORMHOLE_RELEASE = "v1.0.6"  # the wormhole-william that install-wormhole fetches
_DOWNLOADS = "https://github.com/psanford/wormhole-william/releases/download"
# kind: "wormhole-william" or "magic-wormhole" (Python's), which differ a little
_Tool = collections.namedtuple("_Tool", "kind version path")
_tools = {}  # path -> _Tool, once per process: the Python CLI takes 0.7 s to start


def _data_dir():
    """Where p2p.py keeps what it downloads for you."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or os.path.expanduser(r"~\AppData\Local")
    elif sys.platform == "darwin":
        base = os.path.expanduser("~/Library/Application Support")
    else:
        base = os.environ.get("XDG_DATA_HOME", "")
        if not os.path.isabs(base):  # the XDG rule: a relative one is ignored
            base = os.path.expanduser("~/.local/share")
    return os.path.join(os.path.abspath(base), "p2p")


def _installed_wormhole():
    return os.path.join(_data_dir(), "wormhole-william" + (
        ".exe" if sys.platform == "win32" else ""))


def _wormhole_path(config):
    """Where the wormhole CLI to drive is, or None: P2P_WORMHOLE, else
    wormhole-william on PATH, else the one install-wormhole fetched, else
    magic-wormhole's ``wormhole``."""
    names = [config.wormhole] if config.wormhole else [
        "wormhole-william", _installed_wormhole(), "wormhole"]
    return next(filter(None, (shutil.which(name) for name in names)), None)


def _wormhole_tool(config):
    """The wormhole CLI to drive (see _wormhole_path), or P2PError saying how to get one."""
    path = _wormhole_path(config)
    if path is not None:
        if path not in _tools:
            _tools[path] = _probe_wormhole(path)
        return _tools[path]
    if config.wormhole:
        raise P2PError("P2P_WORMHOLE names %r, which was not found: point it at "
                       "wormhole-william or magic-wormhole's wormhole" % config.wormhole)
    raise P2PError(
        "no wormhole tool was found (neither wormhole-william nor magic-wormhole's "
        "wormhole is on PATH): run `python -m p2p install-wormhole`, or install it "
        "yourself (Debian/Ubuntu: apt install wormhole-william; anywhere: pip install "
        "magic-wormhole), or point P2P_WORMHOLE at it")


def _probe_wormhole(path):
    """What kind of wormhole CLI path is, from its --version."""
    try:
        said = subprocess.run([path, "--version"], capture_output=True, text=True,
                              errors="replace", timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise P2PError("%s does not run (%s): reinstall it, or point P2P_WORMHOLE at "
                       "a wormhole tool that does" % (path, exc)) from None
    words = (said.stdout + said.stderr).split()
    if words[:2] == ["wormhole-william", "version"] and len(words) > 2:
        return _Tool("wormhole-william", words[2], path)
    if words[:1] == ["magic-wormhole"] and len(words) > 1:
        return _Tool("magic-wormhole", words[1], path)
    raise P2PError("%s is not a wormhole tool we know: `%s --version` said %r; use "
                   "wormhole-william or magic-wormhole's wormhole"
                   % (path, os.path.basename(path), " ".join(words)[:100]))


def _wormhole(config, words, cwd, timeout, answer=None, running=None, max_file=None):
    """Run the wormhole tool's WORDS... in cwd: the one way to run it.

    running, a list, holds the process while it runs, so others can kill it;
    max_file caps the size of the files it writes (where the OS lets us).
    """
    tool = _wormhole_tool(config)
    if tool.kind == "magic-wormhole" and words[0] == "receive":
        words = words[:1] + ["--accept-file"] + words[1:]  # it asks no question then
    argv = [tool.path] + list(words)
    if config.debug:
        log.debug("run: %s", shlex.join(argv))
    process = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE,
                               stdin=subprocess.PIPE if answer else subprocess.DEVNULL)
    if running is not None:
        running.append(process)
    try:
        if max_file is not None and hasattr(resource, "prlimit"):
            try:  # before our answer, so before it writes anything
                resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (max_file, max_file))
            except OSError:
                pass  # it has ended already: its status tells how
        if answer:
            try:
                process.stdin.write(answer)
                process.stdin.close()
            except OSError:
                pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise TransferError("wormhole %s did not finish within %.0fs"
                                % (words[0], timeout)) from None
        # Only what is there now: a wrapper's children may hold the pipe open.
        os.set_blocking(process.stderr.fileno(), False)
        try:
            said = os.read(process.stderr.fileno(), 65536)
        except BlockingIOError:
            said = b""
    finally:
        process.stderr.close()
        if running is not None:
            running.remove(process)
    if process.returncode != 0:
        said = said.decode(errors="replace").strip()[-300:]
        raise TransferError("wormhole %s failed: %s" % (words[0], said or (
            "no message, exit status %d" % process.returncode)))


def _kill(running):
    """Stop the wormhole processes of a running list (see _wormhole)."""
    for process in list(running):
        process.kill()


def _send_file(config, code, path, running=None):
    _wormhole(config, ["send", "--hide-progress", "--code", code,
                       os.path.basename(path)], os.path.dirname(path),
              config.timeout + os.path.getsize(path) / 2e6, running=running)


def _receive_file(config, code, name, size, folder, running=None):
    """Receive the file ``name`` of ``size`` bytes into an empty folder; its path."""
    try:
        _wormhole(config, ["receive", "--hide-progress", code], folder,
                  config.timeout + size / 2e6, answer=b"y\n", running=running,
                  max_file=size)
    except TransferError as exc:
        if "file too large" not in str(exc).lower():
            raise
        raise TransferError("the peer sent more than the %d bytes announced for %s"
                            % (size, name)) from None
    path = os.path.join(folder, name)
    if os.listdir(folder) != [name] or os.path.getsize(path) != size:
        raise TransferError("the peer sent %s, not the %d bytes of %s that were "
                            "announced" % (os.listdir(folder), size, name))
    return path


def _release_file():
    """The name of wormhole-william's release file for this OS and CPU."""
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64",
            "arm64": "arm64", "i386": "386", "i686": "386", "x86": "386"}.get(machine)
    if sys.platform == "darwin":
        arch = "amd64"  # the only Mac build; Apple silicon runs it under Rosetta
    elif sys.platform == "win32":
        arch = "386.exe"  # the only Windows build, which 64-bit Windows runs too
    system = {"linux": "linux", "darwin": "darwin", "win32": "windows"}.get(
        sys.platform, sys.platform.rstrip("0123456789"))
    if arch is None:
        raise P2PError("wormhole-william publishes no build for %s on %s: install "
                       "magic-wormhole (pip install magic-wormhole) instead"
                       % (sys.platform, machine))
    return "wormhole-william-%s-%s" % (system, arch)


def _install_wormhole(base_url=None):
    """Fetch the pinned wormhole-william into the data directory; its _Tool.

    The file only lands there once it runs and says it is the pinned
    version; whatever fails first, nothing is left behind.
    """
    import http.client  # here, not at the top: with ssl they weigh 7 MB
    import urllib.request
    base_url = (base_url or os.environ.get("P2P_WORMHOLE_DOWNLOADS") or _DOWNLOADS)
    url = "%s/%s/%s" % (base_url.rstrip("/"), WORMHOLE_RELEASE, _release_file())
    target = _installed_wormhole()
    folder = os.path.dirname(target)  # absolute: the loop ends at / at the latest
    made = None  # the outermost folder we create, removed again on failure
    if not os.path.isdir(folder):
        made = folder
        while not os.path.isdir(os.path.dirname(made)):
            made = os.path.dirname(made)
    partial, installed = None, False
    try:
        os.makedirs(folder, exist_ok=True)
        fd, partial = tempfile.mkstemp(prefix=".download-", dir=os.path.dirname(target))
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(url, timeout=60) as answer:
            shutil.copyfileobj(answer, f)
            size, announced = f.tell(), answer.headers.get("Content-Length")
        if announced is not None and size != int(announced):
            raise P2PError("the download stopped after %d of %s bytes" % (size, announced))
        os.chmod(partial, 0o755)
        tool = _probe_wormhole(partial)
        if (tool.kind, tool.version) != ("wormhole-william", WORMHOLE_RELEASE):
            raise P2PError("it is %s %s, not wormhole-william %s"
                           % (tool.kind, tool.version, WORMHOLE_RELEASE))
        os.replace(partial, target)
        installed = True
        _tools[target] = tool._replace(path=target)  # probed already, as it is
    except (OSError, ValueError, P2PError, http.client.HTTPException) as exc:
        raise P2PError("could not install wormhole-william from %s: %s. Nothing was "
                       "kept; install it yourself (see the README) or point "
                       "P2P_WORMHOLE at it" % (url, exc)) from None
    finally:
        if not installed:  # also when interrupted
            if partial is not None:
                os.remove(partial)
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)
    return _tools[target]


def _ensure_wormhole(config):
    """Make sure there is a wormhole tool; with none, offer to fetch one on a terminal."""
    try:
        _wormhole_tool(config)
    except P2PError as exc:
        terminal = all(stream is not None and stream.isatty()
                       for stream in (sys.stdin, sys.stderr))
        if _wormhole_path(config) is not None or not terminal:
            raise  # a tool that does not run, or nobody to ask
        sys.stderr.write("p2p: %s\np2p: download wormhole-william %s from GitHub into "
                         "%s now? [y/N] " % (exc, WORMHOLE_RELEASE, _data_dir()))
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise
        _install_wormhole()


# -- worker -------------------------------------------------------------------

def _run_task(task_path, result_path):
    """Run one pickled task and pickle its outcome (in a runner process)."""
    streams = [tempfile.TemporaryFile() for _ in range(2)]
    saved = [os.dup(1), os.dup(2)]
    outcome = {}
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, stream in zip((1, 2), streams):
        os.dup2(stream.fileno(), fd)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with open(task_path, "rb") as f:
                    fn, args, kwargs = pickle.load(f)
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: B902 - a task's error is its result
                outcome["error"] = exc
                outcome["traceback"] = traceback.format_exc()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        for fd, kept in zip((1, 2), saved):
            os.dup2(kept, fd)
            os.close(kept)
    for name, stream in zip(("stdout", "stderr"), streams):
        stream.seek(0)
        outcome[name] = stream.read().decode(errors="replace")
        stream.close()
    outcome["warnings"] = [(str(w.message), w.category, w.filename, w.lineno)
                           for w in caught]
    with open(result_path, "wb") as f:
        try:  # straight to the file: a large result is not copied in memory
            _dump(outcome, f)
        except Exception as exc:
            what = "result" if "value" in outcome else "exception"
            f.seek(0)
            f.truncate()
            f.write(_failure(P2PError("the task's %s cannot be sent back: %s" % (what, exc)),
                             outcome.get("traceback", ""), outcome["stdout"],
                             outcome["stderr"]))


def _failure(error, traceback_text="", stdout="", stderr=""):
    """A pickled outcome for a task that failed outside its own code."""
    return _dumps({"error": error, "traceback": traceback_text, "stdout": stdout,
                   "stderr": stderr, "warnings": []})[0]


def _checked_outcome(outcome):
    """outcome, if it has the shape _run_task gives it; else TransferError."""
    def shaped():
        if not isinstance(outcome, dict) or ("value" in outcome) == ("error" in outcome):
            return False
        texts = [outcome.get("stdout"), outcome.get("stderr"), outcome.get("traceback", "")]
        warned = outcome.get("warnings")
        return (isinstance(outcome.get("error", Exception()), BaseException)
                and all(isinstance(text, str) for text in texts)
                and isinstance(warned, list)
                and all(isinstance(w, tuple) and len(w) == 4 and isinstance(w[1], type)
                        and issubclass(w[1], Warning) and isinstance(w[2], str)
                        and isinstance(w[3], int) for w in warned))

    if not shaped():
        raise TransferError("it is not the outcome of a task")
    return outcome


def _serve_tasks():
    """A runner process: run tasks named on stdin, one at a time."""
    # The control channel moves off fds 0 and 1, so that a task that reads
    # stdin or writes stdout cannot disturb it.
    control_in = os.fdopen(os.dup(0), "r")
    control = os.fdopen(os.dup(1), "w")
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    for line in control_in:
        task_path, result_path = line.rstrip("\n").split("\t")
        _run_task(task_path, result_path)
        control.write("done\n")
        control.flush()


class _Runner:
    """A child process that runs tasks, so a crash takes only the task with it."""

    def __init__(self):
        self.process = None

    def ready(self):
        """Start the runner process, if it is not running."""
        if self.process is None or self.process.poll() is not None:
            # -c, not this file: the task's __main__ must be an empty module.
            path = [os.path.dirname(os.path.abspath(__file__))]
            path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import p2p; p2p._serve_tasks()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)))

    def start(self, task_path, result_path):
        """Hand a task to the runner process (started if need be)."""
        self.ready()
        try:
            self.process.stdin.write("%s\t%s\n" % (task_path, result_path))
            self.process.stdin.flush()
        except OSError:
            pass  # finish() finds it dead

    def finish(self, result_path):
        """Wait for the task; on a crash, write a TaskCrashed outcome instead."""
        try:
            answer = self.process.stdout.readline()
        except (OSError, ValueError):
            answer = ""
        if answer == "done\n":
            return
        status = self.process.wait()
        if status < 0:
            try:
                reason = "signal %s" % signal.Signals(-status).name
            except ValueError:  # a real-time signal has no name
                reason = "signal %d" % -status
        else:
            reason = "exit status %d" % status
        with open(result_path, "wb") as f:
            f.write(_failure(TaskCrashed("the process running the task died (%s); "
                                         "the worker goes on" % reason)))

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class _Slot:
    """One of a worker process's task slots: its id on the board, its runner,
    and the jobs it holds (the first one running)."""

    def __init__(self, peer_id):
        self.id = peer_id
        self.jobs = []  # in hand, in the order they run
        self.running = None  # the job its runner runs now
        self.queue = queue.Queue()  # jobs for its thread, None to end
        self.runner = _Runner()

    @property
    def free(self):
        return DEPTH - len(self.jobs)


class _Job:
    """A task on a worker, from its assignment until its result is taken."""

    def __init__(self, slot, msg, root, folder):
        self.id, self.client, self.slot = msg["task"], msg["id"], slot
        self.size = msg["size"]  # sealed
        self.task_key = _payload_key(root, self.id, b"task")
        self.result_key = _payload_key(root, self.id, b"result")
        self.line_key = _payload_key(root, self.id, b"lines")
        self.folder = folder
        self.task_path = os.path.join(folder, "task.pkl")
        self.outcome_path = os.path.join(folder, "outcome.pkl")
        self.ready = threading.Event()  # its task is on disk, or failed to come
        self.failed = False
        self.abandoned = False
        self.transfers = []  # wormhole processes moving its payloads
        self.result = None  # once run: sealed bytes for the board, or a sealed file
        self.said = 0.0  # when its result was last said
        self.repeats = 0  # times it was said
        self.since = time.monotonic()


class _Worker(_Member):
    """Takes tasks from clients on the board and runs them, DEPTH per slot."""

    role = "worker"

    def __init__(self, config, cluster, user, slots=1):
        super().__init__(config, cluster, user, _peer_id(user))
        ids = ["%s#%d" % (self.id, n + 1) for n in range(slots)]
        self.slots = {slot_id: _Slot(slot_id) for slot_id in ids}
        self.share = _KeyShare()
        self.jobs = {}  # task id -> _Job
        self.assembly = _Assembly()
        self.scratch = tempfile.mkdtemp(prefix="p2p-worker-")
        self.done = 0
        self.seen = collections.deque(maxlen=10000)  # task ids assigned to us
        self.stopped = threading.Event()
        self.alive_said = self.announced = 0.0
        self.spare = _Board(config, cluster.channel, None)  # heard by no one: drained

    def wants(self, kind, to):
        return to in ("*", self.id) or to in self.slots

    def _joined(self):
        if self.cluster.personal and not self.spare.running():
            # pico.sh throws off the last pipe left on a channel, and a
            # personal board has no host to keep us company: without this
            # second session we would be thrown off each time the last
            # client leaves, and be away while the next one arrives.
            self.spare.connect()
        self._announce()

    def _announce(self, only=None):
        if self.exposed:
            return  # take no task while a non-member could act on the board
        for slot in [only] if only else self.slots.values():
            if slot.free > 0:
                self.say("idle", id=slot.id, py=PY, dh=self.share.public, free=slot.free)
        self.announced = time.monotonic()

    def denied(self):
        log.error("%s", self._denied)
        self.stopped.set()

    def intruders_changed(self):
        if self.exposed:
            log.warning("not a member of %s on the board: %s; taking no task "
                        "until they are gone", self.cluster, ", ".join(self.intruders))
        elif self.intruders:
            log.warning("not a member of %s on the board: %s; the cluster's secret "
                        "keeps them out", self.cluster, ", ".join(self.intruders))
        else:
            self._announce()

    def about(self):
        return {"slots": len(self.slots), "done": self.done,
                "busy": sum(bool(slot.jobs) for slot in self.slots.values())}

    # What the board says to us.

    def _on_hello(self, msg):
        if msg["role"] == "client":
            self._announce()

    def _on_assign(self, msg):
        slot, task = self.slots.get(msg.to), msg["task"]
        if slot is None or task in self.jobs or task in self.seen:
            return  # not ours, sent again, or replayed
        sealed = self.assembly.add(msg) if msg["of"] else None
        if msg["of"] and sealed is None:
            return  # more pieces to come
        why = root = None
        try:
            root = self.share.root(msg["dh"], self.salt)
        except P2PError as exc:
            why = str(exc)  # we cannot tag this decline: the client knows why
        else:
            if slot.free <= 0:
                why = "busy"
            elif self.exposed:
                why = "a non-member is on the board"
            elif msg["py"] not in ("", PY):
                why = "this worker runs Python %s" % PY
        if why is not None:
            self._decline(msg["id"], slot, task, why,
                          root and _payload_key(root, task, b"lines"))
            return
        self.seen.append(task)
        job = self.jobs[task] = _Job(slot, msg, root, tempfile.mkdtemp(dir=self.scratch))
        slot.jobs.append(job)
        slot.queue.put(job)
        if sealed is None:
            threading.Thread(target=self._receive, args=(job,), daemon=True).start()
            return
        try:
            with open(job.task_path, "wb") as f:
                f.write(_open(job.task_key, sealed))
        except TransferError as exc:
            self._lost(job, exc)
        else:
            job.ready.set()

    def _on_took(self, msg):
        job = self.jobs.get(msg["task"])
        if job is not None and job.result is not None and _tagged(msg, job.line_key):
            self._forget(job)

    def _on_again(self, msg):
        job = self.jobs.get(msg["task"])
        if job is not None and isinstance(job.result, bytes) and _tagged(msg, job.line_key):
            self._say_result(job, _missing(msg))

    def _on_withdraw(self, msg):
        job = self.jobs.get(msg["task"])
        if job is not None and job.slot.id == msg.to and _tagged(msg, job.line_key):
            self._abandon(job, "withdrew")

    def _on_bye(self, msg):
        for job in [j for j in self.jobs.values() if j.client == msg["id"]]:
            self._abandon(job, "left")

    def tick(self):
        now, online_since = time.monotonic(), self.online_since
        if online_since is None:
            return
        if self.jobs and now - self.alive_said >= ALIVE_EVERY:
            self.say("alive", id=self.id, held=sorted(self.jobs))
            self.alive_said = now
        for job in list(self.jobs.values()):
            if now - max(job.since, online_since, self.heard.get(job.client, 0.0)) > LOST_AFTER:
                self._abandon(job, "fell silent")
            elif job.result is not None and now - job.said >= ALIVE_EVERY:
                # Until the client takes it: a line lost, or sent while its
                # link was down, must not leave it waiting. A client that
                # hears and never takes it has moved on.
                if job.repeats > LOST_AFTER / ALIVE_EVERY:
                    self._forget(job)
                else:
                    self._say_result(job)
        for first, missing in self.assembly.stalled():
            slot, task = self.slots.get(first.to), first["task"]
            if slot is None or task in self.jobs or task in self.seen:
                continue
            try:
                key = _payload_key(self.share.root(first["dh"], self.salt), task, b"lines")
            except P2PError:
                continue
            self.say("again", to=first["id"], id=slot.id, task=task, missing=missing,
                     tag=_tag(key, "again", slot.id, task))
        if now - self.announced >= IDLE_EVERY:
            self._announce()

    # The life of a job.

    def _receive(self, job):
        """Receive a task by wormhole (in a thread of its own)."""
        try:
            sealed = _receive_file(self.config, _wormhole_code(job.task_key), "task",
                                   job.size, job.folder, job.transfers)
            _open_file(job.task_key, sealed, job.task_path)
            os.remove(sealed)
        except (TransferError, OSError) as exc:
            self.post(self._lost, job, exc)
        else:
            job.ready.set()

    def _lost(self, job, why):
        if job.abandoned or job.failed:
            return
        job.failed = True
        job.ready.set()
        log.warning("task %s from %s: %s: %s", job.id, job.client, _LOST_TASK, why)
        # The receiver's word is final: the client tries again.
        self._decline(job.client, job.slot, job.id, "%s: %s" % (_LOST_TASK, why),
                      job.line_key)
        self._drop(job)

    def _serve(self, slot):
        """Run the slot's jobs in turn (its own thread): it runs, never decides."""
        while True:
            job = slot.queue.get()
            if job is None:
                return
            while not job.ready.wait(1.0) and not job.abandoned:
                pass
            with self.lock:  # so that _abandon stops what we start, or we start nothing
                if job.abandoned or job.failed:
                    continue
                slot.running = job
                slot.runner.start(job.task_path, job.outcome_path)
            try:
                slot.runner.finish(job.outcome_path)
                result = None if job.abandoned else self._sealed_outcome(job)
            except Exception as exc:  # whatever it is, the client hears of it
                result = None
                if not job.abandoned:  # else its folder went with it
                    log.exception("task %s from %s: the worker failed", job.id, job.client)
                    result = _seal(job.result_key, _failure(P2PError(
                        "the worker %s failed while running the task: %s" % (slot.id, exc))))
            self.post(self._ran, job, result)

    def _sealed_outcome(self, job):
        if os.path.getsize(job.outcome_path) + SEAL_OVERHEAD <= BOARD_MAX:
            with open(job.outcome_path, "rb") as f:
                return _seal(job.result_key, f.read())
        sealed = os.path.join(job.folder, "result")
        _seal_file(job.result_key, job.outcome_path, sealed)
        return sealed

    def _ran(self, job, result):
        job.slot.running = None
        if job.abandoned:
            return
        job.slot.jobs.remove(job)
        job.result = result
        self.done += 1
        log.info("task %s from %s: done in %.2fs", job.id, job.client,
                 time.monotonic() - job.since)
        self._say_result(job)
        if not isinstance(result, bytes):
            threading.Thread(target=self._send_result, args=(job,), daemon=True).start()

    def _decline(self, client, slot, task, why, line_key):
        self.say("decline", to=client, id=slot.id, task=task, why=why,
                 tag=_tag(line_key, "decline", slot.id, task) if line_key else "")

    def _say_result(self, job, only=None):
        """Say the job's result on the board (only these pieces, if given)."""
        job.said = time.monotonic()
        job.repeats += 1
        fields = dict(to=job.client, id=job.slot.id, task=job.id, free=job.slot.free,
                      tag=_tag(job.line_key, "result", job.slot.id, job.id))
        sealed = job.result
        self.say_payload("result", sealed if isinstance(sealed, bytes) else
                         os.path.getsize(sealed), only, **fields)

    def _send_result(self, job):
        try:
            _send_file(self.config, _wormhole_code(job.result_key), job.result,
                       job.transfers)
        except TransferError as exc:  # the client's receive tells the truth
            log.debug("sending the result of %s: %s", job.id, exc)
        self.post(self._forget, job)

    def _abandon(self, job, why):
        """Stop a job whose client is gone, and free its slot."""
        log.warning("%s %s: stopping its task %s", job.client, why, job.id)
        job.abandoned = True
        job.ready.set()
        _kill(job.transfers)
        if job.slot.running is job:
            job.slot.runner.stop()
        if job.result is None:
            # Should the client still be there, it tries elsewhere, not waits.
            self._decline(job.client, job.slot, job.id, "stopped: the client %s" % why,
                          job.line_key)
        self._drop(job)

    def _drop(self, job):
        if job in job.slot.jobs:
            job.slot.jobs.remove(job)
            self._announce(only=job.slot)
        self._forget(job)

    def _forget(self, job):
        if self.jobs.get(job.id) is job:
            del self.jobs[job.id]
            _kill(job.transfers)
            shutil.rmtree(job.folder, ignore_errors=True)

    def serve(self, duration):
        """Join, take tasks until duration passes or stop(); then leave."""
        deadline = time.monotonic() + duration
        try:
            for slot in self.slots.values():
                slot.runner.ready()  # before the first task, not during it
                threading.Thread(target=self._serve, args=(slot,), daemon=True,
                                 name="p2p-slot").start()
            self.join()
            log.info("worker %s on %s: %d slot(s), Python %s", self.id, self.cluster,
                     len(self.slots), PY)
            self.stopped.wait(max(0.0, deadline - time.monotonic()))
        finally:
            self.stop()
        if self._denied:
            raise ClusterError(self._denied)

    def stop(self):
        self.stopped.set()
        self.leave()
        self.spare.close()
        for slot in self.slots.values():
            slot.queue.put(None)
            slot.runner.stop()
        shutil.rmtree(self.scratch, ignore_errors=True)


# -- client / executor --------------------------------------------------------

class _TaskFuture(concurrent.futures.Future):
    """A Future that replays the task's output when its outcome is read."""

    def __init__(self):
        super().__init__()
        self._replay = None

    def result(self, timeout=None):
        try:
            return super().result(timeout)
        except KeyboardInterrupt:
            global _interrupted
            _interrupted = True  # Ctrl-C while waiting: withdraw at exit
            raise
        finally:
            self._replay_output()

    def exception(self, timeout=None):
        try:
            return super().exception(timeout)
        finally:
            self._replay_output()

    def _replay_output(self):
        with self._condition:
            replay, self._replay = self._replay, None
        if replay:
            sys.stdout.write(replay["stdout"])
            sys.stderr.write(replay["stderr"])
            for message, category, filename, lineno in replay["warnings"]:
                warnings.warn_explicit(message, category, filename, lineno)


# A task's states on its client, and where each may go next: the one place
# that says what can happen to a task.
_MOVES = {
    "queued": ("assigned", "cancelled", "failed"),  # waiting for a worker slot
    "assigned": ("queued", "receiving", "failed", "cancelled"),  # a slot has it
    "receiving": ("queued", "done", "failed", "cancelled"),  # its result is coming
    "done": (), "failed": (), "cancelled": (),
}


class _Task:
    def __init__(self, path, by_value, future):
        self.path = path  # the pickled call, kept on disk for the tries it may take
        self.size = os.path.getsize(path)
        self.py = PY if by_value else ""
        self.future = future
        self.state = "queued"
        self.started = False  # the future was set running
        self.id = None  # new for each assignment: a late answer to a past one is moot
        self.slot = None  # the worker slot it is assigned to
        self.keys = None  # (task key, result key, line key) with that slot's worker
        self.sealed = None  # the sealed task, when it rides the board
        self.assigned_at = 0.0
        self.said_at = 0.0  # when its assignment was last said
        self.resent = 0  # times the assignment was said again
        self.transfers = []  # its wormhole processes, to stop when it moves on
        self.failures = []  # why earlier tries failed
        self.failed_on = set()  # the machines of those tries

    def move(self, state):
        if state not in _MOVES[self.state]:
            raise AssertionError("task %s cannot go from %s to %s"
                                 % (self.id, self.state, state))
        self.state = state


class _SlotView:
    """A worker slot as a client knows it from the board."""

    def __init__(self, py, dh, free):
        self.py, self.dh, self.free = py, dh, free
        self.quick = False  # our last task there came back within QUICK


def _pick(py, failed_on, slots):
    """The slot id for a task, or None, from plain data: the task's Python
    ("" for any), the machines it failed on, and {slot id: (py, free)}.

    A slot with room, on a machine the task has not failed on if there is
    one (a worker restarted there has a new id, on the same flaky laptop),
    with the most room: tasks spread over slots before they queue in one.
    """
    fits = [(_machine_of(slot) in failed_on, -free, slot)
            for slot, (slot_py, free) in slots.items()
            if free > 0 and py in ("", slot_py)]
    return min(fits)[2] if fits else None


class _Client(_Member):
    """The client side of an Executor: assigns tasks to worker slots."""

    RESEND_AFTER = ALIVE_EVERY + 2.0  # a worker silent since an assignment: say it again
    RESENDS = 2  # then it counts as not arrived

    def __init__(self, config, cluster, user, retries=RETRIES, board=None):
        super().__init__(config, cluster, user, _peer_id(user))
        if board is not None:
            self.board, self.inbox, self._preconnected = board, board.inbox, True
        self.retries = retries
        self.share = _KeyShare()
        self.scratch = tempfile.mkdtemp(prefix="p2p-client-")
        self.slots = {}  # worker slot id -> _SlotView
        self.queue = collections.deque()  # queued tasks
        self.tasks = {}  # task id -> _Task, assigned or receiving
        self.assembly = _Assembly()
        self.known_to = set()  # worker processes that have our key share
        self.alive_said = 0.0
        # Futures are settled on a thread of their own: user callbacks run
        # there, never on the peer's thread, and large results load there.
        self.outcomes = queue.Queue()
        self._settler = threading.Thread(target=self._settle, daemon=True,
                                         name="p2p-results")

    def wants(self, kind, to):
        # Others' assignments and results tell us which slots are taken or free.
        return to in ("*", self.id) or kind in ("assign", "result")

    def start(self):
        self._settler.start()
        self.join()

    def put(self, task):
        with self.lock:  # queued now: shutdown() counts it among the unfinished
            self.queue.append(task)
        self.post(self._dispatch)

    def about(self):
        return {"queued": len(self.queue), "running": len(self.tasks)}

    # What the board says to us.

    def _on_idle(self, msg):
        known = self.slots.get(msg["id"])
        if known is not None and known.dh != msg["dh"]:
            return  # a worker's share is its for life: this is someone posing as it
        if known is None:
            known = self.slots[msg["id"]] = _SlotView(msg["py"], msg["dh"], 0)
        known.free = min(msg["free"], DEPTH)
        if msg["free"] == DEPTH:  # the slot holds nothing
            self._resend_unheld(lambda slot: slot == msg["id"])
        self._dispatch()

    def _on_assign(self, msg):
        view = self.slots.get(msg.to)
        if msg["id"] != self.id and view is not None and msg["n"] == 0:
            view.free -= 1  # another client's task

    def _on_result(self, msg):
        view = self.slots.get(msg["id"])
        if view is not None:
            view.free = min(msg["free"], DEPTH)
        task = self.tasks.get(msg["task"]) if msg.to == self.id else None
        if task is None or task.slot != msg["id"] or not _tagged(msg, task.keys[2]):
            self._dispatch()
            return
        self.known_to.add(_process_of(msg["id"]))  # its tag proves it has our share
        if task.state != "assigned":
            if task.state == "receiving" and msg["of"] and msg["n"] == 0:
                self._say_took(task)  # ours was lost
            return
        if view is not None:
            view.quick = time.monotonic() - task.assigned_at < QUICK
        if msg["of"]:
            sealed = self.assembly.add(msg)
            if sealed is None:
                return
            task.move("receiving")
            self._say_took(task)
            self.outcomes.put((self._load_result, task, sealed))
        else:
            task.move("receiving")
            threading.Thread(target=self._receive_result, args=(task, msg["size"]),
                             daemon=True).start()
        self._dispatch()

    def _say_took(self, task):
        self.say("took", to=task.slot, id=self.id, task=task.id,
                 tag=_tag(task.keys[2], "took", self.id, task.id))

    def _say_withdraw(self, task):
        self.say("withdraw", to=task.slot, id=self.id, task=task.id,
                 tag=_tag(task.keys[2], "withdraw", self.id, task.id))

    def _on_decline(self, msg):
        task = self.tasks.get(msg["task"])
        if task is not None and task.slot == msg["id"] and msg["why"] == _UNKNOWN_SHARE:
            # It cannot tag this, nor can it have run the task: say all of it again.
            self.known_to.discard(_process_of(task.slot))
            self._retry(task, msg["why"], failed=False)
            return
        if task is None or task.slot != msg["id"] or not _tagged(msg, task.keys[2]):
            return  # not an answer from the slot this task was assigned to
        if msg["why"] == "busy" and msg["id"] in self.slots:
            self.slots[msg["id"]].free = 0
        failed = msg["why"].startswith((_LOST_TASK, "stopped:"))
        self._retry(task, msg["why"], failed)

    def _on_again(self, msg):
        task = self.tasks.get(msg["task"])
        if (task is not None and task.slot == msg["id"] and task.state == "assigned"
                and task.sealed is not None and _tagged(msg, task.keys[2])):
            self._say_assign(task, _missing(msg))

    def _on_alive(self, msg):
        self._resend_unheld(lambda slot: _process_of(slot) == msg["id"], set(msg["held"]))

    def _resend_unheld(self, on, held=()):
        """Say again our assignments to slots (on(slot id)) that do not hold
        them (held: the task ids they do): they never got there."""
        for task in list(self.tasks.values()):
            if (task.state == "assigned" and on(task.slot) and task.id not in held
                    and time.monotonic() - task.said_at > 1.0):
                self._resend(task)

    def _on_bye(self, msg):
        self._forget_worker(msg["id"])
        self.heard[msg["id"]] = float("-inf")  # its tasks are lost now
        self.tick()

    def _forget_worker(self, process):
        """Use no slot of this worker process until it speaks again."""
        for slot in [s for s in self.slots if _process_of(s) == process]:
            del self.slots[slot]

    def tick(self):
        now, online_since = time.monotonic(), self.online_since
        if online_since is None:
            return
        for task in list(self.tasks.values()):
            last = self.heard.get(_process_of(task.slot), 0.0)
            silent = now - max(task.assigned_at, online_since, last)
            if last == float("-inf"):
                self._retry(task, "left the board", error=WorkerLost)
            elif silent > LOST_AFTER:
                self._forget_worker(_process_of(task.slot))
                self._retry(task, "lost (silent for %.0fs)" % silent, error=WorkerLost)
            elif task.state == "assigned" and now - max(task.said_at, last) > self.RESEND_AFTER:
                self._resend(task)  # no word from its worker: the line may be lost
        for first, missing in self.assembly.stalled():
            task = self.tasks.get(first["task"])
            if task is not None and task.slot == first["id"] and task.state == "assigned":
                self.say("again", to=task.slot, id=self.id, task=task.id, missing=missing,
                         tag=_tag(task.keys[2], "again", self.id, task.id))
        if self.tasks and now - self.alive_said >= ALIVE_EVERY:
            self.say("alive", id=self.id, held=[])
            self.alive_said = now
        self._dispatch()

    # The life of a task.

    def _dispatch(self):
        """Give queued tasks to slots with room, as long as there are some."""
        for task in [t for t in self.queue if t.future.cancelled()]:
            task.future.set_running_or_notify_cancel()  # wakes its waiters
            self._end(task, "cancelled")
        if self.exposed or not self.queue:
            return
        # What a slot last said of its room misses our tasks still on their
        # way to it: we never hold more than DEPTH there ourselves.
        mine = collections.Counter(t.slot for t in self.tasks.values()
                                   if t.state == "assigned")

        def space(slot, view):
            return min(view.free, (DEPTH if view.quick else 1) - mine[slot])

        for task in list(self.queue):
            room = {s: (v.py, space(s, v)) for s, v in self.slots.items() if space(s, v) > 0}
            if not room:
                return
            slot = _pick(task.py, task.failed_on, room)
            if slot is None:
                continue  # no slot runs its Python; later tasks may go
            try:
                root = self.share.root(self.slots[slot].dh, self.salt)
            except P2PError as exc:
                log.warning("worker slot %s: %s; not using it", slot, exc)
                del self.slots[slot]
                continue
            if not task.started:
                if not task.future.set_running_or_notify_cancel():
                    continue  # cancelled: the next round takes it off the queue
                task.started = True
            self.queue.remove(task)
            self._assign(task, slot, root)
            mine[slot] += 1

    def _assign(self, task, slot, root):
        task.move("assigned")
        task.id, task.slot = secrets.token_hex(8), slot
        task.keys = tuple(_payload_key(root, task.id, what)
                          for what in (b"task", b"result", b"lines"))
        task.assigned_at = task.said_at = time.monotonic()
        task.resent = 0
        self.tasks[task.id] = task
        self.slots[slot].free -= 1
        if task.size + SEAL_OVERHEAD <= BOARD_MAX:
            with open(task.path, "rb") as f:
                task.sealed = _seal(task.keys[0], f.read())
        else:
            task.sealed = None
            threading.Thread(target=self._send_task, args=(task, task.id),
                             daemon=True).start()
        self._say_assign(task)

    def _say_assign(self, task, only=None):
        """Say the task's assignment on the board (only these pieces, if given)."""
        known = _process_of(task.slot) in self.known_to
        fields = dict(to=task.slot, id=self.id, task=task.id, py=task.py,
                      dh=self.share.fingerprint if known else self.share.public)
        self.say_payload("assign", task.size + SEAL_OVERHEAD if task.sealed is None
                         else task.sealed, only, **fields)

    def _resend(self, task):
        if task.resent >= self.RESENDS:
            self._retry(task, "%s: the worker never said it had it" % _LOST_TASK)
            return
        task.resent += 1
        task.said_at = time.monotonic()
        self._say_assign(task)

    def _retry(self, task, why, failed=True, error=TransferError):
        """Queue the task again (new slot, new keys), unless retries are used up.

        failed: it counts as a failure (not a mere "busy"); error: the type
        raised when the retries are used up.
        """
        if self.tasks.get(task.id) is not task:
            return  # it moved on already
        if failed:
            task.failures.append("%s: %s" % (task.slot, why))
            task.failed_on.add(_machine_of(task.slot))
            log.warning("task %s on worker %s: %s; trying again", task.id, task.slot, why)
        if len(task.failures) > self.retries:
            self._end(task, "failed", error=error("task %s failed %d time(s): %s" % (
                task.id, len(task.failures), "; ".join(task.failures))))
            return
        _kill(task.transfers)  # a send to the slot we gave up on
        self._say_withdraw(task)  # should it still have it, it stops
        del self.tasks[task.id]
        task.move("queued")
        self.queue.appendleft(task)
        self._dispatch()

    def _end(self, task, state, value=None, error=None):
        """The task is over: free what it holds, and have its future settled."""
        task.move(state)
        _kill(task.transfers)
        self.tasks.pop(task.id, None)
        if task in self.queue:
            self.queue.remove(task)
        with contextlib.suppress(OSError):
            os.remove(task.path)
        self.outcomes.put((self._set, task.future, value, error))

    def _send_task(self, task, try_id):
        """Seal the task into a file and send it by wormhole (in its own thread)."""
        folder = tempfile.mkdtemp(dir=self.scratch)
        try:
            sealed = os.path.join(folder, "task")
            _seal_file(task.keys[0], task.path, sealed)
            if task.id == try_id and task.state == "assigned":
                _send_file(self.config, _wormhole_code(task.keys[0]), sealed,
                           task.transfers)
        except TransferError as exc:
            log.debug("sending task %s: %s (the worker's answer decides)", try_id, exc)
        except (OSError, P2PError) as exc:
            self.post(self._retry, task, "cannot send the task: %s" % exc)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _receive_result(self, task, size):
        folder = tempfile.mkdtemp(dir=self.scratch)
        try:
            sealed = _receive_file(self.config, _wormhole_code(task.keys[1]), "result",
                                   size, folder, task.transfers)
        except TransferError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            self.post(self._retry, task, "the result did not arrive: %s" % exc)
            return
        self.outcomes.put((self._load_result, task, sealed))

    # On the results thread.

    def _settle(self):
        while True:
            item = self.outcomes.get()
            if item is None:
                return
            try:
                item[0](*item[1:])
            except Exception:
                log.exception("settling a result failed")

    def _load_result(self, task, sealed):
        """Open and load a result (bytes, or a sealed file), then end its task."""
        folder = None if isinstance(sealed, bytes) else os.path.dirname(sealed)
        try:
            try:
                if folder is None:
                    source = io.BytesIO(_open(task.keys[1], sealed))
                else:
                    plain = sealed + ".pkl"
                    _open_file(task.keys[1], sealed, plain)
                    os.remove(sealed)
                    source = open(plain, "rb")  # from the file: a large result is read once
            except TransferError as exc:  # a forgery, or damage: never unpickled
                self.post(self._retry, task, "its result was refused: %s" % exc)
                return
            try:
                with source:
                    outcome = _checked_outcome(_load(source, self.config.trust))
            except Exception as exc:  # a broken payload fails its task, not the client
                why = "the result of task %s from %s was refused: %s" % (task.id, task.slot,
                                                                       exc)
                log.warning("%s", why)
                self.post(self._end_if, task, "receiving", "failed", None, TransferError(why))
                return
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        task.future._replay = outcome
        error = outcome.get("error")
        if error is not None and outcome.get("traceback"):
            error.__cause__ = _RemoteTraceback(
                "\n\"\"\"\n%s\"\"\" (on worker %s)" % (outcome["traceback"], task.slot))
        self.post(self._end_if, task, "receiving", "failed" if "error" in outcome
                  else "done", outcome.get("value"), error)

    def _end_if(self, task, was, state, value, error):
        if task.state == was and self.tasks.get(task.id) is task:
            self._end(task, state, value, error)

    @staticmethod
    def _set(future, value, error):
        if future.done():
            return  # cancelled meanwhile
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)

    # From the user's threads.

    def withdraw(self):
        """Cancel every queued task and withdraw the running ones from their workers."""
        def withdraw_all():
            for task in list(self.queue):
                if task.future.cancel():
                    self._end(task, "cancelled")
            for task in list(self.tasks.values()) + list(self.queue):
                if task.slot is not None and task.state != "queued":
                    self._say_withdraw(task)
                self._end(task, "cancelled", error=concurrent.futures.CancelledError(
                    "task %s was withdrawn" % task.id))
        self.call(withdraw_all)

    def workers_in_use(self):
        with self.lock:
            return len({task.slot for task in self.tasks.values()})

    def unfinished(self):
        with self.lock:
            return [t.future for t in list(self.queue) + list(self.tasks.values())
                    if not t.future.cancelled()]

    def close(self):
        """Leave the board; a future still unfinished fails rather than hangs."""
        def fail_all():
            for task in list(self.queue) + list(self.tasks.values()):
                self._end(task, "failed", error=P2PError(
                    "the executor was shut down before task %s finished" % task.id))
        try:
            self.call(fail_all)
        finally:
            self.leave()
            self.outcomes.put(None)
            if self._settler.is_alive() and threading.current_thread() is not self._settler:
                self._settler.join(30.0)
            shutil.rmtree(self.scratch, ignore_errors=True)


def _call_chunk(fn, chunk):
    return [fn(*args) for args in chunk]


class _Progress:
    """Calls done out of those counted, their rate, the time left and the
    workers in use, on stderr: on a terminal one line redrawn in place,
    elsewhere a plain line every 10 s; a last one when all are done."""

    def __init__(self, client, stream=None):
        self._client = client
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._lock = threading.Lock()
        self._done = self._total = 0
        self._sealed = False  # nothing more will be counted
        self._started = time.monotonic()
        self._ended = threading.Event()
        self._thread = threading.Thread(target=self._show, daemon=True,
                                        name="p2p-progress")
        self._thread.start()

    def count(self, future, calls=1):
        with self._lock:
            self._total += calls
        future.add_done_callback(lambda _: self._finished(calls))

    def _finished(self, calls):
        with self._lock:
            self._done += calls
            if self._sealed and self._done >= self._total:
                self._ended.set()

    def seal(self):
        """Everything is counted: end once it is all done."""
        with self._lock:
            self._sealed = True
            if self._done >= self._total:
                self._ended.set()

    def close(self):
        self._ended.set()
        self._thread.join()

    def _show(self):
        while not self._ended.wait(0.25 if self._tty else 10.0):
            self._write(last=False)
        self._write(last=True)

    def _write(self, last):
        with self._lock:
            done, total = self._done, self._total
        elapsed = time.monotonic() - self._started
        rate = done / max(elapsed, 1e-9)
        if last:
            text = "%d/%d calls done in %.1fs, %.1f/s" % (done, total, elapsed, rate)
        else:
            text = "%d/%d calls, %.1f/s, %s left, %d worker(s) in use" % (
                done, total, rate, "%.0fs" % ((total - done) / rate) if rate else "?",
                self._client.workers_in_use())
        if self._tty:
            filled = 24 * done // total if total else 0
            text = "\r\x1b[Kp2p [%s%s] %s%s" % ("#" * filled, "-" * (24 - filled), text,
                                              "\n" if last else "")
        else:
            text = "p2p: %s\n" % text
        try:
            self._stream.write(text)
            self._stream.flush()
        except (OSError, ValueError):
            pass  # stderr went away; the work goes on


class Executor(concurrent.futures.Executor):
    """Runs calls on the workers of a p2p cluster (a concurrent.futures.Executor).

    cluster: "owner/name"; default P2P_CLUSTER, else your personal cluster.
    config: a Config (the board's host, ssh arguments, the cluster's secret,
    whether to trust results, ...); default: from the environment.
    retries: how often a task is assigned anew when its worker is lost or its
    transfer fails (default P2P_RETRIES, else 2).
    progress: show a progress bar of every call on stderr until shutdown
    (map can show one for its own calls).
    Joining raises ClusterError within 15 s when the cluster is not hosted or
    you are not on its access list.
    """

    def __init__(self, cluster=None, config=None, retries=None, progress=False):
        self._config = config or Config()
        retries = _number("P2P_RETRIES", retries, RETRIES, int)
        name = cluster or os.environ.get("P2P_CLUSTER")
        board = None
        if name is None:
            # Your personal board is "personal/board" to pico.sh: its ssh
            # session opens while we ask pico.sh who you are.
            board = _Board(self._config, "personal/board", queue.Queue())
            board.connect()
        try:
            user = whoami(self._config)
            self.cluster = Cluster(name or _default_cluster(user))
            _ensure_wormhole(self._config)
        except BaseException:
            if board is not None:
                board.close()
            raise
        self._client = _Client(self._config, self.cluster, user, retries, board)
        self._lock = threading.Lock()
        self._shutdown = False
        self._counting = threading.local()  # a map's own progress bar
        try:
            self._client.start()
        except BaseException:
            self._client.close()
            raise
        self._progress = _Progress(self._client) if progress else None

    def submit(self, fn, /, *args, **kwargs):
        # Pickled straight to a file: a large argument is not copied in memory.
        fd, path = tempfile.mkstemp(suffix=".pkl", dir=self._client.scratch)
        try:
            with os.fdopen(fd, "wb") as f:
                by_value = _dump((fn, args, kwargs), f)
        except Exception:
            os.remove(path)
            raise P2PError(_describe_unpicklable(fn, args, kwargs)) from None
        future = _TaskFuture()
        with self._lock:
            if self._shutdown:
                os.remove(path)
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._client.put(_Task(path, by_value, future))
        progress = getattr(self._counting, "progress", None) or self._progress
        if progress is not None:
            progress.count(future, len(args[1]) if fn is _call_chunk else 1)
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=None, progress=False):
        """As concurrent.futures' map; calls go to workers chunksize at a time.

        By default, when the iterables have a length, it makes about four
        chunks per worker slot it knows of (as multiprocessing's Pool does).
        progress: show a progress bar of these calls on stderr.
        """
        if chunksize is None:
            chunksize = self._chunksize(iterables)
        own = _Progress(self._client) if progress and self._progress is None else None
        self._counting.progress = own
        try:
            if chunksize <= 1:
                return super().map(fn, *iterables, timeout=timeout)
            batches = _batched(zip(*iterables), chunksize)
            results = super().map(_call_chunk, itertools.repeat(fn), batches,
                                  timeout=timeout)
            return (value for batch in results for value in batch)
        finally:
            self._counting.progress = None
            if own is not None:
                own.seal()

    def _chunksize(self, iterables):
        try:
            count = min(len(iterable) for iterable in iterables) if iterables else 0
        except TypeError:
            return 1  # an iterator: its length is not known
        with self._client.lock:
            slots = max(1, len(self._client.slots))
        return -(-count // (4 * slots))  # rounded up

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:
            self._client.withdraw()
        unfinished = self._client.unfinished()

        def finish():
            concurrent.futures.wait(unfinished)
            if self._progress is not None:
                self._progress.close()
            self._client.close()

        if wait:
            finish()
        else:  # the tasks go on; the board is left when they are done
            threading.Thread(target=finish, daemon=True, name="p2p-shutdown").start()


    def __exit__(self, kind, value, trace):
        # Interrupted (Ctrl-C): stop the tasks on the workers, do not wait.
        interrupted = kind is not None and issubclass(kind, KeyboardInterrupt)
        self.shutdown(wait=True, cancel_futures=interrupted)
        return False


def _batched(iterable, size):
    batch = []
    for item in iterable:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


_default = None
_default_lock = threading.Lock()
_interrupted = False


def _default_executor():
    global _default
    with _default_lock:
        if _default is None:
            _default = Executor()
            atexit.register(_shutdown_default)
        return _default


def _shutdown_default():
    # At exit after an uncaught Ctrl-C, withdraw the script's tasks rather
    # than wait for them (sys.last_type is the exception that ended it).
    interrupted = _interrupted or getattr(sys, "last_type", None) is KeyboardInterrupt
    _default.shutdown(wait=True, cancel_futures=interrupted)


def submit(fn, /, *args, **kwargs):
    """Run fn(*args, **kwargs) on a worker; a concurrent.futures.Future.

    It uses a default Executor on P2P_CLUSTER, else your personal cluster.
    """
    return _default_executor().submit(fn, *args, **kwargs)


def map(fn, *iterables, timeout=None, chunksize=None, progress=False):  # noqa: A001
    """Like builtins.map, each call run on a worker (see submit); progress=True
    shows a progress bar on stderr."""
    return _default_executor().map(fn, *iterables, timeout=timeout,
                                   chunksize=chunksize, progress=progress)


# -- host ---------------------------------------------------------------------

class _Host(_Peer):
    """Keeps a shared cluster open: its access list, its welcomes, its watch.

    It holds two sessions on the board. pico.sh deletes the owner's access
    list when a member's first session ends (bug B), and only a new session
    stores it again; the session that stored a list deletes it when it ends.
    So the keeper session is replaced when its list is gone, while the
    spare, which joined when a list was stored (and so deletes nothing),
    keeps the channel from emptying: pico.sh throws off the last pipe left on
    a channel, which would otherwise be some member's worker.
    """

    role = "host"

    def __init__(self, config, cluster, user, members):
        if user != cluster.owner:
            raise P2PError(
                "%s may only host clusters named %s/{name}: %s belongs to pico.sh "
                "user %s" % (user, user, cluster, cluster.owner))
        if cluster.personal:
            raise P2PError("%s is a personal cluster: it needs no host" % cluster)
        members = sorted(set(members) - {user})
        super().__init__(config, cluster, user, _peer_id(user), access=members or [user])
        self.members = members
        self.spare = _Board(config, cluster.channel, None)  # heard by no one: drained
        self.intruders = []
        self.present = []  # the pico users connected, one entry per session (ls)
        self.started = int(time.time())
        self.until = None  # when watch() will close it, for roll calls
        self.stopped = threading.Event()
        self._rival = threading.Event()
        self._backoff = _Backoff()

    def open(self):
        # A list already stored may be a dead host's: only a live one refuses us.
        self.start_loop()
        self.board.connect()
        self.say("hello", id=self.id, role="host", user=self.user, py=PY)
        if self._rival.wait(ANSWER_TIMEOUT):
            self.close()
            raise P2PError("%s is already hosted by another process of %s: stop it "
                           "first" % (self.cluster, self.user))
        self._check()  # the list is stored: the spare session joins
        log.info("hosting %s for %s", self.cluster, ", ".join(self.members) or "nobody")

    def on_unsigned(self, msg):
        if msg.kind == "hello":  # unsigned, as the peer may lack our key
            self.say("denied", to=msg["id"], signed=False, id=self.id, why=(
                "%s has a secret; ask %s for its file and set P2P_SECRET_FILE "
                "(yours, if you have one, is not it)" % (self.cluster, self.user)
                if self.key else "%s has no secret: unset P2P_SECRET and "
                "P2P_SECRET_FILE to join it" % self.cluster))

    def _on_hello(self, msg):
        if msg["id"] == self.id:
            return
        if msg["role"] == "host":
            self.say("welcome", to=msg["id"], id=self.id, intruders=[])
        elif msg["user"] in self.members or msg["user"] == self.user:
            self.say("welcome", to=msg["id"], id=self.id, intruders=self.intruders)
            (log.debug if msg["role"] == "observer" else log.info)(
                "%s joined as a %s (%s)", msg["user"], msg["role"], msg["id"])
        else:
            self.say("denied", to=msg["id"], id=self.id, why=(
                "%s is not a member of %s; ask %s to add you: python -m p2p "
                "host %s --users ...,%s" % (msg["user"], self.cluster, self.user,
                                            self.cluster, msg["user"])))

    def _on_welcome(self, msg):
        if msg.to == self.id:
            self._rival.set()

    def _on_who(self, msg):
        threading.Thread(target=self._answer_roll_call, args=(msg["id"],), daemon=True,
                         name="p2p-roll-call").start()

    def _answer_roll_call(self, asker):
        # How many sessions are on the board now, but our own: those a roll
        # call should hear from, also peers still joining or rejoining.
        try:
            _, users = _ls(self.config).get(self.cluster.channel, (None, []))
        except P2PError:
            users = self.present
        others = max(0, len(users) - 1 - self.spare.running())
        self.say("here", to=asker, id=self.id, role="host", user=self.user, py=PY,
                 since=self.started, about={"members": self.members, "until": self.until,
                                            "sessions": others})

    def _on_bye(self, msg):
        log.info("%s said goodbye", msg["id"])

    def on_drop(self):
        if not self.stopped.is_set():
            log.info("the board dropped the host's session; reconnecting")
            threading.Thread(target=self._reconnect, daemon=True).start()

    def _reconnect(self):
        self._backoff.wait()
        if not self.stopped.is_set():
            self.board.connect()
            self._backoff.connected()

    def watch(self, duration):
        """Keep the list stored and watch for strangers until duration passes."""
        deadline = time.monotonic() + duration
        self.until = int(time.time() + duration)
        while not self.stopped.wait(min(HOST_CHECK, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                break
            try:
                self._check()
            except P2PError as exc:
                log.warning("cannot check the board: %s", exc)
        self.close()

    def _check(self):
        channels = _ls(self.config)
        listed, users = channels.get(self.cluster.channel, (None, []))
        if self.cluster.channel in channels and not listed:
            # pico.sh deletes the list when a member's first session ends
            # (and an owner's process may hold an empty one): store it again.
            log.info("the access list of %s is gone; storing it again", self.cluster)
            self.board.connect()
        elif listed and not self.spare.running():
            self.spare.connect()  # the list is stored: this session deletes nothing
        for gone in sorted(set(self.present) - set(users)):
            log.info("%s left", gone)
        self.present = users
        intruders = sorted(set(users) - set(self.members) - {self.user})
        if intruders != self.intruders:
            if intruders:
                log.warning("not members, on the board of %s: %s (pico.sh lets a "
                            "stranger's first connection in)", self.cluster,
                            ", ".join(intruders))
            else:
                log.info("no more non-members on the board of %s", self.cluster)
            self.intruders = intruders
            self.say("intruders", id=self.id, users=intruders)
        elif intruders:
            self.say("intruders", id=self.id, users=intruders)  # for newcomers

    def close(self):
        self.stopped.set()
        self.spare.close()
        self.board.close()
        self.stop_loop()


# -- status and doctor --------------------------------------------------------

DOCTOR_WAIT = 10.0  # seconds each of doctor's network checks may take
_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
            "ALL_PROXY")
# What each role tells a roll call, and the types we accept from strangers.
_ABOUT = {
    "host": {"members": list, "until": (int, type(None)), "sessions": int},
    "worker": {"slots": int, "busy": int, "done": int},
    "client": {"queued": int, "running": int},
}


class _RollCall(_Member):
    """Asks everyone on a cluster's board who they are, and notes the answers."""

    role = "observer"

    def __init__(self, config, cluster, user):
        super().__init__(config, cluster, user, _peer_id(user))
        self.answers = {}

    def _on_here(self, msg):
        if msg.to == self.id:
            self.answers[msg["id"]] = msg


def _census(config, cluster, user, wait=ANSWER_TIMEOUT):
    """Who is on a cluster now: its host, workers and clients, as they answered."""
    roll = _RollCall(config, cluster, user)
    try:
        roll.join()
        roll.say("who", id=roll.id)
        time.sleep(wait)  # the time we give everyone to answer
    finally:
        roll.leave()
    found = {"cluster": cluster.name, "personal": cluster.personal, "host": None,
             "workers": [], "clients": []}
    for msg in sorted(roll.answers.values(), key=lambda msg: msg["id"]):
        shape, about = _ABOUT.get(msg["role"]), msg["about"]
        if shape is None or not all(isinstance(about.get(name), kind)
                                    for name, kind in shape.items()) or not all(
                isinstance(member, str) for member in about.get("members", [])):
            continue  # a peer of another version, or one telling tales
        entry = {"id": msg["id"], "user": msg["user"], "python": msg["py"],
                 "since": msg["since"]}
        entry.update((name, about[name]) for name in shape)
        if msg["role"] == "host":
            found["host"] = entry
        else:
            found[msg["role"] + "s"].append(entry)
    return found


def _workers_line(workers):
    return "%d worker process(es) with %d slot(s), %d busy" % (
        len(workers), sum(w["slots"] for w in workers), sum(w["busy"] for w in workers))


def _show_census(found, out):
    def when(stamp):
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(stamp))

    host, workers, clients = found["host"], found["workers"], found["clients"]
    if found["personal"]:
        print("%s: a personal cluster (no host)" % found["cluster"], file=out)
    elif host:
        print("%s: hosted by %s since %s%s; members: %s" % (
            found["cluster"], host["id"], when(host["since"]),
            ", until %s" % when(host["until"]) if host["until"] else "",
            ", ".join(host["members"]) or "none"), file=out)
    else:  # it let us in, so it was there a moment ago
        print("%s: its host did not answer" % found["cluster"], file=out)
    print(_workers_line(workers), file=out)
    for w in workers:
        print("  %s  %d slot(s), %d busy, %d task(s) done, Python %s, since %s" % (
            w["id"], w["slots"], w["busy"], w["done"], w["python"], when(w["since"])),
            file=out)
    print("%d client(s)" % len(clients), file=out)
    for c in clients:
        print("  %s  %d queued, %d running, since %s" % (
            c["id"], c["queued"], c["running"], when(c["since"])), file=out)
    # The host counts every session on the board (ours too): those that
    # did not answer are peers joining or rejoining, or of another version.
    silent = host["sessions"] - len(workers) - len(clients) - 1 if host else 0
    if silent > 0:
        print("%d more session(s) on the board did not answer: peers joining or "
              "reconnecting, or of another p2p.py version" % silent, file=out)


def _echo(config, user):
    """Seconds a line written to your own test pipe takes to come back (-r)."""
    token = secrets.token_hex(8).encode()
    process = _ssh(config, config.host, ["pipe", "p2p-doctor", "-r"],
                   stdin=subprocess.PIPE)
    lines = queue.Queue()

    def read():
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    started = time.monotonic()
    try:
        while time.monotonic() - started < DOCTOR_WAIT:
            try:  # again each second: a line written while joining may be lost
                process.stdin.write(b"p2p doctor " + token + b"\n")
                process.stdin.flush()
            except OSError:
                pass
            try:
                line = lines.get(timeout=1.0)
            except queue.Empty:
                continue
            if line is None:
                raise P2PError("the board ended the session at once; ssh said: %s" % (
                    process.stderr.read().decode(errors="replace").strip() or "nothing"))
            if token in line:
                return time.monotonic() - started
        raise P2PError("a line written to %s/p2p-doctor did not come back within %gs: "
                       "check P2P_HOST and your network" % (user, DOCTOR_WAIT))
    finally:
        process.kill()
        process.wait()


def _reach(host, port):
    """Connect to host:port, or raise P2PError saying what may block it."""
    try:
        socket.create_connection((host, port), DOCTOR_WAIT).close()
    except OSError as exc:
        raise P2PError("cannot connect to %s:%d (%s): a firewall that lets ssh out may "
                       "block it; ask its admin to allow it, or use another network"
                       % (host, port, exc)) from None
    return "%s:%d accepts connections" % (host, port)


def _self_transfer(config):
    """Seconds a small file takes through a wormhole to yourself."""
    probe = copy.copy(config)
    probe.timeout = DOCTOR_WAIT
    folder = tempfile.mkdtemp(prefix="p2p-doctor-")
    try:
        for part in ("out", "in"):
            os.mkdir(os.path.join(folder, part))
        path = os.path.join(folder, "out", "hello.txt")
        with open(path, "w") as f:
            f.write("hello from p2p doctor\n")
        code = _code(secrets.token_bytes(16))
        started = time.monotonic()
        sending = []

        def send():
            try:
                _send_file(probe, code, path, sending)
            except P2PError:
                pass  # the receiver's word counts

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            _receive_file(probe, code, "hello.txt", os.path.getsize(path),
                          os.path.join(folder, "in"))
        except TransferError as exc:
            proxies = [name for name in _PROXIES if os.environ.get(name)]
            if not proxies or "did not finish" not in str(exc):
                raise
            raise P2PError(
                "%s while %s is set: wormhole's link to its mailbox often stalls behind "
                "an HTTP proxy. Retry without it: env %s python -m p2p doctor (and "
                "start workers and scripts the same way)" % (
                    exc, " and ".join(proxies), " ".join("-u " + p for p in proxies))
            ) from None
        finally:
            _kill(sending)  # no sender left waiting for a receiver that gave up
            sender.join()
        return time.monotonic() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _doctor(config, cluster=None, out=None):
    """Check everything p2p.py needs, one line each; True when all is well."""
    out = out or sys.stdout
    failed = set()

    def check(name, run, needs=None):
        if needs in failed:
            verdict, detail = "skip", "needs " + needs
        else:
            try:
                verdict, detail = "ok", run()
            except P2PError as exc:
                verdict, detail = "FAIL", str(exc)
        detail = " ".join(detail.split("\n"))  # one line per check, always
        print("%-5s %s: %s" % (verdict, name, detail), file=out, flush=True)
        if verdict != "ok":
            failed.add(name)

    def board():
        return "a line to %s/p2p-doctor came back in %.1fs" % (
            whoami(config), _echo(config, whoami(config)))

    def tool():
        found = _wormhole_tool(config)
        return "%s %s (%s)" % (found.kind, found.version, found.path)

    def mailbox():
        url = urllib.parse.urlsplit(os.environ.get("WORMHOLE_RELAY_URL") or
                                    "ws://relay.magic-wormhole.io:4000/v1")
        try:
            port = url.port or (443 if url.scheme == "wss" else 80)
        except ValueError:
            port = None
        if not url.hostname or port is None:
            raise P2PError("WORMHOLE_RELAY_URL is not a mailbox URL like "
                           "ws://HOST:PORT/v1: %r" % url.geturl())
        return _reach(url.hostname, port)

    def visit():
        workers = _census(config, cluster, whoami(config))["workers"]
        return "reachable as %s; %s%s" % (
            whoami(config), _workers_line(workers),
            "" if workers else " (start one: python -m p2p worker %s)" % cluster)

    check("ssh", _require_ssh)
    check("pico.sh account", lambda: "you are %s on %s" % (
        whoami(config), config.account_host), needs="ssh")
    check("board", board, needs="pico.sh account")
    check("wormhole tool", tool)
    check("mailbox", mailbox)
    check("transit relay", lambda: _reach("transit.magic-wormhole.io", 4001))
    check("transfer", lambda: "a file went through a wormhole to you in %.1fs"
          % _self_transfer(config), needs="wormhole tool")
    if cluster is not None:
        check("cluster %s" % cluster, visit, needs="board")
    return not failed


# -- command line -------------------------------------------------------------

def _duration(text):
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "%r is not a duration: use seconds or a number with s, m, h or d "
            "(e.g. 90m, 14d)" % text) from None


def _parser():
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--host", help="the board's ssh host (P2P_HOST; default "
                        "pipe.pico.sh)")
    common.add_argument("--ssh-args", help="extra ssh arguments, e.g. '-J somehost' "
                        "(P2P_SSH_ARGS)")
    common.add_argument("--wormhole", help="the wormhole tool: wormhole-william or "
                        "magic-wormhole's wormhole (P2P_WORMHOLE)")
    common.add_argument("--secret-file", help="the file holding the cluster's secret "
                        "(P2P_SECRET_FILE); a host writes a new one if it is missing")
    common.add_argument("-v", "--verbose", action="store_true",
                        help="log every ssh and wormhole command and board message "
                        "(P2P_DEBUG=1)")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="log errors only, not each task and peer")
    parser = argparse.ArgumentParser(
        prog="python -m p2p", parents=[common],
        description="A peer-to-peer compute cluster for Python over outbound SSH.")
    parser.add_argument("--version", action="version", version="p2p " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    host = commands.add_parser(
        "host", parents=[common], help="open a shared cluster for your friends",
        description="Open the shared cluster OWNER/NAME (OWNER must be you) and "
        "keep it open until --duration passes or Ctrl-C.")
    host.add_argument("cluster", help="the cluster, you/name")
    host.add_argument("--users", required=True, help="the members: pico.sh user "
                      "names, comma separated (bob,carol,diana)")
    host.add_argument("--duration", type=_duration, default=14 * 86400,
                      help="how long to keep it open (default 14d)")
    worker = commands.add_parser(
        "worker", parents=[common], help="contribute workers to a cluster",
        description="Run tasks from the members of a cluster.")
    worker.add_argument("cluster", nargs="?", help="owner/name (default P2P_CLUSTER, "
                        "else your personal cluster)")
    worker.add_argument("--workers", type=int, default=1,
                        help="parallel workers in this process (default 1)")
    worker.add_argument("--duration", type=_duration, default=3600,
                        help="how long to work (default 1h)")
    commands.add_parser("user", parents=[common], help="print your pico.sh user name")
    status = commands.add_parser(
        "status", parents=[common], help="who is on a cluster now",
        description="Ask everyone on the cluster's board who they are: its host, "
        "each worker and each client (takes a few seconds).")
    status.add_argument("cluster", nargs="?", help="owner/name (default P2P_CLUSTER, "
                        "else your personal cluster)")
    status.add_argument("--json", action="store_true", help="print JSON, for scripts")
    doctor = commands.add_parser(
        "doctor", parents=[common], help="check that everything p2p.py needs works",
        description="Check ssh, your pico.sh account, the board, the wormhole tool, "
        "its servers and a transfer to yourself (and a cluster, if named); one line "
        "each, with the fix for what fails. Exit status 0 when all is well.")
    doctor.add_argument("cluster", nargs="?", help="also check that you can reach "
                        "this cluster, owner/name")
    install = commands.add_parser(
        "install-wormhole", parents=[common],
        help="download wormhole-william %s for p2p.py" % WORMHOLE_RELEASE,
        description="Download wormhole-william %s for this OS and CPU from its "
        "GitHub releases into %s, where p2p.py finds it." % (WORMHOLE_RELEASE,
                                                            _data_dir()))
    install.add_argument("--from", dest="downloads", metavar="URL",
                         help="where the releases are (P2P_WORMHOLE_DOWNLOADS; "
                         "default %s)" % _DOWNLOADS)
    return parser


def main(argv=None):
    """The ``python -m p2p`` command line."""
    args = _parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.ERROR if args.quiet else logging.INFO
    logging.basicConfig(level=level,
                        format="%(asctime)s p2p: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        issued = args.command == "host" and args.secret_file and _issue_secret(
            args.secret_file)
        config = Config(args.host, args.ssh_args, args.wormhole, args.verbose or None,
                        secret_file=args.secret_file)
        if args.command == "doctor":
            cluster = Cluster(args.cluster) if args.cluster else None
            return 0 if _doctor(config, cluster) else 1
        if args.command == "install-wormhole":
            tool = _install_wormhole(args.downloads)
            print("installed wormhole-william %s as %s" % (tool.version, tool.path))
            used = _wormhole_path(config)
            if used != tool.path:
                print("(p2p.py uses %s, found first; unset P2P_WORMHOLE or take it "
                      "off PATH to use this one)" % used)
            return 0
        user = whoami(config)
        if args.command == "user":
            print(user)
        elif args.command == "host":
            host = _Host(config, Cluster(args.cluster), user,
                         [u.strip() for u in args.users.split(",") if u.strip()])
            host.open()
            if issued:
                log.info("wrote a new secret for %s to %s: give that file to its members "
                         "yourself (never on the board); they set P2P_SECRET_FILE to it",
                         host.cluster, args.secret_file)
            try:
                host.watch(args.duration)
            finally:
                host.close()
        elif args.command == "status":
            found = _census(config, Cluster(args.cluster or _default_cluster(user)), user)
            if args.json:
                print(json.dumps(found, indent=2))
            else:
                _show_census(found, sys.stdout)
        elif args.command == "worker":
            if args.workers < 1:
                raise P2PError("--workers must be 1 or more")
            _ensure_wormhole(config)
            worker = _Worker(config, Cluster(args.cluster or _default_cluster(user)),
                             user, args.workers)
            worker.serve(args.duration)
    except P2PError as exc:
        print("p2p: error: %s" % exc, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        log.info("interrupted; left the board")
        return 130
    return 0


if __name__ == "__main__":
    # Run as the module p2p, so that what we pickle (TaskCrashed, rebuilders)
    # is named p2p.X, which any peer can import, and not __main__.X.
    import p2p
    sys.exit(p2p.main())
