// How a live microphone notices that the server is gone and comes back by
// itself (a node killed, a room taken over by another node): pure rules, no
// timers and no WebRTC here, so they are unit-tested with plain values.
// speak.js drives them with RTCPeerConnection.getStats() and fetch().
// The figures follow `townhall speak` (client/speak.py, class Reconnect).

import { ApiError } from "./api.js";

/**
 * The page's reconnect policy (constants: the pages read no setting for it).
 *   for_ms: how long re-offers go on after a loss before the page gives up;
 *   first_ms..max_ms: backoff between new peer connections (jittered);
 *   refused_ms: the pause before re-posting the same offer after an answer of
 *     502/503/504/429 (the room is moving to another node); a network error
 *     or no answer waits first_ms..max_ms and tries a new peer connection;
 *   return_stall_ms + confirm_ms: lost when the return audio (sent every
 *     frame) stops for return_stall_ms AND the server's receiver reports stop
 *     for confirm_ms (one signal alone may be a busy client);
 *   stall_ms: lost when the receiver reports alone stop this long;
 *   disconnected_ms: lost when ICE stays "disconnected" this long;
 *   own_lag_ms: a gap this long between two looks means the page itself was
 *     held up (a busy machine, a throttled tab): judge nothing for confirm_ms;
 *   connect_ms: how long one re-posted offer, and then its ICE connection, may take.
 */
export const RECONNECT = Object.freeze({
  for_ms: 30000,
  first_ms: 500,
  max_ms: 4000,
  refused_ms: 200,
  return_stall_ms: 1500,
  confirm_ms: 2000,
  stall_ms: 5000,
  disconnected_ms: 4000,
  own_lag_ms: 1000,
  connect_ms: 5000,
});

/**
 * What getStats() says about one peer connection: the audio packets received
 * from the server (the mix-minus return) and a counter that grows with every
 * RTCP receiver report the server sends about our microphone. `report` is an
 * RTCStatsReport or any iterable of stats objects (or a Map of them).
 */
export function readStats(report) {
  let received = 0;
  let reports = 0;
  const values = typeof report?.values === "function" ? report.values() : report || [];
  for (const s of values) {
    if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "audio") {
      received += Number(s.packetsReceived) || 0;
    } else if (s.type === "remote-inbound-rtp" && (s.kind || s.mediaType || "audio") === "audio") {
      // Chromium counts the round trips measured from receiver reports; without
      // that field, the report's timestamp moves with each new receiver report
      reports += Number.isFinite(s.roundTripTimeMeasurements) ? s.roundTripTimeMeasurements : Number(s.timestamp) || 0;
    }
  }
  return { received, reports };
}

/**
 * Judges a live peer connection from periodic looks.
 *   const watch = new LossWatch(RECONNECT, performance.now());
 *   watch.observe({at_ms, state, received, reports}) -> {verdict, reason}
 * verdict: "ok", "interrupted" (say so, not lost yet) or "lost" (reason: a
 * sentence). `state` is RTCPeerConnection.connectionState.
 */
export class LossWatch {
  constructor(policy = RECONNECT, now_ms = 0) {
    this.policy = policy;
    this.lookedAt = now_ms;
    this.blindUntil = 0;
    this.received = -1;
    this.reports = -1;
    this.receivedAt = now_ms;
    this.reportsAt = now_ms;
    this.disconnectedSince = null;
  }

  observe({ at_ms, state, received = 0, reports = 0 }) {
    const p = this.policy;
    if (at_ms - this.lookedAt > p.own_lag_ms) this.blindUntil = at_ms + p.confirm_ms;
    this.lookedAt = at_ms;
    if (received !== this.received) {
      this.received = received;
      this.receivedAt = at_ms;
    }
    if (reports !== this.reports) {
      this.reports = reports;
      this.reportsAt = at_ms;
    }
    if (state === "failed" || state === "closed") {
      return { verdict: "lost", reason: "The audio connection to the server failed." };
    }
    if (state === "disconnected") {
      if (this.disconnectedSince === null) this.disconnectedSince = at_ms;
    } else {
      this.disconnectedSince = null;
    }
    const judging = at_ms >= this.blindUntil;
    const returnStalled = at_ms - this.receivedAt >= p.return_stall_ms;
    const reportsStalled = at_ms - this.reportsAt >= p.confirm_ms;
    if (judging && returnStalled && reportsStalled) {
      return { verdict: "lost", reason: "The server stopped answering." };
    }
    if (judging && at_ms - this.reportsAt >= p.stall_ms) {
      return { verdict: "lost", reason: "The server stopped confirming your audio." };
    }
    if (this.disconnectedSince !== null) {
      if (at_ms - this.disconnectedSince >= p.disconnected_ms) {
        return { verdict: "lost", reason: "The audio connection was interrupted." };
      }
      return { verdict: "interrupted", reason: "The connection is interrupted." };
    }
    return { verdict: "ok", reason: "" };
  }
}

/** The pause before the next new peer connection: exponential, jittered (no stampede of pages). */
export function retryDelayMs(attempt, policy = RECONNECT, random = Math.random) {
  const base = Math.min(policy.max_ms, policy.first_ms * 2 ** Math.min(Math.max(0, attempt), 30));
  return Math.round(base * (0.5 + random() / 2));
}

/** The pause before re-posting the same offer after a refusal that passes (about refused_ms). */
export function refusedDelayMs(policy = RECONNECT, random = Math.random) {
  return Math.round(policy.refused_ms * (0.5 + random()));
}

/**
 * Whether asking again may work: the room is moving to another node (503),
 * the proxy found no node for it (502, 504), too many requests (429), the
 * network (fetch's TypeError), an offer or a connection that got nothing in time.
 * Refusals that only a person can fix (401, 403, 404, 409, 422, a microphone
 * the browser took away) are not.
 */
export function retryable(err) {
  if (err instanceof ApiError) return err.status === 429 || err.status >= 500;
  if (err instanceof TypeError) return true; // fetch: the network, or nobody answered
  if (err && err.name === "TimeoutError") return true; // an offer that got no answer in time
  return Boolean(err && err.retryable);
}

/** Whether a fresh speaker token may help (the one we hold expired or the keys rotated). */
export function tokenRefused(err) {
  return err instanceof ApiError && err.status === 401;
}

/**
 * The status line after giving up, saying what happened; the page adds what
 * the person can do there.
 */
export function giveUpSentence(err, for_ms = RECONNECT.for_ms) {
  if (err instanceof ApiError && !retryable(err)) return `Could not reconnect to the room: ${err.message}`;
  const seconds = Math.round(for_ms / 1000);
  return `Could not reconnect to the room within ${seconds} s.`;
}
