"""p2p.py's result loader: what a worker gone bad may send back, and what not.

Units first: each attack known to have got past the old deny-list, and more,
as a hostile pickle (a small __reduce__ class, or opcodes by hand) that must
be refused with a TransferError naming what it named, having run, written
and read nothing, in bounded time and memory; then every kind of result
that must load, with its identity where it has one. Then one story on the
local stack: a worker gone bad sends sealed hostile outcomes to a client.
"""

import array
import collections
import datetime
import decimal
import enum
import fractions
import functools
import importlib.machinery
import io
import linecache
import os
import pathlib
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import types
import typing
import uuid
import warnings

import pytest

import p2p
import test_p2p
from test_p2p import Exploit, worker
from test_protocol import WAYS, RawPeer

PROTO = b"\x80\x05"


def load(data, **options):
    return p2p._load(io.BytesIO(data), size=len(data), **options)


def outcome(value, home=True):
    """A worker's outcome holding value, pickled as a worker pickles it."""
    return p2p._dumps({"value": value, "stdout": "", "stderr": "", "warnings": []}, home)[0]


def glob(module, name):
    """The GLOBAL opcode: push module.name (as find_class finds it)."""
    return b"c%s\n%s\n" % (module.encode(), name.encode())


def text(s):
    """The SHORT_BINUNICODE opcode."""
    data = s.encode()
    return b"\x8c" + bytes([len(data)]) + data


def refused(data, match, **options):
    """Load data, which must be refused with a message matching match,
    within a second, having taken at most 20 MB; the message."""
    began = time.perf_counter()
    with pytest.raises(p2p.TransferError, match=match) as caught:
        load(data, **options)
    assert time.perf_counter() - began < 1.0
    tracemalloc.start()
    try:
        with pytest.raises(p2p.TransferError, match=match):
            load(data, **options)
        assert tracemalloc.get_traced_memory()[1] < 20e6
    finally:
        tracemalloc.stop()
    return str(caught.value)


class Settings:
    """A class of the client's own (this module is not installed)."""
    trust = False


class Color(enum.Enum):
    RED = 1
    GREEN = 2


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


class Logger:
    """A class of the client's whose constructor writes the file it is given."""

    def __init__(self, path):
        with open(path, "w") as f:
            f.write("opened\n")
        self.path = path


class NeedsArgs(Exception):
    """An exception whose __init__ needs more than its args: plain pickle fails."""

    def __init__(self, code, text):
        super().__init__(code)
        self.code, self.text = code, text


class Noisy(Exception):
    """An exception whose __init__ writes a file: a result's must not run."""

    def __init__(self, path):
        super().__init__(path)
        with open(path, "w") as f:
            f.write("ran\n")


@pytest.fixture
def fake_module(tmp_path):
    """Put modules in sys.modules for a test: fake_module(name, file, **globals)."""
    added = []

    def make(name, path, **names):
        module = types.ModuleType(name)
        module.__file__ = str(path)
        vars(module).update(names)
        sys.modules[name] = module
        added.append(name)
        return module
    saved = sys.modules.get("__main__")
    yield make
    for name in added:
        del sys.modules[name]
    sys.modules["__main__"] = saved


# -- the attacks that got past the deny-list --------------------------------------------

def test_a_class_sent_by_value_is_never_built():
    cls = types.new_class("Popen", (subprocess.Popen,))  # _make_class's own attack
    cls.__module__ = "__main__"
    said = refused(outcome(cls, home=False), r"names p2p\._make_class, which p2p\.py does "
                   r"not load from a worker \(a class sent by value")
    assert "trust=True or P2P_TRUST=1" in said
    # Nor is a class of the client given attributes (no _fill_class to name).
    refused(PROTO + glob("p2p", "_fill_class") + b".", r"names p2p\._fill_class")


def test_popen_and_other_commands_are_refused(tmp_path):
    marker = tmp_path / "pwned"
    for call in [(subprocess.Popen, ["touch", str(marker)]), (os.system, "touch %s" % marker),
                 (eval, "open(%r, 'w')" % str(marker)), (exec, "import os"),
                 (pow, 3, 10 ** 12), (signal.alarm, 1), (typing._eval_type, "x", {}, {}),
                 (importlib.import_module, "antigravity"), (shutil.rmtree, str(tmp_path))]:
        name = "%s.%s" % (call[0].__module__, call[0].__qualname__)
        refused(outcome(Exploit(*call)), r"names %s, which p2p\.py does not load from a "
                "worker" % re.escape(name))
    refused(outcome(Exploit(getattr, os, "system")), "names builtins.getattr, which p2p.py "
            "does not load from a worker but to find an enum's member")
    assert not marker.exists() and tmp_path.exists()
    assert signal.alarm(0) == 0  # no alarm was set
    assert "antigravity" not in sys.modules


def test_the_way_out_is_named_but_not_allowing_the_standard_library():
    said = refused(outcome(Exploit(subprocess.Popen, ["true"])), "subprocess.Popen")
    assert "trust=True or P2P_TRUST=1" in said and "allow" not in said
    said = refused(PROTO + glob("p2p", "_make_class") + b".", "p2p._make_class")
    assert "trust=True or P2P_TRUST=1" in said and "allow" not in said
    # A package's (test_p2p, not installed but imported: a module of this program's).
    said = refused(outcome(Exploit(test_p2p.host, None, "x", "y")), "test_p2p.host")
    assert "Executor(allow=['test_p2p']) or P2P_ALLOW=test_p2p" in said
    assert "trust=True or P2P_TRUST=1" in said


def test_code_types_are_not_reached_through_p2p_or_types():
    for module, name in [("p2p", "types.CodeType"), ("p2p", "types.FunctionType"),
                         ("types", "CodeType"), ("types", "FunctionType"),
                         ("p2p", "marshal.loads"), ("p2p", "_make_function.__globals__"),
                         ("p2p", "os"), ("p2p", "builtins")]:
        refused(PROTO + glob(module, name) + b".", r"names %s\.%s" % (module, name))


def test_importlib_loaders_cannot_write_or_load_a_module(tmp_path):
    marker = tmp_path / "module.py"
    loader = importlib.machinery.SourceFileLoader
    for call in [(loader, "m", str(marker)), (loader.set_data, None, str(marker), b"x=1")]:
        refused(outcome(Exploit(*call)), "_frozen_importlib_external")
    assert not marker.exists()


def test_partial_print_to_a_file_is_refused(tmp_path):
    marker = tmp_path / "written"
    refused(outcome(Exploit(functools.partial, print)), r"names functools\.partial")
    refused(outcome(Exploit(print, "x")), r"names builtins\.print")
    refused(outcome(Exploit(pathlib.Path.write_text, marker, "x")),
            r"names pathlib(\._local)?\.Path\.write_text")  # (3.13 moved it)
    assert not marker.exists()


def test_a_result_cannot_switch_trust_on_or_change_any_class():
    executor = p2p._default  # what the attack walked to: p2p's default executor's config
    refused(PROTO + glob("p2p", "_default._config") + b".", r"names p2p\._default\._config")
    # BUILD on a class the payload named: (None, {"trust": True}) as slot state.
    state = b"N}" + text("trust") + b"\x88s\x86b."
    refused(PROTO + glob("test_results", "Settings") + state, "it changes test_results.Settings")
    refused(PROTO + glob("p2p", "TransferError") + state, "it changes p2p.TransferError")
    refused(PROTO + glob("p2p", "_exception") + state, "it changes p2p._exception")
    # Nor an enum member, which REDUCE finds and every use shares.
    member = glob("test_results", "Color") + b"K\x01\x85R"
    refused(PROTO + member + b"N}" + text("_value_") + b"Kcs\x86b.", "it changes a Color")
    # Nor items into a container it named, nor the real getattr.
    refused(PROTO + glob("test_results", "Settings") + b"(K\x01e.", "it changes")
    refused(PROTO + glob("builtins", "getattr") + glob("test_results", "Settings")
            + text("trust") + b"\x86R.", "but to find an enum's member")
    assert Settings.trust is False and Color.RED.value == 1 and p2p._default is executor


def test_the_clients_own_classes_are_made_but_not_called(tmp_path):
    marker = tmp_path / "opened"
    # Pickle makes a Logger with __new__ and its state: so may a result.
    logger = object.__new__(Logger)
    logger.path = str(marker)
    back = load(outcome(logger))["value"]
    assert type(back) is Logger and back.path == str(marker)
    # But a payload may not call Logger(path), which pickle never does.
    refused(outcome(Exploit(Logger, str(marker))), "a class of this program that pickle "
            "makes without calling it")
    assert not marker.exists()


def test_an_exceptions_init_never_runs(tmp_path):
    marker = tmp_path / "ran"
    error = Exception.__new__(Noisy)
    error.args = (str(marker),)
    for home in (True, False):  # as _exception, or as plain pickle's Noisy(path)
        back = load(outcome(error, home))["value"]
        assert type(back) is Noisy and back.args == (str(marker),)
    assert not marker.exists()
    refused(PROTO + glob("p2p", "_exception") + glob("builtins", "OSError")
            + glob("builtins", "range") + b"K\x0a\x85RN\x87R.",
            "rebuilds an exception from what is not one")


def test_a_class_imported_into_the_clients_module_is_not_its_own(fake_module, tmp_path):
    fake_module("mine", tmp_path / "mine.py", Popen=subprocess.Popen, Settings=Settings)
    refused(PROTO + glob("mine", "Popen") + b".", r"names mine\.Popen")
    with pytest.raises(p2p.TransferError, match="a class this program does not define"):
        p2p._home_class("subprocess", "Popen")
    with pytest.raises(p2p.TransferError, match="a class this program does not define"):
        p2p._home_class("mine", "Settings")  # it is test_results's, imported
    refused(PROTO + glob("p2p", "_home_class") + text("subprocess") + text("Popen")
            + b"\x86R.", "a class this program does not define")


def test_modules_are_never_imported_for_a_payload():
    for module in ["nowhere_at_all", "antigravity", "this", "idlelib.idle"]:
        refused(PROTO + glob(module, "x") + b".", r"not imported here")
        assert module not in sys.modules


def test_warnings_are_replayed_without_reading_the_files_they_name(tmp_path, fake_module):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # a read would block forever
    script_file = tmp_path / "script.py"
    script_file.write_text("x = 1\nwarnings.warn('from my own script')\n")
    main = fake_module("__main__", script_file)
    main.__file__ = str(script_file)
    future = p2p._TaskFuture()
    future._replay = {"stdout": "", "stderr": "", "warnings": [
        ("passwd?", UserWarning, "/etc/passwd", 1), ("zero?", RuntimeWarning, "/dev/zero", 1),
        ("fifo?", DeprecationWarning, str(fifo), 1), ("mine", UserWarning, str(script_file), 2),
        ("huge line", UserWarning, "/etc/hostname", 10 ** 5000)]}
    shown = io.StringIO()
    done = threading.Event()

    def show(message, category, filename, lineno, file=None, line=None):
        shown.write(warnings.formatwarning(message, category, filename, lineno, line))

    def replay():
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show  # formatwarning: what reads the line shown
            future._replay_output()
        done.set()
    threading.Thread(target=replay, daemon=True).start()
    assert done.wait(10), "the replay opened the FIFO"
    said = shown.getvalue()
    assert "<worker: /etc/passwd>:1: UserWarning: passwd?" in said
    assert "<worker: /dev/zero>:1: RuntimeWarning: zero?" in said
    assert "<worker: %s>:1: DeprecationWarning: fifo?" % fifo in said
    assert "root:" not in said and "/etc/passwd" not in linecache.cache
    # The client's own script is read: its line is shown.
    assert "%s:2: UserWarning: mine\n  warnings.warn('from my own script')" % script_file in said
    assert "<worker: /etc/hostname>:0: UserWarning: huge line" in said


def test_a_warning_class_is_not_run_on_replay(tmp_path):
    marker = tmp_path / "ran"

    class Loud(UserWarning):
        def __init__(self, message):
            super().__init__(message)
            marker.write_text("ran")
    future = p2p._TaskFuture()
    future._replay = {"stdout": "", "stderr": "", "warnings": [("hi", Loud, "x.py", 3)]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        future._replay_output()
    assert [(str(w.message), w.category, w.filename, w.lineno) for w in caught] == [
        ("hi", Loud, "<worker: x.py>", 3)]
    assert not marker.exists()
    with pytest.raises(p2p.TransferError, match="not the outcome of a task"):
        p2p._checked_outcome({"value": 1, "stdout": "", "stderr": "",
                              "warnings": [(Exploit(abs, 1), UserWarning, "x", 1)]})


# -- bounds: memory and time --------------------------------------------------------------

GIB = 1 << 30


def test_a_huge_bytearray_or_bytes_from_a_small_payload_is_refused():
    for size in [GIB + GIB // 2, 10 ** 12]:
        for kind in ["bytearray", "bytes"]:
            payload = PROTO + glob("builtins", kind) + b"\x8a\x06" + size.to_bytes(
                6, "little") + b"\x85R."
            assert len(payload) < 100
            refused(payload, "cost more than its")
    # Announced by the opcode itself (BYTEARRAY8), which Python's pickle zeroes first.
    refused(PROTO + b"\x96" + (GIB + GIB // 2).to_bytes(8, "little") + b".",
            "announces a bytearray larger than itself")
    # A bytes subclass of the client's is bounded as bytes is.
    fat = types.new_class("Fat", (bytes,))
    fat.__module__, fat.__qualname__ = "test_results", "Fat"
    globals()["Fat"] = fat
    try:
        refused(PROTO + glob("test_results", "Fat") + b"\x8a\x05" + (10 ** 11).to_bytes(
            5, "little") + b"\x85\x81.", "cost more than its")
    finally:
        del globals()["Fat"]


def test_long_digit_strings_and_huge_ints_are_not_converted():
    digits = "9" * 100000
    refused(outcome(Exploit(int, digits)), "more digits than p2p.py converts")
    refused(outcome(Exploit(fractions.Fraction, digits)), "more digits")
    refused(outcome(Exploit(fractions.Fraction, "1e999999999")), "more digits")
    refused(outcome(Exploit(int, decimal.Decimal("1e999999999"))), "more digits")
    refused(outcome(Exploit(decimal.Decimal, 1 << 800000)), "more digits")  # 1 s a 100 KB
    refused(outcome(Exploit(str, 1 << 800000)), "something else than text")
    refused(outcome(Exploit(str, b"\x00" * 10, "rot13")), "something else than text")
    # A Decimal keeps its digits as they come (linear): a long one loads.
    assert load(outcome(decimal.Decimal(digits)))["value"] == decimal.Decimal(digits)


def test_ranges_are_not_expanded_past_the_budget():
    huge = glob("builtins", "range") + b"K\x00\x8a\x06" + (10 ** 12).to_bytes(6, "little") \
        + b"\x86R"
    for kind, opcode in [("tuple", b"R"), ("frozenset", b"\x81"), ("list", b"R"),
                         ("set", b"R"), ("bytearray", b"R")]:
        refused(PROTO + glob("builtins", kind) + huge + b"\x85" + opcode + b".",
                "cost more than its")
    assert load(outcome(range(10 ** 12)))["value"] == range(10 ** 12)  # a range alone is lazy


def test_a_shared_argument_copied_again_and_again_is_refused():
    # 100 KB once, then bytearray() of it 1000 times: 100 MB from a 105 KB payload.
    payload = PROTO + b"\x8e" + (100000).to_bytes(8, "little") + b"x" * 100000 + b"\x94" \
        + glob("builtins", "bytearray") + b"\x94(" + b"h\x01h\x00\x85R" * 1000 + b"l."
    refused(payload, "cost more than its")


def test_a_key_whose_hash_walks_shared_tuples_is_refused():
    # t0 = (); t(n+1) = (tn, tn): hash(t60) takes 2**60 steps; as a dict key, a set
    # member, a frozenset's, an enum's value.
    dag = b")\x94" + b"".join(b"0h%ch%c\x86\x94" % (n, n) for n in range(60))
    for container, end in [(b"}", b"K\x01s"), (b"\x8f(", b"\x90"), (b"(", b"\x91")]:
        refused(PROTO + container + dag + end + b".", "cost more than its")
    refused(PROTO + glob("test_results", "Color") + dag + b"\x85R.", "cost more than its")
    refused(PROTO + glob("builtins", "frozenset") + b"(" + dag + b"l\x85R.",
            "cost more than its")


def test_a_deep_or_broken_payload_is_a_transfer_error():
    for data in [b"not a pickle at all", PROTO + b"(" * 100000 + b".", PROTO + b"]" * 10,
                 PROTO + b"h\x07.", PROTO + b"\x8e" + (10 ** 12).to_bytes(8, "little") + b"x."]:
        with pytest.raises(p2p.TransferError, match="does not load"):
            load(data)


# -- what loads ----------------------------------------------------------------------------

VALUES = [
    0, -1, 10 ** 100, 1.5, complex(1, 2), "text", b"bytes", bytearray(b"ba"), [1, [2]],
    (1, (2,)), {"k": {"n": 1}}, {1, 2}, frozenset({3}), True, None, slice(1, 9, 2),
    range(3, 30, 3), ..., NotImplemented, {(1, 2): "tuple key"},
    datetime.date(2026, 12, 1), datetime.time(12, 30, tzinfo=datetime.timezone.utc),
    datetime.datetime(2026, 12, 1, 9, 0, 0, 7), datetime.timedelta(days=3, seconds=5),
    datetime.timezone(datetime.timedelta(hours=-5), "EST"), decimal.Decimal("-1.50"),
    fractions.Fraction(-7, 3), uuid.UUID(int=12345), uuid.uuid4(),
    collections.OrderedDict([("b", 2), ("a", 1)]), collections.defaultdict(list, a=[1]),
    collections.deque([1, 2], maxlen=5), collections.Counter("abracadabra"),
    collections.ChainMap({"a": 1}, {"b": 2}), pathlib.PurePosixPath("/a/b"),
    pathlib.PureWindowsPath(r"C:\x"), pathlib.Path("/tmp/x"), types.SimpleNamespace(a=1, b=[2]),
    array.array("d", [1.5, 2.5]), array.array("u", "hé"), Point(1, 2), [Point(3, 4)] * 2,
]


@pytest.mark.parametrize("home", [False, True])
def test_data_of_every_allowed_kind_comes_back_equal(home):
    for value in VALUES:
        data = outcome(value, home)
        back = load(data)["value"]
        assert type(back) is type(value) and (back == value or repr(back) == repr(value)), value
    back = load(outcome([Point(3, 4)] * 2, home))["value"]
    assert back[0] is back[1]  # sharing survives
    assert load(outcome(collections.defaultdict(int), home))["value"].default_factory is int


def test_enum_members_and_classes_come_back_themselves():
    for value in [Color.RED, signal.Signals.SIGTERM, uuid.SafeUUID.safe, Color, Point, int,
                  p2p.TaskCrashed, ZeroDivisionError, collections.OrderedDict]:
        assert load(outcome(value))["value"] is value
    assert load(outcome({Color.GREEN: [Color.GREEN]}))["value"] == {Color.GREEN: [Color.GREEN]}


def test_exceptions_come_back_whole_without_their_init():
    error = NeedsArgs(404, "not found")
    with pytest.raises(TypeError):  # what plain pickle makes of it
        pickle.loads(pickle.dumps(error))
    back = load(outcome(error))["value"]
    assert type(back) is NeedsArgs and back.args == (404,)
    assert (back.code, back.text) == (404, "not found")
    error = FileNotFoundError(2, "No such file", "/x")
    back = load(outcome(error))["value"]
    assert (type(back), back.errno, back.strerror, back.filename) == (
        FileNotFoundError, 2, "No such file", "/x")
    back = load(outcome(ImportError("no", name="mod", path="/p")))["value"]
    assert (back.args, back.name, back.path) == (("no",), "mod", "/p")
    back = load(outcome(p2p.TaskCrashed("died")))["value"]
    assert type(back) is p2p.TaskCrashed and str(back) == "died"
    for error in [KeyError("k"), SystemExit(3), StopIteration(7), UnicodeDecodeError(
            "utf-8", b"\xff", 0, 1, "bad"), subprocess.CalledProcessError(1, ["x"], b"o")]:
        back = load(outcome(error))["value"]
        assert type(back) is type(error) and back.args == error.args


def test_an_outcome_from_a_failure_loads():
    data = p2p._failure(p2p.TaskCrashed("the process died"), "Traceback...", "out", "err")
    back = p2p._checked_outcome(load(data))
    assert type(back["error"]) is p2p.TaskCrashed and back["stdout"] == "out"


def test_classes_of_main_come_back_as_the_clients_own(fake_module, tmp_path):
    main = fake_module("__main__", tmp_path / "script.py")
    exec(textwrap.dedent("""
        class Point:
            def __init__(self, x):
                self.x = x
        class Oops(Exception):
            pass
    """), vars(main))
    point, oops = main.Point(5), main.Oops("bad", 1)
    assert not p2p._importable(main.Point)
    data = outcome([point, oops, main.Point])
    assert b"_home_class" in data and b"_make_class" not in data
    back = load(data)["value"]
    assert type(back[0]) is main.Point and back[0].x == 5
    assert type(back[1]) is main.Oops and back[1].args == ("bad", 1)
    assert back[2] is main.Point
    # Resolved by name in the client's own modules (this one is), else refused.
    assert p2p._home_class("test_results", "Point") is Point
    del vars(main)["Point"]
    refused(data, r"a __main__\.Point, a class this program does not define")
    # A class defined in a function cannot be found by name: sent by value, refused.
    refused(outcome(type("Local", (), {"__qualname__": "f.<locals>.Local",
                                       "__module__": "__main__"})()), r"p2p\._make_class")


def test_code_sent_back_by_value_is_withheld():
    back = load(outcome(lambda x: x + 1))["value"]
    assert "withheld" in repr(back)
    with pytest.raises(p2p.P2PError, match="came back from a worker as code"):
        back(1)
    with pytest.raises(p2p.P2PError, match="came back from a worker as code"):
        load(outcome(Exploit(lambda: 1)))
    assert "withheld" in repr(load(outcome(pytest))["value"])  # a module: by name, withheld


def test_allow_lets_a_packages_globals_in(fake_module, tmp_path):
    site = tmp_path / "site-packages" / "somepkg"  # installed: not the client's own
    fake_module("somepkg", site / "__init__.py")
    sub = fake_module("somepkg.sub", site / "sub.py")

    class Thing:
        def __init__(self, n):
            self.n = n

        def __reduce__(self):
            return make, (self.n,)

    def make(n):
        return Thing(n)
    make.__module__, make.__qualname__ = "somepkg.sub", "make"
    sub.make = make
    data = outcome(Thing(7))
    said = refused(data, r"names somepkg\.sub\.make")
    assert "Executor(allow=['somepkg']) or P2P_ALLOW=somepkg" in said
    assert load(data, allow=["somepkg"])["value"].n == 7
    assert load(data, allow=("somepkg.sub",))["value"].n == 7
    refused(data, "somepkg", allow=["somepk"])  # a package, not a prefix of a name


def test_trusting_the_cluster_loads_anything(tmp_path):
    marker = tmp_path / "ran"
    data = outcome(Exploit(open, str(marker), "w"))
    refused(data, r"names _?io\.open")
    assert not marker.exists()
    load(data, trust=True)
    assert marker.exists()  # the switch: plain pickle, code and all
    assert load(outcome(lambda x: x * 2), trust=True)["value"](4) == 8
    assert load(outcome(NeedsArgs(1, "x")), trust=True)["value"].text == "x"


def test_a_large_result_loads_in_one_read():
    payload = os.urandom(20_000_000)
    data = outcome(payload)
    began = time.perf_counter()
    assert load(data)["value"] == payload
    assert time.perf_counter() - began < 2


# -- a story on the local stack ------------------------------------------------------------

def test_a_worker_gone_bad_sends_back_hostile_outcomes(stack, tmp_path):
    """bob's own worker gone bad (on his personal cluster) answers his tasks
    with a Popen, a file write and warnings naming files to read."""
    os.chmod(tmp_path, 0o777)
    markers = [tmp_path / "popen", tmp_path / "written"]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.chmod(fifo, 0o666)
    client = stack.process("bob", [sys.executable, "-c", textwrap.dedent("""
        import p2p
        with p2p.Executor(retries=0) as ex:
            for n in range(3):
                try:
                    print("ok", ex.submit(abs, -n).result(90), flush=True)
                except p2p.P2PError as exc:
                    print("%s: %s" % (type(exc).__name__, exc), flush=True)
    """)])
    bad = RawPeer(stack, "bob", "personal", "bob@bad:1#1", key=None)
    hostile = [
        outcome(Exploit(subprocess.Popen, ["touch", str(markers[0])])),
        outcome(Exploit(pathlib.Path.write_text, markers[1], "pwned")),
        p2p._dumps({"value": "fine", "stdout": "", "stderr": "", "warnings": [
            ("passwd", UserWarning, "/etc/passwd", 1), ("fifo", UserWarning, str(fifo), 1),
            ("zero", UserWarning, "/dev/zero", 1)]}, True)[0],
    ]
    bad.wait_for("hello", role="client", user="bob")
    for n, payload in enumerate(hostile):
        bad.send("idle", id=bad.id, py=p2p.PY, dh=bad.share.public, free=1, can=WAYS)
        assign = bad.wait_for("assign", to=bad.id, n=0)
        def key(what):  # (RawPeer.key, which its board key's attribute hides)
            return p2p._payload_key(bad.share.root(assign["dh"]), assign["task"], what)
        task = p2p._open(key(b"task"), bad.payload(assign))
        assert p2p._load(io.BytesIO(task), trust=True) == (abs, (-n,), {})
        sealed = p2p._seal(key(b"result"), payload)
        pair = key(b"lines")
        bad.say_payload("result", assign["id"], sealed, id=bad.id, task=assign["task"],
                        free=1, pair=pair)
        client.wait_for(lambda out: out.count(b"\n") > n, 60, what="an answer")
    assert client.wait(timeout=60) == 0, client.errors
    said = client.output.decode().splitlines()
    assert said[0].startswith("TransferError: the result of task ")
    assert "names subprocess.Popen, which p2p.py does not load from a worker" in said[0]
    assert re.search(r"names pathlib(\._local)?\.Path\.write_text, which p2p.py does not "
                     r"load", said[1])
    assert said[2] == "ok fine"
    errors = client.errors.decode()
    for name in ["/etc/passwd", str(fifo), "/dev/zero"]:
        assert "<worker: %s>:1: UserWarning: " % name in errors
    assert "root:" not in errors
    assert not any(marker.exists() for marker in markers)


def test_an_honest_workers_outcomes_load_on_the_client(stack, tmp_path):
    """The same cluster with an honest worker: classes of __main__, an error
    that needs its init's arguments, a warning from the client's script."""
    working = worker(stack, "bob")
    job = tmp_path / "job.py"
    job.write_text(textwrap.dedent("""
        import warnings, p2p

        class Point:
            def __init__(self, x):
                self.x = x

        class Oops(Exception):
            def __init__(self, code, text):
                super().__init__(code)
                self.code, self.text = code, text

        def make(x):
            warnings.warn("careful")
            return Point(x)

        def fail():
            raise Oops(7, "seven")

        with p2p.Executor() as ex:
            point = ex.submit(make, 3).result(60)
            print(type(point) is Point, point.x)
            try:
                ex.submit(fail).result(60)
            except Oops as exc:
                print("Oops", exc.code, exc.text)
    """))
    answer = stack.run("bob", [sys.executable, "job.py"], cwd=tmp_path, timeout=90)
    assert answer.stdout == "True 3\nOops 7 seven\n", answer.stderr
    # Its own script's line is shown: the client reads its own file, no other.
    line = job.read_text().splitlines().index('    warnings.warn("careful")') + 1
    assert '%s:%d: UserWarning: careful\n  warnings.warn("careful")' % (job, line) \
        in answer.stderr
    working.process.terminate()
