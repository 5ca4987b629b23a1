// Polls a space's cacheable state.json at its own max-age, with If-None-Match,
// so a room of any size costs one small cached document per listener per second.

const MIN_INTERVAL_MS = 500;
const MAX_INTERVAL_MS = 5000;
const HIDDEN_INTERVAL_MS = 10000;
const DEFAULT_INTERVAL_MS = 1000;

/** max-age of a Cache-Control header, in milliseconds, clamped; default when absent. */
export function maxAgeMs(cacheControl) {
  const match = /max-age=(\d+(?:\.\d+)?)/.exec(cacheControl || "");
  if (!match) return DEFAULT_INTERVAL_MS;
  const ms = Number(match[1]) * 1000;
  return Math.min(MAX_INTERVAL_MS, Math.max(MIN_INTERVAL_MS, ms || DEFAULT_INTERVAL_MS));
}

/**
 * Call onState(state) with every new version of the space's state.json until
 * stop() is called. onError(err, status) is called on failures (polling goes on).
 */
export function pollState(spaceId, { onState, onError }) {
  const url = `/spaces/${encodeURIComponent(spaceId)}/state.json`;
  let etag = null;
  let stopped = false;
  let timer = null;
  let failures = 0;
  let inFlight = false;

  async function tick() {
    if (stopped || inFlight) return;
    inFlight = true;
    let interval = DEFAULT_INTERVAL_MS;
    try {
      const headers = { Accept: "application/json" };
      if (etag) headers["If-None-Match"] = etag;
      const response = await fetch(url, { headers, cache: "no-store" });
      interval = maxAgeMs(response.headers.get("Cache-Control"));
      if (response.status === 200) {
        etag = response.headers.get("ETag");
        const state = await response.json();
        failures = 0;
        if (!stopped) onState(state);
      } else if (response.status !== 304) {
        failures += 1;
        onError?.(new Error(`state.json answered ${response.status}`), response.status);
      } else {
        failures = 0;
      }
    } catch (err) {
      failures += 1;
      onError?.(err, 0);
    }
    if (failures) interval = Math.min(MAX_INTERVAL_MS * 2, interval * 2 ** Math.min(failures, 3));
    if (document.hidden) interval = Math.max(interval, HIDDEN_INTERVAL_MS);
    inFlight = false;
    if (!stopped) timer = setTimeout(tick, interval);
  }

  function wake() {
    if (!document.hidden && !stopped && !inFlight) {
      clearTimeout(timer);
      tick();
    }
  }
  document.addEventListener("visibilitychange", wake);
  tick();
  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", wake);
    },
    refresh: wake,
  };
}
