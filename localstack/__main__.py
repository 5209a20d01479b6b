"""Bring up the local stack, or run the tests on it.

    python3 -m localstack demo                 a p2p cluster of three users, at work
    python3 -m localstack test [PYTEST ARGS]   install what is missing, run pytest
    python3 -m localstack shell [USER] [-- CMD ...]
                                               a shell (or CMD) as USER on a stack
    python3 -m localstack run SCRIPT [ARGS]    a script that starts its own Stack
                                               (bench/soak.py), in the namespaces
    python3 -m localstack install              install the Debian packages and pytest

``--internet`` (demo, shell, run, test) puts the stack on the internet
profile: 80 ms from a board client to the others, 400 ms more per ssh
connection, 40 ms each way to the wormhole servers (see Profile in
localstack/__init__.py). It sets LOCALSTACK_INTERNET=1, so for ``run`` and
``test`` it is the default of every Stack the script or the tests start.

All of them need root: apt-get, unshare and mount do. Not root, they ask
sudo. Nothing outside the private namespaces is changed but the packages.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from localstack import INTERNET_VARIABLE, NEWCOMER, USERS, Stack, invite, namespace

APT_PACKAGES = (
    "openssh-server", "openssh-client", "wormhole-william", "magic-wormhole",
    "python3-magic-wormhole-mailbox-server", "magic-wormhole-transit-relay",
    "iproute2", "util-linux", "mount",
    # pip install . in a venv of Debian's Python, with no network (a test)
    "python3-venv", "python3-setuptools", "python3-wheel",
)


def install():
    """Install the Debian packages and pytest when they are missing."""
    missing = [p for p in APT_PACKAGES if not _installed(p)]
    if missing:
        print("localstack: installing %s" % " ".join(missing), flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], check=True, env=env,
                       stdin=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends"]
                       + missing, check=True, env=env, stdin=subprocess.DEVNULL)
    if subprocess.run([sys.executable, "-c", "import pytest"],
                      capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pytest"],
                       check=True, stdin=subprocess.DEVNULL)


def _installed(package):
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    ).stdout
    return status.endswith("installed") and "not-installed" not in status


def shell(user, command, fixed=False):
    """Start a stack, run command as user on it (inside the namespace)."""
    workdir = tempfile.mkdtemp(prefix="localstack-")
    try:
        with Stack(workdir, fixed=fixed) as stack:
            print("localstack: pico board behind sshd on 127.0.0.1:%d (pipe.pico.sh)"
                  " and :%d (pico.sh)" % (stack.pipe_port, stack.pico_port))
            print("localstack: %s" % stack.profile.describe())
            print("localstack: WORMHOLE_RELAY_URL=%s, transit relay on "
                  "127.0.0.1:4001" % stack.relay_url)
            print("localstack: users %s; logs and keys in %s"
                  % (", ".join(stack.users), workdir))
            print("localstack: you are %s: try `ssh pico.sh user`" % user, flush=True)
            env = stack.env(user)
            env["PS1"] = "(%s on localstack) $ " % user
            return subprocess.call(command, env=env, cwd=env["HOME"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def demo():
    """alice hosts, carol contributes two workers, bob runs examples/primes.py,
    diana asks who is there."""
    workdir = tempfile.mkdtemp(prefix="localstack-")
    python = [sys.executable, "-m", "p2p"]
    cluster = "alice/p2p"
    try:
        with Stack(workdir) as stack:
            print("localstack: %s" % stack.profile.describe(), flush=True)
            print("$ (alice) python -m p2p host %s --users bob,carol,diana" % cluster,
                  flush=True)
            host = stack.process("alice", python + ["host", cluster, "--users",
                                                    "bob,carol,diana"])
            host.expect("hosting", stream="stderr", timeout=30)
            for member in ("bob", "carol", "diana"):
                print("$ (alice) python -m p2p invite %s %s   # %s runs the line it prints"
                      % (cluster, member, member), flush=True)
            for said in invite(stack, cluster, "bob", "carol", "diana"):
                print(said, end="")
            print("$ (carol) python -m p2p worker %s --workers 2" % cluster, flush=True)
            worker = stack.process("carol", python + ["worker", cluster, "--workers", "2"])
            worker.expect("worker carol@", stream="stderr", timeout=30)
            print("$ (bob) python examples/primes.py %s" % cluster, flush=True)
            example = os.path.join(namespace.REPO, "examples", "primes.py")
            answer = stack.run("bob", [sys.executable, example, cluster], timeout=600)
            print(answer.stdout + answer.stderr)
            print("$ (diana) python -m p2p status %s" % cluster, flush=True)
            status = stack.run("diana", python + ["status", cluster])
            print(status.stdout + status.stderr)
            for title, process in (("alice's host", host), ("carol's workers", worker)):
                print("%s said:\n%s" % (title, process.errors.decode()))
            return answer.returncode
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    command = []
    if "--" in argv:
        command = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    parser = argparse.ArgumentParser(
        prog="python3 -m localstack", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="a p2p cluster of three users, at work")
    commands.add_parser("_demo")  # the demo, in the namespace
    test = commands.add_parser("test", help="install what is missing, run pytest")
    commands.add_parser("install", help="install the Debian packages and pytest")
    run = commands.add_parser("run", help="a script that starts its own Stack")
    run.add_argument("script")
    internet_help = ("internet-like delays: board 80 ms, ssh set-up 400 ms, wormhole "
                     "servers 40 ms each way (sets %s=1)" % INTERNET_VARIABLE)
    for sub_parser in (demo_parser, test, run):
        sub_parser.add_argument("--internet", action="store_true", help=internet_help)
    for name in ("shell", "_shell"):  # _shell: the shell, in the namespace
        sh = commands.add_parser(name, help="a shell, or -- CMD, as a user")
        sh.add_argument("user", nargs="?", default="alice",
                        choices=USERS + (NEWCOMER,))
        sh.add_argument("--fixed", action="store_true",
                        help="a board without pico.sh's access-list bugs A and B")
        sh.add_argument("--internet", action="store_true", help=internet_help)
    args, pytest_args = parser.parse_known_args(argv)
    if args.command not in ("test", "run") and pytest_args:
        parser.error("unrecognized arguments: %s" % " ".join(pytest_args))
    if getattr(args, "internet", False):
        # Through sudo -E and into the namespace: Stack() reads it there.
        os.environ[INTERNET_VARIABLE] = "1"

    if args.command == "_shell":
        return shell(args.user, command, args.fixed)
    if args.command == "_demo":
        return demo()
    if os.geteuid() != 0:
        if not shutil.which("sudo"):
            sys.exit("localstack: needs root for apt-get, unshare and mount; "
                     "run it as root")
        print("localstack: needs root for apt-get, unshare and mount: asking sudo",
              file=sys.stderr)
        os.execvp("sudo", ["sudo", "-E", sys.executable, "-m", "localstack"]
                  + sys.argv[1:])
    install()
    if args.command == "install":
        return 0
    os.chdir(namespace.REPO)
    if args.command == "test":
        return namespace.enter([sys.executable, "-m", "pytest"] + pytest_args + command)
    if args.command == "demo":
        return namespace.enter([sys.executable, "-m", "localstack", "_demo"])
    if args.command == "run":
        return namespace.enter([sys.executable, args.script] + pytest_args + command)
    inner = [sys.executable, "-m", "localstack", "_shell", args.user]
    inner += ["--fixed"] if args.fixed else []
    return namespace.enter(
        inner + ["--"] + (command or [os.environ.get("SHELL", "/bin/sh"), "-i"]))


if __name__ == "__main__":
    sys.exit(main())
