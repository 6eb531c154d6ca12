"""Finding a command's loader worker processes from outside, as a test that kills them must."""

from __future__ import annotations

import psutil

# Long-lived helpers of multiprocessing, not loader workers: they exit with their parent.
_HELPERS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


def _is_helper(process: psutil.Process) -> bool:
    try:
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    return any(helper in command for helper in _HELPERS)


def loader_workers(pid: int | None = None) -> list[int]:
    """The loader worker processes under ``pid`` (default: this process), however deep they are.

    Loader workers are forked from a fork server (a child of ``pid``), so they are grandchildren,
    and share the server's command line; under ``spawn`` they are plain children.
    """
    try:
        descendants = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    servers = {p.pid for p in descendants if _is_helper(p)}
    workers = []
    for process in descendants:
        try:
            parent = process.ppid()
        except psutil.NoSuchProcess:
            continue
        if parent in servers or not _is_helper(process):
            workers.append(process.pid)
    return workers


def all_descendants(pid: int | None = None) -> list[int]:
    """Every process under ``pid``, multiprocessing's helpers included."""
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []
