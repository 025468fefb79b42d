"""Every request to load, unload, rebuild, test or take in a target's verdict, in one
ordered queue, served by one worker.

Requests come from D-Bus (Reload, Unload, Test), SIGHUP, the kernel hooks (they call Reload),
watched files and CPU or memory hotplug (kdumpd/watch.py), and the daemon itself (the
first load at start, the capture initramfs once it is built). The worker serves them one
at a time in the order they came. The one liberty taken is coalescing: a reload merges
into a reload queued just before it (a kernel package writes the image, then the
initrd, then runs two hooks: one load, after a quiet while), and an unload drops the
reloads queued before it, which it would undo anyway. A target's verdict (its check runs
in kdumpd-target-check.service) only changes LastError: reloads merge across it.

Whether a reload loads when no file changed is decided when it is asked for: a person's
or a hook's request does, except when it came while a reload was running (that load has
read, or is reading, the files the asker changed; only files changed since then load
again); a hotplug event always does (the memory map changed, not the files); a file
event never does. Nothing is counted: the daemon's State is "loading" exactly while the
queue holds or serves something other than a target's verdict.

Nothing here knows about GLib or D-Bus; the clock is injectable for the tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from kdumpd import journal

# TARGET: the target's verdict changed (kdumpd-target-check.service), for LastError.
RELOAD, UNLOAD, BUILD, TEST, TARGET = "reload", "unload", "build", "test", "target"

QUIET_S = 2.0  # after a file event or a hotplug event: more may follow
# After a request from a hook or a person: hooks run once their package's files are in
# place, and a person wants an answer; the wait only gathers requests sent together (the
# two hooks of one kernel install).
ASKED_QUIET_S = 0.5
MAX_WAIT_S = 20.0  # a steady stream of events must not postpone the reload for ever


@dataclass
class Request:
    kind: str  # RELOAD, UNLOAD, BUILD, TEST or TARGET
    why: list[str]  # what asked for it, in words for the journal
    must: bool  # load even when no file changed since the last reload read them
    asked: bool  # someone asked for it (D-Bus, SIGHUP, a hook), or the daemon itself
    first: float  # when the first of the requests merged into it came
    due: float  # when it may be served

    @property
    def reason(self) -> str:
        return ", ".join(self.why)


@dataclass
class Queue:
    clock: Callable[[], float] = time.monotonic
    # Called (outside the lock) whenever busy() may have changed.
    on_change: Callable[[], None] = lambda: None
    running: Request | None = None
    _waiting: list[Request] = field(default_factory=list)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def put(
        self, kind: str, why: str, *, asked: bool = False, must: bool = False, quiet: float = 0.0
    ) -> None:
        """Queue a request, to be served `quiet` seconds from now at the earliest (more may
        follow). asked: by someone (D-Bus, SIGHUP, a hook); must: load even if no file
        changed (hotplug, the daemon's start)."""
        with self._cond:
            now = self.clock()
            reloading = self.running is not None and self.running.kind == RELOAD
            must = must or (asked and not reloading)
            if kind == UNLOAD:
                self._waiting = [r for r in self._waiting if r.kind != RELOAD]
            # A target's verdict only changes LastError: reloads merge across it.
            others = [r for r in self._waiting if kind == TARGET or r.kind != TARGET]
            last = others[-1] if others else None
            if last and last.kind == kind and kind != BUILD:
                if why not in last.why:
                    last.why.append(why)
                last.must = last.must or must
                last.asked = last.asked or asked
                last.due = min(max(last.due, now + quiet), last.first + MAX_WAIT_S)
            else:
                self._waiting.append(Request(kind, [why], must, asked, now, now + quiet))
            self._cond.notify_all()
        self.on_change()

    def busy(self) -> bool:
        """Something that loads, unloads, builds or tests is queued or served (a target's
        verdict is none of these: State stays what it was)."""
        with self._cond:
            return any(r.kind != TARGET for r in (self.running, *self._waiting) if r)

    def waiting(self) -> list[Request]:
        with self._cond:
            return list(self._waiting)

    def take(self, timeout: float | None = None) -> Request | None:
        """The next request once it is due (the worker's; it then calls done()); None if
        none is due within `timeout` seconds."""
        deadline = None if timeout is None else self.clock() + timeout
        with self._cond:
            while True:
                now = self.clock()
                if self._waiting and self._waiting[0].due <= now:
                    self.running = self._waiting.pop(0)
                    return self.running
                wait = self._waiting[0].due - now if self._waiting else None
                if deadline is not None:
                    if now >= deadline:
                        return None
                    wait = min(wait, deadline - now) if wait is not None else deadline - now
                self._cond.wait(wait)

    def done(self) -> None:
        with self._cond:
            self.running = None
            self._cond.notify_all()
        self.on_change()

    def drain(self, timeout: float) -> None:
        """Drop what waits, and wait (at most `timeout` s) for the request being served to
        end: a daemon that exits ends no load half-way."""
        with self._cond:
            self._waiting.clear()
            self._cond.wait_for(lambda: self.running is None, timeout)


WORKER_STUCK_S = 300.0  # a load takes seconds; a build a few more. Longer is a hang.


class Worker:
    """The queue's one owner: a thread that serves the requests in order with `serve`,
    then tells `on_served` (the D-Bus layer's, once it is up)."""

    def __init__(self, queue: Queue, serve: Callable[[Request], None]) -> None:
        self.queue = queue
        self._serve = serve
        self._lock = threading.Lock()
        self._on_served: Callable[[], None] | None = None
        self._served = 0
        self._since = 0.0  # when the request being served began
        self._thread = threading.Thread(target=self._run, name="kdumpd-worker", daemon=True)
        self._thread.start()

    def connect(self, on_served: Callable[[], None]) -> None:
        """Tell on_served after each request from now on, and now if one was served before."""
        with self._lock:
            self._on_served = on_served
            served = self._served
        if served:
            on_served()

    def _run(self) -> None:
        while True:
            request = self.queue.take()
            assert request is not None
            with self._lock:
                self._since = self.queue.clock()
            try:
                self._serve(request)
            except Exception as e:  # a bug must not kill the worker and freeze the daemon
                journal.send(journal.ERR, f"internal error serving {request.kind}: {e!r}")
            finally:
                with self._lock:
                    self._served += 1
                    callback = self._on_served
                self.queue.done()
                if callback:
                    callback()

    def stuck(self) -> str:
        """What the worker has been doing for longer than WORKER_STUCK_S, or ""."""
        running = self.queue.running
        with self._lock:
            since = self._since
        if running is None or self.queue.clock() - since < WORKER_STUCK_S:
            return ""
        return f"{running.kind} ({running.reason}) for {self.queue.clock() - since:.0f} s"
