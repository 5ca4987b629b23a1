// The listener page's side of issue 10: solve a join's proof-of-work
// challenge in a Web Worker, keep the signed "seen before" mark, and report
// stalls (one small POST per 30 s) so the evidence report measures goodput.

const SEEN_KEY = "townhall.seen";
const SOLVE_TIMEOUT_MS = 30000;
const REPORT_EVERY_MS = 30000;

export function seenMark() {
  try {
    return localStorage.getItem(SEEN_KEY);
  } catch {
    return null;
  }
}

export function keepSeenMark(mark) {
  if (!mark) return;
  try {
    localStorage.setItem(SEEN_KEY, mark);
  } catch {
    /* private mode: no priority next time, nothing else lost */
  }
}

/** Solve {challenge, bits} in a module Web Worker; resolves the X-Townhall-Pow header value. */
export function solveChallenge(problem) {
  return new Promise((resolve, reject) => {
    let worker;
    try {
      worker = new Worker(new URL("./pow-worker.js", import.meta.url), { type: "module" });
    } catch (err) {
      reject(err);
      return;
    }
    const timer = setTimeout(() => {
      worker.terminate();
      reject(new Error("The challenge took too long to solve."));
    }, SOLVE_TIMEOUT_MS);
    worker.onmessage = (event) => {
      clearTimeout(timer);
      worker.terminate();
      const { nonce, error } = event.data || {};
      if (nonce) resolve(`${problem.challenge} ${nonce}`);
      else reject(new Error(error || "The challenge could not be solved."));
    };
    worker.onerror = (event) => {
      clearTimeout(timer);
      worker.terminate();
      reject(new Error(event.message || "The challenge solver failed."));
    };
    worker.postMessage({ challenge: problem.challenge, bits: problem.bits });
  });
}

/**
 * Counts seconds played and seconds stalled on an <audio> element and posts
 * them every 30 s with the listener token: new StallReporter(audio, spaceId, () => token).start()
 */
export class StallReporter {
  constructor(audio, spaceId, tokenOf) {
    this.audio = audio;
    this.spaceId = spaceId;
    this.tokenOf = tokenOf;
    this.played_s = 0;
    this.stalled_s = 0;
    this.lastTime = null;
    this.stalledSince = null;
    this.timer = null;
    this.onWaiting = () => {
      if (this.stalledSince === null && !audio.paused) this.stalledSince = performance.now();
    };
    this.onPlaying = () => this.endStall();
    this.onTime = () => {
      const t = audio.currentTime;
      if (this.lastTime !== null && t > this.lastTime && t - this.lastTime < 5) this.played_s += t - this.lastTime;
      this.lastTime = t;
    };
  }

  endStall() {
    if (this.stalledSince !== null) {
      this.stalled_s += (performance.now() - this.stalledSince) / 1000;
      this.stalledSince = null;
    }
  }

  start() {
    this.audio.addEventListener("waiting", this.onWaiting);
    this.audio.addEventListener("playing", this.onPlaying);
    this.audio.addEventListener("timeupdate", this.onTime);
    this.timer = setInterval(() => this.report(), REPORT_EVERY_MS);
    return this;
  }

  async report() {
    if (this.stalledSince !== null) {
      this.endStall();
      this.stalledSince = performance.now();
    }
    const token = this.tokenOf();
    const body = { played_s: Math.min(600, this.played_s), stalled_s: Math.min(600, this.stalled_s) };
    if (!token || body.played_s + body.stalled_s <= 0) return;
    this.played_s = 0;
    this.stalled_s = 0;
    try {
      await fetch(`/api/spaces/${encodeURIComponent(this.spaceId)}/stalls`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
        body: JSON.stringify(body),
        keepalive: true,
      });
    } catch {
      /* a lost report loses a sample, nothing else */
    }
  }

  stop() {
    clearInterval(this.timer);
    this.audio.removeEventListener("waiting", this.onWaiting);
    this.audio.removeEventListener("playing", this.onPlaying);
    this.audio.removeEventListener("timeupdate", this.onTime);
  }
}
