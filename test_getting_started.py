"""A newcomer's first minutes, on the local stack: doctor finds what is wrong,
status shows who is there, a wormhole tool is found or fetched, progress
bars, pip install, and the Mandelbrot example.
"""

import http.server
import json
import os
import pty
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest

import p2p
from localstack import namespace
from test_localstack import on_channel
from test_p2p import host, p2p_command, script, seven_in_flight, tasks_done, worker
from test_protocol import RawPeer

PINNED = p2p.WORMHOLE_RELEASE


def doctor(stack, user, *args, env=None):
    """``python -m p2p doctor ARGS`` as user: (exit status, {check: (verdict, detail)})."""
    answer = stack.run(user, [sys.executable, "-m", "p2p", "doctor", *args], env=env,
                       timeout=120)
    checks = {}
    for line in answer.stdout.splitlines():
        verdict, _, rest = line.partition(" ")
        check, _, detail = rest.strip().partition(": ")
        checks[check] = (verdict, detail)
    assert answer.stdout.count("\n") == len(checks), answer.stdout + answer.stderr
    return answer.returncode, checks


def tools_only(stack, user, folder, *tools):
    """An environment whose PATH has user's ssh and, of the wormhole tools, only these."""
    folder.mkdir(exist_ok=True)
    for tool in tools:
        os.symlink(shutil.which(tool), folder / tool)
    return {"PATH": "%s:%s" % (os.path.join(stack.user_dir(user), "bin"), folder)}


def failed(checks):
    return {check for check, (verdict, _) in checks.items() if verdict != "ok"}


# -- doctor -------------------------------------------------------------------------------

def test_doctor_finds_nothing_wrong_for_bob_on_alices_cluster(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    worker(stack, "carol", cluster, "--workers", "2")
    status, checks = doctor(stack, "bob", cluster)
    assert (status, failed(checks)) == (0, set()), checks
    assert list(checks) == ["ssh", "pico.sh account", "board", "wormhole tool", "mailbox",
                            "transit relay", "wormhole transfer", "ssh transfer",
                            "transports", "cluster " + cluster]
    assert checks["pico.sh account"][1] == "you are bob on pico.sh"
    assert checks["wormhole tool"][1].startswith("wormhole-william %s (" % PINNED)
    assert checks["mailbox"][1] == "%s accepts connections" % stack.relay_url.split("/")[2]
    assert checks["transports"][1].startswith("wormhole and ssh: large payloads go by "
                                              "wormhole, and over ssh with peers")
    assert checks["cluster " + cluster][1].startswith(
        "reachable as bob; 1 worker process(es) with 2 slot(s), 0 busy")


def test_doctor_tells_a_newcomer_to_make_a_pico_account_first(stack):
    status, checks = doctor(stack, "newcomer", "alice/p2p")
    assert status == 1
    verdict, detail = checks["pico.sh account"]
    assert verdict == "FAIL" and "run `ssh pico.sh` and pick a user name" in detail
    assert checks["board"] == ("skip", "needs pico.sh account")
    assert checks["cluster alice/p2p"] == ("skip", "needs board")
    assert checks["wormhole transfer"][0] == "ok"  # wormhole needs no account
    assert checks["ssh transfer"] == ("skip", "needs board")
    assert checks["transports"][0] == "FAIL"


def test_doctor_tells_an_unknown_host_key_from_an_unknown_user_key(stack, tmp_path):
    (tmp_path / "known_hosts").write_text("")
    status, checks = doctor(stack, "bob", env={"P2P_SSH_ARGS": (
        "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s" % (tmp_path / "known_hosts"))})
    verdict, detail = checks["pico.sh account"]
    assert (status, verdict) == (1, "FAIL")
    assert "Host key verification failed" in detail
    assert "Accept pico.sh's host key once: run `ssh pico.sh` and answer yes" in detail
    stack._keygen(str(tmp_path / "unknown_key"))
    with open(stack.ssh_config("bob")) as f:
        (tmp_path / "ssh_config").write_text(f.read().replace(
            stack.user_dir("bob") + "/id_ed25519", str(tmp_path / "unknown_key")))
    status, checks = doctor(stack, "bob", env={
        "PATH": "/usr/bin:/bin", "P2P_SSH_ARGS": "-F %s" % (tmp_path / "ssh_config")})
    verdict, detail = checks["pico.sh account"]
    assert (status, verdict) == (1, "FAIL")
    assert "Permission denied (publickey)" in detail and "not registered with pico.sh" in detail


def test_doctor_tells_mallory_she_is_not_on_the_list(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob")
    status, checks = doctor(stack, "mallory", cluster)
    assert (status, failed(checks)) == (1, {"cluster " + cluster})
    assert checks["cluster " + cluster][1] == (
        "you (mallory) hold no key for %s: ask alice to run `python -m p2p invite %s "
        "mallory` and send you the line it prints, then run that line here: `python -m "
        "p2p join %s CODE`" % (cluster, cluster, cluster))


def test_without_a_wormhole_tool_doctor_and_worker_say_how_to_get_one(stack, tmp_path):
    env = tools_only(stack, "carol", tmp_path / "bin")
    status, checks = doctor(stack, "carol", env=env)
    assert (status, failed(checks)) == (0, {"wormhole tool", "wormhole transfer"})
    assert checks["wormhole tool"][0] == "warn"
    assert "run `python -m p2p install-wormhole`" in checks["wormhole tool"][1]
    assert checks["wormhole transfer"] == ("skip", "needs wormhole tool")
    assert checks["ssh transfer"][0] == "ok"
    assert checks["transports"][1].startswith("ssh only: wormhole cannot work here (no "
                                              "wormhole tool was found")
    # Told to use wormhole only, a worker started without a terminal cannot
    # ask: it says the same and stops; else it carries large payloads over ssh.
    working = stack.run("carol", [sys.executable, "-m", "p2p", "worker"],
                        env=dict(env, P2P_TRANSPORT="wormhole"))
    assert working.returncode == 1
    assert "no wormhole tool was found" in working.stderr
    carol = stack.process("carol", [sys.executable, "-m", "p2p", "worker"], env=env)
    carol.expect("worker carol@", stream="stderr", timeout=30)
    big = script(stack, "carol", "import p2p; print(p2p.submit(len, bytes(10 ** 5))"
                 ".result(60))", env=env)
    assert big.stdout == "100000\n", big.stderr
    misnamed = script(stack, "bob", """
        import p2p
        try:
            p2p.Executor()
        except p2p.P2PError as exc:
            print(exc)
    """, env={"P2P_WORMHOLE": "/nonexistent/wormhole"})
    assert misnamed.stdout.startswith(
        "P2P_WORMHOLE names '/nonexistent/wormhole', which was not found"), misnamed.stderr


def test_doctor_says_to_retry_without_the_proxy_that_stalls_wormhole(stack):
    # A proxy that accepts connections and never answers; Go passes loopback
    # addresses by the proxy, so the mailbox goes by a name here.
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.1", 0))
    black_hole.listen(16)
    try:
        status, checks = doctor(stack, "bob", env={
            "http_proxy": "http://127.0.0.1:%d" % black_hole.getsockname()[1],
            "WORMHOLE_RELAY_URL": stack.relay_url.replace("127.0.0.1",
                                                          namespace.MAILBOX_NAME)})
    finally:
        black_hole.close()
    assert (status, failed(checks)) == (0, {"wormhole transfer"})
    assert checks["mailbox"][1].startswith(namespace.MAILBOX_NAME)
    assert checks["transports"][1].startswith("ssh only: ")
    assert checks["wormhole transfer"] == ("warn",
        "wormhole receive did not finish within 10s while http_proxy is set: wormhole's "
        "link to its mailbox often stalls behind an HTTP proxy. Retry without it: env -u "
        "http_proxy python -m p2p doctor (and start workers and scripts the same way)")


# -- status -------------------------------------------------------------------------------

def test_status_shows_the_host_each_worker_and_each_client(stack, name, gate):
    cluster = "alice/" + name
    started = int(time.time())
    hosting, working, client = seven_in_flight(stack, cluster, gate)
    answer = stack.run("diana", [sys.executable, "-m", "p2p", "status", cluster, "--json"])
    assert answer.returncode == 0, answer.stderr
    found = json.loads(answer.stdout)
    assert (found["cluster"], found["personal"]) == (cluster, False)
    assert found["host"]["user"] == "alice"
    assert found["host"]["members"] == ["bob", "carol", "diana"]
    assert found["host"]["until"] > started + 13 * 86400  # open for 14 days
    [carol] = found["workers"]
    assert (carol["user"], carol["slots"], carol["busy"], carol["done"]) == ("carol", 1, 1, 0)
    assert carol["python"] == p2p.PY and started - 60 <= carol["since"] <= time.time()
    [bob] = found["clients"]
    assert (bob["user"], bob["queued"], bob["running"]) == ("bob", 0, 1)
    text = stack.run("diana", [sys.executable, "-m", "p2p", "status", cluster]).stdout
    assert text.startswith("%s: hosted by %s since " % (cluster, found["host"]["id"]))
    assert "; members: bob, carol, diana\n1 worker process(es) with 1 slot(s), 1 busy\n" in text
    assert "  %s  1 slot(s), 1 busy, 0 task(s) done, Python %s" % (
        carol["id"], p2p.PY) in text
    assert "1 client(s)\n  %s  0 queued, 1 running, since " % bob["id"] in text
    gate.open()
    assert client.wait(60) == 0 and client.output == b"7\n"


def test_status_ignores_answers_that_are_not_what_a_peer_would_say(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "carol,diana")
    liar = RawPeer(stack, "carol", cluster, "carol@liar")
    on_channel(stack, "alice", cluster + "/board", "alice", "alice", "carol")
    asking = p2p_command(stack, "diana", "status", cluster)
    who = liar.wait_for("who")
    for n, role, about in ((1, "host", {"members": [1, 2], "until": None}),
                           (2, "worker", {"slots": "many", "busy": 0, "done": 0})):
        liar.send("here", who["id"], id="carol@liar:%d" % n, role=role, user="carol",
                  py=p2p.PY, since=0, about=about)
    assert asking.wait(30) == 0, asking.errors
    shown = asking.output.decode()
    assert shown.startswith("%s: hosted by alice@" % cluster), shown
    assert "\n0 worker process(es) with 0 slot(s), 0 busy\n" in shown


# -- a wormhole tool ----------------------------------------------------------------------

def test_magic_wormhole_and_wormhole_william_peers_work_together(stack, name, tmp_path):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    python_only = tools_only(stack, "carol", tmp_path / "python", "wormhole")
    status, checks = doctor(stack, "carol", env=python_only)
    assert checks["wormhole tool"][1].startswith("magic-wormhole 0.")
    assert checks["wormhole transfer"][0] == "ok"
    on_python = p2p_command(stack, "carol", "worker", cluster, "-v", env=python_only)
    on_python.expect("worker carol@", stream="stderr", timeout=30)
    both = """
        import os, p2p
        with p2p.Executor(os.environ["P2P_CLUSTER"]) as ex:
            print(ex.submit(bytes, bytes(300000)).result(60) == bytes(300000))
            print(ex.submit(lambda: os.environ["PATH"]).result(60))  # the worker's
    """
    william = script(stack, "bob", both, env={"P2P_CLUSTER": cluster})
    assert william.stdout == "True\n%s\n" % python_only["PATH"], william.stderr
    assert "run: %s receive --accept-file" % (tmp_path / "python" / "wormhole") in (
        on_python.errors.decode())
    on_python.process.terminate()
    on_python.wait(30)
    worker(stack, "diana", cluster)  # on wormhole-william
    bob_python_only = tools_only(stack, "bob", tmp_path / "python-bob", "wormhole")
    python = script(stack, "bob", both, env=dict(bob_python_only, P2P_CLUSTER=cluster))
    assert python.stdout == "True\n%s\n" % stack.env("diana")["PATH"], python.stderr


class Releases(http.server.BaseHTTPRequestHandler):
    """wormhole-william's release files as GitHub serves them, and as it may fail:
    /good/..., /cut/... (the connection drops half way), /broken/... (a 500),
    /impostor/... (a file that runs but is not wormhole-william)."""

    def do_GET(self):
        kind, _, path = self.path.lstrip("/").partition("/")
        if path != "%s/%s" % (PINNED, p2p._release_file()) or kind not in (
                "good", "cut", "impostor"):
            self.send_error(500 if kind == "broken" else 404)
            return
        with open(shutil.which("true" if kind == "impostor" else "wormhole-william"),
                  "rb") as f:
            body = f.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2] if kind == "cut" else body)

    def log_message(self, *args):
        pass


@pytest.fixture
def releases():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Releases)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()


def test_install_wormhole_fetches_the_pinned_release_that_p2p_then_uses(
        stack, tmp_path, releases):
    env = dict(tools_only(stack, "carol", tmp_path / "bin"),
               XDG_DATA_HOME=str(tmp_path / "data"))
    installed = stack.run("carol", [sys.executable, "-m", "p2p", "install-wormhole",
                                    "--from", releases + "/good"], env=env)
    target = tmp_path / "data" / "p2p" / "wormhole-william"
    assert installed.stdout == "installed wormhole-william %s as %s\n" % (PINNED, target), (
        installed.stderr)
    assert os.listdir(target.parent) == ["wormhole-william"]  # no partial download
    status, checks = doctor(stack, "carol", env=env)
    assert checks["wormhole tool"] == ("ok", "wormhole-william %s (%s)" % (PINNED, target))
    assert checks["wormhole transfer"][0] == "ok"


@pytest.mark.parametrize("kind, said", [
    ("cut", "the download stopped after "),
    ("broken", "HTTP Error 500"),
    ("impostor", "is not a wormhole tool we know"),
    ("gone", "HTTP Error 404"),
])
def test_a_failed_install_says_why_and_leaves_nothing_behind(
        stack, tmp_path, releases, kind, said):
    answer = stack.run("carol", [sys.executable, "-m", "p2p", "install-wormhole"], env={
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "P2P_WORMHOLE_DOWNLOADS": "%s/%s" % (releases, kind)})
    assert answer.returncode == 1
    assert answer.stderr.startswith("p2p: error: could not install wormhole-william from "
                                    "%s/%s/%s/" % (releases, kind, PINNED)), answer.stderr
    assert said in answer.stderr and "Nothing was kept" in answer.stderr
    assert os.listdir(tmp_path) == []  # not even the data folder


def read_until(fd, text, timeout=60):
    """What a terminal showed until text appeared (or the deadline passed)."""
    seen, deadline = b"", time.monotonic() + timeout
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0 and select.select([fd], [], [], left)[0], (
            "%r never appeared; the terminal showed %r" % (text, seen[-300:]))
        seen += os.read(fd, 65536)
    return seen.decode(errors="replace")


def on_a_terminal(stack, user, argv, env=None):
    """argv as user with a terminal for stdin and stderr; (process, the terminal)."""
    terminal, side = pty.openpty()
    process = stack.spawn(user, argv, env=env, stdin=side, stdout=subprocess.DEVNULL,
                          stderr=side)
    os.close(side)
    return process, terminal


def test_a_worker_on_a_terminal_offers_to_fetch_a_wormhole_tool(stack, tmp_path, releases):
    env = dict(tools_only(stack, "carol", tmp_path / "bin"),
               XDG_DATA_HOME=str(tmp_path / "data"),
               P2P_WORMHOLE_DOWNLOADS=releases + "/good")
    process, terminal = on_a_terminal(
        stack, "carol", [sys.executable, "-m", "p2p", "worker"], env=env)
    try:
        asked = read_until(terminal, "[y/N] ")
        assert "no wormhole tool was found" in asked
        assert "download wormhole-william %s from GitHub into %s now?" % (
            PINNED, tmp_path / "data" / "p2p") in asked
        os.write(terminal, b"y\n")
        read_until(terminal, "worker carol@")
        assert os.access(tmp_path / "data" / "p2p" / "wormhole-william", os.X_OK)
    finally:
        process.kill()
        process.wait(30)
        os.close(terminal)


# -- progress -----------------------------------------------------------------------------

PROGRESS = """
import sys, p2p

def when_told(x, gate=sys.argv[1]):
    if gate:
        with open(gate, "rb", buffering=0) as f:  # blocks until the test opens it
            f.read(1)  # one byte: the others are for the other calls
    return abs(x)

print(sum(p2p.map(when_told, range(-40, 0), progress=True)))
with p2p.Executor(progress=True) as ex:
    print(sum(f.result(60) for f in [ex.submit(abs, -i) for i in range(5)]))
"""


def test_map_and_executor_show_progress_on_a_terminal_and_plain_lines_elsewhere(
        stack, gate):
    worker(stack, "diana", None, "--workers", "2")
    plain = stack.run("diana", [sys.executable, "-c", PROGRESS, ""], timeout=90)
    assert plain.stdout == "820\n10\n", plain.stderr
    assert "p2p: 40/40 calls done in " in plain.stderr
    assert "p2p: 5/5 calls done in " in plain.stderr
    process, terminal = on_a_terminal(stack, "diana", [sys.executable, "-c", PROGRESS,
                                                       gate.path])
    try:
        waiting = read_until(terminal, " worker(s) in use")  # redrawn while they wait
        gate.open()
        shown = read_until(terminal, "5/5 calls done")
    except BaseException:
        process.kill()
        raise
    finally:
        process.wait(60)
        os.close(terminal)
    assert "\r\x1b[Kp2p [%s] 0/40 calls, 0.0/s, ? left, " % ("-" * 24) in waiting
    assert "\r\x1b[Kp2p [%s] 40/40 calls done in " % ("#" * 24) in shown


# -- packaging and the example --------------------------------------------------------------

def test_pip_install_gives_a_p2p_command(stack, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for part in ("p2p.py", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(namespace.REPO, part), source)
    venv = tmp_path / "venv"
    # Debian's Python has setuptools and wheel; the namespace has no network.
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--system-site-packages", str(venv)],
                   check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-build-isolation",
                    "--no-index", str(source)], check=True)
    env = {"PYTHONPATH": None}  # not the checkout's p2p.py
    assert stack.run("bob", [str(venv / "bin" / "p2p"), "user"], env=env).stdout == "bob\n"
    version = stack.run("bob", [str(venv / "bin" / "p2p"), "--version"], env=env)
    assert version.stdout == "p2p %s\n" % p2p.__version__
    where = stack.run("bob", [str(venv / "bin" / "python"), "-c",
                              "import p2p; print(p2p.__file__)"], env=env)
    assert where.stdout.startswith(str(venv / "lib"))


def png_pixels(path):
    """(width, height, rows of RGB bytes) of an 8-bit RGB PNG, every chunk checked."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, at = {}, 8
    while at < len(data):
        size, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + size]
        assert struct.unpack(">I", data[at + 8 + size:at + 12 + size])[0] == zlib.crc32(
            kind + body)
        chunks[kind] = body
        at += 12 + size
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    assert (depth, colour, list(chunks)[-1]) == (8, 2, b"IEND")
    raw, stride = zlib.decompress(chunks[b"IDAT"]), 1 + 3 * width
    assert len(raw) == height * stride and not any(raw[::stride])  # filter bytes: none
    return width, height, [raw[y * stride + 1:(y + 1) * stride] for y in range(height)]


def test_the_mandelbrot_example_renders_a_png_across_the_cluster(stack, name, tmp_path):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    working = worker(stack, "carol", cluster, "--workers", "2")
    image = tmp_path / "mandelbrot.png"
    answer = stack.run("bob", [
        sys.executable, os.path.join(namespace.REPO, "examples", "mandelbrot.py"),
        "--cluster", cluster, "--width", "96", "--height", "64", "--rows", "16",
        "--out", str(image)], timeout=120)
    assert answer.stdout.startswith("wrote %s: 96x64 pixels in 4 tiles on %s, " % (
        image, cluster)), answer.stderr
    width, height, rows = png_pixels(image)
    assert (width, height) == (96, 64)
    axis = rows[32]  # the real axis: outside the set at -2.25, inside at -0.06
    assert axis[0:3] != b"\0\0\0" and axis[3 * 70:3 * 71] == b"\0\0\0"
    assert len(tasks_done(working, 4)) == 4  # one per tile, on carol's workers
