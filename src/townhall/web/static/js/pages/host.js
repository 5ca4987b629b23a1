// The host console: go live with the microphone, watch the seats (live levels
// from state.json), handle requests to speak, invite, mute, move back to the
// audience, remove and block, and end the space.

import { ApiError, api, describeError, getSession } from "../api.js";
import { LABELS, floatEmoji, reactionBursts } from "../reactions.js";
import { MicSession } from "../speak.js";
import { pollState } from "../state.js";
import { $, countdownText, displayName, formatWhen, h, renderAccount, setStatus, signinHref } from "../ui.js";

const REQUESTS_INTERVAL_MS = 2000;
// Reconnecting the microphone after a drop (a blip, a server restart): backoff, bounded.
const RECONNECT_DELAYS_MS = [500, 1000, 2000, 4000, 8000, 10000];
// state.json says we are not connected although the browser thinks it sends: trust the server.
const UNHEARD_AFTER_MS = 8000;
const LIVE_SENTENCE = "You are live: the server receives your microphone.";

const spaceId = document.body.dataset.spaceId;
const base = `/api/spaces/${encodeURIComponent(spaceId)}`;
const session = getSession();
const me = session?.account || null;

const view = {
  space: null,
  state: null,
  mic: null,
  selfMuted: false,
  meterFrame: 0,
  requestsTimer: null,
  poller: null,
  wantMic: false, // the host pressed Go live and has not turned the microphone off
  reconnectTimer: null,
  attempts: 0,
  unheardSince: 0,
  countdownTimer: null,
  seenRequests: null,
};
// Survives a reload of this tab: a host who was live comes back live.
const LIVE_KEY = `townhall.live.${spaceId}`;

// The local input meter follows the microphone at display rate (no network).
function meterLoop() {
  if (!view.mic) return;
  $("my-level").value = view.mic.muted ? 0 : view.mic.level();
  view.meterFrame = requestAnimationFrame(meterLoop);
}

const errorBox = $("console-error");
const micStatus = $("mic-status");

function fail(err) {
  setStatus(errorBox, describeError(err), "error");
}

function isHost() {
  return Boolean(me && view.space?.host && view.space.host.id === me.id);
}

function showState(state) {
  const badge = $("space-state");
  badge.dataset.state = state;
  badge.textContent = { live: "Live", scheduled: "Scheduled", ended: "Ended" }[state] || state;
  // only the host starts and ends the space; a co-host is not offered what would fail
  $("start-button").hidden = state !== "scheduled" || !isHost();
  $("end-section").hidden = !isHost() && state !== "ended";
  if (state === "scheduled") startCountdown();
  $("golive-button").disabled = state !== "live";
  $("end-button").disabled = state === "ended";
  if (state === "ended") {
    view.wantMic = false;
    sessionStorage.removeItem(LIVE_KEY);
    clearTimeout(view.reconnectTimer);
    stopMic("The space has ended.");
    $("golive-button").hidden = true;
    clearTimeout(view.requestsTimer);
    const replay = `/spaces/${encodeURIComponent(spaceId)}/replay`;
    $("end-h").textContent = "This space has ended";
    $("end-button").replaceWith(h("a", { href: replay, class: "button", id: "replay-link" }, "Open the replay"));
  }
}

// -- microphone ---------------------------------------------------------------

function startCountdown() {
  clearInterval(view.countdownTimer);
  const box = $("countdown");
  const iso = view.space?.scheduled_for;
  const at = Date.parse(iso || "");
  const tick = () => {
    if ((view.state?.state || view.space?.state) !== "scheduled" || !Number.isFinite(at)) {
      clearInterval(view.countdownTimer);
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const left = countdownText(at - Date.now());
    box.textContent = left ? `Scheduled to start ${left}.` : "It is time: press Start the space now.";
  };
  tick();
  view.countdownTimer = setInterval(tick, 1000);
}

/** The microphone was lost (network blip, server restart): say so, and reconnect by itself. */
function micLost(text) {
  if (!view.mic) return;
  view.mic.stop();
  view.mic = null;
  cancelAnimationFrame(view.meterFrame);
  delete document.body.dataset.mic;
  document.body.dataset.mic = "reconnecting";
  $("my-level-row").hidden = true;
  scheduleReconnect(text);
}

function scheduleReconnect(text) {
  clearTimeout(view.reconnectTimer);
  if (!view.wantMic || view.state?.state === "ended") return;
  const delay = RECONNECT_DELAYS_MS[Math.min(view.attempts, RECONNECT_DELAYS_MS.length - 1)];
  view.attempts += 1;
  setStatus(
    micStatus,
    `${text} Listeners do not hear you right now. Reconnecting in ${Math.ceil(delay / 1000)} s (attempt ${view.attempts})…`,
    "error",
  );
  $("golive-button").hidden = true;
  $("stopmic-button").hidden = false;
  $("mute-button").hidden = true;
  view.reconnectTimer = setTimeout(() => goLive({ reconnect: true }), delay);
}

async function goLive({ reconnect = false } = {}) {
  setStatus(errorBox, "");
  clearTimeout(view.reconnectTimer);
  if (view.mic) return;
  view.wantMic = true;
  $("golive-button").disabled = true;
  view.selfMuted = reconnect && view.selfMuted; // the page's own restart keeps the mute
  const mic = new MicSession({
    muted: view.selfMuted,
    spaceId,
    returnAudio: $("return-audio"),
    onStatus: (text) => {
      if (mic.live) setStatus(micStatus, text, /live again/.test(text) ? "ok" : "error");
      else setStatus(micStatus, reconnect ? `Reconnecting: ${text}` : text, "wait");
    },
    // a lost server: the session re-offers by itself (same track, same mute state)
    onReconnecting: (text) => {
      document.body.dataset.mic = "reconnecting";
      setStatus(micStatus, `${text} Listeners do not hear you right now.`, "error");
    },
    onBack: (text) => {
      document.body.dataset.mic = "live";
      view.unheardSince = 0;
      setStatus(micStatus, `${text} ${view.selfMuted ? "You are muted." : LIVE_SENTENCE}`, view.selfMuted ? "" : "ok");
      if (view.selfMuted) mic.remindMuted(me.id); // the new node may not know it yet
    },
    // gave up (policy.for_ms): the console goes on trying, slower, with a new microphone session
    onDrop: (text) => micLost(text),
  });
  view.mic = mic;
  try {
    await mic.start();
    if (view.mic !== mic) return; // turned off meanwhile
    view.attempts = 0;
    view.unheardSince = 0;
    sessionStorage.setItem(LIVE_KEY, "1");
    if (view.selfMuted) mic.remindMuted(me.id);
    $("golive-button").hidden = true;
    $("mute-button").hidden = false;
    $("stopmic-button").hidden = false;
    $("mute-button").textContent = view.selfMuted ? "Unmute" : "Mute";
    $("mute-button").setAttribute("aria-pressed", String(view.selfMuted));
    const sentence = view.selfMuted ? "You are muted." : LIVE_SENTENCE;
    setStatus(micStatus, reconnect ? `Reconnected. ${sentence}` : sentence, view.selfMuted ? "" : "ok");
    document.body.dataset.mic = "live";
    $("my-level-row").hidden = false;
    meterLoop();
  } catch (err) {
    mic.stop();
    if (view.mic === mic) view.mic = null;
    const permanent =
      (err instanceof ApiError && [401, 403, 404, 409].includes(err.status)) ||
      (err && (err.name === "NotAllowedError" || err.name === "NotFoundError"));
    if (view.wantMic && !permanent && view.state?.state !== "ended") {
      scheduleReconnect(`${describeError(err)}`);
      return;
    }
    view.wantMic = false;
    sessionStorage.removeItem(LIVE_KEY);
    setStatus(micStatus, describeError(err), "error");
    $("golive-button").hidden = false;
    $("stopmic-button").hidden = true;
    $("golive-button").disabled = view.space?.state !== "live";
  }
}

/** The host turns the microphone off (or the space ended): no reconnecting. */
function micOff(sentence) {
  view.wantMic = false;
  view.attempts = 0;
  sessionStorage.removeItem(LIVE_KEY);
  clearTimeout(view.reconnectTimer);
  if (view.mic) {
    stopMic(sentence);
  } else {
    delete document.body.dataset.mic;
    $("golive-button").hidden = false;
    $("golive-button").disabled = view.state?.state === "ended" || view.space?.state !== "live";
    $("mute-button").hidden = true;
    $("stopmic-button").hidden = true;
    setStatus(micStatus, sentence || "Microphone off.");
  }
}

function stopMic(sentence) {
  if (!view.mic) return;
  view.mic.stop();
  view.mic = null;
  cancelAnimationFrame(view.meterFrame);
  $("my-level-row").hidden = true;
  delete document.body.dataset.mic;
  $("golive-button").hidden = false;
  $("golive-button").disabled = view.state?.state === "ended";
  $("mute-button").hidden = true;
  $("stopmic-button").hidden = true;
  setStatus(micStatus, sentence || "Microphone off.");
}

async function setMuted(accountId, muted) {
  await api("POST", `${base}/speakers/${encodeURIComponent(accountId)}/${muted ? "mute" : "unmute"}`, { body: {} });
}

async function toggleSelfMute() {
  if (!view.mic) return;
  const muted = !view.selfMuted;
  view.mic.setMuted(muted);
  view.selfMuted = muted;
  $("mute-button").textContent = muted ? "Unmute" : "Mute";
  $("mute-button").setAttribute("aria-pressed", String(muted));
  setStatus(micStatus, muted ? "You are muted." : LIVE_SENTENCE, muted ? "" : "ok");
  try {
    await setMuted(me.id, muted);
  } catch (err) {
    fail(err);
  }
}

// -- seats ----------------------------------------------------------------------

async function act(promise, sentence) {
  setStatus(errorBox, "");
  try {
    await promise;
    if (sentence) setStatus($("console-status"), sentence, "ok");
    view.poller?.refresh();
  } catch (err) {
    fail(err);
  }
}

function confirmBlock(speaker) {
  const dialog = $("block-dialog");
  $("block-dialog-text").textContent = `${displayName(speaker)} leaves the stage and cannot come back to this space.`;
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    () => {
      if (dialog.returnValue === "block") {
        act(api("POST", `${base}/blocks`, { body: { account_id: speaker.account_id } }), `${displayName(speaker)} was removed and blocked.`);
      }
    },
    { once: true },
  );
  dialog.showModal();
}

function seatControls(s) {
  if (me && s.account_id === me.id) return null;
  if (s.role === "host") return null;
  const name = displayName(s);
  return h(
    "div",
    { class: "seat-actions", role: "group", "aria-label": `Actions for ${name}` },
    h("button", { type: "button", class: "button small", onclick: () => act(setMuted(s.account_id, !s.muted)) }, s.muted ? `Unmute` : `Mute`),
    h(
      "button",
      {
        type: "button",
        class: "button small",
        onclick: () => act(api("POST", `${base}/speakers/${encodeURIComponent(s.account_id)}/demote`, { body: {} }), `${name} is back in the audience.`),
      },
      "Move to audience",
    ),
    h("button", { type: "button", class: "button small danger", onclick: () => confirmBlock(s) }, "Remove and block"),
  );
}

function seatFlag(s) {
  return s.connected === false ? "not connected" : s.muted ? "muted" : s.speaking ? "speaking" : "";
}

function seatItem(s) {
  const name = displayName(s);
  return h(
    "li",
    { class: "seat", dataset: { accountId: s.account_id } },
    h("span", { class: "avatar", "aria-hidden": "true" }, (name[0] || "?").toUpperCase()),
    h("span", { class: "seat-name" }, name, me && s.account_id === me.id ? " (you)" : ""),
    h("span", { class: "seat-role" }, { host: "Host", cohost: "Co-host", speaker: "Speaker" }[s.role] || s.role || ""),
    h("meter", { class: "level", min: "0", max: "1", value: "0", "aria-label": `${name} level` }),
    h("span", { class: "seat-flag" }),
    seatControls(s),
  );
}

// What needs new buttons when it changes; level and speaking are updated in place.
function seatKey(s) {
  return [s.account_id, displayName(s), s.role, Boolean(s.muted)].join("\u0000");
}

/** Update the seats in place so keyboard focus on a seat's buttons survives polling. */
function renderSeats(state) {
  const list = $("seats");
  const speakers = state.speakers || [];
  const key = speakers.map(seatKey).join("\u0001");
  if (list.dataset.key !== key || !list.children.length) {
    const focused = document.activeElement?.closest?.("#seats li") ? document.activeElement : null;
    const focusId = focused?.closest("li")?.dataset.accountId;
    const focusText = focused?.textContent;
    list.dataset.key = key;
    const items = speakers.map(seatItem);
    if (!items.length) items.push(h("li", { class: "empty" }, "Nobody is on stage yet. Press Go live."));
    list.replaceChildren(...items);
    if (focusId) {
      const again = [...list.querySelectorAll(`li[data-account-id="${CSS.escape(focusId)}"] button`)];
      (again.find((b) => b.textContent === focusText) || again[0])?.focus();
    }
  }
  for (const s of speakers) {
    const li = list.querySelector(`li[data-account-id="${CSS.escape(s.account_id)}"]`);
    if (!li) continue;
    li.classList.toggle("speaking", Boolean(s.speaking));
    li.classList.toggle("muted", Boolean(s.muted));
    li.classList.toggle("away", s.connected === false);
    li.dataset.speaking = s.speaking ? "true" : "false";
    li.querySelector("meter").value = Math.max(0, Math.min(1, Number(s.level) || 0));
    li.querySelector(".seat-flag").textContent = seatFlag(s);
  }
  const count = Number.isFinite(state.listener_count) ? `· ${state.listener_count} listening` : "";
  $("listener-count").textContent = count;
}

/** The server's view of my own seat: a browser may think it sends while nothing arrives. */
function checkHeard(state) {
  if (!view.mic || !view.mic.live || !me) {
    view.unheardSince = 0;
    return;
  }
  const seat = (state.speakers || []).find((s) => s.account_id === me.id);
  if (seat && seat.connected === true) {
    if (view.unheardSince) setStatus(micStatus, view.selfMuted ? "You are muted." : LIVE_SENTENCE, view.selfMuted ? "" : "ok");
    view.unheardSince = 0;
    return;
  }
  if (!view.unheardSince) {
    view.unheardSince = Date.now();
    return;
  }
  if (Date.now() - view.unheardSince > UNHEARD_AFTER_MS) {
    view.unheardSince = 0;
    micLost("The server does not receive your microphone.");
  } else {
    setStatus(micStatus, "Checking the connection: the server has not confirmed your microphone yet…", "wait");
  }
}

let previousReactions = null;
function showReactions(state) {
  const totals = state.reactions || {};
  const { bursts } = reactionBursts(previousReactions, totals);
  previousReactions = totals;
  const parts = Object.entries(bursts);
  for (const [emoji, n] of parts) floatEmoji($("float-layer"), emoji, n);
  if (parts.length) {
    const text = parts.map(([emoji, n]) => `${n} × ${emoji}`).join(", ");
    $("reaction-feed").textContent = `Just now: ${text}`;
    $("reaction-feed").title = parts.map(([emoji]) => LABELS[emoji] || emoji).join(", ");
  } else if (Object.keys(totals).length) {
    const all = Object.entries(totals).filter(([, n]) => Number(n) > 0);
    if (all.length) $("reaction-feed").textContent = `Reactions so far: ${all.map(([emoji, n]) => `${emoji} ${n}`).join("  ")}`;
  }
}

// state.json says when the program or the recording fails ("Recording is
// failing: the disk is full. ..."), or (scaled out) when the room's server
// stopped answering and the seats cannot be told: the host sees it while it lasts.
function renderHealth(state) {
  const notes = [state.room, state.program, state.recording].filter((p) => p && p.status !== "ok" && p.message);
  $("health-alert").textContent = notes.map((p) => p.message).join(" ");
  $("health-alert").hidden = !notes.length;
}

function onState(state) {
  view.state = state;
  renderHealth(state);
  checkHeard(state);
  showReactions(state);
  if (state.state !== view.space?.state) {
    if (view.space) view.space.state = state.state;
    showState(state.state);
    if (state.state === "live") pollRequests();
  }
  renderSeats(state);
  if (state.state === "ended") view.poller?.stop();
}

// -- requests to speak ------------------------------------------------------------

function renderRequests(requests) {
  const list = $("requests");
  const items = requests.map((r) => {
    const name = displayName(r);
    return h(
      "li",
      { class: "request", dataset: { accountId: r.account_id } },
      h("span", { class: "seat-name" }, name, r.username && r.display_name ? h("span", { class: "muted" }, ` @${r.username}`) : null),
      h("span", { class: "muted small" }, formatWhen(r.requested_at)),
      h(
        "div",
        { class: "seat-actions", role: "group", "aria-label": `Request from ${name}` },
        h(
          "button",
          {
            type: "button",
            class: "button small primary",
            onclick: () => act(api("POST", `${base}/requests/${encodeURIComponent(r.account_id)}/approve`, { body: {} }).then(pollRequests), `${name} is coming on stage.`),
          },
          "Approve",
        ),
        h(
          "button",
          {
            type: "button",
            class: "button small",
            onclick: () => act(api("POST", `${base}/requests/${encodeURIComponent(r.account_id)}/deny`, { body: {} }).then(pollRequests)),
          },
          "Deny",
        ),
      ),
    );
  });
  if (!items.length) items.push(h("li", { class: "empty" }, list.dataset.empty));
  // Keep focus stable: only re-render when the queue changed.
  const key = requests.map((r) => r.account_id).join(",");
  if (list.dataset.key !== key || !list.children.length) {
    list.dataset.key = key;
    list.replaceChildren(...items);
  }
  // a request arriving is shown, not only listed
  const ids = new Set(requests.map((r) => r.account_id));
  if (view.seenRequests) {
    const fresh = requests.filter((r) => !view.seenRequests.has(r.account_id));
    for (const r of fresh) list.querySelector(`li[data-account-id="${CSS.escape(r.account_id)}"]`)?.classList.add("new");
    if (fresh.length) {
      setStatus($("console-status"), `${fresh.map(displayName).join(", ")} ${fresh.length === 1 ? "asks" : "ask"} to speak.`, "ok");
    }
  }
  view.seenRequests = ids;
  $("requests-h").textContent = requests.length ? `Requests to speak (${requests.length})` : "Requests to speak";
  const plainTitle = document.title.replace(/^\(\d+\) /, "");
  document.title = requests.length ? `(${requests.length}) ${plainTitle}` : plainTitle;
}

async function pollRequests() {
  clearTimeout(view.requestsTimer);
  if (view.space?.state !== "live") return;
  try {
    const data = await api("GET", `${base}/requests`);
    renderRequests((data && data.requests) || []);
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      fail(err);
      return;
    }
  }
  view.requestsTimer = setTimeout(pollRequests, document.hidden ? REQUESTS_INTERVAL_MS * 5 : REQUESTS_INTERVAL_MS);
}

// -- start, end -------------------------------------------------------------------------

async function startNow() {
  try {
    const space = await api("POST", `${base}/start`, { body: {} });
    view.space = space;
    showState(space.state);
    pollRequests();
  } catch (err) {
    fail(err);
  }
}

function endSpace() {
  const dialog = $("end-dialog");
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    async () => {
      if (dialog.returnValue !== "end") return;
      try {
        const space = await api("POST", `${base}/end`, { body: {} });
        view.space = space;
        showState("ended");
        setStatus(micStatus, "The space has ended. The replay is being published.", "ok");
      } catch (err) {
        fail(err);
      }
    },
    { once: true },
  );
  dialog.showModal();
}

async function invite(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const username = form.username.value.trim();
  if (!username) {
    setStatus($("invite-status"), "Type the username of the person to invite.", "error");
    form.username.focus();
    return;
  }
  try {
    await api("POST", `${base}/invites`, { body: { username, role: form.role.value } });
    setStatus($("invite-status"), `${username} can now speak: they see a Join the stage button on the listener page.`, "ok");
    form.reset();
  } catch (err) {
    setStatus($("invite-status"), describeError(err), "error");
  }
}

async function main() {
  renderAccount();
  const share = new URL(`/spaces/${encodeURIComponent(spaceId)}`, location.origin).href;
  $("share-link").href = share;
  $("share-link").textContent = share;
  $("copy-link").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(share);
      $("copy-link").textContent = "Copied";
    } catch {
      $("copy-link").textContent = "Select the link to copy it";
    }
  });
  if (!session) {
    setStatus(errorBox, "Sign in as the host to use this console.", "error");
    errorBox.append(" ", h("a", { href: signinHref() }, "Sign in"));
    for (const button of document.querySelectorAll("main button")) button.disabled = true;
    return;
  }
  $("golive-button").addEventListener("click", () => goLive());
  $("mute-button").addEventListener("click", toggleSelfMute);
  $("stopmic-button").addEventListener("click", () => micOff("Microphone off."));
  $("start-button").addEventListener("click", startNow);
  $("end-button").addEventListener("click", endSpace);
  $("invite-form").addEventListener("submit", invite);
  try {
    view.space = await api("GET", base);
  } catch (err) {
    fail(err);
    return;
  }
  $("space-title").textContent = view.space.title || "Untitled space";
  document.title = `Host: ${view.space.title || "space"} · townhall`;
  showState(view.space.state);
  if (view.space.state === "scheduled") {
    setStatus(micStatus, `Scheduled for ${formatWhen(view.space.scheduled_for)}. Start it when you are ready.`);
  }
  if (view.space.state === "live" && sessionStorage.getItem(LIVE_KEY)) {
    // this tab was live before a reload: come back live without a click
    setStatus(micStatus, "You were live in this tab: reconnecting your microphone…", "wait");
    goLive({ reconnect: true });
  }
  view.poller = pollState(spaceId, { onState });
  pollRequests();
}

main();
