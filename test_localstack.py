"""The local stack behaves as pico.sh and wormhole do (../shared/notes).

One test per rule of pico-pipe.md, each through the real ssh client and
the real sshd, as several pico users; then a wormhole-william transfer
through the local mailbox and transit relay; then the stack's internet
profile (each of its delays, measured through real ssh sessions and real
transfers) and its board that chops what it forwards. Every topic is new
per test: the board, like pico.sh, remembers access lists between
connections.
"""

import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest

from localstack import (INTERNET, LOOPBACK, Stack, namespace, processes_mentioning,
                        wait_until)


@pytest.fixture
def topic():
    return "t" + secrets.token_hex(4)


def parse_ls(text):
    """{channel: {"access": [..] or None, "clients": [(group, user)]}}."""
    channels, entry, group = {}, None, None
    for line in text.split("\r\n"):
        if line.startswith("- "):
            name, _, rest = line[2:].partition(":")
            listed = re.search(r"\(Access List: (.*)\)", rest)
            entry = channels[name] = {
                "access": listed.group(1).split(", ") if listed else None,
                "clients": [],
            }
        elif line.startswith("  - ") and entry is not None:
            entry["clients"].append((group, re.search(r"\((\w+)@", line).group(1)))
        elif line.startswith("  ") and line.endswith(":"):
            group = line.strip()[:-1]
    return channels


def on_channel(stack, owner, channel, *users):
    """Wait until the owner's ls shows exactly these users' clients on channel."""
    last = {}

    def shown():
        last["ls"] = stack.ls(owner)
        entry = parse_ls(last["ls"]).get(channel)
        if entry and sorted(u for _, u in entry["clients"]) == sorted(users):
            return entry

    try:
        return wait_until(shown, what="%s seeing %s on %s" % (owner, users, channel))
    except AssertionError as exc:
        raise AssertionError("%s; ls showed:\n%s" % (exc, last["ls"])) from None


def host(stack, user, topic, *members):
    """The owner's pipe on its own topic with an access list, once it is on."""
    session = stack.session(user, "pipe", topic, "-a", ",".join(members))
    on_channel(stack, user, "%s/%s" % (user, topic), user)
    return session


# -- identity -----------------------------------------------------------------

def test_pico_user_names_the_owner_of_each_key(stack):
    ids = set()
    for user in ("alice", "bob", "mallory"):
        answer = stack.run(user, ["ssh", "pico.sh", "user"])
        assert answer.returncode == 0, answer.stderr
        name, user_id, created, expiry, end = answer.stdout.split("\n")
        assert (name, expiry, end) == (user, "", "")
        ids.add(uuid.UUID(user_id))
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", created)
    assert len(ids) == 3


def test_a_key_without_an_account_is_told_to_sign_up(stack):
    answer = stack.run("newcomer", ["ssh", "pico.sh", "user"])
    assert answer.returncode == 1
    assert answer.stderr.startswith(
        "ERROR: you need to create an account before using the remote cli")
    listing = stack.run("newcomer", ["ssh", "pipe.pico.sh", "ls"])
    assert (listing.returncode, listing.stderr) == (1, "access denied\n")


def test_pipe_host_answers_user_with_nothing(stack):
    answer = stack.run("alice", ["ssh", "pipe.pico.sh", "user"])
    assert (answer.returncode, answer.stdout, answer.stderr) == (0, "", "")


# -- commands and flags --------------------------------------------------------

def test_help_and_no_command_list_the_commands(stack):
    for argv in (["help"], []):
        answer = stack.run("alice", ["ssh", "pipe.pico.sh"] + argv)
        assert answer.returncode == 0
        assert "ssh pipe.pico.sh <help | ls | pub | sub | pipe> <topic>" in answer.stdout


def test_an_unknown_flag_prints_the_usage_and_exits_1(stack, topic):
    answer = stack.run("alice", ["ssh", "pipe.pico.sh", "pipe", topic, "-x"])
    assert answer.returncode == 1
    assert "flag provided but not defined: -x" in answer.stdout
    assert "Usage: pipe <topic> [args...]" in answer.stdout


def test_flags_stop_at_the_first_word_that_is_not_a_flag(stack, topic):
    ignored = stack.session("alice", "pipe", topic, "extra", "-r")
    listener = stack.session("alice", "pipe", topic)
    on_channel(stack, "alice", "alice/" + topic, "alice", "alice")
    ignored.send("one\n")
    listener.expect("one\n")
    assert ignored.close() == 255
    assert ignored.output == b""  # -r came after "extra": no echo


# -- topics and access lists ------------------------------------------------------

def test_each_user_has_a_namespace_of_their_own(stack, topic):
    alice = stack.session("alice", "pipe", topic, "-r")
    bob = stack.session("bob", "pipe", topic, "-r")
    on_channel(stack, "alice", "alice/" + topic, "alice")
    on_channel(stack, "bob", "bob/" + topic, "bob")
    alice.send("from alice\n")
    bob.send("from bob\n")
    alice.expect("from alice\n")
    bob.expect("from bob\n")
    assert (alice.close(), bob.close()) == (255, 255)
    assert (alice.output, bob.output) == (b"from alice\n", b"from bob\n")


def test_a_member_joins_the_owners_channel_by_its_full_name(stack, topic):
    alice = host(stack, "alice", topic, "bob", "carol")
    bob = stack.session("bob", "pipe", "alice/" + topic)
    entry = on_channel(stack, "alice", "alice/" + topic, "alice", "bob")
    assert entry["access"] == ["bob", "carol"]
    bob.send("hi alice\n")
    alice.expect("hi alice\n")
    alice.send("hi bob\n")
    bob.expect("hi bob\n")


def test_a_member_finds_nobody_while_the_host_is_away(stack, topic):
    bob = stack.session("bob", "pipe", "alice/" + topic, "-r")
    on_channel(stack, "bob", "bob/alice/" + topic, "bob")
    bob.send("anyone?\n")
    bob.expect("anyone?\n")
    assert bob.close() == 255
    assert (bob.output, bob.errors) == (b"anyone?\n", b"")  # no error, no one


def test_a_non_member_lands_silently_in_their_own_namespace(fixed_stack, topic):
    alice = host(fixed_stack, "alice", topic, "bob")
    mallory = fixed_stack.session("mallory", "pipe", "alice/" + topic, "-r")
    on_channel(fixed_stack, "mallory", "mallory/alice/" + topic, "mallory")
    on_channel(fixed_stack, "alice", "alice/" + topic, "alice")
    mallory.send("let me in\n")
    mallory.expect("let me in\n")
    alice.send("secret\n")
    on_channel(fixed_stack, "alice", "alice/" + topic, "alice")
    assert mallory.close() == 255
    assert (mallory.output, mallory.errors) == (b"let me in\n", b"")


def test_a_key_fingerprint_in_the_access_list_admits_that_key(fixed_stack, topic):
    alice = host(fixed_stack, "alice", topic, fixed_stack.fingerprint("carol"))
    carol = fixed_stack.session("carol", "pipe", "alice/" + topic)
    on_channel(fixed_stack, "alice", "alice/" + topic, "alice", "carol")
    alice.send("hello carol\n")
    carol.expect("hello carol\n")


def test_bug_a_a_strangers_first_connection_gets_in(stack, topic):
    alice = host(stack, "alice", topic, "bob")
    mallory = stack.session("mallory", "pipe", "alice/" + topic)
    on_channel(stack, "alice", "alice/" + topic, "alice", "mallory")
    alice.send("secret\n")
    mallory.expect("secret\n")
    assert mallory.close() == 255
    assert alice.wait() == 255  # the last pipe left is thrown off
    # Her own entry stays stored: her later connections stay isolated.
    alice = host(stack, "alice", topic, "bob")
    again = stack.session("mallory", "pipe", "alice/" + topic)
    on_channel(stack, "mallory", "mallory/alice/" + topic, "mallory")
    on_channel(stack, "alice", "alice/" + topic, "alice")


def test_bug_b_a_members_first_leave_deletes_the_owners_list(stack, topic):
    channel = "alice/" + topic
    alice = host(stack, "alice", topic, "bob", "carol")
    keeper = stack.session("alice", "pipe", channel)  # so alice is not alone
    bob = stack.session("bob", "pipe", channel)
    entry = on_channel(stack, "alice", channel, "alice", "alice", "bob")
    assert entry["access"] == ["bob", "carol"]
    assert bob.close() == 255
    entry = on_channel(stack, "alice", channel, "alice", "alice")
    assert entry["access"] is None  # the owner sees it: the list is gone
    carol = stack.session("carol", "pipe", channel)
    on_channel(stack, "carol", "carol/" + channel, "carol")
    # Until the owner connects again with -a and stores the list anew.
    stack.session("alice", "pipe", topic, "-a", "bob,carol")
    entry = on_channel(stack, "alice", channel, "alice", "alice", "alice")
    assert entry["access"] == ["bob", "carol"]
    carol_again = stack.session("carol", "pipe", channel)
    on_channel(stack, "alice", channel, "alice", "alice", "alice", "carol")


def test_the_fixed_board_has_neither_bug(fixed_stack, topic):
    channel = "alice/" + topic
    alice = host(fixed_stack, "alice", topic, "bob", "carol")
    carol = fixed_stack.session("carol", "pipe", channel)
    mallory = fixed_stack.session("mallory", "pipe", channel)
    on_channel(fixed_stack, "mallory", "mallory/" + channel, "mallory")  # no bug A
    bob = fixed_stack.session("bob", "pipe", channel)
    on_channel(fixed_stack, "alice", channel, "alice", "bob", "carol")
    assert bob.close() == 255
    entry = on_channel(fixed_stack, "alice", channel, "alice", "carol")
    assert entry["access"] == ["bob", "carol"]  # no bug B


def test_an_owners_process_without_a_list_locks_members_out(stack, topic):
    channel = "alice/" + topic
    worker = stack.session("alice", "pipe", channel)  # no -a: stores []
    on_channel(stack, "alice", channel, "alice")
    alice = stack.session("alice", "pipe", topic, "-a", "bob")
    entry = on_channel(stack, "alice", channel, "alice", "alice")
    assert entry["access"] is None  # the host's list was not stored
    bob = stack.session("bob", "pipe", channel)
    on_channel(stack, "bob", "bob/" + channel, "bob")
    # Only when the process that holds the empty list leaves can the host
    # (thrown off as the last pipe) store the real one.
    assert worker.close() == 255
    assert alice.wait() == 255
    alice = host(stack, "alice", topic, "bob")
    bob_again = stack.session("bob", "pipe", channel)
    on_channel(stack, "alice", channel, "alice", "bob")


def test_public_topics_are_shared_and_guarded_by_their_list(stack, topic):
    alice = stack.session("alice", "pipe", topic, "-p", "-a", "bob", "-r")
    alice.send("ready\n")
    alice.expect("ready\n")  # ls shows no public channel: her echo says she is on
    bob = stack.session("bob", "pipe", topic, "-p", "-r")
    bob.send("bob here\n")
    alice.expect("bob here\n")
    mallory = stack.session("mallory", "pipe", topic, "-p", "-r")
    mallory.send("mallory here\n")
    mallory.expect("mallory here\n")  # she is on a channel: a random one
    alice.send("members only\n")
    bob.expect("members only\n")
    assert mallory.close() == 255
    assert mallory.output == b"mallory here\n"
    assert b"mallory" not in alice.output
    denied = stack.run("mallory", ["ssh", "pipe.pico.sh", "sub", topic, "-p"])
    assert "access denied" in denied.stderr
    assert topic not in stack.ls("alice")  # ls shows no public channels


# -- delivery ---------------------------------------------------------------------

def test_a_pipe_sends_to_every_other_client_and_echoes_only_with_r(stack, topic):
    channel = "alice/" + topic
    alice = host(stack, "alice", topic, "bob", "carol")
    bob = stack.session("bob", "pipe", channel, "-r")
    carol = stack.session("carol", "pipe", channel)
    on_channel(stack, "alice", channel, "alice", "bob", "carol")
    bob.send("from bob\n")
    for peer in (alice, bob, carol):
        peer.expect("from bob\n")
    alice.send("from alice\n")
    bob.expect("from alice\n")
    carol.expect("from alice\n")
    assert alice.close() == 255
    assert alice.output == b"from bob\n"  # no echo without -r


def test_there_is_no_history(stack, topic):
    early = stack.session("alice", "pipe", topic, "-r")
    early.send("before\n")
    early.expect("before\n")
    late = stack.session("alice", "pipe", topic)
    on_channel(stack, "alice", "alice/" + topic, "alice", "alice")
    early.send("after\n")
    late.expect("after\n")
    assert late.output == b"after\n"


def test_a_long_line_is_forwarded_as_it_is_read(stack, topic):
    long_writer = stack.session("alice", "pipe", topic)
    short_writer = stack.session("alice", "pipe", topic)
    reader = stack.session("alice", "pipe", topic)
    on_channel(stack, "alice", "alice/" + topic, "alice", "alice", "alice")
    start = b"a" * 100000
    long_writer.send(start)  # no newline yet
    reader.expect(start)
    short_writer.send("short line\n")
    reader.expect("short line\n")
    long_writer.send(b"a\n")
    reader.expect(b"a\n")
    assert reader.output.split(b"\n")[:2] == [start + b"short line", b"a"]


def test_pub_waits_for_a_reader_and_sub_ends_with_the_publisher(stack, topic):
    pub = stack.session("alice", "pub", topic)
    pub.expect("no subs found ... waiting 720h0m0s\n")
    pub.send("hello\n")
    pub.process.stdin.close()  # echo hello | ssh pipe.pico.sh pub topic
    entry = on_channel(stack, "alice", "alice/" + topic, "alice")
    assert entry["clients"] == [("Waiting Pubs", "alice")]
    sub = stack.session("alice", "sub", topic)
    sub.expect("hello\n")
    assert pub.wait() == 255
    assert pub.output == (
        "subscribe to this channel:\n  ssh pipe.pico.sh sub %s\n"
        "no subs found ... waiting 720h0m0s\nsending msg ...\n" % topic
    ).encode()
    assert sub.wait() == 255  # the last publisher left


def test_pub_gives_up_after_its_timeout(stack, topic):
    loud = stack.run("alice", ["ssh", "pipe.pico.sh", "pub", topic, "-t", "1s"])
    assert loud.returncode == 1
    assert loud.stderr == "timeout reached, exiting\n"
    assert "no subs found ... waiting 1s\n" in loud.stdout
    quiet = stack.run("alice", ["ssh", "pipe.pico.sh", "pub", topic, "-t", "1s", "-c"])
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, "", "")


@pytest.mark.parametrize("board", ["stack", "internet"])
def test_pub_e_sends_one_nul_byte(board, request, topic):
    # On the internet profile too: the drop goes after the delayed byte, not before.
    stack = request.getfixturevalue(board)
    sub = stack.session("alice", "sub", topic)
    on_channel(stack, "alice", "alice/" + topic, "alice")
    pub = stack.run("alice", ["ssh", "pipe.pico.sh", "pub", topic, "-e", "-c"])
    assert pub.returncode == 255
    assert sub.wait() == 255
    assert sub.output == b"\0"


def test_sub_k_outlives_the_publisher(stack, topic):
    channel = "alice/" + topic
    plain = stack.session("alice", "sub", topic)
    kept = stack.session("alice", "sub", topic, "-k")
    on_channel(stack, "alice", channel, "alice", "alice")
    pub = stack.run("alice", ["ssh", "pipe.pico.sh", "pub", topic, "-c"], input="x\n")
    assert pub.returncode == 255
    assert plain.wait() == 255
    kept.expect("x\n")
    entry = on_channel(stack, "alice", channel, "alice")
    assert entry["clients"] == [("Subs", "alice")]
    assert kept.process.poll() is None


# -- session endings -----------------------------------------------------------------

def test_eof_on_a_pipes_stdin_ends_the_session_with_no_status(stack, topic):
    answer = stack.run("alice", ["ssh", "pipe.pico.sh", "pipe", topic, "-r"],
                       input="bye\n")
    assert (answer.returncode, answer.stdout) == (255, "bye\n")


def test_the_last_pipe_left_on_a_channel_is_thrown_off(stack, topic):
    stays = stack.session("alice", "pipe", topic)
    leaves = stack.session("alice", "pipe", topic)
    on_channel(stack, "alice", "alice/" + topic, "alice", "alice")
    assert leaves.close() == 255
    assert stays.wait() == 255
    assert "alice/" + topic not in parse_ls(stack.ls("alice"))


def test_a_client_that_stops_answering_is_dropped(stack, topic):
    alive = stack.session("alice", "pipe", topic)
    frozen = stack.session("alice", "pipe", topic)
    on_channel(stack, "alice", "alice/" + topic, "alice", "alice")
    frozen.process.send_signal(signal.SIGSTOP)  # a laptop lid closing
    try:
        # sshd pings it (about 20 s here), drops it, and then the other
        # one is the last pipe left.
        assert alive.wait(timeout=40) == 255
    finally:
        frozen.process.send_signal(signal.SIGCONT)


# -- ls ---------------------------------------------------------------------------------

def test_ls_shows_ones_own_channels_and_who_is_on_them(stack, topic):
    assert stack.ls("diana") == "no pubsub channels found\n"
    stack.session("diana", "pipe", topic, "-a", "bob")
    stack.session("diana", "sub", topic + "s")
    stack.session("diana", "pub", topic + "p")
    stack.session("alice", "pipe", topic)  # alice's: not shown to diana

    def complete():
        text = stack.ls("diana")
        return text if len(parse_ls(text)) == 3 else None

    text = wait_until(complete, what="three channels in diana's ls")
    assert text.startswith("Channel Information\r\n") and text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    client = r"  - [0-9a-f-]{36} \(diana@127\.0\.0\.1:\d+\)\r\n"
    assert re.search(r"- diana/%s: \(Access List: bob\)\r\n  Pipes:\r\n%s"
                     % (topic, client), text)
    assert re.search(r"- diana/%ss:\r\n  Subs:\r\n%s" % (topic, client), text)
    assert re.search(r"- diana/%sp:\r\n  Waiting Pubs:\r\n%s" % (topic, client), text)


# -- the stack ----------------------------------------------------------------------------

def test_wormhole_william_moves_a_megabyte_through_the_local_servers(stack, tmp_path):
    sent, received = tmp_path / "alice", tmp_path / "bob"
    sent.mkdir()
    received.mkdir()
    payload = os.urandom(1 << 20)
    (sent / "payload.bin").write_bytes(payload)
    code = "%d-%s" % (secrets.randbelow(10 ** 6), secrets.token_hex(8))
    transit_log = os.path.join(stack.root, "transit.log")
    relayed_before = open(transit_log).read().count("connected")
    sender = stack.spawn("alice", [
        "wormhole-william", "send", "--hide-progress", "--code", code, "payload.bin",
    ], cwd=str(sent))
    receiver = stack.run("bob", [
        "wormhole-william", "receive", "--hide-progress", code,
    ], cwd=str(received), input="y\n", timeout=60)
    assert receiver.returncode == 0, receiver.stderr
    assert sender.wait(60) == 0
    assert (received / "payload.bin").read_bytes() == payload
    # No direct route exists in the namespace: the bytes went via the relay.
    assert open(transit_log).read().count("connected") > relayed_before


def test_stopping_a_stack_leaves_no_process(tmp_path):
    with Stack(tmp_path / "short-lived", wormhole=False) as short:
        session = short.session("alice", "pipe", "t", "-r")
        session.send("x\n")
        session.expect("x\n")
        assert len(processes_mentioning(short.root)) >= 3  # board, sshd, relay
    assert processes_mentioning(short.root) == []
    assert session.process.poll() is not None


# -- profiles: the internet, and a board that chops -------------------------------------
#
# These boards have no wormhole servers: the session's stack holds the
# transit relay's port. The transfer test enters namespaces of its own.

@pytest.fixture(scope="module")
def _internet_board(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("internet"), profile=INTERNET,
               wormhole=False) as running:
        yield running


@pytest.fixture(scope="module")
def _loopback_board(tmp_path_factory):
    # Named, not the default: LOCALSTACK_INTERNET=1 may change the default.
    with Stack(tmp_path_factory.mktemp("loopback"), profile=LOOPBACK,
               wormhole=False) as running:
        yield running


@pytest.fixture(scope="module")
def _chopped_board(tmp_path_factory):
    with Stack(tmp_path_factory.mktemp("chopped"), profile=LOOPBACK, wormhole=False,
               chop=16) as running:
        yield running


def _reaped(stack):
    yield stack
    stack.reap()


@pytest.fixture
def internet(_internet_board):
    """A board on the internet profile; what a test started on it is killed."""
    yield from _reaped(_internet_board)


@pytest.fixture
def loopback(_loopback_board):
    yield from _reaped(_loopback_board)


@pytest.fixture
def chopped(_chopped_board):
    """A loopback board that forwards in pieces of at most 16 bytes."""
    yield from _reaped(_chopped_board)


def seconds(action):
    started = time.monotonic()
    action()
    return time.monotonic() - started


def test_a_line_takes_80_ms_through_the_internet_board(internet, topic):
    alice = host(internet, "alice", topic, "bob")
    bob = internet.session("bob", "pipe", "alice/" + topic)
    on_channel(internet, "alice", "alice/" + topic, "alice", "bob")
    one_way, round_trip = [], []
    for n in range(5):
        started = time.monotonic()
        alice.send("ping %d\n" % n)
        bob.expect("ping %d\n" % n)
        one_way.append(time.monotonic() - started)
        bob.send("pong %d\n" % n)
        alice.expect("pong %d\n" % n)
        round_trip.append(time.monotonic() - started)
    assert min(one_way) >= 0.080, one_way
    assert min(round_trip) >= 0.160, round_trip
    # Delayed once, not twice (the loopback board takes about a millisecond).
    assert statistics.median(one_way) < 0.080 + 0.1, one_way


def test_a_burst_of_lines_takes_one_delay_not_one_per_line(internet, topic):
    writer = internet.session("alice", "pipe", topic)
    reader = internet.session("alice", "pipe", topic)
    on_channel(internet, "alice", "alice/" + topic, "alice", "alice")
    started = time.monotonic()
    for n in range(100):
        writer.send("line %d\n" % n)  # 100 writes: reads and deliveries of their own
    reader.expect("line 99\n")
    elapsed = time.monotonic() - started
    assert elapsed >= 0.080
    assert elapsed < 1.0, elapsed  # a rate limit of one line per delay would take 8 s
    assert reader.output == b"".join(b"line %d\n" % n for n in range(100))


def test_an_ssh_connection_pays_the_set_up_delay(internet, loopback, topic):
    def fastest(stack, argv):
        return min(seconds(lambda: stack.run("alice", argv)) for _ in range(3))

    for argv in (["ssh", "pico.sh", "user"], ["ssh", "pipe.pico.sh", "ls"]):
        far, near = fastest(internet, argv), fastest(loopback, argv)
        assert far >= 0.400, (argv, far)
        assert far - near >= 0.400 - 0.1, (argv, far, near)
    # A pipe too: its first line comes back (-r) after the set-up and the board.
    def echo():
        session = internet.session("alice", "pipe", topic, "-r")
        session.send("first\n")
        session.expect("first\n")
    assert seconds(echo) >= 0.400 + 0.080


def test_a_session_on_an_open_connection_pays_only_the_session_delay(internet):
    """ssh's multiplexing: a further session on a connection already open
    (ControlMaster) starts INTERNET.session_ms late, a new connection's
    first session INTERNET.ssh_ms; sshd's log counts the connections."""
    folder = tempfile.mkdtemp(prefix="mux-", dir="/tmp")  # a socket's path is short
    control = ["-o", "ControlPath=" + os.path.join(folder, "master")]
    before = internet.connections("alice")
    try:
        master = internet.run("alice", ["ssh"] + control + [
            "-o", "ControlMaster=yes", "-o", "ControlPersist=30", "-N", "pipe.pico.sh"])
        assert master.returncode == 0, master.stderr
        on_it = min(seconds(lambda: internet.run("alice", ["ssh", "-o", "ControlMaster=no"] +
                                                 control + ["pipe.pico.sh", "ls"]))
                    for _ in range(3))
        assert internet.connections("alice") == before + 1
        fresh = seconds(lambda: internet.run("alice", ["ssh", "pipe.pico.sh", "ls"]))
        assert internet.connections("alice") == before + 2
        assert on_it >= INTERNET.session_ms / 1000, on_it
        assert on_it <= fresh - (INTERNET.ssh_ms - INTERNET.session_ms) / 1000 + 0.05, (
            on_it, fresh)
    finally:
        internet.run("alice", ["ssh"] + control + ["-O", "exit", "pipe.pico.sh"])
        shutil.rmtree(folder, ignore_errors=True)


def test_the_chopping_board_interleaves_concurrent_long_lines(chopped, topic):
    lines = 500

    def text(digits, n):  # a writer's own letters: its bytes can be told apart
        line = "".join(digits[int(d)] for d in "%04d" % n)
        return (line * 50)[:199] + "\n"

    sent = {digits: "".join(text(digits, n) for n in range(lines)).encode()
            for digits in ("abcdefghij", "ABCDEFGHIJ")}
    writers = [chopped.session("alice", "pipe", topic) for _ in sent]
    reader = chopped.session("alice", "pipe", topic)
    on_channel(chopped, "alice", "alice/" + topic, "alice", "alice", "alice")
    sending = [threading.Thread(target=w.send, args=(data,))
               for w, data in zip(writers, sent.values())]
    for thread in sending:
        thread.start()
    for thread in sending:
        thread.join()
    total = sum(map(len, sent.values()))
    got = reader.wait_for(lambda out: out if len(out) >= total else None, timeout=60,
                          what="%d bytes" % total).decode()
    # Nothing lost and each writer's bytes in order, whatever came in between.
    for digits, data in sent.items():
        assert "".join(c for c in got if c in digits) == data.decode().replace("\n", "")
    mixed = [line for line in got.split("\n")
             if re.search("[a-j]", line) and re.search("[A-J]", line)]
    assert len(mixed) >= lines // 10, "only %d of %d lines were cut" % (
        len(mixed), 2 * lines)


def _timed_transfer(stack, folder, size, receiver=("wormhole-william", "receive")):
    """Seconds for a send (alice, wormhole-william) and a receive (bob) of size bytes."""
    sent, received = os.path.join(folder, "out"), os.path.join(folder, "in")
    os.makedirs(sent, exist_ok=True)
    os.makedirs(received, exist_ok=True)
    payload = os.urandom(size)
    with open(os.path.join(sent, "payload.bin"), "wb") as f:
        f.write(payload)
    code = "%d-%s" % (secrets.randbelow(10 ** 6), secrets.token_hex(8))
    started = time.monotonic()
    sender = stack.spawn("alice", ["wormhole-william", "send", "--hide-progress",
                                   "--code", code, "payload.bin"], cwd=sent,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    answer = stack.run("bob", list(receiver) + ["--hide-progress", code], cwd=received,
                       input="y\n", timeout=60)
    assert answer.returncode == 0, answer.stderr
    assert sender.wait(60) == 0
    elapsed = time.monotonic() - started
    with open(os.path.join(received, "payload.bin"), "rb") as f:
        assert f.read() == payload
    os.remove(os.path.join(received, "payload.bin"))
    return elapsed


def transfers_on_both_profiles(root):
    """Raw transfers on a loopback stack, then on an internet one; JSON in ROOT/times.json.

    Run in namespaces of its own (see the test below): each stack has the
    transit relay's port to itself.
    """
    found = {}
    for profile in (LOOPBACK, INTERNET):
        with Stack(os.path.join(root, profile.name), profile=profile) as stack:
            folder = os.path.join(root, profile.name, "transfers")
            found[profile.name] = [_timed_transfer(stack, folder, 100 << 10)
                                   for _ in range(3)]
            if profile is INTERNET:
                # magic-wormhole's Python CLI, to the proxies as well.
                found["python receiver"] = _timed_transfer(
                    stack, folder, 100 << 10, ("wormhole", "receive", "--accept-file"))
                for proxy in ("mailbox-proxy", "transit-proxy"):
                    with open(os.path.join(stack.root, proxy + ".log")) as log:
                        found[proxy] = log.read().count("connection from")
    with open(os.path.join(root, "times.json"), "w") as f:
        json.dump(found, f)


def test_wormhole_transfers_cross_the_internet_profiles_proxies(tmp_path):
    # Own namespaces, so that both stacks can have transit.magic-wormhole.io:4001.
    status = namespace.enter([
        sys.executable, "-c", "import test_localstack as t; "
        "t.transfers_on_both_profiles(%r)" % str(tmp_path)])
    assert status == 0
    with open(tmp_path / "times.json") as f:
        found = json.load(f)
    # 4 transfers: each peer to the mailbox and to the relay (Python's
    # receiver may connect to the sender directly instead).
    assert found["mailbox-proxy"] >= 2 * 4, found
    assert found["transit-proxy"] >= 2 * 3 + 1, found
    # A few round trips of 80 ms to the mailbox at least, on top of loopback's.
    assert min(found["internet"]) >= statistics.median(found["loopback"]) + 0.4, found
