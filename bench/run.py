"""Benchmark p2p.py on the local stack, on loopback and on the internet profile.

    python3 -m localstack run bench/run.py [--quick] [--profile loopback|internet|both]
                                           [--write bench/RESULTS.md] [--only CASES]

Every case runs on each profile chosen (both by default), each on a Stack
of its own (one after the other: only one stack at a time can have the
transit relay's port): LOOPBACK, with no delays, and INTERNET, where a
board line takes 80 ms from peer to peer, every ssh connection 400 ms more
to set up and each wormhole server is 40 ms away (see localstack's Profile).

Each case runs several times; the table gives median, min and max, and
next to them the floor measured in the same run on the same profile:

* the board round trip: a line written by alice's pipe, read by bob's pipe
  and answered, back at alice's (median of 20);
* the ssh connection: the wall time of ``ssh pico.sh user`` (median);
* raw wormhole-william transfers of the case's size (both CLIs started,
  as p2p.py starts them);
* raw pipes through the board: a writer's ``ssh pipe.pico.sh pipe T``
  started with 10 MB on its stdin, to a reader on T connected before,
  until the reader has it all (the floor of the ssh transport).

The "wormhole blocked" cases run bob's processes on a network that refuses
the wormhole servers (or, for one, drops them so that connects hang),
as localstack's Stack.wormhole_blocked makes it: their large payloads go
over ssh.

A case's target says what it should reach on that profile, and "met" says
whether it did. Absolute times on a shared machine drift; the ratios less so.

A slow case cannot take the run hostage: each has a time budget, and once
its next run would not fit in it, it stops (after one run at least). The
table's "runs" column says how many it got. A case that fails is a row that
says so; the other cases go on. On 2 cores the default run takes about 8
minutes with protocol 2's p2p.py (12 with the slower one before it), and
``--quick --profile internet`` about 3.
"""

import argparse
import json
import math
import os
import platform
import py_compile
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import p2p
from localstack import (INTERNET, LOOPBACK, Stack, children_of, processes_mentioning,
                        wait_until)

USER = "bob"  # everything runs on bob's personal cluster: no host needed
OTHER = "alice"  # the other end of the board round trip
MB = 1 << 20
SEAL_OVERHEAD = 64  # bytes a sealed payload adds to its pickle (nonce, MAC, framing)


# -- running things on the stack -----------------------------------------------

def start_workers(stack, slots, processes=1):
    """`slots` worker slots in `processes` worker processes, once all are ready.

    They start together and are waited for after: on the internet profile
    each start waits for ssh, and twenty of them one by one would take long.
    """
    workers = [stack.process(USER, [sys.executable, "-m", "p2p", "worker",
                                    "--workers", str(slots // processes)])
               for _ in range(processes)]
    try:
        for worker in workers:
            worker.expect("worker %s@" % USER, stream="stderr", timeout=120)
    except BaseException:
        stop(workers)
        raise
    return workers


def stop(sessions):
    """Stop worker processes (SIGTERM, then SIGKILL), and wait for them."""
    for session in sessions:
        if session.process.poll() is None:
            session.process.terminate()
    for session in sessions:
        try:
            session.wait(30)
        except subprocess.TimeoutExpired:
            print("(a worker ignored SIGTERM for 30 s: killed)", end=" ", flush=True)
            session.process.kill()
            session.wait(30)


def measure(stack, source, timeout=600, **values):
    """Run a client script (source % values) as the user; the JSON it prints last."""
    source = textwrap.dedent(source) % values
    answer = stack.run(USER, [sys.executable, "-c", source], timeout=timeout)
    if answer.returncode != 0:
        raise RuntimeError("a benchmark script failed:\n%s" % answer.stderr[-3000:])
    return json.loads(answer.stdout.strip().splitlines()[-1])


def repeat(action, runs, budget):
    """The values of up to `runs` calls of action, fewer when the time budget
    (seconds) would be exceeded: a run starts only when one more of the
    slowest so far still fits. One run at least."""
    values, started, slowest = [], time.monotonic(), 0.0
    while len(values) < runs:
        if values and time.monotonic() - started + slowest > budget:
            break
        began = time.monotonic()
        values.append(action())
        slowest = max(slowest, time.monotonic() - began)
    return values


def timed(action):
    started = time.monotonic()
    action()
    return time.monotonic() - started


def clients_on(stack, owner, channel):
    """The pico users of the clients that the owner's ls shows on channel."""
    text = stack.ls(owner)
    _, found, rest = text.partition("- %s:" % channel)
    return sorted(re.findall(r"\((\w+)@", rest.split("\r\n- ")[0])) if found else []


# -- floors: what a case cannot beat on its profile -----------------------------

def board_round_trips(stack, runs):
    """Seconds for a line from OTHER's pipe to USER's pipe and an answer back."""
    topic = "bench-rtt-" + secrets.token_hex(4)
    channel = "%s/%s" % (OTHER, topic)
    asker = stack.session(OTHER, "pipe", topic, "-a", USER)
    answerer = None
    try:
        # The owner first, or USER lands on a channel of his own (pico.sh's rule).
        wait_until(lambda: clients_on(stack, OTHER, channel) == [OTHER], 30,
                   "%s on %s" % (OTHER, channel))
        answerer = stack.session(USER, "pipe", channel)
        wait_until(lambda: clients_on(stack, OTHER, channel) == sorted([OTHER, USER]),
                   30, "%s on %s" % (USER, channel))
        times = []
        for n in range(runs):
            started = time.monotonic()
            asker.send("ping %d\n" % n)
            answerer.expect("ping %d\n" % n)  # read by USER's pipe, ...
            answerer.send("pong %d\n" % n)  # ... answered ...
            asker.expect("pong %d\n" % n)  # ... and back
            times.append(time.monotonic() - started)
        return times
    finally:
        for session in (answerer, asker):
            if session is not None:
                session.close()


def ssh_connection(stack):
    """Seconds for ``ssh pico.sh user``: an ssh connection's set-up, and little else."""
    started = time.monotonic()
    answer = stack.run(USER, ["ssh", "pico.sh", "user"])
    if answer.returncode != 0 or not answer.stdout.startswith(USER + "\n"):
        raise RuntimeError("ssh pico.sh user failed: %s" % answer.stderr)
    return time.monotonic() - started


def raw_transfer(stack, size, folder):
    """Seconds for one raw wormhole-william send + receive of size bytes."""
    code = "%d-%s" % (secrets.randbelow(9000000) + 1000000, secrets.token_hex(12))
    sent, received = os.path.join(folder, "out"), os.path.join(folder, "in")
    os.makedirs(sent, exist_ok=True)
    os.makedirs(received, exist_ok=True)
    path = os.path.join(sent, "payload")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    started = time.monotonic()
    sender = stack.spawn(USER, ["wormhole-william", "send", "--hide-progress", "--code",
                                code, "payload"], cwd=sent, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    receiver = stack.spawn(USER, ["wormhole-william", "receive", "--hide-progress", code],
                           cwd=received, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    receiver.communicate(b"y\n", timeout=600)
    sender.wait(600)
    elapsed = time.monotonic() - started
    if os.path.getsize(os.path.join(received, "payload")) != size:
        raise RuntimeError("a raw transfer lost bytes")
    os.remove(os.path.join(received, "payload"))
    return elapsed


def raw_pipe(stack, size, folder):
    """Seconds from a writer's ``pipe T`` with size bytes to a reader on T having them."""
    topic = "bench-raw-" + secrets.token_hex(4)
    path = os.path.join(folder, "raw")
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    reader = stack.spawn(USER, ["ssh", "pipe.pico.sh", "pipe", topic],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: clients_on(stack, USER, "%s/%s" % (USER, topic)) == [USER], 30,
                   "the reader on %s" % topic)
        with open(path, "rb") as source:
            started = time.monotonic()
            writer = stack.spawn(USER, ["ssh", "pipe.pico.sh", "pipe", topic],
                                 stdin=source, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
            got = 0
            while got < size:
                chunk = reader.stdout.read1(1 << 16)
                if not chunk:
                    raise RuntimeError("a raw pipe lost bytes: %d of %d came" % (got, size))
                got += len(chunk)
            elapsed = time.monotonic() - started
        writer.wait(60)
        return elapsed
    finally:
        reader.kill()
        reader.wait()


# -- the client scripts of the cases -------------------------------------------
#
# Each runs as bob in a fresh process and prints its figures as JSON last.
# %(name)s are filled in by measure().

LATENCY = """
    import json, time, p2p

    def noop():
        return None

    try:  # the pickled task, plus SEAL_OVERHEAD: what a sealed payload weighs
        sealed = len(p2p._dumps((noop, (), {}))[0]) + %(seal)d
    except Exception:
        sealed = None
    with p2p.Executor() as ex:
        ex.submit(noop).result(60)  # joined, warm
        times, begun = [], time.monotonic()
        while len(times) < %(runs)d and time.monotonic() - begun < %(budget)g:
            started = time.monotonic()
            ex.submit(noop).result(60)
            times.append(time.monotonic() - started)
    print(json.dumps({"times": times, "sealed": sealed}))
"""

SUBMITS = """
    import json, time, p2p

    def square(x):
        return x * x

    with p2p.Executor() as ex:
        ex.submit(square, 0).result(60)
        started = time.monotonic()
        futures = [ex.submit(square, i) for i in range(40)]
        assert [f.result(600) for f in futures] == [i * i for i in range(40)]
        print(json.dumps(time.monotonic() - started))
"""

THROUGHPUT = """
    import json, time, p2p

    def square(x):
        return x * x

    with p2p.Executor() as ex:
        ex.submit(square, 0).result(60)
        started = time.monotonic()
        assert list(ex.map(square, range(1000))) == [x * x for x in range(1000)]
        print(json.dumps(time.monotonic() - started))
"""

BULK = """
    import json, os, resource, time, p2p

    def same(data):
        return data

    payload = os.urandom(%(size)d)  # real pages, not untouched zeros
    with p2p.Executor() as ex:
        ex.submit(same, b"").result(60)
        started = time.monotonic()
        back = ex.submit(same, payload).result(600)
        elapsed = time.monotonic() - started
    assert back == payload
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps([elapsed, peak]))
"""

SCALING = """
    import json, time, p2p

    def burn(seconds):
        started = time.process_time()
        while time.process_time() - started < seconds:
            pass
        return seconds

    with p2p.Executor() as ex:
        ex.submit(abs, 0).result(60)
        started = time.monotonic()
        assert sum(f.result() for f in [ex.submit(burn, 1.0) for _ in range(8)]) == 8.0
        print(json.dumps(time.monotonic() - started))
"""

NAPS = """
    import json, time, p2p

    def nap(i):
        time.sleep(1.0)  # the task's work: a second of waiting, no CPU
        return i

    with p2p.Executor() as ex:
        ex.submit(abs, 0).result(60)
        started = time.monotonic()
        assert list(ex.map(nap, range(200), chunksize=1)) == list(range(200))
        print(json.dumps(time.monotonic() - started))
"""

FIRST_RESULT = """
    import json, time
    started = time.monotonic()
    import p2p
    p2p.submit(abs, -1).result(60)
    print(json.dumps(time.monotonic() - started))
"""


# -- board traffic ---------------------------------------------------------------

def _kind(line):
    """The kind of p2p message on a board line, or None."""
    try:
        message = p2p._decode(line)
    except Exception:  # the protocol is p2p's business: any failure is noise
        return None
    return getattr(message, "kind", None) if message else None


def board_traffic(stack, idle_workers, tasks, budget):
    """(lines, bytes, sealed payload size) per small task on the board, with
    idle_workers worker processes connected; each task a submit(noop).result()."""
    workers = start_workers(stack, idle_workers, processes=idle_workers)
    channel = "%s/personal/board" % USER
    listener = stack.session(USER, "pipe", channel, "-r")
    try:
        # Listening before the client's first line, or its task is missed.
        # The echo of a line of its own says it is on (ls would not: how
        # many sessions each peer holds is p2p's business); p2p's peers take
        # a line that does not start with "p2p" for noise.
        probe = "bench: listening %s\n" % secrets.token_hex(4)
        listener.send(probe)
        listener.expect(probe, 60)
        found = measure(stack, LATENCY, runs=tasks, budget=budget, seal=SEAL_OVERHEAD)
        count = len(found["times"]) + 1  # the warm-up task too

        def results(output):
            return sum(_kind(line) == "result" for line in output.split(b"\n"))

        try:  # the last result line may still be on its way to the listener
            listener.wait_for(lambda output: results(output) >= count, 10)
        except AssertionError:
            pass  # counted as far as it got
        lines = listener.output.split(b"\n")
        kinds = [_kind(line) for line in lines]
        # From the first task line to the last: what the tasks cost, not the joining.
        first = kinds.index("assign")
        last = len(kinds) - 1 - kinds[::-1].index("result")
        on_board = [line for line in lines[first:last + 1] if line.startswith(b"p2p")]
        return (len(on_board) / count, sum(len(line) + 1 for line in on_board) / count,
                found["sealed"])
    finally:
        listener.close()
        stop(workers)


def payload_lines(sealed):
    """Board lines that a small task's payloads need, if they go on the board:
    the sealed task there and its result (no bigger, for a noop) back, each
    in base64 in lines of at most p2p's longest line. 2 for a noop."""
    longest = getattr(p2p, "MAX_LINE", 4096)
    in_base64 = 4 * math.ceil(sealed / 3)
    return 2 * math.ceil(in_base64 / longest)


OWN_MODULE = """
    import json, os, sys, p2p

    sys.path.insert(0, %(folder)r)  # the user's project, beside the script
    import helpers50

    with p2p.Executor() as ex:
        for i in range(%(runs)d):
            assert ex.submit(helpers50.work, i).result(60) == helpers50.work(i)
        for i in range(%(runs)d):
            ex.submit(abs, -i).result(60)
    print(json.dumps({"module": os.path.getsize(helpers50.__file__)}))
"""


def own_module_payloads(stack, runs):
    """(module size, [payload bytes of each task]) for runs tasks of a
    function in a 50 KB module of the user's own, then runs of abs: what
    each task's assignment says its sealed payload weighs."""
    folder = os.path.join(stack.user_dir(USER), "home", "project")
    os.makedirs(folder, exist_ok=True)
    lines = ['"""A user\'s own helpers: some 50 KB of small functions."""', ""]
    while sum(len(line) + 1 for line in lines) < 50 * 1024:
        n = len(lines)
        lines += ["def f%d(x):" % n, "    return x * %d + %d" % (n, n % 7), "", ""]
    lines += ["def work(x):", "    return f2(x) + f6(x)", ""]
    with open(os.path.join(folder, "helpers50.py"), "w") as f:
        f.write("\n".join(lines))
    workers = start_workers(stack, 1)
    listener = stack.session(USER, "pipe", "%s/personal/board" % USER, "-r")
    try:
        probe = "bench: listening %s\n" % secrets.token_hex(4)
        listener.send(probe)
        listener.expect(probe, 60)
        found = measure(stack, OWN_MODULE, runs=runs, folder=folder)
        sizes = {}
        for line in listener.output.split(b"\n"):
            try:
                message = p2p._decode(line)
            except Exception:
                continue
            if message and message.kind == "assign" and message["n"] == 0:
                sizes.setdefault(message["task"], message["size"])  # not its resends
        return found["module"], list(sizes.values())
    finally:
        listener.close()
        stop(workers)


# -- idle cost -------------------------------------------------------------------

def idle_cost(stack, seconds):
    """(share of a core, RSS in MB) of an idle worker process and its ssh
    (its board session and its shared connection), over seconds."""
    worker, = start_workers(stack, 1)
    # Start-up is not idling: its ssh handshakes and its task runner's
    # imports end within moments of "ready" (start-up is measured below).
    time.sleep(5)
    # Its shared ssh connection runs in the background, no child of it: the
    # only one on the stack now, the clients of earlier cases having ended.
    pids = [worker.process.pid] + children_of(worker.process.pid) + [
        pid for pid in processes_mentioning("/master [mux]")
        if pid not in children_of(worker.process.pid)]
    try:
        before = sum(cpu_seconds(pid) for pid in pids)
        time.sleep(seconds)  # the worker idles: this is what is measured
        used = sum(cpu_seconds(pid) for pid in pids) - before
        return used / seconds, rss_mb(worker.process.pid), sum(rss_mb(p) for p in pids)
    finally:
        stop([worker])


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_start(stack):
    started = time.monotonic()
    worker, = start_workers(stack, 1)
    elapsed = time.monotonic() - started
    stop([worker])
    return elapsed


# -- one profile's run -------------------------------------------------------------

class ProfileRun:
    """The floors and the cases of one profile, on its own Stack; rows of the table.

    Each case is a method; run() calls them in CASES order, and a case that
    raises becomes a row saying so. Targets differ by profile: loopback's are
    the ones this benchmark always had (and small-task latency, and scale);
    the internet's are stated in floors of the same run where they can be.
    """

    def __init__(self, stack, quick, only=None):
        self.stack = stack
        self.profile = stack.profile
        self.internet = stack.profile == INTERNET
        self.quick = quick
        self.cases = [case for case in CASES if only is None or case.__name__ in only
                      or case is ProfileRun.floor_measurements]
        self.floors = {}  # name -> median seconds
        self.rows = []

    def runs(self, normal, quick):
        return quick if self.quick else normal

    def budget(self, seconds):
        """A case's time budget: half of it with --quick."""
        return seconds / 2 if self.quick else seconds

    def add(self, case, values, unit, floor=None, target="", met=None):
        """A row; floor is (label, seconds) of the floor this figure is set against."""
        values = list(values)
        median = statistics.median(values)
        cells = [case, "%.3g %s" % (median, unit), "%.3g" % min(values),
                 "%.3g" % max(values), str(len(values))]
        if floor:
            label, value = floor
            cells += ["%s %.3g s" % (label, value), "%.2fx" % (median / value)]
        else:
            cells += ["", ""]
        cells += [target, "" if met is None else ("yes" if met else "**no**")]
        self.rows.append("| " + " | ".join(cells) + " |")

    def failed(self, case, exc):
        text = " ".join(("%s: %s" % (type(exc).__name__, exc)).split())
        if len(text) > 200:  # a script's traceback: how it starts, and its last words
            text = text[:60] + " ... " + text[-140:]
        self.rows.append("| %s | failed: %s |  |  |  |  |  |  | **no** |"
                         % (case, text.replace("|", "/")))

    def run(self):
        for case in self.cases:
            name = case.__name__.replace("_", " ")
            print("%s: %s ..." % (self.profile.name, name), end=" ", flush=True)
            started = time.monotonic()
            try:
                case(self)
            except Exception as exc:
                print("failed: %s" % exc, end=" ")
                self.failed(name, exc)
            print("%.0f s" % (time.monotonic() - started), flush=True)
        return self.rows

    # The floors (first: every case below is set against them).

    def floor_measurements(self):
        rtts = board_round_trips(self.stack, 20)
        self.floors["rtt"] = statistics.median(rtts)
        self.add("floor: board round trip (alice's pipe, bob's pipe, back)", rtts, "s")
        sshs = repeat(lambda: ssh_connection(self.stack), self.runs(10, 5), 30)
        self.floors["ssh"] = statistics.median(sshs)
        self.add("floor: ssh connection (ssh pico.sh user)", sshs, "s")
        with tempfile.TemporaryDirectory() as folder:
            # (size, runs, budget): the floors that targets rest on get time.
            for name, size, runs, budget in (
                    ("100 B", 100, self.runs(20, 10), 20),
                    ("10 MB", 10 * MB, self.runs(5, 3), 15),
                    ("100 MB", 100 * MB, self.runs(3, 2), 30)):
                times = repeat(lambda: raw_transfer(self.stack, size, folder), runs,
                               self.budget(budget))
                self.floors[name] = statistics.median(times)
                self.add("floor: one raw %s transfer" % name, times, "s")

    def ssh_floor(self):
        with tempfile.TemporaryDirectory() as folder:
            times = repeat(lambda: raw_pipe(self.stack, 10 * MB, folder), self.runs(5, 3),
                           self.budget(20))
        self.floors["pipe 10 MB"] = statistics.median(times)
        self.add("floor: one raw 10 MB pipe through the board", times, "s")

    def two(self, size):
        """The floor of a payload there and back: two raw transfers of its size."""
        return "two raw %s transfers" % size, 2 * self.floors[size]

    def rtt(self, count=1):
        return ("%g board round trip%s" % (count, "s" if count != 1 else ""),
                count * self.floors["rtt"])

    # The cases.

    def small_task_latency(self):
        workers = start_workers(self.stack, 1)
        try:
            found = measure(self.stack, LATENCY, runs=self.runs(30, 10),
                            budget=self.budget(20), seal=SEAL_OVERHEAD)
        finally:
            stop(workers)
        times, median = found["times"], statistics.median(found["times"])
        case = "latency: submit(noop).result(), 1 worker"
        if self.internet:
            self.add(case, times, "s", self.rtt(), "<= 1.5 board round trips",
                     median <= 1.5 * self.floors["rtt"])
        else:
            floor = self.two("100 B")
            self.add(case, times, "s", floor, "<= 2x two tiny raw transfers",
                     median <= 2 * floor[1])
            self.add(case, times, "s", self.rtt(), "<= 50 ms", median <= 0.050)

    def first_result(self):
        workers = start_workers(self.stack, 1)
        try:
            firsts = repeat(lambda: measure(self.stack, FIRST_RESULT),
                            self.runs(5, 3), self.budget(20))
        finally:
            stop(workers)
        median = statistics.median(firsts)
        floor = ("ssh + 4 board round trips",
                 self.floors["ssh"] + 4 * self.floors["rtt"])
        case = "start-up: import p2p, first submit until its result"
        if self.internet:
            self.add(case, firsts, "s", floor, "<= ssh + 4 board round trips",
                     median <= floor[1])
        else:
            self.add(case, firsts, "s", floor, "<= 2 s", median <= 2)

    def separate_submits(self):
        workers = start_workers(self.stack, 2)
        try:
            times = repeat(lambda: measure(self.stack, SUBMITS), self.runs(5, 3),
                           self.budget(20))
        finally:
            stop(workers)
        case = "40 x submit(square, i), then all results, 2 worker slots"
        if self.internet:
            self.add(case, times, "s", self.rtt(), "<= 2 s",
                     statistics.median(times) <= 2.0)
        else:
            self.add(case, times, "s", self.rtt())

    def throughput(self):
        workers = start_workers(self.stack, 2)
        try:
            times = repeat(lambda: measure(self.stack, THROUGHPUT), self.runs(5, 3),
                           self.budget(20))
        finally:
            stop(workers)
        limit = 3.0 if self.internet else 5.0
        self.add("throughput: map(square, range(1000)), 2 worker slots", times, "s",
                 self.rtt(), "<= %g s" % limit, statistics.median(times) <= limit)

    def ten_megabytes(self):
        workers = start_workers(self.stack, 1)
        try:
            bulk = repeat(lambda: measure(self.stack, BULK, size=10 * MB),
                          self.runs(5, 3), self.budget(15))
        finally:
            stop(workers)
        times, floor = [b[0] for b in bulk], self.two("10 MB")
        case = "bulk: 10 MB bytes there and back, 1 worker"
        if self.internet:
            self.add(case, times, "s", floor, "<= 1.3x two raw 10 MB transfers",
                     statistics.median(times) <= 1.3 * floor[1])
        else:
            self.add(case, times, "s", floor)

    def ten_megabytes_over_ssh(self):
        with self.stack.wormhole_blocked(**{USER: "refused"}):
            workers = start_workers(self.stack, 1)
            try:
                bulk = repeat(lambda: measure(self.stack, BULK, size=10 * MB),
                              self.runs(5, 3), self.budget(20))
            finally:
                stop(workers)
        times = [b[0] for b in bulk]
        # The target: there and back, against piping it once raw.
        floor = ("one raw 10 MB pipe", self.floors["pipe 10 MB"])
        self.add("wormhole blocked: 10 MB bytes there and back over ssh, 1 worker", times,
                 "s", floor, "<= 1.5x one raw 10 MB pipe",
                 statistics.median(times) <= 1.5 * floor[1])

    def hanging_wormhole(self):
        """The client's connects to the wormhole servers hang; its worker's do not."""
        workers = start_workers(self.stack, 1)
        try:
            with self.stack.wormhole_blocked(**{USER: "dropped"}):
                times = repeat(lambda: timed(lambda: measure(self.stack, BULK, size=10 * MB)),
                               self.runs(3, 2), self.budget(30))
        finally:
            stop(workers)
        timeout = p2p.Config().timeout
        self.add("wormhole connects hang: a script's first 10 MB there and back, from its "
                 "start", times, "s", None, "<= the transfer timeout (%g s)" % timeout,
                 max(times) <= timeout)

    def hundred_megabytes(self):
        workers = start_workers(self.stack, 1)
        try:
            bulk = repeat(lambda: measure(self.stack, BULK, size=100 * MB),
                          self.runs(3, 2), self.budget(35))
        finally:
            stop(workers)
        times, floor = [b[0] for b in bulk], self.two("100 MB")
        self.add("bulk: 100 MB bytes there and back, 1 worker", times, "s", floor,
                 "<= 3x two raw 100 MB transfers",
                 statistics.median(times) <= 3 * floor[1])
        self.add("bulk: peak client memory / payload", [b[1] / (100 * MB) for b in bulk],
                 "x", None, "<= 3x", max(b[1] for b in bulk) <= 3 * 100 * MB)

    def scaling(self):
        times = {}
        for count in (1, 2):
            workers = start_workers(self.stack, count)
            try:
                times[count] = repeat(lambda: measure(self.stack, SCALING),
                                      self.runs(3, 2), self.budget(25))
            finally:
                stop(workers)
            self.add("scaling: 8 x 1 s of CPU, %d worker(s)" % count, times[count], "s",
                     ("8 x 1 s / %d" % count, 8.0 / count))
        speedup = statistics.median(times[1]) / statistics.median(times[2])
        self.add("scaling: speed-up from 2 workers", [speedup], "x", None, ">= 1.8x",
                 speedup >= 1.8)

    def scale(self):
        workers = start_workers(self.stack, 20, processes=20)
        try:
            times = repeat(lambda: measure(self.stack, NAPS), self.runs(2, 1),
                           self.budget(30))
        finally:
            stop(workers)
        case = "scale: map(1 s sleep, 200 calls, chunksize=1), 20 worker processes"
        floor = ("200 x 1 s / 20", 10.0)  # computed, not measured: no overheads
        if self.internet:
            self.add(case, times, "s", floor)
        else:
            self.add(case, times, "s", floor, "<= 13 s", statistics.median(times) <= 13)

    def board_traffic(self):
        found = {n: board_traffic(self.stack, n, self.runs(20, 10), self.budget(8))
                 for n in (1, 2, 4)}
        same = len({round(lines) for lines, _, _ in found.values()}) == 1
        for n, (lines, size, sealed) in found.items():
            case = "board lines per small task, %d idle worker(s)" % n
            if self.internet and sealed:
                allowed = 3 + payload_lines(sealed)
                self.add(case, [lines], "lines", None,
                         "<= 3 + %d for the payloads" % (allowed - 3), lines <= allowed)
            elif self.internet:
                self.add(case, [lines], "lines", None, "(p2p._dumps failed)", False)
            else:
                self.add(case, [lines], "lines", None, "<= 4, the same for 1, 2, 4",
                         lines <= 4 and same)
            case = "board bytes per small task, %d idle worker(s)" % n
            if self.internet and sealed:
                allowed = 1.5 * sealed + 600
                self.add(case, [size], "B", None,
                         "<= 1.5 x %d B sealed + 600 B = %d B" % (sealed, allowed),
                         size <= allowed)
            else:
                self.add(case, [size], "B")

    def own_module(self):
        runs = self.runs(10, 5)
        module, sizes = own_module_payloads(self.stack, runs)
        first, later, plain = sizes[0], sizes[1:runs], sizes[runs:]
        self.add("own module (%d KB): first task's payload, with its source"
                 % (module // 1024), [first], "B", None, ">= the module", first >= module)
        extra = [size - statistics.median(plain) for size in later]
        self.add("own module: each later task's payload, beyond one of abs", extra, "B",
                 None, "<= 200 B (the module's name and version)", max(extra) <= 200)

    def idle_worker(self):
        share, rss, rss_all = idle_cost(self.stack, self.runs(20, 10))
        self.add("idle worker: share of a core (with its ssh)", [100 * share], "%", None,
                 "< 1%", share < 0.01)
        self.add("idle worker: RSS of the Python process", [rss], "MB", None, "< 40 MB",
                 rss < 40)
        self.add("idle worker: RSS with its ssh", [rss_all], "MB")

    def worker_start_up(self):
        starts = repeat(lambda: worker_start(self.stack), self.runs(5, 3),
                        self.budget(15))
        floor = ("ssh", self.floors["ssh"])
        if self.internet:
            self.add("start-up: worker until ready", starts, "s", floor)
        else:
            self.add("start-up: worker until ready", starts, "s", floor, "<= 2 s",
                     statistics.median(starts) <= 2)


CASES = [
    ProfileRun.floor_measurements,
    ProfileRun.ssh_floor,
    ProfileRun.small_task_latency,
    ProfileRun.first_result,
    ProfileRun.separate_submits,
    ProfileRun.throughput,
    ProfileRun.ten_megabytes,
    ProfileRun.ten_megabytes_over_ssh,
    ProfileRun.hanging_wormhole,
    ProfileRun.hundred_megabytes,
    ProfileRun.scaling,
    ProfileRun.scale,
    ProfileRun.board_traffic,
    ProfileRun.own_module,
    ProfileRun.idle_worker,
    ProfileRun.worker_start_up,
]


# -- main ------------------------------------------------------------------------------

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs of each case")
    parser.add_argument("--profile", choices=("loopback", "internet", "both"),
                        default="both", help="the profiles to run on (default: both)")
    parser.add_argument("--write", metavar="FILE", help="also write the tables to FILE")
    parser.add_argument("--only", metavar="CASES", help="run only these cases (comma-"
                        "separated method names, e.g. ssh_floor,ten_megabytes_over_ssh), "
                        "after the floors")
    args = parser.parse_args()
    # Scripts start as a user's second run of one does: with p2p.py's
    # bytecode cached (this machine sets PYTHONDONTWRITEBYTECODE, which
    # would add its 80 ms compile to every start-up figure).
    py_compile.compile(p2p.__file__, doraise=True)
    profiles = {"loopback": [LOOPBACK], "internet": [INTERNET],
                "both": [LOOPBACK, INTERNET]}[args.profile]
    began = time.monotonic()
    tables = []
    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as workdir:
        for profile in profiles:
            # One stack after the other: each wants the transit relay's port.
            with Stack(os.path.join(workdir, profile.name), profile=profile) as stack:
                rows = ProfileRun(stack, args.quick, args.only and args.only.split(",")).run()
            tables.append("\n".join([
                "## %s" % profile.describe().capitalize(), "",
                "| case | median | min | max | runs | floor | / floor | target | met |",
                "|---|---|---|---|---|---|---|---|---|"] + rows))
    command = "python3 -m localstack run bench/run.py" + "".join(
        [" --quick" if args.quick else "",
         " --profile " + args.profile if args.profile != "both" else ""])
    header = "%s, %d cores, Python %s, %s; %.0f s in all\n\n`%s`" % (
        time.strftime("%Y-%m-%d"), os.cpu_count(), platform.python_version(),
        platform.platform(), time.monotonic() - began, command)
    text = "\n\n".join([header] + tables)
    print(text)
    if args.write:
        with open(args.write, "w") as f:
            f.write("# Benchmark results\n\n" + text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
