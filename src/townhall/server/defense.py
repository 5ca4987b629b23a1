"""The join path's defense layers on one node, cheapest first, and what they
tell the evidence recorder:

1. a token bucket per client network (``joins_per_network_per_10s``);
2. proof-of-work when the join path is under pressure (``policy.challenge``):
   the effort is adjusted once a second from the join rate and the requests
   dropped; a join then needs ``X-Townhall-Pow: <challenge> <nonce>``;
3. clients that do not solve are never walled off: a slower lane lets them in
   at ``challenge_unsolved_joins_per_s`` (beyond it, 429 with the challenge and
   a Retry-After; with admission control they are to queue behind);
4. a signed "seen before" mark (``X-Townhall-Seen``, handed out on every
   admission) lowers the effort asked of returning clients.

Also the caps that keep one network from inflating the listener count or
the reaction totals. Everything here is memory only and O(1) per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from townhall import metrics, problems
from townhall.config import Settings
from townhall.errors import TooManyRequests, Unauthorized
from townhall.origin.answers import Rendered
from townhall.origin.asgi_cycle import Request
from townhall.origin.cors import Cors
from townhall.policy import challenge as pow_
from townhall.policy.netbuckets import NetBuckets, NetworkCap, network_of
from townhall.policy.priority import Priority
from townhall.policy.tokens import TokenSigner
from townhall.server.auth import forwarded_client, parse_networks
from townhall.server.evidence_node import EvidenceNode
from townhall.server.host_pass import host_of_space, vouched
from townhall.server.refusals import REFUSED, Refusals, bearer_key
from townhall.server.state_fast import CachedState

if TYPE_CHECKING:
    from townhall.server.services import Services
    from townhall.store.space_index import IndexEntry

log = logging.getLogger("townhall.defense")

Header = tuple[bytes, bytes]
POW_HEADER = "x-townhall-pow"
SEEN_HEADER = "x-townhall-seen"


class ChallengeRequired(TooManyRequests):
    """429 with a proof-of-work challenge in the problem body."""

    type_slug = "challenge-required"


@dataclass(frozen=True, slots=True)
class DefenseStats:
    bits: int
    joins_per_s: float
    dropped_last_s: int
    seen_challenges: int


class Defense:
    def __init__(
        self,
        settings: Settings,
        evidence: EvidenceNode | None,
        key: bytes,
        *,
        tokens: TokenSigner | None = None,
    ) -> None:
        """``key``: the secret challenges and marks are signed with (every
        node of a deployment must hold the same one). ``tokens``: to let a
        host's own actions pass its network's refusals (``server/host_pass.py``)."""
        self.settings = settings
        self.tokens = tokens
        self.evidence = evidence
        max_keys = settings.rate_limit_max_keys
        self.join_buckets = NetBuckets(settings.joins_per_network_per_10s, 10.0, max_keys=max_keys)
        self.reaction_buckets = NetBuckets(
            settings.reactions_per_network_per_10s, 10.0, max_keys=max_keys
        )
        self.state_buckets = NetBuckets(settings.state_per_network_per_10s, 10.0, max_keys=max_keys)
        self.playlist_buckets = NetBuckets(
            settings.playlists_per_network_per_10s, 10.0, max_keys=max_keys
        )
        self.presence_buckets = NetBuckets(
            settings.presence_per_network_per_10s, 10.0, max_keys=max_keys
        )
        self.listener_cap = NetworkCap(
            settings.listeners_counted_per_network * 3,  # a join and ~2 renewals per lifetime
            float(settings.listener_token_ttl_s),
            max_keys=max_keys,
        )
        self._trusted = parse_networks(settings.trusted_proxies)
        self._playlists_refused = metrics.RATE_LIMITED.labels(limit="playlist-network")
        self._states_refused = metrics.RATE_LIMITED.labels(limit="state-network")
        self.state_answers = CachedState(any_origin=Cors.parse(settings.cors_origins).any_origin)
        self.refusals = Refusals(
            settings.refusals_per_network_per_10s, settings.rate_limit_max_keys, self._trusted
        )
        unsolved = settings.challenge_unsolved_joins_per_s
        self.unsolved_lane = NetBuckets(unsolved, 1.0, max_keys=1) if unsolved else None
        self.key = hmac.new(key, b"townhall-challenge-v1", hashlib.sha256).digest()
        self.seen = pow_.SeenSet(settings.challenge_seen_max)
        self.effort = pow_.Effort()
        self._joins = 0
        self._dropped = 0
        self._rate = 0.0
        self._last_dropped = 0
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ the join gate

    def gate_join(
        self,
        space_id: str,
        client: str | None,
        pow_answer: str | None,
        seen_mark: str | None,
        *,
        renewal: bool,
        waiting_room: bool = False,
        now_s: float | None = None,
    ) -> tuple[str, Priority]:
        """Let a join through or raise 429: (client network, its priority in
        the waiting line, ``policy.priority``). ``renewal``: a listener token's
        renewal or a ticket's exchange (never asked to solve). ``waiting_room``:
        the space has a line (a cap): a client that does not solve is not
        refused but answered "unsolved", and the caller must put it in line
        (behind those who solved); without a line it takes the slower lane
        or gets the 429 with a challenge."""
        now = time.time() if now_s is None else now_s
        network = network_of(client)
        returning = pow_.mark_valid(self.key, seen_mark, now)
        plain: Priority = "returning" if returning else "normal"
        rec = self.evidence.recorder(space_id) if self.evidence is not None else None
        if self.evidence is not None:
            self.evidence.request(
                space_id, "join", client, network, arrival=not renewal, marked=returning
            )
        self._joins += 1
        wait_s = self.join_buckets.hit(network, now)
        if wait_s:
            self._drop(rec, "network-rate")
            raise TooManyRequests(
                "Too many joins from your network; wait a moment and try again.",
                retry_after_s=wait_s,
            )
        bits = self.effort.bits
        if bits == 0 or renewal:
            return network, plain
        if returning:
            bits = max(0, bits - pow_.RETURNING_DISCOUNT_BITS)
        if pow_answer:
            text, _, nonce = pow_answer.strip().partition(" ")
            try:
                solved = pow_.check(
                    self.key,
                    text,
                    nonce.strip(),
                    space_id,
                    now,
                    min_bits=max(0, bits - 2),
                )
            except pow_.ChallengeError as exc:
                metrics.CHALLENGES.labels(outcome=exc.reason).inc()
                if rec is not None:
                    rec.challenge(exc.reason)
                self._challenge(space_id, bits, now, rec, f"{exc.detail} ")
            if not self.seen.add(solved, now):
                metrics.CHALLENGES.labels(outcome="replayed").inc()
                if rec is not None:
                    rec.challenge("replayed")
                self._challenge(
                    space_id,
                    bits,
                    now,
                    rec,
                    "That answer was already used; solve a new challenge. ",
                )
            metrics.CHALLENGES.labels(outcome="solved").inc()
            if rec is not None:
                rec.challenge("solved", solved.bits)
            return network, "returning" if returning else "solver"
        if waiting_room:  # the line, behind those who solved
            metrics.CHALLENGES.labels(outcome="queued-unsolved").inc()
            if rec is not None:
                rec.admission("queued", "unsolved")
            return network, "unsolved"
        if self.unsolved_lane is not None and not self.unsolved_lane.hit("lane", now):
            return network, "unsolved"  # the slower lane for clients that do not solve
        self._challenge(space_id, bits, now, rec, "")
        raise AssertionError("unreachable")

    def _challenge(self, space_id: str, bits: int, now: float, rec: Any, prefix: str) -> None:
        issued = pow_.issue(self.key, space_id, bits, now, self.settings.challenge_ttl_s)
        metrics.CHALLENGES.labels(outcome="issued").inc()
        if rec is not None:
            rec.challenge("issued")
            rec.admission("refused", "challenge")
        retry_s = 1.0
        raise ChallengeRequired(
            prefix
            + "This space is under heavy load: solve the proof-of-work challenge (the listener "
            "page does it for you in about a second) and send the header 'X-Townhall-Pow: "
            f"<challenge> <nonce>', or retry in {retry_s:g} s: clients that cannot solve are "
            "let in too, at a lower rate.",
            retry_after_s=retry_s,
            extra={
                "challenge": issued.text,
                "bits": bits,
                "algorithm": "sha256-leading-zero-bits",
                "expires_at": issued.expires_at,
            },
        )

    def _drop(self, rec: Any, reason: str) -> None:
        self._dropped += 1
        metrics.RATE_LIMITED.labels(limit=f"join-{reason}").inc()
        if rec is not None:
            rec.admission("refused", reason)

    def admitted(self, space_id: str, network: str, now_s: float | None = None) -> tuple[bool, str]:
        """After a join got its token: (count this listener?, a fresh seen mark)."""
        now = time.time() if now_s is None else now_s
        counted = self.listener_cap.count(f"{space_id}|{network}", now)
        if not counted:
            metrics.NETWORK_UNCOUNTED.labels(kind="listener").inc()
        if self.evidence is not None:
            rec = self.evidence.recorder(space_id)
            if rec is not None:
                rec.admission("admitted")
        return counted, pow_.mark(self.key, now, self.settings.returning_mark_ttl_s)

    def reaction_allowed(self, space_id: str, client: str | None) -> float:
        """0.0 when this network may react now, else seconds to wait."""
        network = network_of(client)
        if self.evidence is not None:
            self.evidence.request(space_id, "reaction", client, network)
        wait_s = self.reaction_buckets.hit(f"{space_id}|{network}", time.time())
        if wait_s:
            metrics.NETWORK_UNCOUNTED.labels(kind="reaction").inc()
        return wait_s

    def allow_state(self, space_id: str, client: str | None, now_s: float) -> float:
        """state.json: 0.0 when this network may ask now, else seconds to wait
        (for the state route; a cache in front absorbs honest traffic); a
        refusal is counted."""
        network = network_of(client)
        if self.evidence is not None:
            self.evidence.request(space_id, "state", client, network)
        wait_s = self.state_buckets.hit(network, now_s)
        if wait_s:
            self._states_refused.inc()
        return wait_s

    def allow_playlist(self, network: str, now_s: float) -> float:
        """A playlist without delivery directives: O(1), for origin/rules.py to
        call with the request's network (``policy.netbuckets.network_of``)."""
        return self.playlist_buckets.hit(network, now_s)

    def cached_state(self, services: Services, peer: str | None, req: Request) -> Rendered | None:
        """state.json answered by the HTTP driver while cached (``server/state_fast.py``)."""
        return self.state_answers.answer(services, peer, req)

    def allow_listener_playlist(self, peer: str | None, headers: Sequence[Header]) -> float:
        """The listener rules' playlist limit (``origin.netlimit.ClientLimit``):
        the client is the TCP peer, or behind ``trusted_proxies`` the
        X-Forwarded-For hop they vouch for; a refusal is counted."""
        client = peer
        if self._trusted and peer is not None:
            forwarded = [v.decode("latin-1") for k, v in headers if k == b"x-forwarded-for"]
            client = forwarded_client(peer, forwarded, self._trusted)
        wait_s = self.playlist_buckets.hit(network_of(client), time.monotonic())
        if wait_s:
            self._playlists_refused.inc()
        return wait_s

    def allow_presence(self, client: str | None, now_s: float) -> float:
        """A presence beat: 0.0 when this network may beat now, else seconds to wait."""
        wait_s = self.presence_buckets.hit(network_of(client), now_s)
        if wait_s:
            metrics.RATE_LIMITED.labels(limit="presence-network").inc()
        return wait_s

    def vouched(self, url: bytes, headers: Sequence[Header]) -> bool:
        """For the HTTP driver's early refusal: a host's own action may pass
        its network's refusal (``server.host_pass.vouched``)."""
        return self.tokens is not None and vouched(self.tokens, url, headers)

    # ------------------------------------------------------------ effort control

    def control(self) -> None:
        """One effort-control step (once a second)."""
        self._rate, self._joins = float(self._joins), 0
        self._last_dropped, self._dropped = self._dropped, 0
        s = self.settings
        before = self.effort.bits
        self.effort = pow_.adjust(
            self.effort,
            joins_per_s=self._rate,
            dropped=self._last_dropped,
            queue_len=0,
            threshold_per_s=s.challenge_joins_per_s,
            min_bits=s.challenge_min_bits,
            start_bits=s.challenge_start_bits,
            max_bits=s.challenge_max_bits,
        )
        if self.effort.bits != before:
            log.info(
                "join effort %d -> %d bits (%.0f joins/s)", before, self.effort.bits, self._rate
            )
        metrics.CHALLENGE_BITS.set(self.effort.bits)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="townhall-defense")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.control()

    def statistics(self) -> DefenseStats:
        return DefenseStats(self.effort.bits, self._rate, self._last_dropped, len(self.seen))


def gate(
    services: Services,
    entry: IndexEntry,
    space_id: str,
    client: str | None,
    pow_answer: str | None,
    seen_mark: str | None,
    again: bool,
) -> tuple[str, Priority]:
    """The defense layers in front of a join (:meth:`Defense.gate_join`):
    (client network, priority in line). ``again``: a renewal or a ticket's
    exchange. Without a defense: ("unknown", "normal")."""
    defense = services.defense
    if defense is None:
        return "unknown", "normal"
    lined = services.admission.cap_of(entry) > 0
    return defense.gate_join(
        space_id, client, pow_answer, seen_mark, renewal=again, waiting_room=lined
    )


class AuthFailureShield:
    """ASGI middleware for /api/, before the framework parses anything:

    - a bearer token whose signature or expiry fails is answered 401 here
      (one HMAC);
    - a client network, or a token (one token replayed from many networks),
      whose requests keep being refused (401, 429) is answered 429 until its
      bucket refills (``server/refusals.py``, the record the HTTP driver also
      checks before it starts any ASGI work).

    Costs a path check per request, and for /api/ requests a dict lookup
    (and a token decode when one is sent)."""

    def __init__(self, app: ASGIApp, *, failures_per_10s: int, max_keys: int = 100_000) -> None:
        self.app = app
        self.own = Refusals(failures_per_10s, max_keys, ())  # when the app has no defense

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, wait_s: float) -> None:
        metrics.RATE_LIMITED.labels(limit="refusals").inc()
        err = TooManyRequests(REFUSED, retry_after_s=wait_s)
        await problems.problem_response(err.to_problem(scope["path"]), retry_after_s=wait_s)(
            scope, receive, send
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/"):
            await self.app(scope, receive, send)
            return
        services = getattr(scope["app"].state, "services", None)
        defense = getattr(services, "defense", None)
        refusals: Refusals = defense.refusals if defense is not None else self.own
        peer = scope["client"][0] if scope.get("client") else None
        network = network_of(refusals.client(peer, scope["headers"]))
        keys = [network]
        now = time.monotonic()
        wait_s = refusals.wait_s(network, now)
        if (
            wait_s
            and services is not None
            and await host_of_space(services, scope["path"], scope["headers"])
        ):
            keys, wait_s = [], 0.0  # the host: its own token's key only (server/host_pass.py)
        if wait_s:
            key = bearer_key(dict(scope["headers"]).get(b"authorization", b""))
            if key is not None and services is not None:
                refusals.hit([key], now)  # a signed-in non-host pays with its token too
            await self._refuse(scope, receive, send, wait_s)
            return
        if services is not None:
            for name, value in scope["headers"]:
                if name != b"authorization":
                    continue
                key = bearer_key(value)
                if key is not None:
                    try:
                        services.tokens.decode(value.decode("latin-1").partition(" ")[2].strip())
                    except Unauthorized as exc:
                        # a bad bearer token is a 401 on every route
                        refusals.hit(keys, now)
                        await problems.problem_response(exc.to_problem(scope["path"]))(
                            scope, receive, send
                        )
                        return
                    keys.append(key)
                    wait_s = refusals.wait_s(key, now)
                    if wait_s:
                        await self._refuse(scope, receive, send, wait_s)
                        return
                break

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (401, 429):
                refusals.hit(keys, time.monotonic())
            await send(message)

        await self.app(scope, receive, counted)
