"""townhall's settings: one object, every field with a default, a CLI flag and a
``TOWNHALL_*`` environment variable.

The CLI (``townhall serve --help``) is generated from this class flag for flag:
field ``part_ms`` is ``--part-ms`` and ``TOWNHALL_PART_MS``. Precedence: CLI
flag, then environment, then the default here.

Fields are grouped by the part of townhall that reads them; a new setting goes
in its group with a description a person can act on.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from townhall.config_defense import DefenseSettings


class _CoreSettings(BaseSettings):
    """Every knob but the defense layers' (those are in ``config_defense``)."""

    # -- serving -----------------------------------------------------------
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    data_dir: Path = Field(
        Path("./townhall-data"),
        description="Where the SQLite file, the signing keys and the recordings live.",
    )
    public_url: str = Field(
        "",
        description="Base URL listeners reach this server at (for share links); empty means derived from each request.",
    )
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    log_json: bool = Field(False, description="Write logs as one JSON object per line.")
    shutdown_drain_s: float = Field(
        10.0,
        ge=0,
        description="On shutdown, how long open requests may finish before they are cancelled.",
    )
    max_body_bytes: int = Field(
        64 * 1024, ge=1024, description="Largest request body accepted; larger gets 413."
    )
    workers_loop: str = Field(
        "auto", description="Event loop: auto (uvloop where available), asyncio or uvloop."
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated CIDRs of reverse proxies in front of this server (e.g. 10.0.0.0/8,::1/128). When a request comes from one, the client address for per-network rate limits is read from X-Forwarded-For (the rightmost address that is not a trusted proxy); empty trusts no proxy.",
    )

    # -- storage -----------------------------------------------------------
    database_url: str = Field(
        "",
        description="SQLAlchemy async URL of the control-plane database; empty means SQLite at DATA_DIR/townhall.sqlite3. PostgreSQL: postgresql+asyncpg://host:5432/db.",
    )
    redis_url: str = Field(
        "",
        description="Redis URL for state shared by many nodes (admission, rate limits, room state); empty means in-process (one node). Example: redis://127.0.0.1:6379/0.",
    )
    redis_prefix: str = Field(
        "townhall:",
        description="Prefix of every Redis key townhall writes, so several deployments (or test runs) can share one Redis.",
    )
    redis_timeout_ms: int = Field(
        500,
        ge=10,
        description="Longest one Redis connect or command may take before it counts as a failure (the node then carries on from memory).",
    )
    redis_max_connections: int = Field(
        64,
        ge=1,
        description="Redis connections each node keeps at most; a request that finds them all busy waits up to redis_timeout_ms.",
    )
    redis_backoff_ms: int = Field(
        1000,
        ge=0,
        description="After a Redis failure, how long this node works from memory (and refuses sign-ins) before it tries Redis again.",
    )
    redis_warn_interval_s: float = Field(
        30.0,
        ge=0,
        description="While Redis is unreachable, a warning is logged at most this often (every failure is counted in townhall_redis_failures_total).",
    )
    shared_flush_max_ids: int = Field(
        100_000,
        ge=100,
        description="Listener token ids each node buffers between two flushes to Redis (one per state interval); beyond this, joins are not counted and townhall_shared_listener_ids_dropped_total grows.",
    )

    # -- accounts and tokens -------------------------------------------------
    signing_keys: str = Field(
        "",
        description="Comma-separated token signing keys, current first, previous second (rotation). Empty means generated once and kept in DATA_DIR/signing-keys.",
    )
    session_ttl_s: int = Field(
        7 * 24 * 3600, ge=60, description="Lifetime of a sign-in session token."
    )
    listener_token_ttl_s: int = Field(
        300,
        ge=10,
        description="Lifetime of a listener token; the player renews it before it runs out.",
    )
    speaker_token_ttl_s: int = Field(600, ge=10, description="Lifetime of a speaker token.")
    signin_per_account_per_min: int = Field(
        5, ge=1, description="Failed sign-ins allowed per account per minute before 429."
    )
    signin_per_network_per_min: int = Field(
        30,
        ge=1,
        description="Sign-in attempts allowed per client network (/24 or /64) per minute before 429.",
    )
    reactions_per_token_per_10s: int = Field(
        10, ge=1, description="Reactions one listener token may send per 10 seconds."
    )
    argon2_time_cost: int = Field(2, ge=1, description="argon2id time cost (iterations).")
    argon2_memory_kib: int = Field(19456, ge=1024, description="argon2id memory cost in KiB.")
    rate_limit_max_keys: int = Field(
        100_000,
        ge=100,
        description="Keys each in-process rate limiter remembers (accounts, networks, tokens); the least recently used are forgotten beyond this.",
    )

    # -- spaces ----------------------------------------------------------------
    max_schedule_ahead_days: int = Field(
        30, ge=1, description="How far ahead a space may be scheduled."
    )
    max_cohosts: int = Field(2, ge=0, description="Co-hosts per space (besides the host).")
    max_speakers: int = Field(
        10, ge=0, description="Speakers per space (besides host and co-hosts)."
    )
    space_index_refresh_ms: int = Field(
        1000,
        ge=100,
        description="How often each node reloads recently changed spaces and blocks into its in-memory index (the join path reads only that index).",
    )
    state_interval_ms: int = Field(
        1000, ge=100, le=2000, description="How often state.json is recomputed; also its max-age."
    )

    # -- live audio ----------------------------------------------------------
    sample_rate_hz: int = Field(48000, description="Sample rate of the mix and the program.")
    frame_ms: int = Field(20, description="Mixer frame length.")
    jitter_ms: int = Field(60, ge=0, le=1000, description="Per-speaker jitter buffer depth.")
    program_bitrate_bps: int = Field(
        64000, ge=16000, le=320000, description="AAC-LC bitrate of the program."
    )
    part_ms: int = Field(
        500,
        ge=100,
        le=2000,
        description="LL-HLS part duration target (rounded up to whole AAC frames).",
    )
    segment_parts: int = Field(
        8, ge=1, le=60, description="Parts per segment (segment = part x this)."
    )
    window_segments: int = Field(
        12,
        ge=3,
        description="Segments kept in the in-memory live window (older ones are served from the recording).",
    )
    blocking_reload_timeout_s: float = Field(
        6.0, ge=0.5, description="Longest a blocking playlist reload waits before it answers 503."
    )
    progressive_max_lag_ms: int = Field(
        5000, ge=200, description="A progressive-stream listener this far behind is dropped."
    )
    progressive_burst_ms: int = Field(
        1000,
        ge=0,
        description="Recent audio sent at once to a new live.aac listener so its player starts fast (kept below progressive_max_lag_ms).",
    )
    progressive_batch_ms: int = Field(
        1500,
        ge=0,
        le=5000,
        description="On the fast path, live.aac audio is written to listeners in batches this long (one write per listener per batch instead of one per AAC frame: less CPU, up to this much more delay); 0 writes every frame. A new listener's burst grows by one batch, so its player's buffer stays above progressive_burst_ms.",
    )
    fast_path: bool = Field(
        True,
        description="Answer the listener plane's hot GETs (parts, segments, init, live playlists, blocking reloads, live.aac) below the web framework from pre-rendered bytes; off sends every request through the app (same bytes, slower).",
    )
    listener_wake_batch: int = Field(
        256,
        ge=1,
        description="Listeners answered per event-loop turn when a part is published (blocked reloads, hinted parts, live.aac writes); smaller keeps the mixer clock punctual under a large audience, larger answers a crowd in fewer turns.",
    )
    program_queue_ms: int = Field(
        2000,
        ge=100,
        description="Mix audio the program encoder may fall behind by before frames are dropped (counted in townhall_program_frames_dropped_total).",
    )
    speaker_reconnect_grace_s: float = Field(
        30.0, ge=0, description="How long a dropped speaker's seat is kept for a reconnect."
    )
    webrtc_offer_timeout_s: float = Field(
        10.0, ge=1, description="Longest SDP negotiation allowed."
    )
    webrtc_host_addresses: str = Field(
        "",
        description="Comma-separated local IP addresses speakers' WebRTC connects to (host candidates); empty means loopback when --host is a loopback address, else every non-loopback interface.",
    )
    webrtc_ice_servers: str = Field(
        "",
        description="Comma-separated STUN/TURN URLs for speaker connections (e.g. stun:stun.example.org:3478); empty means host candidates only (no third-party server is contacted).",
    )
    webrtc_receive_prefetch_frames: int = Field(
        1,
        ge=1,
        le=8,
        description="Frames aiortc holds per speaker before decoding (its default, 4, adds 80 ms); the stage's own jitter buffer (jitter_ms) absorbs the rest.",
    )
    return_opus_bitrate_bps: int = Field(
        32000,
        ge=6000,
        le=510000,
        description="Opus bitrate of what each speaker hears (their mix-minus, mono).",
    )
    return_opus_complexity: int = Field(
        5,
        ge=0,
        le=10,
        description="Opus encoder complexity (0-10) of each speaker's return audio: lower costs less CPU per speaker.",
    )
    speaking_threshold: float = Field(
        0.02,
        ge=0,
        le=1,
        description="Level (RMS, 0..1 of full scale) above which a speaker counts as speaking.",
    )
    speaking_hang_ms: int = Field(
        500,
        ge=0,
        le=5000,
        description="How long a speaker stays 'speaking' after their level drops below the threshold.",
    )
    level_window_ms: int = Field(
        200, ge=20, le=2000, description="Window of the speaker level meter (RMS)."
    )
    mix_minus_queue_ms: int = Field(
        100,
        ge=20,
        le=1000,
        description="Audio queued towards each speaker (their mix-minus) before the oldest is dropped.",
    )
    clock_max_catchup_ms: int = Field(
        1000,
        ge=20,
        description="If the mixer clock falls further behind than this (a stalled process), it skips ahead instead of catching up, and counts the skipped frames.",
    )

    # -- admission -----------------------------------------------------------------
    max_listeners: int = Field(
        0,
        ge=0,
        description="Listeners admitted per space at once; 0 means no limit (admission control off).",
    )

    # --- issue 9: admission and a fair waiting room ---
    node_max_listeners: int = Field(
        8000,
        ge=0,
        description="Listeners this node serves at most (every space together); beyond it joins get 503 with Retry-After so the load balancer can try another node. Default: the largest step of `townhall bench listeners` that held on one core (docs/BENCHMARKS.md); measure yours and set it. 0 means no limit.",
    )
    llhls_budget_listeners: int = Field(
        4000,
        ge=0,
        description="LL-HLS listeners this node admits; once spent, new listeners are admitted on plain HLS (about a quarter of the cost, a few seconds more delay) before anyone is queued. Default: the LL-HLS step that held without stalls on one core (docs/BENCHMARKS.md). 0 means no budget (always LL-HLS).",
    )
    admit_rate_per_s: float = Field(
        200.0,
        gt=0,
        description="Listeners let in from a space's waiting line per second at most, so a storm is spread (default: the join storm of docs/BENCHMARKS.md, 200 joins/s on top of 2,000 playing with no stall).",
    )
    ticket_ttl_s: int = Field(
        120,
        ge=10,
        description="Lifetime of a queue ticket; the waiting page renews it well before (closing the tab and coming back within it keeps the place).",
    )
    ticket_claim_s: float = Field(
        6.0,
        ge=1,
        description="How long a ticket whose turn has come keeps its reserved place; unclaimed places then go to the next in line.",
    )
    queue_interval_ms: int = Field(
        1000,
        ge=100,
        le=1000,
        description="How often each space's line moves and queue.json is recomputed (its max-age is at most 1 s).",
    )
    waiting_room_open_s: int = Field(
        900,
        ge=0,
        description="How long before a scheduled start the waiting room of a capped space opens; arrivals before the start get places in a random order.",
    )
    edge_link_secret: str = Field(
        "",
        description="Secret shared with nginx's secure_link (deploy/nginx-cache.conf, @LINK_SECRET@): when set, joining a capped space also sets th_link/th_exp cookies that nginx checks on every media request without asking the origin. Empty sets none.",
    )

    # --- issue 8/14: program restarts and recording write failures ---
    program_restart_max: int = Field(
        5,
        ge=0,
        description="Restarts in a row of a failed program encoder or packager (each in a new discontinuity) before the space is marked failed.",
    )
    program_restart_backoff_ms: int = Field(
        200,
        ge=0,
        description="Wait before the first restart of a failed program; doubles with each restart in a row.",
    )
    program_restart_backoff_max_ms: int = Field(
        5000, ge=0, description="Longest wait between restarts of a failed program."
    )
    program_restart_reset_s: float = Field(
        30.0,
        gt=0,
        description="A program that has run this long since its last restart starts counting its restarts from zero again.",
    )
    recording_backlog_bytes: int = Field(
        8 * 1024 * 1024,
        ge=0,
        description="Segments a space's recorder could not write yet (disk full, no descriptors) are held in memory up to this size; beyond it they are listed as missing in the recording.",
    )
    recording_retry_ms: int = Field(
        250,
        ge=10,
        description="Wait before retrying a failed recording write; doubles with each failure in a row.",
    )
    recording_retry_max_ms: int = Field(
        2000,
        ge=10,
        description="Longest wait between retries of a failed recording write (recording resumes within about this long once the cause is gone).",
    )
    recording_drain_timeout_s: float = Field(
        10.0,
        ge=0,
        description="At the end of a talk or at shutdown, how long to keep retrying writes the recorder still holds before listing them as missing.",
    )
    recording_final_wait_s: float = Field(
        5.0,
        ge=0,
        description="Once a talk has ended, how long a request for recording.m4a waits for this node's copy to be final (a follower a moment behind the owner, a recorder still draining) before it is answered 503 with Retry-After.",
    )

    # --- issue 14: the control plane fails safe ---
    database_timeout_ms: int = Field(
        5000,
        ge=100,
        description="Longest a PostgreSQL connect, statement or wait for a pooled connection may take; past it (or when the database refuses), the request answers 503 with Retry-After instead of hanging.",
    )
    database_retry_after_s: int = Field(
        5,
        ge=1,
        description="Retry-After (seconds) of the 503 answered while the database cannot be reached.",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma-separated Host names (optionally host:port) share and listener URLs may be built from when public_url is empty; any other Host gets relative URLs. Empty means the bound address, localhost, 127.0.0.1 and ::1.",
    )

    revoked_sessions_max: int = Field(
        1_000_000,
        ge=100,
        description="Signed-out sessions (and 'sign out everywhere' accounts) each node remembers until their tokens expire; beyond this the one that would expire first is forgotten early (counted in townhall_revocations_evicted_total).",
    )
    revocation_sync_ms: int = Field(
        1000,
        ge=100,
        description="With Redis, how often each node reads the sign-outs made on other nodes (a signed-out session stays usable elsewhere at most this long).",
    )

    # --- issue 11: every node serves every room ---
    bus_enabled: bool = Field(
        False,
        description="Scaled out (needs REDIS_URL): exactly one node runs each live room, by a lease in Redis with a fencing token, and publishes its program on a Redis stream; every other node serves the room's listeners by following that stream, keeps a copy of the recording, and takes the room over when the owner's lease lapses.",
    )
    bus_max_entries: int = Field(
        200,
        ge=20,
        le=100_000,
        description="Entries kept in each live room's Redis stream (about 2.3 per second of audio at the default part length); a follower further behind than this resyncs at a segment boundary.",
    )
    bus_queue_entries: int = Field(
        64,
        ge=4,
        le=10_000,
        description="Bus entries an owner node buffers while Redis is slow; beyond that it drops them (counted) and followers resync.",
    )
    bus_block_ms: int = Field(
        1000,
        ge=50,
        le=30_000,
        description="How long a follower's read of a room's stream waits for the next entry before asking again.",
    )
    bus_ttl_s: int = Field(
        86_400,
        ge=60,
        description="How long a room's stream and records stay in Redis after its last write.",
    )
    room_lease_ttl_ms: int = Field(
        3000,
        ge=500,
        le=60_000,
        description="How long a room's lease lasts without renewal: a dead owner's room is taken over about this long after its last renewal.",
    )
    room_lease_renew_ms: int = Field(
        1000,
        ge=100,
        le=30_000,
        description="How often the owner renews a room's lease, and how often other nodes try to take a room whose lease lapsed; keep it well below ROOM_LEASE_TTL_MS.",
    )
    node_id: str = Field(
        "",
        description="This node's name in room leases and logs; empty means host:port:pid.",
    )

    # --- issue 12: players and pages ---
    program_waits_for_host: bool = Field(
        True,
        description="A live space starts its program (live audio and recording) only once a host, co-host or speaker has a microphone connected; until then listeners see 'Waiting for the host'.",
    )
    host_absent_end_s: float = Field(
        600.0,
        ge=0,
        description="A live space whose host and co-hosts have all been disconnected for this long ends by itself (its recording is published); 0 never ends a space by itself.",
    )
    host_absent_check_s: float = Field(
        5.0,
        gt=0,
        le=60,
        description="How often each live space is checked for an absent host (host_absent_end_s).",
    )
    live_playlist_window_segments: int = Field(
        60,
        ge=0,
        description="Live playlists (LL-HLS and plain) list only this many of the latest segments, so their size does not grow with the talk; the VOD playlist after the end and recording.m4a have everything. 0 lists every segment while live.",
    )

    # --- issue 13: captions ---
    captions: bool = Field(
        False,
        description="Caption live spaces (needs the 'captions' extra; one recognizer process per live space, about 0.15-0.3 of a core). A host can still turn captions off for their space.",
    )
    captions_engine: str = Field(
        "whisper-tiny.en",
        description="Speech recognizer for captions: 'whisper-tiny.en' (faster-whisper with the model the captions extra ships).",
    )
    captions_chunk_s: float = Field(
        5.0,
        ge=1.0,
        le=30.0,
        description="Chunks mode (captions_mode=chunks): audio recognized at a time (cut at a pause near this length): shorter shows captions sooner but costs more CPU and accuracy.",
    )
    captions_queue_s: float = Field(
        30.0,
        ge=1.0,
        description="Audio waiting for the recognizer at most; beyond it audio goes uncaptioned (counted in townhall_captions_dropped_seconds_total).",
    )
    captions_cpu_threads: int = Field(
        1, ge=1, le=16, description="Threads of each space's recognizer process."
    )
    captions_recent_lines: int = Field(
        8,
        ge=1,
        le=100,
        description="Caption lines in captions.json (the page's live caption line).",
    )
    captions_drain_timeout_s: float = Field(
        15.0,
        ge=0,
        description="At the end of a talk, how long to wait for the recognizer to caption the last audio before the transcript is written.",
    )
    clips_max_s: float = Field(
        60.0, gt=0, description="Longest clip a listener can cut, in seconds."
    )
    clips_per_listener: int = Field(
        5,
        ge=1,
        description="Clips one listener (token, or network in the replay) can cut per clips_period_s.",
    )
    clips_period_s: float = Field(600.0, gt=0, description="The period of clips_per_listener.")

    # --- issue 12: who is listening now, CORS, the recording's ends ---
    listener_presence_s: float = Field(
        8.0,
        ge=2,
        le=600,
        description="The listener count is who said 'still here' within about this long: the listener page says so every third of it (POST /api/spaces/{id}/presence), so a closed tab or a lost listener leaves the count within it.",
    )
    cors_origins: str = Field(
        "*",
        description="Origins whose pages may read listener resources (playlists, media, state.json, their problem+json): '*' for any (public spaces are meant to be embedded), or a comma-separated list such as https://news.example,https://embed.example.",
    )
    recording_trim_silence: bool = Field(
        True,
        description="When a space ends, the recording (VOD playlist and recording.m4a) stops at the last audio plus about a second, to the part, instead of running on over the silence after the host left (host_absent_end_s).",
    )

    # --- issue 11: failover and followers ---
    follower_behind_ms: int = Field(
        3000,
        ge=100,
        le=600_000,
        description="A room this node follows counts as behind (a problem in /healthz, townhall_followed_rooms_behind) when no part of it arrived for this long (in step, one arrives every part length).",
    )

    # --- issue 12: presence beats at scale ---
    presence_sample_target: int = Field(
        1024,
        ge=0,
        le=1_000_000,
        description="Listener pages of a space that say 'still here' (sampled presence): a room of up to twice this many is counted page by page; a bigger one through a sample of this to twice this many tokens (by a hash of the token), its count scaled up (error about 1/sqrt(this)); 0 counts every page always.",
    )
    presence_per_network_per_10s: int = Field(
        400,
        ge=1,
        description="Presence beats one client network (/24, /64) may send per 10 s (a counted network has at most listeners_counted_per_network pages beating every third of listener_presence_s); faster gets 429.",
    )


class Settings(DefenseSettings, _CoreSettings):
    """Every knob of townhall. Construct with keyword overrides in tests.
    (Bases listed last come first: the core settings, then the defense ones.)"""

    model_config = SettingsConfigDict(env_prefix="TOWNHALL_", extra="ignore", frozen=True)

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: str) -> str:
        import ipaddress

        for item in filter(None, (part.strip() for part in value.split(","))):
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {item!r} is not an IP address or CIDR such as 10.0.0.0/8"
                ) from None
        return value

    @field_validator("cors_origins")
    @classmethod
    def _check_cors_origins(cls, value: str) -> str:
        from townhall.origin.cors import Cors

        Cors.parse(value)
        return value

    @field_validator("webrtc_host_addresses")
    @classmethod
    def _check_host_addresses(cls, value: str) -> str:
        from townhall.live.ice import parse_addresses

        parse_addresses(value)
        return value

    def resolved_database_url(self) -> str:
        """The database URL actually used: the setting, or SQLite under data_dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'townhall.sqlite3').resolve()}"

    @property
    def recordings_dir(self) -> Path:
        return self.data_dir / "recordings"

    @property
    def recording_copy_dirs(self) -> tuple[Path, ...]:
        """``recording_copies`` as folders (this node's own not among them)."""
        return tuple(
            Path(part.strip()) for part in self.recording_copies.split(",") if part.strip()
        )

    # --- issue 13: streaming captions, recognizers per node ---
    captions_mode: str = Field(
        "stream",
        pattern="^(stream|chunks)$",
        description="How live captions are recognized: 'stream' re-reads a short sliding window every captions_step_s and shows words once two passes agree (about 2 s after they are spoken); 'chunks' recognizes captions_chunk_s pieces one after the other (cheaper to reason about, 5-7 s later).",
    )
    captions_step_s: float = Field(
        1.0,
        ge=0.25,
        le=5.0,
        description="Streaming captions: seconds of new audio between two recognition passes. Shorter shows words sooner and costs more CPU.",
    )
    captions_window_s: float = Field(
        8.0,
        ge=2.0,
        le=30.0,
        description="Streaming captions: the longest audio one pass reads (its CPU grows with it); words still unsettled at this length are taken as they stand.",
    )
    captions_max_recognizers: int = Field(
        4,
        ge=0,
        description="Recognizer processes this node runs at most (one per captioned live space, about 0.15-0.3 of a core each); beyond it a space goes on without captions and says so in state.json and captions.json.",
    )
