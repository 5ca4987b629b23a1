"""Spaces, their stage seats, requests to speak and blocks.

A space's life is a one-way state machine, ``scheduled -> live -> ended``,
driven only by its host (:func:`next_state`). Seats are limited per role
(``policy.roles.check_seat``); seat changes are serialized (a process lock,
plus ``SELECT ... FOR UPDATE`` of the space row on PostgreSQL for many nodes).

:class:`Spaces` keeps the in-memory :class:`~townhall.store.space_index.SpaceIndex`
(what the join hot path reads instead of the database) in step with its own
writes, and tells ``on_change`` of each (the space feed publishes them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from townhall.errors import Conflict, Forbidden, NotFound, TooManyRequests, ValidationFailed
from townhall.policy import roles
from townhall.store.accounts import AccountView, new_id, utcnow
from townhall.store.db import Database
from townhall.store.models import Account, Block, Space, SpaceRole, SpeakRequest
from townhall.store.space_index import IndexEntry, SpaceIndex

State = Literal["scheduled", "live", "ended"]
VISIBILITIES: tuple[str, ...] = ("public", "unlisted")
_TRANSITIONS = {("start", "scheduled"): "live", ("end", "live"): "ended"}


def next_state(state: str, action: Literal["start", "end"]) -> str:
    """The state after ``action``; Conflict (409) with a sentence when illegal."""
    target = _TRANSITIONS.get((action, state))
    if target is not None:
        return target
    if state == "ended":
        raise Conflict("This space has ended; an ended space cannot change again.")
    if action == "start":
        raise Conflict("This space is already live.")
    raise Conflict("This space has not started; start it before ending it.")


def validate_schedule(scheduled_for: datetime, now: datetime, max_ahead_days: int) -> None:
    """A start time must be in the future and at most ``max_ahead_days`` ahead."""
    if scheduled_for.tzinfo is None:
        raise ValidationFailed(
            "Field 'scheduled_for' is invalid: give a time zone (e.g. 2026-11-20T23:46:16Z).",
            extra={"errors": [{"field": "scheduled_for", "message": "no time zone"}]},
        )
    if scheduled_for <= now:
        raise ValidationFailed(
            "Field 'scheduled_for' is in the past; schedule a time in the future, or leave it out to go live now.",
            extra={"errors": [{"field": "scheduled_for", "message": "in the past"}]},
        )
    if scheduled_for > now + timedelta(days=max_ahead_days):
        raise ValidationFailed(
            f"Field 'scheduled_for' is more than {max_ahead_days} days ahead; schedule a nearer time.",
            extra={"errors": [{"field": "scheduled_for", "message": "too far ahead"}]},
        )


@dataclass(frozen=True, slots=True)
class SpaceView:
    id: str
    host: AccountView
    title: str
    description: str
    visibility: str
    state: str
    scheduled_for: datetime | None
    started_at: datetime | None
    ended_at: datetime | None
    created_at: datetime
    max_listeners: int | None = None  # the space's own cap; None: the deployment's


@dataclass(frozen=True, slots=True)
class StageMember:
    account: AccountView
    role: str


@dataclass(frozen=True, slots=True)
class SpeakRequestView:
    account: AccountView
    requested_at: datetime


def _account(row: Account) -> AccountView:
    return AccountView(id=row.id, username=row.username, display_name=row.display_name)


def _view(space: Space, host: Account) -> SpaceView:
    return SpaceView(
        id=space.id,
        host=_account(host),
        title=space.title,
        description=space.description,
        visibility=space.visibility,
        state=space.state,
        scheduled_for=space.scheduled_for,
        started_at=space.started_at,
        ended_at=space.ended_at,
        created_at=space.created_at,
        max_listeners=space.max_listeners,
    )


def _entry_of(space: Space) -> tuple[str, str, str, datetime | None, int | None]:
    return space.id, space.state, space.visibility, space.scheduled_for, space.max_listeners


class SpaceLimitReached(Conflict):
    """409: an account holds as many live or scheduled spaces as it may."""

    type_slug = "space-limit"

    def __init__(self, limit: str, detail: str) -> None:
        super().__init__(detail, extra={"limit": limit})
        self.limit = limit


class SpaceRateLimited(TooManyRequests):
    """429: an account creates spaces faster than it may."""

    type_slug = "space-rate"


@dataclass(frozen=True, slots=True)
class SpaceLimits:
    """What one account may hold and create (issue 10). Checked on this node
    under a lock; two nodes creating for one account at the same instant may
    each let one through (the limits keep abuse small, not exact)."""

    live: int = 3
    scheduled: int = 20
    created_per_hour: int = 20


class Spaces:
    """Space records. Every method opens its own short transaction."""

    def __init__(
        self,
        db: Database,
        *,
        max_cohosts: int,
        max_speakers: int,
        max_schedule_ahead_days: int,
        index: SpaceIndex | None = None,
        clock: Callable[[], datetime] = utcnow,
        limits: SpaceLimits | None = None,
    ) -> None:
        self.db = db
        self.limits = limits
        self._creating = asyncio.Lock()
        self.max_cohosts = max_cohosts
        self.max_speakers = max_speakers
        self.max_schedule_ahead_days = max_schedule_ahead_days
        self.index = index if index is not None else SpaceIndex()
        self._clock = clock
        self._seats = asyncio.Lock()
        # told of each space this process wrote (created, started, ended, capped),
        # after its commit and the index's update: the space feed publishes it
        self.on_change: Callable[[str, IndexEntry], None] | None = None

    def _wrote(self, space: Space) -> None:
        self.index.put(*_entry_of(space))
        known = self.index.get(space.id)
        if self.on_change is not None and known is not None:
            self.on_change(space.id, known)

    # -- spaces ---------------------------------------------------------------

    async def create(
        self,
        host_id: str,
        title: str,
        description: str = "",
        visibility: str = "public",
        scheduled_for: datetime | None = None,
        max_listeners: int | None = None,
    ) -> SpaceView:
        """A new space: live now, or scheduled when ``scheduled_for`` is given;
        ``max_listeners`` its own cap (checked by the caller against the
        deployment's)."""
        now = self._clock()
        if visibility not in VISIBILITIES:
            raise ValidationFailed(
                "Field 'visibility' is invalid: use 'public' or 'unlisted'.",
                extra={"errors": [{"field": "visibility", "message": "public or unlisted"}]},
            )
        if scheduled_for is not None:
            validate_schedule(scheduled_for, now, self.max_schedule_ahead_days)
        space = Space(
            id=new_id(),
            host_id=host_id,
            title=title,
            description=description,
            visibility=visibility,
            state="scheduled" if scheduled_for is not None else "live",
            scheduled_for=scheduled_for,
            started_at=None if scheduled_for is not None else now,
            ended_at=None,
            created_at=now,
            max_listeners=max_listeners,
            cap_set_at=None if max_listeners is None else now,
        )
        async with self._creating, self.db.session() as session:
            host = await session.get(Account, host_id)
            if host is None:
                raise NotFound("Your account no longer exists; sign up again.")
            if self.limits is not None:
                await self._check_limits(session, host_id, space.state, now)
            session.add(space)
        self._wrote(space)
        return _view(space, host)

    async def _check_limits(
        self, session: AsyncSession, host_id: str, state: str, now: datetime
    ) -> None:
        """Conflict (409) over the live/scheduled caps, TooManyRequests (429)
        over the creation rate; each counted in metrics by the caller's adapter."""
        limits = self.limits
        assert limits is not None
        counts = dict(
            (
                await session.execute(
                    select(Space.state, func.count())
                    .where(Space.host_id == host_id, Space.state.in_(("live", "scheduled")))
                    .group_by(Space.state)
                )
            ).all()
        )
        if state == "live" and counts.get("live", 0) >= limits.live:
            raise SpaceLimitReached(
                "live",
                f"You already have {limits.live} live spaces; end one before going live with another.",
            )
        if state == "scheduled" and counts.get("scheduled", 0) >= limits.scheduled:
            raise SpaceLimitReached(
                "scheduled",
                f"You already have {limits.scheduled} scheduled spaces; start or end one before scheduling another.",
            )
        recent = (
            await session.execute(
                select(func.count())
                .select_from(Space)
                .where(Space.host_id == host_id, Space.created_at >= now - timedelta(hours=1))
            )
        ).scalar_one()
        if recent >= limits.created_per_hour:
            oldest = (
                await session.execute(
                    select(func.min(Space.created_at)).where(
                        Space.host_id == host_id, Space.created_at >= now - timedelta(hours=1)
                    )
                )
            ).scalar_one()
            retry_s = (
                max(1.0, (oldest + timedelta(hours=1) - now).total_seconds()) if oldest else 60.0
            )
            raise SpaceRateLimited(
                f"You can create {limits.created_per_hour} spaces per hour; try again in {retry_s:.0f} s.",
                retry_after_s=retry_s,
            )

    async def get(self, space_id: str) -> SpaceView:
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(Space, Account)
                    .join(Account, Account.id == Space.host_id)
                    .where(Space.id == space_id)
                )
            ).one_or_none()
        if row is None:
            raise NotFound(f"There is no space '{space_id}'; check the link.")
        return _view(row[0], row[1])

    async def list_public(self, state: str | None = None, limit: int = 50) -> list[SpaceView]:
        """Public spaces, newest first."""
        query = (
            select(Space, Account)
            .join(Account, Account.id == Space.host_id)
            .where(Space.visibility == "public")
            .order_by(Space.created_at.desc(), Space.id)
            .limit(limit)
        )
        if state is not None:
            query = query.where(Space.state == state)
        async with self.db.session() as session:
            rows = (await session.execute(query)).all()
        return [_view(space, host) for space, host in rows]

    async def _transition(
        self, space_id: str, actor_id: str, action: Literal["start", "end"]
    ) -> SpaceView:
        now = self._clock()
        async with self.db.session() as session:
            row = (
                await session.execute(
                    select(Space, Account)
                    .join(Account, Account.id == Space.host_id)
                    .where(Space.id == space_id)
                    .with_for_update(of=Space)
                )
            ).one_or_none()
            if row is None:
                raise NotFound(f"There is no space '{space_id}'; check the link.")
            space, host = row
            role = await self._role_in(session, space, actor_id)
            roles.check(role, action)
            if action == "start" and self.limits is not None and space.state == "scheduled":
                live = (
                    await session.execute(
                        select(func.count())
                        .select_from(Space)
                        .where(Space.host_id == space.host_id, Space.state == "live")
                    )
                ).scalar_one()
                if live >= self.limits.live:
                    raise SpaceLimitReached(
                        "live",
                        f"You already have {self.limits.live} live spaces; end one before going live with another.",
                    )
            space.state = next_state(space.state, action)
            if action == "start":
                space.started_at = now
            else:
                space.ended_at = now
        self._wrote(space)
        return _view(space, host)

    async def set_max_listeners(
        self, space_id: str, actor_id: str, max_listeners: int | None
    ) -> SpaceView:
        """The space's own cap (None: the deployment's); only the host."""
        async with self.db.session() as session:
            space = await session.get(Space, space_id)
            if space is None:
                raise NotFound(f"There is no space '{space_id}'; check the link.")
            if space.host_id != actor_id:
                raise Forbidden("Only the host of this space can change its listener limit.")
            host = await session.get(Account, space.host_id)
            assert host is not None
            space.max_listeners, space.cap_set_at = max_listeners, self._clock()
        self._wrote(space)
        return _view(space, host)

    async def start(self, space_id: str, actor_id: str) -> SpaceView:
        """scheduled -> live; only the host."""
        return await self._transition(space_id, actor_id, "start")

    async def end(self, space_id: str, actor_id: str) -> SpaceView:
        """live -> ended (final); only the host."""
        return await self._transition(space_id, actor_id, "end")

    async def live_ids(self) -> list[str]:
        async with self.db.session() as session:
            return list(
                (await session.execute(select(Space.id).where(Space.state == "live"))).scalars()
            )

    # -- roles ------------------------------------------------------------------

    async def _role_in(self, session: AsyncSession, space: Space, account_id: str) -> str | None:
        if space.host_id == account_id:
            return "host"
        if await session.get(Block, (space.id, account_id)) is not None:
            return None
        seat = await session.get(SpaceRole, (space.id, account_id))
        return seat.role if seat is not None else "listener"

    async def current_role(self, space_id: str, account_id: str) -> str | None:
        """ "host" | "cohost" | "speaker" | "listener", None when blocked.
        NotFound when the space does not exist."""
        async with self.db.session() as session:
            space = await session.get(Space, space_id)
            if space is None:
                raise NotFound(f"There is no space '{space_id}'; check the link.")
            return await self._role_in(session, space, account_id)

    async def stage(self, space_id: str) -> list[StageMember]:
        """Host, then co-hosts, then speakers (each by seat time)."""
        order = {"cohost": 1, "speaker": 2}
        async with self.db.session() as session:
            space = await session.get(Space, space_id)
            if space is None:
                raise NotFound(f"There is no space '{space_id}'; check the link.")
            host = await session.get(Account, space.host_id)
            assert host is not None
            seats = (
                await session.execute(
                    select(SpaceRole, Account)
                    .join(Account, Account.id == SpaceRole.account_id)
                    .where(SpaceRole.space_id == space_id)
                    .order_by(SpaceRole.granted_at, SpaceRole.account_id)
                )
            ).all()
        members = [StageMember(_account(host), "host")]
        rest = sorted(seats, key=lambda pair: order.get(pair[0].role, 9))
        members += [StageMember(_account(account), seat.role) for seat, account in rest]
        return members

    async def grant(self, space_id: str, account_id: str, role: str) -> None:
        """Seat ``account_id`` as ``role`` ("cohost" | "speaker"), moving it from
        any other seat; Conflict when the seats of that role are full, the space
        has ended, or the account is blocked or the host."""
        if role not in ("cohost", "speaker"):
            raise ValueError(f"cannot grant role {role!r}")
        now = self._clock()
        async with self._seats, self.db.session() as session:
            space = (
                await session.execute(select(Space).where(Space.id == space_id).with_for_update())
            ).scalar_one_or_none()
            if space is None:
                raise NotFound(f"There is no space '{space_id}'; check the link.")
            if space.state == "ended":
                raise Conflict("This space has ended; nobody can join the stage any more.")
            if space.host_id == account_id:
                raise Conflict("That account is the host of this space already.")
            if await session.get(Account, account_id) is None:
                raise NotFound("There is no such account.")
            if await session.get(Block, (space_id, account_id)) is not None:
                raise Conflict("That account is blocked from this space.")
            rows = await session.execute(
                select(SpaceRole.role, func.count())
                .where(SpaceRole.space_id == space_id, SpaceRole.account_id != account_id)
                .group_by(SpaceRole.role)
            )
            counts = {seat_role: int(n) for seat_role, n in rows}
            roles.check_seat(
                role, counts, max_cohosts=self.max_cohosts, max_speakers=self.max_speakers
            )
            seat = await session.get(SpaceRole, (space_id, account_id))
            if seat is None:
                session.add(
                    SpaceRole(space_id=space_id, account_id=account_id, role=role, granted_at=now)
                )
            elif seat.role != role:
                seat.role = role
            await session.execute(
                delete(SpeakRequest).where(
                    SpeakRequest.space_id == space_id, SpeakRequest.account_id == account_id
                )
            )

    async def revoke(self, space_id: str, account_id: str) -> str | None:
        """Move ``account_id`` back to the audience; the role it had, if any."""
        async with self._seats, self.db.session() as session:
            seat = await session.get(SpaceRole, (space_id, account_id))
            if seat is None:
                return None
            old = seat.role
            await session.delete(seat)
            return old

    # -- requests to speak ------------------------------------------------------------

    async def add_request(self, space_id: str, account_id: str) -> None:
        """Idempotent: asking twice keeps the first time."""
        async with self.db.session() as session:
            space = await session.get(Space, space_id)
            if space is None:
                raise NotFound(f"There is no space '{space_id}'; check the link.")
            if space.state == "ended":
                raise Conflict("This space has ended; there is no stage to ask for.")
            if await session.get(SpeakRequest, (space_id, account_id)) is None:
                session.add(
                    SpeakRequest(
                        space_id=space_id, account_id=account_id, requested_at=self._clock()
                    )
                )

    async def list_requests(self, space_id: str) -> list[SpeakRequestView]:
        async with self.db.session() as session:
            rows = (
                await session.execute(
                    select(SpeakRequest, Account)
                    .join(Account, Account.id == SpeakRequest.account_id)
                    .where(SpeakRequest.space_id == space_id)
                    .order_by(SpeakRequest.requested_at, SpeakRequest.account_id)
                )
            ).all()
        return [SpeakRequestView(_account(account), req.requested_at) for req, account in rows]

    async def remove_request(self, space_id: str, account_id: str) -> bool:
        async with self.db.session() as session:
            result = await session.execute(
                delete(SpeakRequest).where(
                    SpeakRequest.space_id == space_id, SpeakRequest.account_id == account_id
                )
            )
            return bool(getattr(result, "rowcount", 0))

    async def has_request(self, space_id: str, account_id: str) -> bool:
        async with self.db.session() as session:
            return await session.get(SpeakRequest, (space_id, account_id)) is not None

    # -- blocks -------------------------------------------------------------------------

    async def block(self, space_id: str, account_id: str, blocked_by: str) -> None:
        """Remove ``account_id`` from stage and requests and block it (idempotent)."""
        async with self._seats, self.db.session() as session:
            space = await session.get(Space, space_id)
            if space is None:
                raise NotFound(f"There is no space '{space_id}'; check the link.")
            if space.host_id == account_id:
                raise Conflict("The host cannot be blocked from their own space.")
            if await session.get(Account, account_id) is None:
                raise NotFound("There is no such account.")
            for model in (SpaceRole, SpeakRequest):
                await session.execute(
                    delete(model).where(model.space_id == space_id, model.account_id == account_id)
                )
            if await session.get(Block, (space_id, account_id)) is None:
                session.add(
                    Block(
                        space_id=space_id,
                        account_id=account_id,
                        blocked_by=blocked_by,
                        blocked_at=self._clock(),
                    )
                )
        self.index.add_block(space_id, account_id)

    # -- the in-memory index ---------------------------------------------------------------

    async def refresh_index(self, since: datetime | None) -> int:
        """Load spaces and blocks changed at or after ``since`` (all when None)
        into :attr:`index`; how many rows were read."""
        space_q = select(
            Space.id, Space.state, Space.visibility, Space.scheduled_for, Space.max_listeners
        )
        block_q = select(Block.space_id, Block.account_id)
        if since is not None:
            space_q = space_q.where(
                or_(
                    Space.created_at >= since,
                    Space.started_at >= since,
                    Space.ended_at >= since,
                    Space.cap_set_at >= since,
                )
            )
            block_q = block_q.where(Block.blocked_at >= since)
        async with self.db.session() as session:
            spaces = (await session.execute(space_q)).all()
            blocks = (await session.execute(block_q)).all()
        for space_id, state, visibility, scheduled_for, cap in spaces:
            self.index.put(space_id, state, visibility, scheduled_for, cap)
        for space_id, account_id in blocks:
            self.index.add_block(space_id, account_id)
        return len(spaces) + len(blocks)
