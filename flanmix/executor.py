"""Where a compile's jobs run: an :class:`Executor` maps a job function over picklable jobs.

Every worker builds its state once, ``setup(context)`` (for the compile: a unit renderer from the
plan's :class:`~flanmix.rows.WorkerContext`), then runs ``fn(state, job)`` for the jobs it is given.
``fn`` and ``setup`` are module-level functions, so they travel by name. Results come back in the
order of the jobs, so what is written never depends on the executor or the number of workers.

A job that raises stops the run: the caller gets the same flanmix error (class, message, location
and hint; any other exception becomes a :class:`~flanmix.errors.CompileError` naming its type),
the workers are stopped, and the caller's ``finally`` blocks remove what it staged.

- :class:`LocalExecutor`: spawned processes on this machine, at most one per core and per job; a
  single worker runs the jobs in the calling process.
- :class:`RayExecutor`: one Ray actor per worker (``num_cpus=1``), on a Ray started for the compile
  or on the cluster at ``address`` (``ray.init(address=...)``); needs ``pip install 'flanmix[ray]'``.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import pickle
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol, TypeVar

from .errors import CompileError, FlanmixError, Location

__all__ = ["Executor", "LocalExecutor", "RayExecutor", "Workers", "make_executor", "EXECUTORS"]

S = TypeVar("S")  # a worker's state
J = TypeVar("J")  # a job
R = TypeVar("R")  # a job's result

EXECUTORS = ("local", "ray")


class Workers(Protocol):
    """Started workers, each holding its state: run jobs on them."""

    count: int
    #: every worker runs on the caller's machine (:func:`machine_id`), so a file one writes
    #: outside the staging folder (runs in memory-backed storage) can be read by another
    one_machine: bool

    def map(self, fn: Callable[[Any, J], R], jobs: Iterable[J]) -> Iterator[R]:
        """``fn(state, job)`` for every job, results in job order; a job's error is raised here."""
        ...


class Executor(Protocol):
    """Starts workers. Used as a context manager around everything it runs (closes what it opened)."""

    name: str
    scratch: str | None  # a folder or fsspec URL for the workers' files; None: the staging folder

    def start(
        self, setup: Callable[[Any], Any], context: Any, max_jobs: int
    ) -> AbstractContextManager[Workers]:
        """Workers that each ran ``setup(context)``; at most ``max_jobs`` of them are useful."""
        ...

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...


# ----------------------------------------------------------------------------- errors across processes


def _error_payload(exc: BaseException) -> tuple:
    if isinstance(exc, FlanmixError):
        cls = type(exc)
        return ("error", cls.__module__, cls.__qualname__, exc.message, exc.location, exc.hint)
    text = f"{type(exc).__name__}: {exc}"
    return ("error", CompileError.__module__, "CompileError", text, Location(), None)


def _raise_payload(payload: tuple) -> None:
    _, module, name, message, location, hint = payload
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        cls = CompileError
    if not (isinstance(cls, type) and issubclass(cls, FlanmixError)):
        cls = CompileError
    raise cls(message, location=location, hint=hint)


def _call(fn: Callable, state: Any, job: Any) -> tuple:
    try:
        return ("ok", fn(state, job))
    except BaseException as exc:  # noqa: BLE001 - sent back to the caller, raised there
        if isinstance(exc, KeyboardInterrupt) and not _OWN_WORKER:
            raise  # Ctrl-C (or SIGTERM, which the CLI turns into it) in the caller: it unwinds
        return _error_payload(exc)


def _call_batch(fn: Callable, state: Any, batch: list) -> list[tuple]:
    """Run a batch of jobs in order (:func:`guided_batches`); the first that fails ends it (the
    caller raises its error, in job order, and stops)."""
    results = []
    for job in batch:
        results.append(_call(fn, state, job))
        if results[-1][0] == "error":
            break
    return results


def _unwrap(result: tuple) -> Any:
    if result[0] == "error":
        _raise_payload(result)
    return result[1]


# ----------------------------------------------------------------------------- local processes

_STATE: Any = None


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that started it dies, even by SIGKILL,
    so no worker keeps running for nobody."""
    try:
        import ctypes
        import signal

        parent = mp.parent_process()
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent.pid:  # it died before prctl
        os._exit(1)


_STATE_FROM: str | None = None  # the context file the state was built from
_OWN_WORKER = False  # this process is a worker an executor started (a pool worker, a Ray actor)


def own_worker() -> bool:
    """Whether this process is a worker started by an executor (a pool worker or a Ray actor), so
    that settings of the whole process (:func:`flanmix.assemble.tune_own_process`) are flanmix's
    to make; False in the caller's process, where a single worker runs its jobs."""
    return _OWN_WORKER


def _local_warm(modules: tuple[str, ...]) -> None:
    """A pool worker's start: the signal handlers a fresh Python has (a forked worker inherits the
    caller's: the command line's SIGTERM handler would keep it alive when the pool stops it),
    then imports what the jobs will need, while the caller plans."""
    import signal

    global _OWN_WORKER
    _OWN_WORKER = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hasattr(signal, "pthread_sigmask"):  # blocked while the pool forked us (_new_pool)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _die_with_parent()
    for name in modules:  # nothing here may raise: a pool replaces a worker whose start failed
        with contextlib.suppress(Exception):  # the job reports it, located
            importlib.import_module(name)


def _local_batch(item: tuple) -> list[tuple]:
    """Run a batch of jobs (:func:`_call_batch`); the first batch of a run builds this worker's
    state from the run's context file (pickled once by the caller, read once per worker)."""
    global _STATE, _STATE_FROM
    fn, batch, setup, context_file = item
    if context_file != _STATE_FROM:
        try:
            with open(context_file, "rb") as fh:
                context = pickle.load(fh)  # noqa: S301 - written by this run's caller, mode 0600
            _STATE, _STATE_FROM = setup(context), context_file
        except BaseException as exc:  # noqa: BLE001 - reported as the job's error
            return [_error_payload(exc)]
    return _call_batch(fn, _STATE, batch)


def machine_id() -> str:
    """This machine as its workers see it: the host name and, on Linux, the kernel's boot id (two
    containers of one host have different names, and their own ``/dev/shm``)."""
    import socket

    boot = ""
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id", "rb") as fh:
        boot = fh.read().decode("ascii", "replace").strip()
    return f"{socket.gethostname()}/{boot}"


class _InProcess:
    one_machine = True

    def __init__(self, state: Any):
        self.count = 1
        self._state = state

    def map(self, fn, jobs):
        for job in jobs:
            yield _unwrap(_call(fn, self._state, job))


class _Pool:
    one_machine = True

    def __init__(self, pool, count: int, setup: Callable, context_file: str):
        self.count = count
        self._pool = pool
        self._setup = setup
        self._context = context_file

    def map(self, fn, jobs):
        items = ((fn, b, self._setup, self._context) for b in guided_batches(jobs, self.count))
        for results in self._pool.imap(_local_batch, items, chunksize=1):
            for result in results:
                yield _unwrap(result)


def guided_batches(jobs: Iterable, workers: int) -> Iterator[list]:
    """Consecutive jobs in batches that shrink with the work left (guided scheduling): each batch
    is ``1 / (2 * workers)`` of the jobs not yet batched, at least one. A worker runs a batch in
    order, so it gets runs of neighbouring jobs while there is much left (a compile's units of one
    task read the same source row groups, which a worker keeps from one unit to the next), and
    single jobs at the end, when balance matters (no worker waits long for another's last batch).

    A compile of 50k rows of ~3.7 kB (4 tasks of 5 units, 10k-row groups) on 2 workers: handed
    out one at a time, each worker read as much of the sources as one worker doing all the units
    (0.30-0.34 s of reading each, against 0.32 s); in batches, 0.25-0.26 s each, and the compile
    took 0.92-1.02 s against 1.06-1.09 s (best of 3, alternated)."""
    jobs = list(jobs)
    at, n = 0, len(jobs)
    while at < n:
        size = max(1, (n - at) // (2 * max(1, workers)))
        yield jobs[at : at + size]
        at += size


START_METHODS = ("fork", "spawn", "forkserver")


def _start_method():
    """How worker processes start: ``FLANMIX_START_METHOD`` if set; else ``fork`` on Linux when
    this process runs no other thread than its own and flanmix's render watchdog (a forked worker
    has the compiler already imported: no second of imports per worker, which is most of a small
    compile); else ``spawn`` (a fresh interpreter: safe with any threads, on any platform)."""
    import threading

    method = os.environ.get("FLANMIX_START_METHOD", "").strip().lower()
    if method and method not in START_METHODS:
        raise CompileError(
            f"FLANMIX_START_METHOD={method!r} is not one of {', '.join(START_METHODS)}",
            hint="unset it, or set fork, spawn or forkserver",
        )
    if not method:
        others = [
            t
            for t in threading.enumerate()
            if t is not threading.main_thread() and t.name != "flanmix-render-watchdog"
        ]
        forkable = sys.platform == "linux" and "fork" in mp.get_all_start_methods()
        method = "fork" if forkable and not others else "spawn"
    return mp.get_context(method)


def _new_pool(size: int, modules: tuple[str, ...]):
    """A pool of ``size`` warm workers. Forked ones start from a frozen garbage collector: every
    object the caller holds is moved out of the collector's reach while forking, so that a
    worker's collections never write to (and copy) the memory it shares with the caller (the
    (c) compile of ``bench_compile.py``: 9% less CPU in the workers, a fifth fewer page faults).
    The caller's collector is as it was afterwards; one that had frozen objects itself is left
    alone.

    SIGTERM is blocked while the pool starts (and so in the threads it starts, which fork the
    workers that replace others): a forked worker holds the caller's handler until its start
    resets it, and a SIGTERM from ``terminate`` in that window (a worker still starting when a
    short run ends) was taken by that handler and lost, and the pool's ``join`` waited for the
    worker forever. A worker unblocks it once its handler is the default (:func:`_local_warm`);
    the caller's mask is restored at once, a SIGTERM it got meanwhile delivered then."""
    import gc
    import signal

    ctx = _start_method()
    freeze = ctx.get_start_method() == "fork" and gc.get_freeze_count() == 0
    mask = hasattr(signal, "pthread_sigmask")
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}) if mask else None
    if freeze:
        gc.freeze()
    try:
        return ctx.Pool(size, initializer=_local_warm, initargs=(modules,))
    finally:
        if freeze:
            gc.unfreeze()
        if mask:
            signal.pthread_sigmask(signal.SIG_SETMASK, before)


class LocalExecutor:
    """Worker processes on this machine (forked or spawned: :func:`_start_method`): ``workers``
    (default: every core), never more than the cores or the jobs; one worker runs in the calling
    process. Workers die with the caller
    (Linux), and are stopped when the run ends, fails, or is interrupted (Ctrl-C, SIGTERM).

    The processes start when the executor is entered, before the compile plans: spawned ones
    import the compiler (about half a second each) while the caller reads the catalog and checks
    the sources. Each run (:meth:`start`) then hands them its context through one pickled file, so a
    leave-one-cluster-out compile reuses the same processes for every mixture.
    """

    name = "local"
    #: What a warm worker imports before its first job (not pandas, which pyarrow imports on its
    #: first conversion where installed: :func:`flanmix.assemble.hide_pandas`).
    WARM_MODULES = ("flanmix.assemble",)

    def __init__(self, workers: int | None = None, scratch: str | None = None):
        self.workers = workers
        self.scratch = scratch
        self._pool = None
        self._size = 0

    def __enter__(self) -> LocalExecutor:
        size = self.count(1 << 30)
        if size > 1:
            self._pool = _new_pool(size, self.WARM_MODULES)
            self._size = size
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.terminate()
            pool.join()

    def count(self, max_jobs: int) -> int:
        cores = os.cpu_count() or 1
        return max(1, min(self.workers or cores, cores, max_jobs))

    @contextmanager
    def start(self, setup, context, max_jobs):
        n = self.count(max_jobs)
        if n == 1:
            yield _InProcess(setup(context))
            return
        own = self._pool is None  # start() without entering the executor: a pool for this run
        if own:
            self._pool = _new_pool(n, self.WARM_MODULES)
            self._size = n
        fd, context_file = tempfile.mkstemp(prefix="flanmix-context-", suffix=".pickle")
        try:
            with os.fdopen(fd, "wb") as fh:
                pickle.dump(context, fh, protocol=pickle.HIGHEST_PROTOCOL)
            ok = False
            try:
                yield _Pool(self._pool, min(n, self._size), setup, context_file)
                ok = True
            finally:
                if own or not ok:  # a failed or interrupted run stops its workers at once
                    self._stop()
        finally:
            os.unlink(context_file)


# ----------------------------------------------------------------------------- Ray


class _RayWorker:
    """One Ray actor: builds its state once, then runs jobs. Errors come back as payloads."""

    def __init__(self, setup: Callable, context: Any, env: dict[str, str], cwd: str):
        global _OWN_WORKER
        _OWN_WORKER = True  # an actor has a process of its own, which dies with it
        os.environ.update(env)  # FLANMIX_* and HF_* settings of the caller
        if os.path.isdir(cwd):  # relative source paths mean the same as for the caller
            os.chdir(cwd)
        self._state = None
        self._error: tuple | None = None
        try:
            self._state = setup(context)
        except BaseException as exc:  # noqa: BLE001 - reported by the first job
            self._error = _error_payload(exc)

    def machine(self) -> str:
        return machine_id()

    def run(self, fn: Callable, batch: list) -> list[tuple]:
        if self._error is not None:
            return [self._error]
        return _call_batch(fn, self._state, batch)


class _RayWorkers:
    DEPTH = 2  # batches queued per actor, so an actor never waits for the caller between them

    def __init__(self, ray, actors: list):
        self.count = len(actors)
        self._ray = ray
        self._actors = actors
        # where the actors run, asked once they are up (they stay where they are for the run)
        here = machine_id()
        try:
            machines = ray.get([a.machine.remote() for a in actors])
        except ray.exceptions.RayError as exc:  # an actor died starting (killed, out of memory ...)
            raise _ray_failed(exc, starting=True) from None
        self.one_machine = all(m == here for m in machines)

    def map(self, fn, jobs):
        ray = self._ray
        todo = enumerate(guided_batches(jobs, self.count))
        pending: dict[Any, tuple[int, Any]] = {}
        load = {id(a): 0 for a in self._actors}
        done: dict[int, tuple] = {}
        nxt = 0

        def submit() -> None:
            for actor in self._actors:
                while load[id(actor)] < self.DEPTH:
                    item = next(todo, None)
                    if item is None:
                        return
                    pending[actor.run.remote(fn, item[1])] = (item[0], actor)
                    load[id(actor)] += 1

        submit()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                index, actor = pending.pop(ref)
                load[id(actor)] -= 1
                try:
                    done[index] = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    raise _ray_failed(exc) from None
            submit()
            while nxt in done:
                for result in done.pop(nxt):
                    yield _unwrap(result)
                nxt += 1


def _ray_failed(exc: BaseException, starting: bool = False) -> CompileError:
    """A Ray worker that died or failed outside a job, in one line. ``starting``: before its
    first job, where a cluster whose ``RAY_AUTH_MODE`` differs from this process's loses its
    actors (seen with Ray 2.60: a head started with it ``disabled``, a caller without it)."""
    first = (str(exc).splitlines() or [""])[0]
    hint = "see the Ray logs (ray logs, or /tmp/ray/session_latest/logs)"
    if starting:
        hint += "; a cluster started with RAY_AUTH_MODE set needs the same setting here"
    return CompileError(f"a Ray worker failed: {type(exc).__name__}: {first}", hint=hint)


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise CompileError(
            "the ray executor needs the ray package",
            hint="pip install 'flanmix[ray]'",
        ) from exc
    return ray


class RayExecutor:
    """Ray actors, one per worker (``num_cpus=1`` each): ``workers`` of them (default: the CPUs of
    the cluster, never more than the jobs). ``address`` (``auto``, ``ray://head:10001``) joins a
    running cluster; without it a Ray already initialised in this process is used, or the cluster
    of a Ray job (``RAY_ADDRESS``), or a local one is started for the compile (``workers`` CPUs)
    and shut down after it."""

    name = "ray"

    def __init__(
        self, workers: int | None = None, address: str | None = None, scratch: str | None = None
    ):
        self.workers = workers
        self.address = address
        self.scratch = scratch
        self._ray = None
        self._owned = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned and self._ray is not None:
            self._ray.shutdown()
        self._ray, self._owned = None, False

    def _connect(self):
        if self._ray is not None:
            return self._ray
        ray = _import_ray()
        if not ray.is_initialized():
            import logging

            kwargs: dict[str, Any] = dict(
                include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
            if self.address:
                kwargs["address"] = self.address
            elif not os.environ.get("RAY_ADDRESS"):  # set inside a Ray job (ray job submit)
                # a Ray of our own, even where `ray start` left one running on this machine
                # (ray.init() would join that one, and refuse num_cpus)
                kwargs["address"] = "local"
                kwargs["num_cpus"] = self.workers or os.cpu_count() or 1
            try:
                ray.init(**kwargs)
            except Exception as exc:  # noqa: BLE001 - connection refused, bad address ...
                raise CompileError(
                    f"cannot start or reach Ray: {type(exc).__name__}: {str(exc).splitlines()[0]}",
                    hint="check --ray-address (ray status on the head node); a cluster started by "
                    "ray start uses token authentication: export RAY_AUTH_MODE=token",
                ) from None
            self._owned = True
        self._ray = ray
        return ray

    def count(self, max_jobs: int) -> int:
        ray = self._connect()
        cpus = int(ray.cluster_resources().get("CPU", 1))
        return max(1, min(self.workers or cpus, max_jobs))

    @contextmanager
    def start(self, setup, context, max_jobs):
        ray = self._connect()
        n = self.count(max_jobs)
        actor = ray.remote(num_cpus=1)(_RayWorker)
        env = {k: v for k, v in os.environ.items() if k.startswith(("FLANMIX_", "HF_"))}
        ref = ray.put(context)  # sent once, shared by the actors on a node
        actors = [actor.remote(setup, ref, env, os.getcwd()) for _ in range(n)]
        try:
            yield _RayWorkers(ray, actors)
        finally:
            for a in actors:
                ray.kill(a)


def make_executor(
    kind: str = "local",
    *,
    workers: int | None = None,
    address: str | None = None,
    scratch: str | None = None,
) -> LocalExecutor | RayExecutor:
    """The executor named ``kind`` (``local`` or ``ray``); ``scratch``: a folder or fsspec URL for
    the workers' pieces and shards (default: the staging folder next to OUT)."""
    if kind == "local":
        if address:
            raise CompileError(
                "a Ray address needs the ray executor", hint="add --executor ray (or executor: ray)"
            )
        return LocalExecutor(workers, scratch)
    if kind == "ray":
        return RayExecutor(workers, address, scratch)
    raise CompileError(f"unknown executor {kind!r}", hint="use one of: " + ", ".join(EXECUTORS))
