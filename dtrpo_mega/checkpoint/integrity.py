"""Checkpoint files are checksummed when saved and verified when loaded; failed reads and writes
name the file and the cause.

A checkpoint folder gets `checksums.json`: the sha256 of every file under it, except files of a
subfolder with its own manifest (a training checkpoint's `model/`). Ranks hash and verify
disjoint shares of the files (file i: rank i mod world size), so each file is read once.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import shutil
from pathlib import Path

import torch.distributed as dist

MANIFEST = "checksums.json"


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def _gather(items: list) -> list:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return items
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def covered_files(folder: Path) -> list[str]:
    """Files the folder's manifest covers, relative and sorted."""
    owned = {p.parent for p in folder.rglob(MANIFEST) if p.parent != folder}
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.is_file() and p.name != MANIFEST and not any(o in p.parents for o in owned))


def write_manifest(folder: str | Path) -> None:
    """Collective (every rank calls it once its files are written): record every file's sha256."""
    folder = Path(folder)
    rank, size = _world()
    files = covered_files(folder)
    digests = dict(_gather([(f, sha256_file(folder / f)) for i, f in enumerate(files) if i % size == rank]))
    if rank == 0:
        with writing(folder / MANIFEST):
            tmp = folder / (MANIFEST + ".tmp")
            tmp.write_text(json.dumps(dict(sorted(digests.items())), indent=1) + "\n")
            tmp.replace(folder / MANIFEST)
    if dist.is_initialized():
        dist.barrier()


def verify_manifest(folder: str | Path) -> None:
    """Collective: raise on every rank, naming each missing or changed file, or the manifest itself
    when it is missing (every checkpoint dtrpo_mega writes has one)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise ValueError(f"checkpoint {folder} has no {MANIFEST}, so its files cannot be checked (every dtrpo_mega "
                         "checkpoint has one); checkpoint.verify=false (convert export --no-verify) reads it unchecked")
    try:
        recorded = json.loads(manifest.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{manifest}: not a valid checksum manifest ({err})") from None
    rank, size = _world()
    problems = []
    for i, (name, want) in enumerate(sorted(recorded.items())):
        if i % size != rank:
            continue
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif (found := sha256_file(path)) != want:
            problems.append(f"{path}: sha256 {found}, but {want} when saved (the file is damaged or was replaced)")
    problems = _gather(problems)
    if problems:
        raise ValueError(f"checkpoint {folder} failed its checksums ({MANIFEST}; checkpoint.verify=false skips the "
                         "check):\n  "
                         + "\n  ".join(sorted(problems)))


def folder_digest(folder: str | Path) -> str:
    """sha256 identifying a folder's contents, layout-independent: from its manifests where it has
    them (cheap), else from every file's name and bytes."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file() and not _recorded(p, folder)):
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _recorded(file: Path, folder: Path) -> bool:
    """Whether a manifest under `folder` records `file` (a manifest itself is not)."""
    for directory in file.parents:
        if (directory / MANIFEST).is_file():
            return file.name != MANIFEST or file.parent != directory
        if directory == folder:
            return False
    return False


@contextlib.contextmanager
def writing(path: str | Path):
    """Name the file and the cause when writing it fails (a full disk says ENOSPC)."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        raise OSError(f"writing {path} failed: {_cause(err, Path(path))}") from err


@contextlib.contextmanager
def reading(path: str | Path, what: str):
    """Name the file when reading it fails (truncated, corrupted or unreadable)."""
    try:
        yield
    except Exception as err:  # torch.load, zip and pickle raise many kinds
        raise ValueError(f"reading {what} {path} failed: {type(err).__name__}: {err}") from err


def _cause(err: Exception, path: Path) -> str:
    if getattr(err, "errno", None) == errno.ENOSPC:
        return "no space left on the device (ENOSPC)"
    try:
        free = shutil.disk_usage(next(p for p in (path, *path.parents) if p.exists())).free
    except (OSError, StopIteration):
        free = None
    if free is not None and free < 1 << 20:
        return f"no space left on the device (ENOSPC: {free} bytes free; {type(err).__name__}: {err})"
    return f"{type(err).__name__}: {err}"
