"""The daemon: one Registry serving a store's mailbox for the pipelines of an application.

`stageline serve APP --store URL` builds a `Daemon` and calls `serve` until SIGTERM/SIGINT.
At start it recovers orphaned runs of every pipeline (`registry.recover(factory)`); then it
waits for requests and, when there may be some (and once a second anyway), claims pending
requests one at a time (a daemon killed while acting strands only that one) and acts on
each. A store with `wait_for_requests(timeout)` (PostgresStore:
LISTEN/NOTIFY) is blocked on, so a request wakes the daemon at once and an idle daemon
sends no queries; on the others (SQLite, memory) the daemon polls the cheap
`mailbox_version()` every `poll_interval` seconds. Then:

    start  -> factory.prepare(entry, run_id, state=..., priority=...).start()
    resume -> factory.resume(run_id, patch).start()
    retry  -> registry.retry(run_id)
    abort  -> factory.abort(run_id, reason)   (the live run, a paused run in the store, or
              the durable abort flag of a run another daemon drives)

and answers it: "done", or "failed" with the error's one-line message. The answer comes
when the action has been taken (the run started, the resume claimed), not when the run ends.

APP is "module:attribute" naming a PipelineFactory, a Pipeline, a list (or dict) of them,
or a callable returning one of those. Every factory is re-bound to the daemon's store and
registry (`factory.bound_to`): the daemon serves exactly the store given by --store, and its
registry keeps paused runs live and supervises failed ones, whatever the factories were
built with. Pipelines are keyed by id; two with one id is an error.

Heartbeats: the daemon writes its row in the store's `daemons` table (owner id, pid, host,
start time, last beat, runs held, lease) at start and every `heartbeat_every` seconds, and
deletes it when `run_daemon` stops cleanly; `stageline status` lists them.

Time: the daemon reads it from the clock of the registry it runs (`registry.clock`), the
one clock of the daemon and of the runs it serves, rather than from an option of its own:
the recovery and idle-claim cadences (its `monotonic()`), the pruning cutoff and a
request's latency (its `wall()`). A `Registry(clock=ManualClock())` drives both in tests.
Only the waits that block on an event (a stop, a NOTIFY) use that event's real timeout.

Logging is configured by the `stageline serve` command (stageline/cli.py), never here:
embedding the daemon leaves the application's logging alone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stageline import _retention as retention
from stageline._answers import Answers
from stageline._daemon_app import _factories as _factories  # re-exported
from stageline._daemon_app import bind_factories, load_app_parts
from stageline._ops_heartbeat import Heartbeat
from stageline._ops_otel import watch_mailbox
from stageline._ops_schedules import served_schedules
from stageline.actors.context import RunContext
from stageline.actors.factory import PipelineFactory
from stageline.actors.logs import library_logger
from stageline.actors.registry import Registry
from stageline.core import mailbox
from stageline.core.clock import Clock, iso_utc
from stageline.core.errors import RunExistsError, RunStateError, StagelineError, StoreError
from stageline.core.mailbox import Request
from stageline.core.store import Store

LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True, slots=True)
class DaemonOptions:
    """How the daemon polls, recovers and stops. Seconds throughout.

    `recover_every`: how often orphaned runs (their owner's lease ran out) are looked for
    again after the start; None: only at start. `wait_slice`: on a store the daemon blocks
    on (`wait_for_requests`), the longest single wait, so a stop is noticed that soon.
    `keep_answered`: how long an answered mailbox request stays in the store, for its
    sender to read the answer; older ones are deleted at start and with each recovery
    pass. None keeps them all. `retain`: likewise, how long a finished run (succeeded,
    failed, aborted, expired) stays after its last update; None keeps them all.
    `claim_limit`: requests claimed at a time; each is acted on before the next claim, so
    a daemon killed while acting leaves only that one claimed. `error_backoff`: after a
    store error the loop waits this long, doubling with each error in a row up to
    `max_error_backoff`, and starts again from the beginning after a pass that worked.
    `heartbeat_every`: how often the daemon's heartbeat row is written (`stageline
    status` reads it; `serve` uses a third of the lease); None writes none.
    """

    poll_interval: float = 0.01
    wait_slice: float = 0.2
    idle_claim: float = 1.0
    claim_limit: int = 1
    stop_timeout: float = 10.0
    recover_every: float | None = 30.0
    keep_answered: float | None = 86_400.0
    retain: float | None = None
    error_backoff: float = 0.1
    max_error_backoff: float = 5.0
    heartbeat_every: float | None = 10.0


@dataclass(slots=True)
class _Loop:
    """What the serving loop remembers from one pass to the next."""

    last_claim: float
    last_recover: float
    last_beat: float
    seen: int | None = None
    errors: int = 0


# --- the daemon ----------------------------------------------------------------------------


class Daemon:
    """Acts on a store's mailbox with one registry. `serve` blocks; `poll_once` is one pass.

    `on_start(context)` is called with every RunContext the daemon starts, resumes or
    retries (for an application embedding the daemon: metrics, tests). `clock` is the
    registry's (see the module's docstring). `schedules`: the APP's, fired once started.
    """

    schedules: tuple[Any, ...] = ()

    def __init__(
        self,
        factories: Mapping[str, PipelineFactory],
        store: Store,
        registry: Registry,
        options: DaemonOptions | None = None,
        on_start: Callable[[RunContext], Any] | None = None,
    ) -> None:
        self.factories = dict(factories)
        self.on_start = on_start
        self.store = store
        self.registry = registry
        self.clock: Clock = registry.clock
        self.options = options or DaemonOptions()
        self.name = str(registry.owner)  # claims requests under the registry's lease owner id
        self.log = library_logger(None, daemon=self.name)  # stdlib "stageline" unless configured
        self.heartbeat = Heartbeat(store, registry, self.log)
        self.answers = Answers(store, self.log)
        self._actions: dict[str, Callable[[Request], None]] = {
            mailbox.START: self._start,
            mailbox.RESUME: self._resume,
            mailbox.RETRY: self._retry,
            mailbox.ABORT: self._abort,
        }

    def recover(self, *, quiet: bool = False) -> None:
        """Resume the runs a dead process left "running" (`registry.recover`, per pipeline).

        `quiet`: log only when some run was recovered (the periodic pass).
        """
        for pipeline_id, factory in self.factories.items():
            try:
                recovered = self.registry.recover(factory)
            except StagelineError as exc:
                self.log.error("daemon:recover_failed", pipeline_id=pipeline_id, error=str(exc))
                continue
            if recovered or not quiet:
                runs = [context.run_id for context in recovered]
                self.log.info("daemon:recovered", pipeline_id=pipeline_id, runs=runs)

    def prune(self) -> None:
        """Delete the mailbox requests answered more than `keep_answered` seconds ago."""
        keep = self.options.keep_answered
        if keep is None:
            return
        try:
            pruned = self.store.prune_requests(self.clock.wall() - keep)
        except StagelineError as exc:
            self.log.error("daemon:prune_failed", error=str(exc))
            return
        if pruned:
            self.log.info("daemon:pruned", requests=pruned)

    def retain(self) -> None:
        """Delete the finished runs last updated more than `retain` seconds ago."""
        keep = self.options.retain
        if keep is None:
            return
        before = self.clock.wall() - keep
        try:
            deleted = retention.delete_finished(self.store, before, retention.DELETABLE)
        except StagelineError as exc:
            self.log.error("daemon:retain_failed", error=_one_line(str(exc)))
            return
        if deleted:
            self.log.info("daemon:deleted_runs", runs=deleted, updated_before=iso_utc(before))

    def check_writable(self) -> None:
        """StoreError unless the store takes a write: `serve` fails at start on a store it
        cannot write (a read-only file, a role without privileges), not request by
        request. The write is harmless: pruning requests answered before 1970."""
        try:
            self.store.prune_requests(0.0)
        except StagelineError as exc:
            raise StoreError(
                f"the daemon cannot write to its store ({_one_line(str(exc))}); serve needs a "
                "store it can write: check the file's permissions or the role's privileges"
            ) from None

    def start(self) -> None:
        """What `serve` does first: fail on a store it cannot write, write the first
        heartbeat, recover orphaned runs, prune the mailbox and retain finished runs."""
        self.check_writable()
        self.beat()
        self.recover()
        self.prune()
        self.retain()

    def beat(self) -> None:
        """Write this daemon's heartbeat (unless `heartbeat_every` is None)."""
        if self.options.heartbeat_every is not None:
            self.heartbeat.beat()

    def forget(self) -> None:
        """Remove this daemon's heartbeat: it stopped cleanly."""
        if self.options.heartbeat_every is not None:
            self.heartbeat.remove()

    def serve(self, stop: threading.Event) -> None:
        """Serve the mailbox until `stop` is set. A store error is logged, never fatal;
        errors in a row back off (`error_backoff`, doubling, up to `max_error_backoff`)."""
        wait = _waiter(self.store)
        waits = "notify" if wait is not None else f"poll every {self.options.poll_interval}s"
        self.log.info("daemon:ready", pipelines=sorted(self.factories), waits=waits)
        now = self.clock.monotonic()
        loop = _Loop(last_claim=now, last_recover=now, last_beat=now)
        while not stop.is_set():
            try:
                self._serve_pass(stop, wait, loop)
            except StagelineError as exc:
                loop.errors += 1
                delay = self.backoff(loop.errors)
                self.log.error("daemon:store_error", error=_one_line(str(exc)), retry_in=delay)
                self._rest(stop, delay)
            else:
                loop.errors = 0

    def backoff(self, errors: int) -> float:
        """How long to wait after the `errors`-th store error in a row."""
        first, most = self.options.error_backoff, self.options.max_error_backoff
        return float(min(most, first * 2 ** min(errors - 1, 64)))

    def _rest(self, stop: threading.Event, seconds: float) -> None:
        """Wait `seconds`, or until `stop` is set."""
        stop.wait(seconds)

    def _serve_pass(
        self, stop: threading.Event, wait: Callable[[float], bool] | None, loop: _Loop
    ) -> None:
        """One turn of `serve`: a recovery pass if due, then the mailbox if there is news."""
        if self._recovery_due(loop.last_recover):
            loop.last_recover = self.clock.monotonic()
            self.recover(quiet=True)
            self.prune()
            self.retain()
        if _due(self.options.heartbeat_every, loop.last_beat, self.clock.monotonic()):
            loop.last_beat = self.clock.monotonic()
            self.beat()
        if wait is not None:  # blocks until a NOTIFY (or the next timer is due)
            news = wait(self._wait_time(loop.last_claim, loop.last_recover, loop.last_beat))
        else:
            version = self.store.mailbox_version()
            news, loop.seen = version != loop.seen, version
        if news:  # maybe an abort flag another daemon set on a run of ours (SPEC 16)
            self.registry.supervisor.check_aborts()
        if news or self.clock.monotonic() - loop.last_claim >= self.options.idle_claim:
            loop.last_claim = self.clock.monotonic()
            while self.poll_once() and not stop.is_set():
                pass
        if wait is None:
            self._rest(stop, self.options.poll_interval)

    def _recovery_due(self, last_recover: float) -> bool:
        return _due(self.options.recover_every, last_recover, self.clock.monotonic())

    def _wait_time(
        self, last_claim: float, last_recover: float, last_beat: float | None = None
    ) -> float:
        """How long to block for requests: until a stop check, idle claim, recovery or
        heartbeat is due."""
        now: float = self.clock.monotonic()
        due = [self.options.wait_slice, last_claim + self.options.idle_claim - now]
        for every, last in (
            (self.options.recover_every, last_recover),
            (self.options.heartbeat_every, last_beat),
        ):
            if every is not None and last is not None:
                due.append(last + every - now)
        return max(0.0, min(due))

    def poll_once(self) -> int:
        """Claim pending requests (`claim_limit` at most) and act on each; how many.

        Every claimed request is answered whatever happens: if acting on one or answering
        it fails (the store), the rest of its batch is answered failed, never left claimed.
        """
        self.answers.give_owed()
        requests = self.store.claim_requests(self.name, self.options.claim_limit)
        acted = 0
        try:
            for request in requests:
                acted += 1  # from here this request is answered by handle()
                self.handle(request)
        finally:
            self._not_acted_on(requests[acted:])
        return len(requests)

    def _not_acted_on(self, requests: Iterable[Request]) -> None:
        """Answer claimed requests this daemon will not act on (failed, to be re-sent)."""
        for request in requests:
            error = (
                f"the daemon {self.name} claimed this request but met a store error before "
                f"acting on it; nothing was done to run {request.run_id!r}: send it again"
            )
            self.answers.give(request.request_id, error)

    def handle(self, request: Request) -> None:
        """Act on one claimed request and answer it; never raises for the request's sake."""
        log = self.log.bind(request_id=request.request_id, kind=request.kind, run_id=request.run_id)
        error: str | None = None
        try:
            self._actions[request.kind](request)
        except StagelineError as exc:
            error = _one_line(str(exc))
        except Exception as exc:  # a bug (ours or the app's): answer it, keep serving
            log.exception("request:crashed")
            error = f"the daemon failed on this request: {type(exc).__name__}: {exc}"
        latency = self.clock.wall() - request.posted_at
        if error is None:
            log.info("request:done", latency=round(latency, 4))
        else:
            log.warning("request:failed", error=error)
        self.answers.give(request.request_id, error)

    # --- the actions ------------------------------------------------------------------

    def _factory(self, pipeline_id: str, run_id: str) -> PipelineFactory:
        factory = self.factories.get(pipeline_id)
        if factory is None:
            raise StagelineError(
                f"run {run_id!r}: pipeline {pipeline_id!r} is not served by this daemon "
                f"(it serves: {', '.join(sorted(self.factories))}); start the daemon with "
                "an APP that includes it"
            )
        return factory

    def _factory_for(self, request: Request) -> PipelineFactory:
        """The factory of the request's run, once the run's status allows the request."""
        record = self.store.load_run(request.run_id)
        problem = mailbox.status_problem(request.kind, request.run_id, record.status)
        if problem is not None:
            raise RunStateError(problem)
        return self._factory(record.pipeline_id, request.run_id)

    def _start(self, request: Request) -> None:
        """Prepare and start the run; a start of a run id already stored makes no second
        run: done (logged "request:attached") if it is this pipeline's, else failed."""
        factory = self._factory(str(request.pipeline_id), request.run_id)
        args = request.args
        try:
            priority = args.get("priority") or 0  # prepare() refuses one that is no int
            context = factory.prepare(
                args.get("entry"), request.run_id, state=args.get("state"), priority=priority
            )
        except RunExistsError:  # posted twice, or raced: one run; attaching checks its pipeline
            factory.prepare(run_id=request.run_id, if_exists="attach")
            self.log.info("request:attached", request_id=request.request_id, run_id=request.run_id)
            return
        self._started(context, context.start())

    def _resume(self, request: Request) -> None:
        factory = self._factory_for(request)
        context = factory.resume(request.run_id, request.args.get("patch"))
        self._started(context, context.start())

    def _retry(self, request: Request) -> None:
        factory = self._factory_for(request)
        context = self.registry.retry(request.run_id, factory, patch=request.args.get("patch"))
        self._started(context, None)

    def _abort(self, request: Request) -> None:
        self._factory_for(request).abort(request.run_id, request.args.get("reason"))

    def _started(self, context: RunContext, future: Any) -> None:
        if future is not None:
            run_id = context.run_id

            def ended(done: Any) -> None:
                exc = done.exception()
                if exc is not None:
                    self.log.error("run:error", run_id=run_id, error=str(exc))

            future.add_done_callback(ended)
        if self.on_start is not None:
            self.on_start(context)


def _waiter(store: Store) -> Callable[[float], bool] | None:
    """The store's `wait_for_requests(timeout)` if it has one (PostgresStore), else None.

    Only posted requests wake the daemon, not answers (every daemon's answers would wake
    every daemon).
    """
    wait = getattr(store, "wait_for_requests", None)
    if not callable(wait):
        return None
    return lambda timeout: bool(wait(timeout, answers=False))


def _due(every: float | None, last: float, now: float) -> bool:
    """Whether a task done every `every` seconds (None: never), last at `last`, is due."""
    return every is not None and now - last >= every


def _one_line(message: str) -> str:
    return " ".join(message.split())


# --- the process ---------------------------------------------------------------------------


def run_daemon(
    app: str,
    store_url: str,
    *,
    options: DaemonOptions | None = None,
    registry_options: Mapping[str, Any] | None = None,
    on_ready: Callable[[Daemon], Any] | None = None,
) -> None:
    """`stageline serve`: serve until SIGTERM or SIGINT, then stop the registry gracefully.

    `registry_options` are Registry's keyword arguments (default_pause_timeout,
    supervision, lease_ttl, ...). `on_ready(daemon)` is called with the daemon built,
    before it starts (`Daemon.start`: recovery, first heartbeat) and serves the mailbox.
    """
    import signal

    options = options or DaemonOptions()
    factories, schedules = load_app_parts(app)
    registry = Registry(**(registry_options or {}))
    store = _store_of(store_url, registry)
    stop = threading.Event()
    try:
        daemon = Daemon(bind_factories(factories, store, registry), store, registry, options)
        daemon.schedules = tuple(schedules)
        watch_mailbox(store)  # stageline.mailbox.pending, when a meter provider is set
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, frame: _set_later(stop))
        if on_ready is not None:
            on_ready(daemon)
        daemon.start()
        with served_schedules(daemon):
            daemon.serve(stop)
        daemon.log.info("daemon:stopping", timeout=options.stop_timeout)
    finally:
        registry.stop(options.stop_timeout)
        if stop.is_set():  # a clean stop (serve returned): it no longer serves the store
            daemon.forget()
        store.close()
    daemon.log.info("daemon:stopped")


def _store_of(store_url: str, registry: Registry) -> Store:
    """The daemon's store, on its registry's clock (one clock for both); the registry is
    stopped if it cannot be opened. `memory://` is refused: no other process could reach it."""
    from stageline.stores.url import open_store, serving_url

    try:
        return open_store(serving_url(store_url), clock=registry.clock)
    except BaseException:
        registry.stop()
        raise


def _set_later(event: threading.Event) -> None:
    """Set `event` from a signal handler. The handler runs on the main thread between two
    bytecodes, maybe while that thread holds the event's own lock (inside `event.wait`);
    `event.set()` right there would wait for that lock forever. A short-lived thread
    takes the lock once the main thread lets go of it."""
    threading.Thread(target=event.set, name="stageline-signal", daemon=True).start()
