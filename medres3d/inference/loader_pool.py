"""Loader processes: scans loaded and preprocessed ahead of the network, without deadlocks.

A batch of thousands of scans keeps the network busy while other processes load the next ones.
Three choices make those processes safe whatever state the main process is in (issue 10: with a
model that had already run, forked workers hung in ``_share_fd_cpu_`` on every scan):

* they are **not forked from the main process**, whose OpenMP/torch thread pools may be running:
  they start from a fork server (``spawn`` where there is none), itself started from a clean
  interpreter with one compute thread and the loading modules imported, so a worker costs a
  ``fork()`` of that server, not a Python start-up, and the batch pays the server once;
* each worker uses **one compute thread** (loading is parallel across workers, not within one);
* results come back as **NumPy arrays** (:class:`~medres3d.inference.prepare.PreparedScan`),
  pickled through the pipe, never as torch tensors in shared memory.

A worker that dies or hangs costs the scan it was on (see :func:`prefetch_prepared`); when
several scans in a row fail that way the processes, not the files, are the likely cause, and the
rest of the stream is loaded in the main process instead.

Example:
    >>> items = prefetch_prepared(["a.nii.gz", "b/"], spec, workers=2, timeout=600)  # doctest: +SKIP
    >>> [type(item).__name__ for item in items]                                      # doctest: +SKIP
    ['PreparedScan', 'FailedScan']
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING, Any

from medres3d.errors import ConfigError
from medres3d.inference.prepare import FailedScan, PreparedScan, prepare_or_fail, scan_source

if TYPE_CHECKING:
    from medres3d.transforms import PreprocessingSpec

POOL_FAILURE_LIMIT = 3
"""Consecutive scans lost to dying or hanging loader processes before the rest load in this process."""

# Imported once in the fork server, so that each worker starts with them ready.
_PRELOAD = ["medres3d.inference.prepare", "medres3d.transforms", "medres3d.io.readers", "monai.transforms"]
# Set while the fork server starts, so that its libraries never start a thread pool.
_ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
_server_lock = threading.Lock()


def _forget_inherited_server() -> None:
    """In a child forked from a process with a fork server: that server is not ours to use.

    multiprocessing would try to ``waitpid`` the parent's server and fail (ChildProcessError), so
    the child starts a server of its own when it first needs one.
    """
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is not None and getattr(server, "_forkserver_pid", None) is not None:
        server._forkserver_pid = None
        server._forkserver_address = None
        server._forkserver_alive_fd = None


if hasattr(os, "register_at_fork"):  # POSIX only; elsewhere there is no fork server to inherit
    os.register_at_fork(after_in_child=_forget_inherited_server)


def validate_timeout(timeout: float | None) -> float | None:
    """A per-scan loading timeout in seconds, or None when there is none (``None`` or ``0``).

    Example:
        >>> validate_timeout(2), validate_timeout(0), validate_timeout(None)
        (2.0, None, None)
    """
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not (math.isfinite(timeout) and timeout >= 0)
    ):
        raise ConfigError(
            f"timeout must be a number of seconds >= 0 (0 or None: no timeout), got {timeout!r}"
        )
    return float(timeout) or None


def loader_context() -> multiprocessing.context.BaseContext:
    """The multiprocessing context of loader processes: a fork server where there is one, else spawn.

    The fork server is started here, once per process, with one compute thread and the loading
    modules imported.

    Example:
        >>> loader_context().get_start_method() in ("forkserver", "spawn")
        True
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    with _server_lock:
        saved = {name: os.environ.get(name) for name in _ONE_THREAD}
        os.environ.update(_ONE_THREAD)
        try:
            context.set_forkserver_preload(_PRELOAD)  # no effect on a server already running
            forkserver.ensure_running()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return context


def _init_worker(main_pid: int) -> None:
    """Loader worker initializer: one compute thread; exit when the main process dies, even by SIGKILL."""
    import sys

    os.environ.update(_ONE_THREAD)
    with contextlib.suppress(ImportError, RuntimeError):
        import torch

        torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        # PR_SET_PDEATHSIG: the kernel kills us with our parent (the fork server, which exits with
        # the main process; or the main process itself under spawn)
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)

    def main_alive() -> bool:
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else: our main was replaced; treat as gone
            return False
        return True

    if not main_alive():
        os._exit(1)

    def watch() -> None:  # portable fallback: pool workers would otherwise wait for work forever
        while main_alive():
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class LoaderPool:
    """A pool of loader processes (see the module docstring); ``stop()`` kills and reaps them.

    Example:
        >>> with LoaderPool(2) as pool:                                      # doctest: +SKIP
        ...     item = pool.submit("scan.nii.gz", spec).result(timeout=600)
    """

    def __init__(self, workers: int) -> None:
        self._executor = ProcessPoolExecutor(
            max_workers=workers, mp_context=loader_context(), initializer=_init_worker,
            initargs=(os.getpid(),),
        )

    def submit(self, scan: Any, preprocessing: PreprocessingSpec | None) -> Future:
        """Start preparing ``scan``; the future's result is a PreparedScan or FailedScan."""
        return self._executor.submit(prepare_or_fail, scan, preprocessing)

    def stop(self) -> None:
        """Kill the worker processes and reap them: none outlives its pool.

        A worker may be blocked for good (a looping decoder, a dead network share), and what is
        still in flight is no longer wanted, so the workers are killed rather than asked to finish.
        """
        # ProcessPoolExecutor has no public way to kill its workers before Python 3.14
        processes = list((self._executor._processes or {}).values())
        for process in processes:
            process.kill()
        self._executor.shutdown(wait=True, cancel_futures=True)
        for process in processes:
            process.join()

    def __enter__(self) -> LoaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _timed_out(timeout: float) -> str:
    return (f"timed out after {timeout:g} s while loading and preprocessing in a loader process, which was "
            "killed (a file that blocks on read, a decoder that does not finish, or a stuck process)")


_DIED = ("the loader process died while preparing this scan, and its retry alone in a fresh process did not "
         "finish either (killed by a signal: out of memory, or a crashing decoder?)")


def _failure(scan: Any, what: str, seconds: float, streak: int = 0) -> FailedScan:
    text = f"{scan_source(scan) or 'scan'}: {what}"
    if streak > 1:
        text += (f" ({streak} scans in a row failed this way: the loader processes, not the files, may be "
                 "the cause)")
    return FailedScan(scan_source(scan), text, seconds)


def _isolated(scan: Any, preprocessing: PreprocessingSpec | None, timeout: float | None) -> Any:
    """Prepare one scan alone in a fresh process: tells whether this scan is what kills loaders.

    Returns the PreparedScan/FailedScan of a process that finished, or None when it died or hung too.
    """
    with LoaderPool(1) as pool:
        try:
            return pool.submit(scan, preprocessing).result(timeout=timeout)
        except (BrokenProcessPool, TimeoutError):
            return None


def prefetch_prepared(
    scans: Sequence[Any],
    preprocessing: PreprocessingSpec | None,
    *,
    workers: int,
    prefetch: int = 2,
    timeout: float | None = None,
) -> Iterator[PreparedScan | FailedScan]:
    """Prepare ``scans`` in ``workers`` processes, at most ``workers * prefetch`` ahead, in order.

    A worker process that dies (OOM killer, a segfaulting decoder) breaks the pool: the scan at the
    head of the queue is then retried alone in a fresh process; if that process dies too, the scan
    becomes a FailedScan, else it was innocent and the pool is to blame. The pool is rebuilt for
    the rest, so one deadly scan costs one error, not the stream.

    ``timeout`` (seconds; None or 0: none) bounds how long the scan at the head of the queue may
    take once everything before it is done. Scans are prepared in order, so by then it has been
    running for at least that long: it is the one that hangs. Its workers are killed, it becomes a
    FailedScan saying so, and a fresh pool prepares the scans after it (those in flight start over).

    The processes, not the files, are to blame when :data:`POOL_FAILURE_LIMIT` scans in a row are
    lost that way and the last of them then loads alone in a fresh process: the rest of the scans
    are then prepared in this process, each with a warning saying so.

    Example:
        >>> items = list(prefetch_prepared(["a.nii.gz", "b.nii.gz"], None, workers=2))  # doctest: +SKIP
    """
    timeout = validate_timeout(timeout)
    position = 0
    streak = 0  # consecutive scans lost to dying or hanging processes, not (yet) blamed on the file
    pool_at_fault = False
    while position < len(scans) and not pool_at_fault:
        pool = LoaderPool(workers)
        pending: deque[Future] = deque()
        submitted = position
        try:
            while position < len(scans):
                while submitted < len(scans) and len(pending) < workers * prefetch:
                    pending.append(pool.submit(scans[submitted], preprocessing))
                    submitted += 1
                start = time.perf_counter()
                try:
                    item = pending.popleft().result(timeout=timeout)
                except TimeoutError:
                    pool.stop()
                    scan = scans[position]
                    position += 1
                    streak += 1
                    retried = None
                    if streak >= POOL_FAILURE_LIMIT:  # the pool, or the files? this one alone decides
                        retried = _isolated(scan, preprocessing, timeout)
                        pool_at_fault = retried is not None
                        streak = streak if pool_at_fault else 0
                    yield retried or _failure(scan, _timed_out(timeout or 0.0), time.perf_counter() - start,
                                              streak)
                    break  # a fresh pool for the scans after it
                streak = 0
                position += 1
                yield item
        except BrokenProcessPool:
            pool.stop()
            scan = scans[position]
            position += 1
            retried = _isolated(scan, preprocessing, timeout)
            if retried is None:
                streak = 0  # it kills a process of its own too: the file is at fault
                yield _failure(scan, _DIED, 0.0)
            else:
                streak += 1  # innocent: the pool died under it
                pool_at_fault = streak >= POOL_FAILURE_LIMIT
                yield retried
        finally:
            pool.stop()
    for scan in scans[position:]:
        item = prepare_or_fail(scan, preprocessing)
        if isinstance(item, PreparedScan):
            item.warnings.append(f"loaded in the main process: the loader processes failed {streak} scans "
                                 "in a row, and the last of them loaded alone in a fresh process")
        yield item
