"""CPython's own tests of concurrent.futures executors, run against p2p.Executor.

    python3 -m localstack run bench/cpython_executor_suite.py [--source DIR]
                                    [--budget SECONDS] [--test-timeout SECONDS]

p2p.Executor is a concurrent.futures.Executor, and what that promises is
specified best by CPython's test suite. This runs its executor mixins
(ExecutorTest, WaitTests, AsCompletedTests, ExecutorShutdownTest) and the
executor-generic tests of its pool classes against p2p.Executor, on bob's
personal cluster of a local Stack with one worker process of two slots.

Where the tests come from (nothing of CPython's is kept in this repository):

* ``--source DIR``: a folder holding CPython's test package
  ``test_concurrent_futures/`` (3.12 and later: __init__.py, executor.py,
  util.py, test_wait.py, test_as_completed.py, test_shutdown.py,
  test_thread_pool.py, test_process_pool.py), or the single module
  ``test_concurrent_futures.py`` of 3.11 and before;
* by default, the running Python's own installed tests: on Debian the apt
  package libpython3.X-testsuite, installed here when missing.

Only the executor factory and the harness change; the tests are CPython's:

* a mixin, a subclass of the suite's own ExecutorMixin, makes ``executor_type``
  P2PExecutor: p2p.Executor on the default (personal) cluster, with the
  pool's max_workers (mp_context is ignored), and
  ``worker_count = 2``. It is also ``concurrent.futures.P2PExecutor`` in
  every Python of the run's virtual environment, for the tests that start
  one (``from concurrent.futures import {executor_type}``, in isolated mode);
* names a newer test file imports from test.support and the running one
  lacks (Py_GIL_DISABLED, force_not_colorized, requires_gil_enabled) are
  provided in that environment's every Python, the workers' too (they
  import the suite's modules for the functions a task names), and the
  resources the tests ask for (walltime, cpu) are enabled;
* each test has a time limit (--test-timeout): past it, the test is
  interrupted with TestTimedOut; the whole run has one too (--budget).

Not applicable, so not counted: the tests of a pool's own internals or of
what only shared memory or a worker's stdout being the caller's can give
(NOT_APPLICABLE, POOL_TESTS). The tests run with pytest, as bob, in a
process of their own; what each did is written as it ends, so a run cut
short by its budget still reports what ran.
"""

import argparse
import ast
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from localstack import Stack

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
USER = "bob"  # his personal cluster: no host, no invitation
SLOTS = 2
PACKAGE = "test_concurrent_futures"

MIXINS = ("ExecutorTest", "WaitTests", "AsCompletedTests", "ExecutorShutdownTest")
# Tests of the mixins that do not apply to a p2p executor, and why.
NOT_APPLICABLE = {
    "ExecutorShutdownTest": {
        "test_interpreter_shutdown": "a worker's print on the caller's stdout",
        "test_hang_gh83386": "a worker's print on the caller's stdout",
    },
}
# The pool classes' own tests: which are executor-generic (None), and why
# the others do not apply.
INTERNALS = "a pool's internals (%s)"
SHARED = "the task shares the caller's memory (threads only)"
POOL_TESTS = {
    "ProcessPoolExecutorTest": {
        "test_map_chunksize": None,
        "test_max_workers_too_large": "Windows' process limit of a pool",
        "test_killed_child": INTERNALS % "_processes",
        "test_traceback": INTERNALS % "futures.process._RemoteTraceback",
        "test_ressources_gced_in_workers": INTERNALS % "mp_context's Manager",
        "test_saturation": INTERNALS % "_processes, _max_workers",
        "test_idle_process_reuse_one": INTERNALS % "_processes, _max_workers",
        "test_idle_process_reuse_multiple": INTERNALS % "_processes, _max_workers",
        "test_max_tasks_per_child": INTERNALS % "max_tasks_per_child, _processes",
        "test_max_tasks_per_child_defaults_to_spawn_context":
            INTERNALS % "max_tasks_per_child, _mp_context",
        "test_max_tasks_early_shutdown": INTERNALS % "max_tasks_per_child",
    },
    "ThreadPoolExecutorTest": {
        "test_map_submits_without_iteration": SHARED,
        "test_default_workers": INTERNALS % "_max_workers",
        "test_saturation": INTERNALS % "_threads, _max_workers",
        "test_idle_thread_reuse": INTERNALS % "_threads",
        "test_hang_global_shutdown_lock": INTERNALS % "a thread pool forking a process pool",
        "test_process_fork_from_a_threadpool": INTERNALS % "fork from a pool's thread",
        "test_executor_map_current_future_cancel": SHARED,
    },
    "ThreadPoolShutdownTest": {
        "test_threads_terminate": INTERNALS % "_threads",
        "test_context_manager_shutdown": INTERNALS % "_threads",
        "test_del_shutdown": INTERNALS % "_threads",
        "test_shutdown_no_wait": INTERNALS % "_threads",
        "test_thread_names_assigned": INTERNALS % "thread names",
        "test_thread_names_default": INTERNALS % "thread names",
        "test_cancel_futures_wait_false": "a worker's print on the caller's stdout",
    },
    "ProcessPoolShutdownTest": {
        "test_processes_terminate": INTERNALS % "_processes, mp_context",
        "test_context_manager_shutdown": INTERNALS % "_processes",
        "test_del_shutdown": INTERNALS % "_processes, _call_queue",
        "test_shutdown_no_wait": INTERNALS % "_processes, _call_queue",
        "test_shutdown_gh_132969_case_1": INTERNALS % "max_tasks_per_child",
        "test_shutdown_gh_132969_case_2": INTERNALS % "max_tasks_per_child",
    },
    "ThreadPoolWaitTests": {
        "test_pending_calls_race": SHARED,
    },
}
UNCLASSIFIED = "a pool class's own test (not classified by this bench)"


# -- the harness: files written next to the tests --------------------------------

# In the virtual environment's site-packages, imported by every Python of the
# run: the tests' process, the children it starts, and the workers (which
# import the suite's modules when a task names their functions).
GLUE = '''
"""p2p.Executor as CPython's tests build executors (bench/cpython_executor_suite.py)."""
import concurrent.futures

from test import support

# What a newer test file imports from test.support, when this one lacks it.
support.__dict__.setdefault("Py_GIL_DISABLED", False)
support.__dict__.setdefault("force_not_colorized", lambda test: test)
support.__dict__.setdefault("requires_gil_enabled", lambda reason="": lambda test: test)


def P2PExecutor(max_workers=None, mp_context=None):
    """p2p.Executor on the default cluster, at most max_workers tasks at once;
    a process pool's mp_context is ignored."""
    import p2p  # not at start-up: a worker runs p2p as __main__

    return p2p.Executor(max_workers=max_workers)


concurrent.futures.P2PExecutor = P2PExecutor
'''

# Per-test time limit, and each test's reports as one JSON line when it ends.
CONFTEST = '''
import json
import os
import signal
import threading

import pytest

LIMIT = float(os.environ["SUITE_TEST_TIMEOUT"])
RESULTS = os.environ["SUITE_RESULTS"]


class TestTimedOut(Exception):
    pass


def _interrupt(signum, frame):
    raise TestTimedOut("the test ran over its %g s" % LIMIT)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    # SIGUSR1, not SIGALRM: test_hang_gh94440 sets alarms of its own.
    signal.signal(signal.SIGUSR1, _interrupt)
    timer = threading.Timer(LIMIT, signal.pthread_kill,
                            (threading.main_thread().ident, signal.SIGUSR1))
    timer.daemon = True
    timer.start()
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"id": item.nodeid, "when": "start"}) + "\\n")
    try:
        yield
    finally:
        timer.cancel()


def pytest_runtest_logreport(report):
    with open(RESULTS, "a") as f:
        f.write(json.dumps({"id": report.nodeid, "when": report.when,
                            "outcome": report.outcome,
                            "text": report.longreprtext}) + "\\n")
'''

# The test module pytest runs: the suite's mixins with P2PMixin.
TESTS = '''
import importlib

from test import support

from cpython_suite_glue import P2PExecutor

support.use_resources = ["walltime", "cpu"]  # as regrtest -u walltime,cpu

MIXINS = %(mixins)r
POOL_TESTS = %(pool_tests)r
MODULES = []
for name in ("", ".util", ".executor", ".test_wait", ".test_as_completed",
             ".test_shutdown", ".test_thread_pool", ".test_process_pool"):
    try:
        MODULES.append(importlib.import_module(name, "%(package)s") if name
                       else importlib.import_module("%(package)s"))
    except ImportError as error:  # a single module (3.11), or a file it lacks
        if error.name is None or "%(package)s" not in error.name:
            raise


def find(*names):
    """The first of names some module of the suite defines."""
    for name in names:
        for module in MODULES:
            if hasattr(module, name):
                return getattr(module, name)
    raise LookupError("the suite defines none of %%s" %% ", ".join(names))


class P2PMixin(find("ExecutorMixin")):
    executor_type = staticmethod(P2PExecutor)  # a function, not a method
    worker_count = %(slots)d


Base = find("BaseTestCase")
for mixin in MIXINS:
    globals()["P2P" + mixin] = type("P2P" + mixin, (P2PMixin, find(mixin), Base), {})


class P2PPoolTests(P2PMixin, Base):
    """The executor-generic tests of the pool classes."""


for pool, tests in POOL_TESTS.items():
    for test in tests:
        setattr(P2PPoolTests, test, vars(find(pool))[test])

setUpModule = find("setup_module", "setUpModule")
tearDownModule = getattr(MODULES[0], "tearDownModule", None)
'''


# -- the tests: where they come from, which apply ---------------------------------

def installed_tests():
    """The running Python's own test_concurrent_futures, installed if missing."""
    version = "%d.%d" % sys.version_info[:2]
    found = glob.glob("/usr/lib/python%s/test/%s*" % (version, PACKAGE))
    if not found:
        print("installing libpython%s-testsuite" % version, flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "libpython%s-testsuite" % version],
                       check=True, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        found = glob.glob("/usr/lib/python%s/test/%s*" % (version, PACKAGE))
    return os.path.dirname(found[0])


def copy_tests(source, where):
    """Copy source's test_concurrent_futures (package or module) into where."""
    package = os.path.join(source, PACKAGE)
    if os.path.isdir(package):
        shutil.copytree(package, os.path.join(where, PACKAGE),
                        ignore=shutil.ignore_patterns("__pycache__"))
    elif os.path.exists(package + ".py"):
        shutil.copy(package + ".py", where)
    else:
        sys.exit("%s holds no %s package or module" % (source, PACKAGE))


def inventory(where):
    """{class: [its test methods]} of the suite's files, read, not imported."""
    classes = {}
    for path in glob.glob(os.path.join(where, PACKAGE + "*")) + glob.glob(
            os.path.join(where, PACKAGE, "*.py")):
        if not path.endswith(".py"):
            continue
        with open(path) as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                classes[node.name] = [item.name for item in node.body
                                      if isinstance(item, ast.FunctionDef)
                                      and item.name.startswith("test")]
    return classes


def classify(classes):
    """(applicable pool tests {class: [test]}, not applicable [(id, why)],
    deselected node ids), for the suite's classes."""
    missing = [mixin for mixin in MIXINS if mixin not in classes]
    if missing:
        sys.exit("the suite defines no %s" % ", ".join(missing))
    pool_tests, skipped, deselect = {}, [], []
    for mixin in MIXINS:
        for test in classes[mixin]:
            why = NOT_APPLICABLE.get(mixin, {}).get(test)
            if why:
                skipped.append(("%s.%s" % (mixin, test), why))
                deselect.append("test_p2p_executor.py::P2P%s::%s" % (mixin, test))
    for pool in POOL_TESTS:
        for test in classes.get(pool, ()):
            why = POOL_TESTS[pool].get(test, UNCLASSIFIED)
            if why is None:
                pool_tests.setdefault(pool, []).append(test)
            else:
                skipped.append(("%s.%s" % (pool, test), why))
    return pool_tests, skipped, deselect


# -- running them -------------------------------------------------------------------

def environment(work, tests):
    """A virtual environment whose every Python has p2p and P2PExecutor."""
    env = os.path.join(work, "env")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", env], check=True)
    python = os.path.join(env, "bin", "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(site, "cpython_suite_glue.py"), "w") as f:
        f.write(GLUE)
    # Isolated children (assert_python_ok) ignore PYTHONPATH: this path they keep.
    with open(os.path.join(site, "cpython_suite.pth"), "w") as f:
        f.write("%s\n%s\nimport cpython_suite_glue\n" % (REPO, tests))
    return python


def run_suite(stack, python, tests, deselect, budget, limit):
    """Run the tests as USER; [(test id, outcome, reason)] and whether all ran."""
    results = os.path.join(tests, "results.jsonl")
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "--rootdir", tests, os.path.join(tests, "test_p2p_executor.py")]
    for node in deselect:
        argv += ["--deselect", node]
    workers = stack.process(USER, [python, "-m", "p2p", "worker",
                                   "--workers", str(SLOTS)])
    try:
        workers.expect("worker %s@" % USER, stream="stderr", timeout=120)
        env = {"SUITE_TEST_TIMEOUT": str(limit), "SUITE_RESULTS": results}
        try:
            answer = stack.run(USER, argv, timeout=budget, env=env, cwd=tests)
            whole = answer.returncode in (0, 1)  # 1: some failed
            if not whole:
                print(answer.stdout[-3000:], answer.stderr[-3000:], sep="\n")
        except AssertionError as error:  # over budget: killed
            print(str(error)[:300] + "...")
            whole = False
    finally:
        workers.process.terminate()
        workers.wait(30)
    return outcomes(results), whole


def outcomes(path):
    """[(test id, outcome, reason)] from the conftest's lines; a test that
    started and never ended was cut short."""
    tests = {}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            test = entry["id"].split("::", 1)[1].replace("::", ".")
            if entry["when"] == "start":
                tests[test] = ("cut short", "the run's budget ended during it")
            elif entry["outcome"] == "failed":
                kind = "failed" if entry["when"] == "call" else "error"
                if tests.get(test, ("",))[0] not in ("failed", "error"):
                    tests[test] = (kind, reason(entry["text"]))
            elif entry["outcome"] == "skipped":
                tests[test] = ("skipped", reason(entry["text"]))
            elif entry["when"] == "call":
                tests[test] = ("passed", "")
    return [(test,) + tests[test] for test in tests]


def reason(text):
    """The line of a pytest report that says what went wrong."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^(E\s+)?\w+(\.\w+)*(Error|Exception|Warning|TimedOut):", line):
            return re.sub(r"^E\s+", "", line)[:160]
    skip = re.search(r"Skipped: (.*?)'?\)?$", text.strip())
    return (skip.group(1) if skip else lines[-1] if lines else "?")[:160]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", help="a folder holding CPython's %s" % PACKAGE)
    parser.add_argument("--budget", type=float, default=1200,
                        help="seconds for the whole run of the tests (default 1200)")
    parser.add_argument("--test-timeout", type=float, default=120,
                        help="seconds one test may take (default 120)")
    args = parser.parse_args()
    began = time.monotonic()
    source = os.path.abspath(args.source) if args.source else installed_tests()
    with tempfile.TemporaryDirectory(prefix="cpython-executor-suite-") as work:
        tests = os.path.join(work, "tests")
        os.makedirs(tests)
        copy_tests(source, tests)
        pool_tests, skipped, deselect = classify(inventory(tests))
        with open(os.path.join(tests, "conftest.py"), "w") as f:
            f.write(CONFTEST)
        with open(os.path.join(tests, "test_p2p_executor.py"), "w") as f:
            f.write(TESTS % {"mixins": MIXINS, "pool_tests": pool_tests,
                                              "package": PACKAGE, "slots": SLOTS})
        python = environment(work, tests)
        with Stack(os.path.join(work, "stack")) as stack:
            results, whole = run_suite(stack, python, tests, deselect, args.budget,
                                       args.test_timeout)
    report(source, results, whole, skipped, time.monotonic() - began)


def report(source, results, whole, skipped, seconds):
    tally = {kind: sum(1 for _, outcome, _ in results if outcome == kind)
             for kind in ("passed", "failed", "error", "skipped", "cut short")}
    print("\nCPython's concurrent.futures executor tests from %s, against p2p.Executor "
          "(%d worker slots), Python %s; %.0f s in all%s"
          % (source, SLOTS, sys.version.split()[0], seconds,
             "" if whole else " (the run did not finish)"))
    print("| applicable | passed | failed | errors | skipped by the tests | cut short "
          "| not applicable |\n|---|---|---|---|---|---|---|")
    print("| %d | %d | %d | %d | %d | %d | %d |" % (
        len(results), tally["passed"], tally["failed"], tally["error"], tally["skipped"],
        tally["cut short"], len(skipped)))
    print("\nPassed: " + ", ".join(sorted(test for test, outcome, _ in results
                                          if outcome == "passed")))
    for title, kinds in (("Failed", ("failed", "error", "cut short")),
                         ("Skipped by the tests themselves", ("skipped",))):
        listed = sorted((test, outcome, why) for test, outcome, why in results
                        if outcome in kinds)
        if listed:
            print("\n%s:" % title)
            for test, outcome, why in listed:
                print("- %s (%s): %s" % (test, outcome, why))
    print("\nNot applicable (not counted):")
    for test, why in sorted(skipped):
        print("- %s: %s" % (test, why))


if __name__ == "__main__":
    main()
