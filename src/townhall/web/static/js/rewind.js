// Rewind while live: go back up to ten minutes in the live (EVENT) playlist,
// see how far behind live you are, return with one click; and clip the last
// 30 seconds of what you heard.

import { api, describeError } from "./api.js";
import { h, setStatus } from "./ui.js";

const MAX_BACK_S = 600;
const CLIP_S = 30;
// closer than this to the live edge counts as live
const LIVE_SLACK_S = 6;

/** Seconds behind the live edge for a seekable end and a current time. */
export function behindLive(seekableEnd, currentTime) {
  if (!Number.isFinite(seekableEnd) || !Number.isFinite(currentTime)) return 0;
  return Math.max(0, seekableEnd - currentTime);
}

export class RewindControl {
  constructor(container, audio, { spaceId, token }) {
    this.audio = audio;
    this.spaceId = spaceId;
    this.token = token;
    this.slider = h("input", { type: "range", id: "rewind", min: "0", max: String(MAX_BACK_S), step: "5", value: "0", "aria-label": "Seconds behind live" });
    this.label = h("span", { id: "behind-live", class: "muted" }, "Live");
    this.back = h("button", { type: "button", class: "button", id: "back-to-live", hidden: true, onclick: () => this.toLive() }, "Back to live");
    this.clip = h("button", { type: "button", class: "button", id: "clip-button", onclick: () => this.makeClip() }, `Clip the last ${CLIP_S} s`);
    this.status = h("p", { class: "status small", role: "status", "aria-live": "polite" });
    this.box = h("div", { class: "rewind", hidden: true }, h("label", { for: "rewind" }, "Rewind "), this.slider, " ", this.label, " ", this.back, " ", this.clip, this.status);
    container.append(this.box);
    this.slider.addEventListener("change", () => this.seekBack(Number(this.slider.value)));
    this.timer = null;
  }

  edge() {
    const r = this.audio.seekable;
    return r && r.length ? r.end(r.length - 1) : NaN;
  }

  start() {
    const r = this.audio.seekable;
    return r && r.length ? r.start(0) : NaN;
  }

  setActive(on) {
    this.box.hidden = !on;
    clearInterval(this.timer);
    if (on) this.timer = setInterval(() => this.render(), 1000);
  }

  render() {
    const behind = behindLive(this.edge(), this.audio.currentTime);
    const room = Math.min(MAX_BACK_S, Math.max(0, this.edge() - this.start()) || 0);
    this.slider.max = String(Math.max(5, Math.floor(room)));
    if (document.activeElement !== this.slider) this.slider.value = String(Math.min(room, behind));
    const live = behind < LIVE_SLACK_S;
    this.label.textContent = live ? "Live" : `${Math.round(behind)} s behind live`;
    this.back.hidden = live;
  }

  seekBack(seconds) {
    const edge = this.edge();
    if (!Number.isFinite(edge)) return;
    this.audio.currentTime = Math.max(this.start() || 0, edge - seconds);
    this.render();
  }

  toLive() {
    const edge = this.edge();
    if (Number.isFinite(edge)) this.audio.currentTime = Math.max(0, edge - 3);
    this.render();
  }

  async makeClip() {
    const end = this.audio.currentTime;
    const start_s = Math.max(0, end - CLIP_S);
    this.clip.disabled = true;
    setStatus(this.status, "Cutting the clip…", "wait");
    try {
      const token = await this.token();
      const clip = await api("POST", `/api/spaces/${encodeURIComponent(this.spaceId)}/clips`, {
        body: { start_s, duration_s: Math.max(1, end - start_s) },
        token,
      });
      this.status.replaceChildren("Your clip is ready: ", h("a", { href: clip.page_url }, "open and share it"), ".");
      this.status.dataset.kind = "ok";
    } catch (err) {
      setStatus(this.status, describeError(err), "error");
    } finally {
      this.clip.disabled = false;
    }
  }
}
