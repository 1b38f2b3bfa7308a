"""The local executor: warm worker processes, one context per run, errors and stops."""

from __future__ import annotations

import os

import pytest

from flanmix.errors import CompileError
from flanmix.executor import LocalExecutor


def _setup(context):
    return {"context": context, "pid": os.getpid()}


def _job(state, x):
    if x == "boom":
        raise ValueError("boom")
    return state["context"], state["pid"], x * 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
def test_runs_share_the_warm_processes_and_each_gets_its_context():
    with LocalExecutor(workers=2) as ex:
        with ex.start(_setup, "first", max_jobs=8) as w:
            assert w.count == 2
            one = list(w.map(_job, range(8)))
        with ex.start(_setup, "second", max_jobs=8) as w:
            two = list(w.map(_job, range(8)))
    assert [r[2] for r in one] == [x * 2 for x in range(8)]  # in job order
    assert {r[0] for r in one} == {"first"} and {r[0] for r in two} == {"second"}
    assert os.getpid() not in {r[1] for r in one + two}
    assert len({r[1] for r in one + two}) <= 2  # the same two processes served both runs


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
def test_a_failing_job_stops_the_workers_and_raises_one_error():
    with LocalExecutor(workers=2) as ex:
        with (
            pytest.raises(CompileError, match="ValueError: boom"),
            ex.start(_setup, "ctx", max_jobs=4) as w,
        ):
            list(w.map(_job, [1, "boom", 3]))
        assert ex._pool is None  # stopped at once
        with ex.start(_setup, "again", max_jobs=4) as w:  # a later run gets fresh workers
            assert [r[2] for r in w.map(_job, [5])] == [10]


def _ran(state, x):
    if x == "boom":
        raise ValueError("boom")
    path = state["context"]
    with open(path, "a") as fh:
        fh.write(f"{x}\n")
    return os.getpid()


def test_guided_batches_keep_job_order_and_shrink_to_single_jobs():
    from flanmix.executor import guided_batches

    batches = list(guided_batches(iter(range(20)), 2))
    assert [len(b) for b in batches] == [5, 3, 3, 2, 1, 1, 1, 1, 1, 1, 1]
    assert [j for b in batches for j in b] == list(range(20))
    assert list(guided_batches([], 4)) == []
    assert [len(b) for b in guided_batches(range(3), 8)] == [1, 1, 1]
    assert [len(b) for b in guided_batches(range(10), 1)] == [5, 2, 1, 1, 1]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
def test_a_pool_worker_runs_a_batch_of_neighbouring_jobs_and_stops_at_its_first_error(tmp_path):
    log = tmp_path / "ran.txt"
    with LocalExecutor(workers=2) as ex:
        with ex.start(_setup, str(log), max_jobs=20) as w:
            pids = list(w.map(_ran, range(20)))
        assert len(set(pids[:5])) == 1  # the first batch: a quarter of the jobs, one worker
        log.write_text("")
        with (
            pytest.raises(CompileError, match="ValueError: boom"),
            ex.start(_setup, str(log), max_jobs=20) as w,
        ):
            list(w.map(_ran, [0, 1, "boom", 3, 4, *range(5, 20)]))
    ran = log.read_text().split()
    assert "3" not in ran and "4" not in ran  # the rest of the failing job's batch never ran


def test_one_worker_runs_in_this_process_without_a_pool():
    with LocalExecutor(workers=1) as ex:
        assert ex._pool is None
        with ex.start(_setup, "solo", max_jobs=4) as w:
            assert [r[1] for r in w.map(_job, [1, 2])] == [os.getpid()] * 2


def test_start_method_forks_on_linux_unless_told_otherwise(monkeypatch):
    import sys
    import threading

    from flanmix.executor import _start_method

    monkeypatch.delenv("FLANMIX_START_METHOD", raising=False)
    # this test process may hold other libraries' threads (Ray, tqdm): only the main one here
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])
    want = "fork" if sys.platform == "linux" else "spawn"
    assert _start_method().get_start_method() == want
    monkeypatch.setenv("FLANMIX_START_METHOD", "spawn")
    assert _start_method().get_start_method() == "spawn"
    monkeypatch.setenv("FLANMIX_START_METHOD", "threads")
    with pytest.raises(CompileError, match="FLANMIX_START_METHOD"):
        _start_method()


def test_another_thread_in_the_caller_means_spawn(monkeypatch):
    import threading

    from flanmix.executor import _start_method

    monkeypatch.delenv("FLANMIX_START_METHOD", raising=False)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="someone-elses-thread", daemon=True)
    t.start()
    try:
        assert _start_method().get_start_method() == "spawn"
    finally:
        stop.set()
        t.join()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_forked_and_spawned_workers_give_the_same_results(monkeypatch, method):
    monkeypatch.setenv("FLANMIX_START_METHOD", method)
    with LocalExecutor(workers=2) as ex, ex.start(_setup, method, max_jobs=4) as w:
        got = list(w.map(_job, range(6)))
    assert [(r[0], r[2]) for r in got] == [(method, x * 2) for x in range(6)]


def _signals(_state, _job):
    import signal

    return (
        signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
        and signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set()),
        signal.getsignal(signal.SIGINT) is signal.default_int_handler,
    )


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
def test_forked_workers_do_not_keep_the_callers_sigterm_handler(monkeypatch):
    """The command line turns SIGTERM into an unwinding exception; a forked worker that kept that
    handler could survive the pool's SIGTERM and hang the compile at its end."""
    import signal

    monkeypatch.setenv("FLANMIX_START_METHOD", "fork")

    def unwind(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, unwind)
    try:
        with LocalExecutor(workers=2) as ex, ex.start(_setup, "sig", max_jobs=2) as w:
            got = list(w.map(_signals, [0, 1]))
            # SIGTERM was blocked only while the pool forked: the caller's mask is as it was
            assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert got == [(True, True), (True, True)]  # workers: the default handler, not blocked


def _frozen(_state, _x):
    import gc

    return gc.get_freeze_count()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
def test_forked_workers_start_from_a_frozen_collector_and_the_caller_is_left_as_it_was(
    monkeypatch,
):
    import gc

    monkeypatch.setenv("FLANMIX_START_METHOD", "fork")
    held = [{"n": i} for i in range(1000)]  # objects the caller holds when forking
    assert gc.get_freeze_count() == 0
    with LocalExecutor(workers=2) as ex, ex.start(_setup, None, max_jobs=2) as w:
        assert gc.get_freeze_count() == 0  # unfrozen in the caller once forked
        counts = list(w.map(_frozen, range(2)))
    assert all(c >= len(held) for c in counts)  # the workers' collectors skip them
    gc.freeze()  # a caller that froze objects itself: left alone
    try:
        with LocalExecutor(workers=2) as ex, ex.start(_setup, None, max_jobs=2) as w:
            list(w.map(_frozen, range(2)))
        assert gc.get_freeze_count() > len(held)  # not unfrozen by the executor
    finally:
        gc.unfreeze()


def _own(_state, _x):
    from flanmix.executor import own_worker

    return own_worker()


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores for two workers")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_pool_workers_know_they_are_flanmix_processes_and_the_caller_does_not(monkeypatch, method):
    from flanmix.executor import own_worker

    monkeypatch.setenv("FLANMIX_START_METHOD", method)
    with LocalExecutor(workers=2) as ex, ex.start(_setup, None, max_jobs=2) as w:
        assert list(w.map(_own, range(2))) == [True, True]
    with LocalExecutor(workers=1) as ex, ex.start(_setup, None, max_jobs=2) as w:
        assert list(w.map(_own, range(2))) == [False, False]  # in this process
    assert own_worker() is False


def test_local_workers_are_on_this_machine_and_a_machine_has_one_id():
    from flanmix.executor import machine_id

    for n in (1, 2):
        with LocalExecutor(workers=n) as ex, ex.start(_setup, None, max_jobs=2) as w:
            assert w.one_machine
    assert machine_id() == machine_id() and machine_id().startswith(os.uname().nodename)


def _interrupted(_state, _x):
    raise KeyboardInterrupt


def test_ctrl_c_in_a_job_run_by_the_caller_unwinds_as_an_interrupt():
    """One worker runs its jobs in the caller's process: a Ctrl-C there (or SIGTERM, which the
    command line turns into KeyboardInterrupt) must stop the run as an interrupt ("interrupted",
    exit 130), not come back as a job's error ("error: KeyboardInterrupt")."""
    with (
        LocalExecutor(workers=1) as ex,
        ex.start(_setup, None, max_jobs=3) as w,
        pytest.raises(KeyboardInterrupt),
    ):
        list(w.map(_interrupted, range(3)))
