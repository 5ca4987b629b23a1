// The waiting room: hold a queue ticket, read the space's cacheable queue.json
// every second (the same bytes for everyone), work out our own position and
// ETA from it, post the ticket back when our turn comes (or to renew it), and
// keep the ticket in localStorage so that closing the tab and coming back
// within its lifetime keeps the place.

import { api } from "./api.js";

const POLL_MS = 1000;
const HIDDEN_POLL_MS = 2000; // never staler than 2 s, even in a background tab
const RENEW_FRACTION = 0.33;
const STORE_PREFIX = "townhall.ticket.";

/** "about 2 minutes", "less than a minute", "about 1 hour 5 minutes". Pure. */
export function formatWait(eta_s) {
  if (eta_s === null || eta_s === undefined || !Number.isFinite(eta_s)) return "waiting for a place to free";
  if (eta_s < 45) return "less than a minute";
  const minutes = Math.round(eta_s / 60);
  if (minutes < 60) return `about ${minutes} minute${minutes === 1 ? "" : "s"}`;
  const hours = Math.floor(minutes / 60);
  const rest = minutes % 60;
  return `about ${hours} hour${hours === 1 ? "" : "s"}${rest ? ` ${rest} minute${rest === 1 ? "" : "s"}` : ""}`;
}

/**
 * Seconds until `position` more tickets are called, from queue.json: the
 * line runs at admit_rate_per_s while free_places last (listeners leaving at
 * the full line's speed add to them), then at the full line's speed: its
 * settled speed (settled_rate_per_s, max_listeners / mean listening time)
 * once known, before that its measured speed (full_rate_per_s); null when
 * neither is known yet (a full space nobody has left). The same model as the
 * server's policy/eta.py. Pure.
 */
export function etaSeconds(position, doc) {
  if (position === null || position === undefined) return null;
  if (position <= 0) return 0;
  const a = Number(doc?.admit_rate_per_s);
  if (!Number.isFinite(a) || a <= 0) return null;
  // we notice our turn about half a queue interval plus one poll after it comes
  const lag = Number(doc?.interval_ms ?? 1000) / 2000 + POLL_MS / 1000;
  if (doc?.free_places === undefined) return position / a; // a document without the model
  const settled = doc.settled_rate_per_s;
  const unsettled = settled === null || settled === undefined;
  // while the settled speed is being measured, the measured one is not used
  const leave = unsettled ? (doc.settling ? null : doc.full_rate_per_s) : settled;
  const d = leave === null || leave === undefined ? null : Math.max(0, Number(leave));
  if (d !== null && d >= a) return position / a + lag;
  let fill = Math.max(0, Number(doc.free_places ?? 0));
  if (d) fill = (fill * a) / (a - d);
  if (position <= fill) return position / a + lag;
  if (!d) return null;
  return fill / a + (position - fill) / d + lag;
}

/**
 * Where a ticket stands given the queue document. Pure.
 * ticket: the last 202 answer ({number, position, eta_s, ...});
 * doc: queue.json; first: the position when we started waiting (for the bar).
 * Returns {position, eta_s, turn, drawn, text, progress}.
 */
export function queueView(ticket, doc, first) {
  const number = Number.isInteger(ticket?.number) ? ticket.number : null;
  if (number === null) {
    const drawn = Boolean(doc?.drawn);
    const text = drawn
      ? "The space has started: your place in line is being drawn…"
      : "The space has not started yet. Everyone who arrives before the start gets a place in a random order when it starts; keep this page open.";
    return { position: null, eta_s: null, turn: false, drawn, text, progress: 0 };
  }
  const through = Number(doc?.admitting_through ?? 0);
  const position = Math.max(0, number - through);
  const eta_s = etaSeconds(position, doc);
  const turn = position === 0;
  const text = turn
    ? "It is your turn: joining…"
    : `You are number ${position.toLocaleString("en-US")} in line, ${formatWait(eta_s)}.`;
  const start = Math.max(first || position, 1);
  const progress = Math.min(1, Math.max(0, (start - position) / start));
  return { position, eta_s, turn, drawn: true, text, progress };
}

/** The ticket kept for a space (null if none or expired). */
export function storedTicket(spaceId) {
  try {
    const saved = JSON.parse(localStorage.getItem(STORE_PREFIX + spaceId) || "null");
    if (saved && typeof saved.ticket === "string" && Date.parse(saved.expires_at) > Date.now()) return saved;
  } catch {
    /* fall through */
  }
  return null;
}

export function storeTicket(spaceId, answer) {
  if (answer) localStorage.setItem(STORE_PREFIX + spaceId, JSON.stringify(answer));
  else localStorage.removeItem(STORE_PREFIX + spaceId);
}

/**
 * Wait in line. onUpdate(view) on every change; resolves with the 200 join
 * answer (a listener token) once admitted; rejects with the ApiError of a
 * refused ticket (which is then forgotten).
 */
export function waitInLine(spaceId, answer, { onUpdate, signal } = {}) {
  const joinPath = `/api/spaces/${encodeURIComponent(spaceId)}/join`;
  const docUrl = `/spaces/${encodeURIComponent(spaceId)}/queue.json`;
  let ticket = answer;
  let doc = null;
  let etag = null;
  let first = Number.isInteger(answer.position) ? answer.position : null;
  let postedAt = Date.now();
  let posting = false;
  let drawnAt = null;
  storeTicket(spaceId, ticket);

  return new Promise((resolve, reject) => {
    let timer = null;
    const finish = (fn, value) => {
      clearTimeout(timer);
      fn(value);
    };
    signal?.addEventListener("abort", () => finish(reject, new DOMException("stopped", "AbortError")));

    async function post() {
      posting = true;
      try {
        const next = await api("POST", joinPath, { body: { ticket: ticket.ticket }, token: undefined });
        postedAt = Date.now();
        if (next && typeof next.token === "string") {
          storeTicket(spaceId, null);
          finish(resolve, next);
          return true;
        }
        ticket = next;
        storeTicket(spaceId, ticket);
        if (first === null && Number.isInteger(next.position)) first = next.position;
      } catch (err) {
        if (err && err.status && err.status < 500) {
          storeTicket(spaceId, null);
          finish(reject, err);
          return true;
        }
      } finally {
        posting = false;
      }
      return false;
    }

    async function tick() {
      if (signal?.aborted) return;
      try {
        const headers = { Accept: "application/json" };
        if (etag) headers["If-None-Match"] = etag;
        const response = await fetch(docUrl, { headers, cache: "no-store" });
        if (response.status === 200) {
          etag = response.headers.get("ETag");
          doc = await response.json();
        }
      } catch {
        /* keep the last document; try again next tick */
      }
      const view = queueView(ticket, doc, first);
      onUpdate?.(view, ticket, doc);
      const lifetime_ms = Date.parse(ticket.expires_at) - postedAt;
      const renewDue = Date.now() - postedAt > Math.max(1000, lifetime_ms * RENEW_FRACTION);
      const retryDue = Date.now() - postedAt >= (ticket.retry_after_s ?? 5) * 1000;
      // after the draw, learn our number soon (spread over 2 s, so the crowd does not post at once)
      const needsNumber = view.drawn && !Number.isInteger(ticket.number);
      if (needsNumber && drawnAt === null) drawnAt = Date.now() + Math.random() * 2000;
      const numberDue = needsNumber && Date.now() >= drawnAt;
      if (!posting && (view.turn || renewDue || numberDue || (ticket.position === 0 && retryDue))) {
        if (await post()) return;
      }
      timer = setTimeout(tick, document.hidden ? HIDDEN_POLL_MS : POLL_MS);
    }
    tick();
  });
}
