"""The defense layers' settings (issue 10): evidence, per-network buckets,
proof-of-work, account limits and the HTTP driver's connection limits. Part of
:class:`townhall.config.Settings` (same flags, same ``TOWNHALL_*`` variables)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class DefenseSettings(BaseSettings):
    """Mixed into Settings; not constructed on its own."""

    # --- issue 10: layered defense and evidence ---
    evidence_interval_s: float = Field(
        10.0,
        ge=1,
        le=300,
        description="Length of one evidence interval (one signed record per space).",
    )
    evidence_max_spaces: int = Field(
        1024,
        ge=1,
        description="Spaces one node records evidence for at once; more are not recorded (counted).",
    )
    evidence_max_records: int = Field(
        4320,
        ge=1,
        description="Evidence records per space kept in memory (12 h at 10 s); the whole chain is on disk beside the recording.",
    )
    evidence_max_keys: int = Field(
        4096,
        ge=16,
        description="Client networks and clients tracked exactly per interval (for rates, entropy, returning share); hits beyond are counted as untracked.",
    )
    evidence_busy_arrivals: int = Field(
        100, ge=1, description="Evidence rule: arrivals per interval from which it is not 'quiet'."
    )
    evidence_busy_requests: int = Field(
        1000, ge=1, description="Evidence rule: requests per interval from which it is not 'quiet'."
    )
    evidence_hot_rate_per_s: float = Field(
        1.0,
        gt=0,
        description="Evidence rule: per-client request rate (p99) from which clients ask faster than players do.",
    )
    evidence_max_age_s: int = Field(
        5, ge=0, le=300, description="Cache-Control max-age of evidence.json."
    )
    stall_report_interval_s: float = Field(
        30.0,
        ge=1,
        description="Players report their stalls at most once per this many seconds each (more are refused with 429).",
    )
    spaces_live_per_account: int = Field(
        3, ge=1, description="Live spaces one account may have at once; more gets 409."
    )
    spaces_scheduled_per_account: int = Field(
        20,
        ge=1,
        description="Scheduled (not yet live) spaces one account may have at once; more gets 409.",
    )
    spaces_created_per_account_per_hour: int = Field(
        20, ge=1, description="Spaces one account may create per hour; faster gets 429."
    )
    password_hash_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Threads that hash passwords (argon2), apart from every other pool so sign-in floods cannot starve the mixer.",
    )
    password_hash_queue: int = Field(
        16,
        ge=0,
        description="Password hashes that may wait for a thread; a sign-in or sign-up beyond gets 503 with Retry-After.",
    )
    listeners_counted_per_network: int = Field(
        64,
        ge=1,
        description="Distinct listeners one client network (/24, /64) adds to a space's listener count per token lifetime; more still listen but are not counted.",
    )
    reactions_per_network_per_10s: int = Field(
        60,
        ge=1,
        description="Reactions one client network (/24, /64) may send per 10 s to a space.",
    )
    joins_per_network_per_10s: int = Field(
        200,
        ge=1,
        description="Joins (and ticket exchanges) one client network (/24, /64) may make per 10 s; faster gets 429.",
    )
    state_per_network_per_10s: int = Field(
        2000,
        ge=1,
        description="state.json requests one client network may make per 10 s (a cache in front absorbs the rest).",
    )
    # Sized for what a network of players sends: an LL-HLS player (hls.js, Safari,
    # the listener page) asks once without directives when it starts (or after an
    # error), then only blocking reloads, never limited here; a plain HLS player
    # (plain.m3u8, radio apps, VLC) reloads once per target duration (4 s at the
    # defaults). 50 per 10 s: 50 players of one /24 starting in the same second
    # (5 more each second after), or 20 plain HLS players reloading; more get
    # Retry-After 1 s and retry. A network with more (a campus behind one NAT)
    # is served by a cache in front. A flood from 1,000 networks then gets 5 a
    # second each: at 100 per 10 s the flood's first burst alone took the
    # listeners' goodput to 0.96 (issue 10 at full size: docs/BENCHMARKS.md).
    playlists_per_network_per_10s: int = Field(
        50,
        ge=1,
        description="Playlist requests without delivery directives (and plain.m3u8 reloads) one client network may make per 10 s (burst as many): an LL-HLS player asks once when it starts, a plain HLS player once per target duration; more get 429 with Retry-After.",
    )
    challenge_joins_per_s: float = Field(
        200.0,
        gt=0,
        description="Join rate per node above which joins must carry a proof-of-work answer (the join path is under pressure).",
    )
    challenge_min_bits: int = Field(
        12,
        ge=0,
        le=32,
        description="Least proof-of-work effort asked (leading zero bits of SHA-256).",
    )
    challenge_max_bits: int = Field(
        22,
        ge=0,
        le=32,
        description="Most proof-of-work effort asked, however hard the join path is pressed.",
    )
    challenge_start_bits: int = Field(
        16,
        ge=0,
        le=32,
        description="Proof-of-work effort asked when pressure starts (about 1 s in a browser's Web Worker).",
    )
    challenge_ttl_s: int = Field(
        120, ge=5, description="How long a proof-of-work challenge may be answered."
    )
    challenge_seen_max: int = Field(
        200_000,
        ge=1000,
        description="Solved challenges remembered to refuse replays (bounded; oldest forgotten first).",
    )
    challenge_unsolved_joins_per_s: int = Field(
        20,
        ge=0,
        description="While proof-of-work is asked, joins per second per node let in without an answer (radio apps, no JavaScript): never walled off, only slower; 0 lets them in only once pressure drops.",
    )
    refusals_per_network_per_10s: int = Field(
        100,
        ge=1,
        description="Refused API answers (401 for forged or expired tokens, 429) one client network, or one token, may get per 10 s; past it its API requests get 429 before any work.",
    )
    returning_mark_ttl_s: int = Field(
        30 * 86400,
        ge=60,
        description="How long the signed 'seen before' mark given at admission gives priority.",
    )

    # --- issue 10: connection limits (origin/http1.py) ---
    http_max_head_bytes: int = Field(
        16 * 1024,
        ge=1024,
        description="Largest request line plus headers accepted; a larger one is answered 431 and its connection closed.",
    )
    http_header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request whose line and headers are not complete this long after its first byte is answered 408 and its connection closed (slow-header attacks).",
    )
    http_body_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A request whose body is not complete this long after its first byte is answered 408 (or cut if the answer started) and its connection closed.",
    )
    http_keepalive_idle_s: float = Field(
        5.0,
        gt=0,
        description="An open connection with no request in progress is closed after this long without one.",
    )
    http_max_requests_per_connection: int = Field(
        0,
        ge=0,
        description="Requests served on one connection before it is closed (the last answer says Connection: close); 0 means no limit.",
    )
    http_max_connections_per_network: int = Field(
        2048,
        ge=0,
        description="Open connections per client network (/24 for IPv4, /64 for IPv6, by the TCP peer's address; peers in trusted_proxies are exempt). A connection over it is answered 503 with Retry-After and closed; 0 means no limit.",
    )
    http_max_connections: int = Field(
        0,
        ge=0,
        description="Open connections in all; always kept at least 10 % (256 at least) below the file descriptor limit, which townhall serve raises to its hard limit at start. 0 means that ceiling.",
    )

    # --- issue 11: the media process ---
    media_process: bool = Field(
        True,
        description="Run every room's stage, mixer clock and program in a media process of its own, so no HTTP request can delay the clock; the HTTP process keeps a copy of each live window (as a follower node does) and proxies speakers' WebRTC offers. Its speakers, health, captions and live.aac reach the HTTP process over a local channel. Scaled out, the HTTP process keeps the room's lease and publishes its copy on the segment bus. Off: rooms run in the HTTP process (its requests can then delay the clock).",
    )
    media_channel_queue_frames: int = Field(
        4096,
        ge=16,
        description="Frames the media process queues towards the HTTP process at most; beyond it frames are dropped (counted in townhall_media_channel_dropped_total) and the HTTP process resyncs its copy from a snapshot.",
    )
    media_log_entries: int = Field(
        512,
        ge=16,
        description="Window calls the media process keeps per room for a copy that fell behind (a snapshot); about a minute of parts at the defaults.",
    )
    media_status_interval_ms: int = Field(
        250,
        ge=20,
        le=5000,
        description="How often the media process tells the HTTP process each room's speakers (connected, speaking, level) and program health.",
    )
    media_call_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Longest the HTTP process waits for the media process to answer a call (start or end a room, a WebRTC offer); it then answers 503.",
    )
    media_process_restarts: int = Field(
        5,
        ge=0,
        le=100,
        description="One machine: times in a row the HTTP process restarts a media process that ended by itself (0.5 s, then doubling up to 8 s), each live room resuming in a new discontinuity from its recording; a media process that ran a minute resets the count. 0: rooms stay stopped until their host starts them again. Scaled out, the rooms' leases are let go instead and the next lease round resumes them (here or on another node).",
    )
    media_process_nice: int = Field(
        -5,
        ge=-20,
        le=19,
        description="Nice value added to the media process's priority: negative puts its clock ahead of the HTTP workers and of other programs on a busy machine (a negative value needs CAP_SYS_NICE; without it a warning is logged and the process runs at the default priority).",
    )
    media_process_rt_priority: int = Field(
        10,
        ge=0,
        le=99,
        description="Real-time (SCHED_RR) priority of the media process, 1-99, as audio servers use: its clock then never waits behind other programs for a CPU (it uses ~0.1 core per room; the kernel keeps real-time tasks below 95 % of a core). Needs CAP_SYS_NICE (root, or setcap/systemd's LimitRTPRIO); without it a warning is logged and media_process_nice applies. 0 leaves it to media_process_nice.",
    )

    # --- issue 10: waiting-line priority (policy/priority.py) ---
    queue_priority_window_s: float = Field(
        0.5,
        ge=0,
        le=10,
        description="Arrivals that must queue are numbered together per this window: returning clients first, then those who solved the challenge, then those who could not; 0 numbers each at once (first come, first served).",
    )
    queue_priority_max_pending: int = Field(
        10_000,
        ge=1,
        description="Arrivals per space waiting for their window to close; more are numbered at once, in arrival order.",
    )

    # --- issue 10: listen backlog (server/run.py) ---
    http_listen_backlog: int = Field(
        16384,
        ge=1,
        le=1_048_576,
        description="Connections the kernel queues for the server before it accepts them (uvicorn's default is 2048, which 10,000 slow connections fill so a new listener cannot connect); `serve` caps it at /proc/sys/net/core/somaxconn and logs when it does (raise that sysctl to get more).",
    )

    # --- issue 10: lean API answers in the HTTP/1.1 driver (server/lean.py) ---
    lean_api_answers: bool = Field(
        True,
        description="The HTTP/1.1 driver answers joins (the join gate's refusals, admissions and queue tickets) and presence beats itself, with the app's bytes, instead of handing them to the framework (a join costs a fraction of the CPU under a flood); off: the app's routes answer them. Joins with an Authorization header or behind X-Forwarded-For always go to the app.",
    )

    # --- issue 10: the cyclic collector under many open connections (server/run.py) ---
    gc_full_pass_every: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Middle-generation passes of Python's cyclic collector between two full passes (gc threshold 2; Python's default is 10). Thousands of open connections (a slowloris) make each full pass take tens of milliseconds of one event loop, which delays listeners and the mixer clock; spacing them out keeps those stalls rare. Young cycles are still collected as often.",
    )

    # --- memory under an attacker that reconnects (memdebug.py) ---
    memory_report_on_sigusr2: bool = Field(
        False,
        description="Debugging: every HTTP process and the media process log a memory report on SIGUSR2 (RSS, CPython's allocator, glibc's heaps in use and free, live objects by type, then RSS after a full collection and after glibc's malloc_trim). Walking every object holds the event loop for up to a second.",
    )
    memory_trace_frames: int = Field(
        0,
        ge=0,
        le=100,
        description="Debugging, with memory_report_on_sigusr2: trace Python's allocations (tracemalloc, this many frames each) and add the sites holding the most to the report. Allocation becomes 2-4 times slower. 0: no tracing.",
    )

    # --- issue 11: HTTP workers sharing the port (server/workers.py, server/forward.py) ---
    http_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="HTTP worker processes on the one port (SO_REUSEPORT: the kernel spreads connections); 0 (the default): one per core this process may use (taskset, a container's CPU set). Scaled out (BUS_ENABLED with DATABASE_URL and REDIS_URL) each worker is a node named <node_id>-w<k> with its own data directory DATA_DIR/workers/w<k> (a recording its copy lacks is served from the most complete copy on this machine). Embedded (no Redis), worker 1 is the primary (the control plane, the media process, DATA_DIR) and the others answer the listener plane from copies of its rooms and pass everything else on to it. With media_process off: one process. The parent restarts a worker that dies and stops them all on SIGTERM. 1: one process. Also --workers.",
    )
    recording_copies: str = Field(
        "",
        description="Other recording folders on this machine that hold copies of the same spaces' recordings, comma-separated (HTTP workers: set by the supervisor to DATA_DIR/recordings and the other workers' folders). A recording this node's own copy lacks or has only in part (it started after the space, or restarted mid-room) is served from the most complete copy. Empty: only this node's own.",
    )
    worker_role: str = Field(
        "",
        pattern="^(|primary|listener)$",
        description="Set by the supervisor of HTTP workers without the scaled-out mode (server/local_bus.py): 'primary' is the whole server (control plane, media process, DATA_DIR); 'listener' answers the listener plane from copies of the primary's rooms and passes every other request on to it. Empty: a server of its own (or a scaled-out worker).",
    )
    local_bus_secret: str = Field(
        "",
        description="Set by the supervisor: the secret a listener worker shows the primary to read its rooms' window calls. Empty: the primary's local bus answers nobody.",
    )
    http_handoff: bool = Field(
        True,
        description="HTTP workers without Redis: a listener worker hands a connection whose first request it would pass on (a join, a page, the API) to the primary over a Unix socket (DATA_DIR/run/handoff.sock, SCM_RIGHTS), which serves it from then on; false: every such request is passed on over loopback HTTP.",
    )
    handoff_timeout_ms: int = Field(
        1000,
        ge=10,
        le=30_000,
        description="Longest a listener worker waits for the primary to take a connection it hands over; then it answers 503 with Retry-After and closes the connection (the primary drops it if it arrives later).",
    )
    secret_proxies: str = Field(
        "",
        description="Set by the supervisor of HTTP workers: peers (the other workers' loopback) whose X-Forwarded-For is believed only on a request that also carries the supervisor's secret (local_bus_secret); without it the request is keyed on the peer's own address. Peers in the operator's own trusted_proxies are not affected.",
    )
    local_bus_entries: int = Field(
        256,
        ge=16,
        le=100_000,
        description="Window calls of each room the primary keeps for the listener workers (about 2 per part); a worker further behind restores its copy from a snapshot (counted as a resync).",
    )
    listener_worker_max_rooms: int = Field(
        1000,
        ge=1,
        le=100_000,
        description="Live rooms a listener worker keeps copies of at most; requests for more go to the primary.",
    )
    worker_restart_backoff_ms: int = Field(
        500,
        ge=10,
        le=60_000,
        description="Wait before restarting an HTTP worker that died; doubled after each death that came soon after a start, up to worker_restart_backoff_max_ms.",
    )
    worker_restart_backoff_max_ms: int = Field(
        10_000,
        ge=10,
        le=600_000,
        description="Longest wait before restarting an HTTP worker that keeps dying.",
    )
    forward_owner_only: bool = Field(
        True,
        description="Scaled out: a request only the room's owner can answer (a WebRTC offer, live.aac, mute, unmute, demote, block, captions on/off) that reaches another node or worker is passed on to the owner (its address from Redis) instead of answered 503; a passed-on request is never passed on again.",
    )
    forward_url: str = Field(
        "",
        description="Scaled out: where other nodes send this node the requests only it can answer, e.g. http://10.0.0.11:8000. Empty: http://127.0.0.1:PORT (HTTP workers: each worker's own loopback port), which reaches only nodes on this machine.",
    )
    forward_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        description="Longest a passed-on request waits for the owner to connect and start its answer, and between two chunks of a streamed answer (live.aac); then 504.",
    )
    forward_max_connections: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Connections this node keeps open at most to other nodes for passed-on requests; more wait for one (up to forward_timeout_s).",
    )

    # --- issue 11: a room's seats on every node ---
    seat_status_interval_ms: int = Field(
        500,
        ge=50,
        le=10_000,
        description="Scaled out: how often the node that runs a room publishes its seats (connected, muted, speaking, level) and program health for the other nodes' state.json; also at once after a mute, unmute, demote or block.",
    )
    seat_status_stale_ms: int = Field(
        2000,
        ge=100,
        le=60_000,
        description="Scaled out: published seats older than this (by Redis's clock) are stale: other nodes' state.json then shows every seat not connected and the room as moving, instead of the old values. Keep it above SEAT_STATUS_INTERVAL_MS.",
    )

    # --- a space's go-live on every node at once (store/space_feed.py) ---
    space_feed: bool = Field(
        True,
        description="With REDIS_URL: each node publishes the spaces it writes (created, started, ended, cap set) on Redis pub/sub and every node puts them into its space index at once, so a go-live draws and shows in queue.json on every node within milliseconds; off, other nodes learn them at their next SPACE_INDEX_REFRESH_MS refresh (which stays on either way, for messages lost while Redis was away).",
    )
    space_feed_queue: int = Field(
        256,
        ge=1,
        le=100_000,
        description="Space changes waiting to be published at most; beyond it a change is not published (counted in townhall_space_feed_dropped_total) and the other nodes learn it at their next index refresh.",
    )
    space_feed_max_message_bytes: int = Field(
        4096,
        ge=256,
        le=1_048_576,
        description="Largest space feed message a node reads; a longer one is ignored and counted as bad.",
    )
    space_feed_backoff_ms: int = Field(
        100,
        ge=10,
        le=60_000,
        description="After the space feed's subscription is lost, how long the node waits before subscribing again; doubled after each failure in a row, up to SPACE_FEED_BACKOFF_MAX_MS.",
    )
    space_feed_backoff_max_ms: int = Field(
        5000,
        ge=10,
        le=600_000,
        description="The longest wait between two attempts to subscribe to the space feed again.",
    )
    space_feed_ping_s: float = Field(
        5.0,
        ge=0.1,
        le=300,
        description="A space feed subscription silent this long is pinged; one silent for twice this (no message, no answer to the ping) is taken as lost and made again.",
    )
    # --- issue 10 at full size (h4): a connection that ignores Retry-After (origin/retry_penalty.py) ---
    http_refused_pause_max_s: float = Field(
        30.0,
        ge=0,
        le=600,
        description="A connection whose request is refused (429, or 401: a wait of 1 s) while an earlier refusal's Retry-After is still running is not read until that wait is over, each such refusal in a row doubling the wait (stretched by up to half at random) up to this many seconds: a flood that pipelines past its refusals then costs a timer, not an answer per request; a client that waits as told is never paused. 0: never paused.",
    )
    http_refused_pause_check_s: float = Field(
        1.0,
        ge=0,
        le=60,
        description="While a connection is not read for ignoring Retry-After (http_refused_pause_max_s), look this often whether its peer has closed its side (Linux TCP_INFO, one system call) and close it then: an attacker that reconnects once paused would otherwise leave each closed connection holding its descriptor, parser and unread requests for the rest of its pause, thousands at a time. 0: never look (the connection is closed when the pause ends).",
    )
    state_per_connection_per_10s: int = Field(
        30,
        ge=0,
        description="state.json requests one connection may make per 10 s (burst as many) when the HTTP/1.1 driver answers them: the listener page asks once per max-age (1-2 s), a few tabs may share a connection; a flood that pipelines it on one connection gets 429 (and then is not read, http_refused_pause_max_s). Peers behind one NAT each have their own connections; a cache in front needs none. 0: no per-connection limit (the per-network bucket still applies).",
    )
    # --- issue 10: the listener page's HTML flooded on one connection ---
    pages_per_connection_per_10s: int = Field(
        10,
        ge=0,
        description="Listener page (GET /spaces/{id}, HTML) requests one connection may make per 10 s (burst as many) when the HTTP/1.1 driver reads them: a browser loads the page once and reloads it by hand; a flood that pipelines it on one connection gets 429 (and then is not read, http_refused_pause_max_s). Peers behind one NAT each have their own connections; trusted proxies are exempt. 0: no limit.",
    )
