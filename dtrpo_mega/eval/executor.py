"""Run untrusted generated code in a time- and resource-limited subprocess confined to a temp dir.

Layers (docs/reliability.md, "Code sandbox", says exactly what each one stops and what none does):
- always: `python -I`, a fresh folder as cwd, HOME and TMPDIR, a minimal environment; rlimits (CPU seconds,
  address space, file size, no core); its own session, killed at the wall-clock limit and when the task ends;
  output to files, so a child that keeps them open cannot hang the caller; an audit hook, installed before the
  code runs, that refuses changing files outside the folder (dir_fd- and descriptor-relative ones too), opening
  folders outside it, starting processes, signalling other processes, changing directory and loading ctypes.
  The hook runs inside the task's interpreter: a tripwire, not a boundary.
- where the machine allows (probed once, listed in ExecResult.isolation): "uid", a fresh unprivileged uid and
  gid when run as root, every process of it killed at the end; "netns" and "pidns", no network and its own pid
  namespace (all of it dies with the task) through `unshare`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GUARD = r'''
import json, os, posix, resource, sys, types
import _posixsubprocess
from os.path import isdir, join, realpath
from posix import getpid, readlink

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
# event: the (path, dir_fd) positions of what it changes; a path may be an open descriptor, dir_fd None or < 0 means cwd
CHANGES = {"os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.mkfifo": ((0, 2),),
           "os.mknod": ((0, 3),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),), "os.utime": ((0, 3),),
           "os.truncate": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
           "os.rename": ((0, 2), (1, 3)), "os.link": ((0, 2), (1, 3)), "os.symlink": ((0, None), (1, 2)),
           "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)), "shutil.copyfile": ((1, None),)}
BANNED = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                    "pty.spawn", "ctypes.dlopen", "ctypes.dlsym", "os.chdir", "os.killpg"})
SELF_ONLY = frozenset({"os.kill", "resource.prlimit"})  # allowed on pid 0 or the task's own pid
UNAUDITED = ("setsid", "setpgid", "setpgrp", "pidfd_open")  # raise no audit event: replaced in os and posix


def refuse(what):
    raise PermissionError(f"sandbox: {what} is not allowed")


def refused(what):
    return lambda *args, **kwargs: refuse(what)


def confine(root):
    """The audit hook: refuses what changes things outside `root`, starts processes or signals other processes."""
    def inside(path, dir_fd=None):
        if isinstance(path, int):
            path = readlink(f"/proc/self/fd/{path}")
        path = os.fsdecode(path)
        if isinstance(dir_fd, int) and dir_fd >= 0:
            path = join(readlink(f"/proc/self/fd/{dir_fd}"), path)
        real = realpath(path)
        return real == root or real.startswith(root + "/")

    def hook(event, args):
        if event in BANNED:
            refuse(event)
        if event in SELF_ONLY and args[0] not in (0, getpid()):
            refuse(f"{event} of another process")
        if event == "open":
            path, mode, flags = args
            if path is None or isinstance(path, int):
                return  # an already open descriptor keeps its access mode
            writing = (mode is not None and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
            # os.open of a folder would give a dir_fd
            if (writing or (mode is None and isdir(path))) and not inside(path):
                refuse(f"opening {path!r} outside its folder")
        elif event in CHANGES:
            for at, fd_at in CHANGES[event]:
                if not inside(args[at], None if fd_at is None else args[fd_at]):
                    refuse(f"{event} outside its folder")
    return hook


def main(path, config):
    for name, value in config["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    uid = config["uid"]
    if uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    source = open(path, encoding="utf-8").read()
    for module in (os, posix):
        for name in UNAUDITED:
            setattr(module, name, refused(f"os.{name}"))
    _posixsubprocess.fork_exec = refused("_posixsubprocess.fork_exec")
    task = types.ModuleType("__main__")
    task.__file__ = path
    sys.modules["__main__"], sys.argv = task, [path]
    sys.addaudithook(confine(realpath(os.getcwd())))
    exec(compile(source, path, "exec"), task.__dict__)


main(sys.argv[1], json.loads(sys.argv[2]))
'''

# the own-uid layer needs one an unprivileged uid can read
PYTHON = os.environ.get("DTRPO_SANDBOX_PYTHON") or sys.executable
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
UNSHARE = ("--net", "--pid", "--mount-proc", "--fork", "--kill-child")
AS_USER = ("--user", "--map-root-user")  # without root, the namespaces need a user namespace of their own
ID_BASE, ID_SPAN = 2**31, 2**30  # fresh uids: above the ranges accounts, containers and sssd use
NPROC = 64  # processes and threads of the task's own uid
KILL_ALL = """import contextlib, os, signal, sys
uid = int(sys.argv[1])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
with contextlib.suppress(ProcessLookupError):  # none left
    os.kill(-1, signal.SIGKILL)  # every process of the uid but this one
"""
PROBE = ("import os, sys\n"
         "sys.exit(any(not os.access(p, os.R_OK | os.X_OK) for p in sys.path if not p.endswith('.zip')))\n")


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 1 << 30
    file_bytes: int = 10 << 20  # also caps stdout and stderr


@dataclass
class ExecResult:
    passed: bool  # exit status 0 within the limits
    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    isolation: tuple[str, ...] = ()  # layers applied beyond the always-on ones: "uid", "netns", "pidns"


def run_code(code: str, limits: Limits = Limits()) -> ExecResult:
    """Run `code` as a script in a fresh sandbox folder, with every layer this machine allows; passed means
    exit status 0 in time."""
    return _run(code, limits, _layers())


@functools.cache
def _layers() -> tuple[str, ...]:
    """The strongest set of optional layers under which the sandbox starts and can read its interpreter's
    files; probed once per process."""
    uid = ("uid",) if os.geteuid() == 0 else ()
    ns = ("netns", "pidns") if shutil.which("unshare", path=ENV["PATH"]) else ()
    for layers in dict.fromkeys(c for c in (uid + ns, uid, ns) if c):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            if _run(PROBE, Limits(), layers).passed:
                return layers
    return ()


def _run(code: str, limits: Limits, layers: tuple[str, ...]) -> ExecResult:
    uid = ID_BASE + secrets.randbelow(ID_SPAN) if "uid" in layers else None
    with (tempfile.TemporaryDirectory(prefix="dtrpo_exec_") as tmp, tempfile.TemporaryFile() as out,
          tempfile.TemporaryFile() as err):
        root = _folder(Path(tmp).resolve(), uid)
        (root / "guard.py").write_text(GUARD)
        (root / "solution.py").write_text(code)
        rlimits = {"RLIMIT_CPU": limits.cpu_seconds, "RLIMIT_AS": limits.memory_bytes,
                   "RLIMIT_FSIZE": limits.file_bytes, "RLIMIT_CORE": 0}
        if uid is not None:
            rlimits["RLIMIT_NPROC"] = NPROC
        argv = [PYTHON, "-I", "-B", str(root / "guard.py"), str(root / "solution.py"),
                json.dumps({"rlimits": rlimits, "uid": uid})]
        if "pidns" in layers:
            argv = ["unshare", *(AS_USER if os.geteuid() else ()), *UNSHARE, "--", *argv]
        proc = subprocess.Popen(argv, cwd=root, env={**ENV, "HOME": str(root), "TMPDIR": str(root)},
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        finished = _exited(proc.pid, limits.wall_seconds)
        _stop(proc, uid)
        return ExecResult(finished and proc.returncode == 0, proc.returncode if finished else None, not finished,
                          _text(out), _text(err), layers)


def _folder(tmp: Path, uid: int | None) -> Path:
    """tmp/work, the task's folder; with an own uid, owned by it while tmp stays root's (others may only pass
    through)."""
    root = tmp / "work"
    root.mkdir(mode=0o700)
    if uid is not None:
        tmp.chmod(0o711)
        os.chown(root, uid, uid)
    return root


def _exited(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for `pid` to end, without reaping it, so that its process group id stays valid."""
    deadline = time.monotonic() + seconds
    while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def _stop(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill what is left of a run: its process group and, with an own uid, every process of that uid; then reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    if uid is not None:
        subprocess.run([PYTHON, "-I", "-S", "-c", KILL_ALL, str(uid)], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, timeout=30, check=True)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _text(file) -> str:
    file.seek(0)
    return file.read().decode("utf-8", "replace")
