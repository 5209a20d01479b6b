"""Large payloads where wormhole cannot go: over ssh, chosen by the peers themselves.

bob's network refuses the wormhole servers, diana's drops them (connects
hang), carol's lets them through; the servers also stop in the middle of a
map; mallory learns the topic of a transfer; a worker gone bad sends
results cut short, too long, or under a broken seal. Each is a real
process as its pico user on the local stack (see localstack's
Stack.wormhole_blocked).
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import p2p
from localstack import children_of, processes_mentioning, wait_until
from test_getting_started import doctor
from test_p2p import check_story, host, p2p_command, script, STORY, worker
from test_protocol import RawPeer, outcome

WAYS = list(p2p._WAYS)


# -- units ------------------------------------------------------------------------------

def test_a_large_payload_goes_the_first_way_both_peers_can():
    both = ["wormhole", "ssh"]
    assert p2p._via(both, both) == "wormhole"
    assert p2p._via(both, ["ssh"]) == "ssh"
    assert p2p._via(["ssh"], both) == "ssh"
    assert p2p._via(["ssh"], []) == "ssh"
    assert p2p._via(["wormhole"], ["ssh"]) == "wormhole"  # forced: ours it is


def test_p2p_transport_forces_one_way_or_says_what_it_takes(monkeypatch):
    for way in ("ssh", "wormhole"):
        monkeypatch.setenv("P2P_TRANSPORT", " %s " % way.upper())
        assert p2p._Transports(p2p.Config(), "alice").can() == [way]
    monkeypatch.setenv("P2P_TRANSPORT", "pigeon")
    with pytest.raises(p2p.P2PError, match="P2P_TRANSPORT must be auto, wormhole or ssh, "
                                           "not 'pigeon'"):
        p2p.Config()


def test_an_ssh_that_cannot_say_its_settings_is_a_warning_not_an_end(caplog):
    with caplog.at_level("WARNING", logger="p2p"):
        assert p2p._ssh_settings(["sh", "-c", "echo no such option >&2; exit 255", "-"],
                                 "pipe.example") is None
    assert "`ssh -G pipe.example` did not say what ssh's settings are (no such option)" \
        in caplog.text
    assert "process list" in caplog.text


def test_ssh_reads_back_its_settings_with_spaces_in_paths(tmp_path):
    """What ssh -G says, written back with -F, means the same to ssh: a key or
    known-hosts file in a folder with a space in its name included."""
    folder = tmp_path / "Application Support"
    argv = ["ssh", "-o", 'IdentityFile="%s/id key"' % folder,
            "-o", 'UserKnownHostsFile="%s/known hosts" ~/.ssh/known_hosts2' % folder,
            "-o", 'CertificateFile="%s/a \\"quoted\\" name"' % folder,
            "-o", "Port=2222"]
    p2p._settings.clear()
    settings = p2p._ssh_settings(argv, "example.com")
    assert 'identityfile "%s/id key"' % folder in settings.splitlines()
    config = tmp_path / "config"
    config.write_text(settings)

    def said(argv):
        out = subprocess.run(argv + ["-G", "example.com"], capture_output=True,
                             check=True, timeout=30).stdout.decode()
        return sorted(line for line in out.splitlines() if not line.startswith("host "))
    assert said(["ssh", "-F", str(config)]) == said(argv)


def test_a_transfers_topic_goes_to_ssh_in_a_file_not_on_its_command_line(tmp_path,
                                                                           monkeypatch):
    """ssh is given back its own settings (ssh -G) with the command: in a
    file only its user can read, gone once ssh has ended."""
    fake = tmp_path / "ssh"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        case " $* " in
          *" -G "*) [ -n "$NO_G" ] && exit 255; printf 'host x\\nuser ann\\nport 2222\\n' ;;
          *) echo "$@"; while [ "$1" != -F ] && [ $# -gt 0 ]; do shift; done
             [ $# -gt 0 ] && cat "$2" && ls -l "$2" ;;
        esac
    """))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (tmp_path, os.pathsep, os.environ["PATH"]))
    p2p._settings.clear()
    config = p2p.Config(ssh_args="-o Port=2222")
    words = ["sub", "p2p-0123", "-p", "-a", "bob", "-c"]
    process = p2p._ssh(config, "pipe.pico.sh", words, unseen=True)
    out = process.communicate(timeout=30)[0].decode()
    argv, rest = out.split("\n", 1)
    assert "p2p-0123" not in argv and argv.endswith(" pipe.pico.sh")
    assert rest.startswith("RemoteCommand sub p2p-0123 -p -a bob -c\nuser ann\nport 2222\n")
    assert "host x" not in rest and rest.split("\n")[3].startswith("-rw------- ")
    assert not os.path.exists(process.path)
    # Its folder, ours alone, lives only while it holds a file: a process
    # killed outright leaves nothing in /tmp between transfers.
    two = [p2p._ssh(config, "pipe.pico.sh", words, unseen=True) for _ in range(2)]
    folder = os.path.dirname(two[0].path)
    assert os.path.dirname(two[1].path) == folder and os.stat(folder).st_mode & 0o777 == 0o700
    two[0].communicate(timeout=30)
    two[0].wait()
    assert os.path.exists(two[1].path)
    two[1].communicate(timeout=30)
    assert not os.path.exists(folder)
    # Where ssh cannot say its settings, the command goes on the command line.
    monkeypatch.setenv("NO_G", "1")
    p2p._settings.clear()
    process = p2p._ssh(config, "pipe.pico.sh", words, unseen=True)
    assert process.communicate(timeout=30)[0].decode().endswith(
        " pipe.pico.sh sub p2p-0123 -p -a bob -c\n")
    p2p._settings.clear()


def test_a_transfers_pipe_to_ssh_holds_a_sealed_block(tmp_path, monkeypatch):
    """So that the next block is sealed (or opened) while ssh moves this one."""
    fake = tmp_path / "ssh"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        case " $* " in *" -G "*|*" -N "*|*" -O "*) exit 255 ;; esac
        exec sleep 30
    """))
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (tmp_path, os.pathsep, os.environ["PATH"]))
    p2p._settings.clear()
    F_GETPIPE_SZ = 1032  # Linux's
    try:
        for verb in ("pub", "sub"):
            process = p2p._pubsub(p2p.Config(), verb, os.urandom(32), "bob@h:1")
            try:
                pipe = process.stdin if verb == "pub" else process.stdout
                assert fcntl.fcntl(pipe.fileno(), F_GETPIPE_SZ) >= p2p._BLOCK
            finally:
                process.kill()
                process.communicate()
    finally:
        p2p._settings.clear()
        p2p._masters.clear()


def test_a_stream_over_ssh_is_taken_only_whole_and_as_announced(tmp_path, monkeypatch):
    key = os.urandom(32)
    sealed = p2p._seal(key, os.urandom(100000))
    size = len(sealed)

    def framed(body, said=size, end=p2p._SSH_END):
        return p2p._SSH_MAGIC + said.to_bytes(8, "big") + body + end

    def receive(stream, timeout=30, announced=size):
        """What _receive_over_ssh makes of a sub that prints stream, then
        waits (a peer that stops) if stream is a tuple (stream, "stops")."""
        stops = isinstance(stream, tuple)
        (tmp_path / "stream").write_bytes(stream[0] if stops else stream)
        argv = ["sh", "-c", 'cat "$0"' + ("; exec sleep 60" if stops else ""),
                str(tmp_path / "stream")]
        monkeypatch.setattr(p2p, "_pubsub", lambda *_, **popen: subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        folder = tmp_path / ("in%d" % len(list(tmp_path.iterdir())))
        folder.mkdir()
        running = []
        try:
            path = p2p._receive_over_ssh(p2p.Config(timeout=timeout), key, "task",
                                         announced, str(folder), "bob@h:1", running)
        except p2p.TransferError as exc:
            return str(exc)
        finally:
            assert running == []  # its process is stopped and gone
        with open(path, "rb") as f:
            return f.read()  # opened as it came

    assert receive(framed(sealed)) == p2p._open(key, sealed)
    assert receive(framed(sealed[:-100], end=b"")) == (
        "the payload over ssh was cut short: %d of %d bytes came" % (size - 100, size))
    assert receive(framed(sealed + b"more")) == (
        "the payload over ssh is longer than the %d bytes announced" % size)
    assert receive(framed(sealed + b"x", said=size + 1)) == (
        "the board announced %d bytes and the ssh stream %d" % (size, size + 1))
    assert receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") == (
        "what came over ssh is not a p2p.py payload")
    assert receive(b"") == "the ssh transfer ended before the payload came"
    assert receive((b"", "stops"), timeout=0.5) == (
        "the payload did not come over ssh within 0.55s, or stopped coming for 0.5s")
    # One that announces a gigabyte and stops is given up on in seconds, not 500.
    started = time.monotonic()
    assert receive((framed(sealed[:1000], said=10 ** 9, end=b""), "stops"), timeout=1,
                   announced=10 ** 9).startswith("the payload did not come over ssh within 501s, or stopped ")
    assert time.monotonic() - started < 10


# -- stories ----------------------------------------------------------------------------

SIZES = """
    import os, p2p

    def echo(data, gate):
        # Until the test has seen tasks go to both workers (one byte each: unbuffered).
        with open(gate, "rb", buffering=0) as f:
            f.read(1)
        return data

    sizes = [10, 150000, 1000000] * 4   # the board, and too large for it
    payloads = [os.urandom(size) for size in sizes]
    back = list(p2p.map(echo, payloads, [%r] * len(payloads), timeout=240))
    print("same", back == payloads)
"""


def heard(listener, key):
    """(kind, from user, to user, via) of every large payload said on the board."""
    said = set()
    for line in listener.pipe.output.split(b"\n"):
        msg = p2p._decode(line, key)
        if isinstance(msg, p2p._Message) and msg.authentic and msg.kind in (
                "assign", "result") and msg["of"] == 0:
            said.add((msg.kind, p2p._user_of(msg["id"]), p2p._user_of(msg.to), msg["via"]))
    return said


def test_blocked_and_hanging_networks_share_alices_cluster_with_carol(stack, name, gate):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    listener = RawPeer(stack, "alice", cluster, "alice@listener:1")
    sizes = [sys.executable, "-c", textwrap.dedent(SIZES) % gate.path]
    with stack.wormhole_blocked(bob="refused", diana="dropped"):
        worker(stack, "bob", cluster)
        dianas = stack.process("diana", sizes, env={"P2P_CLUSTER": cluster})
    worker(stack, "carol", cluster)
    carols = stack.process("carol", sizes, env={"P2P_CLUSTER": cluster})
    # The tasks end once each client has given large ones to both workers.
    given = {("assign", "diana", "carol"), ("assign", "diana", "bob"),
             ("assign", "carol", "bob"), ("assign", "carol", "carol")}
    listener.pipe.wait_for(lambda _: given <= {said[:3] for said in heard(
        listener, listener.signing)}, timeout=120, what="large tasks to both workers")
    gate.open()
    for client in (dianas, carols):
        assert client.wait(240) == 0, client.errors
        assert client.output == b"same True\n"
    said = heard(listener, listener.signing)
    # Between the blocked peers, and with them, ssh; between the others, wormhole.
    assert {way for _, sender, receiver, way in said
            if {"bob", "diana"} & {sender, receiver}} == {"ssh"}, said
    assert {way for _, sender, receiver, way in said
            if (sender, receiver) == ("carol", "carol")} == {"wormhole"}, said
    assert {("assign", "diana", "carol", "ssh"), ("result", "carol", "diana", "ssh"),
            ("assign", "carol", "bob", "ssh"), ("result", "bob", "carol", "ssh"),
            ("assign", "diana", "bob", "ssh")} <= said, said
    for errors in (dianas.errors, carols.errors):
        assert b"trying again" not in errors and b"trying it over" not in errors, errors


def test_a_map_completes_when_the_wormhole_servers_stop_in_its_middle(stack, gate):
    worker(stack, "diana")
    client = stack.process("diana", [sys.executable, "-c", textwrap.dedent("""
        import p2p

        def step(n, gate):
            if n >= 3:
                with open(gate, "rb", buffering=0) as f:  # blocks until the test opens it
                    f.read(1)  # one byte: the gate holds one for each
            return n, bytes(200000)  # too large for the board

        for n, data in p2p.map(step, range(8), [%r] * 8, timeout=240, chunksize=1):
            print("done", n, len(data), flush=True)
    """ % gate.path)])
    try:
        client.expect("done 2 200000\n", timeout=60)  # by wormhole
        stack.stop_wormhole()
        gate.open()
        assert client.wait(240) == 0, client.errors
    finally:
        stack.start_wormhole()
    assert client.output.decode().splitlines() == ["done %d 200000" % n for n in range(8)]
    assert b"trying it over ssh" in client.errors
    assert b"failed" not in client.output


def test_a_large_tasks_way_back_is_set_up_while_it_runs_and_gone_after(stack, gate):
    """bob's network blocks wormhole: a task that comes over ssh has its
    result's pub (his worker's) and sub (his client's) on their topic before
    it ends; a result that rides the board after all leaves none behind."""
    with stack.wormhole_blocked(bob="refused"):
        worker(stack, "bob")
        client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
            import sys, p2p

            def backwards(data, gate=None):
                if gate is None:
                    return len(data)  # small: it rides the board
                with open(gate, "rb", buffering=0) as f:  # until the test opens it
                    f.read(1)
                return data[::-1]

            data = bytes(range(256)) * 1000
            print(p2p.submit(backwards, data).result(120), flush=True)
            sys.stdin.readline()
            print(p2p.submit(backwards, data, %r).result(120) == data[::-1])
        """ % gate.path)])
    client.expect("256000\n", timeout=120)
    client.send(b"go\n")

    def way_back():
        return [clients for clients in stack.channels().values()
                if sorted(clients) == [("pub", "bob"), ("sub", "bob")]]

    wait_until(way_back, 60, "the result's pub and sub on their topic")
    gate.open()
    assert client.wait(120) == 0, client.errors
    assert client.output == b"256000\nTrue\n"
    # pico.sh notices a pub killed while it waits for a reader at its next
    # ping (5 s): the first task's, started ahead, goes then.
    wait_until(lambda: stack.channels() == {}, 30, "every topic of the two tasks gone")


def test_mallory_on_the_topic_of_a_transfer_reads_nothing_and_stops_nothing(stack):
    """The topic of bob's transfer is not in ps, where anyone on his machine
    could read it; mallory, who learns it all the same, tries it; bob's own
    peer takes the task."""
    peer = RawPeer(stack, "bob", "personal", "bob@peer:1#1", key=None)
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import p2p
        print(p2p.submit(len, b"x" * 300000).result(120))
    """)], env={"P2P_TRANSPORT": "ssh"})
    peer.wait_for("hello", role="client", user="bob")
    peer.send("idle", id=peer.id, py=p2p.PY, dh=peer.share.public, free=1, can=["ssh"])
    assign = peer.wait_for("assign", to=peer.id, n=0)
    assert (assign["via"], assign["of"], assign["can"]) == ("ssh", 0, ["ssh"])
    key = peer.key(assign, b"task")
    topic = p2p._ssh_topic(key)
    wait_until(lambda: stack.channels("public/" + topic) == {
        "public/" + topic: [("waiting pub", "bob")]}, 30,
               "bob's pub on the topic")
    assert children_of(client.process.pid, "pipe.pico.sh")
    assert not children_of(client.process.pid, topic)
    for verb in ("sub", "pipe"):
        tried = stack.run("mallory", ["ssh", "pipe.pico.sh", verb, topic, "-p"], timeout=20,
                          input="" if verb == "sub" else "p2pS forged\n")
        assert tried.stdout == "", tried
    assert "access denied" in stack.run("mallory", ["ssh", "pipe.pico.sh", "sub", topic,
                                                    "-p"], timeout=20).stderr
    got = stack.run("bob", ["ssh", "pipe.pico.sh", "sub", topic, "-p", "-a", "bob", "-c"],
                    timeout=60, text=False)
    head = p2p._SSH_MAGIC + assign["size"].to_bytes(8, "big")
    assert got.stdout.startswith(head) and got.stdout.endswith(p2p._SSH_END)
    task = p2p._open(key, got.stdout[len(head):-len(p2p._SSH_END)])
    assert p2p._load(p2p.io.BytesIO(task), trust=True) == (len, (b"x" * 300000,), {})
    result = p2p._seal(peer.key(assign, b"result"), outcome(300000))
    peer.say_payload("result", assign["id"], result, id=peer.id, task=assign["task"],
                     free=1, pair=peer.key(assign, b"lines"))
    assert client.wait(60) == 0, client.errors
    assert client.output == b"300000\n"


def test_results_over_ssh_cut_short_too_long_or_forged_are_refused_and_retried(
        stack, tmp_path):
    peer = RawPeer(stack, "bob", "personal", "bob@bad:1#1", key=None)
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import p2p
        print(p2p.submit(abs, -7).result(120))
    """)], env={"P2P_RETRIES": "3"})
    peer.wait_for("hello", role="client", user="bob")
    answer = outcome(bytes(100000))  # too large for the board: over ssh
    for case in ("cut short", "too long", "forged", "honest"):
        peer.send("idle", id=peer.id, py=p2p.PY, dh=peer.share.public, free=1, can=["ssh"])
        assign = peer.wait_for("assign", to=peer.id, n=0)
        assert assign["can"] == ["wormhole", "ssh"]  # bob's client could take either
        key = peer.key(assign, b"result")
        sealed = p2p._seal(os.urandom(32) if case == "forged" else key, answer)
        body = {"cut short": sealed[:-1000], "too long": sealed + b"!" * 1000}.get(
            case, sealed)
        stream = tmp_path / case
        stream.write_bytes(p2p._SSH_MAGIC + len(sealed).to_bytes(8, "big") + body +
                           (b"" if case == "cut short" else p2p._SSH_END))
        with open(stream, "rb") as source:
            sending = stack.spawn("bob", ["ssh", "pipe.pico.sh", "pub", p2p._ssh_topic(key),
                                          "-p", "-a", "bob", "-c"], stdin=source)
        peer.send("result", assign["id"], id=peer.id, task=assign["task"], size=len(sealed),
                  free=1, n=0, of=0, data="", via="ssh",
                  pair=peer.key(assign, b"lines"))
        sending.wait(60)
    assert client.wait(60) == 0, client.errors
    assert client.output == b"%r\n" % bytes(100000)
    errors = client.errors.decode()
    assert "its result was refused: the payload over ssh was cut short: %d of %d bytes" \
        " came; trying again" % (len(sealed) - 1000, len(sealed)) in errors
    assert "its result was refused: the payload over ssh is longer than the %d bytes " \
        "announced; trying again" % len(sealed) in errors
    assert "its result was refused: its seal is broken" in errors


def test_carol_gone_bad_cannot_switch_bobs_worker_off_wormhole_by_never_sending(
        stack, name):
    """carol assigns bob's worker large tasks by wormhole and never sends
    them: bob declines them, and still offers wormhole to everyone else."""
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    working = p2p_command(stack, "bob", "worker", cluster, env={"P2P_TIMEOUT": "3"})
    working.expect("worker bob@", stream="stderr", timeout=30)
    listener = RawPeer(stack, "alice", cluster, "alice@listener:1")
    bad = RawPeer(stack, "carol", cluster, "carol@bad:1")
    bad.send("hello", id=bad.id, role="client", user="carol", py=p2p.PY, proof="")
    slot = bad.wait_for("idle", can=WAYS)["id"]
    for n in range(1, 4):
        bad.send("assign", slot, id=bad.id, task="%016x" % n, dh=bad.share.public, py="",
                 can=WAYS, size=300000, n=0, of=0, data="", via="wormhole")
        bad.wait_for("decline", to=bad.id, task="%016x" % n, timeout=60)
    assert bad.wait_for("idle", id=slot, timeout=60)["can"] == WAYS
    dianas = script(stack, "diana", """
        import p2p
        print(p2p.submit(len, bytes(300000)).result(120))
    """, env={"P2P_CLUSTER": cluster})
    assert dianas.stdout == "300000\n", dianas.stderr
    assert ("assign", "diana", "bob", "wormhole") in heard(listener, listener.signing)
    assert b"in a row failed" not in working.errors


def test_carols_worker_gone_bad_cannot_switch_dianas_client_off_wormhole(stack, name):
    """carol's worker answers diana's tasks with results by wormhole that
    never come: diana tries them elsewhere, and still sends by wormhole."""
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    bad = RawPeer(stack, "carol", cluster, "carol@bad:1#1")
    listener = RawPeer(stack, "alice", cluster, "alice@listener:1")
    client = stack.process("diana", [sys.executable, "-c", textwrap.dedent("""
        import sys, p2p
        with p2p.Executor(retries=5) as ex:
            print("first", ex.submit(abs, -7).result(120), flush=True)
            sys.stdin.readline()
            print("second", ex.submit(len, bytes(300000)).result(120), flush=True)
    """)], env={"P2P_CLUSTER": cluster, "P2P_TIMEOUT": "3"})
    bad.wait_for("hello", role="client", user="diana")
    for n in range(3):
        bad.send("idle", id=bad.id, py=p2p.PY, dh=bad.share.public, free=1, can=WAYS)
        assign = bad.wait_for("assign", to=bad.id, n=0)
        bad.send("result", assign["id"], id=bad.id, task=assign["task"], size=300000,
                 free=1, n=0, of=0, data="", via="wormhole",
                 pair=bad.key(assign, b"lines"))
        bad.wait_for("withdraw", to=bad.id, task=assign["task"], timeout=60)
    bad.send("bye", id=bad.id)
    worker(stack, "bob", cluster)
    client.expect("first 7\n", timeout=120)
    client.send(b"go\n")
    assert client.wait(120) == 0, client.errors
    assert client.output.endswith(b"second 300000\n")
    assert ("assign", "diana", "bob", "wormhole") in heard(listener, listener.signing)
    assert b"in a row failed" not in client.errors


def test_doctor_and_status_tell_of_a_network_that_blocks_wormhole(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    with stack.wormhole_blocked(bob="refused"):
        status, checks = doctor(stack, "bob", cluster)
        worker(stack, "bob", cluster)
    worker(stack, "carol", cluster)
    assert status == 0, checks
    assert {check for check, (verdict, _) in checks.items() if verdict != "ok"} == {
        "mailbox", "transit relay", "wormhole transfer"}, checks
    assert "cannot be reached ([Errno 111] Connection refused)" in checks["mailbox"][1]
    assert checks["ssh transfer"][1].startswith("a file went over ssh (pub, sub) to you in ")
    assert checks["transports"][1].startswith(
        "ssh only: wormhole cannot work here (127.0.0.2:")
    assert "Large payloads go over ssh through pico.sh instead, automatically" in \
        checks["transports"][1]
    found = json.loads(stack.run("carol", [sys.executable, "-m", "p2p", "status", cluster,
                                           "--json"]).stdout)
    assert {w["user"]: w["can"] for w in found["workers"]} == {
        "bob": ["ssh"], "carol": ["wormhole", "ssh"]}
    shown = stack.run("carol", [sys.executable, "-m", "p2p", "status", cluster]).stdout
    assert "large payloads over ssh (wormhole blocked)" in shown
    assert "large payloads by wormhole or ssh" in shown


def test_the_stories_run_where_every_network_blocks_wormhole(stack, name):
    cluster = "alice/" + name
    with stack.wormhole_blocked(alice="refused", bob="refused", carol="dropped"):
        host(stack, cluster, "bob,carol")
        worker(stack, "carol", cluster)
        check_story(script(stack, "bob", STORY, env={"P2P_CLUSTER": cluster}))
        large = script(stack, "bob", """
            import os, p2p
            data = os.urandom(3 << 20)
            print(p2p.submit(bytes, data).result(120) == data)
        """, env={"P2P_CLUSTER": cluster})
    assert large.stdout == "True\n", large.stderr


MAPS = """
    import os, sys, p2p

    def echo(data):
        return data

    data = [os.urandom(200000) for _ in range(4)]  # too large for the board
    with p2p.Executor() as executor:
        print("first", list(executor.map(echo, data, timeout=120)) == data, flush=True)
        sys.stdin.readline()
        print("second", list(executor.map(echo, data, timeout=180)) == data, flush=True)
"""


def control_paths(stack, user):
    """The control sockets that the user's ssh sessions name (ControlPath)."""
    home = ("HOME=%s\0" % os.path.join(stack.user_dir(user), "home")).encode()
    paths = set()
    for pid in processes_mentioning("ControlPath="):
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                if home not in f.read():
                    continue
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                words = f.read().decode().split("\0")
        except OSError:
            continue  # it ended while we looked
        paths.update(word.split("=", 1)[1] for word in words
                     if word.startswith("ControlPath="))
    return paths


def masters_on(paths):
    """The pids of the ssh masters on these control sockets (ssh names a
    master it keeps in the background after its socket)."""
    return [pid for path in paths for pid in processes_mentioning("ssh: %s [mux]" % path)]


def test_bobs_sessions_ride_one_ssh_connection_and_leave_none_behind(stack):
    """Each of bob's processes makes one ssh connection for its sessions to
    the board's host, its board's own: his worker's transfers ride one, his
    client's another. When those connections die between two maps, the
    processes make new ones and the next map completes; once they end, no
    connection of theirs is left."""
    with stack.wormhole_blocked(bob="refused"):
        before = stack.connections("bob")
        working = worker(stack, "bob")
        client = stack.process("bob", [sys.executable, "-c", textwrap.dedent(MAPS)])
    client.expect("first True\n", timeout=120)
    # 4 tasks and 4 results over ssh, a pub and a sub each: 16 sessions. Each
    # process also asks pico.sh its `user` and opens its board (the worker a
    # spare session too, which goes on its own while the board makes the
    # connection): 21 connections if none were shared, 5 at most if they are.
    assert stack.connections("bob") - before <= 5, stack.connections("bob") - before
    paths = control_paths(stack, "bob")  # the worker's and the client's
    masters = masters_on(paths)
    assert len(paths) == len(masters) == 2, (paths, masters)
    for pid in masters:
        os.kill(pid, signal.SIGKILL)  # its socket stays behind, as after a crash
    client.send(b"go\n")
    client.expect("second True\n", timeout=180)
    assert client.wait(60) == 0, client.errors
    wait_until(lambda: len(masters_on(paths)) == 1, 30, "the worker's new master")
    working.process.terminate()
    working.wait(30)
    wait_until(lambda: not masters_on(paths), 10, "bob's masters gone")
