"""The one request queue (kdumpd/requests.py) with a fake clock: order, coalescing, which
reloads must load, the derived busy state, and the worker."""

from __future__ import annotations

import threading

from kdumpd import requests
from kdumpd.requests import BUILD, RELOAD, TARGET, UNLOAD, Queue


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _queue() -> tuple[Queue, Clock]:
    clock = Clock()
    return Queue(clock=clock), clock


def _serve(q: Queue) -> requests.Request | None:
    """What the worker would take now, served at once."""
    r = q.take(timeout=0)
    if r is not None:
        q.done()
    return r


def test_a_burst_of_file_events_becomes_one_reload_after_the_last() -> None:
    q, clock = _queue()
    # a kernel package: the image, modules, then the initrd
    for t in (10.0, 10.1, 10.5, 11.9):
        clock.now = t
        q.put(RELOAD, f"file at {t}", quiet=2.0)
        clock.now = t + 1.9
        assert _serve(q) is None
    clock.now = 13.9
    r = _serve(q)
    assert r is not None and r.why == [f"file at {t}" for t in (10.0, 10.1, 10.5, 11.9)]
    assert not r.must and not q.busy()


def test_a_steady_stream_still_reloads_within_max_wait() -> None:
    q, clock = _queue()
    served = []
    while clock.now < 45:
        q.put(RELOAD, "tick", quiet=2.0)
        clock.now += 1.0
        if _serve(q):
            served.append(clock.now)
    assert served == [20.0, 40.0]


def test_requests_are_served_in_order_and_unload_wins_over_the_reloads_before_it() -> None:
    q, clock = _queue()
    q.put(RELOAD, "config changed", quiet=2.0)
    q.put(RELOAD, "Reload from kdumpd[1]", asked=True, quiet=0.5)
    q.put(UNLOAD, "Unload from kdumpd[2]")  # 0.15 s later, in the issue
    assert [r.kind for r in q.waiting()] == [UNLOAD]  # served at once, not after 2 s
    q.put(RELOAD, "Reload from kdumpd[3]", asked=True, quiet=0.5)
    q.put(UNLOAD, "Unload from kdumpd[4]")
    q.put(UNLOAD, "Unload from kdumpd[5]")
    # the reload between them is undone by the second unload; then the unloads are one
    assert [(r.kind, r.why) for r in q.waiting()] == [
        (UNLOAD, [f"Unload from kdumpd[{n}]" for n in (2, 4, 5)])
    ]
    q.put(RELOAD, "Reload from kdumpd[6]", asked=True, quiet=0.5)
    clock.now = 1.0
    assert [r.kind for r in iter(lambda: _serve(q), None)] == [UNLOAD, RELOAD]


def test_which_reloads_must_load() -> None:
    q, clock = _queue()
    q.put(RELOAD, "a file", quiet=2.0)
    assert not q.waiting()[0].must  # only if the files changed
    q.put(RELOAD, "Reload from busctl[7]", asked=True, quiet=0.5)
    assert q.waiting()[0].must and q.waiting()[0].asked  # someone asked: load
    clock.now = 5.0
    assert q.take(timeout=0) is not None  # ... and it is running now
    q.put(RELOAD, "the kernel hook", asked=True, quiet=0.5)
    # The load under way reads the files the hook's package wrote: another loads only
    # if files changed since.
    assert not q.waiting()[0].must
    q.put(RELOAD, "cpu2 online", must=True, quiet=2.0)  # the memory map, not the files
    assert q.waiting()[0].must
    q.done()


def test_busy_while_anything_is_queued_or_served_and_said_when_it_changes() -> None:
    q = _queue()[0]
    seen: list[bool] = []
    q.on_change = lambda: seen.append(q.busy())
    assert not q.busy()
    q.put(BUILD, "the capture initramfs")
    q.put(BUILD, "the capture initramfs")  # builds do not merge
    assert len(q.waiting()) == 2
    r = q.take(timeout=0)
    assert r is not None and q.busy()
    q.done()
    _serve(q)
    assert seen == [True, True, True, False] and not q.busy()


def test_the_worker_serves_in_order_and_says_when_it_is_stuck() -> None:
    q, clock = _queue()
    served: list[str] = []
    release = threading.Event()
    started = threading.Event()

    def serve(r: requests.Request) -> None:
        served.append(r.reason)
        if r.reason == "hang":
            started.set()
            release.wait(30)
        if r.reason == "bug":
            raise RuntimeError("a bug")

    worker = requests.Worker(q, serve)
    done = threading.Event()
    worker.connect(lambda: done.set() if len(served) == 3 and not q.busy() else None)
    q.put(BUILD, "bug")
    q.put(UNLOAD, "after the bug")  # a failing request does not stop the worker
    q.put(RELOAD, "hang", must=True)
    assert started.wait(30)
    assert worker.stuck() == ""
    clock.now += requests.WORKER_STUCK_S + 1
    assert worker.stuck() == f"reload (hang) for {requests.WORKER_STUCK_S + 1:.0f} s"
    release.set()
    assert done.wait(30)
    assert served == ["bug", "after the bug", "hang"]


def test_a_target_s_verdict_neither_splits_reloads_nor_counts_as_loading() -> None:
    """A verdict that lands during a kernel install: still one reload, and State is not
    "loading" for a verdict alone."""
    q, clock = _queue()
    seen: list[bool] = []
    q.on_change = lambda: seen.append(q.busy())
    q.put(TARGET, "verdict")
    assert not q.busy() and seen == [False]
    q.put(RELOAD, "image written", quiet=2.0)
    q.put(TARGET, "verdict again")
    q.put(RELOAD, "Reload from hook", asked=True, quiet=0.5)
    kinds = [(r.kind, r.why) for r in q.waiting()]
    assert kinds == [
        (TARGET, ["verdict"]),
        (RELOAD, ["image written", "Reload from hook"]),
        (TARGET, ["verdict again"]),
    ]
    r = q.take(timeout=0)
    assert r is not None and r.kind == TARGET and q.busy()  # the reload still waits
    q.done()
    clock.now += 2.0
    r = _serve(q)
    assert r is not None and r.kind == RELOAD and r.must and not q.busy()
    assert _serve(q) is not None and not q.busy() and not q.waiting()
