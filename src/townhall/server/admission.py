"""The admission service: the adapter between a join and
``policy.admission.decide``, the counters (``store/admission.py``) and the
queue document of each space.

:meth:`Admission.admit` is the one entry point a join goes through (defense
layers in front of it call it after their own checks). It answers
:class:`Admitted` (a listener token), :class:`Queued` (a ticket and where it
stands) or raises a townhall error (refusals, bad tickets).

Spaces without a cap (``max_listeners`` = 0, and every ended space) never
touch the shared store: their join stays memory only. Redis unreachable:
renewals of valid tokens go on (nobody admitted is cut off; the renewal is
counted again once Redis answers), new arrivals and tickets of capped spaces
get 503 with Retry-After and keep their place (a ticket stays valid).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from townhall import metrics
from townhall.config import Settings
from townhall.errors import ServiceUnavailable
from townhall.policy.admission import (
    Capacity,
    Decision,
    Delivery,
    Kind,
    Phase,
    QueueState,
    advance,
    decide,
    may_have_called,
    newest,
    number_of,
    phase_of,
    space_cap,
)
from townhall.policy.eta import eta_s
from townhall.policy.priority import Priority, held_back
from townhall.policy.ratelimit import STORE_ERRORS
from townhall.policy.tickets import REUSED, Ticket, TicketReused, TicketSigner
from townhall.policy.tokens import Claims, TokenSigner
from townhall.server.arrival_window import ArrivalWindow
from townhall.server.queue_doc import QueueDoc, render_queue_doc
from townhall.store.admission import AdmissionStore, ExpirySet
from townhall.store.shared import RedisHealth
from townhall.store.space_index import IndexEntry, SpaceIndex

log = logging.getLogger("townhall.admission")

# A space whose line nobody asked about for this long is no longer ticked.
ACTIVE_S = 120.0
GO_LIVE_CHECK_S = 0.05  # how often the tick loop looks for a space gone live
PAUSED = (
    "Admission is paused for a moment because this server cannot reach its shared counter; "
    "listeners already in keep playing. Try again in a few seconds (your place is kept)."
)


@dataclass(frozen=True, slots=True)
class Admitted:
    token: str
    claims: Claims
    delivery: Delivery
    detail: str


@dataclass(frozen=True, slots=True)
class Queued:
    ticket: str
    expires_at: int
    number: int | None  # None until the pre-start draw
    position: int | None
    eta_s: float | None
    retry_after_s: float
    code: str
    detail: str


class Admission:
    def __init__(
        self,
        settings: Settings,
        store: AdmissionStore,
        tokens: TokenSigner,
        tickets: TicketSigner,
        index: SpaceIndex,
        *,
        health: RedisHealth | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.store = store
        self.tokens = tokens
        self.tickets = tickets
        self.index = index
        self.health = health
        self._clock = clock
        self.node_listeners = ExpirySet()  # this node's listener tokens (node capacity)
        self.node_llhls = ExpirySet()  # of which on LL-HLS (the LL-HLS budget)
        self._lines: dict[str, QueueState] = {}
        self._counts: dict[str, int] = {}
        self._docs: dict[str, QueueDoc] = {}
        self._active: dict[str, float] = {}
        self._lottery_keys: dict[str, bytes] = {}
        # per space, the store read in flight for early tickets (monotonic start)
        self._flights: dict[str, tuple[float, asyncio.Task[QueueState]]] = {}
        self._look_now = asyncio.Event()  # set: look for spaces gone live now
        # issue 10: arrivals numbered by priority within short windows
        self.arrivals = ArrivalWindow(
            store.issue, settings.queue_priority_window_s, settings.queue_priority_max_pending
        )

    # ------------------------------------------------------------ helpers

    def cap_of(self, entry: IndexEntry) -> int:
        """The space's cap now (0: no limit): none once ended (the replay is
        not live capacity), else its own within the deployment's."""
        if entry.state == "ended":
            return 0
        return space_cap(self.settings.max_listeners, entry.max_listeners)

    def capped(self, space_id: str) -> bool:
        """Whether the media of ``space_id`` needs a listener token now."""
        entry = self.index.get(space_id)
        return entry is not None and self.cap_of(entry) > 0

    def _lottery_key(self, space_id: str) -> bytes:
        key = self._lottery_keys.get(space_id)
        if key is None:
            key = self._lottery_keys[space_id] = self.tickets.lottery_key(space_id)
        return key

    def number_of(self, ticket: Ticket, line: QueueState) -> int | None:
        return number_of(ticket.index, line.lottery, self._lottery_key(ticket.space_id))

    def _store_up(self) -> bool:
        return self.health is None or self.health.available()

    def _failed(self, op: str, exc: BaseException) -> None:
        if self.health is not None:
            self.health.failed(op, exc)

    async def line(self, space_id: str) -> QueueState:
        """The line as of the last tick (loaded once when first asked for)."""
        self._active[space_id] = time.monotonic()
        line = self._lines.get(space_id)
        if line is None:
            loaded, count = await self.store.snapshot(space_id, self._clock())
            line = self._accept(space_id, loaded, count)
        return line

    # ------------------------------------------------------------ the entry point

    async def admit(
        self,
        space_id: str,
        entry: IndexEntry,
        subject: str,
        *,
        renewal: Claims | None = None,
        ticket: Ticket | None = None,
        priority: Priority = "normal",
    ) -> Admitted | Queued:
        """Admit, queue or refuse one join (see the module docstring).

        ``renewal``: the verified listener token being renewed; ``ticket``: a
        verified ticket of this space; ``priority``: what the defense layer
        saw (``policy.priority``: who is numbered first). Raises ``ServiceUnavailable`` (refused,
        with Retry-After) or ``TicketReused``.
        """
        arrived = time.monotonic()
        now = self._clock()
        settings = self.settings
        cap = self.cap_of(entry)
        phase = phase_of(
            entry.state,  # type: ignore[arg-type]
            entry.scheduled_for_s,
            now,
            settings.waiting_room_open_s,
        )
        line = QueueState()
        if cap > 0:
            if not self._store_up() and renewal is None:
                raise ServiceUnavailable(PAUSED, retry_after_s=settings.redis_backoff_ms / 1000)
            try:
                line = await self.line(space_id)
                if line.lottery is None and entry.state != "scheduled":
                    # gone live since the last tick: draw now, so nobody waits a tick for it
                    await self._tick_space(space_id, entry, now)
                    line = self._lines.get(space_id, line)
            except STORE_ERRORS as exc:
                self._failed("admission", exc)
                if renewal is None:
                    raise ServiceUnavailable(
                        PAUSED, retry_after_s=settings.redis_backoff_ms / 1000
                    ) from None
        kind: Kind = (
            "renewal" if renewal is not None else "ticket" if ticket is not None else "arrival"
        )
        decision, number = await self._decide(
            space_id, kind, cap, line, phase, ticket, now, priority
        )
        if (
            kind == "ticket"
            and cap > 0
            and decision.outcome == "queue"
            and phase == "open"
            and may_have_called(
                line,
                number,
                now,
                rate_per_s=settings.admit_rate_per_s,
                slack_s=1.0 + 2 * settings.queue_interval_ms / 1000,
            )
        ):
            # This node's view is one interval old at most, but the holder may
            # have read a newer queue document (from any node: a document is
            # rendered only after its line was written to the store). Read the
            # line again, newer than this request, before saying "wait".
            try:
                line = await self._fresh(space_id, arrived)
            except STORE_ERRORS as exc:
                self._failed("admission", exc)
                raise ServiceUnavailable(
                    PAUSED, retry_after_s=settings.redis_backoff_ms / 1000
                ) from None
            decision, number = await self._decide(
                space_id, kind, cap, line, phase, ticket, now, priority
            )
        metrics.ADMISSION_DECISIONS.labels(outcome=decision.outcome, reason=decision.code).inc()
        if decision.outcome == "refuse":
            retry_s = 1.0 if decision.code == "node_full" else 30.0
            if decision.code == "not_open" and entry.scheduled_for_s is not None:
                retry_s = max(1.0, entry.scheduled_for_s - settings.waiting_room_open_s - now)
            raise ServiceUnavailable(
                decision.detail, retry_after_s=retry_s, extra={"reason": decision.code}
            )
        if decision.outcome == "admit":
            admitted = await self._admit(
                space_id, subject, cap, decision, line, renewal, ticket, number
            )
            if admitted is not None:
                return admitted
            decision = Decision(
                "queue", "full", "This space is full: you have a place in line.", status=202
            )
        return await self._queue(space_id, line, decision, ticket, number, priority)

    async def _decide(
        self,
        space_id: str,
        kind: Kind,
        cap: int,
        line: QueueState,
        phase: Phase,
        ticket: Ticket | None,
        now: float,
        priority: Priority = "normal",
    ) -> tuple[Decision, int | None]:
        number = None if ticket is None else self.number_of(ticket, line)
        if cap > 0 and number is not None and number <= line.through:
            try:
                used = await self.store.is_used(space_id, number)
            except STORE_ERRORS as exc:
                self._failed("admission", exc)
                raise ServiceUnavailable(
                    PAUSED, retry_after_s=self.settings.redis_backoff_ms / 1000
                ) from None
            if used:
                raise TicketReused(REUSED)
        settings = self.settings
        capacity = Capacity(
            space_cap=cap,
            space_admitted=self._counts.get(space_id, 0),
            node_cap=settings.node_max_listeners,
            node_admitted=self.node_listeners.count(now),
            llhls_budget=settings.llhls_budget_listeners,
            node_llhls=self.node_llhls.count(now),
        )
        decision = decide(kind, capacity, line, phase=phase, number=number)
        return held_back(decision, kind, priority, cap), number

    async def _fresh(self, space_id: str, since: float) -> QueueState:
        """The line (and count) read from the store by a read that started at
        or after ``since`` (monotonic): concurrent callers share one read, so
        a crowd of early tickets costs one store round trip at a time."""
        while True:
            flight = self._flights.get(space_id)
            if flight is None:
                task = asyncio.create_task(self._reload(space_id), name="townhall-admission-read")
                flight = self._flights[space_id] = (time.monotonic(), task)
                task.add_done_callback(lambda t: self._land(space_id, t))
            started, task = flight
            if started >= since:
                return await asyncio.shield(task)
            await asyncio.wait([task])  # an older read: wait for it, then read again

    def _land(self, space_id: str, task: asyncio.Task[QueueState]) -> None:
        flight = self._flights.get(space_id)
        if flight is not None and flight[1] is task:
            del self._flights[space_id]
        if not task.cancelled():
            task.exception()  # retrieved here; the callers that wait see it too

    async def _reload(self, space_id: str) -> QueueState:
        now = self._clock()
        loaded, count = await self.store.snapshot(space_id, now)
        before = self._lines.get(space_id)
        line = self._accept(space_id, loaded, count)
        entry = self.index.get(space_id)
        if entry is not None and (before is None or line.version > before.version):
            self._docs[space_id] = self._render(space_id, entry, now)  # publish what it learnt
        return line

    def _accept(self, space_id: str, loaded: QueueState, count: int | None = None) -> QueueState:
        """Keep ``loaded`` unless this node already holds a newer view."""
        line = self._lines[space_id] = newest(self._lines.get(space_id), loaded)
        if count is not None and line is loaded:
            self._counts[space_id] = count
        return line

    async def _admit(
        self,
        space_id: str,
        subject: str,
        cap: int,
        decision: Decision,
        line: QueueState,
        renewal: Claims | None,
        ticket: Ticket | None,
        number: int | None,
    ) -> Admitted | None:
        now = self._clock()
        settings = self.settings
        delivery = decision.delivery
        if renewal is not None and renewal.token_id not in self.node_llhls:
            delivery = "hls" if renewal.token_id in self.node_listeners else delivery
        token, claims = self.tokens.mint(
            "listener",
            subject,
            settings.listener_token_ttl_s,
            space_id=space_id,
            role="listener",
            token_id=None if renewal is None else renewal.token_id,
        )
        if cap > 0:
            try:
                if renewal is not None:
                    await self.store.renew(space_id, claims.token_id, claims.expires_at)
                elif ticket is not None and number is not None:
                    if not await self.store.use(space_id, number, ticket.expires_at, now):
                        raise TicketReused(REUSED)
                    if not await self.store.admit(
                        space_id, claims.token_id, claims.expires_at, now, cap
                    ):
                        await self.store.unuse(space_id, number)
                        return None
                    batch = line.batch_of(number)
                    if batch is not None:
                        await self.store.claim(space_id, batch.lo)
                        current = self._lines.get(space_id, line)  # may be newer than ``line``
                        if current.batch_of(number) is not None:
                            self._lines[space_id] = current.claimed(number)
                else:
                    limit = cap - line.reserved
                    if limit <= 0 or not await self.store.admit(
                        space_id, claims.token_id, claims.expires_at, now, limit
                    ):
                        return None
            except STORE_ERRORS as exc:
                self._failed("admission", exc)
                if renewal is None:
                    raise ServiceUnavailable(
                        PAUSED, retry_after_s=settings.redis_backoff_ms / 1000
                    ) from None
            if renewal is None:
                self._counts[space_id] = self._counts.get(space_id, 0) + 1
        self.node_listeners.add(claims.token_id, claims.expires_at)
        if delivery == "llhls":
            self.node_llhls.add(claims.token_id, claims.expires_at)
        else:
            self.node_llhls.discard(claims.token_id)
        return Admitted(token, claims, delivery, decision.detail)

    async def _queue(
        self,
        space_id: str,
        line: QueueState,
        decision: Decision,
        ticket: Ticket | None,
        number: int | None,
        priority: Priority = "normal",
    ) -> Queued:
        try:
            if ticket is None:
                index = await self.arrivals.number(space_id, priority)
                text, ticket = self.tickets.issue(space_id, index)
                number = self.number_of(ticket, line)
                metrics.ADMISSION_TICKETS.inc()
                # the view may have moved on while the number was handed out
                line = self._lines.get(space_id, line)
                if index > line.issued:
                    line = self._lines[space_id] = replace(line, issued=index)
            else:
                text, ticket = self.tickets.renew(ticket)
        except STORE_ERRORS as exc:
            self._failed("admission", exc)
            raise ServiceUnavailable(
                PAUSED, retry_after_s=self.settings.redis_backoff_ms / 1000
            ) from None
        position = None if number is None else max(0, number - line.through)
        settings = self.settings
        # the page (polling every second) notices its turn about half an
        # interval plus a second after the call
        lag_s = settings.queue_interval_ms / 2000 + 1.0
        if number is None:
            # before the draw nobody's place is known: the seconds until the
            # start plus those to call the places free then (a lower bound)
            entry = self.index.get(space_id)
            start_s = entry.scheduled_for_s if entry is not None else None
            wait_start = 0.0 if start_s is None else max(0.0, start_s - self._clock())
            cap = 0 if entry is None else self.cap_of(entry)
            eta = eta_s(
                min(line.issued, cap),
                free_places=cap,
                admit_rate_per_s=settings.admit_rate_per_s,
                full_rate_per_s=line.full_rate,
                lag_s=lag_s,
                settled_rate_per_s=line.settled_rate,
                settling=line.settling,
            )
            eta = None if eta is None else wait_start + eta
        else:
            eta = eta_s(
                position,
                free_places=line.free,
                admit_rate_per_s=settings.admit_rate_per_s,
                full_rate_per_s=line.full_rate,
                lag_s=lag_s,
                settled_rate_per_s=line.settled_rate,
                settling=line.settling,
            )
        if eta is None:  # not known yet (nobody has left a full space): ask again soon
            retry_s = min(5.0, self.tickets.ttl_s / 3)
        else:
            retry_s = 1.0 if eta < 4 else min(eta / 2, self.tickets.ttl_s / 3)
        return Queued(
            ticket=text,
            expires_at=ticket.expires_at,
            number=number,
            position=position,
            eta_s=None if eta is None else round(eta, 1),
            retry_after_s=round(retry_s, 1),
            code=decision.code,
            detail=decision.detail,
        )

    async def leave(self, space_id: str, claims: Claims) -> None:
        """The listener left (page closed): the place is free at once."""
        self.node_listeners.discard(claims.token_id)
        self.node_llhls.discard(claims.token_id)
        entry = self.index.get(space_id)
        if entry is None or self.cap_of(entry) <= 0:
            return
        try:
            await self.store.leave(space_id, claims.token_id)
        except STORE_ERRORS as exc:
            self._failed("admission", exc)  # the place frees when the token expires

    # ------------------------------------------------------------ ticks and the document

    async def tick(self) -> None:
        """Move each active space's line one interval on and render its document."""
        now = self._clock()
        horizon = time.monotonic() - ACTIVE_S
        for space_id, seen in list(self._active.items()):
            entry = self.index.get(space_id)
            if seen < horizon or entry is None:
                self._active.pop(space_id, None)
                self._lines.pop(space_id, None)
                self._docs.pop(space_id, None)
                self._counts.pop(space_id, None)
                self._lottery_keys.pop(space_id, None)
                continue
            await self._tick_space(space_id, entry, now)

    async def _tick_space(
        self, space_id: str, entry: IndexEntry, now: float, *, draw: bool = False
    ) -> None:
        cap = self.cap_of(entry)
        if cap > 0 and self._store_up():
            settings = self.settings
            live = entry.state != "scheduled"

            def step(state: QueueState, admitted: int) -> QueueState:
                return advance(
                    state,
                    now,
                    cap=cap,
                    admitted=admitted,
                    rate_per_s=settings.admit_rate_per_s,
                    claim_s=settings.ticket_claim_s,
                    live=live,
                )

            try:
                line = await self.store.tick(space_id, now, step, draw=draw)
                if line is None:
                    line, count = await self.store.snapshot(space_id, now)
                else:
                    count = await self.store.count(space_id, now)
                self._accept(space_id, line, count)
            except STORE_ERRORS as exc:
                self._failed("admission", exc)
        self._docs[space_id] = self._render(space_id, entry, now)

    def _render(self, space_id: str, entry: IndexEntry, now: float) -> QueueDoc:
        return render_queue_doc(
            space_id,
            entry,
            self._lines.get(space_id, QueueState()),
            cap=self.cap_of(entry),
            admitted=self._counts.get(space_id, 0),
            settings=self.settings,
            now=now,
        )

    async def document(self, space_id: str, entry: IndexEntry) -> QueueDoc:
        """The queue document as of the last tick (the first ask ticks now)."""
        self._active[space_id] = time.monotonic()
        doc = self._docs.get(space_id)
        if doc is None:
            if self.cap_of(entry) > 0 and space_id not in self._lines:
                try:
                    await self.line(space_id)
                except STORE_ERRORS as exc:
                    self._failed("admission", exc)
            await self._tick_space(space_id, entry, self._clock())
            doc = self._docs[space_id]
        return doc

    async def run(self) -> None:
        """Tick every ``queue_interval_ms`` until cancelled, on a fixed grid
        (a slow tick does not push the next one back, so no document is older
        than one interval plus one tick), and tick a space the moment it goes
        live (its draw and first calls are published then, not up to an
        interval later: the start delay)."""
        interval_s = self.settings.queue_interval_ms / 1000
        next_at = time.monotonic() + interval_s
        while True:
            now = time.monotonic()
            with contextlib.suppress(TimeoutError):
                wait_s = max(0.0, min(next_at, now + GO_LIVE_CHECK_S) - now)
                await asyncio.wait_for(self._look_now.wait(), wait_s)
            self._look_now.clear()
            try:
                if time.monotonic() >= next_at:
                    next_at += interval_s
                    if next_at < time.monotonic():  # fell more than an interval behind
                        next_at = time.monotonic() + interval_s
                    await self.tick()
                else:
                    await self.tick_gone_live()
            except Exception:
                metrics.ADMISSION_TICK_FAILURES.inc()
                log.exception("admission tick failed; retrying next interval")

    def may_have_gone_live(self) -> None:
        """A space's state changed in the index (the space feed, or this
        node's own write): look for spaces gone live now, not at the next check."""
        self._look_now.set()

    async def tick_gone_live(self) -> None:
        """Tick each active capped space that went live since its last tick
        (its line not drawn yet): a dict walk when none did."""
        for space_id in list(self._active):
            entry = self.index.get(space_id)
            line = self._lines.get(space_id)
            if (
                entry is not None
                and line is not None
                and line.lottery is None
                and entry.state == "live"
                and self.cap_of(entry) > 0
                and self._store_up()
            ):
                await self._tick_space(space_id, entry, self._clock(), draw=True)
