"""Prometheus metrics of townhall, defined once per process.

Names follow Prometheus conventions (``_total`` counters, base units). Every
bounded queue that drops, and every limit that refuses, counts it here.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter(
    "townhall_http_requests_total",
    "HTTP requests the HTTP/1.1 driver answered, by route class (the fast path's kinds: part, segment, init, playlist, state, progressive, api, problem; the app's: app_api, app_listener, app_page, app_static, app_ops; refused: before any route) and status; counted in memory and added at most a second later (origin/request_counts.py).",
    ["route", "status"],
)
PROBLEMS = Counter(
    "townhall_problems_total", "Requests answered with a problem+json error.", ["status"]
)
JOINS = Counter("townhall_joins_total", "Listener tokens issued (joins and renewals).", ["kind"])
RATE_LIMITED = Counter(
    "townhall_rate_limited_total", "Requests refused by a rate limit.", ["limit"]
)
SPACES_LIVE = Gauge("townhall_spaces_live", "Spaces live on this node.")
# -- control plane --------------------------------------------------------------
SIGNINS = Counter("townhall_signins_total", "Sign-in attempts by outcome.", ["outcome"])
REACTIONS = Counter("townhall_reactions_total", "Reactions accepted.")
STATE_COMPUTED = Counter(
    "townhall_state_json_computed_total", "Times a space's state.json was recomputed."
)
SPACE_INDEX_REFRESH_FAILURES = Counter(
    "townhall_space_index_refresh_failures_total",
    "Failed reloads of the in-memory space index from the database.",
)
# -- scaled out (Redis) -----------------------------------------------------------
SPACE_FEED_PUBLISHED = Counter(
    "townhall_space_feed_published_total",
    "Space changes (created, started, ended, cap set) this node published on the space feed (store/space_feed.py).",
)
SPACE_FEED_DROPPED = Counter(
    "townhall_space_feed_dropped_total",
    "Space changes this node did not publish, by reason (queue_full, redis); the other nodes learn them at their next space-index refresh.",
    ["reason"],
)
SPACE_FEED_RECEIVED = Counter(
    "townhall_space_feed_received_total",
    "Space feed messages this node received, by outcome: applied (into its space index), unchanged (known already, or older than what it knows), own (its own change), bad (not a space change: ignored).",
    ["outcome"],
)
SPACE_FEED_RECONNECTS = Counter(
    "townhall_space_feed_reconnects_total",
    "Times the space feed's subscription was lost (Redis away, connection killed, no answer to a ping) and made again; changes published meanwhile come in by the index refresh.",
)
REDIS_FAILURES = Counter(
    "townhall_redis_failures_total",
    "Redis operations that failed or were skipped while Redis was unreachable (the node carried on from memory, or refused sign-ins).",
    ["op"],
)
SHARED_IDS_DROPPED = Counter(
    "townhall_shared_listener_ids_dropped_total",
    "Listener token ids not counted because this node's buffer towards Redis was full.",
)
SHARED_FLUSHED = Counter(
    "townhall_shared_flushed_total",
    "Items this node flushed to Redis (listener token ids, reaction increments).",
    ["kind"],
)
# -- listener plane -------------------------------------------------------------
PROGRAM_PARTS = Counter("townhall_program_parts_total", "LL-HLS parts produced by programs.")
PROGRAM_FRAMES_DROPPED = Counter(
    "townhall_program_frames_dropped_total",
    "Mix frames dropped because a program's encoder queue was full (encoder behind).",
)
PROGRAM_FAILURES = Counter(
    "townhall_program_failures_total", "Program encoder or recorder tasks that failed."
)
HLS_BLOCKING_WAITERS = Gauge(
    "townhall_hls_blocking_waiters", "Blocking playlist reloads and part requests waiting now."
)
HLS_BLOCKING_TIMEOUTS = Counter(
    "townhall_hls_blocking_timeouts_total", "Blocking reloads answered 503 after the timeout."
)
PROGRESSIVE_LISTENERS = Gauge(
    "townhall_progressive_listeners", "Listeners connected to live.aac streams."
)
PROGRESSIVE_DROPPED = Counter(
    "townhall_progressive_dropped_total", "live.aac listeners dropped for falling behind."
)
LISTENER_BYTES = Counter(
    "townhall_listener_bytes_served_total",
    "Bytes of media and playlists served to listeners.",
    ["kind"],
)
FASTPATH_RESPONSES = Counter(
    "townhall_fastpath_responses_total",
    "Listener-plane answers written by the fast path, below the web framework (progressive: streams started).",
    ["kind"],
)
FASTPATH_FALLBACKS = Counter(
    "townhall_fastpath_fallbacks_total",
    "Requests the fast path had claimed but handed to the app after all (e.g. a hinted part that never came).",
)

# --- issue 9: admission and a fair waiting room ---
ADMISSION_DECISIONS = Counter(
    "townhall_admission_decisions_total",
    "Join decisions of capped and uncapped spaces, by outcome (admit, queue, refuse) and reason.",
    ["outcome", "reason"],
)
ADMISSION_TICKETS = Counter(
    "townhall_admission_tickets_total", "Queue tickets handed out (places in a waiting line)."
)
ADMISSION_TICK_FAILURES = Counter(
    "townhall_admission_tick_failures_total",
    "Admission ticks (moving the lines, rendering queue.json) that failed unexpectedly.",
)
MEDIA_GATE_REFUSALS = Counter(
    "townhall_media_gate_refusals_total",
    "Media requests of capped spaces refused for a missing or bad listener token.",
    ["reason"],
)
MIXER_CLOCK_LATE = Histogram(
    "townhall_mixer_clock_late_seconds",
    "How late each mixer clock tick ran against its 20 ms schedule (the speaker plane under listener load).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)

# --- issue 8/14: program restarts and recording write failures ---
PROGRAM_RESTARTS = Counter(
    "townhall_program_restarts_total",
    "Programs restarted in a new discontinuity after their encoder or packager failed.",
)
PROGRAM_GIVEN_UP = Counter(
    "townhall_program_given_up_total",
    "Programs marked failed after too many restarts in a row (their space says so).",
)
RECORDING_WRITE_FAILURES = Counter(
    "townhall_recording_write_failures_total",
    "Recording writes that failed and will be retried, by cause (errno name).",
    ["cause"],
)
RECORDING_SEGMENTS_MISSING = Counter(
    "townhall_recording_segments_missing_total",
    "Segments left out of a recording (listed as missing in its manifest) because the backlog was full or the talk ended before they could be written.",
)
RECORDING_BACKLOG_BYTES = Gauge(
    "townhall_recording_backlog_bytes",
    "Bytes of segments held in memory because they could not be recorded yet (all spaces).",
)

# --- issue 8: the origin package ---
LISTENER_WAKE_FAILURES = Counter(
    "townhall_listener_wake_failures_total",
    "Listener wake-up callbacks that raised (logged with the traceback; the others still ran).",
)

# speaker plane (were defined in live/stage.py)
TASK_FAILURES = Counter(
    "townhall_stage_task_failures_total",
    "Unexpected failures of a stage task (logged with a traceback).",
    ["task"],
)
OFFERS = Counter("townhall_webrtc_offers_total", "WebRTC offers by outcome.", ["outcome"])
SPEAKERS_CONNECTED = Gauge(
    "townhall_speakers_connected", "Speaker peers connected on this node (all spaces)."
)
CLOCK_SKIPPED_FRAMES = Counter(
    "townhall_mixer_skipped_frames_total",
    "Mixer frames skipped because the clock fell behind by more than clock_max_catchup_ms.",
)
JITTER_DROPPED_FRAMES = Counter(
    "townhall_jitter_dropped_frames_total",
    "Speaker frames dropped because their jitter buffer was full.",
)
JITTER_UNDERRUNS = Counter(
    "townhall_jitter_underruns_total",
    "Mixer ticks that found a speaker's jitter buffer empty (silence played).",
)
RETURN_DROPPED_FRAMES = Counter(
    "townhall_mix_minus_dropped_frames_total",
    "Mix-minus frames dropped because a speaker's outgoing queue was full.",
)

# --- issue 14: the control plane fails safe ---
REVOCATIONS = Counter(
    "townhall_revocations_total",
    "Sign-outs made on this node (one session, or every session of an account).",
    ["kind"],
)
REVOCATIONS_EVICTED = Counter(
    "townhall_revocations_evicted_total",
    "Sign-outs forgotten before their tokens expired because revoked_sessions_max was reached.",
)

# --- issue 11: every node serves every room ---
BUS_PUBLISHED = Counter(
    "townhall_bus_published_total", "Entries this node wrote to the segment bus, by kind.", ["kind"]
)
BUS_DROPPED = Counter(
    "townhall_bus_dropped_total",
    "Bus entries an owner dropped because Redis was too slow or away (followers resync).",
)
BUS_FENCED = Counter(
    "townhall_bus_fenced_total",
    "Bus writes refused because this node no longer holds the room's lease.",
)
BUS_FAILURES = Counter(
    "townhall_bus_failures_total", "Segment bus operations that failed, by operation.", ["op"]
)
BUS_GAPS = Counter(
    "townhall_bus_gaps_total",
    "Times a follower found entries missing (fell behind the stream's length, or Redis lost data).",
)
BUS_RESYNCS = Counter(
    "townhall_bus_resyncs_total",
    "Times a follower restarted its window at a segment boundary after missing entries.",
)
FOLLOWED_ROOMS = Gauge(
    "townhall_followed_rooms", "Live rooms this node serves by following another node's bus."
)
ROOM_TAKEOVERS = Counter(
    "townhall_room_takeovers_total", "Rooms this node took over after their owner's lease lapsed."
)
# --- issue 10: layered defense and evidence ---
EVIDENCE_RECORDS = Counter(
    "townhall_evidence_records_total",
    "Evidence records signed and stored (one per space per interval).",
)
EVIDENCE_FAILURES = Counter(
    "townhall_evidence_failures_total",
    "Evidence intervals or records that could not be closed or stored.",
)
STALL_REPORTS = Counter("townhall_stall_reports_total", "Players' stall reports accepted.")
CHALLENGES = Counter(
    "townhall_challenges_total",
    "Proof-of-work challenges by outcome (issued, solved, and each failure reason).",
    ["outcome"],
)
CHALLENGE_BITS = Gauge(
    "townhall_challenge_bits",
    "Proof-of-work effort asked of joins now (0: no pressure, no challenge).",
)
PASSWORD_HASHES = Counter(
    "townhall_password_hashes_total",
    "Password hashes by outcome: done, or refused because the hashing queue was full.",
    ["outcome"],
)
PASSWORD_HASH_QUEUE = Gauge(
    "townhall_password_hash_queue", "Password hashes waiting for or using a hashing thread."
)
SPACE_LIMITS = Counter(
    "townhall_space_limits_total",
    "Space creations refused by an account limit (live, scheduled, rate).",
    ["limit"],
)
NETWORK_UNCOUNTED = Counter(
    "townhall_network_uncounted_total",
    "Listeners or reactions not counted because their client network passed its cap.",
    ["kind"],
)
# --- issue 10: connection limits (origin/http1.py) ---
HTTP_CONNECTIONS_OPEN = Gauge(
    "townhall_http_connections_open", "HTTP connections open now (admitted by the connection caps)."
)
HTTP_CONNECTIONS_REFUSED = Counter(
    "townhall_http_connections_refused_total",
    "Connections answered 503 and closed at once because a connection cap was reached (network: the client network's, total: the process's).",
    ["reason"],
)
HTTP_CONNECTIONS_CLOSED = Counter(
    "townhall_http_connections_closed_total",
    "Connections the HTTP driver closed on a limit or a protocol error (head_too_large, header_timeout, body_timeout, body_too_large, idle, max_requests, bad_request, upgrade, internal).",
    ["reason"],
)
HTTP_APP_ERRORS = Counter(
    "townhall_http_app_errors_total",
    "Requests whose ASGI app call raised or ended without a complete answer (500 sent, or the connection closed).",
)

# --- issue 13: captions ---
CAPTIONS_DROPPED_SECONDS = Counter(
    "townhall_captions_dropped_seconds_total",
    "Seconds of program audio not captioned because the recognizer fell behind (its bounded queue was full).",
)
CAPTIONS_LINES = Counter(
    "townhall_captions_lines_total",
    "Caption lines recognized (all spaces).",
)
CAPTIONS_FAILURES = Counter(
    "townhall_captions_failures_total",
    "Spaces whose captions stopped or never started (engine missing, failed to load, worker died).",
)
CLIPS_MADE = Counter("townhall_clips_total", "Clips cut (all spaces).")
CLIP_SECONDS = Histogram(
    "townhall_clip_seconds",
    "Time to cut one clip from the recorded segments.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5),
)

# --- issue 11: failover and followers ---
BUS_PART_LAG = Histogram(
    "townhall_bus_part_lag_seconds",
    "On a follower: from the end of a part by the owner's program date time to its arrival here (includes the owner's pipeline and its program clock's offset: watch it for changes).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FOLLOWED_ROOMS_BEHIND = Gauge(
    "townhall_followed_rooms_behind",
    "Rooms this node follows whose newest part is older than follower_behind_ms.",
)
FOLLOWER_LAG_MAX = Gauge(
    "townhall_follower_lag_max_seconds",
    "The largest lag of the rooms this node follows: how long since their newest part arrived here.",
)

# --- issue 11: the media process ---
MEDIA_CHANNEL_DROPPED = Counter(
    "townhall_media_channel_dropped_total",
    "Frames the media process dropped because the HTTP process was not reading its channel (its window copy then resyncs).",
)
MEDIA_RESYNCS = Counter(
    "townhall_media_resyncs_total",
    "Times the HTTP process restored a room's window copy from a media process snapshot after a gap.",
)
MEDIA_PROCESS_EXITS = Counter(
    "townhall_media_process_exits_total",
    "Times the media process ended while the server was running (its rooms stop; see the log).",
)

# --- issue 13: streaming captions, recognizers per node ---
CAPTIONS_RECOGNIZERS = Gauge(
    "townhall_captions_recognizers",
    "Recognizer processes running on this node (at most captions_max_recognizers).",
)
CAPTIONS_REFUSED = Counter(
    "townhall_captions_refused_total",
    "Live spaces that went on without captions because this node ran captions_max_recognizers already.",
)

# --- issue 12: presence beats at scale ---
PRESENCE_BEATS = Counter(
    "townhall_presence_beats_total",
    "Presence beats (POST /api/spaces/{id}/presence) with a valid token: counted, outside the sample (ignored), or for a space not live.",
    ["outcome"],
)

# --- issue 9 at full size (h7): what the origin answers for the waiting room ---
QUEUE_DOCUMENTS = Counter(
    "townhall_queue_documents_total",
    "queue.json answers the origin wrote (200 or 304); behind a cache this stays O(1) per second however many wait.",
    ["status"],
)

# --- issue 11: HTTP workers and owner-only requests passed on (server/workers.py, server/forward.py) ---
FORWARDED = Counter(
    "townhall_forwarded_requests_total",
    "Requests only a room's owner can answer that this node passed on to the owner: answered (the owner's status, passed back), unreachable (no owner known, or it could not be reached: 503), timeout (504), cut (the owner's answer stopped midway).",
    ["outcome"],
)

# --- issue 11: a room's seats on every node (live/seats.py, store/seat_board.py) ---
SEATS_PUBLISHED = Counter(
    "townhall_seats_published_total",
    "Seat documents (connected, muted, speaking, level, program health) this node published for the rooms it runs: written, or fenced (another node holds the room now).",
    ["outcome"],
)
SEATS_SHOWN = Counter(
    "townhall_seats_shown_total",
    "state.json computations of a live room run on another node, by what the owner's published seats were worth: ok, starting (none yet), moving (stale, or the room changed hands), unknown (Redis unreachable).",
    ["status"],
)
# --- issue 10 at full size (h4): connections that ignore Retry-After (origin/retry_penalty.py) ---
HTTP_REFUSED_PAUSES = Counter(
    "townhall_http_refused_pauses_total",
    "Times the HTTP driver stopped reading a connection because its request was refused (429, 401) while an earlier refusal's Retry-After was still running (http_refused_pause_max_s).",
)

# --- issue 11: a listener worker hands a connection to the primary (origin/handoff.py) ---
HANDOFFS = Counter(
    "townhall_handoffs_total",
    "Connections handed from a listener worker to the primary (SCM_RIGHTS) by outcome: in a listener worker, taken (the primary has it) or timeout (not taken in handoff_timeout_ms: answered 503); in the primary, adopted (served from here on), late (arrived after the worker gave up: dropped) or failed (could not be adopted).",
    ["outcome"],
)
HANDOFF_FALLBACKS = Counter(
    "townhall_handoff_fallbacks_total",
    "Requests a listener worker passed to the primary over loopback HTTP instead of handing the connection over, by reason: later (a later request on the connection that could not be handed then: pipelined behind another, or sent while an answer was still being written), unavailable (no handoff socket: the primary restarting or handoffs off), busy (the socket would block), large (more was read than the head limit and a body's high-water mark), tls.",
    ["reason"],
)


# -- Prometheus text, merged across processes (the media process, listener workers)


def family_of(name: str) -> str:
    """The family a ``# HELP`` line's name belongs to (a counter's ``_total``
    and ``_created`` are one family)."""
    for suffix in ("_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def text_blocks(text: str) -> dict[str, list[str]]:
    """Prometheus text ``text`` cut into its families' blocks (each from its
    ``# HELP`` line on, every line ending in a newline), in order."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        if line.startswith("# HELP "):
            current = blocks.setdefault(family_of(line[7:].split(" ", 1)[0]), [])
        if current is not None:
            current.append(line if line.endswith("\n") else line + "\n")
    return blocks
