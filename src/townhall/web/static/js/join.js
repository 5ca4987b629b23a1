// Listener tokens: join a space (no sign-in needed), renew before expiry, say
// "still here" every presence_interval_s while in the presence sample (the
// listener count is who said so lately), and put a refused or queued join into words.

import { ApiError, api } from "./api.js";
import { keepSeenMark, seenMark, solveChallenge } from "./defense.js";

const RENEW_AT_FRACTION = 0.8;
const RENEW_RETRY_MS = 5000;

/**
 * The sentence and retry delay for a refused join (admission control answers
 * 503 or 429 problem+json with retry_after_s, and maybe a queue position).
 * Pure: returns {text, retry_after_s (or null), queued (bool)}.
 */
export function refusalMessage(status, problem = {}) {
  const retry = Number(problem.retry_after_s);
  const retry_after_s = Number.isFinite(retry) && retry > 0 ? retry : null;
  const position = Number(problem.position ?? problem.queue_position);
  const queued = status === 503 || status === 429;
  const parts = [];
  if (queued) {
    parts.push(problem.detail || "The space is full right now.");
    if (Number.isInteger(position) && position > 0) parts.push(`You are number ${position} in line.`);
    if (retry_after_s !== null) {
      const s = Math.ceil(retry_after_s);
      parts.push(`Trying again in ${s} second${s === 1 ? "" : "s"}.`);
    }
  } else {
    parts.push(problem.detail || `Joining failed (${status}).`);
  }
  return { text: parts.join(" "), retry_after_s, queued };
}

/** Holds a listener token for one space and renews it before it runs out. */
export class ListenerPass {
  constructor(spaceId) {
    this.spaceId = spaceId;
    this.grant = null;
    this.timer = null;
    this.beatTimer = null;
    this.stopped = false;
  }

  get token() {
    return this.grant?.token || null;
  }

  get urls() {
    return this.grant?.urls || {};
  }

  /**
   * Join (or renew); throws ApiError on refusal. Resolves with the 200 answer
   * (a listener token), or with a 202 answer ({ticket, position, ...}: the
   * space is full; see queue.js) when `queued` is allowed.
   */
  async join({ ticket } = {}) {
    this.stopped = false;
    const body = this.grant ? { token: this.grant.token } : ticket ? { ticket } : {};
    const path = `/api/spaces/${encodeURIComponent(this.spaceId)}/join`;
    const headers = {};
    const mark = seenMark();
    if (mark) headers["X-Townhall-Seen"] = mark;
    let answer;
    try {
      answer = await api("POST", path, { body, headers });
    } catch (err) {
      // Under pressure the server asks for proof of work: solve it off the main thread, once.
      if (!(err instanceof ApiError && err.status === 429 && err.problem.challenge)) throw err;
      let solved;
      try {
        solved = await solveChallenge(err.problem);
      } catch {
        throw err; // cannot solve here: the refusal (with Retry-After) stands
      }
      answer = await api("POST", path, { body, headers: { ...headers, "X-Townhall-Pow": solved } });
    }
    if (answer && typeof answer.ticket === "string" && typeof answer.token !== "string") return answer;
    this.admitted(answer);
    return answer;
  }

  /** Take a 200 join answer (also one that came from the waiting room). */
  admitted(grant) {
    keepSeenMark(grant.seen_mark);
    this.grant = grant;
    this.sample = null; // the join answer's band is the newest
    this.schedule();
    this.beatSoon();
  }

  /**
   * Whether this page is in the presence sample: a big room is counted through
   * the tokens whose presence_rank is below presence_sample (the join answer's,
   * then state.json's as the room grows or shrinks); the others do not beat.
   */
  get sampled() {
    const rank = Number(this.grant?.presence_rank);
    const below = Number(this.sample ?? this.grant?.presence_sample ?? 1);
    return !Number.isFinite(rank) || !Number.isFinite(below) || rank < below;
  }

  /** state.json's presence_sample: start or stop beating when the band changes. */
  setSample(below) {
    if (below === undefined || below === null) return;
    const was = this.sampled;
    this.sample = Number(below);
    // newly in the sample: say so at once (if this page beats at all)
    if (!was && this.sampled && Number(this.grant?.presence_interval_s) > 0) {
      clearTimeout(this.beatTimer); // one beat now instead of the one scheduled
      this.beat();
    }
  }

  /** The next presence beat (while a token is held and the answer asks for beats). */
  beatSoon() {
    clearTimeout(this.beatTimer);
    const every_s = Number(this.grant?.presence_interval_s);
    if (this.stopped || !(every_s > 0)) return;
    this.beatTimer = setTimeout(() => this.beat(), every_s * 1000);
  }

  async beat() {
    const token = this.token;
    if (this.stopped || !token) return;
    if (this.sampled) {
      const url = `/api/spaces/${encodeURIComponent(this.spaceId)}/presence`;
      try {
        await fetch(url, { method: "POST", headers: { Authorization: `Bearer ${token}` } });
      } catch {
        // the server is away (a restart, a blip): the next beat says it again
      }
    }
    this.beatSoon();
  }

  /** Free the place at once (page closed or Leave pressed). */
  leave() {
    const token = this.token;
    this.stop();
    this.grant = null;
    if (!token) return;
    const url = `/api/spaces/${encodeURIComponent(this.spaceId)}/leave`;
    const body = JSON.stringify({ token });
    if (!(navigator.sendBeacon && navigator.sendBeacon(url, body))) {
      fetch(url, { method: "POST", body, keepalive: true, headers: { "Content-Type": "application/json" } }).catch(() => {});
    }
  }

  /** A valid token, joining first when there is none. */
  async ensure() {
    if (this.grant && Date.parse(this.grant.expires_at) - Date.now() > 10000) return this.grant.token;
    await this.join();
    if (!this.grant) throw new Error("You are waiting in line; you can react once you are in.");
    return this.grant.token;
  }

  schedule() {
    clearTimeout(this.timer);
    if (this.stopped || !this.grant) return;
    const left_ms = Date.parse(this.grant.expires_at) - Date.now();
    const wait_ms = Number.isFinite(left_ms) ? Math.max(1000, left_ms * RENEW_AT_FRACTION) : 60000;
    this.timer = setTimeout(() => this.renew(), wait_ms);
  }

  async renew() {
    if (this.stopped) return;
    try {
      await this.join();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) this.grant = null;
      if (!this.stopped) this.timer = setTimeout(() => this.renew(), RENEW_RETRY_MS);
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearTimeout(this.beatTimer);
  }
}
