"""Run untrusted generated code in a time- and resource-limited subprocess confined to a temp dir.

Isolation, in layers:
- `python -I` (no user site, no PYTHON* variables), a fresh temporary folder as cwd, HOME and
  TMPDIR, a minimal environment;
- `setrlimit` before exec: CPU seconds, address space, largest file written; its own session,
  and the whole process group is killed at the wall-clock limit;
- an audit hook installed before the code runs refuses opening files for writing, and removing,
  renaming, linking, creating or changing files and folders, outside the temporary folder; it
  also refuses starting processes (subprocess, os.system, exec, fork, spawn), changing directory,
  and loading native libraries through ctypes, which would escape the hook.
Not isolated: reading files, the network, and anything done by C extensions already importable
(audit hooks are not a security boundary). Use a container or VM for hostile code.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

GUARD = r'''
import os, sys

ROOT = os.path.realpath(os.getcwd())
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link", "os.truncate",
               "os.chmod", "os.chown", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile",
               "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr", "os.mkfifo", "os.mknod"}
BANNED = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
          "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "os.startfile", "os.chdir"}


def inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor
    real = os.path.realpath(os.fsdecode(path))
    return real == ROOT or real.startswith(ROOT + os.sep)


def guard(event, args):
    if event in BANNED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and path is not None and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox")
    elif event in PATH_EVENTS:
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        if not all(inside(p) for p in paths):
            raise PermissionError(f"sandbox: {event} outside the sandbox")


source = open(sys.argv[1], encoding="utf-8").read()
sys.argv = sys.argv[1:]
sys.addaudithook(guard)
exec(compile(source, sys.argv[0], "exec"), {"__name__": "__main__", "__file__": sys.argv[0]})
'''


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 10 << 20


@dataclass
class ExecResult:
    passed: bool  # exit status 0 within the limits
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str


def _limit(limits: Limits):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def run_code(code: str, limits: Limits = Limits()) -> ExecResult:
    """Run `code` as a script in a fresh sandbox folder; passed means exit status 0 in time."""
    with tempfile.TemporaryDirectory(prefix="dtrpo_exec_") as tmp:
        root = Path(tmp).resolve()
        (root / "guard.py").write_text(GUARD)
        (root / "solution.py").write_text(code)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "TMPDIR": str(root), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(
            [sys.executable, "-I", "-B", str(root / "guard.py"), str(root / "solution.py")],
            cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, start_new_session=True, preexec_fn=_limit(limits),
        )
        try:
            out, err = proc.communicate(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # it ended between the timeout and the kill
            out, err = proc.communicate()
            return ExecResult(False, None, True, out, err)
        return ExecResult(proc.returncode == 0, proc.returncode, False, out, err)
