"""Benchmark p2p.py on the local stack, against the floor of raw wormhole transfers.

    python3 -m localstack run bench/run.py [--quick] [--write bench/RESULTS.md]

Each case runs several times; the table gives median, min and max, and
each time as a ratio to the floor measured in the same run: raw
wormhole-william transfers of the same size on the same servers (both
CLIs started, as p2p.py starts them). Absolute times on a shared machine
drift; the ratios less so.
"""

import argparse
import json
import os
import platform
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import p2p
from localstack import Stack, children_of

USER = "bob"  # everything runs on bob's personal cluster: no host needed
MB = 1 << 20


# -- running things on the stack -----------------------------------------------

def start_workers(stack, count, processes=1):
    """count worker slots in `processes` worker processes, once ready."""
    workers = []
    for _ in range(processes):
        worker = stack.process(USER, [sys.executable, "-m", "p2p", "worker",
                                      "--workers", str(count // processes)])
        worker.expect("worker %s@" % USER, stream="stderr", timeout=60)
        workers.append(worker)
    return workers


def stop(sessions):
    for session in sessions:
        session.process.terminate()
    for session in sessions:
        session.wait(30)


def measure(stack, source, timeout=600):
    """Run a client script as the user; the JSON it prints last."""
    answer = stack.run(USER, [sys.executable, "-c", textwrap.dedent(source)],
                       timeout=timeout)
    if answer.returncode != 0:
        raise RuntimeError("a benchmark script failed:\n%s" % answer.stderr[-3000:])
    return json.loads(answer.stdout.strip().splitlines()[-1])


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


# -- the cases -----------------------------------------------------------------

def floor(stack, size, runs):
    with tempfile.TemporaryDirectory() as folder:
        return [raw_transfer(stack, size, folder) for _ in range(runs)]


LATENCY = """
    import json, time, p2p

    def noop():
        return None

    with p2p.Executor() as ex:
        ex.submit(noop).result(60)  # joined, warm
        times = []
        for _ in range(%d):
            started = time.monotonic()
            ex.submit(noop).result(60)
            times.append(time.monotonic() - started)
    print(json.dumps(times))
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

    payload = os.urandom(%d)  # real pages, not untouched zeros
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

FIRST_RESULT = """
    import json, time
    started = time.monotonic()
    import p2p
    p2p.submit(abs, -1).result(60)
    print(json.dumps(time.monotonic() - started))
"""


def board_lines_per_task(stack, idle_workers, tasks=20):
    """Lines on the board per task, over `tasks` tasks, with idle_workers connected."""
    workers = start_workers(stack, idle_workers, processes=idle_workers)
    listener = stack.session(USER, "pipe", "%s/personal/board" % USER)
    try:
        measure(stack, LATENCY % tasks)
        kinds = [message.kind for message in map(p2p._decode, listener.output.split(b"\n"))
                 if message]
        # From the first assign to the last result: what the tasks cost, not the joining.
        first = kinds.index("assign")
        last = len(kinds) - 1 - kinds[::-1].index("result")
        return (last - first + 1) / (tasks + 1), kinds[first:last + 1]
    finally:
        listener.close()
        stop(workers)


def idle_cost(stack, seconds):
    """(share of a core, RSS in MB) of an idle worker process and its ssh, over seconds."""
    worker, = start_workers(stack, 1)
    pids = [worker.process.pid] + children_of(worker.process.pid)
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


# -- the table -----------------------------------------------------------------

def row(case, values, unit, floor_value=None, target="", met=None):
    values = list(values)
    cells = [case, "%.3g %s" % (statistics.median(values), unit),
             "%.3g" % min(values), "%.3g" % max(values), str(len(values))]
    cells.append("%.2fx" % (statistics.median(values) / floor_value) if floor_value else "")
    cells += [target, "" if met is None else ("yes" if met else "**no**")]
    return "| " + " | ".join(cells) + " |"


def run(stack, quick):
    runs = 3 if quick else 5
    rows = []
    print("floor: raw transfers", flush=True)
    tiny = floor(stack, 100, 10 if quick else 20)
    big = floor(stack, 100 * MB, 2 if quick else 3)
    two_tiny, two_big = 2 * statistics.median(tiny), 2 * statistics.median(big)
    rows.append(row("floor: one raw 100 B transfer", tiny, "s"))
    rows.append(row("floor: one raw 100 MB transfer", big, "s"))

    print("latency, throughput, bulk (1-2 workers)", flush=True)
    workers = start_workers(stack, 1)
    latency = measure(stack, LATENCY % (10 if quick else 30))
    rows.append(row("latency: submit(noop).result(), 1 worker", latency, "s", two_tiny,
                    "<= 2x two tiny raw transfers",
                    statistics.median(latency) <= 2 * two_tiny))
    bulk = [measure(stack, BULK % (100 * MB)) for _ in range(2 if quick else 3)]
    rows.append(row("bulk: 100 MB bytes there and back, 1 worker", [b[0] for b in bulk], "s",
                    two_big, "<= 3x two raw 100 MB transfers",
                    statistics.median(b[0] for b in bulk) <= 3 * two_big))
    rows.append(row("bulk: peak client memory / payload", [b[1] / (100 * MB) for b in bulk],
                    "x", None, "<= 3x", max(b[1] for b in bulk) <= 3 * 100 * MB))
    stop(workers)

    workers = start_workers(stack, 2)
    throughput = [measure(stack, THROUGHPUT) for _ in range(runs)]
    rows.append(row("throughput: map(square, range(1000)), 2 workers", throughput, "s",
                    None, "<= 5 s", statistics.median(throughput) <= 5.0))
    stop(workers)

    print("scaling", flush=True)
    times = {}
    for count in (1, 2):
        workers = start_workers(stack, count)
        times[count] = [measure(stack, SCALING) for _ in range(2 if quick else 3)]
        stop(workers)
        rows.append(row("scaling: 8 x 1 s of CPU, %d worker(s)" % count, times[count], "s"))
    speedup = statistics.median(times[1]) / statistics.median(times[2])
    rows.append(row("scaling: speed-up from 2 workers", [speedup], "x", None, ">= 1.8x",
                    speedup >= 1.8))

    print("board traffic", flush=True)
    per_task = {n: board_lines_per_task(stack, n) for n in (1, 2, 4)}
    for n, (lines, _) in per_task.items():
        rows.append(row("board lines per task, %d idle worker(s)" % n, [lines], "lines",
                        None, "<= 4, the same for 1, 2, 4",
                        lines <= 4 and len({round(v) for v, _ in per_task.values()}) == 1))

    print("idle cost and start-up", flush=True)
    share, rss, rss_all = idle_cost(stack, 20 if quick else 60)
    rows.append(row("idle worker: share of a core (with its ssh)", [100 * share], "%", None,
                    "< 1%", share < 0.01))
    rows.append(row("idle worker: RSS of the Python process", [rss], "MB", None, "< 40 MB",
                    rss < 40))
    rows.append(row("idle worker: RSS with its ssh", [rss_all], "MB"))
    starts = [worker_start(stack) for _ in range(runs)]
    rows.append(row("start-up: worker until ready", starts, "s", None, "<= 2 s",
                    statistics.median(starts) <= 2))
    workers = start_workers(stack, 1)
    firsts = [measure(stack, FIRST_RESULT) for _ in range(runs)]
    stop(workers)
    rows.append(row("start-up: import p2p, first submit until its result", firsts, "s", None,
                    "<= 2 s", statistics.median(firsts) <= 2))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs of each case")
    parser.add_argument("--write", metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2p-bench-") as workdir:
        with Stack(os.path.join(workdir, "stack")) as stack:
            rows = run(stack, args.quick)
    header = [
        "%s, %d cores, Python %s, %s" % (time.strftime("%Y-%m-%d"), os.cpu_count(),
                                          platform.python_version(), platform.platform()),
        "", "`python3 -m localstack run bench/run.py%s`" % (" --quick" if args.quick else ""),
        "", "| case | median | min | max | runs | / floor | target | met |",
        "|---|---|---|---|---|---|---|---|"]
    table = "\n".join(header + rows)
    print(table)
    if args.write:
        with open(args.write, "w") as f:
            f.write("# Benchmark results\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
