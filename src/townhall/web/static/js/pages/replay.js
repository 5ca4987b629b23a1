// The replay page: the recording from the start, scrubbable, and a download link.

import { ApiError, api, describeError } from "../api.js";
import { mountReplay } from "../replay.js";
import { $, displayName, formatWhen, h, renderAccount } from "../ui.js";

const spaceId = document.body.dataset.spaceId;

async function main() {
  renderAccount();
  const section = $("replay-section");
  let space;
  try {
    space = await api("GET", `/api/spaces/${encodeURIComponent(spaceId)}`, { token: null });
  } catch (err) {
    $("space-title").textContent = err instanceof ApiError && err.status === 404 ? "Space not found" : "Replay";
    section.append(h("p", { class: "error", role: "alert" }, describeError(err)));
    return;
  }
  $("space-title").textContent = space.title || "Untitled space";
  document.title = `Replay: ${space.title || "space"} · townhall`;
  $("space-host").textContent = `Hosted by ${displayName(space.host)}${space.ended_at ? ` · ended ${formatWhen(space.ended_at)}` : ""}`;
  $("space-description").textContent = space.description || "";
  if (space.state !== "ended") {
    const live = `/spaces/${encodeURIComponent(spaceId)}`;
    section.append(
      h("p", { class: "notice" }, "This space has not ended yet, so there is no replay. ", h("a", { href: live }, "Listen live instead.")),
    );
    return;
  }
  await mountReplay(section, spaceId, { autoplay: false, title: space.title });
  // a recording that could not keep all of the talk says what it lacks
  const state = await fetch(`/spaces/${encodeURIComponent(spaceId)}/state.json`).then((r) => (r.ok ? r.json() : null), () => null);
  if (state?.recording?.message) section.append(h("p", { class: "notice", role: "note" }, state.recording.message));
}

main();
