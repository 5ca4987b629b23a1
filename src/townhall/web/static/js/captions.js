// Captions on the pages: the live caption line (polls the cacheable
// captions.json once a second while listening, shows the line that matches what
// the player is playing now), and the replay's transcript (timestamps that seek,
// a search box, .vtt and .txt downloads).

import { h } from "./ui.js";

const POLL_MS = 1000;
// a line stays up this long after it ends, unless the next one starts
const LINGER_S = 4;

/** The line to show at media time `now_s`: the latest that started by then and
 * has not lingered past; the newest line if the player's clock is not
 * comparable (no line within a minute of it). */
export function lineAt(lines, now_s) {
  if (!lines.length) return null;
  if (!Number.isFinite(now_s)) return lines[lines.length - 1];
  const near = lines.some((l) => Math.abs(l.start_s - now_s) < 60);
  if (!near) return lines[lines.length - 1];
  let found = null;
  for (const line of lines) if (line.start_s <= now_s + 0.25) found = line;
  return found && now_s <= found.end_s + LINGER_S ? found : null;
}

export class LiveCaptionLine {
  constructor(el, spaceId, audio) {
    this.el = el;
    this.url = `/spaces/${encodeURIComponent(spaceId)}/captions.json`;
    this.audio = audio;
    this.lines = [];
    this.timer = null;
    this.frame = null;
  }

  setActive(on) {
    clearInterval(this.timer);
    clearInterval(this.frame);
    this.timer = this.frame = null;
    if (!on) {
      this.el.hidden = true;
      return;
    }
    this.poll();
    this.timer = setInterval(() => this.poll(), POLL_MS);
    this.frame = setInterval(() => this.render(), 250);
  }

  async poll() {
    try {
      const response = await fetch(this.url, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const doc = await response.json();
      this.lines = doc.lines || [];
      this.status = doc.status;
      this.message = doc.message;
      this.render();
    } catch {
      // the next poll tries again
    }
  }

  render() {
    if (this.status === "unavailable" || (this.status === "off" && this.message && !this.lines.length)) {
      this.el.hidden = this.status !== "unavailable";
      this.el.dataset.kind = "note";
      this.el.textContent = this.message || "";
      return;
    }
    const line = lineAt(this.lines, this.audio.currentTime);
    this.el.hidden = !line;
    this.el.dataset.kind = "";
    const text = line ? (line.speaker ? `${line.speaker}: ${line.text}` : line.text) : "";
    if (this.el.textContent !== text) this.el.textContent = text;
  }
}

function clock(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  const mm = String(Math.floor(s / 60) % 60).padStart(2, "0");
  const ss = String(s % 60).padStart(2, "0");
  return s >= 3600 ? `${Math.floor(s / 3600)}:${mm}:${ss}` : `${Math.floor(s / 60)}:${ss}`;
}

/** The transcript of an ended space under `section`, seeking `audio` on click. */
export async function mountTranscript(section, spaceId, audio) {
  const base = `/spaces/${encodeURIComponent(spaceId)}`;
  let lines = [];
  try {
    const response = await fetch(`${base}/transcript.json`);
    if (response.ok) lines = (await response.json()).lines || [];
  } catch {
    return;
  }
  if (!lines.length) return;
  const search = h("input", { type: "search", id: "transcript-search", placeholder: "Search the transcript", "aria-label": "Search the transcript" });
  const count = h("p", { class: "status small", role: "status", "aria-live": "polite" });
  const items = lines.map((line) =>
    h(
      "li",
      { class: "transcript-line", dataset: { start: String(line.start_s) } },
      h("button", { type: "button", class: "stamp", "aria-label": `Play from ${clock(line.start_s)}`, onclick: () => seek(line.start_s) }, clock(line.start_s)),
      " ",
      line.speaker ? h("strong", {}, `${line.speaker}: `) : null,
      h("span", { class: "words" }, line.text),
    ),
  );
  const list = h("ol", { class: "transcript", id: "transcript" }, items);
  const downloads = h(
    "p",
    {},
    h("a", { href: `${base}/transcript.vtt`, download: `townhall-${spaceId}.vtt`, class: "button" }, "Download the transcript (.vtt)"),
    " ",
    h("a", { href: `${base}/transcript.txt`, download: `townhall-${spaceId}.txt`, class: "button" }, "(.txt)"),
  );
  section.append(h("h3", {}, "Transcript"), search, count, list, downloads);

  function seek(start_s) {
    audio.currentTime = start_s;
    audio.play().catch(() => {});
  }
  search.addEventListener("input", () => {
    const q = search.value.trim().toLowerCase();
    let shown = 0;
    items.forEach((item, i) => {
      const hit = !q || lines[i].text.toLowerCase().includes(q) || (lines[i].speaker || "").toLowerCase().includes(q);
      item.hidden = !hit;
      if (hit) shown += 1;
    });
    count.textContent = q ? `${shown} of ${lines.length} lines match.` : "";
  });
  audio.addEventListener("timeupdate", () => {
    const now = audio.currentTime;
    let current = -1;
    lines.forEach((line, i) => {
      if (line.start_s <= now) current = i;
    });
    items.forEach((item, i) => item.classList.toggle("current", i === current));
  });
}
