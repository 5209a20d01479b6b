"""The local stack: everything p2p.py talks to, on one machine, from real parts.

* the pico.sh board stand-in (picoboard.py), reached only through a real
  OpenSSH server on loopback: one ed25519 key per pico user, each mapped to
  its user by a forced command, and for each user an ssh config whose
  ``Host pipe.pico.sh pico.sh`` block points at that sshd;
* Debian's magic-wormhole mailbox server and transit relay on loopback.

All of it runs inside private namespaces (see ``namespace.py``): a network
namespace with only ``lo``, so no byte leaves loopback, and a mount
namespace whose /etc/hosts resolves transit.magic-wormhole.io to the local
relay. Run "as alice" with ``stack.env("alice")``: her PATH finds an ``ssh``
that uses her config, so ``ssh pico.sh user`` answers ``alice`` and plain
``wormhole-william`` uses the local servers.

    with Stack(workdir) as stack:
        stack.run("alice", ["ssh", "pico.sh", "user"])

Profiles. Loopback answers in microseconds, the internet does not, so a
stack runs on a Profile of delays, each a delay line (every byte arrives
that long after it was read; order and throughput kept, no rate limit):

* ``LOOPBACK``: no delay at all (the default);
* ``INTERNET``: the board delivers each chunk a client writes to the
  others 80 ms after it read it (a line takes ~80 ms peer to peer, a round
  trip ~160 ms); every ssh connection, to either host, starts 400 ms late:
  240 ms to set the connection up (connectlate.py, its ProxyCommand) and
  160 ms for each session on it, so that a further session on a connection
  already open (ssh's multiplexing) starts 160 ms late;
  each peer is 40 ms each way from the wormhole mailbox and from the
  transit relay (delaying TCP proxies, delayproxy.py, in front of both:
  ``WORMHOLE_RELAY_URL`` names the mailbox's proxy and the transit relay's
  proxy listens on transit.magic-wormhole.io:4001, the real relay behind
  it on another port).

Locked-down networks. ``Stack(root, blocked={"bob": "refused", "diana":
"dropped"})``, or ``with stack.wormhole_blocked(bob="refused"):`` for what
is started meanwhile, puts users on a network that blocks the wormhole
servers' ports while ssh gets out: "refused", every connection to them is
refused at once; "dropped", they are silently dropped, so connects hang.
Each such process runs in a mount namespace of its own whose /etc/hosts
sends transit.magic-wormhole.io where WORMHOLE_RELAY_URL sends the mailbox:
to 127.0.0.2, where nothing listens, or to 127.0.0.3, where full listen
queues drop every new connection. ``stack.stop_wormhole()`` stops the
servers outright for everyone (``start_wormhole()`` brings them back).

``Stack(root, profile=INTERNET)`` (or ``profile="internet"``, or
``Profile("mine", board_ms=..., ssh_ms=..., wormhole_ms=...)``) picks one;
with no profile given, a Stack honours the environment variable
``LOCALSTACK_INTERNET=1``, which ``python3 -m localstack run|shell|demo
--internet`` sets, so a script run that way (bench/soak.py) is on the
internet profile unless it says otherwise. ``Stack(root, chop=N)`` makes
the board forward every read in pieces of at most N bytes, each delivered
on its own, so that concurrent writers' long lines interleave often.
"""

import contextlib
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import NamedTuple

from localstack.namespace import HERE, MAILBOX_NAME, TRANSIT_NAME

# Pico users with an account; NEWCOMER has a key but no account ("public").
USERS = ("alice", "bob", "carol", "diana", "mallory")
NEWCOMER = "newcomer"

TRANSIT_PORT = 4001  # wormhole-william always dials this port
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, which has the twisted plugins
START_TIMEOUT = 20.0
# Where a locked-down network sends the wormhole servers (see Stack.blocked).
BLOCKED = {"refused": "127.0.0.2", "dropped": "127.0.0.3"}


class StackError(Exception):
    """The local stack cannot start or is used outside its namespace."""


# -- profiles: how far away the services are -----------------------------------

class Profile(NamedTuple):
    """The delays of a stack, in milliseconds (see the module's docstring)."""

    name: str
    board_ms: float = 0.0  # a chunk written to a pipe reaches its readers later
    ssh_ms: float = 0.0  # added to the set-up of every ssh connection and its first session
    session_ms: float = 0.0  # of that, what a session on a connection already open pays
    wormhole_ms: float = 0.0  # each way between a peer and a wormhole server

    def describe(self):
        if self == LOOPBACK:
            return "loopback profile: no delays"
        return ("%s profile: board %g ms, ssh set-up %g ms (%g ms a session on an open "
                "connection), wormhole servers %g ms each way" % (
                    self.name, self.board_ms, self.ssh_ms, self.session_ms,
                    self.wormhole_ms))


LOOPBACK = Profile("loopback")
INTERNET = Profile("internet", board_ms=80, ssh_ms=400, session_ms=160, wormhole_ms=40)
PROFILES = {profile.name: profile for profile in (LOOPBACK, INTERNET)}
INTERNET_VARIABLE = "LOCALSTACK_INTERNET"  # "1": Stacks default to INTERNET


def choose_profile(profile=None):
    """A Profile from a Profile, a name, or (None) the environment."""
    if profile is None:
        wanted = os.environ.get(INTERNET_VARIABLE, "")
        return INTERNET if wanted not in ("", "0") else LOOPBACK
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        raise StackError("no profile %r: use one of %s or a Profile"
                         % (profile, ", ".join(PROFILES))) from None


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lasting_port():
    """A free port below Linux's ephemeral range (32768 and up), so that no
    outgoing connection takes it while its server is down for a while."""
    while True:
        port = random.randrange(20000, 32768)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def check_namespace():
    """Raise StackError unless this process is in the stack's namespaces."""
    interfaces = sorted(name for _, name in socket.if_nameindex())
    if interfaces != ["lo"]:
        raise StackError(
            "the local stack runs only in a private network namespace "
            "(this one has %s); run it through `sudo python3 -m localstack "
            "test` or `sudo python3 -m localstack shell`" % ", ".join(interfaces)
        )
    try:
        address = socket.gethostbyname(TRANSIT_NAME)
    except OSError:
        address = ""
    if not address.startswith("127."):
        raise StackError(
            "%s does not resolve to loopback in this mount namespace; run the "
            "stack through `sudo python3 -m localstack ...`" % TRANSIT_NAME
        )


class Service:
    """A server process whose output goes to a log, started when it is ready."""

    def __init__(self, name, argv, ready, log_path, env=None):
        self.name = name
        self.log_path = log_path
        self._ready = threading.Event()
        self._log = open(log_path, "ab")
        self.process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._copy_log, args=(ready.encode(),), daemon=True
        )
        self._reader.start()
        if not self._ready.wait(START_TIMEOUT) or self.process.poll() is not None:
            self.stop()
            raise StackError(
                "%s did not start (no %r within %gs); its log, %s, ends:\n%s"
                % (name, ready, START_TIMEOUT, log_path, self.log_tail())
            )

    def _copy_log(self, ready):
        # Always drain the pipe: a server that cannot write its log stalls.
        # The log is ours to close: a child outside the group may hold the pipe.
        with self._log:
            for line in self.process.stdout:
                self._log.write(line)
                self._log.flush()
                if ready in line:
                    self._ready.set()
        self._ready.set()

    def log_tail(self, lines=20):
        with open(self.log_path, "rb") as log:
            return b"".join(log.readlines()[-lines:]).decode(errors="replace")

    def stop(self, timeout=5.0):
        """Stop the server and everything in its process group."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout)
        # A server's children (sshd's per-connection processes) share its group.
        _signal_group(self.process, signal.SIGKILL)
        self._reader.join(timeout)


def processes_mentioning(text):
    """Pids of the processes whose command line contains text."""
    needle = os.fsencode(text)
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    if needle in f.read():
                        found.append(int(entry))
            except OSError:
                pass  # it ended while we looked
    return found


def children_of(pid, mentioning=""):
    """Pids of pid's child processes whose command line contains mentioning."""
    found = []
    for child in processes_mentioning(mentioning):
        try:
            with open("/proc/%d/stat" % child) as f:  # "pid (name) state ppid ..."
                if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(child)
        except OSError:
            pass  # it ended while we looked
    return found


def kill_and_wait(pids, timeout=5.0):
    """SIGKILL each pid and wait until it has exited (not only signalled)."""
    for pid in pids:
        try:
            handle = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        try:
            os.kill(pid, signal.SIGKILL)
            select.select([handle], [], [], timeout)  # readable once it exits
        except OSError:
            pass
        finally:
            os.close(handle)


def _signal_group(process, signum):
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


class Stack:
    """The pico board behind sshd and, optionally, the wormhole servers.

    ``fixed=True`` gives a board with the intended access-list semantics
    (no bug A or B). Only one stack with ``wormhole=True`` can run in a
    namespace: wormhole-william dials the transit relay on a fixed port
    (for a second one, enter namespaces of its own: namespace.enter).
    ``profile`` (a Profile or its name; None: LOCALSTACK_INTERNET decides)
    sets the delays; ``chop=N`` cuts what the board forwards into pieces of
    at most N bytes. ``blocked`` maps users to the network they are on:
    "refused" or "dropped" (see the module's docstring).
    """

    def __init__(self, root, users=USERS, fixed=False, wormhole=True, profile=None,
                 chop=0, blocked=None):
        self.root = os.path.abspath(root)
        self.users = tuple(users) + (NEWCOMER,)
        self.fixed = fixed
        self.wormhole = wormhole
        self.profile = choose_profile(profile)
        self.chop = chop
        self.services = []
        self.processes = []
        self.relay_url = None
        self.blocked = dict(blocked or {})
        self._wormhole_ports = None  # (mailbox, transit, and their proxies'), once started
        self._black_holes = []  # the sockets that drop connections (see _drop_connections)

    # -- life cycle -----------------------------------------------------------

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def start(self):
        check_namespace()
        os.makedirs(self.root, exist_ok=True)
        try:
            self._start_board()
            if self.wormhole:
                self._start_wormhole()
        except BaseException:
            self.stop()
            raise

    def stop(self):
        """Stop every process of the stack and every one started as a user."""
        self.reap()
        # The board last: sshd's sessions end when it closes their sockets.
        for service in reversed(self.services):
            service.stop()
        self.services = []
        # Session relays are sshd's grandchildren in sessions of their own:
        # find them by the stack's directory on their command line.
        kill_and_wait(processes_mentioning(self.root))
        for hole in self._black_holes:
            hole.close()
        self._black_holes = []

    def _start(self, name, argv, ready):
        """Start a service whose log is ROOT/NAME.log, once it printed ready."""
        service = Service(name, argv, ready, os.path.join(self.root, name + ".log"))
        self.services.append(service)
        return service

    def _start_board(self):
        self.pipe_port, self.pico_port = free_port(), free_port()
        self.board_socket = os.path.join(self.root, "board.sock")
        host_key = self._keygen(os.path.join(self.root, "ssh_host_ed25519_key"))
        authorized = [self._authorize(user) for user in self.users]
        _write(os.path.join(self.root, "authorized_keys"), "".join(authorized))
        known = "[127.0.0.1]:%d,[127.0.0.1]:%d %s" % (
            self.pipe_port, self.pico_port, _read(host_key + ".pub")
        )
        _write(os.path.join(self.root, "known_hosts"), known)
        for user in self.users:
            self._write_user_files(user)
        config = os.path.join(self.root, "sshd_config")
        _write(config, SSHD_CONFIG.format(
            pipe_port=self.pipe_port, pico_port=self.pico_port,
            host_key=host_key, root=self.root,
        ))
        # sshd needs its privilege separation directory; the namespace's /run
        # is a private tmpfs, so this touches nothing on the machine.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self._run_board()

    def _run_board(self):
        board = [sys.executable, "-u", os.path.join(HERE, "picoboard.py"), "serve",
                 "--socket", self.board_socket, "--pipe-port", str(self.pipe_port),
                 "--pico-port", str(self.pico_port),
                 "--delay-ms", str(self.profile.board_ms),
                 "--ssh-delay-ms", str(self.profile.session_ms), "--chop", str(self.chop)]
        self._start("picoboard", board + (["--fixed"] if self.fixed else []),
                    "board ready")
        # One "listening" line per port; the last one means both are bound.
        self._start("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f",
                             os.path.join(self.root, "sshd_config")],
                    "port %d" % self.pico_port)

    def restart_board(self):
        """Restart pico.sh: every session drops, channels and lists are forgotten."""
        for service in [s for s in self.services if s.name in ("picoboard", "sshd")]:
            service.stop()
            self.services.remove(service)
        kill_and_wait(processes_mentioning(self.board_socket))  # session relays
        if os.path.exists(self.board_socket):
            os.unlink(self.board_socket)
        self._run_board()

    def stop_wormhole(self):
        """Stop the wormhole servers (and their proxies), as when they are down."""
        for service in [s for s in self.services if s.name in _WORMHOLE_SERVICES]:
            service.stop()
            self.services.remove(service)

    def start_wormhole(self):
        """Start the wormhole servers again, on the ports they had (if stopped)."""
        if not any(s.name in _WORMHOLE_SERVICES for s in self.services):
            self._start_wormhole()

    def _start_wormhole(self):
        transit_address = socket.gethostbyname(TRANSIT_NAME)
        delayed = bool(self.profile.wormhole_ms)
        # With a delay, the real transit relay moves aside: its proxy takes
        # the port that wormhole-william dials.
        self._wormhole_ports = self._wormhole_ports or (
            lasting_port(), lasting_port() if delayed else TRANSIT_PORT, lasting_port())
        mailbox_port, transit_port, proxy_port = self._wormhole_ports
        self._start("mailbox", [
            SYSTEM_PYTHON, "-m", "twisted", "--log-format=text", "wormhole-mailbox",
            "--port=tcp:%d:interface=127.0.0.1" % mailbox_port,
            "--channel-db=" + os.path.join(self.root, "relay.sqlite"),
        ], "starting on")
        self._start("transit", [
            SYSTEM_PYTHON, "-m", "twisted", "--log-format=text", "transitrelay",
            "--port=tcp:%d:interface=%s" % (transit_port, transit_address),
        ], "starting on")
        if delayed:
            mailbox_port = self._start_delay_proxy(
                "mailbox-proxy", ("127.0.0.1", proxy_port), ("127.0.0.1", mailbox_port))
            self._start_delay_proxy("transit-proxy", (transit_address, TRANSIT_PORT),
                                    (transit_address, transit_port))
        self.relay_url = "ws://127.0.0.1:%d/v1" % mailbox_port

    def _start_delay_proxy(self, name, listen, target):
        """A delayproxy.py from listen to target (host, port); its port."""
        self._start(name, [
            sys.executable, "-u", os.path.join(HERE, "delayproxy.py"),
            "--listen", "%s:%d" % listen, "--to", "%s:%d" % target,
            "--delay-ms", str(self.profile.wormhole_ms),
        ], "proxy ready")
        return listen[1]

    # -- users ----------------------------------------------------------------

    def _keygen(self, path, comment=""):
        if not os.path.exists(path):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                 "-f", path], check=True, stdin=subprocess.DEVNULL,
            )
        return path

    def user_dir(self, user):
        return os.path.join(self.root, "users", user)

    def ssh_config(self, user):
        """The ssh config file that makes ``ssh -F FILE pico.sh`` reach us as user."""
        return os.path.join(self.user_dir(user), "ssh_config")

    def connections(self, user):
        """How many ssh connections the user's key has made to the stack so
        far (sshd's log): sessions on a connection already open are not counted."""
        accepted = "Accepted publickey for root from 127.0.0.1 port "
        fingerprint = self.fingerprint(user)
        with open(os.path.join(self.root, "sshd.log"), errors="replace") as log:
            return sum(1 for line in log if accepted in line and fingerprint in line)

    def fingerprint(self, user):
        """The SHA256 fingerprint of the user's key, as ``-a`` lists take it."""
        key = os.path.join(self.user_dir(user), "id_ed25519.pub")
        out = subprocess.run(["ssh-keygen", "-l", "-f", key], check=True,
                             capture_output=True, text=True).stdout
        return out.split()[1]

    def _authorize(self, user):
        os.makedirs(os.path.join(self.user_dir(user), "home"), exist_ok=True)
        key = self._keygen(os.path.join(self.user_dir(user), "id_ed25519"), user)
        account = "" if user == NEWCOMER else user
        command = "%s -I -S %s session --socket %s --user '%s' --fingerprint %s" % (
            sys.executable, os.path.join(HERE, "picoboard.py"), self.board_socket,
            account, self.fingerprint(user),
        )
        return 'command="%s",restrict %s' % (command, _read(key + ".pub"))

    def _write_user_files(self, user):
        directory = self.user_dir(user)
        _write(self.ssh_config(user), SSH_CONFIG.format(
            pipe_port=self.pipe_port, pico_port=self.pico_port,
            key=os.path.join(directory, "id_ed25519"),
            known_hosts=os.path.join(self.root, "known_hosts"),
        ) + _late_connections(self.profile))
        wrapper = os.path.join(directory, "bin", "ssh")
        os.makedirs(os.path.dirname(wrapper), exist_ok=True)
        _write(wrapper, '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n'
               % self.ssh_config(user))
        os.chmod(wrapper, 0o755)

    def env(self, user, base=None):
        """The environment of a process run as ``user`` on this stack."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.path.join(self.user_dir(user), "bin") + os.pathsep + env.get(
            "PATH", os.defpath)
        env["HOME"] = os.path.join(self.user_dir(user), "home")
        env.pop("SSH_AUTH_SOCK", None)  # only the user's own key may answer
        env.pop("XDG_DATA_HOME", None)  # each user's data (p2p's keys) in their home
        if self.relay_url:
            env["WORMHOLE_RELAY_URL"] = self.relay_url
            if user in self.blocked:
                env["WORMHOLE_RELAY_URL"] = re.sub(
                    r"//[^:/]+", "//" + BLOCKED[self.blocked[user]], self.relay_url, 1)
        return env

    @contextlib.contextmanager
    def wormhole_blocked(self, **users):
        """Put users (user="refused" or "dropped") on a locked-down network
        for what is started as them meanwhile (see the module's docstring)."""
        saved = dict(self.blocked)
        self.blocked.update(users)
        try:
            yield self
        finally:
            self.blocked = saved

    def _locked_down(self, how, argv):
        """argv, run on a network where the wormhole servers are refused or dropped."""
        if how not in BLOCKED:
            raise StackError("a network blocks by %r: use one of %s" % (how, sorted(BLOCKED)))
        address = BLOCKED[how]
        if how == "dropped" and not self._black_holes:
            self._drop_connections(address)
        hosts = os.path.join(self.root, "hosts-%s" % how)
        if not os.path.exists(hosts):
            kept = [line for line in _read("/etc/hosts").splitlines()
                    if TRANSIT_NAME not in line.split()]
            _write(hosts, "\n".join(kept + ["%s %s %s" % (address, TRANSIT_NAME, MAILBOX_NAME)])
                   + "\n")
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', hosts] + list(argv)

    def _drop_connections(self, address):
        """Listen where the wormhole servers' ports would be on address, with
        queues kept full, so that the kernel drops every new connection."""
        ports = [TRANSIT_PORT, int(self.relay_url.rsplit(":", 1)[1].split("/")[0])]
        for port in ports:
            hole = socket.socket()
            hole.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            hole.bind((address, port))
            hole.listen(0)
            self._black_holes.append(hole)
            for _ in range(2):  # never accepted: they fill its queue
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex((address, port))
                self._black_holes.append(filler)

    def run(self, user, argv, timeout=30, input=None, text=True, env=None, **kwargs):
        """Run a command as ``user`` and wait for it; a CompletedProcess."""
        process = self.spawn(
            user, argv, env=env, text=text, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE, **kwargs)
        try:
            out, err = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            out, err = process.communicate()
            raise AssertionError("%s as %s did not finish within %gs; it printed %r %r"
                                 % (argv, user, timeout, out, err)) from None
        return subprocess.CompletedProcess(argv, process.returncode, out, err)

    def spawn(self, user, argv, env=None, **kwargs):
        """Start a command as ``user``; the stack kills it when it stops.

        env adds to (or, with None values, removes from) the user's environment.
        """
        full = self.env(user)
        for name, value in (env or {}).items():
            if value is None:
                full.pop(name, None)
            else:
                full[name] = value
        kwargs.setdefault("cwd", full["HOME"])
        if user in self.blocked and self.relay_url:
            argv = self._locked_down(self.blocked[user], argv)
        process = subprocess.Popen(argv, env=full, start_new_session=True, **kwargs)
        self.processes.append(process)
        return process

    def session(self, user, *args, host="pipe.pico.sh"):
        """Start ``ssh HOST ARGS...`` as user; see Session."""
        return Session(self, user, ["ssh", host] + list(args))

    def process(self, user, argv, **kwargs):
        """Start argv as user; see Session."""
        return Session(self, user, argv, **kwargs)

    def channels(self, prefix="public/"):
        """{channel: [(kind, user)...]} of the channels whose names start
        with prefix (public ones too, which no ls shows), from the board
        itself: for tests, not for anyone on the stack."""
        with socket.socket(socket.AF_UNIX) as board:
            board.settimeout(10)
            board.connect(self.board_socket)
            board.sendall(json.dumps({"inspect": prefix}).encode() + b"\n")
            board.shutdown(socket.SHUT_WR)
            return {name: [tuple(client) for client in clients]
                    for name, clients in json.loads(_read_all(board)).items()}

    def ls(self, user):
        """What ``ssh pipe.pico.sh ls`` shows the user, CRLF line ends kept."""
        return self.run(user, ["ssh", "pipe.pico.sh", "ls"], text=False).stdout.decode()

    def reap(self):
        """Kill what was spawned as users and is still running."""
        for process in self.processes:
            if process.poll() is None:
                _signal_group(process, signal.SIGKILL)
            process.wait()
        self.processes = []


SSHD_CONFIG = """\
# The pico.sh stand-in: pipe.pico.sh on one port, pico.sh on the other.
ListenAddress 127.0.0.1:{pipe_port}
ListenAddress 127.0.0.1:{pico_port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {root}/authorized_keys
PermitRootLogin forced-commands-only
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
# Keep the login shell from reading the real home's start-up files.
SetEnv HOME={root}
# pico.sh pings every 5 s and drops clients that vanish.
ClientAliveInterval 5
ClientAliveCountMax 1
MaxStartups 100:30:200
MaxSessions 100
LogLevel INFO
"""

SSH_CONFIG = """\
# pico.sh on the local stack (the port tells the two hosts apart).
Host pico.sh
    Port {pico_port}

Host pipe.pico.sh pico.sh
    HostName 127.0.0.1
    Port {pipe_port}
    User root
    IdentityFile {key}
    IdentitiesOnly yes
    IdentityAgent none
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    LogLevel ERROR
"""


def _late_connections(profile):
    """The lines of a user's ssh config that make each new connection pay
    its part of the profile's ssh set-up (connectlate.py)."""
    late = profile.ssh_ms - profile.session_ms
    if late <= 0:
        return ""
    return "    ProxyCommand %s -I -S %s %%h %%p %g\n    ProxyUseFdpass yes\n" % (
        sys.executable, os.path.join(HERE, "connectlate.py"), late)


_WORMHOLE_SERVICES = ("mailbox", "transit", "mailbox-proxy", "transit-proxy")


def _read_all(connection):
    chunks = []
    while True:
        chunk = connection.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _read(path):
    with open(path) as f:
        return f.read()


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# -- helpers for tests: a live ssh session, a condition with a deadline ---------

class Session:
    """A command running as a user, its output read as it comes."""

    def __init__(self, stack, user, argv, **kwargs):
        self.user = user
        self.process = stack.spawn(
            user, list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, **kwargs
        )
        self._changed = threading.Condition()
        self._streams = {"stdout": bytearray(), "stderr": bytearray()}
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True)
            for name in self._streams
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name):
        stream = getattr(self.process, name)
        while True:
            data = stream.read1(1 << 16)
            with self._changed:
                if data:
                    self._streams[name] += data
                self._changed.notify_all()
            if not data:
                return

    @property
    def output(self):
        with self._changed:
            return bytes(self._streams["stdout"])

    @property
    def errors(self):
        with self._changed:
            return bytes(self._streams["stderr"])

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def expect(self, data, timeout=15.0, stream="stdout"):
        """Wait until ``data`` has arrived on the stream; fail after timeout."""
        if isinstance(data, str):
            data = data.encode()
        self.wait_for(lambda got: data in got, timeout, stream, repr(data[:80]))

    def wait_for(self, predicate, timeout=15.0, stream="stdout", what="what it waits for"):
        """Wait until predicate(all the stream's bytes so far) is true; its value."""
        found = []

        def check():
            found[:] = [predicate(bytes(self._streams[stream]))]
            return found[0]

        with self._changed:
            if not self._changed.wait_for(check, timeout):
                raise AssertionError(
                    "%s never got %s on %s within %gs; it got %r"
                    % (self.user, what, stream, timeout,
                       bytes(self._streams[stream][-200:]))
                )
        return found[0]

    def close(self, timeout=15.0):
        """Close stdin and return the exit status of ssh."""
        try:
            self.process.stdin.close()
        except OSError:
            pass
        return self.wait(timeout)

    def wait(self, timeout=15.0):
        """Wait for ssh to exit (and its output to be read); its status."""
        status = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return status


def invite(stack, cluster, *members):
    """The owner's ``python -m p2p invite`` for each member and each member's
    ``join`` with the line it printed, all at once, as the README says to;
    what each join printed."""
    owner, python = cluster.split("/")[0], [sys.executable, "-m", "p2p"]
    inviting = [stack.process(owner, python + ["invite", cluster, member])
                for member in members]
    lines = [i.wait_for(lambda out: re.search(rb"python -m p2p join \S+ \S+\n", out),
                        timeout=30, what="the join line").group(0).decode().split()
             for i in inviting]
    joining = [stack.process(member, python + line[3:]) for member, line in zip(members, lines)]
    for process in joining + inviting:
        # An invite whose transfer failed as it ended leaves the word to the join.
        if process.wait(90) != 0 and b"if the join said" not in process.errors:
            raise AssertionError("%s failed: %s" % (" ".join(process.process.args[1:]),
                                                   process.errors.decode()))
    return [j.output.decode() for j in joining]


def wait_until(predicate, timeout=15.0, what="the condition"):
    """Return predicate()'s first true value; fail when timeout passes.

    For state that no event announces (what ``ls`` shows): it asks again
    as soon as each answer is in, with no fixed sleep.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("%s did not happen within %gs" % (what, timeout))
