"""p2p.py end to end: the README's stories, as real users on the local stack.

alice hosts, carol and bob contribute workers, bob and diana submit from
scripts, mallory is not a member. Every process is a real ``python -m p2p``
or a user's script, every board message goes through the real ssh client
and sshd to the faithful pico board, every payload through wormhole-william.
"""

import io
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import p2p
from localstack import children_of, invite, wait_until
from test_localstack import on_channel, parse_ls


def p2p_command(stack, user, *args, env=None):
    """``python -m p2p ARGS...`` running as user, its output read as it comes."""
    return stack.process(user, [sys.executable, "-m", "p2p"] + list(args), env=env)


def host(stack, cluster, members, invited=None):
    """alice's ``python -m p2p host``, once it says it is hosting, and its
    members (or those invited, a comma-separated list) joined with invites."""
    owner = cluster.split("/")[0]
    hosting = p2p_command(stack, owner, "host", cluster, "--users", members)
    hosting.expect("hosting %s" % cluster, stream="stderr", timeout=30)
    invite(stack, cluster, *filter(None, (members if invited is None else invited).split(",")))
    return hosting


def keys_file(stack, user, cluster):
    """Where user's machine keeps the keys of cluster."""
    owner, short = cluster.split("/")
    return os.path.join(stack.user_dir(user), "home", ".local", "share", "p2p", "clusters",
                        owner, short + ".json")


def board_keys(stack, user, cluster):
    """(the key that signs cluster's board lines, the salt of its payload keys),
    as user keeps them ((None, b"") when none)."""
    path = keys_file(stack, user, cluster)
    if not os.path.exists(path):
        return None, b""
    with open(path) as f:
        return p2p._keys(json.load(f)["key"], p2p.Cluster(cluster))


def board_key(stack, user, cluster):
    return board_keys(stack, user, cluster)[0]


def worker(stack, user, cluster=None, *args):
    """``python -m p2p worker``, once it has joined."""
    working = p2p_command(stack, user, "worker", *([cluster] if cluster else []), *args)
    working.expect("worker %s@" % user, stream="stderr", timeout=30)
    return working


def check_a_task_runs(stack, user, cluster, call="abs, -3", printed="3"):
    """user's script prints p2p.submit(CALL).result() from cluster, as expected."""
    answer = script(stack, user, "import p2p; print(p2p.submit(%s).result(60))" % call,
                    env={"P2P_CLUSTER": cluster})
    assert answer.stdout == printed + "\n", answer.stderr


def script(stack, user, source, timeout=90, env=None):
    """Run a user's Python script as user; its CompletedProcess."""
    return stack.run(user, [sys.executable, "-c", textwrap.dedent(source)],
                     timeout=timeout, env=env)


STORY = """
    import os, p2p, concurrent.futures, threading

    f = p2p.submit(os.getpid)                      # a concurrent.futures.Future
    assert isinstance(f, concurrent.futures.Future)
    print("pid", f.result(timeout=60), os.getpid())
    print("squares", list(p2p.map(lambda x: x * x, range(20), timeout=60)))

    def work(i):                                   # defined in __main__
        return Point(i, offset + i)

    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

    def adder(n):                                  # a closure over a nested function
        def add(x):
            return x + n
        return add

    offset = 100
    with p2p.Executor(os.environ["P2P_CLUSTER"]) as ex:   # a concurrent.futures.Executor
        futures = [ex.submit(work, i) for i in range(8)]
        done = [g.result() for g in concurrent.futures.as_completed(futures, timeout=60)]
        print("points", sorted((p.x, p.y) for p in done), type(done[0]) is Point)
        print("chunked", list(ex.map(str, range(7), chunksize=3)))
        called, back = [], threading.Event()
        g = ex.submit(adder(5), 1)
        g.add_done_callback(lambda fut: (called.append(fut.result()), back.set()))
        finished, _ = concurrent.futures.wait([g], timeout=60)
        back.wait(60)  # callbacks run just after wait() wakes, as in concurrent.futures
        print("closure", g.result(), called, finished == {g})
"""


def check_story(answer):
    assert answer.returncode == 0, answer.stderr
    pid, own = re.search(r"pid (\d+) (\d+)", answer.stdout).groups()
    assert pid != own  # it ran in a worker's process, not in the script
    assert "squares %s" % [x * x for x in range(20)] in answer.stdout
    assert "points %s True" % [(i, 100 + i) for i in range(8)] in answer.stdout
    assert "chunked %s" % [str(i) for i in range(7)] in answer.stdout
    assert "closure 6 [6] True" in answer.stdout


# -- the stories ------------------------------------------------------------------------

def test_bob_runs_a_lambda_on_alices_cluster(stack, name):
    cluster = "alice/" + name
    hosting = host(stack, cluster, "bob,carol,diana")
    working = worker(stack, "carol", cluster, "--workers", "2")
    check_story(script(stack, "bob", STORY, env={"P2P_CLUSTER": cluster}))
    hosting.expect("bob joined as a client", stream="stderr")
    working.expect("from bob@", stream="stderr")  # one line per task
    working.process.send_signal(2)  # Ctrl-C: leaves and tells the board
    assert working.wait() == 130
    hosting.expect("carol@", stream="stderr")


def test_the_stories_also_run_on_a_board_without_the_bugs(fixed_stack, name):
    cluster = "alice/" + name
    host(fixed_stack, cluster, "bob,carol")
    worker(fixed_stack, "carol", cluster)
    check_story(script(fixed_stack, "bob", STORY, env={"P2P_CLUSTER": cluster}))
    worker(fixed_stack, "diana")
    personal = script(fixed_stack, "diana", "import p2p; print(p2p.submit(abs, -2).result(60))")
    assert personal.stdout == "2\n", personal.stderr


def test_a_personal_cluster_needs_no_host(stack):
    worker(stack, "diana")  # no cluster named: diana/personal
    check_story(script(stack, "diana", STORY, env={"P2P_CLUSTER": "diana/personal"}))
    default = script(stack, "diana", """
        import p2p
        print(p2p.submit(sum, [1, 2, 3]).result(timeout=60))
    """)
    assert default.stdout == "6\n", default.stderr
    stranger = script(stack, "mallory", """
        import p2p
        p2p.Executor("diana/personal")
    """, timeout=40)
    assert "ClusterError" in stranger.stderr
    assert "only diana can use it" in stranger.stderr


def test_map_sends_about_four_chunks_per_worker_slot(stack):
    working = worker(stack, "diana", None, "--workers", "2")
    answer = script(stack, "diana", """
        import p2p
        p2p.submit(abs, 0).result(60)            # the client has heard of both slots
        print(list(p2p.map(abs, range(-16, 0))))   # 16 calls: 8 tasks of 2
        print(list(p2p.map(abs, iter(range(-3, 0)))))  # no length: 3 tasks of 1
    """)
    assert answer.stdout == "%s\n[3, 2, 1]\n" % list(range(16, 0, -1)), answer.stderr
    assert len(tasks_done(working, 12)) == 12


def test_functions_typed_into_an_interactive_session_travel_too(stack):
    worker(stack, "diana")
    session = stack.run("diana", [sys.executable, "-q", "-i"], input=textwrap.dedent("""
        import p2p
        def cube(x):
            return x ** 3

        print("cubes", list(p2p.map(cube, range(4), timeout=60)))
    """))
    assert "cubes [0, 1, 8, 27]" in session.stdout, session.stderr


def test_functions_sent_by_value_share_their_module_globals(stack):
    worker(stack, "diana")
    answer = script(stack, "diana", """
        import threading, p2p

        lock = threading.Lock()          # never sent: below, .lock is an attribute
        model = None

        def setup():
            global model
            model = 41

        def predict(item):
            return model + 1, item.lock

        class Item:
            lock = "attribute"

        def task():
            setup()
            return predict(Item())

        print(p2p.submit(task).result(timeout=60))
    """)
    assert answer.stdout == "(42, 'attribute')\n", answer.stderr


def test_shutdown_without_waiting_lets_tasks_finish(stack):
    worker(stack, "diana")
    answer = script(stack, "diana", """
        import p2p
        ex = p2p.Executor()
        f = ex.submit(pow, 2, 5)
        ex.shutdown(wait=False)
        try:
            ex.submit(pow, 2, 6)
        except RuntimeError as exc:
            print("refused:", exc)
        print(f.result(timeout=60))
    """)
    assert answer.stdout == (
        "refused: cannot schedule new futures after shutdown\n32\n"), answer.stderr


def test_results_come_back_whole(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    worker(stack, "carol", cluster)
    answer = script(stack, "bob", """
        import os, sys, warnings, p2p

        class Sorry(Exception):
            pass

        def fails():
            print("to stdout")
            print("to stderr", file=sys.stderr)
            warnings.warn("careful", UserWarning)
            raise Sorry("no luck")

        with p2p.Executor(os.environ["P2P_CLUSTER"]) as ex:
            try:
                ex.submit(fails).result(timeout=60)
            except Sorry as exc:
                print("caught", repr(exc))
                print("remote", "in fails" in str(exc.__cause__))
    """, env={"P2P_CLUSTER": cluster})
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines() == [
        "to stdout", "caught Sorry('no luck')", "remote True"]
    assert "to stderr" in answer.stderr
    assert "UserWarning: careful" in answer.stderr


def test_a_task_that_kills_its_process_fails_alone(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    working = worker(stack, "carol", cluster)
    answer = script(stack, "bob", """
        import ctypes, os, p2p

        def hog():
            raise MemoryError("out of memory")

        with p2p.Executor(os.environ["P2P_CLUSTER"]) as ex:
            for task in (lambda: os._exit(3), lambda: ctypes.string_at(0), hog):
                try:
                    ex.submit(task).result(timeout=60)
                except (p2p.TaskCrashed, MemoryError) as exc:
                    print(type(exc).__name__, exc)
            print("after", ex.submit(sum, [2, 3]).result(timeout=60))
    """, env={"P2P_CLUSTER": cluster})
    assert answer.returncode == 0, answer.stderr
    assert answer.stdout.splitlines() == [
        "TaskCrashed the process running the task died (exit status 3); "
        "the worker goes on",
        "TaskCrashed the process running the task died (signal SIGSEGV); "
        "the worker goes on",
        "MemoryError out of memory",
        "after 5"]
    assert working.process.poll() is None  # the worker goes on


def test_a_worker_never_takes_a_task_it_cannot_run(stack, name):
    cluster = "alice/" + name
    channel = cluster + "/board"
    host(stack, cluster, "bob,carol")
    # An old worker, as bob (a member) could announce one on the board.
    old = stack.session("bob", "pipe", channel)
    on_channel(stack, "alice", channel, "alice", "alice", "bob")
    client = stack.process("bob", [sys.executable, "-c",
                                   "import p2p; print(p2p.submit(lambda: 7).result(60))"],
                           env={"P2P_CLUSTER": cluster})
    old.expect('"role":"client"')
    key = board_key(stack, "bob", cluster)
    old.send(p2p._encode("idle", "*", key, id="bob@old:1#1", py="2.7",
                         dh=p2p._KeyShare().public, free=3, can=["wormhole"]))
    working = worker(stack, "carol", cluster)  # after the old one, on the board
    assert client.wait(timeout=60) == 0, client.errors
    assert client.output == b"7\n"
    assert b"assign bob@old:1#1 " not in old.output  # no one assigned it the lambda
    # And a worker declines what it cannot run, whoever asks.
    slot = re.search(r"worker (carol@\S+) ", working.errors.decode()).group(1) + "#1"
    old.send(p2p._encode("assign", slot, key, id="bob@old:2", task="t1",
                         dh=p2p._KeyShare().public, py="2.7", size=100, via="wormhole",
                         can=["wormhole"], n=0, of=0, data=""))
    old.expect('"why":"this worker runs Python %s"' % p2p.PY)


def test_wormhole_codes_never_appear_on_the_board_and_open_nothing(stack, name):
    cluster = "alice/" + name
    channel = cluster + "/board"
    host(stack, cluster, "bob,carol")
    listener = stack.session("bob", "pipe", channel)  # a member who listens
    on_channel(stack, "alice", channel, "alice", "alice", "bob")
    working = p2p_command(stack, "carol", "worker", cluster, "-v")  # logs its codes
    working.expect("worker carol@", stream="stderr", timeout=30)
    # Too large for the board: both go by wormhole.
    answer = script(stack, "bob", "import p2p; print(len(p2p.submit(bytes, bytes(10 ** 5))"
                    ".result(60)))", env={"P2P_CLUSTER": cluster})
    assert answer.stdout == "100000\n", answer.stderr
    working.expect("wormhole-william send", stream="stderr")
    codes = re.findall(r"wormhole-william (?:receive|send) --hide-progress "
                       r"(?:--code )?(\d+-[0-9a-f]+)", working.errors.decode())
    assert len(codes) == 2  # the task's and the result's
    assert b"p2p5 assign " in listener.output and b"p2p5 result " in listener.output
    for code in codes:
        assert code.encode() not in listener.output
        assert code.split("-")[1].encode() not in listener.output



# -- living with the real board --------------------------------------------------------------

def test_the_host_stores_the_list_again_after_a_member_leaves(stack, name):
    cluster = "alice/" + name
    channel = cluster + "/board"
    hosting = host(stack, cluster, "bob,carol")
    working = worker(stack, "carol", cluster)
    # bob's first connection ends: pico.sh (bug B) deletes alice's list.
    assert stack.run("bob", ["ssh", "pipe.pico.sh", "pipe", channel],
                     input="").returncode == 255
    hosting.expect("the access list of %s is gone; storing it again" % cluster,
                   stream="stderr")
    wait_until(lambda: parse_ls(stack.ls("alice")).get(channel, {}).get("access")
               == ["bob", "carol"], what="the list stored again")
    check_a_task_runs(stack, "bob", cluster, 'abs, -4', '4')
    # The host's spare session held the channel: carol's worker was never alone
    # on it, so pico.sh never threw it off, and status finds it at once.
    assert b"the board dropped our session" not in working.errors
    status = p2p_command(stack, "bob", "status", cluster)
    assert status.wait(timeout=60) == 0, status.errors
    assert b"\n1 worker process(es) with 1 slot(s)" in status.output, status.output
    assert b"did not answer" not in status.output


def test_peers_reconnect_when_the_board_throws_them_off(stack, name):
    cluster = "alice/" + name
    first = host(stack, cluster, "bob,carol")
    working = worker(stack, "carol", cluster)
    first.process.kill()  # carol's worker is now the last pipe: thrown off
    working.expect("the board dropped our session; reconnecting", stream="stderr")
    host(stack, cluster, "bob,carol")
    check_a_task_runs(stack, "bob", cluster, 'divmod, 7, 2', '(3, 1)')


def test_alices_own_worker_waits_for_her_host(stack, name):
    cluster = "alice/" + name
    channel = cluster + "/board"
    early = p2p_command(stack, "alice", "worker", cluster)
    # It must not connect before the host: it would store an empty list.
    hosting = host(stack, cluster, "bob")
    early.expect("worker alice@", stream="stderr", timeout=30)
    assert parse_ls(stack.ls("alice"))[channel]["access"] == ["bob"]
    check_a_task_runs(stack, "bob", cluster, "len, 'abc'", '3')
    assert hosting.process.poll() is None


def test_mallory_and_carol_without_the_key_are_told_how_to_get_it(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol", invited="bob")
    worker(stack, "bob", cluster)
    for user in ("mallory", "carol"):  # not a member; a member not yet invited
        started = time.monotonic()
        refused = p2p_command(stack, user, "worker", cluster)
        assert refused.wait(timeout=30) == 1
        assert time.monotonic() - started < 15
        said = refused.errors.decode()
        assert ("you (%s) hold no key for %s: ask alice to run `python -m p2p invite %s "
                "%s`" % (user, cluster, cluster, user)) in said, said
        assert "python -m p2p join %s CODE" % cluster in said
        client = script(stack, user, "import p2p; p2p.Executor(%r)" % cluster)
        assert "ClusterError: you (%s) hold no key for %s" % (user, cluster) in client.stderr
    joined, = invite(stack, cluster, "carol")
    assert "joined %s as carol" % cluster in joined
    check_a_task_runs(stack, "carol", cluster, 'max, 3, 9', '9')


def test_a_stranger_listening_on_the_board_reads_nothing_and_work_goes_on(stack, name):
    cluster = "alice/" + name
    hosting = host(stack, cluster, "bob,carol")
    worker(stack, "carol", cluster)
    listener = stack.session("mallory", "pipe", cluster + "/board")  # bug A: in
    hosting.expect("not members, on the board of %s: mallory" % cluster,
                   stream="stderr")
    secret = "the-argument-%s" % name
    check_a_task_runs(stack, "bob", cluster, "str.upper, %r" % secret, secret.upper())
    assert b"p2p5 assign " in listener.output  # she heard the task go by, sealed
    assert secret.encode() not in listener.output
    assert secret.upper().encode() not in listener.output


# -- bad input ---------------------------------------------------------------------------------

def test_bob_may_only_host_his_own_clusters(stack):
    answer = stack.run("bob", [sys.executable, "-m", "p2p", "host", "alice/pop",
                               "--users", "carol"])
    assert answer.returncode == 1
    assert "bob may only host clusters named bob/{name}" in answer.stderr


def test_a_hosted_cluster_cannot_be_hosted_again(stack, name):
    cluster = "alice/" + name
    first = host(stack, cluster, "bob")
    second = stack.run("alice", [sys.executable, "-m", "p2p", "host", cluster,
                                 "--users", "carol"])
    assert second.returncode == 1
    assert "%s is already hosted" % cluster in second.stderr
    assert first.process.poll() is None


def test_an_unreachable_cluster_is_an_error_within_15_seconds(stack, name):
    cluster = "alice/" + name  # nobody hosts it
    invite(stack, cluster, "bob")  # which needs no host
    started = time.monotonic()
    answer = script(stack, "bob", "import p2p; p2p.Executor(%r)" % cluster, timeout=40)
    assert time.monotonic() - started < 25
    assert "ClusterError" in answer.stderr
    for needed in ("bob cannot reach cluster " + cluster,
                   "alice must run: python -m p2p host %s --users ...,bob" % cluster):
        assert needed in answer.stderr


def test_bad_names_and_missing_tools_are_explained(stack):
    bad = stack.run("bob", [sys.executable, "-m", "p2p", "worker", "nonsense"])
    assert (bad.returncode, bad.stderr.strip()) == (1, (
        "p2p: error: 'nonsense' is not a cluster name: use owner/name, e.g. "
        "alice/p2p (owner is the pico.sh user who hosts it)"))
    no_ssh = stack.run("bob", [sys.executable, "-m", "p2p", "user"],
                       env={"PATH": "/nonexistent"})
    assert "ssh was not found on PATH" in no_ssh.stderr
    refused = stack.run("newcomer", [sys.executable, "-m", "p2p", "user"])
    assert refused.returncode == 1
    assert "create a pico.sh account first" in refused.stderr.lower()


def test_an_unpicklable_argument_is_refused_at_submit(stack):
    answer = script(stack, "diana", """
        import threading, p2p
        try:
            p2p.submit(print, 1, threading.Lock())
        except p2p.P2PError as exc:
            print(exc)
    """)
    assert "argument 2 (<unlocked _thread.lock object" in answer.stdout, answer.stderr
    assert "cannot pickle" in answer.stdout


# -- command line and configuration --------------------------------------------------------------

def test_a_key_pico_does_not_know_is_told_what_ssh_said(stack, tmp_path):
    key = tmp_path / "unknown_key"
    stack._keygen(str(key))
    config = tmp_path / "ssh_config"
    with open(stack.ssh_config("carol")) as f:
        config.write_text(f.read().replace(
            stack.user_dir("carol") + "/id_ed25519", str(key)))
    answer = stack.run("carol", [sys.executable, "-m", "p2p", "user"], env={
        "PATH": "/usr/bin:/bin", "P2P_SSH_ARGS": "-F %s" % config})
    assert answer.returncode == 1
    assert "Permission denied (publickey)" in answer.stderr
    assert "not registered with pico.sh" in answer.stderr


def test_workers_and_hosts_stop_after_their_duration(stack, name):
    cluster = "alice/" + name
    hosting = p2p_command(stack, "alice", "host", cluster, "--users", "bob",
                          "--duration", "4s")
    hosting.expect("hosting %s" % cluster, stream="stderr", timeout=30)
    working = p2p_command(stack, "alice", "worker", "--duration", "2s")
    assert working.wait(timeout=30) == 0
    assert hosting.wait(timeout=30) == 0


def test_python_m_p2p_user_prints_the_pico_user(stack):
    answer = stack.run("carol", [sys.executable, "-m", "p2p", "user"])
    assert (answer.returncode, answer.stdout) == (0, "carol\n")


def test_ssh_args_come_from_the_environment(stack):
    # Without the user's ssh wrapper on PATH, P2P_SSH_ARGS alone finds the stack.
    answer = stack.run("carol", [sys.executable, "-m", "p2p", "user"], env={
        "PATH": "/usr/bin:/bin", "P2P_SSH_ARGS": "-F %s" % stack.ssh_config("carol")})
    assert (answer.returncode, answer.stdout) == (0, "carol\n"), answer.stderr


def test_help_and_version(stack):
    for command in ([], ["host"], ["worker"]):
        answer = stack.run("bob", [sys.executable, "-m", "p2p"] + command + ["--help"])
        assert answer.returncode == 0
        assert "--ssh-args" in answer.stdout
    version = stack.run("bob", [sys.executable, "-m", "p2p", "--version"])
    assert version.stdout == "p2p %s\n" % p2p.__version__


def test_p2p_py_copied_alone_into_a_project_works(stack, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(p2p.__file__, project)  # vendored: the one file, nothing else
    env = {"PYTHONPATH": None}
    as_script = stack.run("diana", [sys.executable, "p2p.py", "--version"], cwd=project,
                          env=env)
    assert as_script.stdout == "p2p %s\n" % p2p.__version__, as_script.stderr
    working = stack.process("diana", [sys.executable, "p2p.py", "worker", "-q"],
                            cwd=project, env=env)
    (project / "job.py").write_text("import p2p\nprint(p2p.__file__, p2p.submit(abs, -5)"
                                    ".result(60))\n")
    job = stack.run("diana", [sys.executable, "job.py"], cwd=project, env=env, timeout=90)
    assert job.stdout == "%s 5\n" % (project / "p2p.py"), job.stderr
    working.process.terminate()
    assert working.wait(30) == 143
    assert working.errors == b""  # -q: no line per task, no join line


# -- units ---------------------------------------------------------------------------------------

def test_the_key_exchange_prime_is_a_safe_prime():
    prime = p2p._DH_PRIME
    for n in (prime, (prime - 1) // 2):
        assert all(pow(a, n - 1, n) == 1 for a in (2, 3, 5, 7, 11, 13))
    with pytest.raises(p2p.P2PError, match="16 characters"):
        p2p.Config(secret="short")


class Exploit:
    """Unpickles as call(*args): what a hostile worker sends back."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def loads(data, trust=False):
    return p2p._load(io.BytesIO(data), trust)


def outcome(value):
    return p2p._dumps({"value": value, "stdout": "", "stderr": "", "warnings": []})[0]


def test_a_result_that_would_run_commands_is_refused(tmp_path):
    import builtins
    import pathlib

    marker = tmp_path / "pwned"
    touch = "open(%r, 'w')" % str(marker)
    for call in [(os.system, "touch %s" % marker), (subprocess.Popen, ["touch", marker]),
                 (eval, touch), (exec, touch), (builtins.__import__, "os"),
                 (getattr, os, "system"), (pickle.loads, b"."), (shutil.rmtree, tmp_path),
                 (open, marker, "w"), (pathlib.Path.write_text, marker, "x")]:
        with pytest.raises(p2p.TransferError, match="does not load from a worker"):
            loads(outcome(Exploit(*call)))
    for module, name in [("pathlib", "os.system"), ("builtins", "object.__subclasses__"),
                         ("pathlib", "Path.write_text"), ("json", "decoder")]:
        smuggled = b"\x80\x04\x8c%c%s\x8c%c%s\x93." % (len(module), module.encode(),
                                                        len(name), name.encode())
        with pytest.raises(p2p.TransferError, match="does not load from a worker"):
            loads(smuggled)
    with pytest.raises(p2p.P2PError, match="came back from a worker as code"):
        loads(outcome(Exploit(lambda: open(marker, "w"))))  # code by value
    assert not marker.exists()
    with pytest.raises(p2p.TransferError, match="not imported here"):
        loads(b"\x80\x04\x95\x0f\x00\x00\x00\x00\x00\x00\x00\x8c\x07"
                   b"nowhere\x94\x8c\x01x\x94\x93\x94.")
    loads(outcome(Exploit(lambda: open(marker, "w"))), trust=True)
    assert marker.exists()  # the switch: a trusted cluster's results load whole


def test_results_may_hold_data_errors_and_the_clients_own_classes():
    import collections, datetime, decimal, fractions, pathlib, types

    values = [ZeroDivisionError("x"), p2p.TaskCrashed("y"), datetime.datetime(2026, 11, 27),
              decimal.Decimal("1.5"), fractions.Fraction(1, 3), pathlib.Path("/tmp/x"),
              types.SimpleNamespace(a=1), collections.OrderedDict(b=2), {1, 2}, range(3),
              bytearray(b"ab"), complex(1, 2)]
    back = loads(outcome(values))["value"]
    assert [repr(v) for v in back] == [repr(v) for v in values]
    with pytest.raises(p2p.TransferError, match="names builtins.abs"):  # no function runs
        loads(outcome(Exploit(abs, -1)))
    code = loads(outcome(lambda x: x + 1))["value"]
    assert "withheld" in repr(code)
    assert loads(outcome(lambda x: x + 1), trust=True)["value"](1) == 2


def test_a_payload_that_is_not_an_outcome_is_refused():
    for bad in [{"value": 1}, {"error": "not an exception", "stdout": "", "stderr": "",
                               "warnings": []}, [1, 2], 7]:
        with pytest.raises(p2p.TransferError, match="not the outcome of a task"):
            p2p._checked_outcome(loads(pickle.dumps(bad)))


def test_a_board_host_that_refuses_us_is_told_what_ssh_said(stack, tmp_path, name):
    cluster = "alice/" + name
    invite(stack, cluster, "bob")
    config = tmp_path / "ssh_config"
    with open(stack.ssh_config("bob")) as f:  # pipe.pico.sh's host key: not accepted
        config.write_text("Host pipe.pico.sh\n    HostKeyAlias stranger\n" + f.read())
    answer = script(stack, "bob", "import p2p; p2p.Executor(%r)" % cluster,
                    env={"PATH": "/usr/bin:/bin", "P2P_SSH_ARGS": "-F %s" % config},
                    timeout=40)
    assert "cannot open the board of %s" % cluster in answer.stderr
    assert "Host key verification failed" in answer.stderr


# -- peers that vanish ---------------------------------------------------------------------------

def tasks_done(working, count):
    """A worker's "done" lines, once it has logged at least count of them.

    It logs one when the client has taken the result, just after the client has it.
    """
    working.wait_for(lambda said: said.count(b": done in") >= count, 30, stream="stderr",
                     what="%d tasks done" % count)
    return [line for line in working.errors.decode().split("\n") if ": done in" in line]


def doomed_worker(stack, user, cluster):
    """A -v worker (it logs its wormhole commands), once it has joined."""
    doomed = p2p_command(stack, user, "worker", cluster, "-v")
    doomed.expect("worker %s@" % user, stream="stderr", timeout=30)
    return doomed


def test_a_worker_killed_mid_task_is_replaced(stack, name, gate):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    doomed = doomed_worker(stack, "carol", cluster)
    # The task ends once the test has replaced its worker and opened the gate.
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import os, p2p

        def home_when_told(gate):
            with open(gate, "rb") as f:  # blocks until the test opens it
                f.read(1)
            return os.environ["HOME"]

        print(p2p.submit(home_when_told, %r).result(120))
    """ % gate.path)], env={"P2P_CLUSTER": cluster})
    doomed.expect("board: p2p5 assign", stream="stderr")  # it has the task
    killed = time.monotonic()
    os.killpg(doomed.process.pid, signal.SIGKILL)  # the worker and its runner
    worker(stack, "diana", cluster)
    gate.open()
    assert client.wait(timeout=90) == 0, client.errors
    assert time.monotonic() - killed < 45
    assert client.output.decode().strip() == stack.env("diana")["HOME"]
    # Killed before or after its "accept" got out: unanswered, or silent.
    assert re.search(r"on worker carol@\S+: (lost \(silent for \d+s\)|did not answer "
                     r"its assignment within 10s); trying again", client.errors.decode())


def test_when_retries_are_used_up_the_error_names_the_lost_workers(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    doomed = doomed_worker(stack, "carol", cluster)
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import time, p2p
        try:
            p2p.submit(time.sleep, 60).result(120)
        except p2p.WorkerLost as exc:
            print("lost:", exc)
    """)], env={"P2P_CLUSTER": cluster, "P2P_RETRIES": "0"})
    doomed.expect("board: p2p5 assign", stream="stderr")
    os.killpg(doomed.process.pid, signal.SIGKILL)
    assert client.wait(timeout=90) == 0, client.errors
    said = client.output.decode()
    assert said.startswith("lost: task ")
    # Killed before or after its "accept" got out: unanswered, or silent.
    assert re.search(r"failed 1 time\(s\): carol@\S+#1: lost \(silent for \d+s\)", said), said


def seven_when_told(stack, user, cluster, gate=None, retries=2, ballast=0, env=None):
    """user's script waits on a task that returns 7 once the gate (if any) is open;
    ballast bytes more make it too large for the board; env adds to its environment."""
    return stack.process(user, [sys.executable, "-c", textwrap.dedent("""
        import p2p

        def seven_when_told(gate, ballast):
            if gate:
                with open(gate, "rb") as f:  # blocks until the test opens it
                    f.read(1)
            return 7

        print(p2p.submit(seven_when_told, %r, bytes(%d)).result(120))
    """ % (gate and gate.path, ballast))], env=dict(
        env or {}, P2P_CLUSTER=cluster, P2P_RETRIES=str(retries)))


def seven_in_flight(stack, cluster, gate):
    """alice hosts; carol's worker has bob's task, which ends when the gate opens."""
    hosting = host(stack, cluster, "bob,carol,diana")
    working = doomed_worker(stack, "carol", cluster)
    client = seven_when_told(stack, "bob", cluster, gate)
    working.expect("board: p2p5 assign", stream="stderr")
    return hosting, working, client


def test_a_client_whose_board_link_drops_still_gets_its_result(stack, name, gate):
    cluster = "alice/" + name
    _, working, client = seven_in_flight(stack, cluster, gate)  # ends after the drop
    link = children_of(client.process.pid, cluster + "/board")
    assert len(link) == 1
    os.kill(link[0], signal.SIGKILL)  # the ssh to the board dies mid-task
    gate.open()
    assert client.wait(timeout=90) == 0, client.errors
    assert client.output == b"7\n"
    assert len(tasks_done(working, 1)) == 1  # run once, not twice


def test_a_restarted_host_takes_its_cluster_back(stack, name, gate):
    cluster = "alice/" + name
    hosting, working, client = seven_in_flight(stack, cluster, gate)
    os.killpg(hosting.process.pid, signal.SIGKILL)  # its list stays stored
    host(stack, cluster, "bob,carol,diana")
    gate.open()
    assert client.wait(timeout=90) == 0, client.errors
    assert client.output == b"7\n"
    check_a_task_runs(stack, "diana", cluster)  # a newcomer is welcomed
    assert len(tasks_done(working, 2)) == 2


def test_peers_carry_on_when_the_board_server_restarts(stack, name, gate):
    cluster = "alice/" + name
    hosting, working, client = seven_in_flight(stack, cluster, gate)
    stack.restart_board()  # every session drops; the board forgets every list
    hosting.expect("the board dropped the host's session", stream="stderr")
    working.expect("the board dropped our session", stream="stderr")
    on_channel(stack, "alice", cluster + "/board", "alice", "alice", "bob", "carol")
    assert parse_ls(stack.ls("alice"))[cluster + "/board"]["access"] == [
        "bob", "carol", "diana"]
    gate.open()
    assert client.wait(timeout=90) == 0, client.errors
    assert client.output == b"7\n"
    assert len(tasks_done(working, 1)) == 1  # run once, not twice
    check_a_task_runs(stack, "diana", cluster)


def long_task_in_flight(stack, cluster):
    """alice hosts; bob's script waits on a 10-minute task that carol's worker has."""
    host(stack, cluster, "bob,carol,diana")
    working = doomed_worker(stack, "carol", cluster)
    # Should it hang, its threads' stacks go to stderr after 25 s.
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import faulthandler, time, p2p
        faulthandler.dump_traceback_later(25)
        p2p.submit(time.sleep, 600).result()
    """)], env={"P2P_CLUSTER": cluster})
    working.expect("board: p2p5 assign", stream="stderr")
    return working, client


def test_a_vanished_clients_task_is_stopped_and_its_worker_freed(stack, name):
    cluster = "alice/" + name
    working, doomed = long_task_in_flight(stack, cluster)
    os.killpg(doomed.process.pid, signal.SIGKILL)  # no goodbye: a lid closing
    working.expect("fell silent: stopping its task", stream="stderr", timeout=40)
    check_a_task_runs(stack, "diana", cluster)


def test_a_stalled_wormhole_transfer_is_tried_again_over_ssh(stack, name):
    import socket

    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    with socket.socket() as black_hole:  # a proxy that swallows the websocket
        black_hole.bind(("127.0.0.1", 0))
        black_hole.listen(16)
        stalled = p2p_command(stack, "carol", "worker", cluster, env={
            "WORMHOLE_RELAY_URL": "ws://127.0.0.1:%d/v1" % black_hole.getsockname()[1],
            "P2P_TIMEOUT": "3"})
        stalled.expect("worker carol@", stream="stderr", timeout=30)
        sizes = """
            import p2p
            try:
                print(p2p.submit(len, bytes(10 ** 5)).result(60))  # too large for the board
            except p2p.TransferError as exc:
                print(exc)
        """
        env = {"P2P_CLUSTER": cluster, "P2P_RETRIES": "0"}
        switched = script(stack, "bob", sizes, env=env)
        assert switched.stdout == "100000\n", switched.stderr
        assert re.search(r"carol@\S+: the task did not arrive: wormhole receive did not "
                         r"finish within 3s; trying it over ssh", switched.stderr)
        # Told to use wormhole only, the client does not switch: the task fails.
        # (diana's: stalls with one user alone never switch a peer off wormhole.)
        forced = script(stack, "diana", sizes, env=dict(env, P2P_TRANSPORT="wormhole"))
        assert re.match(r"task \w+ failed 1 time\(s\): carol@\S+: the task did not arrive: "
                        r"wormhole receive did not finish within 3s", forced.stdout), \
            forced.stdout + forced.stderr
        # Stalls in a row with two users, its servers up: carol's worker offers ssh only now.
        stalled.expect("wormhole: out (2 wormhole transfers in a row failed): large "
                       "payloads go over ssh", stream="stderr")
        direct = script(stack, "bob", sizes, env=env)
        assert direct.stdout == "100000\n", direct.stderr
        assert "trying it over ssh" not in direct.stderr
        assert stalled.errors.count(b"did not finish within 3s") == 2


SQUATTER = """#!%(python)s
import os, subprocess, sys, threading
# Someone else's transfer takes the nameplate of the first code received.
argv = ["wormhole-william"] + sys.argv[1:]
squatter = None
if argv[1] == "receive" and not os.path.exists(%(flag)r):
    open(%(flag)r, "x").close()
    squatter = subprocess.Popen(["wormhole-william", "send", "--code",
                                 argv[-1].split("-")[0] + "-someone-elses", "/etc/hostname"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in squatter.stdout:
        if "Wormhole code is" in line:  # it holds the nameplate now
            break
    threading.Thread(target=squatter.stdout.read, daemon=True).start()
status = subprocess.run(argv).returncode
if squatter:
    squatter.kill()
sys.exit(status)
"""


def test_a_nameplate_someone_else_holds_is_tried_again_with_a_new_code(stack, name, tmp_path):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol")
    squatted = tmp_path / "squatted"
    wrapper = tmp_path / "wormhole"
    wrapper.write_text(SQUATTER % {"python": sys.executable, "flag": str(squatted)})
    wrapper.chmod(0o755)
    squatting = p2p_command(stack, "carol", "worker", cluster, env={
        "P2P_WORMHOLE": str(wrapper), "P2P_TIMEOUT": "5"})
    squatting.expect("worker carol@", stream="stderr", timeout=30)
    client = seven_when_told(stack, "bob", cluster, ballast=10 ** 5,  # by wormhole only
                             env={"P2P_TRANSPORT": "wormhole"})
    assert client.wait(timeout=60) == 0, client.errors
    assert client.output == b"7\n"
    assert squatted.exists()
    # The mailbox pairs the squatter with one of the two; the other one waits.
    assert re.search(rb"the task did not arrive: wormhole receive (failed: .+|did not "
                     rb"finish within 5s); trying again", client.errors), client.errors


# -- cancel and interrupt ---------------------------------------------------------------------------

def test_result_and_map_time_out_as_in_concurrent_futures(stack):
    worker(stack, "diana")
    answer = script(stack, "diana", """
        import concurrent.futures, time, p2p
        with p2p.Executor() as ex:
            for wait in (lambda: ex.submit(time.sleep, 600).result(timeout=2),
                         lambda: list(ex.map(time.sleep, [600], timeout=2))):
                started = time.monotonic()
                try:
                    wait()
                except concurrent.futures.TimeoutError:
                    print("timed out", round(time.monotonic() - started) < 10)
            ex.interrupt()  # the sleeps go on, else
    """)
    assert answer.stdout == "timed out True\n" * 2, answer.stderr


def test_cancelling_a_queued_task_withdraws_it(stack):
    answer = script(stack, "diana", """
        import p2p
        ex = p2p.Executor()          # no worker yet: the task waits in the queue
        f = ex.submit(abs, -1)
        print(f.cancel(), f.cancelled())
        ex.shutdown()
    """)
    assert answer.stdout == "True True\n", answer.stderr


def test_bob_interrupts_a_running_task_and_its_slot_is_free_again(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    working = doomed_worker(stack, "carol", cluster)
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import os, sys, time, p2p
        ex = p2p.Executor()
        f = ex.submit(time.sleep, 600)
        sys.stdin.readline()         # the test says when the worker has it
        ex.interrupt(f)
        print(repr(f.exception(timeout=5)), f.cancelled(), flush=True)
        print("next", ex.submit(abs, -7).result(30), flush=True)   # the one slot
        ex.shutdown()
    """)], env={"P2P_CLUSTER": cluster})
    working.expect("board: p2p5 assign", stream="stderr")
    client.send("go\n")
    working.expect("withdrew: stopping its task", stream="stderr", timeout=2)
    assert client.wait(timeout=30) == 0, client.errors
    assert client.output.startswith(b"CancelledError('task ")
    assert b"next 7" in client.output


def test_shutdown_with_cancel_futures_cancels_what_waits_and_lets_the_running_finish(
        stack, name, gate):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    working = doomed_worker(stack, "carol", cluster)
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import sys, p2p

        def when_told(gate):
            with open(gate, "rb") as f:
                f.read(1)
            return "finished"

        ex = p2p.Executor(max_workers=1)
        running = ex.submit(when_told, %r)
        waiting = [ex.submit(abs, -i) for i in range(3)]
        sys.stdin.readline()         # the test says when the worker has the first
        ex.shutdown(wait=False, cancel_futures=True)
        print([f.cancelled() for f in waiting], flush=True)
        print(running.result(60))
        try:
            ex.submit(abs, 1)
        except RuntimeError as exc:
            print(exc)
    """ % gate.path)], env={"P2P_CLUSTER": cluster})
    working.expect("board: p2p5 assign", stream="stderr")
    client.send("go\n")
    client.expect("[True, True, True]\n", timeout=15)
    gate.open()
    assert client.wait(timeout=30) == 0, client.errors
    assert client.output.endswith(b"finished\ncannot schedule new futures after shutdown\n")


def test_bobs_executor_keeps_the_contract_of_concurrent_futures(stack):
    worker(stack, "bob", None, "--workers", "2")
    answer = script(stack, "bob", """
        import atexit, gc, weakref, p2p

        class Made:
            pass

        ex = p2p.Executor()
        try:
            ex.map(abs, [1], chunksize=-1)
        except ValueError as exc:
            print("chunksize:", exc)
        for chunksize in (1, 3):
            gone = []
            for made in ex.map(lambda _: Made(), range(6), chunksize=chunksize):
                ref = weakref.ref(made)
                del made
                gc.collect()
                gone.append(ref() is None)
            print("let go", chunksize, all(gone))

        def at_exit():
            try:
                ex.submit(abs, -1)
            except RuntimeError as exc:
                print("at exit:", exc)
        atexit.register(at_exit)
    """)
    assert answer.returncode == 0, answer.stderr
    assert "chunksize: chunksize must be >= 1." in answer.stdout
    assert "let go 1 True" in answer.stdout and "let go 3 True" in answer.stdout
    assert "at exit: cannot schedule new futures after interpreter shutdown" in answer.stdout


def test_max_workers_must_be_one_or_more_as_for_any_executor():
    for number in (0, -1):
        with pytest.raises(ValueError, match="max_workers must be greater than 0"):
            p2p.Executor(max_workers=number)


def test_max_workers_runs_at_most_that_many_of_its_tasks_at_once(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    worker(stack, "carol", cluster, "--workers", "3")
    answer = script(stack, "bob", """
        import time, p2p

        def spell():
            began = time.monotonic()     # the machine's clock: one for all processes
            time.sleep(1.0)
            return began, time.monotonic()

        with p2p.Executor(max_workers=2) as ex:
            spells = sorted(f.result(60) for f in [ex.submit(spell) for _ in range(6)])
        # The most running at any one time: at some task's start, as ever.
        at_once = max(sum(b <= began < e for b, e in spells) for began, _ in spells)
        print("at once", at_once, spells)
    """, env={"P2P_CLUSTER": cluster})
    assert "at once 2" in answer.stdout, answer.stderr  # 3 slots free, 2 used


def test_ctrl_c_in_a_script_stops_its_tasks_on_the_workers(stack, name):
    working, client = long_task_in_flight(stack, "alice/" + name)
    client.process.send_signal(signal.SIGINT)
    try:
        assert client.wait(timeout=40) != 0
    except subprocess.TimeoutExpired:
        pytest.fail("the script did not end: %s" % client.errors.decode())
    assert b"KeyboardInterrupt" in client.errors
    working.expect("withdrew: stopping its task", stream="stderr", timeout=2)
