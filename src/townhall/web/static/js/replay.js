// The replay: a scrubbable player from the start, and a download link. Used by
// the replay page and by the listener page when the space ends in front of you.

import { mountTranscript } from "./captions.js";
import { HlsPlayer, hlsSupported, nativeHls } from "./player.js";
import { fileNameFor, h, setStatus, sleep } from "./ui.js";

const WAIT_FOR_RECORDING_MS = 30000;
const RETRY_MS = 1000;

async function recordingReady(url) {
  try {
    // GET, not HEAD (not every route answers HEAD); drop the body unread.
    const response = await fetch(url, { cache: "no-store" });
    response.body?.cancel().catch(() => {});
    return response.ok;
  } catch {
    return false;
  }
}

async function playlistEnded(url) {
  try {
    const response = await fetch(url, { cache: "no-store" });
    return response.ok && (await response.text()).includes("#EXT-X-ENDLIST");
  } catch {
    return false;
  }
}

/**
 * Fill `section` with the replay of a space. The finished playlist (VOD) or
 * the remuxed recording.m4a is used, whichever is ready first; a space that
 * just ended may need a moment. Returns {audio, destroy}.
 */
export async function mountReplay(section, spaceId, { autoplay = false, title = "" } = {}) {
  const base = `/spaces/${encodeURIComponent(spaceId)}`;
  const m4aUrl = `${base}/recording.m4a`;
  const m3u8Url = `${base}/live.m3u8`;
  const audio = h("audio", { id: "replay-audio", controls: true, preload: "metadata", "aria-label": "Replay" });
  const status = h("p", { class: "status", role: "status", "aria-live": "polite" });
  const download = h(
    "a",
    { href: m4aUrl, download: fileNameFor(title, `townhall-${spaceId}`, "m4a"), class: "button", id: "download-link" },
    "Download the recording (.m4a)",
  );
  section.append(audio, status, h("p", {}, download));
  section.hidden = false;

  let player = null;
  const canUsePlaylist = hlsSupported() || nativeHls(audio);
  setStatus(status, "Getting the recording ready…", "wait");
  const deadline = Date.now() + WAIT_FOR_RECORDING_MS;
  let source = null;
  while (!source && Date.now() < deadline) {
    if (canUsePlaylist && (await playlistEnded(m3u8Url))) source = "playlist";
    else if (await recordingReady(m4aUrl)) source = "file";
    else await sleep(RETRY_MS);
  }
  if (!source) {
    setStatus(status, "The recording is not ready yet; reload this page in a minute.", "error");
    return { audio, destroy() {} };
  }
  setStatus(status, "");
  mountTranscript(section, spaceId, audio);
  if (source === "playlist") {
    player = new HlsPlayer(audio, {
      live: false,
      onError: (text) => setStatus(status, text, "error"),
    });
    try {
      await player.load(m3u8Url, { play: autoplay });
    } catch {
      if (autoplay) setStatus(status, "Press play to listen from the start.");
    }
  } else {
    audio.src = m4aUrl;
    if (autoplay) {
      audio.play().catch(() => setStatus(status, "Press play to listen from the start."));
    }
  }
  return {
    audio,
    destroy() {
      player?.destroy();
    },
  };
}
