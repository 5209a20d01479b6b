"""Private namespaces for the local stack, so no test touches the machine.

``enter(argv)`` runs argv in new network, mount and PID namespaces:

* the network namespace has only ``lo``: wormhole peers offer no external
  addresses, so every byte of a test stays on loopback;
* the mount namespace bind-mounts a copy of /etc/hosts that resolves
  transit.magic-wormhole.io and mailbox.localstack to 127.0.0.1 (the
  machine's own file is never edited) and gives sshd a private /run;
* the PID namespace ends with its first process, this module's ``init``:
  when the command exits, is interrupted or fails, the kernel kills every
  process left in it, so nothing of the stack outlives the run.

It needs root (or sudo): unshare and mount need CAP_SYS_ADMIN.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TRANSIT_NAME = "transit.magic-wormhole.io"
# The mailbox under a name too: Go's proxy support passes loopback
# addresses by, so a test of wormhole behind a proxy needs a name.
MAILBOX_NAME = "mailbox.localstack"


def enter(argv):
    """Run argv inside fresh namespaces and return its exit status."""
    scratch = tempfile.mkdtemp(prefix="localstack-")
    try:
        hosts = os.path.join(scratch, "hosts")
        shutil.copyfile("/etc/hosts", hosts)
        with open(hosts, "a") as f:
            f.write("\n127.0.0.1 %s %s\n" % (TRANSIT_NAME, MAILBOX_NAME))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        )
        command = [
            "unshare", "--net", "--mount", "--pid", "--fork", "--mount-proc",
            "--propagation", "private", "--kill-child=SIGTERM",
            sys.executable, os.path.abspath(__file__), hosts, "--",
        ] + list(argv)
        return subprocess.call(command, env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def init(hosts, argv):
    """PID 1 of the namespace: set it up, run argv, reap orphans, exit."""
    for step in (
        ["ip", "link", "set", "lo", "up"],
        ["mount", "--bind", hosts, "/etc/hosts"],
        ["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"],
    ):
        subprocess.run(step, check=True)
    child = subprocess.Popen(argv)
    # A terminal's Ctrl-C reaches the child itself; a SIGTERM is passed on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: child.terminate())
    while True:
        pid, status = os.wait()
        if pid == child.pid:
            return os.waitstatus_to_exitcode(status) if hasattr(
                os, "waitstatus_to_exitcode") else (status >> 8)


if __name__ == "__main__":
    code = init(sys.argv[1], sys.argv[3:])
    sys.exit(code if code >= 0 else 128 - code)
