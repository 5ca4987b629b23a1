// Home: live now, upcoming and recent replays, from GET /api/spaces?state=...

import { api, describeError, getSession } from "../api.js";
import { $, displayName, formatWhen, h, renderAccount, setStatus } from "../ui.js";

function card(space, me) {
  const id = encodeURIComponent(space.id);
  const href = space.state === "ended" ? `/spaces/${id}/replay` : `/spaces/${id}`;
  const when =
    space.state === "live"
      ? h("span", { class: "badge", "data-state": "live" }, "Live")
      : space.state === "scheduled"
        ? h("span", { class: "when" }, `Starts ${formatWhen(space.scheduled_for)}`)
        : h("span", { class: "when" }, `Ended ${formatWhen(space.ended_at)}`);
  const isHost = me && space.host && space.host.id === me.id;
  return h(
    "li",
    { class: "card", dataset: { spaceId: space.id, state: space.state } },
    h("h3", {}, h("a", { href, class: "card-link" }, space.title || "Untitled space")),
    h("p", { class: "muted" }, `Hosted by ${displayName(space.host)}`, " · ", when),
    space.description ? h("p", { class: "description" }, space.description) : null,
    isHost && space.state !== "ended"
      ? h("p", {}, h("a", { href: `/spaces/${id}/host`, class: "button small" }, "Open host console"))
      : null,
  );
}

async function fill(state, me) {
  const list = $(`list-${state}`);
  const data = await api("GET", `/api/spaces?state=${state}`, { token: null });
  const spaces = (data && data.spaces) || [];
  list.replaceChildren(...spaces.slice(0, 20).map((space) => card(space, me)));
  if (!spaces.length) list.append(h("li", { class: "empty" }, list.dataset.empty));
}

async function main() {
  renderAccount();
  const me = getSession()?.account || null;
  const results = await Promise.allSettled(["live", "scheduled", "ended"].map((s) => fill(s, me)));
  const failed = results.find((r) => r.status === "rejected");
  if (failed) setStatus($("home-status"), describeError(failed.reason), "error");
}

main();
