// The microphone over WebRTC, shared by the host console and the listener page
// once a listener is brought on stage. Non-trickle: the offer is sent once ICE
// gathering is complete; the answer carries the mix-minus return audio.

import { api } from "./api.js";

const ICE_GATHER_TIMEOUT_MS = 5000;
const CONNECT_TIMEOUT_MS = 15000;
// A "disconnected" peer that has not recovered after this long counts as lost.
const RECOVER_TIMEOUT_MS = 4000;

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
        finish(new Error("The audio connection to the server failed; check your network and try again."));
      }
    };
    const finish = (err) => {
      clearTimeout(timer);
      pc.removeEventListener("connectionstatechange", check);
      err ? reject(err) : resolve();
    };
    const timer = setTimeout(
      () => finish(new Error("The audio connection to the server did not open in time; try again.")),
      timeoutMs,
    );
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

/**
 * One live microphone in a space.
 *   const mic = new MicSession({spaceId, returnAudio, onStatus, onDrop});
 *   await mic.start();   // throws ApiError / DOMException / Error with a sentence
 *   mic.setMuted(true); mic.level(); mic.stop();
 * onStatus(text) narrates progress; onDrop(text) is called once if a live
 * connection is lost (not after stop()).
 */
export class MicSession {
  constructor({ spaceId, returnAudio, onStatus = () => {}, onDrop = () => {} }) {
    this.spaceId = spaceId;
    this.returnAudio = returnAudio;
    this.onStatus = onStatus;
    this.onDrop = onDrop;
    this.pc = null;
    this.stream = null;
    this.stopped = false;
    this.live = false;
    this.analyser = null;
    this.audioContext = null;
  }

  async start() {
    const base = `/api/spaces/${encodeURIComponent(this.spaceId)}`;
    this.onStatus("Getting permission to speak…");
    const grant = await api("POST", `${base}/speaker-token`, { body: {} });
    this.onStatus("Opening your microphone…");
    this.stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
    if (this.stopped) return this.stop();
    const pc = new RTCPeerConnection({ iceServers: [] });
    this.pc = pc;
    const [track] = this.stream.getAudioTracks();
    pc.addTransceiver(track, { direction: "sendrecv", streams: [this.stream] });
    pc.addEventListener("track", (event) => {
      const stream = event.streams[0] || new MediaStream([event.track]);
      this.returnAudio.srcObject = stream;
      this.returnAudio.play().catch(() => {});
    });
    pc.addEventListener("connectionstatechange", () => {
      if (!this.live || this.stopped) return;
      clearTimeout(this.recoverTimer);
      if (pc.connectionState === "connected") {
        if (this.interrupted) this.onStatus("Your microphone is live again.");
        this.interrupted = false;
        return;
      }
      if (pc.connectionState === "disconnected") {
        // may recover on its own; if it does not, say so and let the page reconnect
        this.interrupted = true;
        this.onStatus("The connection is interrupted: listeners may not hear you; trying to recover…");
        this.recoverTimer = setTimeout(() => {
          if (this.live && !this.stopped && pc.connectionState !== "connected") {
            this.live = false;
            this.onDrop("The audio connection was interrupted.");
          }
        }, RECOVER_TIMEOUT_MS);
        return;
      }
      if (pc.connectionState === "failed" || pc.connectionState === "closed") {
        this.live = false;
        this.onDrop("The audio connection was lost.");
      }
    });
    this.onStatus("Connecting to the room…");
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc, ICE_GATHER_TIMEOUT_MS);
    const answer = await api("POST", `${base}/webrtc/offer`, {
      body: { sdp: pc.localDescription.sdp, type: "offer" },
      token: grant.token,
    });
    if (this.stopped) return this.stop();
    await pc.setRemoteDescription({ type: answer.type || "answer", sdp: answer.sdp });
    await connected(pc, CONNECT_TIMEOUT_MS);
    this.live = true;
    this.onStatus("Your microphone is live.");
    return this;
  }

  get muted() {
    const track = this.stream?.getAudioTracks()[0];
    return track ? !track.enabled : true;
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
    clearTimeout(this.recoverTimer);
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
