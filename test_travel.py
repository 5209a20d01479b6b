"""What travels with a task: diana's own code, her own modules, and what a worker lacks.

diana's script lives in its own folder, beside her helpers.py and her
package mypkg/, which carol's worker has never seen; some of her tasks need
a package that only bob's worker has installed, or one that no worker has;
carol's other worker runs a Python the tasks' code was not written for.
Each is a real process as its pico user on the local stack.
"""

import importlib
import io
import os
import pickle
import re
import sys
import textwrap
import threading

import pytest

import p2p
from test_p2p import host, p2p_command, worker
from test_protocol import RawPeer, WAYS


def project(stack, user, files):
    """A folder of user's files ({relative path: source}); its path."""
    folder = os.path.join(stack.user_dir(user), "home", "project")
    for relative, source in files.items():
        path = os.path.join(folder, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(textwrap.dedent(source))
    return folder


def run_script(stack, user, folder, source, cluster, timeout=120, env=None):
    """user runs ``python main.py`` in folder, its source given; its CompletedProcess."""
    path = os.path.join(folder, "main.py")
    with open(path, "w") as f:
        f.write(textwrap.dedent(source))
    return stack.run(user, [sys.executable, path], timeout=timeout, cwd=folder,
                     env=dict(env or {}, P2P_CLUSTER=cluster))


def installed(stack, user, name, source):
    """A package installed for user only (in a site-packages folder of theirs):
    the environment that puts it on their path."""
    folder = os.path.join(stack.user_dir(user), "home", "lib", "site-packages")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name + ".py"), "w") as f:
        f.write(textwrap.dedent(source))
    path = [folder] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join(path)}


# -- units ------------------------------------------------------------------------------

@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """A module of the user's own (a file beside their script), imported."""
    (tmp_path / "ownhelpers.py").write_text("def double(x):\n    return 2 * x\n")
    site = tmp_path / "lib" / "site-packages"
    site.mkdir(parents=True)
    (site / "theirpkg.py").write_text("def triple(x):\n    return 3 * x\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module("ownhelpers"), importlib.import_module("theirpkg")
    for name in ("ownhelpers", "theirpkg"):
        sys.modules.pop(name, None)


def sent(obj, modules):
    """The names of the modules whose source goes with obj, pickled with modules."""
    pickler = p2p._dump(obj, io.BytesIO(), modules=modules)
    return sorted(source.name for source in pickler.sources.values())


def test_own_modules_go_as_source_installed_ones_by_name_unless_named(own_module):
    mine, installed = own_module
    assert sent((mine.double, installed.triple), True) == ["ownhelpers"]
    assert sent((mine.double, installed.triple), False) == []
    assert sent((mine.double, installed.triple), ("theirpkg",)) == ["ownhelpers", "theirpkg"]
    assert sent((pickle.dumps, os.path.join), True) == []  # the standard library's
    assert sent(p2p._call_chunk, ("p2p",)) == []  # and p2p.py, always its own


def test_send_modules_comes_from_the_environment_or_the_argument(monkeypatch):
    monkeypatch.setenv("P2P_SEND_MODULES", "0")
    assert p2p.Config().send_modules is False
    monkeypatch.setenv("P2P_SEND_MODULES", "mylib, other.sub")
    assert p2p.Config().send_modules == ("mylib", "other.sub")
    monkeypatch.delenv("P2P_SEND_MODULES")
    assert p2p.Config().send_modules is True
    assert p2p.Config(send_modules=["x"]).send_modules == ("x",)


def test_a_module_whose_file_is_gone_fails_at_submit_and_says_what_to_do(own_module):
    mine, _ = own_module
    os.remove(mine.__file__)
    with pytest.raises(p2p.P2PError, match=r"ownhelpers .* cannot be read .*send_modules=False"):
        sent(mine.double, True)
    assert sent(mine.double, False) == []  # by name, as asked


HELPERS = {
    "helpers.py": """
        import mypkg.stats
        from dataclasses import dataclass

        VERSION = 1

        @dataclass
        class Summary:
            n: int
            mean: float
            version: int

        def summarize(xs):
            return Summary(len(xs), mypkg.stats.mean(xs), VERSION)
    """,
    "mypkg/__init__.py": "from . import stats\n",
    "lazyhelp.py": "def hello():\n    return 'hi'\n",
    "mypkg/stats.py": """
        def mean(xs):
            return sum(xs) / len(xs)
    """,
}


def test_dianas_own_modules_go_to_carols_worker_once_per_version(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "carol,diana")
    working = worker(stack, "carol", cluster)
    folder = project(stack, "diana", HELPERS)
    answer = run_script(stack, "diana", folder, """
        import importlib, os, p2p, helpers, lazyhelp, mypkg.stats

        def spread(i):                          # __main__'s, by value; helpers' by name
            return helpers.summarize(list(range(i + 1))), os.getcwd()

        def inside():
            import lazyhelp                     # imported there: not a global of ours
            return lazyhelp.hello()

        with p2p.Executor() as ex:
            got = list(ex.map(spread, range(6), chunksize=1))
            print("means", [s.mean for s, _ in got])
            print("ours", all(type(s) is helpers.Summary for s, _ in got))
            print("there", sorted({cwd for _, cwd in got}) != [os.getcwd()])
            print("direct", ex.submit(mypkg.stats.mean, [2, 4]).result(60))
            print("sent", sorted(len(d) for d in ex._client.modules_at.values()))
            with open(helpers.__file__, "a") as f:
                f.write("VERSION = 2\\n")
            importlib.reload(helpers)
            print("versions", [s.version for s, _ in ex.map(spread, range(3))])
            print("sent", sorted(len(d) for d in ex._client.modules_at.values()))
            print("inside", ex.submit(inside).result(60))
            print("sent", sorted(len(d) for d in ex._client.modules_at.values()))
    """, cluster)
    assert answer.returncode == 0, answer.stderr
    assert "means [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]" in answer.stdout
    assert "ours True" in answer.stdout  # helpers.Summary, diana's own class, came back
    assert "there True" in answer.stdout  # run on carol's worker, not in diana's folder
    assert "direct 3.0" in answer.stdout  # a function of mypkg.stats itself
    assert "inside hi" in answer.stdout and "sent [5]" in answer.stdout
    # carol's one worker had the three modules once, then helpers' second version.
    assert answer.stdout.count("sent [3]") == 1 and "sent [4]" in answer.stdout, answer.stdout
    assert "versions [2, 2, 2]" in answer.stdout
    working.expect("from diana@", stream="stderr")


IDENTITY = """
    import abc, dataclasses, enum, functools, typing, p2p

    @dataclasses.dataclass(frozen=True)
    class Point:
        x: int
        y: int

    class Color(enum.Enum):
        RED = 1
        GREEN = 2

    class Perm(enum.IntFlag):
        R = 4
        W = 2

    class Pair(typing.NamedTuple):
        left: int
        right: str

    T = typing.TypeVar("T")

    class Box(typing.Generic[T]):
        def __init__(self, item: T):
            self.item = item

    @typing.runtime_checkable
    class Sized(typing.Protocol):
        def size(self) -> int: ...

    class Shape(abc.ABC):
        @abc.abstractmethod
        def area(self): ...

    class Square:
        def __init__(self, side):
            self.side = side
        def size(self):
            return 4
        def area(self):
            return self.side ** 2

    Shape.register(Square)

    @functools.lru_cache(maxsize=None)
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    def there(point, color, perm, pair, box, square):
        checks = [isinstance(point, Point), color is Color.GREEN, Perm.R in perm,
                  isinstance(pair, Pair), isinstance(box, Box), isinstance(square, Shape),
                  isinstance(square, Sized), fib(30) == 832040]
        return checks, Point(point.x + 1, point.y), Color.RED, perm | Perm.W, pair, box, square

    with p2p.Executor() as ex:
        checks, point, color, perm, pair, box, square = ex.submit(
            there, Point(1, 2), Color.GREEN, Perm.R, Pair(3, "c"), Box("b"),
            Square(3)).result(60)
        print("there", checks)
        print("back", point == Point(2, 2), type(point) is Point, color is Color.RED,
              perm == Perm.R | Perm.W, type(perm) is Perm, pair == Pair(3, "c"),
              type(pair) is Pair, type(box) is Box and box.item == "b",
              isinstance(square, Shape), square.area())
        print("cached", ex.submit(fib, 40).result(60))
"""


def test_dianas_classes_keep_their_identity_there_and_back(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "carol,diana")
    worker(stack, "carol", cluster)
    folder = project(stack, "diana", {})
    answer = run_script(stack, "diana", folder, IDENTITY, cluster)
    assert answer.returncode == 0, answer.stderr
    assert "there %s" % ([True] * 8) in answer.stdout, answer.stdout
    assert "back True True True True True True True True True 9" in answer.stdout
    assert "cached 102334155" in answer.stdout


ONLY_BOB = """
    import os

    def where():
        return os.environ["HOME"]
"""


def test_a_task_that_needs_a_module_only_bob_has_runs_on_bobs_worker(stack, name, gate):
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    worker(stack, "carol", cluster)
    folder = project(stack, "diana", {"main.py": """
            import sys, time, p2p, onlybob

            with p2p.Executor() as ex:
                try:
                    ex.submit(onlybob.where).result(60)
                except ModuleNotFoundError as exc:
                    print("alone:", exc, "; its name:", exc.name, flush=True)
                open(%r).read(1)                   # bob's worker is there now
                deadline = time.monotonic() + 30
                while len({p2p._process_of(s) for s in ex._client.slots}) < 2:
                    assert time.monotonic() < deadline, "bob's worker never showed"
                    time.sleep(0.05)
                print("homes", sorted(set(ex.map(lambda _: onlybob.where(), range(4)))))
                print("carol", ex.submit(abs, -1).result(60))
        """ % gate.path})
    session = stack.process("diana", [sys.executable, os.path.join(folder, "main.py")],
                            cwd=folder, env=dict(installed(stack, "diana", "onlybob",
                                                           ONLY_BOB), P2P_CLUSTER=cluster))
    session.expect("alone:", timeout=60)
    p2p_command(stack, "bob", "worker", cluster, env=installed(stack, "bob", "onlybob", ONLY_BOB)
                ).expect("worker bob@", stream="stderr", timeout=30)
    gate.open()
    assert session.wait(120) == 0, session.errors.decode()
    out, err = session.output.decode(), session.errors.decode()
    alone = re.search(r"alone: (.*) ; its name: (\w+)", out)
    assert alone and alone.group(2) == "onlybob", out
    assert "onlybob" in alone.group(1) and "carol@" in alone.group(1), out
    assert "install it" in alone.group(1)
    bobs = os.path.join(stack.user_dir("bob"), "home")
    assert "homes %s" % [bobs] in out, out  # all four on bob's worker
    assert err.count("does not have the module onlybob") == 1, err  # carol: not again
    assert "carol 1" in out


def test_a_task_for_another_python_says_why_it_waits(stack, name):
    cluster = "alice/" + name
    host(stack, cluster, "carol,diana")
    newer = "3.%d" % (sys.version_info[1] + 2)
    # carol's worker says it runs a newer Python: all else about it is real.
    stack.process("carol", [sys.executable, "-c", "import p2p, sys; p2p.PY = %r; "
                            "sys.exit(p2p.main(['worker', %r]))" % (newer, cluster)]
                  ).expect("worker carol@", stream="stderr", timeout=30)
    folder = project(stack, "diana", {})
    answer = run_script(stack, "diana", folder, """
        import concurrent.futures, p2p

        with p2p.Executor() as ex:
            futures = [ex.submit(lambda i=i: i) for i in range(3)]
            try:
                futures[0].result(timeout=10)
            except concurrent.futures.TimeoutError as exc:
                print("timeout:", exc)
            print("still", [f.done() for f in futures])
            ex.shutdown(cancel_futures=True)
    """, cluster)
    assert answer.returncode == 0, answer.stderr
    timeout = re.search(r"timeout: (.*)", answer.stdout)
    assert timeout and "Python %s" % p2p.PY in timeout.group(1), answer.stdout
    assert newer in timeout.group(1) and "carol@" in timeout.group(1)
    assert "still [False, False, False]" in answer.stdout
    # Said at once on stderr, and once for all three tasks.
    assert answer.stderr.count("waits for a worker on Python %s" % p2p.PY) == 1, answer.stderr


# -- a member gone bad, and two honest clients on one worker ---------------------------

DOUBLE = {"helpers.py": """
    WHO = "diana's own helpers"

    def double(x):
        return 2 * x

    def who():
        return WHO
"""}

DIANA = """
    import time, p2p, helpers

    with p2p.Executor(retries=0) as ex:
        c = ex._client
        deadline = time.monotonic() + 60
        while len(c.slots) < 2:                 # bob's slot, and carol's posing one
            assert time.monotonic() < deadline, sorted(c.slots)
            time.sleep(0.05)
        print("slots", sorted(c.slots), flush=True)
        for i in range(4):
            try:
                print("task", i, "ok", ex.submit(helpers.double, i).result(60), flush=True)
            except Exception as exc:
                print("task", i, "err", type(exc).__name__, exc, flush=True)
        print("modules_at", {k: len(v) for k, v in c.modules_at.items()}, flush=True)
        print("lacking", dict(c.lacking), flush=True)
"""


def diana_beside_carol_posing_as_bobs_slot(stack, name, answer):
    """diana's DIANA script on alice's cluster, with bob's honest worker and
    carol, a member, who says an idle line for a slot id under bob's worker
    process (#0, so it sorts first), answers the one task it is given with
    answer() (a pickled outcome), then says no more; (diana's
    CompletedProcess, bob's slot id)."""
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    folder = project(stack, "diana", DOUBLE)
    carol = RawPeer(stack, "carol", cluster, "carol@bad:1#1")
    worker(stack, "bob", cluster)
    bobs = carol.wait_for("idle")
    fake = p2p._process_of(bobs["id"]) + "#0"
    carol.id = fake
    ran = {}
    diana = threading.Thread(target=lambda: ran.update(answer=run_script(
        stack, "diana", folder, DIANA, cluster)))
    diana.start()
    carol.wait_for("hello", role="client", user="diana")
    carol.send("idle", id=fake, py=p2p.PY, dh=carol.share.public, free=1, can=WAYS)
    assign = carol.wait_for("assign", to=fake, n=0)
    sealed = p2p._seal(carol.key(assign, b"result"), answer())
    pair = carol.key(assign, b"lines")
    carol.say_payload("result", assign["id"], sealed, id=fake, task=assign["task"], free=0,
                      pair=pair)
    diana.join(180)
    assert ran["answer"].returncode == 0, ran["answer"].stderr
    return ran["answer"], bobs["id"]


def outcome(**fields):
    return p2p._dumps(dict(dict(stdout="", stderr="", warnings=[]), **fields), home=True)[0]


def test_carol_posing_as_a_slot_of_bobs_worker_cannot_stop_dianas_sources_going_to_bob(
        stack, name):
    """carol's fake slot (under bob's process id, with a key share of her
    own) takes a task that carries diana's helpers.py and answers it: that
    says nothing of what bob's worker has."""
    answer, _ = diana_beside_carol_posing_as_bobs_slot(stack, name, lambda: outcome(value=0))
    # The first went to carol; the others to bob's honest worker, with the source.
    assert "task 0 ok 0" in answer.stdout
    assert all("task %d ok %d" % (i, 2 * i) in answer.stdout for i in (1, 2, 3)), answer.stdout


def test_carol_posing_as_a_slot_of_bobs_worker_cannot_say_bob_lacks_dianas_module(
        stack, name):
    """carol's fake slot answers 'missing: helpers': she lacks it, not bob."""
    missing = ModuleNotFoundError("No module named 'helpers'", name="helpers")
    answer, bob = diana_beside_carol_posing_as_bobs_slot(stack, name, lambda: outcome(
        error=missing, traceback="", missing="helpers"))
    assert all("task %d ok %d" % (i, 2 * i) in answer.stdout for i in range(4)), answer.stdout
    lacking = re.search(r"lacking \{\('([^']+)', '([^']+)'\): \{'helpers'\}\}$", answer.stdout,
                        re.M)
    assert lacking and lacking.group(1) == p2p._process_of(bob), answer.stdout  # her share's
    assert answer.stderr.count("does not have the module helpers") == 1


BOBS = {"helpers.py": """
    WHO = "bob's own helpers"

    def who():
        return WHO
"""}


def test_bobs_own_helpers_are_not_dianas_on_carols_worker(stack, name):
    """Two honest clients on carol's worker (one slot, one runner): bob's own
    helpers.py, sent as source, is his tasks' alone; diana's task that imports
    helpers gets the one carol's worker has installed, before and after."""
    cluster = "alice/" + name
    host(stack, cluster, "bob,carol,diana")
    worker_env = installed(stack, "carol", "helpers", 'WHO = "carol\'s installed helpers"\n')
    p2p_command(stack, "carol", "worker", cluster, env=worker_env).expect(
        "worker carol@", stream="stderr", timeout=30)
    diana_src = """
        import p2p

        def who():
            import helpers
            return helpers.WHO

        with p2p.Executor() as ex:
            print("diana got", ex.submit(who).result(60))
    """
    before = run_script(stack, "diana", project(stack, "diana", {}), diana_src, cluster)
    assert "diana got carol's installed helpers" in before.stdout, before.stderr
    folder = project(stack, "bob", BOBS)
    answer = run_script(stack, "bob", folder, """
        import p2p, helpers
        with p2p.Executor() as ex:
            print("bob got", ex.submit(helpers.who).result(60))
    """, cluster)
    assert "bob got bob's own helpers" in answer.stdout, answer.stderr
    after = run_script(stack, "diana", project(stack, "diana", {}), diana_src, cluster)
    assert "diana got carol's installed helpers" in after.stdout, after.stderr


def test_a_worker_that_lost_dianas_sources_gets_them_again(stack, name, gate):
    """/tmp cleaned under carol's running worker: diana's next task names
    sources it no longer has; the runner says so, and they go again."""
    cluster = "alice/" + name
    host(stack, cluster, "carol,diana")
    working = worker(stack, "carol", cluster)
    folder = project(stack, "diana", dict(DOUBLE, **{"main.py": """
        import p2p, helpers

        with p2p.Executor(retries=0) as ex:
            print("first", ex.submit(helpers.double, 1).result(60), flush=True)
            open(%r).read(1)                       # carol's sources are gone now
            print("again", ex.submit(helpers.double, 2).result(60), flush=True)
    """ % gate.path}))
    session = stack.process("diana", [sys.executable, os.path.join(folder, "main.py")],
                            cwd=folder, env={"P2P_CLUSTER": cluster})
    session.expect("first 2", timeout=60)
    with open(os.path.join(folder, "helpers.py"), "rb") as f:
        digest = p2p._digest(f.read())
    kept = [path for path in (os.path.join("/tmp", entry, "modules", digest + ".py")
                              for entry in os.listdir("/tmp") if entry.startswith("p2p-worker-"))
            if os.path.exists(path)]
    assert kept  # carol's worker keeps diana's helpers.py (and killed ones' may be there)
    for path in kept:
        os.remove(path)
    gate.open()
    assert session.wait(60) == 0, session.errors.decode()
    assert "again 4" in session.output.decode()
    assert any(os.path.exists(path) for path in kept)  # sent again, kept again
    working.expect("from diana@", stream="stderr")
