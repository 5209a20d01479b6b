"""Keyed clusters: invitations, a member taken off, strangers and replays.

A shared cluster's key is made on its owner's machine and handed to each
member once, by ``python -m p2p invite`` and ``join``; every board line is
signed with it and every payload key depends on it. These stories run as
real users on the faithful board: bob joins with an invite, carol without
one is told how, diana is taken off and is out after the host restarts, and
mallory, first on the board by pico.sh's bug, tries every line she can make
or record, and gets nothing.
"""

import json
import os
import secrets
import subprocess
import sys
import textwrap
import time

import pytest

import p2p
from localstack import wait_until
from test_localstack import on_channel
from test_p2p import (check_a_task_runs, host, keys_file, p2p_command, script,
                      tasks_done, worker)
from test_protocol import RawPeer


def kept(stack, user, cluster):
    """What user's machine keeps for cluster, and the file's mode."""
    path = keys_file(stack, user, cluster)
    with open(path) as f:
        return json.load(f), os.stat(path).st_mode & 0o777


# -- units ----------------------------------------------------------------------------------

def signed(kind, key, t=None, **fields):
    line = p2p._encode(kind, "*", key, **dict(fields, **({"t": t} if t else {})))
    return p2p._decode(line.rstrip(b"\n"), key)


def test_a_line_heard_twice_or_said_long_ago_counts_once_or_not_at_all():
    key, recent = os.urandom(32), p2p._Recent()
    line = signed("bye", key, id="bob@h:1-aa")
    assert line.authentic and recent.fresh(line)
    assert not recent.fresh(line)  # the same line again: a replay
    assert recent.fresh(signed("bye", key, id="bob@h:1-aa"))  # said anew: its own time
    now = int(time.time() * 1e6)
    for off in (-p2p.FRESH - 5, p2p.FRESH + 5):
        assert not recent.fresh(signed("bye", key, t=now + int(off * 1e6), id="bob@h:1-bb"))
    assert recent.fresh(signed("bye", key, t=now - int(30e6), id="bob@h:1-cc"))
    # Lines a process says carry rising times, even within one microsecond.
    times = [json.loads(p2p._encode("bye", id="x").split(b" ", 3)[3])["t"] for _ in range(50)]
    assert times == sorted(set(times))


def test_each_executor_and_worker_has_an_id_of_its_own():
    ids = {p2p._peer_id("bob") for _ in range(100)}
    assert len(ids) == 100
    assert {p2p._machine_of(i) for i in ids} == {"bob@" + p2p.socket.gethostname()}


def test_flags_take_yes_and_no_words_and_refuse_the_rest(monkeypatch):
    for text, value in (("1", True), ("true", True), ("Yes", True), ("ON", True),
                        ("0", False), ("false", False), ("no", False), ("off", False),
                        ("", False)):
        monkeypatch.setenv("P2P_TRUST", text)
        assert p2p.Config().trust is value
    for text in ("2", "y", "nope", "trust"):
        monkeypatch.setenv("P2P_TRUST", text)
        with pytest.raises(p2p.P2PError, match="P2P_TRUST must be 1, true, yes, on or 0"):
            p2p.Config()
    monkeypatch.setenv("P2P_TRUST", "1")
    assert p2p.Config(trust=False).trust is False  # an argument beats the environment


def test_an_explicit_secret_file_beats_the_environment(tmp_path, monkeypatch):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    mine.write_text("m" * 20 + "\n")
    theirs.write_text("t" * 20 + "\n")
    monkeypatch.setenv("P2P_SECRET_FILE", str(theirs))
    assert p2p.Config().secret == "t" * 20
    assert p2p.Config(secret_file=str(mine)).secret == "m" * 20
    monkeypatch.setenv("P2P_SECRET", "e" * 20)  # not read: a secret is not kept there
    assert p2p.Config(secret_file=str(mine)).secret == "m" * 20


def test_payload_sizes_are_capped_and_board_numbers_range_checked(monkeypatch):
    assert p2p.Config().max_payload == 16 << 30
    assert p2p.Config(max_payload=1000).max_payload == 1000
    for bad in ("-1", "0", str(2 ** 60)):
        monkeypatch.setenv("P2P_MAX_PAYLOAD", bad)
        with pytest.raises(p2p.P2PError, match="P2P_MAX_PAYLOAD must be a size"):
            p2p.Config()
    for size in (-1, 2 ** 53, 10 ** 20, 1.5, True):
        line = b'p2p5 assign w#1 {"id":"c","t":1,"task":"x","dh":"AQ==","py":"","size":%s,' \
               b'"via":"ssh","can":[],"n":0,"of":0,"data":""}' % json.dumps(size).encode()
        assert p2p._decode(line) is None


def test_no_one_sender_crowds_out_the_payloads_of_others():
    assembly = p2p._Assembly()
    for n in range(p2p._Assembly.MOST):  # mallory's first pieces, all different
        first = p2p._Message("result", "bob", {"id": "mallory@m:1-aa#1", "task": "t%d" % n,
                                               "size": 2 * p2p._PIECE, "of": 2, "n": 0,
                                               "data": "A" * (p2p._PIECE // 3 * 4)})
        assert assembly.add(first) is None
    pieces = p2p._pieces(os.urandom(2 * p2p._PIECE))
    for n, data in enumerate(pieces):  # carol's payload still assembles
        got = assembly.add(p2p._Message("result", "bob", {
            "id": "carol@c:2-bb#1", "task": "real", "size": 2 * p2p._PIECE, "of": 2,
            "n": n, "data": data}))
    assert got is not None and len(got) == 2 * p2p._PIECE
    assert len(assembly._partial) <= p2p._Assembly.EACH


def test_a_received_payload_must_be_a_regular_file_of_its_size(tmp_path):
    for make in (lambda p: p.mkdir(), lambda p: p.symlink_to("/etc/passwd"),
                 lambda p: p.write_bytes(b"x" * 9)):
        folder = tmp_path / secrets.token_hex(4)
        folder.mkdir()
        make(folder / "task")
        with pytest.raises(p2p.TransferError, match="not the file task of 10 bytes"):
            p2p._received(str(folder), "task", 10)
    (tmp_path / "fine").mkdir()
    (tmp_path / "fine" / "task").write_bytes(b"x" * 10)
    assert p2p._received(str(tmp_path / "fine"), "task", 10).endswith("task")


def test_a_new_key_takes_the_secrets_of_all_but_the_members(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    cluster = p2p.Cluster("alice/c")
    first = p2p._owner_keys(cluster, ["bob", "diana"])
    secrets_of = {"bob": "b" * 64, "diana": "d" * 64, "alice": "a" * 64, "erin": "e" * 64}
    p2p._change_keys(cluster, lambda kept: kept.update(secrets=dict(secrets_of)))
    assert p2p._owner_keys(cluster, ["bob", "diana", "erin"])["key"] == first["key"]
    again = p2p._owner_keys(cluster, ["bob"])  # diana taken off
    assert again["key"] != first["key"]
    assert sorted(again["secrets"]) == ["alice", "bob"]
    assert os.stat(p2p._keys_path(cluster)).st_mode & 0o777 == 0o600


def test_a_members_proof_answers_one_hello_and_proves_that_member_only():
    held = {"bob": "b" * 64, "carol": "c" * 64}
    hello = "bob@h:1-aa 1796000000000000"
    proof = p2p._proof("b" * 64, "hello", hello)
    assert p2p._member_secret(held, "bob", proof, hello) == "b" * 64
    assert p2p._member_secret(held, "carol", proof, hello) is None  # bob posing as carol
    assert p2p._member_secret(held, "diana", proof, hello) is None  # no secret: no proof
    assert p2p._member_secret(held, "bob", proof, hello + "1") is None  # another hello
    assert p2p._member_secret(held, "bob", "é" * 32, hello) is None


def test_a_welcome_answers_our_last_hello_only(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    cluster = p2p.Cluster("alice/c")
    own, old, new = "o" * 64, "1" * 64, "2" * 64
    p2p._change_keys(cluster, lambda kept: kept.update(key=old, secret=own))
    member = p2p._RollCall(p2p.Config(), cluster, "bob")

    def welcome(hello, secret):
        sealed = p2p._seal(p2p._proof(own, "key", hello).encode(), secret.encode())
        line = p2p._encode("welcome", member.id, p2p._keys(secret, cluster)[0],
                           id="alice@h:1-aa", secret=p2p.base64.b64encode(sealed).decode(),
                           proof=p2p._proof(own, "welcome", hello))
        return p2p._decode(line.rstrip(b"\n"), member.key)

    member._say_hello()  # (nothing connected: the line goes nowhere)
    earlier = member._hellos[-1]
    member._hellos = []  # as if that hello was said more than FRESH / 3 ago
    member._say_hello()
    replayed = welcome(earlier, "3" * 64)  # a welcome to an earlier hello: a replay
    assert not replayed.authentic
    member.on_unsigned(replayed)
    assert member.key == p2p._keys(old, cluster)[0] and not member._welcome.is_set()
    answered = member._hellos[-1]
    fresh = welcome(answered, new)
    member.on_unsigned(fresh)
    assert member.key == p2p._keys(new, cluster)[0] and member._welcome.is_set()
    assert p2p._read_keys(cluster)["key"] == new
    # That welcome used its hello up: played again later, say after one more
    # new key, it cannot take the key back.
    member._welcome.clear()
    member.key = p2p._keys("4" * 64, cluster)[0]
    member.on_unsigned(p2p._decode(fresh.line + b" " + fresh.signature, member.key))
    assert member.key == p2p._keys("4" * 64, cluster)[0] and not member._welcome.is_set()


# -- stories --------------------------------------------------------------------------------

def test_bob_joins_with_an_invite_and_its_code_is_good_once(stack, name):
    cluster = "alice/" + name
    inviting = p2p_command(stack, "alice", "invite", cluster, "bob")  # no host needed
    line = inviting.wait_for(lambda out: out.strip() and out, timeout=30).decode().strip()
    assert line.startswith("python -m p2p join %s " % cluster)
    code = line.split()[-1]
    joined = stack.run("bob", [sys.executable, "-m", "p2p", "join", cluster, code], timeout=60)
    assert joined.returncode == 0, joined.stderr
    assert "joined %s as bob" % cluster in joined.stdout
    assert inviting.wait(60) == 0
    assert b"bob joined %s" % cluster.encode() in inviting.errors
    held, mode = kept(stack, "bob", cluster)
    owned, owner_mode = kept(stack, "alice", cluster)
    assert mode == owner_mode == 0o600
    assert held["key"] == owned["key"] and held["secret"] == owned["secrets"]["bob"]
    again = stack.run("carol", [sys.executable, "-m", "p2p", "join", cluster, code], timeout=90)
    assert again.returncode == 1
    assert "could not join %s with code %s" % (cluster, code) in again.stderr
    assert "ask alice for a new one" in again.stderr
    # And with the key, bob's work runs there.
    host(stack, cluster, "bob,carol", invited="carol")
    worker(stack, "carol", cluster)
    check_a_task_runs(stack, "bob", cluster, "pow, 2, 5", "32")


def command_lines():
    """The command line of every process on this machine, as ps shows them."""
    lines = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                lines.append(f.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return lines


def test_mallory_who_reads_alices_ps_takes_nothing_of_bobs_invitation(stack, name, tmp_path):
    """alice's invite shows wormhole's code in ps; mallory, on the same
    machine, takes that transfer first: she gets sealed bytes that open to
    nothing, alice is not told anyone joined, and bob joins over ssh."""
    cluster = "alice/" + name
    inviting = p2p_command(stack, "alice", "invite", cluster, "bob")
    line = inviting.wait_for(lambda out: out.strip() and out, timeout=30).decode().strip()
    code = line.split()[-1]
    shown = wait_until(lambda: [argv for argv in command_lines()
                                if "wormhole-william send" in argv and argv.rstrip().endswith(" invitation")], 30, "wormhole's send")
    derived = shown[0].split("--code ")[1].split()[0]
    assert code not in "\n".join(command_lines()) and derived != code
    taken = stack.run("mallory", ["wormhole-william", "receive", "--hide-progress", derived],
                      input="y\n", cwd=tmp_path, timeout=60)
    assert taken.returncode == 0, taken.stderr
    sealed = (tmp_path / "invitation").read_bytes()
    owned = kept(stack, "alice", cluster)[0]
    assert owned["key"].encode() not in sealed and b"cluster" not in sealed
    assert inviting.process.poll() is None and b"joined" not in inviting.errors
    joined = stack.run("bob", [sys.executable, "-m", "p2p", "join", cluster, code], timeout=90)
    assert joined.returncode == 0, joined.stderr
    assert inviting.wait(60) == 0, inviting.errors
    assert b"bob joined %s" % cluster.encode() in inviting.errors
    assert kept(stack, "bob", cluster)[0]["key"] == owned["key"]


def test_an_invite_no_one_takes_lapses_and_its_code_opens_nothing(stack, name):
    cluster = "alice/" + name
    lapsed = stack.run("alice", [sys.executable, "-m", "p2p", "invite", cluster, "bob",
                                 "--timeout", "3"], timeout=60)
    assert lapsed.returncode == 1
    assert "no one joined %s with that code" % cluster in lapsed.stderr
    assert "run `python -m p2p invite %s bob` again" % cluster in lapsed.stderr
    assert "bob" not in kept(stack, "alice", cluster)[0]["secrets"]
    code = lapsed.stdout.split()[-1]
    late = stack.run("bob", [sys.executable, "-m", "p2p", "join", cluster, code], timeout=90)
    assert late.returncode == 1 and "could not join" in late.stderr
    others = stack.run("bob", [sys.executable, "-m", "p2p", "invite", cluster, "carol"],
                       timeout=30)
    assert "only alice can invite members to %s (you are bob)" % cluster in others.stderr


def test_diana_taken_off_the_list_is_out_once_the_host_restarts(stack, name):
    cluster = "alice/" + name
    hosting = host(stack, cluster, "bob,carol,diana")
    working = worker(stack, "bob", cluster)
    # diana stays on the board through the restart, with the key she holds.
    diana = RawPeer(stack, "diana", cluster, "diana@d:1-aa")
    on_channel(stack, "alice", cluster + "/board", "alice", "alice", "bob", "diana")
    old_key = kept(stack, "diana", cluster)[0]["key"]
    check_a_task_runs(stack, "diana", cluster, "abs, -4", "4")
    hosting.process.terminate()
    assert hosting.wait(30) is not None
    hosting = p2p_command(stack, "alice", "host", cluster, "--users", "bob,carol")
    # She answers the new host as if the cluster were hosted already: it is not fooled.
    hello = diana.wait_for("hello", role="host", timeout=30)
    diana.send("welcome", hello["id"], id=diana.id, secret="", proof="0" * 32)
    hosting.expect("a member was taken off %s: it has a new key" % cluster, stream="stderr",
                   timeout=30)
    # bob's worker, on the board all along, gets the new key from the host.
    working.expect("%s has a new key" % cluster, stream="stderr", timeout=30)
    assert kept(stack, "bob", cluster)[0]["key"] != old_key
    check_a_task_runs(stack, "carol", cluster, "abs, -5", "5")  # carol: when she says hello
    assert kept(stack, "carol", cluster)[0]["key"] == kept(stack, "bob", cluster)[0]["key"]
    out = script(stack, "diana", "import p2p; p2p.submit(abs, -6).result(30)", timeout=60,
                 env={"P2P_CLUSTER": cluster})
    assert out.returncode == 1
    assert "ClusterError" in out.stderr and "diana cannot reach cluster" in out.stderr
    assert kept(stack, "diana", cluster)[0]["key"] == old_key  # she never got the new one
    assert "diana" not in kept(stack, "alice", cluster)[0]["secrets"]


def test_a_personal_cluster_is_its_owners_alone(stack):
    working = worker(stack, "alice")
    on_channel(stack, "alice", "alice/personal/board", "alice", "alice")
    mallory = stack.session("mallory", "pipe", "alice/personal/board")
    # pico.sh keeps mallory on a channel of her own: no list lets her in.
    on_channel(stack, "mallory", "mallory/alice/personal/board", "mallory")
    on_channel(stack, "alice", "alice/personal/board", "alice", "alice")  # not her
    mallory.send(p2p._encode("hello", id="mallory@m:1-aa", role="client", user="alice",
                             py=p2p.PY, proof=""))
    check_a_task_runs(stack, "alice", "alice/personal", "abs, -7", "7")
    assert b"idle" not in mallory.output  # she heard nothing of alice's
    assert working.process.poll() is None


def test_mallory_first_on_a_keyed_board_can_do_nothing(stack, name):
    cluster = "alice/" + name
    hosting = host(stack, cluster, "bob,carol,diana")
    mallory = RawPeer(stack, "mallory", cluster, "mallory@m:1-aa#1", key=None)  # bug A
    hosting.expect("not members, on the board of %s: mallory" % cluster, stream="stderr")
    working = p2p_command(stack, "carol", "worker", cluster, "-v")
    working.expect("worker carol@", stream="stderr", timeout=30)
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import p2p
        with p2p.Executor() as first:   # its bye, replayed, must not end the second's tasks
            print(first.submit(abs, -1).result(120))
        with p2p.Executor() as ex:
            print(list(ex.map(lambda x: -x, range(8), timeout=120, chunksize=1)))
    """)], env={"P2P_CLUSTER": cluster})
    forger, share = os.urandom(32), p2p._KeyShare()
    slot = mallory.wait_for("idle")["id"]
    while client.process.poll() is None:
        heard = [line for line in mallory.pipe.output.split(b"\n") if line]
        lines = list(heard[-40:])  # replays of signed lines, as they were
        for key in (None, forger):  # unsigned, and signed with a key of her own
            say = lambda kind, to="*", **f: p2p._encode(kind, to, key, **f)  # noqa: E731
            lines += [say("idle", id=mallory.id, py=p2p.PY, dh=share.public, free=3, can=["ssh"]),
                      say("assign", slot, id=mallory.id, task=secrets.token_hex(8),
                          dh=share.public, py="", size=100, via="ssh", can=["ssh"], n=0, of=0,
                          data=""),
                      say("welcome", slot.split("#")[0], id="alice@h:1-aa", secret="",
                          proof=""),
                      say("denied", slot.split("#")[0], id="alice@h:1-aa",
                          why="carol is not a member"),
                      say("hello", id="alice@h:1-aa", role="host", user="alice", py=p2p.PY,
                          proof="")]
            for line in heard:
                seen = p2p._decode(line)
                if isinstance(seen, p2p._Message) and seen.kind == "assign":
                    lines += [say("result", seen["id"], id=seen.to, task=seen["task"],
                                  size=10, free=3, n=0, of=1, data="AAAAAAAAAAAAAA==",
                                  tag="0" * 32),
                              say("bye", id=seen["id"]), say("bye", id=seen.to)]
        mallory.pipe.send(b"\n".join(lines) + b"\n")
        try:
            client.process.wait(timeout=0.5)  # paces her lines while bob works
        except subprocess.TimeoutExpired:
            pass
    assert client.wait(timeout=30) == 0, client.errors
    assert client.output == b"1\n%s\n" % str([-x for x in range(8)]).encode()
    assert b"assign mallory" not in mallory.pipe.output  # no task for her
    assert b"p2p5 assign " + slot.encode() in mallory.pipe.output  # she saw them go by
    done = tasks_done(working, 9)
    assert len(done) == 9 and all(" from bob@" in line for line in done)
    assert working.process.poll() is None and hosting.process.poll() is None
    assert b"Traceback" not in working.errors + hosting.errors
    status = p2p_command(stack, "diana", "status", cluster, "--json")
    assert status.wait(timeout=60) == 0, status.errors
    found = json.loads(status.output)
    assert found["host"]["user"] == "alice" and "mallory" in found["host"]["intruders"]
    assert [w["user"] for w in found["workers"]] == ["carol"]


def test_with_a_secret_file_members_need_that_file(stack, name, tmp_path):
    cluster = "alice/" + name
    secret = tmp_path / "alice.secret"  # the host writes it; alice hands it out herself
    hosting = p2p_command(stack, "alice", "host", cluster, "--users", "bob,carol,diana",
                          "--secret-file", str(secret))
    hosting.expect("wrote a new secret for %s" % cluster, stream="stderr", timeout=30)
    assert secret.stat().st_mode & 0o777 == 0o600
    other = tmp_path / "other.secret"
    other.write_text("not-the-secret-at-all\n")
    keyed = {"P2P_SECRET_FILE": str(secret), "P2P_CLUSTER": cluster}
    p2p_command(stack, "carol", "worker", env=keyed).expect("worker carol@", stream="stderr",
                                                             timeout=30)
    answer = script(stack, "bob", "import p2p; print(p2p.submit(abs, -8).result(60))",
                    env=keyed)
    assert answer.stdout == "8\n", answer.stderr
    wrong = script(stack, "diana", "import p2p; p2p.Executor()", timeout=60,
                   env=dict(keyed, P2P_SECRET_FILE=str(other)))
    assert "%s has a secret of its own: ask alice for its file" % cluster in wrong.stderr
    assert "(said on its board)" in wrong.stderr
