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
board where each message is one short line. Tasks and results never go
through the board: they travel peer to peer with wormhole-william
(magic-wormhole, end-to-end encrypted), under codes that only the two peers
of a transfer can compute.

How a task travels:

    client                         board                        worker
      |  <------------------------ idle W ------------------------- |
      |  -- assign T to W, g^a ------------------------------------> |
      |  <----------------------- accept T, g^b -------------------- |
      |  == wormhole: task, code from g^ab ========================> |
      |  <----------------------- result T ------------------------- |
      |  <========================= wormhole: result, code from g^ab |

Three board lines per task, whatever the number of workers. Functions and
classes that pickle cannot send by reference (lambdas, closures, those of
``__main__``) are sent by value. Each task runs in a child process of its
worker, so a task that crashes fails alone. A client loads results with a
restricted unpickler unless told to trust the cluster (P2P_TRUST=1); with a
cluster secret (P2P_SECRET_FILE) every board line is signed and every code
depends on the secret, so strangers on the board can do nothing.
"""

import argparse
import atexit
import base64
import builtins
import collections
import concurrent.futures
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
ASSIGN_TIMEOUT = 10.0  # seconds for a worker to accept an assignment
HOST_CHECK = 3.0  # seconds between the host's looks at ls
IDLE_EVERY = 15.0  # seconds between an idle worker's announcements
ALIVE_EVERY = 5.0  # seconds between the "alive" lines of a peer with work in flight
LOST_AFTER = 20.0  # seconds of silence after which such a peer is lost
RETRIES = 2  # default: new assignments of a task after its worker or transfer failed
_LOST_TASK = "the task did not arrive"  # a worker's decline after a failed transfer
MAX_LINE = 4096  # longer board lines are noise


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
    """One ssh pipe to a cluster's board; it reconnects when the server drops it.

    Lines that do not parse (pieces of lines cut by the server, noise,
    other versions) are dropped; every other message goes to on_message,
    in the reader thread, which must not block.
    """

    def __init__(self, config, channel, on_message, on_drop, access=None, key=None):
        self.config = config
        self.channel = channel
        self.access = access
        self.key = key  # signs our lines and tells others' apart
        self.on_message = on_message
        self.on_drop = on_drop
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

    def send(self, kind, signed=True, **fields):
        """Write one message; a message written while disconnected is lost."""
        line = _encode(kind, self.key if signed else None, **fields)
        if self.config.debug:
            log.debug("send: %s", line.decode().rstrip())
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
        pending = b""
        for chunk in iter(lambda: process.stdout.read1(65536), b""):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            if len(pending) > MAX_LINE:
                pending = b""
            for line in lines:
                message = _decode(line, self.key)
                if self.config.debug:
                    log.debug("board: %s", line[:300].decode(errors="replace")
                              if message else "noise %r" % line[:80])
                if message is not None:
                    self.on_message(message)
        with self._lock:
            current = process is self._process and not self._closed
        if current:
            self.on_drop()

    def _read_errors(self, process, errors):
        for line in process.stderr:
            errors.append(line.decode(errors="replace").strip())

    def failure(self):
        """What ssh said, when the current session ended with an error."""
        with self._lock:
            process, errors = self._process, self._errors
        if process is None or process.poll() is None or not errors:
            return None  # running, or dropped by the server (no message)
        return "; ".join(errors)


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


class _Member:
    """A process's presence on a cluster's board: joins, checks, rejoins.

    pico.sh puts anyone who is not on the host's access list on a channel
    of their own, silently. So a member is joined only when the host has
    welcomed it; the owner's own processes must also never be the first
    to connect (they would store an empty list and lock members out).
    """

    role = "client"

    def __init__(self, config, cluster, user, peer_id):
        self.config = config
        self.cluster = cluster
        self.user = user
        self.id = peer_id
        self.intruders = []
        self._welcome = threading.Event()
        self._denied = None
        self._hint = None  # an unsigned "denied": anyone may have said it
        self._closing = False
        self._joining = False
        self._backoff = _Backoff()
        self.started = int(time.time())
        self.heard = {}  # peer process id -> when we last heard from it
        # None while our own link is down: peers are not silent, we are deaf.
        self.online_since = None
        key, self.salt = _keys(config.secret, cluster)
        self.board = _Board(config, cluster.channel, self._on_message, self._on_drop,
                            key=key)

    @property
    def exposed(self):
        """A non-member is on the board, and no secret keeps them from acting."""
        return bool(self.intruders) and self.board.key is None

    def join(self, timeout=JOIN_TIMEOUT):
        """Connect and make sure we are on the cluster's channel, or raise."""
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
            self.board.connect()
            self.board.send("hello", id=self.id, role=self.role, user=self.user, py=PY)
            self._joined()
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
        self.board.send("hello", id=self.id, role=self.role, user=self.user, py=PY)
        if self._welcome.wait(ANSWER_TIMEOUT) and not self._denied:
            self._joined()
            return True
        return False

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
        """Called once connected and welcomed (again after each reconnect)."""

    def _on_message(self, msg):
        if not msg.authentic:
            if msg.kind == "denied" and msg["to"] == self.id:
                self._hint = msg["why"]
            return
        self.heard[_process_of(msg["id"])] = time.monotonic()
        if msg.get("to") == self.id and msg.kind == "welcome":
            self.intruders = msg["intruders"]
            self._welcome.set()
        elif msg.get("to") == self.id and msg.kind == "denied":
            self._denied = "%s: %s" % (self.cluster, msg["why"])
            self._welcome.set()
            self._on_denied()
        elif msg.kind == "intruders" and msg["users"] != self.intruders:
            self.intruders = msg["users"]
            self._on_intruders()
        elif msg.kind == "who" and self.role != "observer":
            self.board.send("here", id=self.id, to=msg["id"], role=self.role,
                            user=self.user, py=PY, since=self.started, about=self.about())
        else:
            self.handle(msg)

    def handle(self, msg):
        """A board message for this kind of member."""

    def about(self):
        """What this member tells a roll call (python -m p2p status)."""
        return {}

    def _on_denied(self):
        """The host said we are not a member."""

    def _on_intruders(self):
        """The host's list of non-members on the board changed."""

    def _on_drop(self):
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
            self.board.send("bye", id=self.id)
            self.board.close()


# -- wire messages ------------------------------------------------------------

_PREFIX = b"p2p1 "
# Each kind's fields and their types; other fields are ignored.
_MESSAGES = {
    "hello": {"id": str, "role": str, "user": str, "py": str},
    "welcome": {"id": str, "to": str, "intruders": list},
    "denied": {"id": str, "to": str, "why": str},
    "intruders": {"id": str, "users": list},
    "idle": {"id": str, "py": str},
    "assign": {"id": str, "to": str, "task": str, "dh": str, "py": str, "size": int},
    "accept": {"id": str, "to": str, "task": str, "dh": str},
    "decline": {"id": str, "to": str, "task": str, "why": str},
    "result": {"id": str, "to": str, "task": str, "size": int},
    "withdraw": {"id": str, "to": str, "task": str},
    "alive": {"id": str},
    "bye": {"id": str},
    "who": {"id": str},  # a roll call: every peer answers "here"
    "here": {"id": str, "to": str, "role": str, "user": str, "py": str, "since": int,
             "about": dict},
}


class _Message(dict):
    """A decoded board message: msg.kind, msg["field"], msg.authentic."""

    authentic = True  # signed with the cluster's key, or neither has one

    @property
    def kind(self):
        return self["k"]


def _encode(kind, key=None, **fields):
    """A board line; with a cluster key it ends with its signature."""
    fields["k"] = kind
    line = _PREFIX + json.dumps(fields, separators=(",", ":")).encode()
    if key is not None:
        line += b" " + _signature(key, line)
    return line + b"\n"


def _signature(key, line):
    return hmac.new(key, line, "sha256").hexdigest()[:32].encode()


def _decode(line, key=None):
    """The message on a board line, or None for anything malformed."""
    line = line.strip()
    if not line.startswith(_PREFIX) or len(line) > MAX_LINE:
        return None
    signature = None
    if not line.endswith(b"}"):
        line, _, signature = line.rpartition(b" ")
    try:
        fields = json.loads(line[len(_PREFIX):])
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get("k") not in _MESSAGES:
        return None
    for name, kind in _MESSAGES[fields["k"]].items():
        if not isinstance(fields.get(name), kind) or isinstance(fields.get(name), bool):
            return None
    message = _Message(fields)
    if key is None:
        message.authentic = signature is None
    else:
        message.authentic = signature is not None and hmac.compare_digest(
            signature, _signature(key, line))
    return message


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

# RFC 3526 group 14: Diffie-Hellman over the board gives each task's two
# peers wormhole codes that no one else on the board can compute.
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
    """One side of a Diffie-Hellman exchange."""

    def __init__(self):
        self._secret = secrets.randbits(256) | (1 << 255)
        public = pow(2, self._secret, _DH_PRIME)
        self.public = base64.b64encode(public.to_bytes(256, "big")).decode()

    def codes(self, peer_public, task, salt=b""):
        """(task code, result code) shared with the peer, or P2PError.

        salt, from the cluster's secret, keeps them from anyone without it.
        """
        try:
            value = int.from_bytes(base64.b64decode(peer_public, validate=True), "big")
        except ValueError:
            value = 0
        if not 1 < value < _DH_PRIME - 1:
            raise P2PError("a peer sent an invalid key share for task %s" % task)
        shared = pow(value, self._secret, _DH_PRIME).to_bytes(256, "big")
        return tuple(_code(hmac.new(salt, shared + task.encode() + part, "sha256").digest())
                     for part in (b"task", b"result"))


def _code(digest):
    nameplate = int.from_bytes(digest[:4], "big") % 9000000 + 1000000
    return "%d-%s" % (nameplate, digest[4:16].hex())


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

    def start(self, task_path, result_path):
        """Hand a task to the runner process (started if need be)."""
        if self.process is None or self.process.poll() is not None:
            # -c, not this file: the task's __main__ must be an empty module.
            path = [os.path.dirname(os.path.abspath(__file__))]
            path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import p2p; p2p._serve_tasks()"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                env=dict(os.environ, PYTHONPATH=os.pathsep.join(path)))
        try:
            self.process.stdin.write("%s\t%s\n" % (task_path, result_path))
            self.process.stdin.flush()
        except OSError:
            pass  # finish() finds it dead

    def finish(self, result_path):
        """Wait for the task; on a crash, write a TaskCrashed outcome instead."""
        try:
            answer = self.process.stdout.readline()
        except OSError:
            answer = ""
        if answer == "done\n":
            return
        status = self.process.wait()
        reason = ("signal %s" % signal.Signals(-status).name if status < 0
                  else "exit status %d" % status)
        with open(result_path, "wb") as f:
            f.write(_failure(TaskCrashed("the process running the task died (%s); "
                                         "the worker goes on" % reason)))

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class _Slot:
    """One of a worker process's task slots: its id on the board and its runner."""

    def __init__(self, peer_id):
        self.id = peer_id
        self.busy = False
        self.client = None  # whose task runs here
        self.task = None
        self.since = 0.0
        self.abandoned = False  # the client vanished: its task was stopped
        self.transfers = []  # wormhole processes moving its task
        self.runner = _Runner()


class _Worker(_Member):
    """Takes tasks from clients on the board and runs them, one per slot."""

    role = "worker"

    def __init__(self, config, cluster, user, slots=1):
        super().__init__(config, cluster, user, _peer_id(user))
        ids = ["%s#%d" % (self.id, n + 1) for n in range(slots)]
        self.slots = {slot_id: _Slot(slot_id) for slot_id in ids}
        self.scratch = tempfile.mkdtemp(prefix="p2p-worker-")
        self.done = 0
        self.seen = collections.deque(maxlen=10000)  # task ids assigned to us
        self.stopped = threading.Event()
        self._lock = threading.Lock()

    def _joined(self):
        self._announce()

    def _announce(self, only=None):
        if self.exposed:
            return  # take no task while a non-member could act on the board
        for slot in self.slots.values():
            if not slot.busy and (only is None or slot is only):
                self.board.send("idle", id=slot.id, py=PY)

    def _on_denied(self):
        log.error("%s", self._denied)
        self.stopped.set()

    def _on_intruders(self):
        if self.exposed:
            log.warning("not a member of %s on the board: %s; taking no task "
                        "until they are gone", self.cluster, ", ".join(self.intruders))
        elif self.intruders:
            log.warning("not a member of %s on the board: %s; the cluster's secret "
                        "keeps them out", self.cluster, ", ".join(self.intruders))
        else:
            self._announce()

    def handle(self, msg):
        if msg.kind == "hello" and msg["role"] == "client":
            self._announce()
        elif msg.kind == "assign" and msg["to"] in self.slots:
            if msg["task"] in self.seen:
                return  # a replayed line
            self.seen.append(msg["task"])
            self._assigned(self.slots[msg["to"]], msg)
        elif msg.kind == "bye":
            self._abandon(lambda slot: slot.client == msg["id"], "left")
        elif msg.kind == "withdraw" and msg["to"] in self.slots:
            self._abandon(lambda slot: slot.id == msg["to"] and slot.client == msg["id"]
                          and slot.task == msg["task"], "withdrew")

    def about(self):
        return {"slots": len(self.slots), "done": self.done,
                "busy": sum(slot.busy for slot in self.slots.values())}

    def _abandon(self, whose, why):
        """Stop the tasks of clients that are gone, and free their slots."""
        with self._lock:
            slots = [s for s in self.slots.values()
                     if s.busy and not s.abandoned and whose(s)]
            for slot in slots:
                slot.abandoned = True
        for slot in slots:
            log.warning("%s %s: stopping its task", slot.client, why)
            _kill(slot.transfers)
            slot.runner.stop()
            # Should the client still be there, it tries elsewhere, not waits.
            self.board.send("decline", id=slot.id, to=slot.client, task=slot.task,
                            why="stopped: the client %s" % why)

    def _watch(self):
        """Say we are alive while busy; give up on clients that went silent."""
        now, online_since = time.monotonic(), self.online_since
        if online_since is None:
            return
        if any(slot.busy for slot in self.slots.values()):
            self.board.send("alive", id=self.id)
        self._abandon(lambda slot: now - max(slot.since, online_since, self.heard.get(
            slot.client, 0.0)) > LOST_AFTER, "fell silent")

    def _assigned(self, slot, msg):
        with self._lock:
            why = None
            if slot.busy:
                why = "busy"
            elif self.exposed:
                why = "a non-member is on the board"
            elif msg["py"] not in ("", PY):
                why = "this worker runs Python %s" % PY
            if why is None:
                slot.busy, slot.abandoned = True, False
                slot.client, slot.task = msg["id"], msg["task"]
                slot.since = time.monotonic()
        if why is not None:
            self.board.send("decline", id=slot.id, to=msg["id"], task=msg["task"], why=why)
            return
        threading.Thread(target=self._run, args=(slot, msg), daemon=True).start()

    def _run(self, slot, msg):
        client, task = msg["id"], msg["task"]
        share = _KeyShare()
        started = time.monotonic()
        folder = tempfile.mkdtemp(dir=self.scratch)
        released = []

        def release():  # once: the slot may take its next task while we send
            if not released:
                released.append(True)
                with self._lock:
                    slot.busy = False

        try:
            task_code, result_code = share.codes(msg["dh"], task, self.salt)
            self.board.send("accept", id=slot.id, to=client, task=task, dh=share.public)
            try:
                task_path = _receive_file(self.config, task_code, "task-%s.pkl" % task,
                                          msg["size"], folder, slot.transfers)
            except TransferError as exc:
                if slot.abandoned:
                    return
                # The receiver's word is final: the client tries again.
                self.board.send("decline", id=slot.id, to=client, task=task,
                                why="%s: %s" % (_LOST_TASK, exc))
                raise
            result_path = os.path.join(folder, "result-%s.pkl" % task)
            with self._lock:  # so that _abandon stops what we start, or we start nothing
                if slot.abandoned:
                    return
                slot.runner.start(task_path, result_path)
            slot.runner.finish(result_path)
            if slot.abandoned:
                return
            size = os.path.getsize(result_path)
            release()
            sent = threading.Event()

            def send():
                try:
                    _send_file(self.config, result_code, result_path)
                except TransferError as exc:  # the client's receive tells the truth
                    log.debug("sending the result of %s: %s", task, exc)
                finally:
                    sent.set()

            threading.Thread(target=send, daemon=True).start()
            # Until the client takes it, say so again now and then: a line
            # lost while its ssh link was down must not leave it waiting.
            while True:
                self.board.send("result", id=slot.id, to=client, task=task, size=size)
                if sent.wait(ALIVE_EVERY):
                    break
            self.done += 1
            log.info("task %s from %s: done in %.2fs", task, client,
                     time.monotonic() - started)
        except P2PError as exc:
            log.warning("task %s from %s failed: %s", task, client, exc)
        except Exception:
            log.exception("task %s from %s: the worker failed", task, client)
        finally:
            if not released:  # no result line said that the slot is free
                release()
                self._announce(only=slot)
            shutil.rmtree(folder, ignore_errors=True)

    def serve(self, duration):
        """Join, take tasks until duration passes or stop(); then leave."""
        deadline = time.monotonic() + duration
        try:
            self.join()
            log.info("worker %s on %s: %d slot(s), Python %s", self.id, self.cluster,
                     len(self.slots), PY)
            announced = time.monotonic()
            while not self.stopped.wait(min(ALIVE_EVERY, max(0.0, deadline - time.monotonic()))):
                now = time.monotonic()
                if now >= deadline:
                    break
                self._watch()
                if now - announced >= IDLE_EVERY:
                    self._announce()
                    announced = now
        finally:
            self.stop()
        if self._denied:
            raise ClusterError(self._denied)

    def stop(self):
        self.stopped.set()
        self.leave()
        for slot in self.slots.values():
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


class _Task:
    def __init__(self, path, by_value, future):
        self.id = secrets.token_hex(8)
        self.path = path  # the pickled call, kept on disk for the tries it may take
        self.size = os.path.getsize(path)
        self.py = PY if by_value else ""
        self.future = future
        self.worker = None
        self.share = None
        self.assigned_at = 0.0
        self.result_code = None
        self.started = False  # the future was set running
        self.transfers = []  # its wormhole processes, to stop when it moves on
        self.failures = []  # why earlier tries to move it failed
        self.failed_on = set()  # the machines of those tries


class _Client(_Member):
    """The client side of an Executor: assigns tasks to idle workers."""

    def __init__(self, config, cluster, user, retries=RETRIES):
        super().__init__(config, cluster, user, _peer_id(user))
        self.retries = retries
        self.alive_sent = 0.0
        self.scratch = tempfile.mkdtemp(prefix="p2p-client-")
        self.idle = set()  # worker slot ids, free as far as we know
        self.pythons = {}  # worker slot id -> its Python version, as announced
        self.queue = collections.deque()
        self.tasks = {}  # task id -> _Task (assigned, not finished)
        self.changed = threading.Condition()
        self.dispatcher = threading.Thread(target=self._dispatch, daemon=True,
                                           name="p2p-dispatch")

    def start(self):
        self.join()
        self.dispatcher.start()

    def put(self, task):
        with self.changed:
            self.queue.append(task)
            self.changed.notify_all()

    def handle(self, msg):
        with self.changed:
            if msg.get("to") == self.id and msg.kind in ("accept", "decline", "result"):
                self._answer(msg)
            if msg.kind == "idle":
                self.pythons[msg["id"]] = msg["py"]
                self.idle.add(msg["id"])
            elif msg.kind == "result":  # that worker is free again
                self.idle.add(msg["id"])
            elif msg.kind == "assign":  # another client took that worker
                self.idle.discard(msg["to"])
            elif msg.kind == "bye":
                self.idle -= {w for w in self.idle if _process_of(w) == msg["id"]}
                for gone in [w for w in self.pythons if _process_of(w) == msg["id"]]:
                    del self.pythons[gone]
                self.heard[msg["id"]] = float("-inf")  # its tasks are lost now
            self.changed.notify_all()

    def about(self):
        with self.changed:
            return {"queued": len(self.queue), "running": len(self.tasks)}

    def _answer(self, msg):
        task = self.tasks.get(msg["task"])
        if task is None or task.worker != msg["id"]:
            return  # not an answer from the worker this task was assigned to
        if msg.kind == "decline":
            # Off the board's reader: failing a future runs user callbacks.
            failed = msg["why"].startswith((_LOST_TASK, "stopped:"))
            threading.Thread(target=self._retry, daemon=True,
                             args=(task, msg["why"], failed)).start()
        elif msg.kind == "accept" and task.share is not None:
            share, task.share = task.share, None
            try:
                task_code, task.result_code = share.codes(msg["dh"], task.id, self.salt)
            except P2PError as exc:
                threading.Thread(target=self._finish, args=(task, None, exc),
                                 daemon=True).start()
                return
            threading.Thread(target=self._send_task, args=(task, task_code),
                             daemon=True).start()
        elif msg.kind == "result" and task.result_code is not None:
            code, task.result_code = task.result_code, None
            threading.Thread(target=self._receive_result, args=(task, code, msg["size"]),
                             daemon=True).start()

    def _requeue(self, task):
        _kill(task.transfers)  # a send to the worker we gave up on
        self.tasks.pop(task.id, None)
        task.worker, task.share, task.result_code = None, None, None
        self.queue.appendleft(task)
        self.changed.notify_all()

    def _retry(self, task, why, failed=True, error=TransferError):
        """Assign the task afresh (new worker, new codes), unless retries are used up.

        failed: it counts as a failure (not a mere "busy"); error: the type
        raised when the retries are used up.
        """
        with self.changed:
            if self.tasks.get(task.id) is not task:
                return
            if failed:
                task.failures.append("%s: %s" % (task.worker, why))
                task.failed_on.add(_machine_of(task.worker))
                log.warning("task %s on worker %s: %s; trying again", task.id,
                            task.worker, why)
            if len(task.failures) <= self.retries:
                self._requeue(task)
                return
        self._finish(task, error=error(
            "task %s failed %d time(s): %s"
            % (task.id, len(task.failures), "; ".join(task.failures))))

    def _dispatch(self):
        while not self._closing:
            for task, why in self._check_workers():
                self._retry(task, why, error=WorkerLost)
            with self.changed:
                for task in [t for t in self.queue if t.future.cancelled()]:
                    self.queue.remove(task)
                    task.future.set_running_or_notify_cancel()  # wakes its waiters
                pairs = []
                for task in list(self.queue) if not self.exposed else []:
                    # Machines it failed on come last (a worker restarted there
                    # has a new id, on the same flaky laptop).
                    worker = min((w for w in self.idle if task.py in ("", self.pythons.get(w))),
                                 key=lambda w: _machine_of(w) in task.failed_on, default=None)
                    if worker is None:
                        continue  # no idle worker runs its Python; later ones may go
                    self.queue.remove(task)
                    if not task.started:
                        if not task.future.set_running_or_notify_cancel():
                            continue
                        task.started = True
                    self.idle.discard(worker)
                    task.id = secrets.token_hex(8)  # a late answer to a past try is moot
                    task.worker, task.share = worker, _KeyShare()
                    task.assigned_at = time.monotonic()
                    self.tasks[task.id] = task
                    pairs.append(task)
                if not pairs:
                    self.changed.wait(1.0)
            for task in pairs:
                self.board.send("assign", id=self.id, to=task.worker, task=task.id,
                                dh=task.share.public, py=task.py, size=task.size)

    def _check_workers(self):
        """Tasks whose worker did not answer, fell silent or left; say we are alive."""
        now, online_since = time.monotonic(), self.online_since
        if online_since is None:
            return []
        with self.changed:
            unanswered = [t for t in self.tasks.values() if t.share is not None
                          and now - max(t.assigned_at, online_since) > ASSIGN_TIMEOUT]
            # Accepted: running, or sending its result back (a worker that
            # dies mid-send must not leave the receive waiting for its timeout).
            running = [t for t in self.tasks.values() if t.share is None]
        if running and now - self.alive_sent >= ALIVE_EVERY:
            self.board.send("alive", id=self.id)
            self.alive_sent = now
        lost = [(task, "did not answer its assignment within %gs" % ASSIGN_TIMEOUT)
                for task in unanswered]
        for task in running:
            last = self.heard.get(_process_of(task.worker), 0.0)
            silent = now - max(task.assigned_at, online_since, last)
            if last == float("-inf"):
                lost.append((task, "left the board"))
            elif silent > LOST_AFTER:
                lost.append((task, "lost (silent for %.0fs)" % silent))
        return lost

    def _send_task(self, task, code):
        folder = tempfile.mkdtemp(dir=self.scratch)
        path = os.path.join(folder, "task-%s.pkl" % task.id)  # the name tells the try
        try:
            os.link(task.path, path)
            _send_file(self.config, code, path, task.transfers)
        except TransferError as exc:
            log.debug("sending task %s: %s (the worker's answer decides)", task.id, exc)
        except P2PError as exc:
            self._finish(task, error=exc)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _receive_result(self, task, code, size):
        folder = tempfile.mkdtemp(dir=self.scratch)
        try:
            path = _receive_file(self.config, code, "result-%s.pkl" % task.id, size,
                                 folder, task.transfers)
        except TransferError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            self._retry(task, "the result did not arrive: %s" % exc)
            return
        try:
            with open(path, "rb") as f:  # from the file: a large result is read once
                outcome = _checked_outcome(_load(f, self.config.trust))
        except Exception as exc:  # a broken payload fails its task, not the client
            why = "the result of task %s from %s was refused: %s" % (task.id, task.worker,
                                                                   exc)
            log.warning("%s", why)
            self._finish(task, error=TransferError(why))
            return
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        task.future._replay = outcome
        if "error" in outcome:
            error = outcome["error"]
            if outcome.get("traceback"):
                error.__cause__ = _RemoteTraceback(
                    "\n\"\"\"\n%s\"\"\" (on worker %s)" % (outcome["traceback"], task.worker))
            self._finish(task, error=error)
        else:
            self._finish(task, value=outcome.get("value"))

    def _finish(self, task, value=None, error=None):
        _kill(task.transfers)
        try:
            os.remove(task.path)
        except OSError:
            pass
        with self.changed:
            self.tasks.pop(task.id, None)
        if task.future.done():
            return
        if error is not None:
            task.future.set_exception(error)
        else:
            task.future.set_result(value)

    def withdraw(self):
        """Cancel every queued task and withdraw the running ones from their workers."""
        with self.changed:
            cancelled = [t for t in self.queue if t.future.cancel()]
            for task in cancelled:
                self.queue.remove(task)
            running, self.tasks = list(self.tasks.values()), {}
            for task in list(self.queue):  # started before, waiting for a new worker
                self.queue.remove(task)
                running.append(task)
        for task in running:
            if task.worker is not None:
                self.board.send("withdraw", id=self.id, to=task.worker, task=task.id)
            self._finish(task, error=concurrent.futures.CancelledError(
                "task %s was withdrawn" % task.id))

    def workers_in_use(self):
        with self.changed:
            return len({task.worker for task in self.tasks.values()})

    def unfinished(self):
        with self.changed:
            return [t.future for t in list(self.queue) + list(self.tasks.values())
                    if not t.future.cancelled()]

    def close(self):
        """Leave the board; a future still unfinished fails rather than hangs."""
        self.leave()
        with self.changed:
            self.changed.notify_all()
            tasks, self.tasks = list(self.queue) + list(self.tasks.values()), {}
            self.queue.clear()
        for task in tasks:
            self._finish(task, error=P2PError("the executor was shut down before "
                                              "task %s finished" % task.id))
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
        user = whoami(self._config)
        self.cluster = Cluster(cluster or _default_cluster(user))
        retries = _number("P2P_RETRIES", retries, RETRIES, int)
        _ensure_wormhole(self._config)
        self._client = _Client(self._config, self.cluster, user, retries)
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
        with self._client.changed:
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
        with self._client.changed:
            slots = max(1, len(self._client.pythons))
        return -(-count // (4 * slots))  # rounded up

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._client.changed:
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

class _Host:
    """Keeps a shared cluster open: its access list, its welcomes, its watch."""

    def __init__(self, config, cluster, user, members):
        if user != cluster.owner:
            raise P2PError(
                "%s may only host clusters named %s/{name}: %s belongs to pico.sh "
                "user %s" % (user, user, cluster, cluster.owner))
        if cluster.personal:
            raise P2PError("%s is a personal cluster: it needs no host" % cluster)
        self.config = config
        self.cluster = cluster
        self.user = user
        self.id = _peer_id(user)
        self.members = sorted(set(members) - {user})
        self.intruders = []
        self.present = set()
        self.started = int(time.time())
        self.until = None  # when watch() will close it, for roll calls
        self.stopped = threading.Event()
        self._rival = threading.Event()
        self._backoff = _Backoff()
        key, _ = _keys(config.secret, cluster)
        self.board = _Board(config, cluster.channel, self._on_message, self._on_drop,
                            access=self.members or [user], key=key)

    def open(self):
        # A list already stored may be a dead host's: only a live one refuses us.
        self.board.connect()
        self.board.send("hello", id=self.id, role="host", user=self.user, py=PY)
        if self._rival.wait(ANSWER_TIMEOUT):
            self.board.close()
            raise P2PError("%s is already hosted by another process of %s: stop it "
                           "first" % (self.cluster, self.user))
        log.info("hosting %s for %s", self.cluster, ", ".join(self.members) or "nobody")

    def _on_message(self, msg):
        if not msg.authentic:
            if msg.kind == "hello":  # unsigned, as the peer may lack our key
                self.board.send("denied", signed=False, id=self.id, to=msg["id"], why=(
                    "%s has a secret; ask %s for its file and set P2P_SECRET_FILE "
                    "(yours, if you have one, is not it)" % (self.cluster, self.user)
                    if self.board.key else "%s has no secret: unset P2P_SECRET and "
                    "P2P_SECRET_FILE to join it" % self.cluster))
            return
        if msg.kind == "hello" and msg["id"] != self.id:
            if msg["role"] == "host":
                self.board.send("welcome", id=self.id, to=msg["id"], intruders=[])
            elif msg["user"] in self.members or msg["user"] == self.user:
                self.board.send("welcome", id=self.id, to=msg["id"],
                                intruders=self.intruders)
                (log.debug if msg["role"] == "observer" else log.info)(
                    "%s joined as a %s (%s)", msg["user"], msg["role"], msg["id"])
            else:
                self.board.send("denied", id=self.id, to=msg["id"], why=(
                    "%s is not a member of %s; ask %s to add you: python -m p2p "
                    "host %s --users ...,%s" % (msg["user"], self.cluster, self.user,
                                                self.cluster, msg["user"])))
        elif msg.kind == "welcome" and msg["to"] == self.id:
            self._rival.set()
        elif msg.kind == "who":
            self.board.send("here", id=self.id, to=msg["id"], role="host", user=self.user,
                            py=PY, since=self.started,
                            about={"members": self.members, "until": self.until})
        elif msg.kind == "bye":
            log.info("%s said goodbye", msg["id"])

    def _on_drop(self):
        if not self.stopped.is_set():
            log.info("the board dropped the host's session; reconnecting")
            self._backoff.wait()
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
        for gone in sorted(self.present - set(users)):
            log.info("%s left", gone)
        self.present = set(users)
        intruders = sorted(set(users) - set(self.members) - {self.user})
        if intruders != self.intruders:
            if intruders:
                log.warning("not members, on the board of %s: %s (pico.sh lets a "
                            "stranger's first connection in)", self.cluster,
                            ", ".join(intruders))
            else:
                log.info("no more non-members on the board of %s", self.cluster)
            self.intruders = intruders
            self.board.send("intruders", id=self.id, users=intruders)
        elif intruders:
            self.board.send("intruders", id=self.id, users=intruders)  # for newcomers

    def close(self):
        self.stopped.set()
        self.board.close()


# -- status and doctor --------------------------------------------------------

DOCTOR_WAIT = 10.0  # seconds each of doctor's network checks may take
_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
            "ALL_PROXY")
# What each role tells a roll call, and the types we accept from strangers.
_ABOUT = {
    "host": {"members": list, "until": (int, type(None))},
    "worker": {"slots": int, "busy": int, "done": int},
    "client": {"queued": int, "running": int},
}


class _RollCall(_Member):
    """Asks everyone on a cluster's board who they are, and notes the answers."""

    role = "observer"

    def __init__(self, config, cluster, user):
        super().__init__(config, cluster, user, _peer_id(user))
        self.answers = {}

    def handle(self, msg):
        if msg.kind == "here" and msg["to"] == self.id:
            self.answers[msg["id"]] = msg


def _census(config, cluster, user, wait=ANSWER_TIMEOUT):
    """Who is on a cluster now: its host, workers and clients, as they answered."""
    roll = _RollCall(config, cluster, user)
    try:
        roll.join()
        roll.board.send("who", id=roll.id)
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
