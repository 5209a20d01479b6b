"""cloudpickle's own test suite, run against p2p.py's pickler.

    python3 bench/cloudpickle_suite.py [--source GIT] [--tag v3.1.2] [--show-failures]

What travels by value is specified by what cloudpickle can send, and its
tests say that best. This takes them at a tag (from GitHub by default, or
any clone: --source), and runs the applicable ones twice in a fresh virtual
environment (with what cloudpickle's CI installs for them: psutil, tornado,
numpy, scipy and its test package):

* as they are, against cloudpickle itself (from the same checkout), for the
  count to compare with;
* with cloudpickle's dumps/loads made p2p.py's, the way a task travels:
  ``pickle_depickle`` no longer loads in the same process but sends the
  object to a fresh interpreter, which loads it as a worker loads a task
  (``p2p._load(trust=True)``), pickles it back as a worker pickles its
  outcome (``p2p._dumps(home=True)``), for the test's process to load as a
  client that trusts its cluster. The tests' own helpers that ran code in a
  subprocess (``subprocess_pickle_echo``, ``subprocess_worker``) do the same.

Applicable: the 127 tests of CloudPickleTest but the three that register
modules with cloudpickle's own by-value API (p2p.py decides that by itself,
see issue 14). Not applicable: Protocol2CloudPickleTest (protocol 2; p2p.py
always uses the highest), the backward-compatibility tests (pickles made by
old cloudpickles), the file tests and the module-level tests of cloudpickle's
internals. Only these adapters change; the tests are cloudpickle's.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
P2P = os.path.join(os.path.dirname(HERE), "p2p.py")
NOT_APPLICABLE = [
    "test_pickle_constructs_from_module_registered_for_pickling_by_value",
    "test_pickle_constructs_from_installed_packages_registered_for_pickling_by_value",
    "test_pickle_various_versions_of_the_same_function_with_different_pickling_method",
]

SHIM = '''
# -- p2p.py's pickler in cloudpickle's place (bench/cloudpickle_suite.py) --
import io as _io
import p2p as _p2p


def dumps(obj, protocol=None, buffer_callback=None, home=False):
    return _p2p._dumps(obj, home=home)[0]


def dump(obj, file, protocol=None, buffer_callback=None):
    _p2p._dump(obj, file)


def loads(data, **_):
    return _p2p._load(_io.BytesIO(data), trust=True)


def load(file, **_):
    return _p2p._load(file, trust=True)
'''

# (file, what it says, what it says instead): each must be found once.
ADAPTERS = [
    ("tests/cloudpickle_test.py",
     '    return pickle.loads(cloudpickle.dumps(obj, protocol=protocol))\n',
     '    return subprocess_pickle_echo(obj, protocol=protocol)\n'),
    ("tests/testutils.py", "loads = pickle.loads\n", "from cloudpickle import loads\n"),
    # The child's reader joins 4 KiB reads one by one: quadratic, and so the
    # 60 MB of test_large_memoryview, which it never read before, took minutes.
    ("tests/testutils.py", "    input_bytes = _read_all_bytes(stream_in)\n",
     "    input_bytes = stream_in.read()\n"),
    ("tests/testutils.py", "    repickled_bytes = dumps(obj, protocol=protocol)\n",
     "    repickled_bytes = dumps(obj, protocol=protocol, home=True)\n"),
    ("tests/testutils.py", "    return dumps(result, protocol=protocol)\n",
     "    return dumps(result, protocol=protocol, home=True)\n"),
]


def run(argv, **kwargs):
    return subprocess.run(argv, check=True, **kwargs)


def checkout(source, tag, where):
    run(["git", "clone", "-q", source, where])
    run(["git", "-C", where, "checkout", "-q", tag])


def adapt(tree):
    """Make tree's cloudpickle p2p.py's pickler, as the module docstring says."""
    shutil.copy(P2P, tree)  # the children's PYTHONPATH is the checkout's
    with open(os.path.join(tree, "cloudpickle", "__init__.py"), "a") as f:
        f.write(SHIM)
    for name, old, new in ADAPTERS:
        path = os.path.join(tree, name)
        with open(path) as f:
            text = f.read()
        if text.count(old) != 1:
            sys.exit("%s does not say %r once: is this cloudpickle's suite at the tag "
                     "this adapter was written for?" % (name, old))
        with open(path, "w") as f:
            f.write(text.replace(old, new))


def suite(python, tree, report):
    """Run the applicable tests in tree; {test: (outcome, message)}."""
    argv = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", report,
            "tests/cloudpickle_test.py::CloudPickleTest"]
    for name in NOT_APPLICABLE:
        argv += ["--deselect", "tests/cloudpickle_test.py::CloudPickleTest::" + name]
    subprocess.run(argv, cwd=tree, stdout=subprocess.DEVNULL, timeout=3600)
    outcomes = {}
    for case in ET.parse(report).iter("testcase"):
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "failed"}.get(child.tag, child.tag)
                message = child.get("message") or ""
        outcomes[case.get("name")] = outcome, message
    return outcomes


def reason(message):
    """The first line of a failure that says what went wrong."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^(E\s+)?\w+(\.\w+)*(Error|Exception|Warning):", line):
            return line[:160]
    return (lines[0] if lines else "?")[:160]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="https://github.com/cloudpipe/cloudpickle")
    parser.add_argument("--tag", default="v3.1.2")
    parser.add_argument("--show-failures", action="store_true",
                        help="each failure of p2p.py's run with its reason")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cloudpickle-suite-") as work:
        env = os.path.join(work, "env")
        run([sys.executable, "-m", "venv", "--system-site-packages", env])
        python = os.path.join(env, "bin", "python")
        counts = {}
        for who in ("cloudpickle", "p2p"):
            tree = os.path.join(work, who)
            checkout(args.source, args.tag, tree)
            if who == "cloudpickle":  # what cloudpickle's CI installs for them
                run([python, "-m", "pip", "install", "-q", "psutil", "pytest", "tornado",
                     "numpy", "scipy", os.path.join(tree, "tests", "cloudpickle_testpkg")],
                    stdout=subprocess.DEVNULL)
            if who == "p2p":
                adapt(tree)
            counts[who] = suite(python, tree, os.path.join(work, who + ".xml"))
    print("cloudpickle's suite at %s, CloudPickleTest, %d applicable tests (Python %s)"
          % (args.tag, len(counts["p2p"]), sys.version.split()[0]))
    print("| pickler | passed | failed | skipped |\n|---|---|---|---|")
    for who, outcomes in counts.items():
        tally = [sum(1 for o, _ in outcomes.values() if o == kind)
                 for kind in ("passed", "failed", "skipped")]
        print("| %s | %d | %d | %d |" % ((who,) + tuple(tally)))
    failed = {name: reason(message) for name, (outcome, message) in counts["p2p"].items()
              if outcome == "failed"}
    if args.show_failures:
        print("\nWhat p2p.py fails, and why:")
        for name, why in sorted(failed.items()):
            also = "" if counts["cloudpickle"].get(name, ("",))[0] == "passed" else \
                " (cloudpickle fails it too)"
            print("- %s: %s%s" % (name, why, also))


if __name__ == "__main__":
    main()
