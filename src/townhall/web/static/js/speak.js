// The microphone over WebRTC, shared by the host console and the listener page
// once a listener is brought on stage. Non-trickle: the offer is sent once ICE
// gathering is complete; the answer carries the mix-minus return audio. A lost
// server (a node killed, the room taken over by another node) is noticed and
// reconnected by itself (reconnect.js has the rules).

import { ApiError, api, describeError } from "./api.js";
import { LossWatch, RECONNECT, giveUpSentence, readStats, refusedDelayMs, retryDelayMs, retryable, tokenRefused } from "./reconnect.js";

const ICE_GATHER_TIMEOUT_MS = 5000;
const CONNECT_TIMEOUT_MS = 15000;
// How often a live connection is looked at (getStats) to notice a lost server.
const LOOK_INTERVAL_MS = 250;

export const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  video: false,
};

function iceGatheringComplete(pc, timeoutMs) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => {
      if (pc.iceGatheringState === "complete") done();
    };
    // Send what we have after the timeout: host candidates come first.
    const timer = setTimeout(done, timeoutMs);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function connected(pc, timeoutMs) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === "connected") finish(null);
      else if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        finish(retryableError("The audio connection to the server failed; check your network and try again."));
      }
    };
    const finish = (err) => {
      clearTimeout(timer);
      pc.removeEventListener("connectionstatechange", check);
      err ? reject(err) : resolve();
    };
    const timer = setTimeout(
      () => finish(retryableError("The audio connection to the server did not open in time; try again.")),
      timeoutMs,
    );
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

function retryableError(sentence) {
  const err = new Error(sentence);
  err.retryable = true;
  return err;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One live microphone in a space.
 *   const mic = new MicSession({spaceId, returnAudio, onStatus, onReconnecting, onBack, onDrop, muted});
 *   await mic.start();   // throws ApiError / DOMException / Error with a sentence
 *   mic.setMuted(true); mic.level(); mic.stop();
 * onStatus(text) narrates progress. Once live, the session watches its peer
 * connection (reconnect.js's LossWatch); when the server is lost it says
 * onReconnecting(text) and re-offers by itself, with the same microphone
 * track (so the same mute state), to whichever node now runs the room, for
 * up to policy.for_ms: onBack(text) when it is live again, else onDrop(text)
 * once (never after stop()).
 */
export class MicSession {
  constructor({
    spaceId,
    returnAudio,
    onStatus = () => {},
    onDrop = () => {},
    onReconnecting = onStatus,
    onBack = onStatus,
    policy = RECONNECT,
    muted = false, // start muted: the track sends silence from its first packet
  }) {
    this.startMuted = muted;
    this.spaceId = spaceId;
    this.base = `/api/spaces/${encodeURIComponent(spaceId)}`;
    this.returnAudio = returnAudio;
    this.onStatus = onStatus;
    this.onDrop = onDrop;
    this.onReconnecting = onReconnecting;
    this.onBack = onBack;
    this.policy = policy;
    this.pc = null;
    this.stream = null;
    this.token = null;
    this.stopped = false;
    this.live = false;
    this.reconnecting = false;
    this.reconnects = 0;
    this.interrupted = false;
    this.watchTimer = null;
    this.analyser = null;
    this.audioContext = null;
  }

  async start() {
    this.onStatus("Getting permission to speak…");
    const grant = await api("POST", `${this.base}/speaker-token`, { body: {} });
    this.token = grant.token;
    this.onStatus("Opening your microphone…");
    this.stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    if (this.stopped) return this.stop();
    this.setMuted(this.startMuted);
    this.onStatus("Connecting to the room…");
    try {
      await this.connect(0);
    } catch (err) {
      if (this.stopped) return this.stop(); // turned off meanwhile: not a failure
      throw err;
    }
    this.goLive();
    this.onStatus("Your microphone is live.");
    return this;
  }

  /** A new peer connection with our microphone track; `until` (performance.now() ms) > 0 re-posts refused offers until then. */
  async connect(until) {
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    const [track] = this.stream.getAudioTracks();
    pc.addTransceiver(track, { direction: "sendrecv", streams: [this.stream] });
    pc.addEventListener("track", (event) => {
      if (pc !== this.pc) return;
      const stream = event.streams[0] || new MediaStream([event.track]);
      this.returnAudio.srcObject = stream;
      this.returnAudio.play().catch(() => {});
    });
    pc.addEventListener("connectionstatechange", () => {
      if (pc === this.pc && this.live) this.look();
    });
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, ICE_GATHER_TIMEOUT_MS);
    const answer = await this.postOffer(pc.localDescription.sdp, until);
    if (this.stopped || pc !== this.pc) throw retryableError("The microphone was turned off.");
    await pc.setRemoteDescription({ type: answer.type || "answer", sdp: answer.sdp });
    await connected(pc, until ? this.policy.connect_ms : CONNECT_TIMEOUT_MS);
  }

  /** POST the offer; while reconnecting, the same offer again after an HTTP refusal that passes (5xx, 429). */
  async postOffer(sdp, until) {
    for (;;) {
      if (this.stopped) throw retryableError("The microphone was turned off.");
      try {
        return await api("POST", `${this.base}/webrtc/offer`, {
          body: { sdp, type: "offer" },
          token: this.token,
          signal: until ? AbortSignal.timeout(this.policy.connect_ms) : undefined,
        });
      } catch (err) {
        // a node answered "not now" (503: the room is moving): the same offer again soon; a network
        // error or no answer goes back to reconnect(), which waits with backoff
        const delay = refusedDelayMs(this.policy);
        const refused = err instanceof ApiError && retryable(err);
        if (!until || this.stopped || !refused || performance.now() + delay >= until) throw err;
        await sleep(delay);
      }
    }
  }

  goLive() {
    this.live = true;
    this.interrupted = false;
    this.watch = new LossWatch(this.policy, performance.now());
    clearInterval(this.watchTimer);
    this.watchTimer = setInterval(() => this.look(), LOOK_INTERVAL_MS);
  }

  /** One look at the live connection: say an interruption, reconnect when lost. */
  async look() {
    const pc = this.pc;
    if (!this.live || this.stopped || !pc || this.looking) return;
    this.looking = true;
    let sample;
    try {
      sample = readStats(await pc.getStats());
    } catch {
      sample = { received: 0, reports: 0 }; // a closed connection: its state says so
    } finally {
      this.looking = false;
    }
    if (!this.live || this.stopped || pc !== this.pc) return;
    const { verdict, reason } = this.watch.observe({ at_ms: performance.now(), state: pc.connectionState, ...sample });
    if (verdict === "lost") {
      this.reconnect(reason);
    } else if (verdict === "interrupted" && !this.interrupted) {
      this.interrupted = true;
      this.onStatus("The connection is interrupted: listeners may not hear you; trying to recover…");
    } else if (verdict === "ok" && this.interrupted) {
      this.interrupted = false;
      this.onStatus("Your microphone is live again.");
    }
  }

  /** The server is lost: new peer connections (same track) with backoff until one is live or policy.for_ms is over. */
  async reconnect(reason) {
    if (this.reconnecting || this.stopped) return;
    this.reconnecting = true;
    this.live = false;
    this.reconnects += 1;
    clearInterval(this.watchTimer);
    this.pc?.close();
    this.pc = null;
    const until = performance.now() + this.policy.for_ms;
    this.onReconnecting(`${reason} Reconnecting to the room…`);
    let attempt = 0;
    let lastError = null;
    let renewed = false;
    while (!this.stopped && performance.now() < until) {
      try {
        await this.connect(until);
        if (this.stopped) return;
        this.reconnecting = false;
        this.goLive();
        this.onBack("Reconnected: you are back in the room.");
        return;
      } catch (err) {
        if (this.stopped) return;
        this.pc?.close();
        this.pc = null;
        lastError = err;
        if (tokenRefused(err) && !renewed) {
          renewed = true; // the token expired meanwhile: one fresh one, then try at once
          try {
            this.token = (await api("POST", `${this.base}/speaker-token`, { body: {} })).token;
            continue;
          } catch (renewError) {
            lastError = renewError;
          }
        }
        if (!retryable(lastError)) break;
        const delay = retryDelayMs(attempt, this.policy);
        attempt += 1;
        if (performance.now() + delay >= until) break;
        this.onReconnecting(`${describeError(lastError)} Reconnecting to the room (attempt ${attempt + 1})…`);
        await sleep(delay);
      }
    }
    this.reconnecting = false;
    if (!this.stopped) this.onDrop(giveUpSentence(lastError, this.policy.for_ms));
  }

  get muted() {
    const track = this.stream?.getAudioTracks()[0];
    return track ? !track.enabled : true;
  }

  /** Tell the server again that `accountId` (us) is muted: a node that took the room over does not know it. */
  remindMuted(accountId) {
    api("POST", `${this.base}/speakers/${encodeURIComponent(accountId)}/mute`, { body: {} }).catch(() => {});
  }

  /** Mute locally (the track sends silence); the caller tells the server too. */
  setMuted(muted) {
    for (const track of this.stream?.getAudioTracks() || []) track.enabled = !muted;
  }

  /** Input level 0..1 of the local microphone, for a meter. */
  level() {
    if (!this.stream) return 0;
    if (!this.analyser) {
      try {
        this.audioContext = new AudioContext();
        const source = this.audioContext.createMediaStreamSource(this.stream);
        this.analyser = this.audioContext.createAnalyser();
        this.analyser.fftSize = 1024;
        source.connect(this.analyser);
        this.samples = new Float32Array(this.analyser.fftSize);
      } catch {
        return 0;
      }
    }
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const s of this.samples) sum += s * s;
    return Math.min(1, Math.sqrt(sum / this.samples.length) * 4);
  }

  stop() {
    this.stopped = true;
    clearInterval(this.watchTimer);
    this.live = false;
    this.pc?.close();
    this.pc = null;
    for (const track of this.stream?.getTracks() || []) track.stop();
    this.stream = null;
    this.audioContext?.close().catch(() => {});
    this.audioContext = null;
    this.analyser = null;
    if (this.returnAudio) this.returnAudio.srcObject = null;
    return this;
  }
}
