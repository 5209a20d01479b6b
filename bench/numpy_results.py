"""numpy results through the allow-list: what loads, and what is refused.

    python3 bench/numpy_results.py [--keep DIR]

Makes a venv (with the system's site-packages) in a temporary directory,
pip installs numpy into it, and runs a check there: numpy arrays of several
dtypes, 0-d arrays and numpy scalars, structured and subarray dtypes, object
arrays, a 50 MB array, pickled as a worker pickles an outcome
(p2p._dumps(..., home=True)), must come back equal through p2p._load with
the allow-list; the same arrays named as numpy 1 names them
(numpy.core.multiarray) must too. Hostile payloads must be refused: an
array of a huge shape, numpy.ndarray called directly, an object array with
fewer items than its shape, a dtype state numpy would not make, a state
given to numpy's shared float64 dtype. It prints what it checked.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHECK = r'''
import io, pickle, resource, sys, time
import numpy as np
import p2p

checked = []


def load(data):
    return p2p._load(io.BytesIO(data), size=len(data))


def outcome(value):
    return p2p._dumps({"value": value, "stdout": "", "stderr": "", "warnings": []}, True)[0]


def same(a, b):
    if isinstance(a, np.ndarray):
        if a.dtype.hasobject:
            return a.dtype == b.dtype and a.tolist() == b.tolist()
        return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
                and np.isfortran(a) == np.isfortran(b) and a.tobytes() == b.tobytes())
    if isinstance(a, np.void):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    return type(a) is type(b) and a == b


point = np.dtype([("x", "<f8"), ("y", "<i4"), ("tag", "S3"), ("grid", "<u1", (2, 2))])
aligned = np.dtype([("a", "u1"), ("b", ">f8")], align=True)
values = {
    "int8": np.arange(-5, 5, dtype=np.int8), "int64": np.arange(10 ** 6, dtype=np.int64),
    "float32": np.linspace(0, 1, 7, dtype=np.float32), "float64 2-d": np.eye(3),
    "complex128": np.array([1 + 2j, -1j]), "bool": np.array([True, False]),
    "big-endian >f8": np.arange(4, dtype=">f8"), "unicode <U5": np.array(["ab", "h\u00e9llo"]),
    "bytes S3": np.array([b"ab", b"xyz"]),
    "datetime64[ns]": np.array(["2026-12-01"], dtype="datetime64[ns]"),
    "timedelta64[s]": np.array([5, -1], dtype="timedelta64[s]"),
    "Fortran order": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    "a non-contiguous slice": np.arange(20)[::3], "empty (0, 5)": np.zeros((0, 5)),
    "0-d array": np.array(7.5), "structured": np.zeros(3, dtype=point),
    "aligned structured": np.ones(2, dtype=aligned),
    "object": np.array([1, "two", None, (3,)], dtype=object),
    "scalar float64": np.float64(1.5), "scalar int32": np.int32(-7), "scalar bool": np.True_,
    "scalar void": np.zeros(1, dtype=point)[0], "dtype f8": np.dtype("f8"),
    "dtype structured": point,
}
values["structured"]["x"] = [1.5, 2.5, 3.5]
values["structured"]["grid"][1] = [[1, 2], [3, 4]]
for label, value in values.items():
    assert same(value, load(outcome(value))["value"]), label
    checked.append("loads: " + label)
back = load(outcome([values["int8"], values["int8"]]))["value"]
assert back[0] is back[1]
checked.append("loads: one array twice, shared")

big = np.random.default_rng(1).random(50 * 10 ** 6 // 8)
data = outcome(big)
began, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
back = load(data)["value"]
took, peak = time.perf_counter() - began, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert np.array_equal(back, big)
checked.append("loads: a 50 MB float64 array in %.2f s; peak RSS up %.0f MB" % (
    took, (peak - before) / 1024))


def by_numpy1(value):
    # What a worker with numpy 1 sends: its rebuilder named numpy.core.*, not numpy._core.*.
    rebuild, *rest = value.__reduce__()
    module = rebuild.__module__.replace("numpy._core", "numpy.core")
    data = b"\x80\x03c%s\n%s\n" % (module.encode(), rebuild.__name__.encode())
    data += pickle.dumps(rest[0], 3)[2:-1] + b"R"
    if len(rest) > 1:
        data += pickle.dumps(rest[1], 3)[2:-1] + b"b"
    return data + b"."


for label in ["int64", "structured", "object", "Fortran order", "scalar float64",
              "scalar void"]:
    assert same(values[label], load(by_numpy1(values[label]))), label
    checked.append("loads by numpy 1's names (numpy.core.multiarray): " + label)


def refused(label, data, match):
    began = time.perf_counter()
    try:
        load(data)
    except p2p.TransferError as exc:
        assert match in str(exc), (label, str(exc))
        assert time.perf_counter() - began < 1, label
        checked.append("refused: %s (%s)" % (label, exc))
        return
    raise AssertionError("%s loaded" % label)


def array(args, state):
    return (b"\x80\x03cnumpy.core.multiarray\n_reconstruct\n" + pickle.dumps(args, 3)[2:-1]
            + b"R" + pickle.dumps(state, 3)[2:-1] + b"b.")


MILLION = b"J@B\x0f\x00"  # BININT 10**6
RECONSTRUCT = b"\x80\x03cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
refused("_reconstruct of shape (10**6, 10**6)",
        RECONSTRUCT + MILLION + MILLION + b"\x86C\x02f8\x87R.", "cost more than")
refused("_reconstruct of shape (2**62,)", RECONSTRUCT + b"\x8a\x08"
        + (1 << 62).to_bytes(8, "little") + b"\x85C\x01b\x87R.", "cost more than")
refused("numpy.ndarray called with a huge shape",
        b"\x80\x03cnumpy\nndarray\n" + MILLION + MILLION + b"\x86\x85\x81.", "never do")
_, args, state = np.array([1, 2, 3], dtype=object).__reduce__()
refused("an object array with fewer items than its shape (numpy reads past the list)",
        array(args, (1, (10 ** 4,), state[2], False, [1])), "do not fit")
refused("an array state of 8 GB", array(args, (1, (10 ** 9,), np.dtype("f8"), False, b"")),
        "cost more than")
refused("an array state of too few bytes", array(args, (1, (10,), np.dtype("f8"), False,
                                                        b"x")), "do not fit")


def dtype(args, state, name=b"cnumpy\ndtype\n"):
    return (b"\x80\x03" + name + pickle.dumps(args, 3)[2:-1] + b"R"
            + pickle.dumps(state, 3)[2:-1] + b"b.")


_, args, state = point.__reduce__()
fields = dict(state[4], x=(state[4]["x"][0], 10 ** 6))
refused("a dtype state with a field past the end of its items",
        dtype(args, state[:4] + (fields,) + state[5:]), "would not make")
_, args, state = np.dtype("f8").__reduce__()
refused("a float64 dtype state with an object dtype's flags (arrays read a list)",
        dtype(args, state[:7] + (0x3f,) + state[8:]), "would not make")
refused("a state for a dtype the payload did not make (numpy's own float64)",
        b"\x80\x03cnumpy.dtypes\nFloat64DType\n)R" + pickle.dumps(state, 3)[2:-1] + b"b.",
        "changes")
refused("a dtype of something else than its name",
        b"\x80\x03cnumpy\ndtype\n" + pickle.dumps(([("x", "f8")],), 3)[2:-1] + b"R.",
        "else than its name")
refused("a scalar of bytes shorter than its dtype", b"\x80\x03cnumpy.core.multiarray\nscalar\n"
        + pickle.dumps((np.dtype("V100000"), b"x"), 3)[2:-1] + b"R.", "does not load")
print("numpy %s, Python %s, %s" % (np.__version__, sys.version.split()[0], p2p.__file__))
print("\n".join(checked))
print("all %d checks passed" % len(checked))
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="make the venv in DIR and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        venv = args.keep or os.path.join(scratch, "venv")
        python = os.path.join(venv, "bin", "python")
        if not os.path.exists(python):
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv],
                           check=True)
            subprocess.run([python, "-m", "pip", "install", "--quiet", "numpy"], check=True)
        script = os.path.join(scratch, "check.py")
        with open(script, "w") as f:
            f.write(textwrap.dedent(CHECK))
        env = dict(os.environ, PYTHONPATH=HERE)
        return subprocess.run([python, script], env=env, cwd=scratch).returncode


if __name__ == "__main__":
    sys.exit(main())
