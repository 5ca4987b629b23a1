// A clip's share page: its audio, a download link, and the way to the space.

import { api, describeError } from "../api.js";
import { $, renderAccount, setStatus } from "../ui.js";

const spaceId = document.body.dataset.spaceId;
const clipId = location.pathname.split("/").pop();

async function main() {
  renderAccount();
  $("clip-space").href = `/spaces/${encodeURIComponent(spaceId)}`;
  try {
    const clip = await api("GET", `/api/spaces/${encodeURIComponent(spaceId)}/clips/${encodeURIComponent(clipId)}`, { token: null });
    const space = await api("GET", `/api/spaces/${encodeURIComponent(spaceId)}`, { token: null });
    $("clip-title").textContent = `Clip from ${space.title || "a space"}`;
    document.title = `Clip: ${space.title || "space"} · townhall`;
    $("clip-facts").textContent = `${clip.duration_s.toFixed(0)} s from ${Math.floor(clip.start_s / 60)}:${String(Math.floor(clip.start_s % 60)).padStart(2, "0")}`;
    $("clip-audio").src = clip.m4a_url;
    $("clip-download").href = clip.m4a_url;
    $("clip-download").setAttribute("download", `townhall-clip-${clipId}.m4a`);
  } catch (err) {
    setStatus($("clip-status"), describeError(err), "error");
  }
}

main();
