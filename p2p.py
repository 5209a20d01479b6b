"""p2p.py: a peer-to-peer compute cluster for Python over outbound SSH.

    # alice opens a cluster:      python -m p2p host alice/p2p --users bob,carol
    # and invites each member:    python -m p2p invite alice/p2p bob  (bob: join)
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
closures, those of ``__main__``) are sent by value, and the modules of
your own with their source, once per worker. Each task runs in a
child process of its worker, so a task that crashes fails alone. A client
loads results through an allow-list unless told to trust the cluster
(P2P_TRUST=1). A shared cluster has a key, which its owner hands each
member once (``python -m p2p invite alice/p2p bob``, then bob's ``python
-m p2p join alice/p2p CODE``): every board line is signed with it and
every payload key depends on it, so strangers on the board can do nothing.
"""

import abc
import argparse
import atexit
import base64
import builtins
import collections
import concurrent.futures
import contextlib
import copy
import dis
import enum
import functools
import hashlib
import hmac
import importlib
import importlib.util
import io
import itertools
import json
import logging
import marshal
import os
import pickle
import platform
import queue
import re
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import urllib.parse
import warnings
import weakref

try:
    import resource
except ImportError:  # Windows
    resource = None
try:
    import fcntl
except ImportError:  # Windows: `invite` and the host do not write at once there
    fcntl = None

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


class _Refused(TransferError):
    """A payload came, but not as announced: the peer's doing, not the network's."""


class TaskCrashed(P2PError):
    """The process running a task died (os._exit, a signal, a segfault)."""


class WorkerLost(P2PError):
    """The workers of a task vanished, more often than the retries allowed."""


class _NoWorkerHas(P2PError, ModuleNotFoundError):
    """A task needs a module that none of the workers there has."""


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
# Seconds a new Executor waits to hear a worker answer its hello: then its
# first tasks go at once, and map's chunks are sized for the slots there.
WORKERS_WAIT = 1.0
HOST_CHECK = 3.0  # seconds between the host's looks at ls
IDLE_EVERY = 15.0  # seconds between an idle worker's announcements
ALIVE_EVERY = 5.0  # seconds between the "alive" lines of a peer with work in flight
LOST_AFTER = 20.0  # seconds of silence after which such a peer is lost
FRESH = 90.0  # seconds by which a signed line's time may differ from ours (_Recent)
RETRIES = 2  # default: new assignments of a task after its worker or transfer failed
LACKS = 8  # workers a task may find without a module it needs, before that counts as failing
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
_REFUSED_TASK = "the task was refused"  # and after one that brought something else
_WAYS = ("wormhole", "ssh")  # the transports of a large payload, the one we prefer first


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
    allow     P2P_ALLOW      modules whose classes a result may hold besides
                             the safe defaults ("pandas,scipy")
    timeout   P2P_TIMEOUT    seconds a transfer may take (60), plus one per
                             2 MB; then it is tried again, new code
    transport P2P_TRANSPORT  how large payloads travel: auto (wormhole where
                             both peers reach its servers, else ssh), or
                             wormhole or ssh always
    max_payload  P2P_MAX_PAYLOAD  the largest task or result taken, in bytes
                             (16 GiB)
    secret_file  P2P_SECRET_FILE  a file holding the cluster's secret, for
                             those who hand one over themselves; by default
                             the key comes from ``python -m p2p join``
    send_modules P2P_SEND_MODULES  whether your own modules travel as their
                             source (1, the default), or not (0), or more
                             modules to send that way besides ("mylib,x.y")

    Flags take 1/true/yes/on or 0/false/no/off; an argument beats the
    environment.
    """

    def __init__(self, host=None, ssh_args=None, wormhole=None, debug=None,
                 trust=None, secret=None, secret_file=None, timeout=None, allow=None,
                 max_payload=None, transport=None, send_modules=None):
        env = os.environ
        self.host = host or env.get("P2P_HOST") or "pipe.pico.sh"
        if ssh_args is None:
            ssh_args = env.get("P2P_SSH_ARGS", "")
        self.ssh_args = shlex.split(ssh_args) if isinstance(ssh_args, str) else list(ssh_args)
        self.wormhole = wormhole or env.get("P2P_WORMHOLE")
        self.debug = _flag("P2P_DEBUG", debug)
        self.trust = _flag("P2P_TRUST", trust)
        if allow is None:
            allow = env.get("P2P_ALLOW", "")
        if isinstance(allow, str):
            allow = allow.split(",")
        self.allow = tuple(name.strip() for name in allow if name.strip())
        self.timeout = _number("P2P_TIMEOUT", timeout, 60.0, float)
        self.transport = (transport or env.get("P2P_TRANSPORT") or "auto").strip().lower()
        if self.transport not in ("auto",) + _WAYS:
            raise P2PError("P2P_TRANSPORT must be auto, wormhole or ssh, not %r"
                           % self.transport)
        self.max_payload = _number("P2P_MAX_PAYLOAD", max_payload, 16 << 30, int)
        if not 0 < self.max_payload < _BIGGEST:
            raise P2PError("P2P_MAX_PAYLOAD must be a size in bytes, at least 1 and under "
                           "2**53, not %r" % self.max_payload)
        if send_modules is None:
            send_modules = env.get("P2P_SEND_MODULES", "1")
        if isinstance(send_modules, str):
            flag = _FLAGS.get(send_modules.strip().lower())
            send_modules = flag if flag is not None else send_modules.split(",")
        if not isinstance(send_modules, bool):
            send_modules = tuple(name.strip() for name in send_modules if name.strip())
        self.send_modules = send_modules  # True, False, or more names to send
        secret_file = secret_file or env.get("P2P_SECRET_FILE")
        self.secret = secret or (_read_secret(secret_file) if secret_file else None)
        if self.secret is not None and len(self.secret) < 16:
            raise P2PError("a cluster secret needs 16 characters or more: use the one "
                           "`python -m p2p host ... --secret-file FILE` writes")

    @property
    def account_host(self):
        """Where ``ssh HOST user`` answers: pico.sh for pipe.pico.sh."""
        return self.host[len("pipe."):] if self.host.startswith("pipe.") else self.host


_FLAGS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False, "": False}


def _flag(name, value=None):
    """value, if given, else the environment variable name, as a bool."""
    if value is not None:
        return bool(value)
    text = os.environ.get(name, "")
    if text.strip().lower() not in _FLAGS:
        raise P2PError("%s must be 1, true, yes, on or 0, false, no, off, not %r"
                       % (name, text))
    return _FLAGS[text.strip().lower()]


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
        # Names become file names (the cluster's keys) and pico.sh topics.
        if not all(re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", part) for part in (owner, rest)):
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


def _ssh(config, host, words, unseen=False, **popen):
    """Start ``ssh HOST WORDS...`` with the configured arguments: the one way
    to ssh. unseen: WORDS go to ssh in a file of ours, as its RemoteCommand,
    not on its command line, which anyone on this machine can read (ps)."""
    _require_ssh()
    argv = (["ssh", "-T"] + config.ssh_args +
            ["-o", "BatchMode=yes", "-o", "ServerAliveInterval=15",
             "-o", "ServerAliveCountMax=3"])
    if host == config.host:
        argv = argv + _master_options(argv, host)
    settings = _ssh_settings(argv, host) if unseen else None
    if config.debug:
        log.debug("run: %s", shlex.join(argv + [host] + list(words)))
    popen.setdefault("stdin", subprocess.DEVNULL)
    popen.setdefault("stdout", subprocess.PIPE)
    popen.setdefault("stderr", subprocess.PIPE)
    if settings is None:
        return subprocess.Popen(argv + [host] + list(words), **popen)
    # In a file only we can read (ssh closes what it inherits, pipes too).
    path = _private_file("RemoteCommand %s\n%s" % (
        " ".join(words).replace("%", "%%"), settings))
    try:
        return _Unseen(argv + ["-F", path, host], path, **popen)
    except BaseException:
        _remove_private_file(path)
        raise


# One connection, many sessions. An ssh connection costs a key exchange and
# round trips (~0.5 s on the internet, and on a small machine more CPU than
# a transfer's bytes), so the sessions a process opens to its board's host
# ride one connection as channels of their own (ssh's ControlMaster). The
# first session there, the board's, makes it: ssh keeps that connection in
# the background (ControlPersist) and the session rides it like the rest.
# Others go direct while it is being made (at most MASTER_WAIT). It ends at
# our exit, or by itself MASTER_IDLE seconds after its last session: a
# process killed outright leaves it behind no longer than that.
MASTER_WAIT = 15.0
MASTER_IDLE = 60
_MASTER_RETRY = 60.0  # seconds of going direct after a master was not made
_masters, _masters_lock = {}, threading.Lock()


class _Master:
    """ssh's master connection to host, for the ssh command line argv."""

    def __init__(self, argv, host):
        self.argv, self.host = list(argv), host
        self.lock = threading.Lock()
        self.folder = tempfile.mkdtemp(prefix="p2p-ssh-")
        self.path = os.path.join(self.folder, "master")
        self.making = self.failed = None  # when a session set out to make it, or failed

    def options(self):
        """What makes an ssh session ride this connection, or make it; none
        while another makes it, or after it was not made lately."""
        control = ["-o", "ControlPath=" + self.path]
        with self.lock:
            if self.up():
                self.making = self.failed = None
                return ["-o", "ControlMaster=no"] + control
            now = time.monotonic()
            if self.making is not None and now - self.making > MASTER_WAIT:
                log.debug("no shared ssh connection to %s: each session connects on its "
                          "own for %gs", self.host, _MASTER_RETRY)
                self.making, self.failed = None, now
            if self.making is not None or (self.failed and now - self.failed < _MASTER_RETRY):
                return []
            # A master killed outright leaves its socket: ssh would refuse it.
            with contextlib.suppress(OSError):
                os.remove(self.path)
            self.making = now
            return ["-o", "ControlMaster=yes", "-o", "ControlPersist=%d" % MASTER_IDLE] + control

    def up(self):
        """Whether a master answers on the control socket."""
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(self.path)
            except OSError:
                return False
        return True

    def stop(self):
        if self.up():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(self.argv + ["-o", "ControlPath=" + self.path, "-O", "exit",
                                            self.host], stdin=subprocess.DEVNULL,
                               capture_output=True, timeout=10)
        shutil.rmtree(self.folder, ignore_errors=True)


def _master_options(argv, host):
    """The options of an ssh session to host that make it ride the process's
    one connection there (see _Master); none where ssh cannot share one, or
    the user's own settings share theirs."""
    # -v keeps a master's stderr: it would hold the making session's pipe.
    if os.name != "posix" or any(word in ("-M", "-S") or word.startswith("-v") or
                                 "control" in word.lower() for word in argv):
        return []
    with _masters_lock:
        master = _masters.get((tuple(argv), host))
        if master is None:
            master = _masters[tuple(argv), host] = _Master(argv, host)
    # ssh adds 17 characters to it, and a Unix socket's path ends at 104.
    return master.options() if len(os.fsencode(master.path)) <= 80 else []


@atexit.register
def _stop_masters():
    with _masters_lock:
        for master in _masters.values():
            master.stop()
        _masters.clear()


class _Unseen(subprocess.Popen):
    """An ssh whose command is in the file at path: removed once it has ended."""

    def __init__(self, argv, path, **popen):
        self.path = path
        super().__init__(argv, **popen)

    def wait(self, timeout=None):
        code = super().wait(timeout)
        _remove_private_file(self.path)
        return code


# Files of ours that only our user can read, in a folder that lives only while
# it holds one: a process killed outright leaves nothing in /tmp between tasks.
_private, _private_lock = {}, threading.Lock()


def _private_file(text):
    with _private_lock:
        if not _private:
            _private[tempfile.mkdtemp(prefix="p2p-")] = set()
        folder, paths = next(iter(_private.items()))
        fd, path = tempfile.mkstemp(prefix="ssh-", dir=folder)
        paths.add(path)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def _remove_private_file(path):
    with _private_lock:
        folder = os.path.dirname(path)
        if path not in _private.get(folder, ()):
            return  # waited for twice
        _private[folder].discard(path)
        with contextlib.suppress(OSError):
            os.remove(path)
            if not _private[folder]:
                del _private[folder]
                os.rmdir(folder)


@atexit.register
def _remove_private_folder():
    with _private_lock:
        for folder in _private:
            shutil.rmtree(folder, True)
        _private.clear()


_settings, _settings_lock = {}, threading.Lock()


def _ssh_settings(argv, host):
    """What ssh makes of its configuration for host (``ssh -G``), to be
    given back to it with -F; None where that cannot be done."""
    # With -F, ssh reads nothing but that file: it must hold all that the
    # user's files, P2P_SSH_ARGS and a wrapper on PATH would have said.
    key = (tuple(argv), host)
    with _settings_lock:
        if key in _settings or os.name != "posix":
            return _settings.get(key)
        try:
            said = subprocess.run(argv + ["-G", host], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            said = None
        lines = [_ssh_setting(line) for line in (
                     said.stdout.decode(errors="replace").splitlines()
                     if said and said.returncode == 0 else [])
                 if line.split(" ", 1)[0] not in ("host", "remotecommand")]
        _settings[key] = "".join(line + "\n" for line in lines) or None
        if not lines:
            why = (said.stderr.decode(errors="replace").strip().splitlines() or [""])[-1] \
                if said else "it did not run"
            log.warning("`ssh -G %s` did not say what ssh's settings are (%s): p2p.py goes "
                        "on, but the topics of its ssh transfers show in this machine's "
                        "process list (their bytes are sealed all the same)", host,
                        why[:200] or "no output")
    return _settings[key]


# ssh -G prints values unquoted, but reads a space as the end of one: a path
# with a space in it (macOS's "Application Support") must be quoted again.
_SSH_PATHS = {"identityfile", "certificatefile", "controlpath", "identityagent",
              "revokedhostkeys", "xauthlocation", "securitykeyprovider",
              "pkcs11provider"}
_SSH_PATH_LISTS = {"userknownhostsfile", "globalknownhostsfile"}


def _ssh_setting(line):
    """A line of ``ssh -G``'s output, as a line of an ssh config file."""
    keyword, _, value = line.partition(" ")
    if keyword in _SSH_PATHS:
        paths = [value]
    elif keyword in _SSH_PATH_LISTS:
        # Where the list is ambiguous, a word that starts no path of its own
        # ("b/kh" after "/tmp/a") goes on with the one before it.
        paths = []
        for word in value.split(" "):
            if paths and not word.startswith(("/", "~", "%")):
                paths[-1] += " " + word
            else:
                paths.append(word)
    else:
        return line
    return keyword + "".join(' "%s"' % path.replace("\\", "\\\\").replace('"', '\\"')
                             for path in paths)


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
    """How peers name each other on the board: user@host:pid-random, new for
    each Executor, worker and roll call, so that lines said by an earlier one
    in the same process (its "bye") say nothing about a later one."""
    return "%s@%s:%d-%s" % (user, socket.gethostname(), os.getpid(), secrets.token_hex(3))


def _process_of(peer_id):
    """The process id of a peer id: a worker's slots are user@host:pid#N."""
    return peer_id.split("#", 1)[0]


def _machine_of(peer_id):
    """user@host, of a peer id."""
    return peer_id.rsplit(":", 1)[0]


def _user_of(peer_id):
    """The pico user of a peer id."""
    return peer_id.split("@", 1)[0]


# A shared cluster's key signs its board lines and salts its payload keys.
# The owner's machine keeps it, with a secret of each member's own, in the
# data folder (clusters/OWNER/NAME.json, mode 600); `invite` hands a member
# the key and their secret by wormhole, `join` stores them the same way.
# A member's secret proves who they are to the host (only the two of them
# hold it), so that when the owner takes a member off the list the host
# makes a new key and hands it, sealed under each remaining member's
# secret, to each of them as they say hello; the one taken off has none.

def _keys_path(cluster):
    return os.path.join(_data_dir(), "clusters", cluster.owner, cluster.short + ".json")


def _read_keys(cluster):
    """What this machine keeps for a cluster: {} when nothing."""
    try:
        with open(_keys_path(cluster)) as f:
            kept = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise P2PError("cannot read the keys of %s from %s (%s): remove the file and "
                       "join again" % (cluster, _keys_path(cluster), exc)) from None
    return kept if isinstance(kept, dict) else {}


def _change_keys(cluster, change):
    """Apply change(kept) to what this machine keeps for a cluster, as one
    step (the host and `invite` may both write it); what it became."""
    path = _keys_path(cluster)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".lock", "a") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        kept = _read_keys(cluster)
        change(kept)
        fd, partial = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".keys-")
        with os.fdopen(fd, "w") as f:  # mkstemp's files are readable by us only
            json.dump(kept, f, indent=1, sort_keys=True)
        os.replace(partial, path)
    return kept


def _proof(secret, what, hello):
    """What shows, to the one other holder of a secret, who said what in
    answer to which hello ("id t": a welcome answers one hello only, so an
    old one played again proves nothing)."""
    return hmac.new(secret.encode(), ("%s %s" % (what, hello)).encode(),
                    "sha256").hexdigest()[:32]


_USER_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}"  # as pico.sh's, and short


def _hello_of(msg):
    """The name of a hello: its sender and time, unique to it."""
    return _hello_name(msg["id"], msg["t"])


def _hello_name(peer_id, t):
    return "%s %d" % (peer_id, t)


def _owner_keys(cluster, members):
    """The owner's keys of a shared cluster with these members: made when
    there are none, made anew when a member was taken off, kept otherwise;
    what is kept. A new key also takes the secrets of everyone not on the
    list now: only members can ask for it."""
    def change(kept):
        gone = set(kept.get("members", ())) - set(members)
        if not kept.get("key") or gone:
            kept["key"] = secrets.token_hex(32)
        kept["members"] = sorted(members)
        kept["secrets"] = {user: secret for user, secret in kept.get("secrets", {}).items()
                           if not gone or user in members or user == cluster.owner}
    return _change_keys(cluster, change)


def _member_secret(held, user, proof, hello):
    """The owner's secret for user (held: the owner's secrets, by user),
    when proof is theirs for this hello; None else."""
    secret = held.get(user)
    if secret is None or not re.fullmatch(r"[0-9a-f]{32}", proof):
        return None
    return secret if hmac.compare_digest(proof, _proof(secret, "hello", hello)) else None


def _secret_of(config, cluster, user):
    """(the cluster's secret, your own secret as a member or None) for a
    member's peers; (None, None) on a personal cluster, which pico.sh keeps
    to its owner; P2PError saying how to get the key when you have none."""
    if cluster.personal:
        return None, None
    if config.secret:
        return config.secret, None
    kept = _read_keys(cluster)
    if not kept.get("key") and user == cluster.owner:
        # Its key is made where its owner first uses it: the host finds it.
        kept = _change_keys(cluster, lambda kept: kept.setdefault(
            "key", secrets.token_hex(32)))
    if kept.get("key"):
        return kept["key"], kept.get("secret")
    raise ClusterError(
        "you (%s) hold no key for %s: ask %s to run `python -m p2p invite %s %s` and "
        "send you the line it prints, then run that line here: `python -m p2p join %s "
        "CODE`" % (user, cluster, cluster.owner, cluster, user, cluster))


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


class _Recent:
    """The signed lines a peer heard lately: a replay of one counts for nothing.

    Every line carries its sender's time. One said more than FRESH seconds
    before (or after) now by our clock is stale; within that window, one
    whose signature we heard before is a replay. Signatures cover the time,
    so an old line cannot be made new, and no one can end the window of
    another sender's lines early. FRESH allows for friends' clocks that
    disagree a little; a clock off by more is named in a warning.
    """

    MOST = 200000  # signatures kept at most (2*FRESH of a busy board)

    def __init__(self):
        self._heard = collections.OrderedDict()  # signature -> when we heard it
        self._told = set()  # senders warned about their clock

    def fresh(self, msg):
        off = msg["t"] / 1e6 - time.time()
        if abs(off) > FRESH:
            sender = _process_of(msg["id"])
            if sender not in self._told and len(self._told) < 1000:
                self._told.add(sender)
                log.warning("a line from %s is %.0fs %s our clock: a replay, or one of "
                            "the two clocks is off; lines more than %.0fs off count for "
                            "nothing (set both clocks right)", sender, abs(off),
                            "ahead of" if off > 0 else "behind", FRESH)
            return False
        if msg.signature in self._heard:
            return False
        now = time.monotonic()
        self._heard[msg.signature] = now
        while self._heard and (len(self._heard) > self.MOST or
                               next(iter(self._heard.values())) < now - 2 * FRESH):
            self._heard.popitem(last=False)
        return True


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

    def __init__(self, config, cluster, user, peer_id, secret, access=None):
        self.config = config
        self.cluster = cluster
        self.user = user
        self.id = peer_id
        self.key, self.salt = _keys(secret, cluster)
        self.recent = _Recent()
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
        if given), or, for a size, that it comes via (a transport) instead."""
        if isinstance(payload, int):
            self.say(kind, size=payload, n=0, of=0, data="", **fields)
            return
        pieces = _pieces(payload)
        fields["via"] = "board"
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
                    self._take(item)
                    if time.monotonic() >= next_tick and not self._stopped:
                        next_tick = time.monotonic() + self.TICK
                        self.tick()
                except Exception:
                    shown = item[:300] if isinstance(item, bytes) else item
                    log.exception("%s: failed while handling %r; going on", self.role, shown)
            item = None  # not held while we wait: a result handed out is the user's

    def _take(self, item):
        if isinstance(item, bytes):
            self._hear(item)
        elif item == _DROP:
            self.on_drop()
        elif item is not None:
            action, args = item
            action(*args)

    def _hear(self, line):
        msg = _decode(line, self.key, self.wants)
        if msg is None:
            return
        if isinstance(msg, _OtherVersion):
            if msg.version not in self._versions:
                self._versions.add(msg.version)
                log.warning("a peer on %s speaks protocol %s, we speak %d: %s", self.cluster,
                            msg.version, _VERSION, _upgrade_advice([msg.version]))
            return
        if self.config.debug:
            log.debug("board: %s", line[:300].decode(errors="replace"))
        if not msg.authentic:
            self.on_unsigned(msg)
            return
        if self.key is not None and not self.recent.fresh(msg):
            return  # a personal board has only its owner's lines: nothing to replay
        self.heard[_process_of(msg["id"])] = time.monotonic()
        handler = getattr(self, "_on_" + msg.kind, None)
        if handler is not None:
            handler(msg)

    def on_unsigned(self, msg):
        """A well-formed line without our cluster's signature: it counts for
        nothing (but may be a hint, as a "denied" is)."""

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
        secret, self.own = _secret_of(config, cluster, user)
        super().__init__(config, cluster, user, peer_id, secret)
        self._welcome = threading.Event()
        self._hint = None  # the last "denied" said to us: anyone may have said it
        self._hello_said = 0.0
        self._hellos = []  # our last few hellos, as _hello_of names them
        self._closing = False
        self._joining = False
        self._backoff = _Backoff()
        self._preconnected = False  # the board's first session is open already
        self.started = int(time.time())
        # None while our own link is down: peers are not silent, we are deaf.
        self.online_since = None

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
        if self._welcome.wait(ANSWER_TIMEOUT):
            self.post(self._joined)
            return True
        return False

    def _say_hello(self):
        self._hello_said, t = time.monotonic(), _now_t()
        hello = _hello_name(self.id, t)
        # A welcome answers one of these: a slow host's answer to the hello
        # before still counts, a recorded one from longer ago does not.
        self._hellos = [h for h in self._hellos if int(h.split()[1]) > t - FRESH * 1e6 / 3]
        self._hellos = self._hellos[-4:] + [hello]
        self.say("hello", id=self.id, role=self.role, user=self.user, py=PY, t=t,
                 proof=_proof(self.own, "hello", hello) if self.own else "")

    def _host_holds_list(self):
        listed, _ = _ls(self.config).get(self.cluster.channel, (None, []))
        return bool(listed)

    def _unreachable(self):
        if self._hint:
            return "%s: %s (said on its board)" % (self.cluster, self._hint)
        if self.cluster.personal:
            return ("%s is a personal cluster: only %s can use it (you are %s)"
                    % (self.cluster, self.cluster.owner, self.user))
        if self._versions:
            return ("%s cannot reach cluster %s: no host answered in protocol %d within %gs, "
                    "and a peer on its board speaks protocol %s: %s"
                    % (self.user, self.cluster, _VERSION, JOIN_TIMEOUT,
                       " and ".join(sorted(self._versions)), _upgrade_advice(self._versions)))
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
        if msg.to != self.id:
            if msg.kind == "hello" and msg["role"] == "host" and not self._joining:
                self._check_key()  # a host with a key we lack: it changed
        elif msg.kind == "denied":
            self._hint = msg["why"]
        elif msg.kind == "welcome" and msg["secret"] and self.own:
            self._learn_key(msg)

    def _check_key(self):
        """Ask the host for the cluster's key again (at most every few seconds),
        having first looked for a newer one kept on this machine."""
        kept = {} if self.config.secret else _read_keys(self.cluster)
        if kept.get("key") and _keys(kept["key"], self.cluster)[0] != self.key:
            self.key, self.salt = _keys(kept["key"], self.cluster)
            log.info("the key of %s changed; using the new one", self.cluster)
        elif self.own and time.monotonic() - self._hello_said > ANSWER_TIMEOUT:
            self._say_hello()  # the host answers with the key, sealed for us

    def _learn_key(self, msg):
        """A welcome with the cluster's new key, sealed under our own secret."""
        hello = self._answered(msg)
        if hello is None:
            return  # not for a hello of ours: someone else's doing
        try:
            sealed = base64.b64decode(msg["secret"], validate=True)
            secret = _open(_proof(self.own, "key", hello).encode(), sealed).decode()
        except (ValueError, TransferError):
            return
        key, salt = _keys(secret, self.cluster)
        if not hmac.compare_digest(msg.signature or b"", _signature(key, msg.line)):
            return
        self.key, self.salt = key, salt
        if not self.config.secret:
            _change_keys(self.cluster, lambda kept: kept.update(key=secret))
        log.info("%s has a new key (a member was taken off); got it from its host",
                 self.cluster)
        self._welcomed(hello)

    def _on_welcome(self, msg):
        # With a secret of our own, only the host (the one other holder) can
        # prove a welcome; without one, any key holder could have said it.
        if msg.to != self.id:
            return
        hello = self._answered(msg) if self.own else None
        if hello is not None or not self.own:
            self._welcomed(hello)

    def _welcomed(self, hello):
        if hello is not None:
            # Used up, with the hellos before it: no welcome recorded now, nor
            # the key it hands over, counts when played again later.
            self._hellos = self._hellos[self._hellos.index(hello) + 1:]
        self._welcome.set()

    def _answered(self, msg):
        """Which of our recent hellos a welcome proves it answers, or None."""
        return next((hello for hello in self._hellos if hmac.compare_digest(
            msg["proof"].encode(), _proof(self.own, "welcome", hello).encode())), None)

    def _on_denied(self, msg):
        if msg.to == self.id:
            self._hint = msg["why"]  # another member could have said it

    def _on_who(self, msg):
        if self.role != "observer":
            self.say("here", to=msg["id"], id=self.id, role=self.role, user=self.user,
                     py=PY, since=self.started, about=self.about())

    def about(self):
        """What this member tells a roll call (python -m p2p status)."""
        return {}

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
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    def leave(self):
        if not self._closing:
            self._closing = True
            self.say("bye", id=self.id)
            self.board.close()
        self.stop_loop()


# -- wire messages ------------------------------------------------------------

# A board line: b"p2p5 KIND TO {json}[ SIGNATURE]\n". Kind and addressee come
# first, so a peer skips lines for others without parsing them; TO is a peer
# id, or * for everyone. With a cluster key, the signature covers the rest.
_VERSION = 5
_PREFIX = b"p2p%d " % _VERSION
_NAMES = "names"  # a field type: a list of strings
# What a line leaves out when it is so: the usual case, a payload in one
# piece on the board from a peer that can use every transport. A small
# task's lines are the board's traffic, and these were 80 of its ~1300 bytes.
_DEFAULTS = {"n": 0, "of": 1, "via": "board", "data": "", "can": list(_WAYS)}
# Every line names its sender (id) and when by its clock it was said (t, in
# microseconds, rising with each line a process says): see _Recent.
_HEAD = {"id": str, "t": int}
# Each kind's fields and their types (other fields are ignored); whoever
# handles a kind does it in its method _on_KIND.
_MESSAGES = {kind: dict(_HEAD, **fields) for kind, fields in {
    # proof: _proof(the member's own secret, "hello", id), "" without one.
    "hello": {"role": str, "user": str, "py": str, "proof": str},  # host; workers
    # From the host: secret, the cluster's secret sealed for the member (when
    # their hello was not signed with it); proof, _proof(their secret, "welcome").
    "welcome": {"secret": str, "proof": str},  # members
    "denied": {"why": str},  # members: a hint, which anyone could have said
    # A worker slot can take `free` more tasks, sealed for its key share dh;
    # can: the transports its worker can use for large payloads (_WAYS).
    "idle": {"py": str, "dh": str, "free": int, "can": _NAMES},  # clients
    # A task, sealed: `of` pieces of data on the board, or none (of 0) and it
    # comes `via` wormhole or ssh; can: those its client can use for the result.
    "assign": {"task": str, "dh": str, "py": str, "size": int, "via": str,
               "can": _NAMES, "n": int, "of": int, "data": str},  # workers; other clients
    # These five also carry a tag only the task's two peers can make (_tag).
    "decline": {"task": str, "why": str, "tag": str},  # clients
    "result": {"task": str, "size": int, "free": int, "via": str,
               "n": int, "of": int, "data": str, "tag": str},  # clients
    "took": {"task": str, "tag": str},  # workers: the result arrived
    # The pieces of a payload that did not arrive ("0,3"), asked of its sender.
    "again": {"task": str, "missing": str, "tag": str},  # clients; workers
    "withdraw": {"task": str, "tag": str},  # workers
    "alive": {"held": _NAMES},  # everyone; held: a worker's tasks
    "bye": {},  # everyone
    "who": {},  # everyone: a roll call, answered with "here"
    "here": {"role": str, "user": str, "py": str, "since": int,
             "about": dict},  # observers
}.items()}
_BIGGEST = 1 << 53  # no number on the board is larger (nor negative): JSON's exact integers
_clock = [0]  # the last t said by this process
_clock_lock = threading.Lock()


def _now_t():
    """This process's t for its next line: its clock, and always rising."""
    with _clock_lock:
        _clock[0] = max(_clock[0] + 1, int(time.time() * 1e6))
        return _clock[0]


class _Message(dict):
    """A decoded board line: msg.kind, msg.to, msg["field"], msg.authentic."""

    authentic = True  # signed with the cluster's key, or neither has one

    def __init__(self, kind, to, fields, line=b"", signature=None):
        super().__init__(fields)
        self.kind, self.to = kind, to
        self.line = line  # as heard: to check again under a key learned later
        self.signature = signature


class _OtherVersion:
    """A line of another version of the protocol."""

    def __init__(self, version):
        self.version = version


def _upgrade_advice(versions):
    """What to do when peers speak these other protocol versions."""
    return "everyone on a cluster needs a p2p.py of the same protocol; upgrade %s" % (
        "ours" if any(int(v) > _VERSION for v in versions) else "theirs")


def _encode(kind, to="*", key=None, pair=None, **fields):
    """A board line, said now; with a cluster key it ends with its signature,
    with a task's pair key (see _tag) it carries the task's tag."""
    fields.setdefault("t", _now_t())
    if pair is not None:
        fields["tag"] = _tag(pair, kind, to, fields)
    fields = {name: value for name, value in fields.items()
              if name not in _DEFAULTS or value != _DEFAULTS[name]}
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
    if not isinstance(fields, dict):
        return None
    shapes = _MESSAGES[kind]
    for name in shapes.keys() & _DEFAULTS.keys() - fields.keys():
        fields[name] = copy.copy(_DEFAULTS[name])
    if not all(_fits(fields.get(name), shape) for name, shape in shapes.items()):
        return None
    message = _Message(kind, to, fields, line, signature)
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
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", "")
    if module_name in (None, "__main__") or "<" in qualname:
        return False
    found = sys.modules.get(module_name)
    if not _module_by_reference(found):
        return False
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found is obj


def _module_by_reference(module):
    """True when module can be imported by name on another machine: it was
    imported (not made at run time), or made by its package as it was; and
    __main__, which is there everywhere (its functions go by value)."""
    if not isinstance(module, types.ModuleType):
        return False
    name = module.__name__
    if name == "__main__":
        return True
    if sys.modules.get(name) is not module:
        return False
    if getattr(module, "__spec__", None) is not None or "__file__" in vars(module):
        return True
    package = name.rpartition(".")[0]
    return bool(package) and _module_by_reference(sys.modules.get(package))


class _Pickler(pickle.Pickler):
    """Pickles what plain pickle refuses: lambdas, closures, __main__ code.

    Functions, classes, modules and TypeVars that another interpreter could
    not import go by value, the rest by reference. A class sent by value
    keeps its identity: loaded twice in one process, it is one class, and
    back where it came from, it is the class it was (see _tracked).

    home=True pickles a worker's outcome for its client: a class that came
    by value (or of __main__) goes by its tracking id and name, to be the
    client's own class again (``except MyError`` works), and an exception goes as its
    class, args and state, to be rebuilt without its __init__ (see
    _exception).
    """

    def __init__(self, file, home=False, modules=False):
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.by_value = False  # True when the payload carries code objects
        self.home = home
        # Functions that share a module's globals share one dict on arrival,
        # so that one's ``global x`` is seen by the others.
        self.namespaces = {}
        # Which of the client's own modules go as their source (see
        # _module_sources): True, False, or a tuple of more names to send.
        self.modules = False if home else modules
        self.closures = {}  # module name -> what it needs sent, or None
        self.sources = {}  # digest -> _Source, of every module sent
        self.needs = set()  # the top-level modules the payload names

    def reducer_override(self, obj):
        kind = type(obj)
        if self.home and isinstance(obj, BaseException) and _plain_reduce(kind):
            reduced = obj.__reduce__()  # (class, args[, state]), as BaseException's
            if type(reduced) is tuple and len(reduced) in (2, 3) and reduced[0] is kind:
                return _exception, (reduced + (None,))[:3]
        if kind is types.FunctionType:
            if _importable(obj):
                return self._reference(obj)
            self.by_value = True
            reduced = _reduce_function(obj, self._namespace(obj.__globals__))
            imported = sorted({name for code in _codes(obj.__code__) for name in code.co_names
                               if isinstance(sys.modules.get(name), types.ModuleType)})
            self.needs.update(name.partition(".")[0] for name in imported)
            closures = tuple(filter(None, (self._closure(name) for name in imported)))
            if closures:  # modules its body imports: they are found there
                reduced[2]["modules"] = closures
            return reduced
        if isinstance(obj, type):
            if _importable(obj):
                return self._reference(obj)
            if self.home and (obj in _arrived or obj.__module__ == "__main__"
                              and "<locals>" not in obj.__qualname__):
                return _home_class, (obj.__module__, obj.__qualname__,
                                     _tracking_ids.get(obj))
            if not obj.__flags__ & _HEAPTYPE:
                return _reduce_builtin_type(obj)
            self.by_value = True
            return _reduce_class(obj)
        reduce = _reducers().get(kind)
        if reduce is None:
            if not isinstance(obj, (classmethod, staticmethod, property)):
                return NotImplemented
            reduce = _reducers()[kind.__mro__[1]]  # abc's abstract ones
        if kind is types.ModuleType:
            if _module_by_reference(obj):
                return self._reference(obj)
            self.by_value = True
        return reduce(obj)

    def _reference(self, obj):
        """How a function, class or module another interpreter can import
        goes: by name, and with the source of the modules it needs, when
        it is in one of the client's own."""
        module = obj if isinstance(obj, types.ModuleType) else None
        name = obj.__name__ if module else obj.__module__
        self.needs.add(name.partition(".")[0])
        closure = self._closure(name)
        if closure is None:
            return _reduce_module(obj) if module else NotImplemented
        if module:
            return _sent_module, (closure, name)
        return _sent_global, (closure, name, obj.__qualname__)

    def _closure(self, name):
        """The modules that module name needs sent, as the payload names
        them ((name, digest, package), ...), or None: it goes by name alone."""
        if not self.modules:
            return None
        if name not in self.closures:
            sources = _module_sources(name, () if self.modules is True else self.modules)
            self.closures[name] = tuple((s.name, s.digest, s.package)
                                        for s in sources) or None
            self.sources.update((s.digest, s) for s in sources)
        return self.closures[name]

    def _namespace(self, globals_):
        """What stands for a function's globals in this payload: one dict
        for the functions of a module, the module's own if it goes by value."""
        if id(globals_) not in self.namespaces:
            module = sys.modules.get(globals_.get("__name__"))
            dynamic = getattr(module, "__dict__", None) is globals_ and not (
                _module_by_reference(module))
            self.namespaces[id(globals_)] = _Namespace(module) if dynamic else {}
        return self.namespaces[id(globals_)]

    def dump(self, obj):
        try:
            return super().dump(obj)
        except RecursionError:
            raise pickle.PicklingError(
                "it is nested too deeply to pickle (deep recursion): an object that "
                "refers to itself through __getattr__ or __reduce__, or a chain of "
                "some %d objects; send a flatter one" % sys.getrecursionlimit()) from None


class _Namespace:
    """The globals of functions of a module made at run time: the module's
    __dict__ where it arrives, so that its functions see its globals."""

    def __init__(self, module):
        self.module = module

    def __reduce__(self):
        return vars, (self.module,)


def _dump(obj, file, home=False, modules=False):
    """Pickle obj into file; the pickler, which knows what it holds."""
    pickler = _Pickler(file, home, modules)
    pickler.dump(obj)
    return pickler


def _dumps(obj, home=False):
    """(bytes, by_value) for obj."""
    buffer = io.BytesIO()
    by_value = _dump(obj, buffer, home).by_value
    return buffer.getvalue(), by_value


# A class or TypeVar sent by value carries an id, the same wherever it goes:
# an interpreter that has it already (it sent it, or loaded it before) uses
# its own, so that instances that come back, or came in two tasks, are of
# one class (isinstance, ``is`` for an enum's members).
_tracked = weakref.WeakValueDictionary()  # id -> class or TypeVar
_tracking_ids = weakref.WeakKeyDictionary()  # class or TypeVar -> id
_tracking_lock = threading.Lock()


def _tracking_id(obj):
    with _tracking_lock:
        if obj not in _tracking_ids:
            _tracking_ids[obj] = secrets.token_hex(16)
            _tracked[_tracking_ids[obj]] = obj
        return _tracking_ids[obj]


def _track(obj, tracking_id):
    """The object tracked under tracking_id if there is one, else obj, tracked."""
    with _tracking_lock:
        known = _tracked.get(tracking_id)
        if known is not None:
            return known, False
        _tracked[tracking_id] = obj
        _tracking_ids[obj] = tracking_id
        return obj, True


class _EmptyCell:
    """Stands for a closure cell with no value yet."""


_GLOBAL_OPS = {"LOAD_GLOBAL", "STORE_GLOBAL", "DELETE_GLOBAL", "LOAD_NAME"}


def _codes(code):
    """code and the code objects within it (its lambdas, comprehensions, ...)."""
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _codes(const)


def _global_names(code):
    """The global names code uses (not attribute names, which share co_names)."""
    return {op.argval for each in _codes(code) for op in dis.get_instructions(each)
            if op.opname in _GLOBAL_OPS}


def _submodules(code, values):
    """The submodules that code reaches through the attributes of modules
    among values, its globals and closure (``xml.etree.ElementTree.parse``
    with only ``import xml`` at hand): elsewhere, only their import puts
    them there."""
    roots = {value.__name__ for value in values if isinstance(value, types.ModuleType)}
    if not roots:
        return []
    attributes = set().union(*(each.co_names for each in _codes(code)))
    return sorted(name for name, module in list(sys.modules.items())
                  if "." in name and name.partition(".")[0] in roots and isinstance(
                      module, types.ModuleType) and _module_by_reference(module)
                  and set(name.split(".")[1:]) <= attributes)


def _reduce_function(func, namespace):
    cells = [c.cell_contents if _cell_filled(c) else _EmptyCell
             for c in func.__closure__ or ()]
    known = func.__globals__
    names = sorted(_global_names(func.__code__))
    found = {sys.intern(n): known[n] for n in names if n in known}
    # Relative imports in the function need its package.
    found.update((n, _interned(known[n])) for n in ("__package__", "__name__") if n in known)
    state = {
        "globals": found, "submodules": _submodules(func.__code__, list(found.values()) + cells),
        "defaults": func.__defaults__, "kwdefaults": func.__kwdefaults__,
        "closure": cells, "module": _interned(func.__module__),
        "dict": {sys.intern(k): _interned(v) for k, v in func.__dict__.items()},
        "qualname": _interned(func.__qualname__), "doc": func.__doc__,
        "annotations": func.__annotations__,
    }
    # Marshal's version 2 says the same of a code object each time (3 and 4
    # mark what is shared by reference counts) and interned names are one
    # object wherever they occur: a function pickles to the same bytes in
    # every process, so that caches keyed by a pickle's bytes work.
    args = (PY, marshal.dumps(func.__code__, 2), sys.intern(func.__name__), len(cells),
            namespace)
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
    return types.FunctionType(marshal.loads(code), namespace, name, None, cells or None)


def _fill_function(func, state):
    for closure in state.get("modules", ()):
        _use_sources(closure)
    for name in state.get("submodules", ()):
        importlib.import_module(name)
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
    func.__annotations__ = state.get("annotations", {})


def _reduce_class(cls):
    slots = vars(cls).get("__slots__", ())
    names = (slots,) if isinstance(slots, str) else tuple(slots)
    members = {}
    if isinstance(cls, enum.EnumMeta):
        members = {name: member._value_ for name, member in vars(cls)["_member_map_"].items()}
    # The metaclass makes these anew (ABCMeta's cache, for one), or made them.
    skip = {"__dict__", "__weakref__", "_abc_impl", "__doc__", "__slots__", "__orig_bases__",
            "__module__"}
    skip.update(names, members)
    if members:  # the enum's own tables, made anew with it
        skip.update(k for k, v in vars(cls).items() if k[:1] == k[-1:] == "_" and k[1:2] != "_"
                    and not isinstance(v, (types.FunctionType, classmethod, staticmethod)))
    attrs = {sys.intern(k): _interned(v) for k, v in sorted(vars(cls).items()) if k not in skip}
    if isinstance(cls, abc.ABCMeta) and hasattr(abc, "_get_dump"):
        registered = [ref() for ref in abc._get_dump(cls)[0]]
        attrs["_abc_registered"] = sorted(filter(None, registered), key=_class_key)
    # What the metaclass and bases look for as the class is made.
    namespace = {k: vars(cls)[k] for k in ("__slots__", "__orig_bases__") if k in vars(cls)}
    namespace["__doc__"] = cls.__doc__
    args = (type(cls), sys.intern(cls.__name__), sys.intern(cls.__qualname__),
            _interned(cls.__module__), cls.__bases__, namespace, members, _tracking_id(cls))
    return _make_class, args, attrs, None, None, _fill_class


def _interned(value):
    """value, interned if a str: one object wherever it is, so that pickle's
    memo makes the same bytes of it in every process (see _reduce_function)."""
    return sys.intern(value) if type(value) is str else value


def _class_key(cls):
    return cls.__module__, cls.__qualname__


_arrived = weakref.WeakSet()  # the classes _make_class made here


def _make_class(metaclass, name, qualname, module, bases, namespace, members=None,
                tracking_id=None):
    # Back home (a result on the client), a class is the client's own class,
    # so ``except MyError`` and isinstance() work.
    home = sys.modules.get(module)
    for part in qualname.split("."):
        home = getattr(home, part, None)
    if isinstance(home, type) and home.__name__ == name:
        return home
    known = _tracked.get(tracking_id)  # (weak: gone between a look and a get)
    if known is not None:
        return known
    prepared = metaclass.__prepare__(name, bases)
    for key, value in itertools.chain(  # one by one: an enum's _EnumDict counts them
            dict(namespace, __module__=module, __qualname__=qualname).items(),
            (members or {}).items()):
        prepared[key] = value
    cls = metaclass(name, bases, prepared)
    cls, new = _track(cls, tracking_id) if tracking_id else (cls, True)
    if new:
        _arrived.add(cls)
    return cls


def _fill_class(cls, attrs):
    # A class that came before is given what this payload says it has (its
    # methods with this task's globals: a worker keeps nothing of a task's
    # but its classes); one made here keeps what it has.
    if cls not in _arrived:
        return
    enum_made = isinstance(cls, enum.EnumMeta) and vars(cls)
    for key, value in attrs.items():
        if key == "_abc_registered":
            for registered in value:
                cls.register(registered)
        elif not (enum_made and key in enum_made):
            setattr(cls, key, value)


def _reduce_builtin_type(cls):
    """A type made in C is never sent by value: it is named by a module that
    has it (types.MappingProxyType for mappingproxy), or made from its one
    instance (NoneType)."""
    for single in (None, NotImplemented, Ellipsis):
        if cls is type(single):
            return type, (single,)
    place = _builtin_places().get(cls)
    if place is None:
        raise pickle.PicklingError(
            "the built-in type %s.%s is in no module that another interpreter could "
            "import it from" % (cls.__module__, cls.__qualname__))
    return _builtin_type, place


def _builtin_type(module, name):
    return getattr(importlib.import_module(module), name)


_PLACES = {}  # built-in type -> (module, name), once needed


def _builtin_places():
    if not _PLACES:
        for module in ("_collections_abc", "types", "builtins", "collections", "io",
                       "functools", "itertools", "weakref"):
            for name, value in sorted(vars(importlib.import_module(module)).items()):
                if isinstance(value, type) and not name.startswith("__"):
                    _PLACES.setdefault(value, (module, name))
    return _PLACES


def _reduce_module(module):
    if _module_by_reference(module):
        return _import_module, (module.__name__,)
    state = {k: v for k, v in sorted(vars(module).items()) if k != "__builtins__"}
    return _make_module, (module.__name__,), state


def _import_module(name):
    return importlib.import_module(name)


def _make_module(name):
    module = types.ModuleType(name)
    module.__builtins__ = builtins
    return module


def _reduce_typevar(var):
    if _importable(var):
        return NotImplemented
    return _make_typevar, (var.__name__, var.__bound__, var.__constraints__,
                           var.__covariant__, var.__contravariant__, _tracking_id(var))


def _make_typevar(name, bound, constraints, covariant, contravariant, tracking_id):
    import typing
    var = typing.TypeVar(name, *constraints, bound=bound, covariant=covariant,
                         contravariant=contravariant)
    return _track(var, tracking_id)[0]


def _reduce_cached(func):
    """A functools.lru_cache of a function sent by value: the cache made anew."""
    if _importable(func):
        return NotImplemented
    parameters = func.cache_parameters()
    return _make_cached, (func.__wrapped__, parameters["maxsize"], parameters["typed"])


def _make_cached(func, maxsize, typed):
    return functools.lru_cache(maxsize, typed)(func)


def _reduce_stream(stream):
    for name in ("stdout", "stderr", "stdin"):
        if stream is getattr(sys, name) or stream is getattr(sys, "__%s__" % name):
            return _std_stream, (name,)
    return NotImplemented  # pickle says it cannot pickle an open file


def _std_stream(name):
    return getattr(sys, name)


def _dict_view(view, mapping):
    return getattr(mapping, view)()


def _memoryview(data, format, shape):
    return memoryview(data).cast("B").cast(format, shape)


def _class_attribute(cls, name):
    return vars(cls)[name]


_REDUCERS = {}  # type -> how its objects are pickled, where pickle cannot


def _reducers():
    if _REDUCERS:
        return _REDUCERS
    import dataclasses
    import typing
    table = {
        types.ModuleType: _reduce_module, typing.TypeVar: _reduce_typevar,
        staticmethod: lambda f: (type(f), (f.__func__,)),
        classmethod: lambda f: (type(f), (f.__func__,)),
        property: lambda p: (type(p), (p.fget, p.fset, p.fdel, p.__doc__)),
        types.MappingProxyType: lambda m: (types.MappingProxyType, (dict(m),)),
        memoryview: lambda m: (_memoryview, (m.tobytes() if m.readonly else
                                             bytearray(m.tobytes()), m.format, m.shape)),
        types.GetSetDescriptorType: lambda d: (_class_attribute, (d.__objclass__, d.__name__)),
        types.MemberDescriptorType: lambda d: (_class_attribute, (d.__objclass__, d.__name__)),
        weakref.WeakSet: lambda s: (weakref.WeakSet, (list(s),)),
        types.MethodType: lambda m: (types.MethodType, (m.__func__, m.__self__)),
        functools._lru_cache_wrapper: _reduce_cached,
        dataclasses._FIELD_BASE: lambda f: (getattr, (dataclasses, f.name)),
    }
    for stream in (sys.stdout, sys.stderr, sys.stdin, sys.__stdout__):
        if isinstance(stream, io.TextIOWrapper):
            table.setdefault(type(stream), _reduce_stream)
    for mapping in (dict, collections.OrderedDict):
        table[type(mapping().keys())] = lambda v, m=mapping: (_dict_view, ("keys", m.fromkeys(v)))
        table[type(mapping().values())] = lambda v, m=mapping: (
            _dict_view, ("values", m(enumerate(v))))
        table[type(mapping().items())] = lambda v, m=mapping: (_dict_view, ("items", m(v)))
    _REDUCERS.update(table)
    return _REDUCERS


def _plain_reduce(cls):
    """True when cls pickles as BaseException does (no __reduce__ of its own)."""
    return not any(isinstance(getattr(cls, name, None), types.FunctionType)
                   for name in ("__reduce__", "__reduce_ex__"))


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE: a class made in Python, not a built-in one


def _exception(cls, args, state):
    """An exception of class cls, rebuilt from its args and state.

    No Python-level __init__ runs: one may need arguments that pickle loses
    (MyError(code, text) keeps only its args), and a result's must not run
    code. The C-level __new__ and __init__ of its nearest built-in base run
    instead (OSError's sets errno and filename).
    """
    if not (isinstance(cls, type) and issubclass(cls, BaseException)
            and type(args) is tuple and isinstance(state, (dict, type(None)))):
        raise TransferError("it rebuilds an exception from what is not one")
    base = next(c for c in cls.__mro__ if not c.__flags__ & _HEAPTYPE)
    error = base.__new__(cls, *args)
    base.__init__(error, *args)
    if state:
        BaseException.__setstate__(error, state)
    return error


def _lookup(module, name):
    """module's global name as pickle names it, found with no code run (no
    module __getattr__, property or import): a dotted name goes through
    classes only, and never through a dunder (__globals__, __builtins__)."""
    found = module if isinstance(module, types.ModuleType) else None
    for n, part in enumerate(name.split(".")):
        if found is None or part.startswith("__") or n and not isinstance(found, type):
            return None
        found = vars(found).get(part)
    return found


_INSTALLED = []  # where the standard library and installed packages are, once known


def _standard(name):
    """True when the module name is the standard library's."""
    top = name.partition(".")[0]
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return True
    if hasattr(sys, "stdlib_module_names"):
        return False
    # Python 3.9 has no list: a module of the standard library is beside os's.
    path = getattr(sys.modules.get(top), "__file__", None)
    home = os.path.join(os.path.realpath(os.path.dirname(os.__file__)), "")
    return isinstance(path, str) and "-packages" not in path and (
        os.path.realpath(path).startswith(home))


def _own_module(name):
    """The module name, if it is the client's own code: __main__, or a module
    already imported from neither the standard library nor an installed
    package (nor p2p.py itself)."""
    module = sys.modules.get(name)
    if not isinstance(module, types.ModuleType) or module is sys.modules.get(__name__):
        return None
    if name == "__main__":
        return module
    if _standard(name):
        return None
    path = vars(module).get("__file__")
    if not isinstance(path, str):
        return None
    if not _INSTALLED:
        import sysconfig  # the standard library's, named by no payload
        roots = {sysconfig.get_path(kind) for kind in ("stdlib", "platstdlib", "purelib",
                                                       "platlib")}
        roots.add(os.path.dirname(os.__file__))
        _INSTALLED[:] = [os.path.join(os.path.realpath(root), "") for root in roots if root]
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts or path.startswith(
            tuple(_INSTALLED)):
        return None
    return module


def _own_class(module, qualname):
    """The class module.qualname, if it is defined in the client's own code."""
    found = _lookup(_own_module(module), qualname)
    if (isinstance(found, type) and found.__module__ == module
            and found.__qualname__ == qualname):
        return found  # not another module's class it imported (from subprocess import Popen)
    return None


# The client's own modules travel as their source. One that it imported
# from its own files (see _own_module: the script's folder, a checkout on
# sys.path; or one named in send_modules) is pickled by name, with the
# versions (the digest of their source) of the modules it needs where it
# is loaded: itself, its packages, and the own modules it uses in turn.
# A source goes with a task only to a worker that has not had it yet (see
# _Client._assign); the worker keeps it, and its runners find it there
# (_SentModules).

_Source = collections.namedtuple("_Source", "name digest package text")
_sources = {}  # module name -> ((path, mtime, size), _Source) as last read
_NAMESPACE = b""  # the source of a package that is only a folder


def _source_of(name, extra):
    """The _Source of the module name, if it travels as its source: one of
    the program's own modules, or in a package named in extra."""
    module = sys.modules.get(name)
    spec = getattr(module, "__spec__", None)
    path = getattr(spec, "origin", None)
    if _runners_own(name) or not isinstance(path, str) or not path.endswith(".py") or (
            _own_module(name) is None and not any(
                name == e or name.startswith(e + ".") for e in extra)):
        return None
    try:
        status = os.stat(path)
        stamp = (path, status.st_mtime_ns, status.st_size)
        known = _sources.get(name)
        if known is not None and known[0] == stamp:
            return known[1]
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise P2PError("the module %s goes to workers as its source, and its file %s cannot "
                       "be read (%s): make it readable, or send modules by name alone "
                       "(Executor(send_modules=False), P2P_SEND_MODULES=0)"
                       % (name, path, exc.strerror or exc)) from None
    source = _Source(name, _digest(text), spec.submodule_search_locations is not None, text)
    _sources[name] = (stamp, source)
    return source


def _runners_own(name):
    """True for the modules a task runner has of its own, never sent: its
    __main__, the standard library and p2p.py."""
    return name == "__main__" or _standard(name) or name.partition(".")[0] == __name__


def _digest(text):
    return hashlib.sha256(text).hexdigest()[:32]


def _module_sources(name, extra=()):
    """The _Sources the module name needs sent, by name; none when it goes
    by name alone."""
    found, todo = {}, [(name, False)]
    while todo:
        each, parent = todo.pop()
        if each in found:
            continue
        source = _source_of(each, extra)
        if source is None:
            module = sys.modules.get(each)
            if not (parent and found and isinstance(module, types.ModuleType)
                    and getattr(module, "__file__", None) is None
                    and hasattr(module, "__path__")):
                continue
            source = _Source(each, _digest(_NAMESPACE), True, _NAMESPACE)
        found[each] = source
        if "." in each:
            todo.append((each.rpartition(".")[0], True))
        for value in list(vars(sys.modules[each]).values()):
            if isinstance(value, types.ModuleType):
                todo.append((value.__name__, False))
            else:
                owner = (vars(value).get("__module__") if isinstance(value, type) else
                         value.__module__ if isinstance(value, types.FunctionType) else None)
                if isinstance(owner, str):
                    todo.append((owner, False))
    return [found[each] for each in sorted(found)] if name in found else []


def _sent_global(closure, module, qualname):
    """module.qualname, its module found among those the client sent."""
    _use_sources(closure)
    found = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def _sent_module(closure, name):
    _use_sources(closure)
    return importlib.import_module(name)


def _use_sources(closure):
    if _sent is not None:  # in a runner; elsewhere modules come by name
        _sent.use(closure)


class _NotSent(P2PError):
    """A task names a version of a module that never reached its worker."""


class _SentModules:
    """A runner's finder (first on sys.meta_path) of the modules that the
    task at hand names, in the versions its client sent; the sources are
    kept in the worker's folder, one file per digest, for all its runners.
    Each task starts with none of them loaded: one client's ``helpers`` is
    never another's, nor the one the worker has installed."""

    def __init__(self, folder):
        self.folder = folder
        self.versions = {}  # module name -> (digest, package), for the task at hand
        self.displaced = {}  # name -> the runner's own module, set aside for the task

    def path(self, digest):
        return os.path.join(self.folder, digest + ".py")

    def sent(self, module):
        return str(getattr(module, "__file__", "")).startswith(os.path.join(self.folder, ""))

    def begin(self):
        """A new task: the last one's modules go, the runner's own come back."""
        self.versions.clear()
        for name, module in list(sys.modules.items()):
            if self.sent(module):
                del sys.modules[name]
        sys.modules.update(self.displaced)
        self.displaced.clear()

    def store(self, sources):
        """Keep sources ({digest: text}), each checked against its digest;
        the digests kept."""
        for digest, text in sources.items():
            if not isinstance(text, bytes) or _digest(text) != digest:
                raise P2PError("a module's source came without its digest: not used")
            if self.read(digest) is None:
                fd, temporary = tempfile.mkstemp(dir=self.folder)
                with os.fdopen(fd, "wb") as f:
                    f.write(text)
                os.replace(temporary, self.path(digest))
        return sorted(sources)

    def read(self, digest):
        """The source kept for digest, if it is there and is that version."""
        try:
            with open(self.path(digest), "rb") as f:
                text = f.read()
        except OSError:
            return None
        return text if _digest(text) == digest else None

    def use(self, closure):
        """From now on, these names are these versions: ((name, digest,
        package), ...). A module loaded in another version goes."""
        for name, digest, package in closure:
            if _runners_own(name) or not re.fullmatch(r"[0-9a-f]{32}", str(digest)):
                continue  # never in place of the runner's own
            self.versions[name] = (digest, package)
            loaded = sys.modules.get(name)
            if loaded is not None and getattr(loaded, "__file__", None) != self.path(digest):
                del sys.modules[name]
                if not self.sent(loaded):
                    self.displaced.setdefault(name, loaded)

    def find_spec(self, name, path=None, target=None):
        if name not in self.versions:
            return None
        digest, package = self.versions[name]
        if self.read(digest) is None:
            raise _NotSent("the module %s (version %s) never reached this worker"
                           % (name, digest))
        return importlib.util.spec_from_file_location(
            name, self.path(digest), submodule_search_locations=[] if package else None)


_sent = None  # a runner's _SentModules


def _home_class(module, qualname, tracking_id=None):
    """The client's own class module.qualname, as a worker's outcome names
    the classes that reached it by value: the one sent with the tracking id
    (see _tracked), a class of __main__ by name where none was."""
    found = _tracked.get(tracking_id) if isinstance(tracking_id, str) else None
    if not (isinstance(found, type) and found.__module__ == module
            and found.__qualname__ == qualname):
        found = _own_class(module, qualname)
    if found is None:
        raise TransferError("it holds a %s.%s, a class this program does not define"
                            % (_label(module), _label(qualname)))
    return found


def _label(text):
    """text from a payload, short, for a message (and not formatted: a str()
    of what a payload made could run code or take forever)."""
    return text[:100] if isinstance(text, str) else "?"


def _what(obj):
    """What obj is, for a message."""
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return "%s.%s" % (_label(obj.__module__), _label(obj.__qualname__))
    return "a %s" % type(obj).__qualname__


def _said(error):
    """What an exception says, when it says it in words."""
    text = error.args[0] if len(error.args) == 1 and isinstance(error.args[0], str) else ""
    return type(error).__name__ + (": " + text[:200] if text else "")


# A client loads a worker's outcome by an allow-list, so that a worker gone
# bad cannot make it run a command, read or write a file, or change its
# classes and settings. A payload may name, from modules already imported
# (none is imported for it): data types, error and warning classes, enums,
# the client's own classes (by name: a class sent by value is never built),
# numpy's arrays, whatever Config.allow lets in, and p2p.py's rebuilders;
# code sent by value is withheld. It is loaded by pickle's implementation in
# Python, whose opcodes can be vetted one by one: in the C one a BUILD sets
# attributes on whatever a payload names (a class, an enum member, numpy's
# dtypes) and constructors run unchecked. The price is speed with many small
# objects (several times slower; bytes and arrays load as fast), which
# trust=True buys back, for clusters whose members you all trust.
#
# Loading is bounded. Opcodes alone cost at most some 200 bytes of memory per
# byte of payload (an empty set per byte) and time linear in it; what could
# cost more is charged against a budget of max(4 x the payload, 1 MiB) items
# and bytes: constructors that allocate by an argument (bytes(n)), copy one
# that many calls share, or walk a range, numpy's arrays and scalars, and
# hashing keys (a tuple hashes its items anew each time: a key of n copies of
# one tuple of n costs n*n, and nesting that doubles per level). Parsing or
# converting more than _DIGITS digits (quadratic) is refused. NOT bounded:
# hash flooding (keys that all hash alike, as ints equal modulo 2**61 - 1 do,
# make filling one dict quadratic, at the opcode level), the client's own
# classes' code, and what the client does with a result afterwards (the repr
# of a tuple of shared parts). Where Python has no int_max_str_digits (before
# 3.9.14 and 3.10.7), protocol 0's INT, LONG, GET and PUT parse digits of any
# length, and str() of a huge int is quadratic.
_BUDGET_FLOOR = 1 << 20
_DIGITS = 4300  # CPython's default int_max_str_digits (3.11, 3.10.7, 3.9.14)
_DIGIT_BITS = _DIGITS * 10 // 3  # the bits of an int of about that many digits
_FLAT = frozenset({str, bytes, int, float, complex, bool, type(None)})  # hashed at once
_PATHS = "PurePath PurePosixPath PureWindowsPath Path PosixPath WindowsPath"
# The data types a result may hold, by module. Not zoneinfo's: they read files.
_VALUE_TYPES = {module: frozenset(names.split()) for module, names in {
    "builtins": "int float complex str bytes bytearray list tuple dict set frozenset bool "
                "slice range object",
    "datetime": "date time datetime timedelta timezone", "decimal": "Decimal",
    "fractions": "Fraction", "uuid": "UUID SafeUUID",
    "collections": "OrderedDict defaultdict deque Counter ChainMap",
    "pathlib": _PATHS, "pathlib._local": _PATHS,  # (Python 3.13 moved them)
    "types": "SimpleNamespace", "array": "array _array_reconstructor",
}.items()}
# How the arguments of a data type (or a subclass of it) are bounded, beyond
# being charged as copies: "size", an int that is a size to allocate;
# "digits", ints and digit strings parsed into ints; "keys", what is hashed;
# "text", only strs (no decoding, no __fspath__ or __str__ of an object).
_BOUNDS = {
    ("builtins", "bytes"): "size", ("builtins", "bytearray"): "size",
    ("builtins", "int"): "digits", ("decimal", "Decimal"): "digits",
    ("fractions", "Fraction"): "digits", ("builtins", "str"): "text",
    ("builtins", "set"): "keys", ("builtins", "frozenset"): "keys",
    ("builtins", "dict"): "keys", ("collections", "OrderedDict"): "keys",
    ("collections", "defaultdict"): "keys", ("collections", "Counter"): "keys",
    ("pathlib", "PurePath"): "text", ("pathlib._local", "PurePath"): "text",
}
# numpy's rebuilders, in numpy.core (numpy 1) or numpy._core (numpy 2).
_NUMPY_CALLS = {"_reconstruct": "multiarray", "scalar": "multiarray", "_frombuffer": "numeric"}
_LIST_PICKLE = 0x02  # NPY_LIST_PICKLE: a dtype whose arrays pickle their items as a list


class _Withheld:
    """Stands for code that came back in a result and was not loaded."""

    def __init__(self, what):
        self.what = what

    def __call__(self, *args, **kwargs):
        raise P2PError("%s came back from a worker as code, which p2p.py does not "
                       "load unless you trust the cluster: set P2P_TRUST=1 (or "
                       "Config(trust=True)) if you trust all its members"
                       % _label(self.what))

    def __repr__(self):
        return "<%s, withheld>" % _label(self.what)


def _enum_member(cls, name):
    """getattr(cls, name) as pickle_by_enum_name uses it: an enum's member only."""
    members = getattr(cls, "__members__", {}) if isinstance(cls, type) else {}
    if not isinstance(name, str) or name not in members:
        raise TransferError("it names builtins.getattr, which p2p.py does not load from a "
                            "worker but to find an enum's member")
    return members[name]


def _rebuilt_by_call(cls):
    """True when pickle rebuilds cls's instances by calling cls, as a class
    with a __reduce__ (its own or a base's) may ask. Pickle makes the others
    with cls.__new__ and gives them their state: so may a payload, which
    never calls their __init__ (Logger(path) opening a file it chose)."""
    return any(name in vars(c) for c in cls.__mro__[:-1]
               for name in ("__reduce__", "__reduce_ex__"))


def _numpy_canonical(np, dtype):
    """dtype made anew by numpy's own (checking) constructor from what it says it is."""
    if dtype.names is not None:
        fields = [dtype.fields[name] for name in dtype.names]
        return np.dtype({"names": list(dtype.names),
                         "formats": [_numpy_canonical(np, f[0]) for f in fields],
                         "offsets": [f[1] for f in fields],
                         "titles": [f[2] if len(f) > 2 else None for f in fields],
                         "itemsize": dtype.itemsize}, align=dtype.isalignedstruct)
    if dtype.subdtype is not None:
        return np.dtype((_numpy_canonical(np, dtype.subdtype[0]), dtype.subdtype[1]))
    return np.dtype(dtype.str)


def _sound_dtype(np, dtype):
    """True when dtype is what numpy makes of its description: a dtype's
    pickled state sets sizes, offsets and flags that numpy then trusts to
    read and write memory."""
    def facts(d):
        return d.str, d.itemsize, d.alignment, d.flags, d.isalignedstruct, d.hasobject
    made = _numpy_canonical(np, dtype)
    return made == dtype and facts(made) == facts(dtype)


class _ResultUnpickler(pickle._Unpickler):
    """Loads a worker's outcome by the allow-list above.

    allow: module names (a package and its modules) any global of which a
    result may name; size: the payload's size (default: what is left of file).
    """

    # p2p.py's rebuilders, as a result may use them: code sent by value is
    # withheld, a class sent by value is never built (no _make_class), nor
    # are the client's classes given attributes (no _fill_class).
    _REBUILDERS = {
        "_make_function": lambda py, code, name, ncells, namespace: _Withheld(
            "the function %s" % _label(name)),
        "_fill_function": lambda func, state: None,
        "_import_module": lambda name: _Withheld("the module %s" % _label(name)),
        "_EmptyCell": _EmptyCell, "_home_class": _home_class, "_exception": _exception,
    }

    def __init__(self, file, allow=(), size=None):
        super().__init__(file)
        import enum  # imported already (signal's enums); for Enum
        self.file = file
        self.allow = tuple(allow)
        if size is None:
            here = file.tell()
            size = file.seek(0, os.SEEK_END) - here
            file.seek(here)
        self.size = size
        self.budget = max(4 * size, _BUDGET_FLOOR)
        self.spent = 0
        self.handed = {}  # id -> (object, kind): what find_class handed out
        self.pending = {}  # id -> numpy dtype made here and not yet given its state
        self.enum = enum.Enum
        numpy = sys.modules.get("numpy")
        ready = isinstance(numpy, types.ModuleType) and all(
            isinstance(vars(numpy).get(name), type) for name in ("ndarray", "dtype", "generic"))
        self.np = numpy if ready else None

    def load(self):
        try:
            return super().load()
        except P2PError:
            raise
        except Exception as exc:  # a payload's any error is its own fault
            raise TransferError("it does not load: %s" % _said(exc)) from None

    # -- what a payload may name

    def find_class(self, module, name):
        found, kind = self._find(module, name)
        self.handed[id(found)] = found, kind
        return found

    def _find(self, module, name):
        if module == __name__:
            if name in self._REBUILDERS:
                return self._REBUILDERS[name], "rebuilder"
            found = _lookup(sys.modules[__name__], name)
            if isinstance(found, type) and issubclass(found, BaseException):
                return found, "exception"
            self._refuse(module, name, "a class sent by value; classes come back by name, "
                         "as this program defines them" if name == "_make_class"
                         else "p2p.py's own code")
        numpy = self._numpy_global(module, name)
        if numpy:
            return numpy
        if not isinstance(sys.modules.get(module), types.ModuleType):
            self._refuse(module, name, "not imported here")
        found = _lookup(sys.modules[module], name)
        if module == "builtins" and name == "getattr":
            return _enum_member, "rebuilder"  # the real one reaches anything
        if module == "builtins" and name in ("Ellipsis", "NotImplemented"):
            return found, "data"
        if module == "copyreg" and name == "_reconstructor" and found:
            return found, "reconstructor"
        if isinstance(found, type) and issubclass(found, self.enum):
            return found, "enum"  # from any module (uuid.SafeUUID, signal.Signals)
        if isinstance(found, self.enum):
            return found, "data"
        if name in _VALUE_TYPES.get(module, ()) and found is not None:
            return found, "value" if isinstance(found, type) else "rebuilder"
        if isinstance(found, type) and issubclass(found, BaseException):
            return found, "exception"  # from any module: rebuilt by _exception
        if found is not None and found is _own_class(module, name):
            return found, "own"
        if found is not None and any(module == allowed or module.startswith(allowed + ".")
                                     for allowed in self.allow):
            return found, "allowed"
        self._refuse(module, name, "not imported here" if found is None else
                     "not a data type, an error class or a class of this program")

    def _refuse(self, module, name, why):
        # The ways out: allowing a package (not the standard library's, nor
        # p2p.py, whose refused names run code), or trusting the cluster.
        package = module.partition(".")[0]
        allowable = package != __name__ and not _standard(package)
        raise TransferError(
            "it names %s.%s, which p2p.py does not load from a worker (%s): to load it "
            "anyway, %strust the cluster (trust=True or P2P_TRUST=1) if you trust all its "
            "members" % (_label(module), _label(name), why, "allow its package (Executor("
                         "allow=[%r]) or P2P_ALLOW=%s), or " % (_label(package),
                                                                 _label(package))
                         if allowable else ""))

    def _numpy_global(self, module, name):
        """(object, kind) for what numpy's pickles name, when numpy is imported."""
        np = self.np
        if np is None or module.partition(".")[0] != "numpy":
            return None
        if module == "numpy" and name in ("ndarray", "dtype"):
            return vars(np)[name], "numpy." + name
        if module == "numpy.dtypes" and name.endswith("DType"):
            found = _lookup(sys.modules.get("numpy.dtypes"), name)
            if isinstance(found, type) and issubclass(found, np.dtype):
                return found, "numpy.DType"
        home = _NUMPY_CALLS.get(name)
        if home and module in ("numpy.core." + home, "numpy._core." + home):
            # Either numpy's name, from a worker with either: this numpy's function.
            for package in ("numpy._core.", "numpy.core."):
                found = sys.modules.get(package + home)
                found = vars(found).get(name) if isinstance(found, types.ModuleType) else None
                if callable(found):
                    return found, "numpy." + name
        return None

    # -- what a payload may call

    def _call(self, func, args, kwargs, new):
        """func(*args, **kwargs), or func.__new__(func, ...) for NEWOBJ, if a
        payload may call func with these arguments."""
        if isinstance(func, _Withheld) and not new:
            func()  # raises: code came back
        named, kind = self.handed.get(id(func), (None, None))
        if named is not func:
            raise TransferError("it calls %s, which it did not name" % _what(func))
        if type(args) is not tuple or type(kwargs) is not dict or new and not isinstance(
                func, type):
            raise TransferError("it calls %s in a way pickle never does" % _what(func))
        self._charge(sum(self._weight(arg) for arg in args) + len(kwargs))
        if kind == "exception":
            if kwargs:
                raise TransferError("it calls %s with keywords" % _what(func))
            return _exception(func, args, None)
        if kind == "rebuilder":
            made = func.__new__(func, *args) if new else func(*args, **kwargs)
            if func is _home_class:
                self.handed[id(made)] = made, "own"
            return made
        if kind == "reconstructor":
            return self._reconstructor(func, *args)
        if kind.startswith("numpy"):
            return self._numpy_call(kind, func, args, kwargs)
        if kind == "enum":
            if len(args) != 1 or kwargs:
                raise TransferError("it calls the enum %s but to find a member" % _what(func))
            self._hashed(args)
            return func(*args)
        if kind == "own" and not new and not _rebuilt_by_call(func):
            raise TransferError("it calls %s, a class of this program that pickle makes "
                                "without calling it" % _what(func))
        if kind == "data":
            raise TransferError("it calls %s" % _what(func))
        if kind in ("value", "own"):
            self._bound(func, args, kwargs, kind == "own")
        return func.__new__(func, *args, **kwargs) if new else func(*args, **kwargs)

    def _bound(self, cls, args, kwargs, own):
        """Refuse arguments with which making a cls would cost more than the
        payload may (past copying them, which _call charges)."""
        base = next((c for c in cls.__mro__ if (c.__module__, c.__qualname__) in _BOUNDS),
                    None)
        if base is None:
            return
        key = base.__module__, base.__qualname__
        if own and (cls.__new__ is not base.__new__ or cls.__init__ is not base.__init__):
            return  # the class makes itself, with arguments of its own
        bound, values = _BOUNDS[key], args + tuple(kwargs.values())
        if bound == "size" and any(isinstance(value, str) for value in values):
            raise TransferError("it makes %s by encoding a str" % _what(cls))
        if bound == "size" and args and isinstance(args[0], int):
            self._charge(args[0])
        if bound == "text" and not all(isinstance(value, str) for value in values):
            raise TransferError("it makes %s of something else than text" % _what(cls))
        if bound == "keys":
            for value in values:
                if isinstance(value, (dict, list, tuple, set, frozenset)):
                    self._hashed(value)
        if bound == "digits":
            decimal = sys.modules.get("decimal")
            for value in values:
                if isinstance(value, int):
                    too_many = value.bit_length() > _DIGIT_BITS
                elif isinstance(value, (str, bytes, bytearray)):
                    # A Decimal keeps its digits; an int or a Fraction converts them,
                    # and a Fraction's exponent makes more (Fraction("1e999999999")).
                    too_many = key[0] != "decimal" and (len(value) > _DIGITS or (
                        key[0] == "fractions" and "e" in str(value).lower()))
                else:  # a Decimal's digits tuple, an int of a Decimal (int(Decimal("1e99999999")))
                    too_many = isinstance(value, (tuple, list)) or (
                        decimal is not None and isinstance(value, decimal.Decimal)
                        and key[0] != "decimal")
                if too_many:
                    raise TransferError("it makes %s of more digits than p2p.py converts"
                                        % _what(cls))

    def _reconstructor(self, func, cls=None, base=None, state=None):
        # copyreg's, for protocols 0 and 1: base.__new__(cls, state), base.__init__(...).
        kinds = [self.handed.get(id(c), (None, None))[1] for c in (cls, base)]
        if not (isinstance(cls, type) and isinstance(base, type) and issubclass(cls, base)
                and set(kinds) <= {"own", "value", "exception"}
                and (base is object or base.__module__ == "builtins")):
            raise TransferError("it calls copyreg._reconstructor with what it does not rebuild")
        if base is not object:
            self._bound(base, (state,), {}, False)
        return func(cls, base, state)

    def _numpy_call(self, kind, func, args, kwargs):
        np = self.np
        if kwargs or kind == "numpy.ndarray":
            raise TransferError("it calls %s in a way numpy's pickles never do" % _what(func))
        if kind == "numpy.dtype":  # dtype(name, align, copy), given its state by BUILD
            if not 1 <= len(args) <= 3 or not isinstance(args[0], (str, bytes)):
                raise TransferError("it makes a numpy dtype of something else than its name")
            made = np.dtype(args[0], args[1:2] == (True,), True)  # a copy: none numpy shares
            self.pending[id(made)] = made
            return made
        if kind == "numpy.DType":
            if not all(type(arg) in _FLAT for arg in args):
                raise TransferError("it makes a numpy dtype of something else than words")
            return func(*args)
        if kind == "numpy._reconstruct" and len(args) == 3:  # (cls, shape, dtype)
            cls, shape, dtype = args
            if not (isinstance(cls, type) and issubclass(cls, np.ndarray)
                    and id(cls) in self.handed):
                raise TransferError("it makes an array of what is not an array class")
            dtype = self._finished(dtype, names=True)
            self._charge(self._cells(shape) * dtype.itemsize)
            return func(cls, shape, dtype)
        if kind == "numpy.scalar" and len(args) in (1, 2):  # (dtype, its bytes)
            dtype = self._finished(args[0])
            if not dtype.hasobject and (len(args) != 2 or type(args[1]) is not bytes):
                raise TransferError("it makes a numpy scalar of what is not its bytes")
            self._charge(dtype.itemsize)
            return func(*args)
        if kind == "numpy._frombuffer" and len(args) in (4, 5):  # (buffer, dtype, shape, ...)
            if not isinstance(args[0], (bytes, bytearray)):
                raise TransferError("it makes an array of what is not a buffer")
            self._finished(args[1])
            self._cells(args[2])
            return func(*args)  # a view of the buffer, checked by numpy
        raise TransferError("it calls %s in a way numpy's pickles never do" % _what(func))

    def _finished(self, dtype, names=False):
        """dtype, a numpy dtype (or, with names, a dtype's name) with its state."""
        if names and isinstance(dtype, (str, bytes)):
            return self.np.dtype(dtype)
        if not isinstance(dtype, self.np.dtype) or id(dtype) in self.pending:
            raise TransferError("it uses a numpy dtype before it has its state")
        return dtype

    def _cells(self, shape):
        """How many items an array of shape holds."""
        shape = (shape,) if type(shape) is int else shape
        if type(shape) not in (tuple, list) or len(shape) > 64 or not all(
                type(n) is int and 0 <= n < 1 << 63 for n in shape):
            raise TransferError("it holds an array shape numpy never writes")
        cells = 1
        for n in shape:
            cells *= n
        return cells

    # -- what a payload may change

    def _shared(self, obj):
        """True for what lives beyond this load: classes, functions, modules,
        enum members, numpy's scalars and dtypes (but those it is making
        here), and whatever find_class handed out. No payload changes them."""
        if id(obj) in self.handed:
            return True
        if type(obj) in (list, dict, set):
            return False
        np = self.np
        return isinstance(obj, (type, types.ModuleType, types.FunctionType,
                                types.BuiltinFunctionType, types.MethodType, self.enum)) or (
            np is not None and (isinstance(obj, np.generic) or isinstance(obj, np.dtype)
                                and id(obj) not in self.pending))

    def _changes(self, obj):
        if self._shared(obj):
            raise TransferError("it changes %s, which is not its own to change" % _what(obj))

    def _array_state(self, array, state):
        np = self.np
        if type(array).__setstate__ is not np.ndarray.__setstate__:
            if self.handed.get(id(type(array)), (None, None))[1] != "allowed":
                raise TransferError("it gives an array of %s a state p2p.py cannot check"
                                    % _what(type(array)))
            return
        if type(state) is not tuple or len(state) not in (4, 5):
            raise TransferError("it holds an array state numpy never writes")
        shape, dtype, _, data = state[-4:]
        dtype = self._finished(dtype)
        cells = self._cells(shape)
        self._charge(cells * dtype.itemsize)
        if dtype.flags & _LIST_PICKLE:  # numpy reads that many items, unchecked
            if type(data) is not list or len(data) != cells:
                raise TransferError("it holds an array of objects whose items do not fit it")
        elif type(data) is not bytes or len(data) != cells * dtype.itemsize:
            raise TransferError("it holds an array whose bytes do not fit it")

    def _dtype_state(self, dtype, state):
        if id(dtype) not in self.pending:
            self._changes(dtype)
        self._unfinished(state)  # (this dtype too: no dtype holds itself)
        del self.pending[id(dtype)]
        pickle._Unpickler.load_build(self)
        try:
            sound = _sound_dtype(self.np, dtype)
        except Exception:  # numpy refuses its description (a field past the end...)
            sound = False
        if not sound:
            raise TransferError("it holds a numpy dtype that numpy itself would not make")

    def _unfinished(self, value, depth=4):
        """Refuse a numpy dtype without its state yet in value (a dtype's state)."""
        if isinstance(value, self.np.dtype) and id(value) in self.pending:
            raise TransferError("it uses a numpy dtype before it has its state")
        if depth and isinstance(value, (tuple, list, dict)):
            self._charge(len(value))
            for item in value.values() if isinstance(value, dict) else value:
                self._unfinished(item, depth - 1)

    # -- what a payload may cost

    def _charge(self, cost):
        self.spent += cost
        if self.spent > self.budget:
            raise TransferError("loading it would cost more than its %d bytes may" % self.size)

    def _weight(self, value):
        """What copying value makes, in items or bytes (a range: the ints it holds)."""
        np = self.np
        if np is not None and isinstance(value, np.ndarray):
            return value.size
        if isinstance(value, (str, bytes, bytearray, tuple, list, dict, set, frozenset, range)):
            try:
                return len(value)
            except OverflowError:  # a range of more than sys.maxsize ints
                return sys.maxsize
        return 0

    def _hashed(self, keys):
        """Charge the walk that hashing each key makes."""
        for key in keys:
            if type(key) in _FLAT:
                continue
            todo, left = [key], self.budget - self.spent
            while todo and left >= 0:
                item = todo.pop()
                left -= 2  # (an item costs more to hash than a byte to copy)
                if isinstance(item, (tuple, frozenset)):
                    todo.extend(item)
            self._charge(self.budget - self.spent - left)

    # -- pickle's opcodes, vetted (see pickle._Unpickler)

    dispatch = dict(pickle._Unpickler.dispatch)

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args, {}, False)
    dispatch[pickle.REDUCE[0]] = load_reduce

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, {}, True))
    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._call(cls, args, kwargs, True))
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def _instantiate(self, klass, args):  # for OBJ and INST (protocols 0 and 1)
        self.append(self._call(klass, tuple(args), {}, not args))

    def load_build(self):
        inst, state = self.stack[-2:]
        self._charge(sum(self._weight(part) for part in state) if type(state) is tuple
                     else self._weight(state))
        np = self.np
        if np is not None and isinstance(inst, np.dtype):
            return self._dtype_state(inst, state)
        self._changes(inst)
        if np is not None and isinstance(inst, np.ndarray):
            self._array_state(inst, state)
        pickle._Unpickler.load_build(self)
    dispatch[pickle.BUILD[0]] = load_build

    def load_append(self):
        self._changes(self.stack[-2])
        pickle._Unpickler.load_append(self)
    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        self._changes(self.metastack[-1][-1])
        pickle._Unpickler.load_appends(self)
    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self):
        self._changes(self.stack[-3])
        self._hashed(self.stack[-2:-1])
        pickle._Unpickler.load_setitem(self)
    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        self._changes(self.metastack[-1][-1])
        self._hashed(self.stack[::2])
        pickle._Unpickler.load_setitems(self)
    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        self._changes(self.metastack[-1][-1])
        self._hashed(self.stack)
        pickle._Unpickler.load_additems(self)
    dispatch[pickle.ADDITEMS[0]] = load_additems

    def load_dict(self):
        self._hashed(self.stack[::2])
        pickle._Unpickler.load_dict(self)
    dispatch[pickle.DICT[0]] = load_dict

    def load_frozenset(self):
        self._hashed(self.stack)
        pickle._Unpickler.load_frozenset(self)
    dispatch[pickle.FROZENSET[0]] = load_frozenset

    def load_bytearray8(self):
        # Python's pickle makes (zeroed) the bytearray a payload announces, then reads it.
        size = int.from_bytes(self.read(8), "little")
        if size > self.size:
            raise TransferError("it announces a bytearray larger than itself")
        data = bytearray(size)
        if self._unframer.current_frame:
            self.readinto(data)
        elif self.file.readinto(data) != size:  # a large one, read in place: not copied
            raise TransferError("it ends inside a bytearray")
        self.append(data)
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8


def _load(file, trust=False, allow=(), size=None):
    """Load a pickle from a peer: whole if trusted, else by the allow-list
    above (allow: more modules to load from; size: the payload's)."""
    if trust:
        return pickle.Unpickler(file).load()
    return _ResultUnpickler(file, allow, size).load()


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


def _tag(key, kind, to, fields):
    """What proves a line about a task came from one of its two peers, as they
    said it: a cluster key only proves it came from some member, who could end
    others' tasks, or put a tag heard on the board on a line of their own."""
    said = {name: fields.get(name, _DEFAULTS.get(name))
            for name in _MESSAGES[kind] if name != "tag"}
    return hmac.new(key, json.dumps([kind, to, said], sort_keys=True).encode(),
                    "sha256").hexdigest()[:32]


def _tagged(msg, key):
    return key is not None and hmac.compare_digest(msg["tag"], _tag(key, msg.kind, msg.to, msg))


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
        raise _Refused("it is not a sealed payload")
    nonce = head[len(_SEAL_MAGIC):]
    tag = hmac.new(mac_key, head, "sha256")
    number = 0
    while left:
        block = source.read(min(_BLOCK, left))
        if not block:
            raise _Refused("the sealed payload is cut short")
        tag.update(block)
        sink.write(_xor(cipher_key, nonce, number, block))
        left -= len(block)
        number += 1
    if not hmac.compare_digest(source.read(_TAG), tag.digest()):
        raise _Refused("its seal is broken: it was altered, or not sealed for us")


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
    EACH = 32  # of them from one sender process: no member crowds out the rest
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
            if which not in self._partial:
                sender = _process_of(msg["id"])
                theirs = [k for k in self._partial if _process_of(k[0]) == sender]
                if len(theirs) >= self.EACH:
                    del self._partial[min(theirs, key=lambda k: self._partial[k].since)]
                elif len(self._partial) >= self.MOST:
                    return None
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
    """Stop the transfer processes of a running list (see _wormhole), and
    reap them (those started ahead are watched by no one yet)."""
    for process in list(running):
        process.kill()
    for process in list(running):
        process.wait()


def _transfer_time(config, size):
    """Seconds a transfer of size bytes may take."""
    return config.timeout + size / 2e6


def _send_file(config, code, path, running=None):
    _wormhole(config, ["send", "--hide-progress", "--code", code,
                       os.path.basename(path)], os.path.dirname(path),
              _transfer_time(config, os.path.getsize(path)), running=running)


def _receive_file(config, code, name, size, folder, running=None):
    """Receive the file ``name`` of ``size`` bytes into an empty folder; its path."""
    try:
        _wormhole(config, ["receive", "--hide-progress", code], folder,
                  _transfer_time(config, size), answer=b"y\n", running=running,
                  max_file=size)
    except TransferError as exc:
        if "file too large" not in str(exc).lower():
            raise
        raise _Refused("the peer sent more than the %d bytes announced for %s"
                       % (size, name)) from None
    return _received(folder, name, size)


def _received(folder, name, size):
    """The path of what a receive brought, if it is the regular file announced."""
    path = os.path.join(folder, name)
    got = os.lstat(path) if os.listdir(folder) == [name] else None
    if got is None or not stat.S_ISREG(got.st_mode) or got.st_size != size:
        raise _Refused("the peer sent %s, not the file %s of %d bytes that was announced"
                       % (os.listdir(folder), name, size))
    return path


# -- transfer over ssh --------------------------------------------------------

# Where wormhole cannot go (a network that lets only ssh out, its servers
# down), a large payload goes through pico.sh itself: its sender runs
# ``pub TOPIC -p -a RECEIVER`` and its receiver ``sub TOPIC -p -a SENDER``.
# TOPIC comes from the payload's key, so only the two peers can know it: it
# is not even on ssh's command line, where ps would show it. It is public
# (-p) because pico.sh keeps a public topic's access list under one name
# for everyone: whichever of the two connects first stores a list naming
# the other, so the order they arrive in does not matter and neither
# access-list bug applies (in the sender's namespace, a receiver that came
# first would wait alone on a channel of its own). A stranger who learns
# TOPIC all the same once one of them is on it is denied; one there first
# would own it, and the two, shut out, fail and try again under a new task
# id. pub waits for its reader, which drains into a file as fast as bytes
# come: the channel has no one else to stall, and ssh's windows are its
# flow control. The stream is MAGIC, the sealed size (8 bytes), the sealed
# payload, END: a receiver takes exactly the size said on the board and
# then the end mark, so a payload cut short, one too long and stray bytes
# all fail, and the seal is checked as for any other transport.
_SSH_MAGIC = b"p2pS"
_SSH_END = b"p2pE"


def _ssh_topic(key):
    return "p2p-" + hmac.new(key, b"ssh topic", "sha256").hexdigest()[:32]


def _pubsub(config, verb, key, peer, held=False, ahead=None):
    """Start ``ssh HOST pub|sub TOPIC`` for a payload between us and peer (an
    id); held: a pub with pico.sh's status lines on its stdout. ahead: the
    one started ahead (see _ssh_ahead), taken instead while it runs."""
    if ahead is not None and ahead.poll() is None:
        return ahead
    user = _user_of(peer)
    if not re.fullmatch(_USER_NAME, user):  # a word of pico.sh's command line
        raise TransferError("the peer %r is not named by a pico.sh user" % peer[:80])
    pipes = {} if verb == "sub" else dict(
        stdin=subprocess.PIPE, stdout=subprocess.PIPE if held else subprocess.DEVNULL)
    process = _ssh(config, config.host, [verb, _ssh_topic(key), "-p", "-a", user] +
                   ["-c"] * (not held), unseen=True, **pipes)
    _widen(process.stdin if verb == "pub" else process.stdout)
    return process


_F_SETPIPE_SZ = 1031  # Linux's; fcntl names it from Python 3.10 on


def _widen(pipe):
    """Let a pipe to or from ssh hold a sealed block: we seal (or open) the
    next while ssh moves this one, not by turns (Linux; elsewhere as is)."""
    if fcntl is not None and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), _F_SETPIPE_SZ, _BLOCK)


def _ssh_ahead(config, verb, key, peer, running):
    """Start the pub (or sub) of a payload over ssh before the payload is
    there, for _send_over_ssh (or _receive_over_ssh) to take: its session is
    set up by then (a task's result, while the task runs); None if it
    cannot start (the transfer then starts its own, and says why it cannot)."""
    try:
        process = _pubsub(config, verb, key, peer)
    except (OSError, P2PError):
        return None
    running.append(process)
    return process


@contextlib.contextmanager
def _watched(process, timeout, running, stream=None, stall=None):
    """Run with process in running (see _wormhole), killed when timeout
    seconds pass or, given the _Counted stream it reads, when nothing came
    on it for stall seconds (the Event it gives is set then), and at the end."""
    expired, done = threading.Event(), threading.Event()
    deadline = time.monotonic() + timeout
    if process not in running:  # one started ahead is there already
        running.append(process)

    def watch():
        while not done.wait(min(1.0, timeout)):
            now = time.monotonic()
            if now > deadline or (stream is not None and now - stream.heard > stall):
                expired.set()
                process.kill()
                return

    threading.Thread(target=watch, daemon=True, name="p2p-watch").start()
    try:
        yield expired
    finally:
        done.set()
        process.kill()
        process.wait()
        with contextlib.suppress(ValueError):
            running.remove(process)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _send_over_ssh(config, key, path, peer, running, held=False, ahead=None):
    """Seal the file at path under key as it goes to peer over ssh; True when
    pico.sh took it all and ended the session (a reader came), though the
    receiver's word is what counts. held: not a byte of it before a reader
    is there (pico.sh's status line says so), so that none is left waiting
    in pico.sh when we give up. ahead: its pub, if one was started ahead."""
    size = os.path.getsize(path) + SEAL_OVERHEAD
    # Sealed on the way: while ssh sets up its session, not before.
    process = _pubsub(config, "pub", key, peer, held, ahead)
    with _watched(process, _transfer_time(config, size), running) as expired:
        try:
            while held and not process.stdout.readline().startswith(b"sending msg"):
                if process.poll() is not None:
                    raise OSError("the session ended before a reader came")
            with open(path, "rb") as source:
                process.stdin.write(_SSH_MAGIC + size.to_bytes(8, "big"))
                _seal_stream(key, source, process.stdin)
                process.stdin.write(_SSH_END)
                process.stdin.close()  # pico.sh ends the session once it is out
        except (OSError, ValueError):
            pass  # killed, or the session ended
        process.wait()
        # Its status lines go to stdout: anything on stderr is ssh failing.
        said = process.stderr.read(4096) if process.returncode >= 0 else b"killed"
    return not said and not expired.is_set()


class _Counted:
    """A pipe's reads, of as many bytes as asked (fewer at its end): how
    many came, and when the last did, also in the middle of a long read."""

    def __init__(self, source):
        self.source, self.got, self.heard = source, 0, time.monotonic()

    def read(self, size):
        chunks, left = [], size
        while left:
            chunk = self.source.read1(left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
            self.got, self.heard = self.got + len(chunk), time.monotonic()
        return b"".join(chunks)


def _receive_over_ssh(config, key, name, size, folder, peer, running, ahead=None):
    """Receive size sealed bytes from peer over ssh and open them, as they
    come, into the file name in folder; its path, or TransferError (nothing
    is left at the path then: its bytes count only once the seal checks).
    ahead: its sub, if one was started ahead."""
    # A peer that announces a large payload and sends nothing, or stops,
    # is given up on after P2P_TIMEOUT seconds of silence, whatever its size.
    timeout = _transfer_time(config, size)
    process = _pubsub(config, "sub", key, peer, ahead=ahead)
    stream, errors, path = _Counted(process.stdout), "", os.path.join(folder, name)
    with _watched(process, timeout, running, stream, config.timeout) as expired:
        head = stream.read(len(_SSH_MAGIC) + 8)
        said = int.from_bytes(head[len(_SSH_MAGIC):], "big")
        if head.startswith(_SSH_MAGIC) and len(head) == len(_SSH_MAGIC) + 8 and said == size:
            broken, end = None, b""
            try:
                with open(path, "wb") as sink:
                    _open_stream(key, stream, size, sink)
                end = stream.read(len(_SSH_END))
            except _Refused as exc:
                broken = exc
            got = stream.got - len(head) - len(end)
            if broken is not None or end != _SSH_END:
                with contextlib.suppress(OSError):
                    os.remove(path)
        elif not head:  # it ended: say why, if ssh said
            errors = process.stderr.read(4096).decode(errors="replace").strip()
    if not head and process is ahead and not expired.is_set():
        # Its session ended while it waited (pico.sh drops some): afresh.
        return _receive_over_ssh(config, key, name, size, folder, peer, running)
    if expired.is_set():
        raise TransferError("the payload did not come over ssh within %.3gs, or stopped "
                            "coming for %.3gs" % (timeout, config.timeout))
    if len(head) < len(_SSH_MAGIC) + 8:
        raise TransferError("the ssh transfer ended before the payload came%s" % (
            "; ssh said: " + errors[-300:] if errors else ""))
    if not head.startswith(_SSH_MAGIC):
        raise _Refused("what came over ssh is not a p2p.py payload")
    if said != size:
        raise _Refused("the board announced %d bytes and the ssh stream %d" % (size, said))
    if got < size:
        raise _Refused("the payload over ssh was cut short: %d of %d bytes came"
                       % (got, size))
    if broken is not None:
        raise broken
    if end != _SSH_END:
        raise _Refused("the payload over ssh is longer than the %d bytes announced" % size)
    return path


HAND_OVER_WAIT = 20.0  # seconds a receiver waits over ssh for what a code hands over
_TAKEN = b"taken"  # a receiver's answer to a hand-over


def _code_key(code, what="hand-over"):
    """The key that seals what is handed over with a one-time code (and the
    receiver's answer, what="answer by WAY")."""
    return hmac.new(code.encode(), b"p2p " + what.encode(), "sha256").digest()


def _first_of(ways, attempt):
    """Run attempt(way, running) for each way at once, each in a thread that
    puts its processes in running; the value of the first that succeeds (the
    others are stopped then), or TransferError saying what each ran into."""
    running, outcomes = [], queue.Queue()

    def run(way):
        try:
            outcomes.put((attempt(way, running), None))
        except (TransferError, OSError, P2PError) as exc:
            outcomes.put((None, "%s: %s" % (way, exc)))

    threads = [threading.Thread(target=run, args=(way,), daemon=True) for way in ways]
    for thread in threads:
        thread.start()
    failures = []
    try:
        while len(failures) < len(ways):
            value, error = outcomes.get()
            if error is None:
                return value
            failures.append(error)
    finally:
        for thread in threads:  # those still on their way: stopped, and gone
            _kill(running)
            thread.join(5.0)
    raise TransferError("; ".join(failures))


def _ways_here(config):
    """The ways a hand-over may take from this machine."""
    return ["ssh"] + ([] if _wormhole_blocked(config) else ["wormhole"])


def _hand_over(config, code, path, peer, timeout):
    """Send the file at path once, to whoever takes it with code, by wormhole
    and over ssh to the pico user peer at once (which of them their network
    lets through we cannot know); return once one of them has delivered it,
    or raise TransferError with what each said.

    Both ways carry it sealed under the code, and wormhole's own code comes
    from it: ps shows nothing that opens it. Neither way says who took it,
    so it counts as delivered only when its receiver answers over ssh,
    sealed under the code: a stranger who took the sealed bytes first has
    nothing, and no word of ours that bob joined.
    """
    patient, brief = copy.copy(config), copy.copy(config)
    patient.timeout, brief.timeout = timeout, HAND_OVER_WAIT
    folder = tempfile.mkdtemp(prefix="p2p-hand-over-")

    def send(way, running):
        here = os.path.join(folder, way)
        os.mkdir(here)
        if way == "wormhole":
            _send_payload(patient, way, _code_key(code), path,
                          os.path.join(here, os.path.basename(path)), peer + "@", running)
        elif not _send_over_ssh(patient, _code_key(code), path, peer + "@", running,
                                held=True):
            raise TransferError("ssh pub did not finish within %.0fs, or failed" % timeout)
        _receive_over_ssh(brief, _code_key(code, "answer by " + way), "answer",
                          len(_TAKEN) + SEAL_OVERHEAD, here, peer + "@", running)

    try:
        _first_of(_ways_here(config), send)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _take_over(config, code, name, size, folder, peer):
    """Receive the file name of size bytes that peer (a pico user) hands over
    with code (see _hand_over) into an empty folder, by whichever way comes
    first, and answer that it came; its path, or TransferError with what
    each way said."""
    # Its sender offers it before the code is out: it is there by now, or never.
    brief = copy.copy(config)
    brief.timeout = min(config.timeout, HAND_OVER_WAIT)

    def receive(way, running):
        into = os.path.join(folder, way)
        os.mkdir(into)
        got = _receive_payload(brief if way == "ssh" else config, way, _code_key(code),
                               name, size + SEAL_OVERHEAD, into, peer + "@", running)
        answer = os.path.join(into, "answer")
        with open(answer, "wb") as f:
            f.write(_TAKEN)
        _send_over_ssh(brief, _code_key(code, "answer by " + way), answer, peer + "@",
                       running)
        return got

    return _first_of(_ways_here(config), receive)


def _send_payload(config, via, key, path, sealed, peer, running, ahead=None):
    """Send the file at path, sealed under key, to peer (an id) over via
    ("wormhole" or "ssh"; wormhole sends a sealed copy, made at the path
    sealed, whose name the receiver expects); the receiver's word tells if
    it arrived. ahead: a pub started ahead (see _ssh_ahead), if any."""
    if via == "ssh":
        _send_over_ssh(config, key, path, peer, running, ahead=ahead)
    else:
        _seal_file(key, path, sealed)
        _send_file(config, _wormhole_code(key), sealed, running)


def _receive_payload(config, via, key, name, size, folder, peer, running, ahead=None):
    """Receive a payload of size sealed bytes from peer over via into an
    empty folder, and open it there; the path of what it holds, or
    TransferError (_Refused when what came was not as announced). ahead: a
    sub started ahead (see _ssh_ahead), if any."""
    if via == "ssh":
        return _receive_over_ssh(config, key, name + ".pkl", size, folder, peer, running,
                                 ahead)
    sealed = _receive_file(config, _wormhole_code(key), name, size, folder, running)
    _open_file(key, sealed, sealed + ".pkl")
    os.remove(sealed)
    return sealed + ".pkl"


# -- which transports work ----------------------------------------------------

PROBE_WAIT = 3.0  # seconds a look at the wormhole servers waits for each
PROBE_AGAIN = 300.0  # seconds after which a peer looks at them again
_MAILBOX = "ws://relay.magic-wormhole.io:4000/v1"  # wormhole's default mailbox
_TRANSIT = ("transit.magic-wormhole.io", 4001)  # wormhole-william's relay, fixed


def _wormhole_servers():
    """[(what, host, port)] of the servers wormhole needs, or P2PError."""
    url = urllib.parse.urlsplit(os.environ.get("WORMHOLE_RELAY_URL") or _MAILBOX)
    try:
        port = url.port or (443 if url.scheme == "wss" else 80)
    except ValueError:
        port = None
    if not url.hostname or port is None:
        raise P2PError("WORMHOLE_RELAY_URL is not a mailbox URL like ws://HOST:PORT/v1: "
                       "%r" % url.geturl())
    return [("the mailbox", url.hostname, port), ("the transit relay",) + _TRANSIT]


def _reach(host, port, wait):
    """Connect to host:port, or P2PError saying how it failed."""
    try:
        socket.create_connection((host, port), wait).close()
    except socket.timeout:
        raise P2PError("%s:%d does not answer within %gs (a firewall that drops "
                       "connections?)" % (host, port, wait)) from None
    except OSError as exc:
        raise P2PError("%s:%d cannot be reached (%s)" % (host, port, exc)) from None
    return "%s:%d accepts connections" % (host, port)


def _wormhole_blocked(config, wait=PROBE_WAIT):
    """Why wormhole cannot work from here, or None: its tool is there and its
    servers accept connections (looked at in parallel, wait seconds each)."""
    if _wormhole_path(config) is None:
        return "no wormhole tool is installed"
    try:
        servers = _wormhole_servers()
    except P2PError as exc:
        return str(exc)
    said = [None] * len(servers)

    def look(n, what, host, port):
        try:
            _reach(host, port, wait)
        except P2PError as exc:
            said[n] = "%s %s" % (what, exc)

    looks = [threading.Thread(target=look, args=(n,) + server, daemon=True)
             for n, server in enumerate(servers)]
    for thread in looks:
        thread.start()
    for thread in looks:
        thread.join(wait + 1.0)
    return "; ".join(filter(None, said)) or None


def _via(ours, theirs):
    """How a large payload goes between two peers that can use ours and
    theirs: the first of ours they can use too, else our first."""
    return next((way for way in ours if way in theirs), ours[0])


class _Transports:
    """The ways this process can move large payloads, as it learns them.

    ssh always works where the board does. Wormhole works while its tool is
    there and its servers accept connections, looked at when the process
    starts, after a wormhole transfer failed and every PROBE_AGAIN; and not
    after FAILURES of its transfers in a row failed with its servers up (a
    proxy that stalls it), until the next look. P2P_TRANSPORT forces one.

    Failures with one other pico user alone never count: a member gone bad
    who asks for transfers and never turns up would otherwise switch us to
    ssh for everyone, again and again. With our own user (a personal
    cluster's peers) they do.
    """

    FAILURES = 2

    def __init__(self, config, user):
        self.config = config
        self.user = user
        self.forced = None if config.transport == "auto" else config.transport
        self.why = None  # why wormhole is out, None while it is in
        self._failed_with = []  # the users of the peers of the failures in a row
        self._looked_at = 0.0
        self._looked = threading.Event()
        self._lock = threading.Lock()
        self._looking = False
        if self.forced:
            self._looked.set()
        else:
            self.look()

    def look(self):
        """Look at the wormhole servers again, in a thread of its own."""
        with self._lock:
            if self._looking:
                return
            self._looking = True
        threading.Thread(target=self._look, daemon=True, name="p2p-probe").start()

    def _look(self):
        why = _wormhole_blocked(self.config)
        with self._lock:
            self._looking, self._looked_at = False, time.monotonic()
            if why is None and self._out_by_failures():
                why = "%d wormhole transfers in a row failed" % len(self._failed_with)
            self._failed_with = [] if why else self._failed_with
            if why != self.why:
                log.info("wormhole: %s", "works" if why is None else "out (%s): large "
                         "payloads go over ssh" % why)
            self.why = why
        self._looked.set()

    def can(self):
        """The transports we can use, the one we prefer first."""
        if self.forced:
            return [self.forced]
        self._looked.wait(PROBE_WAIT + 2.0)  # only the first look is waited for
        if time.monotonic() - self._looked_at > PROBE_AGAIN:
            self.look()
        return ["ssh"] if self.why else list(_WAYS)

    def failed(self, peer):
        """A wormhole transfer with peer (an id) failed: look again (and count it)."""
        with self._lock:
            self._failed_with.append(_user_of(peer))
        self.look()

    def _out_by_failures(self):
        users = set(self._failed_with)
        return len(self._failed_with) >= self.FAILURES and (
            len(users) > 1 or users == {self.user})

    def worked(self):
        with self._lock:
            self._failed_with = []


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
    """Look for a wormhole tool; with none, offer to fetch one on a terminal.

    Without one, large payloads go over ssh; P2PError only when one is
    needed (P2P_TRANSPORT=wormhole), or P2P_WORMHOLE names one that is not
    there, or the one found does not run.
    """
    try:
        _wormhole_tool(config)
    except P2PError as exc:
        if _wormhole_path(config) is not None or config.wormhole:
            raise  # a tool that does not run, or not the one asked for
        if all(stream is not None and stream.isatty() for stream in (sys.stdin, sys.stderr)):
            sys.stderr.write("p2p: %s\np2p: download wormhole-william %s from GitHub into "
                             "%s now? [y/N] " % (exc, WORMHOLE_RELEASE, _data_dir()))
            sys.stderr.flush()
            if sys.stdin.readline().strip().lower() in ("y", "yes"):
                _install_wormhole()
                return
        if config.transport == "wormhole":
            raise


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
                if _sent is not None:
                    _sent.begin()
                with open(task_path, "rb") as f:
                    task = pickle.load(f)
                    if isinstance(task, dict):  # sources of modules, first
                        outcome["stored"] = _sent.store(task)
                        task = pickle.load(f)
                fn, args, kwargs = task
                outcome["value"] = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: B902 - a task's error is its result
                outcome["error"] = exc
                outcome["traceback"] = traceback.format_exc()
                # What its client may try again elsewhere, or with the sources.
                if isinstance(exc, _NotSent):
                    outcome["unsent"] = True
                elif isinstance(exc, ModuleNotFoundError) and isinstance(exc.name, str):
                    outcome["missing"] = exc.name
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
            _dump(outcome, f, home=True)
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
                   "stderr": stderr, "warnings": []}, home=True)[0]


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
                and all(isinstance(w, tuple) and len(w) == 4 and isinstance(w[0], str)
                        and isinstance(w[1], type) and issubclass(w[1], Warning)
                        and isinstance(w[2], str) and isinstance(w[3], int) for w in warned))

    if not shaped():
        raise TransferError("it is not the outcome of a task")
    return outcome


def _serve_tasks(modules):
    """A runner process: run tasks named on stdin, one at a time; modules:
    the folder of the sources that clients sent."""
    global _sent
    _sent = _SentModules(modules)
    sys.meta_path.insert(0, _sent)
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

    def __init__(self, modules):
        self.process = None
        self.modules = modules  # the folder of modules sent as source

    def ready(self):
        """Start the runner process, if it is not running."""
        if self.process is None or self.process.poll() is not None:
            # -c, not this file: the task's __main__ must be an empty module.
            path = [os.path.dirname(os.path.abspath(__file__))]
            path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import p2p; p2p._serve_tasks(%r)" % self.modules],
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

    def __init__(self, peer_id, modules):
        self.id = peer_id
        self.jobs = []  # in hand, in the order they run
        self.running = None  # the job its runner runs now
        self.queue = queue.Queue()  # jobs for its thread, None to end
        self.runner = _Runner(modules)

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
        self.via, self.client_can = msg["via"], msg["can"]  # the task's, and for its result
        self.folder = folder
        self.task_path = os.path.join(folder, "task.pkl")
        self.outcome_path = os.path.join(folder, "outcome.pkl")
        self.ready = threading.Event()  # its task is on disk, or failed to come
        self.failed = False
        self.abandoned = False
        self.transfers = []  # wormhole and ssh processes moving its payloads
        self.result_pub = None  # its result's ssh pub, if started ahead
        self.result = None  # once run: sealed bytes for the board, or a sealed file
        self.result_via = "board"
        self.said = 0.0  # when its result was last said
        self.repeats = 0  # times it was said
        self.since = time.monotonic()


class _Worker(_Member):
    """Takes tasks from clients on the board and runs them, DEPTH per slot."""

    role = "worker"

    def __init__(self, config, cluster, user, slots=1):
        super().__init__(config, cluster, user, _peer_id(user))
        self.scratch = tempfile.mkdtemp(prefix="p2p-worker-")
        modules = os.path.join(self.scratch, "modules")
        os.mkdir(modules)
        ids = ["%s#%d" % (self.id, n + 1) for n in range(slots)]
        self.slots = {slot_id: _Slot(slot_id, modules) for slot_id in ids}
        self.share = _KeyShare()
        self.transports = _Transports(config, user)
        # By (client id, task id): a task id is its client's to choose, and
        # another member who learns one must not take its place.
        self.jobs = {}  # (client, task) -> _Job
        self.assembly = _Assembly()
        self.done = 0
        self.seen = collections.deque(maxlen=10000)  # (client, task) assigned to us
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
        for slot in [only] if only else self.slots.values():
            if slot.free > 0:
                self.say("idle", id=slot.id, py=PY, dh=self.share.public, free=slot.free,
                         can=self.transports.can())
        self.announced = time.monotonic()

    def about(self):
        return {"slots": len(self.slots), "done": self.done, "can": self.transports.can(),
                "busy": sum(bool(slot.jobs) for slot in self.slots.values())}

    # What the board says to us.

    def _on_hello(self, msg):
        if msg["role"] == "client":
            self._announce()

    def _on_assign(self, msg):
        slot, task = self.slots.get(msg.to), msg["task"]
        key = (msg["id"], task)
        if slot is None or key in self.jobs or key in self.seen:
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
            elif msg["size"] > self.config.max_payload:
                why = ("the task is %d bytes, more than this worker takes (P2P_MAX_PAYLOAD"
                       "=%d)" % (msg["size"], self.config.max_payload))
            elif msg["py"] not in ("", PY):
                why = "this worker runs Python %s" % PY
            elif not msg["of"] and msg["via"] not in _WAYS:
                why = "it comes via %r, which this worker does not know" % msg["via"][:20]
        if why is not None:
            self._decline(msg["id"], slot, task, why,
                          root and _payload_key(root, task, b"lines"))
            return
        self.seen.append(key)
        job = self.jobs[key] = _Job(slot, msg, root, tempfile.mkdtemp(dir=self.scratch))
        slot.jobs.append(job)
        slot.queue.put(job)
        if sealed is None:
            threading.Thread(target=self._receive, args=(job,), daemon=True).start()
            if job.via == "ssh" == _via(self.transports.can(), job.client_can):
                # A large task's result is likely large too: while the task
                # comes and runs, the way back is set up (its client's too).
                job.result_pub = _ssh_ahead(self.config, "pub", job.result_key,
                                            job.client, job.transfers)
            return
        try:
            with open(job.task_path, "wb") as f:
                f.write(_open(job.task_key, sealed))
        except TransferError as exc:
            self._lost(job, exc)
        else:
            job.ready.set()

    def _on_took(self, msg):
        job = self.jobs.get((msg["id"], msg["task"]))
        if job is not None and job.result is not None and _tagged(msg, job.line_key):
            self._forget(job)

    def _on_again(self, msg):
        job = self.jobs.get((msg["id"], msg["task"]))
        if job is not None and isinstance(job.result, bytes) and _tagged(msg, job.line_key):
            self._say_result(job, _missing(msg))

    def _on_withdraw(self, msg):
        job = self.jobs.get((msg["id"], msg["task"]))
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
            self.say("alive", id=self.id, held=sorted(task for _, task in self.jobs))
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
            if slot is None or (first["id"], task) in self.jobs or (
                    first["id"], task) in self.seen:
                continue
            try:
                key = _payload_key(self.share.root(first["dh"], self.salt), task, b"lines")
            except P2PError:
                continue
            self.say("again", to=first["id"], id=slot.id, task=task, missing=missing,
                     pair=key)
        if now - self.announced >= IDLE_EVERY:
            self._announce()

    # The life of a job.

    def _receive(self, job):
        """Receive a task by wormhole or ssh (in a thread of its own)."""
        try:
            got = _receive_payload(self.config, job.via, job.task_key, "task", job.size,
                                   job.folder, job.client, job.transfers)
            os.replace(got, job.task_path)
        except (TransferError, OSError) as exc:
            if job.via == "wormhole" and not job.abandoned and not isinstance(exc, _Refused):
                self.transports.failed(job.client)
            self.post(self._lost, job, exc)
        else:
            if job.via == "wormhole":
                self.transports.worked()
            job.ready.set()

    def _lost(self, job, why):
        if job.abandoned or job.failed:
            return
        job.failed = True
        job.ready.set()
        what = _REFUSED_TASK if isinstance(why, _Refused) else _LOST_TASK
        log.warning("task %s from %s: %s: %s", job.id, job.client, what, why)
        # The receiver's word is final: the client tries again.
        self._decline(job.client, job.slot, job.id, "%s: %s" % (what, why), job.line_key)
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
        """Bytes to say on the board, sealed, or the path of a larger outcome
        (sealed as it is sent)."""
        if os.path.getsize(job.outcome_path) + SEAL_OVERHEAD > BOARD_MAX:
            return job.outcome_path
        with open(job.outcome_path, "rb") as f:
            return _seal(job.result_key, f.read())

    def _ran(self, job, result):
        job.slot.running = None
        if job.abandoned:
            return
        job.slot.jobs.remove(job)
        job.result = result
        self.done += 1
        log.info("task %s from %s: done in %.2fs", job.id, job.client,
                 time.monotonic() - job.since)
        if not isinstance(result, bytes):
            job.result_via = _via(self.transports.can(), job.client_can)
            threading.Thread(target=self._send_result, args=(job,), daemon=True).start()
        self._say_result(job)

    def _decline(self, client, slot, task, why, line_key):
        # Without a line key (their share did not check) it goes untagged.
        self.say("decline", to=client, id=slot.id, task=task, why=why, tag="", pair=line_key)

    def _say_result(self, job, only=None):
        """Say the job's result on the board (only these pieces, if given)."""
        job.said = time.monotonic()
        job.repeats += 1
        fields = dict(to=job.client, id=job.slot.id, task=job.id, free=job.slot.free,
                      pair=job.line_key, via=job.result_via)
        sealed = job.result
        self.say_payload("result", sealed if isinstance(sealed, bytes) else
                         os.path.getsize(sealed) + SEAL_OVERHEAD, only, **fields)

    def _send_result(self, job):
        try:
            _send_payload(self.config, job.result_via, job.result_key, job.result,
                          os.path.join(job.folder, "result"), job.client, job.transfers,
                          job.result_pub)
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
        if self.jobs.get((job.client, job.id)) is job:
            del self.jobs[job.client, job.id]
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

    def stop(self):
        self.stopped.set()
        self.leave()
        self.spare.close()
        for slot in self.slots.values():
            slot.queue.put(None)
            slot.runner.stop()
        for job in list(self.jobs.values()):
            _kill(job.transfers)  # their ssh and wormhole processes would outlive us
        shutil.rmtree(self.scratch, ignore_errors=True)


# -- client / executor --------------------------------------------------------

class _TaskFuture(concurrent.futures.Future):
    """A Future that replays the task's output when its outcome is read."""

    def __init__(self):
        super().__init__()
        self._replay = None
        self._waiting = None  # why no worker there can take it, when none can

    def result(self, timeout=None):
        try:
            return super().result(timeout)
        except KeyboardInterrupt:
            global _interrupted
            _interrupted = True  # Ctrl-C while waiting: withdraw at exit
            raise
        except concurrent.futures.TimeoutError:
            self._explain_timeout()
            raise
        finally:
            self._replay_output()

    def exception(self, timeout=None):
        try:
            return super().exception(timeout)
        except concurrent.futures.TimeoutError:
            self._explain_timeout()
            raise
        finally:
            self._replay_output()

    def _explain_timeout(self):
        why = self._waiting
        if why:
            raise concurrent.futures.TimeoutError(why[0].upper() + why[1:]) from None

    def _replay_output(self):
        with self._condition:
            replay, self._replay = self._replay, None
        if replay:
            sys.stdout.write(replay["stdout"])
            sys.stderr.write(replay["stderr"])
            # A warning is shown with its line of source, which linecache reads
            # from the file it names: a worker names it, so only the client's
            # own script is read; another name goes in <...>, which linecache
            # never opens (a worker gone bad would name /etc/passwd, or
            # /dev/zero). Its class's __init__ does not run (see _exception).
            script = getattr(sys.modules.get("__main__"), "__file__", None)
            for message, category, filename, lineno in replay["warnings"]:
                if filename != script:
                    filename = "<worker: %s>" % filename
                warnings.warn_explicit(_exception(category, (message,), None), category,
                                       filename, lineno if 0 < lineno < 1 << 31 else 0)


# A task's states on its client, and where each may go next: the one place
# that says what can happen to a task.
_MOVES = {
    "queued": ("assigned", "cancelled", "failed"),  # waiting for a worker slot
    "assigned": ("queued", "receiving", "failed", "cancelled"),  # a slot has it
    "receiving": ("queued", "done", "failed", "cancelled"),  # its result is coming
    "done": (), "failed": (), "cancelled": (),
}


class _Task:
    def __init__(self, path, pickler, future):
        self.path = path  # the pickled call, kept on disk for the tries it may take
        self.size = os.path.getsize(path)
        self.py = PY if pickler.by_value else ""
        self.sources = pickler.sources  # digest -> _Source of the modules it sends
        self.needs = set(pickler.needs)  # top-level modules it names (and lacked)
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
        self.via = None  # how its payload goes to that slot: board, wormhole or ssh
        self.carried = ()  # digests of the sources that go with it to that slot
        self.sent_size = self.size  # the size of what goes
        self.payload = path  # what goes to that slot: the call, after those sources
        self.avoid = set()  # transports that failed it: its next tries go another way
        self.said_unknown = False  # a worker said it lacks our key share (once is free)
        self.transfers = []  # its wormhole and ssh processes, to stop when it moves on
        self.result_sub = None  # its result's ssh sub, if started ahead
        self.failures = []  # why earlier tries failed
        self.failed_on = set()  # the machines of those tries
        self.lacked = []  # (module, slot): the workers that did not have a module
        self.worker = None  # (process, key share) of its slot
        self.sent_again = False  # its slot said it never got the sources: sent again

    def carry(self, sources, folder):
        """What goes to a slot: the call, after sources ({digest: text}) if
        any; its bytes if it is small enough for the board, else None (it
        goes from self.payload)."""
        prefix = pickle.dumps(sources, pickle.HIGHEST_PROTOCOL) if sources else b""
        self.carried = tuple(sources)
        self.sent_size = len(prefix) + self.size
        if self.sent_size + SEAL_OVERHEAD <= BOARD_MAX:
            with open(self.path, "rb") as f:
                return prefix + f.read()
        self.payload = self.path
        if prefix:  # to the first worker of a large task; others get the plain one
            self.payload = os.path.join(folder, "with-modules-" + os.path.basename(self.path))
            with open(self.payload, "wb") as f, open(self.path, "rb") as call:
                f.write(prefix)
                shutil.copyfileobj(call, f, 1 << 20)
        return None

    def move(self, state):
        if state not in _MOVES[self.state]:
            raise AssertionError("task %s cannot go from %s to %s"
                                 % (self.id, self.state, state))
        self.state = state


class _SlotView:
    """A worker slot as a client knows it from the board."""

    def __init__(self, py, dh, free, can):
        self.py, self.dh, self.free, self.can = py, dh, free, can
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


def _named_by(task, module):
    """True when module, which a worker says it lacks, is one that the task
    names and that this program has: then another worker may have it."""
    top = module.partition(".")[0]
    return (len(module) <= 200 and top in task.needs
            and isinstance(sys.modules.get(top), types.ModuleType))


class _Client(_Member):
    """The client side of an Executor: assigns tasks to worker slots."""

    RESEND_AFTER = ALIVE_EVERY + 2.0  # a worker silent since an assignment: say it again
    RESENDS = 2  # then it counts as not arrived

    def __init__(self, config, cluster, user, retries=RETRIES, board=None, max_workers=None):
        super().__init__(config, cluster, user, _peer_id(user))
        if board is not None:
            self.board, self.inbox, self._preconnected = board, board.inbox, True
        self.retries = retries
        self.max_workers = max_workers  # tasks of ours that may run at once (None: any)
        self.share = _KeyShare()
        self.transports = _Transports(config, user)
        self.scratch = tempfile.mkdtemp(prefix="p2p-client-")
        self.slots = {}  # worker slot id -> _SlotView
        self.queue = collections.deque()  # queued tasks
        self.tasks = {}  # task id -> _Task, assigned or receiving
        self.assembly = _Assembly()
        # Workers by (process, key share): one who poses as a slot of
        # another's process, with a share of her own, is another worker.
        self.known_to = set()  # workers that have our key share
        self.modules_at = collections.defaultdict(set)  # worker -> digests it keeps
        self.lacking = {}  # worker -> the modules it has not
        self.explained = set()  # why tasks wait, as said on stderr
        self.heard_a_worker = threading.Event()
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
        self.heard_a_worker.wait(WORKERS_WAIT)

    def put(self, task):
        with self.lock:  # queued now: shutdown() counts it among the unfinished
            self.queue.append(task)
        self.post(self._dispatch)

    def about(self):
        return {"queued": len(self.queue), "running": len(self.tasks),
                "can": self.transports.can()}

    # What the board says to us.

    def _on_idle(self, msg):
        known = self.slots.get(msg["id"])
        if known is not None and known.dh != msg["dh"]:
            return  # a worker's share is its for life: this is someone posing as it
        if known is None:
            known = self.slots[msg["id"]] = _SlotView(msg["py"], msg["dh"], 0, [])
            self.heard_a_worker.set()
        known.free, known.can = min(msg["free"], DEPTH), msg["can"]
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
        self.known_to.add(task.worker)  # its tag proves it has our share
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
        elif msg["size"] > self.config.max_payload:
            self._say_took(task)  # so that it stops saying it: we will not take it
            self._end(task, "failed", error=TransferError(
                "the result of task %s from %s is %d bytes, more than this client takes "
                "(P2P_MAX_PAYLOAD=%d): raise it, or return less" % (
                    task.id, task.slot, msg["size"], self.config.max_payload)))
        elif msg["via"] not in _WAYS:
            self._retry(task, "its result was to come via %r, which we do not know"
                        % msg["via"][:20])
        else:
            task.move("receiving")
            threading.Thread(target=self._receive_result,
                             args=(task, msg["size"], msg["via"]), daemon=True).start()
        self._dispatch()

    def _say_took(self, task):
        self.say("took", to=task.slot, id=self.id, task=task.id, pair=task.keys[2])

    def _say_withdraw(self, task):
        self.say("withdraw", to=task.slot, id=self.id, task=task.id, pair=task.keys[2])

    def _on_decline(self, msg):
        task = self.tasks.get(msg["task"])
        if task is not None and task.slot == msg["id"] and msg["why"] == _UNKNOWN_SHARE:
            # It cannot tag this, nor can it have run the task: say all of it
            # again, share and all, once (anyone could say this, again and
            # again: a worker that has our share now never says it twice).
            if not task.said_unknown:
                task.said_unknown = True
                self.known_to.discard(task.worker)
                self._retry(task, msg["why"], failed=False)
            return
        if task is None or task.slot != msg["id"] or not _tagged(msg, task.keys[2]):
            return  # not an answer from the slot this task was assigned to
        if msg["why"] == "busy" and msg["id"] in self.slots:
            self.slots[msg["id"]].free = 0
        # Only a transfer that failed may go another way; one that brought
        # something else (_REFUSED_TASK) counts as failed, as does a stop.
        lost = msg["why"].startswith(_LOST_TASK)
        failed = (lost or msg["why"].startswith((_REFUSED_TASK, "stopped:"))) and not (
            lost and self._switch(task, task.via, msg["why"]))
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
                         pair=task.keys[2])
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
        if not self.queue:
            return
        # What a slot last said of its room misses our tasks still on their
        # way to it: we never hold more than DEPTH there ourselves.
        mine = collections.Counter(t.slot for t in self.tasks.values()
                                   if t.state == "assigned")

        def space(slot, view):
            return min(view.free, (DEPTH if view.quick else 1) - mine[slot])

        for task in list(self.queue):
            if self.max_workers is not None and len(self.tasks) >= self.max_workers:
                return
            room = {s: (v.py, space(s, v)) for s, v in self.slots.items() if space(s, v) > 0}
            if not room:
                return
            slot = _pick(task.py, task.failed_on, {s: r for s, r in room.items()
                                                   if not self._lacks_for(s, task)})
            if slot is None:
                self._unfit(task)
                continue  # later tasks may go
            task.future._waiting = None
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

    def _worker(self, slot):
        return _process_of(slot), self.slots[slot].dh

    def _lacks_for(self, slot, task):
        """The modules the task needs that the slot's worker has not."""
        return self.lacking.get(self._worker(slot), set()) & task.needs

    def _unfit(self, task):
        """No slot with room can take the task. Should none of those there
        ever take it, fail it when they lack a module it needs; else say
        why it waits (once on stderr, and to a TimeoutError of its future)."""
        runs = [s for s, view in self.slots.items() if task.py in ("", view.py)]
        if any(not self._lacks_for(s, task) for s in runs):
            return  # its turn comes
        if runs:
            lacked = set().union(*(self._lacks_for(s, task) for s in runs))
            self._end(task, "failed", error=_NoWorkerHas(
                "the task needs the module%s %s, which no worker of %s has (%s): install it "
                "where a worker runs and start that worker again, or start a worker that has "
                "it" % ("s" * (len(lacked) > 1), ", ".join(sorted(lacked)),
                        self.cluster, "; ".join(sorted({
                            "%s lacks %s" % (_machine_of(s), ", ".join(sorted(
                                self._lacks_for(s, task)))) for s in runs}))),
                name=min(lacked)))
            return
        why = ("a task waits for a worker on Python %s (its code goes by value, and "
               "Python's code differs between versions), and the workers here run %s: start "
               "a worker with Python %s, or define the function in a module that the "
               "workers can import" % (task.py, ", ".join(sorted({
                   "%s (%s)" % (_label(view.py)[:12] or "?", _machine_of(s))
                   for s, view in self.slots.items()})), task.py))
        task.future._waiting = why
        if why not in self.explained and len(self.explained) < 100:
            self.explained.add(why)
            log.warning("%s", why)

    def _ours(self, task):
        """The transports we can use for a task, the one we prefer first."""
        can = self.transports.can()
        return [way for way in can if way not in task.avoid] or can

    def _switch(self, task, via, why):
        """A transfer of the task over via failed (why): if it can go another
        way instead, it will, and True (that try does not count as failed)."""
        if via != "wormhole" or via in task.avoid or self.transports.forced:
            return False
        task.avoid.add(via)
        log.warning("task %s on worker %s: %s; trying it over ssh", task.id, task.slot, why)
        return True

    def _assign(self, task, slot, root):
        task.move("assigned")
        task.id, task.slot = secrets.token_hex(8), slot
        task.worker = self._worker(slot)
        task.keys = tuple(_payload_key(root, task.id, what)
                          for what in (b"task", b"result", b"lines"))
        task.assigned_at = task.said_at = time.monotonic()
        task.resent = 0
        self.tasks[task.id] = task
        self.slots[slot].free -= 1
        had = self.modules_at[task.worker]
        small = task.carry({digest: source.text for digest, source in task.sources.items()
                               if digest not in had}, self.scratch)
        if small is not None:
            task.via = "board"
            task.sealed = _seal(task.keys[0], small)
        else:
            task.via = _via(self._ours(task), self.slots[slot].can)
            task.sealed = None
            threading.Thread(target=self._send_task, args=(task, task.id),
                             daemon=True).start()
        # Its worker starts the other end (see _Worker._on_assign).
        task.result_sub = (_ssh_ahead(self.config, "sub", task.keys[1], slot, task.transfers)
                           if task.via == "ssh" else None)
        self._say_assign(task)

    def _say_assign(self, task, only=None):
        """Say the task's assignment on the board (only these pieces, if given)."""
        known = task.worker in self.known_to
        fields = dict(to=task.slot, id=self.id, task=task.id, py=task.py, via=task.via,
                      can=self._ours(task),
                      dh=self.share.fingerprint if known else self.share.public)
        self.say_payload("assign", task.sent_size + SEAL_OVERHEAD if task.sealed is None
                         else task.sealed, only, **fields)

    def _resend(self, task):
        if task.resent >= self.RESENDS:
            heard = self.heard.get(_process_of(task.slot), 0.0)
            if heard < task.assigned_at:  # not a word since: the worker is gone
                self._retry(task, "lost (silent for %.0fs)" % (time.monotonic() - heard),
                            error=WorkerLost)
            else:
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
        for path in {task.path, task.payload}:
            with contextlib.suppress(OSError):
                os.remove(path)
        self.outcomes.put((self._set, task.future, value, error))

    def _send_task(self, task, try_id):
        """Send the task, sealed (in its own thread)."""
        folder = tempfile.mkdtemp(dir=self.scratch)
        try:
            if task.id == try_id and task.state == "assigned":
                _send_payload(self.config, task.via, task.keys[0], task.payload,
                              os.path.join(folder, "task"), task.slot, task.transfers)
        except TransferError as exc:
            if task.id == try_id and task.via == "wormhole" and not isinstance(exc, _Refused):
                self.transports.failed(task.slot)  # what we saw, not a worker's word
            log.debug("sending task %s: %s (the worker's answer decides)", try_id, exc)
        except (OSError, P2PError) as exc:
            self.post(self._retry, task, "cannot send the task: %s" % exc)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _receive_result(self, task, size, via):
        folder = tempfile.mkdtemp(dir=self.scratch)
        try:
            got = _receive_payload(self.config, via, task.keys[1], "result", size,
                                   folder, task.slot, task.transfers, task.result_sub)
        except TransferError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            self.post(self._result_lost, task, via, exc)
            return
        if via == "wormhole":
            self.transports.worked()
        self.outcomes.put((self._load_result, task, got))

    def _result_lost(self, task, via, error):
        if self.tasks.get(task.id) is task:
            if isinstance(error, _Refused):  # a forgery, or damage: never unpickled
                self._retry(task, "its result was refused: %s" % error)
                return
            why = "the result did not arrive: %s" % error
            if via == "wormhole":
                self.transports.failed(task.slot)
            self._retry(task, why, failed=not self._switch(task, via, why))

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
            item = None  # not held while we wait: a result handed out is the user's

    def _load_result(self, task, payload):
        """Load a result (sealed bytes from the board, or the path of one
        opened as it came), then end its task."""
        folder = None if isinstance(payload, bytes) else os.path.dirname(payload)
        try:
            try:
                if folder is None:
                    data = _open(task.keys[1], payload)
                    size, source = len(data), io.BytesIO(data)
                else:  # from the file: a large result is read once
                    size, source = os.path.getsize(payload), open(payload, "rb")
            except TransferError as exc:  # a forgery, or damage: never unpickled
                self.post(self._retry, task, "its result was refused: %s" % exc)
                return
            try:
                with source:
                    outcome = _checked_outcome(_load(source, self.config.trust,
                                                     self.config.allow, size))
            except Exception as exc:  # a broken payload fails its task, not the client
                why = "the result of task %s from %s was refused: %s" % (task.id, task.slot,
                                                                       exc)
                log.warning("%s", why)
                self.post(self._end_if, task, "receiving", "failed", None, TransferError(why))
                return
        finally:
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        if outcome.get("unsent") is True and not task.sent_again:
            self.post(self._never_got, task)
            return
        missing = outcome.get("missing")
        if isinstance(missing, str) and _named_by(task, missing):
            # The worker lacks what we have: another worker may have it.
            self.post(self._lacks, task, missing)
            return
        stored = outcome.get("stored")
        if isinstance(stored, list):
            self.post(self._kept, task, stored)
        task.future._replay = outcome
        error = outcome.get("error")
        if error is not None and outcome.get("traceback"):
            error.__cause__ = _RemoteTraceback(
                "\n\"\"\"\n%s\"\"\" (on worker %s)" % (outcome["traceback"], task.slot))
        self.post(self._end_if, task, "receiving", "failed" if "error" in outcome
                  else "done", outcome.get("value"), error)

    def _kept(self, task, digests):
        """The worker of a task says it keeps these sources it carried."""
        self.modules_at[task.worker].update(set(digests) & set(task.carried))

    def _never_got(self, task):
        """The worker of a task (receiving) has not the sources it names: once
        more, with all of them."""
        if self.tasks.get(task.id) is task and task.state == "receiving":
            task.sent_again = True
            self.modules_at[task.worker].difference_update(task.sources)
            self._retry(task, "it never got the modules' sources", failed=False)

    def _lacks(self, task, module):
        """The slot of a task (receiving) did not have a module it needs."""
        if self.tasks.get(task.id) is not task or task.state != "receiving":
            return
        top = module.partition(".")[0]
        self.lacking.setdefault(task.worker, set()).add(top)
        task.needs.add(top)
        task.lacked.append((module, task.slot))
        log.warning("task %s: worker %s does not have the module %s; trying another worker",
                    task.id, task.slot, module)
        # Not a failure of the task, for a few workers (each can say it once).
        self._retry(task, "it does not have the module %s" % module,
                    failed=len(task.lacked) > LACKS)

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

    def cancel_pending(self):
        """Cancel every task that has not started (as concurrent.futures does)."""
        def cancel():
            for task in list(self.queue):
                if task.future.cancel():
                    self._end(task, "cancelled")
        self.call(cancel)

    def interrupt(self, futures=None):
        """Stop the running tasks of these futures (all, if None) on their
        workers, and end them with CancelledError; cancel those not started."""
        def interrupt():
            chosen = None if futures is None else {id(f) for f in futures}
            for task in list(self.queue) + list(self.tasks.values()):
                if chosen is not None and id(task.future) not in chosen:
                    continue
                if task.future.cancel():
                    self._end(task, "cancelled")
                    continue
                if task.state != "queued":
                    self._say_withdraw(task)  # its worker stops it, and frees the slot
                self._end(task, "cancelled", error=concurrent.futures.CancelledError(
                    "task %s was interrupted" % task.id))
        self.call(interrupt)

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
    allow: packages whose classes a result may hold besides the safe
    defaults (["pandas"]; P2P_ALLOW); trust: load results as plain pickle,
    code and all, only for clusters whose members you all trust (P2P_TRUST).
    progress: show a progress bar of every call on stderr until shutdown
    (map can show one for its own calls).
    max_workers: at most this many of its tasks run at once (default: as
    many as there are worker slots free).
    send_modules: your own modules (imported from your files, not installed)
    go to workers as their source, once per worker and version (True, the
    default; P2P_SEND_MODULES); False sends them by name alone; a list of
    module names sends these that way too (an installed package a worker
    lacks).
    Joining raises ClusterError within 15 s when the cluster is not hosted or
    you are not on its access list.
    """

    def __init__(self, cluster=None, config=None, retries=None, progress=False,
                 allow=None, trust=None, send_modules=None, max_workers=None):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        self._config = copy.copy(config or Config())
        if allow is not None:
            self._config.allow = tuple(allow)
        if send_modules is not None:
            self._config.send_modules = (send_modules if isinstance(send_modules, bool)
                                         else tuple(send_modules))
        if trust is not None:
            self._config.trust = bool(trust)
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
        self._client = _Client(self._config, self.cluster, user, retries, board, max_workers)
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
        with self._lock:
            self._check_open()
        # Pickled straight to a file: a large argument is not copied in memory.
        fd, path = tempfile.mkstemp(suffix=".pkl", dir=self._client.scratch)
        try:
            with os.fdopen(fd, "wb") as f:
                pickler = _dump((fn, args, kwargs), f, modules=self._config.send_modules)
        except P2PError:
            os.remove(path)
            raise
        except Exception:
            os.remove(path)
            raise P2PError(_describe_unpicklable(fn, args, kwargs)) from None
        future = _TaskFuture()
        with self._lock:
            try:
                self._check_open()
            except RuntimeError:
                os.remove(path)
                raise
            self._client.put(_Task(path, pickler, future))
        progress = getattr(self._counting, "progress", None) or self._progress
        if progress is not None:
            progress.count(future, len(args[1]) if fn is _call_chunk else 1)
        return future

    def _check_open(self):
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _exiting:
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def map(self, fn, *iterables, timeout=None, chunksize=None, progress=False):
        """As concurrent.futures' map; calls go to workers chunksize at a time.

        By default, when the iterables have a length, it makes about four
        chunks per worker slot it knows of (as multiprocessing's Pool does).
        progress: show a progress bar of these calls on stderr.
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
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
            return _unbatched(results)
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

    def interrupt(self, *futures):
        """Stop running tasks: those of these futures, or all of this
        executor's when none are given. Their workers stop them at once,
        their futures end with CancelledError and their slots are free
        again; a future not started yet is cancelled."""
        self._client.interrupt(futures or None)

    def shutdown(self, wait=True, *, cancel_futures=False):
        with self._lock:
            if self._shutdown:
                return
            self._shutdown = True
        if cancel_futures:  # those not started: running ones finish
            self._client.cancel_pending()
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
        if kind is not None and issubclass(kind, KeyboardInterrupt):
            self.interrupt()
        self.shutdown(wait=True)
        return False


def _unbatched(batches):
    """The values of batches (lists) in turn, each let go once handed out."""
    for batch in batches:
        batch.reverse()
        while batch:
            yield batch.pop()


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
_exiting = False  # the interpreter is shutting down: no new tasks (as for thread pools)


def _exit_begins():
    global _exiting
    _exiting = True


if hasattr(threading, "_register_atexit"):  # before atexit's handlers, as the pools do
    with contextlib.suppress(RuntimeError):  # imported while exiting
        threading._register_atexit(_exit_begins)


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
    if _interrupted or getattr(sys, "last_type", None) is KeyboardInterrupt:
        _default.interrupt()
    _default.shutdown(wait=True)


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
        # The key as kept: a live host has it too, and must hear us (open).
        self.secret = secret = config.secret or _secret_of(config, cluster, user)[0]
        super().__init__(config, cluster, user, _peer_id(user), secret,
                         access=members or [user])
        self.members = members
        self.spare = _Board(config, cluster.channel, None)  # heard by no one: drained
        self.intruders = []
        self.present = []  # the pico users connected, one entry per session (ls)
        self.started = int(time.time())
        self.until = None  # when watch() will close it, for roll calls
        self.stopped = threading.Event()
        self._backoff = _Backoff()
        self._only = None  # the lock that makes us the cluster's one host here
        self._hinted = 0.0  # when we last answered a hello we could not check
        self._hello_at = 0.0  # when we last said hello
        self._kept = {}  # the owner's keys as last read

    def open(self):
        # One host per cluster, told by a lock on the machine that keeps its
        # keys (the OS lets go of a dead host's): no line on the board, which
        # a member with the key could say, can keep us from starting.
        path = _keys_path(self.cluster)[:-len(".json")] + ".host"
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        self._only = open(path, "a")
        try:
            if fcntl is not None:
                fcntl.flock(self._only, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.close()
            raise P2PError("%s is already hosted by another process of %s: stop it "
                           "first" % (self.cluster, self.user)) from None
        self.start_loop()
        self.board.connect()
        self._say_hello()
        if not self.config.secret:
            secret = _owner_keys(self.cluster, self.members)["key"]
            if secret != self.secret:
                log.info("a member was taken off %s: it has a new key, which the others "
                         "get from us as they say hello", self.cluster)
                with self.lock:
                    self.secret, (self.key, self.salt) = secret, _keys(secret, self.cluster)
                self._say_hello()  # members connected now hear it: they ask for the key
        # Once pico.sh shows our list stored, the spare session joins: not
        # before we say we are hosting, or a member's leaving (bug B) while
        # it is still away would leave a worker alone, and thrown off.
        deadline = time.monotonic() + JOIN_TIMEOUT
        self._check()
        while not self.spare.running() and time.monotonic() < deadline:
            time.sleep(HOST_CHECK / 6)
            self._check()
        log.info("hosting %s for %s", self.cluster, ", ".join(self.members) or "nobody")

    def _say_hello(self):
        self._hello_at = time.monotonic()
        self.say("hello", id=self.id, role="host", user=self.user, py=PY, proof="")

    def _secret_for(self, msg):
        """The member's own secret, when their hello proves it (None else)."""
        if self.config.secret or not msg["proof"]:
            return None
        for fresh in (False, True):  # an invite may have added it since we read
            if fresh:
                self._kept = _read_keys(self.cluster)
            secret = _member_secret(self._kept.get("secrets", {}), msg["user"],
                                    msg["proof"], _hello_of(msg))
            if secret is not None or msg["user"] not in self.members + [self.user]:
                return secret
        return None

    def on_unsigned(self, msg):
        if (msg.kind != "hello" or msg["role"] == "host"
                or not re.fullmatch(_USER_NAME, msg["user"])
                or abs(msg["t"] / 1e6 - time.time()) > FRESH):
            return
        user, secret = msg["user"], self._secret_for(msg)
        if secret is not None:  # a member with an old key, or none: hand it over
            self._welcome(msg, secret, base64.b64encode(_seal(
                _proof(secret, "key", _hello_of(msg)).encode(),
                self.secret.encode())).decode())
            return
        # Unsigned, as the peer lacks our key: a hint, which anyone could forge
        # (and flood us with: a hint every half second at most).
        if time.monotonic() - self._hinted < 0.5:
            return
        self._hinted = time.monotonic()
        if self.config.secret:
            why = ("%s has a secret of its own: ask %s for its file and set "
                   "P2P_SECRET_FILE to it (yours, if you have one, is not it)"
                   % (self.cluster, self.user))
        elif user in self.members or user == self.user:
            why = ("the key you hold for %s is not its key: ask %s to run `python -m "
                   "p2p invite %s %s`, then run the `python -m p2p join` line it prints"
                   % (self.cluster, self.user, self.cluster, user))
        else:
            why = self._not_a_member(user)
        self.say("denied", to=msg["id"], signed=False, id=self.id, why=why)

    def _not_a_member(self, user):
        return ("%s is not a member of %s; ask %s to add you: python -m p2p host %s "
                "--users ...,%s, then python -m p2p invite %s %s"
                % (user, self.cluster, self.user, self.cluster, user, self.cluster, user))

    def _on_hello(self, msg):
        if msg["id"] == self.id:
            return
        if msg["role"] == "host":
            return  # (only one runs where the keys are kept: see open)
        if msg["user"] in self.members or msg["user"] == self.user:
            self._welcome(msg, self._secret_for(msg), "")
            (log.debug if msg["role"] == "observer" else log.info)(
                "%s joined as a %s (%s)", msg["user"], msg["role"], msg["id"])
        else:
            self.say("denied", to=msg["id"], id=self.id, why=self._not_a_member(
                msg["user"]))

    def _welcome(self, msg, secret, sealed):
        """Welcome a member: with their secret, proven to them, and with the
        cluster's secret sealed for them when they lack it."""
        self.say("welcome", to=msg["id"], id=self.id, secret=sealed,
                 proof=_proof(secret, "welcome", _hello_of(msg)) if secret else "")

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
                                            "sessions": others,
                                            "intruders": self.intruders})

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
        if time.monotonic() - self._hello_at >= IDLE_EVERY:
            # Again and again: a member whose key is old, and who missed the
            # hello we said when we came (said while our session was joining,
            # or while theirs was down), asks for the new one when it hears it.
            self._say_hello()
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
                            "stranger's first connection in); without the cluster's "
                            "key they can neither read a task nor act", self.cluster,
                            ", ".join(intruders))
            else:
                log.info("no more non-members on the board of %s", self.cluster)
            self.intruders = intruders

    def close(self):
        self.stopped.set()
        self.spare.close()
        self.board.close()
        self.stop_loop()
        if self._only is not None:
            self._only.close()  # and with it the lock: another host may start


_INVITE_SIZE = 1024  # bytes of an invitation: its JSON, padded


def _invite(config, cluster, user, member, timeout=600.0, out=None):
    """Hand a shared cluster's key, and a secret of their own, to one member
    by wormhole: print the `join` line that takes it, wait for the join."""
    out = out or sys.stdout
    if user != cluster.owner:
        raise P2PError("only %s can invite members to %s (you are %s)"
                       % (cluster.owner, cluster, user))
    if cluster.personal:
        raise P2PError("%s is a personal cluster: it is yours alone, and needs no "
                       "invitation (a shared one does: python -m p2p host %s/NAME "
                       "--users ...)" % (cluster, user))
    if config.secret:
        raise P2PError("%s uses the secret in your P2P_SECRET_FILE: hand that file to "
                       "its members yourself, or unset it to invite" % cluster)
    if not re.fullmatch(_USER_NAME, member):
        raise P2PError("%r is not a pico.sh user name" % member)
    secret = secrets.token_hex(32)

    def add(kept):
        kept.setdefault("key", secrets.token_hex(32))
        kept.setdefault("members", [])
        kept.setdefault("secrets", {})[member] = secret

    kept = _change_keys(cluster, add)
    invitation = json.dumps({"cluster": cluster.name, "key": kept["key"],
                             "secret": secret}).encode().ljust(_INVITE_SIZE)
    code = "%d-%s" % (secrets.randbelow(9000000) + 1000000, secrets.token_hex(5))
    folder = tempfile.mkdtemp(prefix="p2p-invite-")
    try:
        with open(os.path.join(folder, "invitation"), "wb") as f:
            f.write(invitation)
        print("python -m p2p join %s %s" % (cluster, code), file=out, flush=True)
        log.info("waiting up to %.0fs for %s to run that line (give it to them "
                 "yourself: the code is good for one join)", timeout, member)
        if member not in kept["members"] + [cluster.owner]:
            log.warning("%s is not on the host's --users yet: add them when you next "
                        "start it", member)
        again = "`python -m p2p invite %s %s`" % (cluster, member)
        try:
            _hand_over(config, code, os.path.join(folder, "invitation"), member, timeout)
        except TransferError as exc:
            if "did not finish" not in str(exc):
                # It may fail as it ends, the invitation delivered: their word counts.
                raise P2PError("the invitation's transfer ended with an error (%s): if "
                               "the join said `joined %s`, all is well; if not, run %s "
                               "again" % (exc, cluster, again)) from None
            _change_keys(cluster, lambda kept: kept["secrets"].pop(member, None))
            raise P2PError("no one joined %s with that code (%s); it is void now: run "
                           "%s again for a new one" % (cluster, exc, again)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    log.info("%s joined %s", member, cluster)


def _join(config, cluster, code, user):
    """Take the invitation behind a code and keep the cluster's key here."""
    folder = tempfile.mkdtemp(prefix="p2p-join-")
    try:
        try:
            path = _take_over(config, code, "invitation", _INVITE_SIZE, folder,
                              cluster.owner)
            with open(path, "rb") as f:
                invitation = json.loads(f.read())
        except (TransferError, ValueError) as exc:
            raise P2PError("could not join %s with code %s: %s. Codes are good for one "
                           "join and while `invite` waits: ask %s for a new one"
                           % (cluster, code, exc, cluster.owner)) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if not (isinstance(invitation, dict) and invitation.get("cluster") == cluster.name
            and all(isinstance(invitation.get(k), str) and len(invitation[k]) >= 32
                    for k in ("key", "secret"))):
        raise P2PError("that code was for another cluster, not %s: ask %s for one to %s"
                       % (cluster, cluster.owner, cluster))
    _change_keys(cluster, lambda kept: kept.update(key=invitation["key"],
                                                   secret=invitation["secret"]))
    print("joined %s as %s: start a worker with `python -m p2p worker %s`, or use "
          "p2p.Executor(%r) in a script" % (cluster, user, cluster, cluster.name))


# -- status and doctor --------------------------------------------------------

DOCTOR_WAIT = 10.0  # seconds each of doctor's network checks may take
_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY",
            "ALL_PROXY")
# What each role tells a roll call, and the types we accept from strangers.
_ABOUT = {
    "host": {"members": list, "until": (int, type(None)), "sessions": int,
             "intruders": list},
    "worker": {"slots": int, "busy": int, "done": int, "can": list},
    "client": {"queued": int, "running": int, "can": list},
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


def _transports_text(can):
    names = [str(way) for way in can if way in _WAYS]
    if names == ["ssh"]:
        return "large payloads over ssh (wormhole blocked)"
    return "large payloads by " + (" or ".join(names) or "nothing")


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
        print("  %s  %d slot(s), %d busy, %d task(s) done, Python %s, since %s, %s" % (
            w["id"], w["slots"], w["busy"], w["done"], w["python"], when(w["since"]),
            _transports_text(w["can"])), file=out)
    print("%d client(s)" % len(clients), file=out)
    for c in clients:
        print("  %s  %d queued, %d running, since %s, %s" % (
            c["id"], c["queued"], c["running"], when(c["since"]),
            _transports_text(c["can"])), file=out)
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


def _ssh_self_transfer(config, user):
    """Seconds a small sealed file takes over ssh (pub, sub) to yourself."""
    probe = copy.copy(config)
    probe.timeout = DOCTOR_WAIT
    folder = tempfile.mkdtemp(prefix="p2p-doctor-")
    key, me, sending = secrets.token_bytes(32), _peer_id(user), []
    try:
        path = os.path.join(folder, "hello")
        with open(path, "wb") as f:
            f.write(b"hello from p2p doctor\n")
        os.mkdir(os.path.join(folder, "in"))
        started = time.monotonic()
        sender = threading.Thread(target=_send_over_ssh, daemon=True,
                                  args=(probe, key, path, me, sending))
        sender.start()
        try:
            got = _receive_over_ssh(probe, key, "hello", os.path.getsize(path) +
                                    SEAL_OVERHEAD, os.path.join(folder, "in"), me, [])
        finally:
            _kill(sending)
            sender.join()
        with open(got, "rb") as f:
            if f.read() != b"hello from p2p doctor\n":
                raise P2PError("what came over ssh is not what was sent")
        return time.monotonic() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _doctor(config, cluster=None, out=None):
    """Check everything p2p.py needs, one line each; True when all is well.

    What wormhole needs only warns (ssh carries large payloads without it);
    the last line says which transports this machine has, and what that means.
    """
    out = out or sys.stdout
    failed, verdicts = set(), {}

    def check(name, run, needs=None, optional=False):
        if needs in failed:
            verdict, detail = "skip", "needs " + needs
        else:
            try:
                verdict, detail = "ok", run()
            except P2PError as exc:
                verdict, detail = "warn" if optional else "FAIL", str(exc)
        detail = " ".join(detail.split("\n"))  # one line per check, always
        print("%-5s %s: %s" % (verdict, name, detail), file=out, flush=True)
        verdicts[name] = verdict, detail
        if verdict != "ok":
            failed.add(name)

    def board():
        return "a line to %s/p2p-doctor came back in %.1fs" % (
            whoami(config), _echo(config, whoami(config)))

    def tool():
        found = _wormhole_tool(config)
        return "%s %s (%s)" % (found.kind, found.version, found.path)

    def server(n):
        _, host, port = _wormhole_servers()[n]
        return _reach(host, port, DOCTOR_WAIT)

    def transports():
        wormhole, ssh = (verdicts.get(name, ("skip",))[0] == "ok"
                         for name in ("wormhole transfer", "ssh transfer"))
        blocked = "; ".join(verdicts[name][1] for name in (
            "wormhole tool", "mailbox", "transit relay", "wormhole transfer")
            if verdicts.get(name, ("ok",))[0] != "ok")
        if wormhole and ssh:
            return ("wormhole and ssh: large payloads go by wormhole, and over ssh with "
                    "peers whose network blocks it")
        if ssh:
            return ("ssh only: wormhole cannot work here (%s). Large payloads go over "
                    "ssh through pico.sh instead, automatically, also with peers that "
                    "have wormhole: nothing to do (python -m p2p install-wormhole if the "
                    "tool is what is missing)" % blocked)
        if wormhole:
            raise P2PError("wormhole only: large payloads cannot go over ssh (%s), so "
                           "peers whose network blocks wormhole cannot trade them with "
                           "you" % verdicts["ssh transfer"][1])
        raise P2PError("no way for payloads over %d KiB: wormhole cannot work here "
                       "(%s) and neither can ssh" % (BOARD_MAX >> 10, blocked))

    def visit():
        workers = _census(config, cluster, whoami(config))["workers"]
        return "reachable as %s; %s%s" % (
            whoami(config), _workers_line(workers),
            "" if workers else " (start one: python -m p2p worker %s)" % cluster)

    check("ssh", _require_ssh)
    check("pico.sh account", lambda: "you are %s on %s" % (
        whoami(config), config.account_host), needs="ssh")
    check("board", board, needs="pico.sh account")
    check("wormhole tool", tool, optional=True)
    check("mailbox", lambda: server(0), optional=True)
    check("transit relay", lambda: server(1), optional=True)
    check("wormhole transfer", lambda: "a file went through a wormhole to you in %.1fs"
          % _self_transfer(config), needs="wormhole tool", optional=True)
    check("ssh transfer", lambda: "a file went over ssh (pub, sub) to you in %.1fs"
          % _ssh_self_transfer(config, whoami(config)), needs="board")
    check("transports", transports)
    if cluster is not None:
        check("cluster %s" % cluster, visit, needs="board")
    return not any(verdict == "FAIL" for verdict, _ in verdicts.values())


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
    invite = commands.add_parser(
        "invite", parents=[common], help="give a member the key of your cluster",
        description="Print the line a member runs to join CLUSTER (a one-time "
        "wormhole code), then wait until they did. Run it where you host the "
        "cluster; the host need not be running.")
    invite.add_argument("cluster", help="your shared cluster, you/name")
    invite.add_argument("user", help="the member's pico.sh user name: only they can use "
                        "what the code hands over")
    invite.add_argument("--timeout", type=_duration, default=600.0,
                        help="how long to wait for the join (default 10m)")
    join = commands.add_parser(
        "join", parents=[common], help="take the key of a cluster you were invited to",
        description="Receive the key of CLUSTER with the code its owner's `invite` "
        "printed, and keep it here for workers and scripts.")
    join.add_argument("cluster", help="owner/name")
    join.add_argument("code", help="the code from the owner's invite")
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
        elif args.command == "invite":
            _invite(config, Cluster(args.cluster), user, args.user, args.timeout)
        elif args.command == "join":
            _join(config, Cluster(args.cluster), args.code, user)
        elif args.command == "host":
            host = _Host(config, Cluster(args.cluster), user,
                         [u.strip() for u in args.users.split(",") if u.strip()])
            host.open()
            if not config.secret:
                log.info("members get its key once, each with a code of their own: "
                         "python -m p2p invite %s USER (run here; it prints the line "
                         "they run)", host.cluster)
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
