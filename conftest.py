"""pytest fixtures: the local stack, brought up once per test session.

Tests run inside the stack's private namespaces; start them with
``python3 -m localstack test`` (see README.md). A test acts as a pico user
through ``stack.run(user, argv)`` / ``stack.spawn(user, argv)``; whatever
it spawns is killed when the test ends, passed or failed.
"""

import os
import secrets

import pytest

from localstack import Stack, check_namespace


def pytest_configure(config):
    try:
        check_namespace()
    except Exception as exc:
        raise pytest.UsageError(str(exc))


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """The pico board (with bugs A and B, as pico.sh has them) and wormhole."""
    with Stack(tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def fixed_stack(tmp_path_factory, stack):
    """A second board with the intended access-list semantics (no bug A or B);
    its users share the first stack's wormhole servers."""
    with Stack(tmp_path_factory.mktemp("fixed"), fixed=True, wormhole=False) as running:
        running.relay_url = stack.relay_url
        yield running


@pytest.fixture(autouse=True)
def _reap(request):
    """Kill what a test spawned as a user, also when the test fails."""
    yield
    for name in ("stack", "fixed_stack"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reap()


class Gate:
    """A FIFO that a task blocks on, reading, until the test opens it: no polling.
    Tasks that share one read it unbuffered (buffering=0): a buffered read(1)
    takes every byte there, and the next task waits for ever."""

    def __init__(self, path):
        os.mkfifo(path)
        self.path = str(path)
        self._held = None

    def open(self):
        # Read-write, so this never blocks; held until the test ends, so a
        # task that opens the FIFO only later still finds a byte. One byte
        # for each task that may wait on it.
        self._held = os.open(self.path, os.O_RDWR)
        os.write(self._held, b"!" * 4096)

    def close(self):
        if self._held is not None:
            os.close(self._held)


@pytest.fixture
def gate(tmp_path):
    opened = Gate(tmp_path / "gate")
    yield opened
    opened.close()


@pytest.fixture
def name():
    return "c" + secrets.token_hex(3)
