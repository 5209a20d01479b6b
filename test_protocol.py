"""p2p.py's protocol: sealed payloads, the board as a carrier, peers gone bad.

Unit tests of the seal, the board codec and the choice of a worker slot,
then stories on the local stack: payloads on both sides of the board limit,
a board that cuts and interleaves lines, broken seals from a worker and from
a client gone bad, strangers' lines of every odd shape, a runner killed by
an unusual signal.
"""

import io
import json
import os
import random
import re
import subprocess
import sys
import textwrap
import time

import pytest

import p2p
from localstack import Stack, invite
from test_localstack import on_channel
from test_p2p import (Exploit, board_keys, doomed_worker, host, p2p_command, script,
                      tasks_done, worker)

WAYS = list(p2p._WAYS)  # what a peer can use for large payloads: everything


# -- units ----------------------------------------------------------------------------------

def test_a_sealed_payload_opens_only_whole_and_under_its_key():
    key, other = os.urandom(32), os.urandom(32)
    for size in (0, 1, 100, p2p._BLOCK + 7):
        payload = os.urandom(size)
        sealed = p2p._seal(key, payload)
        assert len(sealed) == size + p2p.SEAL_OVERHEAD
        assert p2p._open(key, sealed) == payload
        assert size < 16 or payload[:64] not in sealed  # encrypted, not just signed
        with pytest.raises(p2p.TransferError, match="seal is broken"):
            p2p._open(other, sealed)
    sealed = p2p._seal(key, b"the task")
    for at in range(len(sealed)):  # any byte altered, anywhere
        altered = bytearray(sealed)
        altered[at] ^= 0x40
        with pytest.raises(p2p.TransferError):
            p2p._open(key, bytes(altered))
    for cut in (sealed[:-1], sealed[:10], b"", sealed + b"x"):
        with pytest.raises(p2p.TransferError):
            p2p._open(key, cut)
    assert p2p._seal(key, b"same") != p2p._seal(key, b"same")  # a fresh nonce each time


def test_key_shares_agree_and_shares_outside_the_subgroup_are_refused():
    alice, bob = p2p._KeyShare(), p2p._KeyShare()
    assert alice.root(bob.public, b"salt") == bob.root(alice.public, b"salt")
    assert alice.root(bob.public) != alice.root(bob.public, b"salt")
    # Once used, a share goes by its fingerprint; one never seen is unknown.
    assert alice.root(bob.fingerprint, b"salt") == alice.root(bob.public, b"salt")
    with pytest.raises(p2p.P2PError, match=p2p._UNKNOWN_SHARE):
        alice.root(p2p._KeyShare().fingerprint)
    # p - 1 has order 2; a non-residue lies outside the prime-order subgroup.
    prime = p2p._DH_PRIME
    outside = next(v for v in range(3, 100) if pow(v, (prime - 1) // 2, prime) != 1)
    for value in (0, 1, prime - 1, prime, outside):
        share = p2p.base64.b64encode(value.to_bytes(257, "big")).decode()
        with pytest.raises(p2p.P2PError, match="invalid key share"):
            alice.root(share)
    with pytest.raises(p2p.P2PError):
        alice.root("not base64!")


def test_board_lines_that_do_not_parse_are_noise():
    good = p2p._encode("bye", id="bob@h:1")
    message = p2p._decode(good.rstrip(b"\n"))
    assert (message.kind, message.to, message["id"]) == ("bye", "*", "bob@h:1")
    assert message["t"] > 0
    deep = b"p2p5 bye * " + b'{"id":' * 100000 + b"1" + b"}" * 100000
    for line in [b"", b"garbage", good[:10], b"p2p5 {", b"p2p5 bye * []", deep,
                 b'p2p5 bye * {"k":"bye"}', b'p2p5 bye * {"id":3}',
                 b'p2p5 nope * {"id":"x"}', b"p2p5 bye * " + b"x" * 10000,
                 b'p2p5 idle * {"id":"x","py":"3","dh":"A","free":-1}',
                 b'p2p5 idle * {"id":"x","py":"3","dh":"A","free":true}',
                 b'p2p5 idle * {"id":"x","py":"3","dh":"A","free":1e400}',
                 b'p2p5 idle * {"id":"x","py":"3","dh":"A","free":%s}' % (b"9" * 5000),
                 b'p2p5 alive * {"id":"x","held":[1,2]}',
                 b'p2p5 welcome * {"id":"x","intruders":"mallory"}',
                 b'p2p5 bye * {"id":"x"}', b'p2p5 bye * {"id":"x","t":-1}']:
        assert p2p._decode(line) is None, line[:80]
    old = p2p._decode(b'p2p1 {"k":"idle","id":"carol@h:1#1","py":"3.11"}')
    assert isinstance(old, p2p._OtherVersion) and old.version == "1"
    # A peer skips lines for others before it parses them.
    asked = []
    line = p2p._encode("took", "bob@h:1", id="carol@h:2#1", task="t")
    assert p2p._decode(line, wants=lambda kind, to: asked.append((kind, to))) is None
    assert asked == [("took", "bob@h:1")]


def test_a_line_leaves_out_what_goes_without_saying():
    key, _ = p2p._keys("a secret of sixteen+", p2p.Cluster("alice/p2p"))
    task = dict(id="diana@h:1", task="t1", dh="AQ==", py="3.11", size=3)
    usual = p2p._encode("assign", "bob@h:2#1", key, via="board", can=list(p2p._WAYS),
                        n=0, of=1, data="YWJj", **task)
    for said in (b'"via"', b'"can"', b'"n"', b'"of"'):
        assert said not in usual
    heard = p2p._decode(usual.rstrip(b"\n"), key)
    assert heard.authentic
    assert (heard["via"], heard["can"], heard["n"], heard["of"], heard["data"]) == (
        "board", ["wormhole", "ssh"], 0, 1, "YWJj")
    heard["can"].append("carrier pigeon")  # each line its own list
    assert p2p._decode(usual.rstrip(b"\n"), key)["can"] == ["wormhole", "ssh"]
    # What differs from the usual is said, and heard as said.
    other = p2p._decode(p2p._encode("assign", "bob@h:2#1", key, via="ssh", can=["ssh"],
                                    n=0, of=0, data="", **task).rstrip(b"\n"), key)
    assert other.authentic
    assert (other["via"], other["can"], other["of"], other["data"]) == ("ssh", ["ssh"], 0, "")
    # A task's tag covers what its line says: heard, it is no use on another.
    pair = bytes(32)
    said = dict(id="bob@h:2#1", task="t1", free=1)
    result = p2p._decode(p2p._encode("result", "diana@h:1", key, pair=pair, size=3,
                                     data="YWJj", **said).rstrip(b"\n"), key)
    assert result.authentic and p2p._tagged(result, pair)
    forged = p2p._decode(p2p._encode("result", "diana@h:1", key, size=10, tag=result["tag"],
                                     **said).rstrip(b"\n"), key)
    assert forged.authentic and not p2p._tagged(forged, pair)
    # A line that leaves out what it may not (its task) is still noise.
    assert p2p._decode(usual.replace(b'"task":"t1",', b"").rstrip(b"\n")) is None


def test_signed_lines_are_authentic_only_under_their_clusters_key():
    key, _ = p2p._keys("a secret of sixteen+", p2p.Cluster("alice/p2p"))
    other, _ = p2p._keys("a secret of sixteen+", p2p.Cluster("alice/other"))
    line = p2p._encode("bye", "*", key, id="bob@h:1").rstrip(b"\n")
    assert p2p._decode(line, key).authentic
    assert p2p._decode(line, key)["id"] == "bob@h:1"
    assert not p2p._decode(line, other).authentic  # another cluster's
    assert not p2p._decode(line).authentic  # to a peer without the secret
    assert not p2p._decode(line.replace(b"bob", b"eve"), key).authentic
    assert not p2p._decode(line.replace(b" * ", b" bob@h:2 "), key).authentic
    assert not p2p._decode(p2p._encode("bye", id="bob@h:1"), key).authentic
    assert not p2p._decode(line.replace(b'"t":1', b'"t":2'), key).authentic  # its time too


def test_a_payload_goes_in_pieces_and_comes_whole_in_any_order():
    sealed = os.urandom(3 * p2p._PIECE + 5)
    pieces = p2p._pieces(sealed)
    assert len(pieces) == 4

    def line(n, data=None, size=len(sealed)):
        return p2p._Message("result", "bob@h:1", {
            "id": "carol@h:2#1", "task": "t1", "size": size, "free": 1, "n": n,
            "of": len(pieces), "data": pieces[n] if data is None else data})

    assembly = p2p._Assembly()
    assert [assembly.add(line(n)) for n in (2, 0, 3)] == [None, None, None]
    assembly.ASK_AFTER = 0.0  # the rest stopped coming: ask for it
    (first, missing), = assembly.stalled()
    assert missing == "1" and first["task"] == "t1"
    assert p2p._missing(p2p._Message("again", "x", {"missing": missing + ",x,-2,99999"})) == {1}
    assert assembly.add(line(0, data="!!")) is None  # noise is dropped
    assert assembly.add(line(1)) == sealed
    assert assembly.add(line(1, size=len(sealed) + 1)) is None  # a shape no peer sends
    small = p2p._Assembly().add(p2p._Message("assign", "x#1", {
        "id": "bob@h:1", "task": "t2", "size": 3, "n": 0, "of": 1,
        "data": p2p._pieces(b"abc")[0]}))
    assert small == b"abc"


def test_a_task_goes_to_the_slot_with_most_room_off_the_machines_it_failed_on():
    slots = {"carol@a:1#1": ("3.11", 1), "carol@a:1#2": ("3.11", 3),
             "bob@b:2#1": ("3.11", 2), "old@c:3#1": ("2.7", 3), "full@d:4#1": ("3.11", 0)}
    # By reference, any Python will do; ties go by slot id.
    assert p2p._pick("", {"carol@a"}, slots) == "old@c:3#1"
    assert p2p._pick("3.11", set(), slots) == "carol@a:1#2"
    assert p2p._pick("3.11", {"carol@a"}, slots) == "bob@b:2#1"
    assert p2p._pick("3.11", {"carol@a", "bob@b"}, slots) == "carol@a:1#2"  # still runs
    assert p2p._pick("3.12", set(), slots) is None
    assert p2p._pick("", set(), {"full@d:4#1": ("3.11", 0)}) is None


def test_a_task_moves_only_as_its_table_says(tmp_path):
    path = tmp_path / "task.pkl"
    path.write_bytes(b"x")
    task = p2p._Task(str(path), p2p._Pickler(io.BytesIO()), None)
    for state in ("assigned", "receiving", "queued", "assigned", "receiving", "done"):
        task.move(state)
    with pytest.raises(AssertionError, match="cannot go from done to queued"):
        task.move("queued")


# -- payloads on the board and by wormhole ---------------------------------------------------

SIZES = """
    import json, p2p

    def sized(target, shape):
        '''The n for which shape(n), pickled and sealed, is target bytes.'''
        n = target - p2p.SEAL_OVERHEAD - 100
        while len(p2p._dumps(shape(n))[0]) + p2p.SEAL_OVERHEAD < target:
            n += 1
        assert len(p2p._dumps(shape(n))[0]) + p2p.SEAL_OVERHEAD == target
        return n

    limit = p2p.BOARD_MAX
    with p2p.Executor() as ex:
        for target in (limit - 1, limit, limit + 1):
            n = sized(target, lambda n: (len, (bytes(n),), {}))
            assert ex.submit(len, bytes(n)).result(60) == n
            n = sized(target, lambda n: {"value": bytes(n), "stdout": "", "stderr": "",
                                          "warnings": []})
            assert ex.submit(bytes, n).result(60) == bytes(n)
    print("ok")
"""


def sent_by(listener, kind):
    """For each payload of this kind on the board: how many board pieces it took."""
    return [message["of"] for message in map(p2p._decode, listener.output.split(b"\n"))
            if isinstance(message, p2p._Message) and message.kind == kind
            and message["n"] == 0]


def test_payloads_up_to_the_limit_ride_the_board_and_larger_ones_go_by_wormhole(stack):
    working = worker(stack, "carol")
    listener = stack.session("carol", "pipe", "personal/board")
    on_channel(stack, "carol", "carol/personal/board", "carol", "carol", "carol")
    answer = script(stack, "carol", SIZES)
    assert answer.stdout == "ok\n", answer.stderr
    pieces = -(-p2p.BOARD_MAX // p2p._PIECE)
    # Tasks at limit - 1 and at the limit ride the board; above it, wormhole.
    assert sent_by(listener, "assign") == [pieces, 1, pieces, 1, 0, 1]
    assert sent_by(listener, "result")[1::2] == [pieces, pieces, 0]
    working.process.terminate()


def test_lines_cut_and_interleaved_by_the_board_cost_time_not_results(stack, tmp_path):
    # pico.sh forwards what it reads in chunks; this board cuts every read
    # into pieces of 1000 bytes, and four clients write long lines at once.
    with Stack(tmp_path / "chopped", chop=1000, wormhole=False) as chopped:
        chopped.relay_url = stack.relay_url  # payloads this small need no wormhole
        working = chopped.process("bob", [sys.executable, "-m", "p2p", "worker",
                                          "--workers", "2"])
        working.expect("worker bob@", stream="stderr", timeout=30)
        clients = [chopped.process("bob", [sys.executable, "-c", textwrap.dedent("""
            import os, p2p
            payloads = [os.urandom(20000 + 977 * i) for i in range(6)]
            with p2p.Executor() as ex:
                back = [f.result(120) for f in [ex.submit(bytes, p) for p in payloads]]
            print(back == payloads)
        """)]) for _ in range(4)]
        for client in clients:
            assert client.wait(timeout=180) == 0, client.errors
            assert client.output == b"True\n"
        working.process.terminate()
        working.wait(30)


# -- peers gone bad ------------------------------------------------------------------------

class RawPeer:
    """A member speaking p2p's protocol by hand on their own pipe: a peer gone bad."""

    def __init__(self, stack, user, cluster, peer_id, key=False):
        self.stack, self.user, self.id = stack, user, peer_id
        # The keys the user keeps for the cluster, unless told which (None: none).
        self.signing, self.salt = (board_keys(stack, user, cluster) if key is False
                                   else (key, b""))
        self.pipe = stack.session(user, "pipe", cluster + "/board")
        self.share = p2p._KeyShare()
        self.seen = 0  # board lines already looked at

    def send(self, kind, to="*", **fields):
        self.pipe.send(p2p._encode(kind, to, self.signing, **fields))

    def wait_for(self, kind, to=None, timeout=60, **fields):
        """The next message of this kind (or kinds), to and with these fields."""
        kinds = (kind,) if isinstance(kind, str) else kind

        def arrived(output):
            lines = output.split(b"\n")[:-1]
            for line in lines[self.seen:]:
                self.seen += 1
                msg = p2p._decode(line)
                if (isinstance(msg, p2p._Message) and msg.kind in kinds
                        and to in (None, msg.to)
                        and all(msg.get(k) == v for k, v in fields.items())):
                    return msg
        return self.pipe.wait_for(arrived, timeout, what="a %s %s" % (kind, fields))

    def payload(self, first):
        """The sealed payload whose first piece is the message first."""
        assembly = p2p._Assembly()
        got = assembly.add(first)
        while got is None:
            got = assembly.add(self.wait_for(first.kind, task=first["task"]))
        return got

    def key(self, msg, what):
        return p2p._payload_key(self.share.root(msg["dh"], self.salt), msg["task"], what)

    def say_payload(self, kind, to, sealed, **fields):
        pieces = p2p._pieces(sealed)
        for n, data in enumerate(pieces):
            self.send(kind, to, size=len(sealed), n=n, of=len(pieces), data=data, via="board",
                      **fields)

    def receive(self, code, folder):
        """Take a wormhole transfer into folder; what arrived."""
        folder.mkdir()
        self.stack.run(self.user, ["wormhole-william", "receive", "--hide-progress", code],
                       input="y\n", cwd=folder, timeout=60)
        return {path.name: path.read_bytes() for path in folder.iterdir()}

    def offer(self, code, path):
        """Start sending path over wormhole; the process."""
        return self.stack.spawn(self.user, ["wormhole-william", "send", "--hide-progress",
                                            "--code", code, path.name], cwd=path.parent,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def outcome(value):
    return p2p._dumps({"value": value, "stdout": "", "stderr": "", "warnings": []})[0]


def test_payloads_from_a_worker_gone_bad_are_refused(stack, name, tmp_path):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    marker = tmp_path / "pwned"
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import p2p
        with p2p.Executor(retries=0) as ex:
            for n in range(5):
                try:
                    print("ok", ex.submit(abs, -n).result(90), flush=True)
                except p2p.P2PError as exc:
                    print("%s: %s" % (type(exc).__name__, exc), flush=True)
        with p2p.Executor() as ex:
            print("ok", ex.submit(abs, -5).result(90), flush=True)
    """)], env={"P2P_CLUSTER": cluster})
    bad = RawPeer(stack, "carol", cluster, "carol@bad:1#1")
    exploit = outcome(Exploit(os.system, "touch %s" % marker))
    wrong_key = os.urandom(32)
    # (what is sent back, sealed with the right key?, by wormhole?, the size announced)
    cases = [(exploit, True, False, None), (b"not a pickle at all", True, False, None),
             (exploit, False, False, None), (exploit, False, True, None),
             (b"x" * 50000, True, True, 100)]
    bad.wait_for("hello", role="client", user="bob")
    for n, (payload, right, by_wormhole, size) in enumerate(cases):
        bad.send("idle", id=bad.id, py=p2p.PY, dh=bad.share.public, free=1, can=WAYS)
        assign = bad.wait_for("assign", to=bad.id, n=0)
        task = p2p._open(bad.key(assign, b"task"), bad.payload(assign))
        assert p2p._load(p2p.io.BytesIO(task), trust=True) == (abs, (-n,), {})
        key = bad.key(assign, b"result") if right else wrong_key
        sealed = p2p._seal(key, payload)
        pair = bad.key(assign, b"lines")
        fields = dict(id=bad.id, task=assign["task"], free=1, pair=pair)
        if by_wormhole:
            path = tmp_path / ("out%d" % n) / "result"
            path.parent.mkdir()
            path.write_bytes(sealed)
            sending = bad.offer(p2p._wormhole_code(bad.key(assign, b"result")), path)
            bad.send("result", assign["id"], size=size or len(sealed), n=0, of=0, data="",
                     via="wormhole", **fields)
            sending.wait(60)
        else:
            bad.say_payload("result", assign["id"], sealed, **fields)
        client.wait_for(lambda out: out.count(b"\n") > n, 60, what="an answer")
        assert client.output.decode().splitlines()[n].startswith("TransferError: ")
    said = client.output.decode().splitlines()
    assert "names posix.system, which p2p.py does not load" in said[0]
    assert "refused: " in said[1]
    assert "its result was refused: its seal is broken" in said[2]
    assert "its result was refused: its seal is broken" in said[3]
    assert "the peer sent more than the 100 bytes announced" in said[4]
    assert not marker.exists()
    worker(stack, "diana", cluster)  # the client carries on with an honest worker
    assert client.wait(timeout=60) == 0, client.errors
    assert client.output.decode().splitlines()[5] == "ok 5"
    assert b"Traceback" not in client.errors


def test_payloads_from_a_client_gone_bad_are_refused(stack, name, tmp_path):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    bad = RawPeer(stack, "bob", cluster, "bob@bad:1")
    bad.send("hello", id=bad.id, role="client", user="bob", py=p2p.PY, proof="")
    working = doomed_worker(stack, "carol", cluster)
    idle = bad.wait_for("idle")
    slot, worker_share = idle["id"], idle["dh"]
    root = bad.share.root(worker_share, bad.salt)
    wrong_key = os.urandom(32)
    # (the task's bytes, sealed with the right key?, by wormhole?, the size announced)
    cases = [(b"not a pickle at all", False, False, None),
             (b"not a pickle at all", True, False, None),
             (b"x" * 80000, True, True, 100),
             (b"y" * 80000, False, True, None)]
    answers = []
    for n, (payload, right, by_wormhole, size) in enumerate(cases):
        task = "%016x" % n
        key = p2p._payload_key(root, task, b"task")
        sealed = p2p._seal(key if right else wrong_key, payload)
        fields = dict(id=bad.id, task=task, dh=bad.share.public, py="", can=WAYS)
        if by_wormhole:
            path = tmp_path / ("out%d" % n) / "task"
            path.parent.mkdir()
            path.write_bytes(sealed)
            sending = bad.offer(p2p._wormhole_code(key), path)
            bad.send("assign", slot, size=size or len(sealed), n=0, of=0, data="", via="wormhole",
                     **fields)
            sending.wait(60)
        else:
            bad.say_payload("assign", slot, sealed, **fields)
        answer = bad.wait_for(("decline", "result"), to=bad.id, task=task)
        if answer.kind == "result":
            result_key = p2p._payload_key(root, task, b"result")
            answer = p2p._load(p2p.io.BytesIO(p2p._open(result_key, bad.payload(answer))),
                               trust=True)["error"]
            bad.send("took", slot, id=bad.id, task=task,
                     pair=p2p._payload_key(root, task, b"lines"))
        answers.append(answer)
    assert answers[0].kind == "decline" and "its seal is broken" in answers[0]["why"]
    assert isinstance(answers[1], p2p.pickle.UnpicklingError)  # it failed as a task does
    assert answers[2].kind == "decline"
    assert "the peer sent more than the 100 bytes announced" in answers[2]["why"]
    assert answers[3].kind == "decline" and "its seal is broken" in answers[3]["why"]
    assert working.process.poll() is None and b"Traceback" not in working.errors


def hostile_line(rng, heard, victims):
    """One line of a seeded stream that no peer may crash on or obey."""
    def anyone():
        return rng.choice(victims + ["*", "mallory@x:%d" % rng.randrange(99)])

    def odd():  # a value of the wrong type, or out of range
        return rng.choice([None, True, -1, 2 ** 64, 1e308, "", "x" * 3000, [], {}, [[1]],
                           {"a": [None]}, -0.5, "\u0000\ud800"])

    def forged(kind):
        fields = {name: odd() for name in p2p._MESSAGES[kind]}
        if rng.random() < 0.5:  # mostly well-typed, one field wrong
            fields = {"id": anyone(), "task": "%016x" % rng.getrandbits(64), "dh": "AQ==",
                      "py": p2p.PY, "size": rng.randrange(10 ** 6), "n": 0, "of": 1,
                      "free": 3, "data": "AAAA", "why": "busy", "held": [], "role": "client",
                      "user": "bob", "users": [], "intruders": [], "since": 1, "about": {},
                      "tag": "0" * 32, "missing": "0,1"}
            fields = {k: v for k, v in fields.items() if k in p2p._MESSAGES[kind]}
            fields[rng.choice(list(fields))] = odd()
        return json.dumps(fields).encode()

    kind = rng.choice(list(p2p._MESSAGES)).encode()
    makers = [
        lambda: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4096))),
        lambda: rng.choice(heard or [b"p2p5 "])[:rng.randrange(1, 200)],
        lambda: b"p2p5 " + kind + b" * " + b"[" * rng.randrange(1000, 3000),
        lambda: b"p2p5 " + kind + b" * " + b'{"id":' * 2000 + b"1" + b"}" * 2000,
        lambda: b"p2p5 " + kind + b" " + anyone().encode() + b" " + forged(kind.decode()),
        lambda: b'p2p5 idle * {"id":"m#1","py":"%s","dh":"AQ==","free":%s}' % (
            p2p.PY.encode(), str(10 ** rng.randrange(1, 40)).encode()),
        lambda: b"p2p5 " + b"x" * rng.randrange(4000, 12000),
        lambda: b'p2p9 idle * {"id":"carol"}',
        lambda: rng.choice(heard) if heard else b"",  # a replay
    ]
    return rng.choice(makers)() + b"\n"


def test_hostile_board_lines_crash_no_one_and_fool_no_one(stack, name):
    cluster = "alice/" + name
    hosting = host(stack, cluster, "bob,carol,diana")
    working = doomed_worker(stack, "carol", cluster)
    noise = stack.session("bob", "pipe", cluster + "/board")  # a member gone bad
    on_channel(stack, "alice", cluster + "/board", "alice", "alice", "bob", "carol")
    client = stack.process("diana", [sys.executable, "-c", textwrap.dedent("""
        import p2p
        with p2p.Executor() as ex:
            print(list(ex.map(lambda x: x * 3, range(12), timeout=240, chunksize=1)))
    """)], env={"P2P_CLUSTER": cluster})
    rng = random.Random(20261201)  # reproducible
    sent = 0
    while (client.process.poll() is None or sent < 300) and sent < 3000:
        victims = sorted(set(re.findall(r'"id":"([^"]+)"', noise.output.decode())))
        heard = [line for line in noise.output.split(b"\n") if line][-50:]
        noise.send(b"".join(hostile_line(rng, heard, victims) for _ in range(10)))
        sent += 10
        try:
            client.process.wait(timeout=0.3)  # paces the noise while diana works
        except subprocess.TimeoutExpired:
            pass
    assert client.wait(timeout=240) == 0, client.errors
    assert client.output == b"%s\n" % str([x * 3 for x in range(12)]).encode()
    for peer in (hosting, working):
        assert peer.process.poll() is None  # still up
        assert b"Traceback" not in peer.errors
    done = tasks_done(working, 12)
    assert len(done) >= 12 and all(" from diana@" in line for line in done)
    # And everyone still answers a roll call.
    status = p2p_command(stack, "diana", "status", cluster, "--json")
    assert status.wait(timeout=60) == 0, status.errors
    found = json.loads(status.output)
    assert found["host"]["user"] == "alice"
    assert [w["user"] for w in found["workers"]] == ["carol"]


def test_a_runner_killed_by_an_unusual_signal_ends_its_future(stack):
    working = worker(stack, "diana")
    answer = script(stack, "diana", """
        import os, p2p
        f = p2p.submit(lambda: os.kill(os.getpid(), 35))  # a real-time signal
        try:
            f.result(30)
        except p2p.TaskCrashed as exc:
            print("crashed:", exc)
        print(p2p.submit(abs, -2).result(30))
    """)
    assert answer.returncode == 0, answer.stderr
    assert "crashed: the process running the task died (signal 35)" in answer.stdout
    assert answer.stdout.endswith("\n2\n")
    assert working.process.poll() is None
    working.process.terminate()


def test_a_peer_of_another_protocol_is_told_once_to_upgrade(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    working = worker(stack, "carol", cluster)
    old = stack.session("bob", "pipe", cluster + "/board")
    on_channel(stack, "alice", cluster + "/board", "alice", "alice", "bob", "carol")
    ours, older, newer = p2p._VERSION, p2p._VERSION - 1, p2p._VERSION + 1
    old.send(b'p2p1 {"k":"hello","id":"bob@old:1","role":"client","user":"bob","py":"3.11"}\n'
             * 3 + b'p2p%d hello * {"id":"bob@old:2"}\n' % older
             + b'p2p%d hello * {"id":"bob@new:1"}\n' % newer)
    working.expect("speaks protocol %d, we speak %d" % (newer, ours), stream="stderr")
    said = working.errors.decode()
    assert said.count("speaks protocol 1, we speak %d" % ours) == 1
    assert said.count("speaks protocol %d, we speak %d" % (older, ours)) == 1
    assert "upgrade theirs" in said and "upgrade ours" in said


def test_a_member_whose_host_speaks_another_protocol_is_told_whose_to_upgrade(
        stack, name, tmp_path):
    cluster = "alice/" + name
    older = p2p._VERSION - 1  # alice has not upgraded yet: her p2p.py speaks the one before
    with open(p2p.__file__) as ours:
        (tmp_path / "p2p.py").write_text(ours.read().replace(
            "\n_VERSION = %d\n" % p2p._VERSION, "\n_VERSION = %d\n" % older, 1))
    hosting = stack.process("alice", [sys.executable, "-m", "p2p", "host", cluster, "--users",
                                      "bob"], cwd=str(tmp_path), env={"PYTHONPATH": str(tmp_path)})
    hosting.expect("hosting %s" % cluster, stream="stderr", timeout=30)
    invite(stack, cluster, "bob")
    answer = script(stack, "bob", """
        import p2p
        try:
            p2p.submit(abs, -1).result(60)
        except p2p.ClusterError as exc:
            print(exc)
    """, env={"P2P_CLUSTER": cluster})
    assert "a peer on its board speaks protocol %d" % older in answer.stdout, answer.stderr
    assert "upgrade theirs" in answer.stdout and "access list" not in answer.stdout
    hosting.process.terminate()

def dianas_task_until_the_gate_opens(stack, cluster, gate):
    """diana's script, printing the result of a task that ends when the gate opens."""
    return stack.process("diana", [sys.executable, "-c", textwrap.dedent("""
        import p2p

        def when_told(gate):
            with open(gate, "rb") as f:  # blocks until the test opens it
                return f.read(1)

        print(p2p.submit(when_told, %r).result(120))
    """ % gate.path)], env={"P2P_CLUSTER": cluster})


def test_a_task_id_is_its_clients_own_on_the_worker(stack, name, gate):
    """bob gone bad reads diana's assignment and sends one of his own with
    her task's id to the same slot: the worker runs each as its client's."""
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    working = doomed_worker(stack, "carol", cluster)
    bad = RawPeer(stack, "bob", cluster, "bob@bad:1")
    bad.send("hello", id=bad.id, role="client", user="bob", py=p2p.PY, proof="")
    share = bad.wait_for("idle")["dh"]
    client = dianas_task_until_the_gate_opens(stack, cluster, gate)
    assign = bad.wait_for("assign", n=0)
    task, slot = assign["task"], assign.to
    root = bad.share.root(share, bad.salt)
    sealed = p2p._seal(p2p._payload_key(root, task, b"task"), p2p._dumps((abs, (-5,), {}))[0])
    bad.say_payload("assign", slot, sealed, id=bad.id, task=task, dh=bad.share.public, py="",
                    can=WAYS)
    gate.open()  # hers ends, then his runs in the same slot: said before hers ends
    answer = bad.wait_for(("decline", "result"), to=bad.id, task=task)
    assert answer.kind == "result", answer["why"]
    outcome = p2p._load(io.BytesIO(p2p._open(p2p._payload_key(root, task, b"result"),
                                             bad.payload(answer))), trust=True)
    assert outcome["value"] == 5  # his own, under her id
    assert client.wait(timeout=60) == 0, client.errors
    assert client.output == b"b'!'\n"
    assert ("task %s from diana@" % task).encode() in working.errors  # hers, first try


def test_a_member_cannot_end_or_answer_someone_elses_task(stack, name, gate):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    working = doomed_worker(stack, "carol", cluster)
    bad = RawPeer(stack, "bob", cluster, "bob@bad:1")  # a member gone bad
    client = dianas_task_until_the_gate_opens(stack, cluster, gate)
    assign = bad.wait_for("assign", n=0)
    fields = dict(task=assign["task"], tag="0" * 32)
    bad.send("withdraw", assign.to, id=assign["id"], **fields)  # in diana's name
    bad.send("took", assign.to, id=assign["id"], **fields)
    bad.send("decline", assign["id"], id=assign.to, why="stopped: the client left", **fields)
    bad.send("result", assign["id"], id=assign.to, size=2 ** 40, free=3, n=0, of=0, data="",
             via="wormhole", **fields)
    bad.send("alive", id=bad.id, held=[])  # a line after hers: they were all heard
    working.expect("board: p2p5 alive * {\"id\":\"bob@bad:1\"", stream="stderr")
    gate.open()
    assert client.wait(timeout=60) == 0, client.errors
    assert client.output == b"b'!'\n"
    assert b"withdrew" not in working.errors and b"trying again" not in client.errors


def test_a_member_cannot_put_a_tag_she_heard_on_a_line_of_her_own(stack, name):
    """bob gone bad answers each result carol's worker says to diana with lines
    of his own in carol's name, signed, with the tag he heard: a result of
    another size, one in a piece with nothing in it. Tags cover what a line
    says, so his are refused, and every result arrives whole."""
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    working = worker(stack, "carol", cluster)
    bad = RawPeer(stack, "bob", cluster, "bob@bad:1")
    client = stack.process("diana", [sys.executable, "-c", textwrap.dedent("""
        import os, p2p
        with p2p.Executor() as ex:  # by wormhole, then in pieces on the board
            sizes = [2 * 2 ** 20] + [60000] * 4
            print([len(ex.submit(os.urandom, n).result(120)) == n for n in sizes])
    """)], env={"P2P_CLUSTER": cluster})
    answered, deadline = set(), time.monotonic() + 300
    while client.process.poll() is None and time.monotonic() < deadline:
        try:
            heard = bad.wait_for("result", timeout=1)
        except AssertionError:
            continue
        if heard["task"] not in answered:
            answered.add(heard["task"])
            for shape in (dict(size=2 ** 40, of=0, via="wormhole"), dict(size=10)):
                bad.send("result", heard.to, id=heard["id"], task=heard["task"], free=3,
                         tag=heard["tag"], **shape)
    assert client.wait(timeout=60) == 0, client.errors
    assert client.output == b"[True, True, True, True, True]\n"
    assert len(answered) == 5 and b"trying again" not in client.errors
    working.process.terminate()
