"""The code sandbox: time and CPU limits, confinement to its folder, and the escapes an operator found.

Attacks run as task code through run_code, in three modes: "strongest" (every layer this machine allows, with an
interpreter an unprivileged uid can read if there is one), "uid-only" (the own-uid layer without namespaces) and
"hook-only" (the audit hook and rlimits alone, as on a machine without root or unshare).
"""

import functools
import os
import secrets
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import patient
from dtrpo_mega.eval import Limits, run_code
from dtrpo_mega.eval import executor


@functools.cache
def _strongest() -> tuple[str, tuple[str, ...]]:
    """The interpreter and layers giving the most isolation here: the configured interpreter, or the system's where an
    unprivileged uid cannot read the configured one's files (e.g. under /root/.pyenv)."""
    best = (executor.PYTHON, ())
    for python in (executor.PYTHON, "/usr/bin/python3"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(executor, "PYTHON", python)
            executor._layers.cache_clear()
            layers = executor._layers()
        executor._layers.cache_clear()
        best = max(best, (python, layers), key=lambda choice: len(choice[1]))
    return best


@pytest.fixture(params=["strongest", "uid-only", "hook-only"])
def mode(request, monkeypatch) -> tuple[str, ...]:
    python, layers = _strongest()
    if request.param == "uid-only":
        if "uid" not in layers:
            pytest.skip("no own-uid layer here: not root, or no interpreter an unprivileged uid can read")
        layers = ("uid",)
    elif request.param == "hook-only":
        layers = ()
    monkeypatch.setattr(executor, "PYTHON", python)
    monkeypatch.setattr(executor, "_layers", lambda: layers)
    return layers


def _alive(token: str) -> list[int]:
    """Pids of live (not zombie) processes with `token` as an argument."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if token.encode() in argv and state != "Z":
            pids.append(int(entry))
    return pids


def _gone(token: str, within: float = 3.0) -> bool:
    deadline = time.monotonic() + patient(within)
    while _alive(token):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def token():
    """A unique `sleep` duration that marks the processes a test's task starts; leftovers are killed."""
    mark = f"{900 + secrets.randbelow(10**6) / 10**6:.6f}"
    yield mark
    for pid in _alive(mark):
        os.kill(pid, signal.SIGKILL)


def _fork_exec(token: str, fresh: bool, keep_output: bool) -> str:
    """Task code starting `sleep token` in a new session through _posixsubprocess.fork_exec (3.11 signature),
    which raises no audit event. fresh: through a newly loaded copy of the module; keep_output: the child keeps
    the task's stdout/stderr."""
    module = "importlib.util.module_from_spec(_posixsubprocess.__spec__)" if fresh else "_posixsubprocess"
    out = "-1" if keep_output else "os.pipe()[1]"
    return (f"import importlib.util, os, _posixsubprocess\nmodule = {module}\nout = {out}\nr, w = os.pipe()\n"
            f"module.fork_exec([b'/bin/sleep', b'{token}'], [b'/bin/sleep'], True, (), None, None, -1, -1, -1, out, "
            "-1, out, r, w, True, True, -1, -1, None, -1, -1, None, False)\n")


def test_executor_kills_an_infinite_loop_in_time():
    start = time.monotonic()
    result = run_code("while True:\n    pass\n", Limits(wall_seconds=1.5, cpu_seconds=30))
    assert result.timed_out and not result.passed and time.monotonic() - start < patient(5)


def test_executor_cpu_limit_and_success():
    assert run_code("print('ok')").stdout == "ok\n"
    burn = run_code("x = 0\nwhile True:\n    x += 1\n", Limits(wall_seconds=patient(20), cpu_seconds=1))
    assert not burn.passed and not burn.timed_out  # killed by RLIMIT_CPU, not the wall clock


@pytest.mark.parametrize("attempt", [
    "open({p!r}, 'w').write('x')",
    "import os; os.close(os.open({p!r}, os.O_WRONLY | os.O_CREAT))",
    "import pathlib; pathlib.Path({p!r}).write_text('x')",
    "import subprocess; subprocess.run(['touch', {p!r}])",
    "import os; os.system('touch ' + {p!r})",
    "import shutil; shutil.copyfile(__file__, {p!r})",
    "import os; os.symlink('/tmp', {p!r})",
])
def test_executor_cannot_write_outside_its_folder(tmp_path, mode, attempt):
    target = tmp_path / "escaped.txt"
    result = run_code(attempt.format(p=str(target)))
    assert not target.exists() and not target.is_symlink()
    assert not result.passed and "sandbox" in result.stderr


@pytest.mark.parametrize("attempt", [
    "import os, os.path\nos.path.realpath = lambda p: os.getcwd()\nopen({p!r}, 'w').write('x')",
    "import os, sys\nsys.modules['__main__'].BANNED.clear()\nos.system('touch ' + {p!r})",
])
def test_sandbox_guard_survives_tampering(tmp_path, mode, attempt):
    target = tmp_path / "escaped.txt"
    result = run_code(attempt.format(p=str(target)))
    assert not target.exists() and not result.passed


def test_sandbox_own_uid_stops_writers_the_hook_cannot_see(tmp_path, mode):
    if "uid" not in mode:
        pytest.skip("C-level writers such as sqlite3 get past the audit hook; only the own-uid layer stops them")
    target = tmp_path / "escaped.db"
    result = run_code(f"import sqlite3\nsqlite3.connect({str(target)!r}).execute('create table t (x)')")
    assert not target.exists() and not result.passed


def test_executor_may_write_inside_its_folder(mode):
    code = ("import os, shutil, subprocess, tempfile\nopen('a.txt', 'w').write('x')\nos.rename('a.txt', 'b.txt')\n"
            "tempfile.NamedTemporaryFile(delete=False).write(b'y')\nos.makedirs('d/e')\nopen('d/e/f', 'w').close()\n"
            "shutil.rmtree('d')\nwith tempfile.TemporaryDirectory() as t:\n"
            "    open(os.path.join(t, 'g'), 'w').close()\n"
            "fd = os.open('.', os.O_RDONLY)\nos.close(os.open('h', os.O_WRONLY | os.O_CREAT, dir_fd=fd))\n"
            "os.unlink('h', dir_fd=fd)\nprint(open('b.txt').read())")
    result = run_code(code)
    assert result.passed, result.stderr
    assert result.stdout == "x\n"


@pytest.mark.parametrize("attempt", [
    "import os\nos.unlink('victim.txt', dir_fd=os.open({d!r}, os.O_RDONLY))",
    "import os\nos.write(os.open('victim.txt', os.O_WRONLY | os.O_TRUNC, dir_fd=os.open({d!r}, os.O_RDONLY)), "
    "b'owned')",
    "import os\nfd = os.open({d!r}, os.O_PATH | os.O_DIRECTORY)\n"
    "os.rename('victim.txt', 'moved.txt', src_dir_fd=fd, dst_dir_fd=fd)",
    "import os\nos.mkdir('made', dir_fd=os.open({d!r}, os.O_RDONLY))",
    "import os\nos.symlink('x', 'link', dir_fd=os.open({d!r}, os.O_RDONLY))",
    "import os\nfor _, _, files, fd in os.fwalk({d!r}):\n    os.unlink(files[0], dir_fd=fd)",
    "import os\nos.chmod(os.open({v!r}, os.O_RDONLY), 0o777)",
    "import os\nos.utime(os.open({v!r}, os.O_RDONLY), (0, 0))",
])
def test_sandbox_dir_fd_and_open_descriptors_stay_inside(tmp_path, mode, attempt):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("keep")
    victim.chmod(0o644)
    before = (sorted(os.listdir(outside)), victim.stat().st_mode, victim.stat().st_mtime_ns)
    result = run_code(attempt.format(d=str(outside), v=str(victim)))
    assert (sorted(os.listdir(outside)), victim.stat().st_mode, victim.stat().st_mtime_ns) == before
    assert victim.read_text() == "keep" and not result.passed


@pytest.fixture
def victim():
    """A process outside the sandbox, in a group of its own."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("attempt", [
    "import os, signal\nos.kill({pid}, signal.SIGKILL)",
    "import os, signal\nos.killpg({pid}, signal.SIGKILL)",
    "import os, signal\nsignal.pidfd_send_signal(os.pidfd_open({pid}), signal.SIGKILL)",
])
def test_sandbox_cannot_signal_other_processes(mode, victim, attempt):
    result = run_code(attempt.format(pid=victim.pid))
    with pytest.raises(subprocess.TimeoutExpired):
        victim.wait(timeout=0.3)
    assert not result.passed


def test_sandbox_fork_exec_is_refused(mode, token):
    result = run_code(_fork_exec(token, fresh=False, keep_output=False))
    assert _gone(token)
    assert not result.passed and "sandbox" in result.stderr


def test_sandbox_children_do_not_outlive_it(mode, token):
    if not {"uid", "pidns"} & set(mode):
        pytest.skip("a freshly loaded _posixsubprocess gets past the audit hook; only an own uid or pid namespace ends "
                    "its children")
    run_code(_fork_exec(token, fresh=True, keep_output=False))
    assert _gone(token)


def test_sandbox_returns_in_time_when_a_child_keeps_its_output_open(mode, token):
    results = []
    thread = threading.Thread(target=lambda: results.append(run_code(_fork_exec(token, fresh=True, keep_output=True),
                                                                     Limits(wall_seconds=2))), daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(timeout=patient(8))
    assert results and time.monotonic() - start < patient(8), "run_code waited for a child that holds the task's output"


def test_sandbox_has_no_network_where_namespaces_work():
    with socket.create_server(("127.0.0.1", 0)) as server:
        server.setblocking(False)
        result = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {server.getsockname()[1]}), "
                          "timeout=2).sendall(b'x')")
        if "netns" not in result.isolation:
            pytest.skip("no network namespace on this machine")
        assert not result.passed
        with pytest.raises(BlockingIOError):
            server.accept()


def test_sandbox_runs_as_its_own_user_when_root(mode):
    if "uid" not in mode:
        pytest.skip("no own-uid layer in this mode")
    result = run_code("import os\nprint(os.getuid(), os.getgid(), os.getgroups())")
    uid, gid, groups = result.stdout.split(" ", 2)
    assert result.isolation == mode and int(uid) >= 2**31 and int(gid) == int(uid) and groups == "[]\n"


def test_sandbox_falls_back_when_a_layer_fails(monkeypatch):
    monkeypatch.setattr(executor, "UNSHARE", ("--no-such-option",))
    executor._layers.cache_clear()
    try:
        result = run_code("print('ok')")
    finally:
        executor._layers.cache_clear()
    assert result.passed and result.stdout == "ok\n" and "pidns" not in result.isolation

