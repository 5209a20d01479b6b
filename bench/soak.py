"""Soak: tasks from 2 clients on 3 workers while a worker dies every 20 s.

    python3 -m localstack run bench/soak.py [--tasks 150] [--kill-every 20]

On a local stack, alice hosts alice/soak; carol, diana and alice each run
a worker; bob and diana each submit TASKS tasks (0.2-1.5 s of work each,
defined in their script's __main__, so sent by value). Every KILL_EVERY
seconds carol's worker is killed with SIGKILL (its task runner too) and
started again; once, 30 s in, the ssh link to the board of diana's worker
is cut. Every task writes a line when it starts and when it ends, naming
its worker's pid.

It prints: tasks that finished with the right result, tasks that ran to
the end twice, tasks that were running on a killed worker, and the
longest time such a task waited from the kill to its result.
"""

import argparse
import collections
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import threading
import time

from localstack import Stack, children_of, invite

CLUSTER = "alice/soak"

CLIENT = """
import concurrent.futures, json, os, random, sys, time
import p2p

def task(i, who, log):
    with open(log, "a") as f:
        f.write("start %s %d %d %.3f\\n" % (who, i, os.getppid(), time.time()))
    time.sleep(random.uniform(0.2, 1.5))  # the task's work
    with open(log, "a") as f:
        f.write("end %s %d %d %.3f\\n" % (who, i, os.getppid(), time.time()))
    return i, i * i

who, count, log, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
results = {}
with p2p.Executor() as ex:
    futures = {ex.submit(task, i, who, log): i for i in range(count)}
    for future in concurrent.futures.as_completed(futures, timeout=3600):
        try:
            value = list(future.result())
        except Exception as exc:
            value = "%s: %s" % (type(exc).__name__, exc)
        results[futures[future]] = [value, time.time()]
with open(out, "w") as f:
    json.dump(results, f)
"""


def start_worker(stack, user):
    worker = stack.process(user, [sys.executable, "-m", "p2p", "worker", CLUSTER])
    worker.expect("worker %s@" % user, stream="stderr", timeout=60)
    return worker


def soak(stack, workdir, tasks, kill_every):
    log = os.path.join(workdir, "tasks.log")
    host = stack.process("alice", [sys.executable, "-m", "p2p", "host", CLUSTER,
                                   "--users", "bob,carol,diana"])
    host.expect("hosting", stream="stderr", timeout=60)
    invite(stack, CLUSTER, "bob", "carol", "diana")
    doomed, cut, steady = (start_worker(stack, u) for u in ("carol", "diana", "alice"))
    started = time.time()
    outputs = [os.path.join(workdir, who + ".json") for who in ("bob", "diana")]
    clients = [stack.process(who, [sys.executable, "-c", CLIENT, who, str(tasks), log, out],
                             env={"P2P_CLUSTER": CLUSTER})
               for who, out in zip(("bob", "diana"), outputs)]
    finished = threading.Event()
    left = [len(clients)]

    def watch(client):
        client.process.wait()
        left[0] -= 1
        if not left[0]:
            finished.set()

    for client in clients:
        threading.Thread(target=watch, args=(client,), daemon=True).start()
    kills, next_kill, cut_at = [], started + kill_every, started + 30
    while not finished.wait(max(0.0, min(next_kill, cut_at) - time.time())):
        now = time.time()
        if now >= cut_at:
            link, = children_of(cut.process.pid, CLUSTER + "/board")  # its ssh
            os.kill(link, signal.SIGKILL)
            print("%5.1fs  cut the board link of diana's worker" % (now - started), flush=True)
            cut_at = float("inf")
        if now >= next_kill:
            kills.append((now, doomed.process.pid))
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait()
            doomed = start_worker(stack, "carol")
            print("%5.1fs  killed carol's worker (pid %d), started pid %d"
                  % (now - started, kills[-1][1], doomed.process.pid), flush=True)
            next_kill = now + kill_every
    elapsed = time.time() - started
    for client in clients:
        if client.process.returncode != 0:
            raise RuntimeError("a client failed: %s" % client.errors.decode()[-2000:])
    retries = collections.Counter(
        found.group(1)
        for client in clients for line in client.errors.decode().splitlines()
        for found in [re.search(r"on worker \S+: (.*); trying again$", line)] if found)
    return [json.load(open(out)) for out in outputs], log, kills, started, elapsed, retries


def report(results, log, kills, started, elapsed, retries, tasks):
    finished_at, right, wrong = {}, 0, []
    for who, answers in zip(("bob", "diana"), results):
        for i, (value, when) in answers.items():
            finished_at[who, int(i)] = when
            if value == [int(i), int(i) ** 2]:
                right += 1
            else:
                wrong.append("%s task %s: %s" % (who, i, value))
    starts = collections.defaultdict(list)  # task -> [(pid, time)] of its starts
    ran = collections.defaultdict(list)  # task -> the pids it ran to the end on, in order
    with open(log) as f:
        for line in f:
            what, who, i, pid, when = line.split()
            if what == "start":
                starts[who, int(i)].append((int(pid), float(when)))
            else:
                ran[who, int(i)].append(int(pid))
    twice = {task: pids for task, pids in ran.items() if len(pids) > 1}
    waits = []  # (wait, task, kill time)
    for killed_at, pid in kills:
        for task, runs in starts.items():
            if any(p == pid and t < killed_at for p, t in runs) and pid not in ran[task]:
                waits.append((finished_at.get(task, float("nan")) - killed_at, task, killed_at))
    total = 2 * tasks
    print()
    print("tasks submitted                      %d (2 clients x %d)" % (total, tasks))
    print("finished with the right result       %d" % right)
    print("failed or wrong                      %d%s" % (len(wrong), "".join(
        "\n    " + w for w in wrong[:10])))
    killed = {pid for _, pid in kills}
    # A worker killed after the task's end but before its result got out.
    lost = [task for task, pids in twice.items() if set(pids[:-1]) <= killed]
    print("ran to the end twice                 %d (%d: its result died with its worker)%s"
          % (len(twice), len(lost), "".join("\n    %s task %d on pids %s" % (task + (pids,))
                                             for task, pids in twice.items())))
    per_pid = collections.Counter(pid for pids in ran.values() for pid in pids)
    print("tasks run per worker pid             %s" % ", ".join(
        "%d: %d" % item for item in sorted(per_pid.items())))
    print("workers killed                       %d (one every %gs)" % (len(kills),
                                                                  elapsed / max(len(kills), 1)))
    print("tasks running on a killed worker     %d" % len(waits))
    if waits:
        longest, task, killed_at = max(waits)
        print("their wait, kill to result           median %.1fs, longest %.1fs"
              % (statistics.median(w for w, _, _ in waits), longest))
        print("    the longest: %s task %d, killed at %.1fs; its starts: %s" % (
            task + (killed_at - started, ", ".join(
                "pid %d at %+.1fs" % (pid, when - killed_at) for pid, when in starts[task]))))
    print("tasks tried again, and why           %d%s" % (sum(retries.values()), "".join(
        "\n    %d x %s" % (n, why) for why, n in retries.most_common())))
    print("wall time                            %.0fs (%.2f tasks/s)" % (elapsed,
                                                                      total / elapsed))
    return right == total


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=150, help="tasks per client")
    parser.add_argument("--kill-every", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p2p-soak-") as workdir:
        with Stack(os.path.join(workdir, "stack")) as stack:
            outcome = soak(stack, workdir, args.tasks, args.kill_every)
        return 0 if report(*outcome, args.tasks) else 1


if __name__ == "__main__":
    sys.exit(main())
