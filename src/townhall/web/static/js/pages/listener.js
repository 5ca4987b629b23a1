// The listener page (the share link): one button to listen over LL-HLS, room
// state from the cacheable state.json, reactions, request to speak (and speak in
// place once approved), and the replay once the space ends.

import { ApiError, api, describeError, getSession } from "../api.js";
import { StallReporter } from "../defense.js";
import { ListenerPass, refusalMessage } from "../join.js";
import { LiveCaptionLine } from "../captions.js";
import { HlsPlayer } from "../player.js";
import { EMOJI, LABELS, floatEmoji, reactionBursts } from "../reactions.js";
import { mountReplay } from "../replay.js";
import { RewindControl } from "../rewind.js";
import { MicSession } from "../speak.js";
import { queueView, storedTicket, waitInLine } from "../queue.js";
import { pollState } from "../state.js";
import { $, countdownText, displayName, formatWhen, h, renderAccount, setStatus, shareLink, signinHref } from "../ui.js";

const spaceId = document.body.dataset.spaceId;
const base = `/api/spaces/${encodeURIComponent(spaceId)}`;
const me = getSession()?.account || null;

// state.json may lag a local mute by its max-age plus a request.
const MUTE_SETTLE_MS = 4000;

const view = {
  state: null, // last state.json
  space: null,
  listening: false,
  ended: false,
  requested: false,
  mic: null,
  micStarting: false,
  selfMuted: false,
  muteChangedAt: 0,
  backAt: 0, // when the microphone reconnected by itself (a takeover)
  retryTimer: null,
  latencyTimer: null,
  waiting: null, // AbortController of the waiting room
  pendingOwn: {},
  wantListen: false, // pressed Listen before the host was on the air: start by itself
  blocked: false,
  countdownTimer: null,
};

const LISTEN_LABEL = "Listen live";
const LIVE_SENTENCE = "You are listening live.";

const pass = new ListenerPass(spaceId);
const captionLine = new LiveCaptionLine($("caption-line"), spaceId, $("player"));
const rewind = new RewindControl(document.querySelector(".player"), $("player"), { spaceId, token: () => pass.ensure() });
const player = new HlsPlayer($("player"), {
  live: true,
  onError: (text) => setStatus($("join-status"), text, "error"),
  // the red "could not be loaded" goes away once audio is back
  onRecover: () => {
    if (view.listening && !view.mic) setStatus($("join-status"), onAir(view.state) ? LIVE_SENTENCE : waitingSentence(), "ok");
  },
});

/** Is someone who runs the space (host or co-host) connected with a microphone? */
function onAir(state) {
  if (!state || state.state !== "live") return false;
  return (state.speakers || []).some((s) => (s.role === "host" || s.role === "cohost") && s.connected === true);
}

function waitingSentence() {
  return (view.state?.state || view.space?.state) === "scheduled"
    ? "Waiting for the start: the audio starts here by itself when the host goes live."
    : "Waiting for the host: the audio starts here by itself when they go live.";
}

function setPlayLabel(text) {
  $("play-button").querySelector(".label").textContent = text;
}

// -- space facts -------------------------------------------------------------

function showSpace(space) {
  view.space = space;
  $("space-title").textContent = space.title || "Untitled space";
  document.title = `${space.title || "Space"} · townhall`;
  $("space-host").textContent = `Hosted by ${displayName(space.host)}`;
  $("space-description").textContent = space.description || "";
  showState(space.state);
  if (me && space.host && space.host.id === me.id) $("console-link").hidden = false;
  $("ics-link").hidden = space.state !== "scheduled";
  if (space.state === "scheduled") {
    setPlayLabel("Listen when it starts");
    startCountdown(space.scheduled_for);
  }
}

function startCountdown(iso) {
  clearInterval(view.countdownTimer);
  const box = $("countdown");
  const at = Date.parse(iso || "");
  const tick = () => {
    const state = view.state?.state || view.space?.state;
    if (state !== "scheduled") {
      clearInterval(view.countdownTimer);
      box.hidden = true;
      return;
    }
    box.hidden = false;
    const left = countdownText(at - Date.now());
    box.textContent = Number.isFinite(at)
      ? left
        ? `Starts ${left} (${formatWhen(iso)})`
        : `Starting any moment: scheduled for ${formatWhen(iso)}, waiting for the host.`
      : "Starts when the host goes live.";
  };
  tick();
  view.countdownTimer = setInterval(tick, 1000);
  if (!view.wantListen && !view.listening) {
    setStatus($("join-status"), "Keep this page open: press Listen when it starts and the audio begins by itself.");
  }
}

function showState(state) {
  const badge = $("space-state");
  badge.dataset.state = state;
  badge.textContent = { live: "Live", scheduled: "Scheduled", ended: "Ended" }[state] || state;
}

// -- listening ---------------------------------------------------------------

function setListening(on) {
  view.listening = on;
  $("play-button").hidden = on;
  $("leave-button").hidden = !on;
  clearInterval(view.latencyTimer);
  captionLine.setActive(on);
  rewind.setActive(on && !view.mic);
  if (on) {
    view.latencyTimer = setInterval(() => {
      const s = player.latency_s();
      $("latency").textContent = s === null ? "–" : `${s.toFixed(1)} s`;
    }, 1000);
  } else {
    $("latency").textContent = "–";
  }
}

/** The listen button: start now when on the air, else wait for the host and start by itself. */
function listenPressed() {
  if (onAir(view.state) || view.mic) {
    listen();
    return;
  }
  view.wantListen = true;
  $("play-button").disabled = true;
  setPlayLabel("Waiting for the host…");
  setStatus($("join-status"), waitingSentence(), "wait");
}

async function listen() {
  clearTimeout(view.retryTimer);
  view.wantListen = false;
  if (view.blocked) return;
  const status = $("join-status");
  setStatus(status, "Joining…", "wait");
  $("play-button").disabled = true;
  let grant;
  try {
    const kept = pass.token ? null : storedTicket(spaceId);
    grant = await pass.join({ ticket: kept?.ticket });
    if (typeof grant.ticket === "string") grant = await waitForTurn(grant);
    if (!grant) {
      $("play-button").disabled = false;
      return;
    }
  } catch (err) {
    $("play-button").disabled = false;
    if (err instanceof ApiError && err.status === 403) {
      showBlocked(err);
      return;
    }
    if (err instanceof ApiError) {
      const refusal = refusalMessage(err.status, err.problem);
      setStatus(status, refusal.text, refusal.queued ? "wait" : "error");
      if (refusal.queued) countdown(refusal.retry_after_s ?? 5, err);
    } else {
      setStatus(status, describeError(err), "error");
    }
    return;
  }
  $("play-button").disabled = false;
  setStatus(status, "Connecting to the live audio…", "wait");
  if (view.mic) {
    // On stage you hear the room over WebRTC; the broadcast would echo you late.
    setListening(true);
    setStatus(status, "");
    return;
  }
  try {
    // Same origin as this page (which may be a cache in front of the origin);
    // plain HLS when this server's low-latency budget is spent.
    const playlist = grant.delivery === "hls" ? "plain.m3u8" : "live.m3u8";
    const url = `/spaces/${encodeURIComponent(spaceId)}/${playlist}`;
    await player.load(url);
    view.stalls?.stop();
    view.stalls = new StallReporter($("player"), spaceId, () => pass.token).start();
    setListening(true);
    const delayed = grant.delivery === "hls";
    $("listen-mode").hidden = !delayed;
    const live = onAir(view.state);
    const liveText = delayed ? "You are listening live, with a few seconds more delay." : LIVE_SENTENCE;
    setStatus(status, live ? liveText : waitingSentence(), live ? "ok" : "wait");
  } catch (err) {
    player.destroy();
    setStatus(status, err && err.name === "NotAllowedError" ? "Press Listen live to start the audio." : describeError(err), "error");
  }
}

/** Show our place in line until admitted; the 200 answer, or null if stopped. */
async function waitForTurn(queued) {
  const status = $("join-status");
  const bar = $("queue-progress");
  view.waiting?.abort();
  const waiting = new AbortController();
  view.waiting = waiting;
  $("play-button").hidden = true;
  $("leave-button").hidden = false;
  bar.hidden = false;
  const show = (q) => {
    setStatus(status, q.text, "wait");
    bar.value = q.progress;
    bar.setAttribute("aria-valuetext", q.text);
  };
  show(queueView(queued, null, queued.position));
  try {
    const grant = await waitInLine(spaceId, queued, { onUpdate: show, signal: waiting.signal });
    pass.admitted(grant);
    return grant;
  } catch (err) {
    if (err && err.name === "AbortError") return null;
    $("play-button").hidden = false;
    $("leave-button").hidden = true;
    throw err;
  } finally {
    bar.hidden = true;
    if (view.waiting === waiting) view.waiting = null;
  }
}

function countdown(seconds, err) {
  const status = $("join-status");
  let left = Math.ceil(seconds);
  const tick = () => {
    if (left <= 0) {
      listen();
      return;
    }
    const refusal = refusalMessage(err.status, { ...err.problem, retry_after_s: left });
    setStatus(status, refusal.text, "wait");
    left -= 1;
    view.retryTimer = setTimeout(tick, 1000);
  };
  tick();
}

/** One coherent message for an account the host removed and blocked. */
function showBlocked(err) {
  view.blocked = true;
  view.wantListen = false;
  pass.stop();
  player.destroy();
  setListening(false);
  for (const id of ["play-button", "leave-button", "request-button"]) $(id).hidden = true;
  $("on-stage-controls").hidden = true;
  setStatus($("speak-status"), "");
  const detail = err?.message && /blocked/i.test(err.message) ? "" : ` (${err?.message || "refused"})`;
  setStatus($("join-status"), `The host removed you from this space, so you cannot listen or speak here any more${detail}.`, "error");
}

function leave() {
  clearTimeout(view.retryTimer);
  view.stalls?.stop();
  view.stalls = null;
  view.waiting?.abort();
  pass.leave();
  $("listen-mode").hidden = true;
  player.destroy();
  stopMic("");
  setListening(false);
  view.wantListen = false;
  setPlayLabel(LISTEN_LABEL);
  $("play-button").disabled = false;
  setStatus($("join-status"), "You left. Press Listen live to come back.");
  $("play-button").focus();
}

// -- room state ----------------------------------------------------------------

function renderSpeakers(speakers) {
  const list = $("speakers");
  const items = speakers.map((s) =>
    h(
      "li",
      {
        class: `seat${s.speaking ? " speaking" : ""}${s.muted ? " muted" : ""}${s.connected === false ? " away" : ""}`,
        dataset: { accountId: s.account_id, speaking: s.speaking ? "true" : "false" },
      },
      h("span", { class: "avatar", "aria-hidden": "true" }, (displayName(s)[0] || "?").toUpperCase()),
      h("span", { class: "seat-name" }, displayName(s), me && s.account_id === me.id ? " (you)" : ""),
      h("span", { class: "seat-role" }, { host: "Host", cohost: "Co-host", speaker: "Speaker" }[s.role] || s.role || ""),
      s.muted ? h("span", { class: "seat-flag" }, "muted") : null,
      s.speaking ? h("span", { class: "seat-flag live" }, "speaking") : null,
    ),
  );
  if (!items.length) items.push(h("li", { class: "empty" }, "Nobody is on stage yet."));
  list.replaceChildren(...items);
  const talking = speakers.filter((s) => s.speaking).map(displayName);
  const sentence = talking.length ? `Speaking: ${talking.join(", ")}` : "";
  if ($("active-speaker").textContent !== sentence) $("active-speaker").textContent = sentence;
}

function renderReactionTotals(totals) {
  for (const button of $("reaction-buttons").querySelectorAll("button")) {
    const n = Number(totals?.[button.dataset.emoji] || 0);
    button.querySelector(".count").textContent = n ? String(n) : "";
  }
}

function onState(state) {
  const previous = view.state;
  view.state = state;
  showState(state.state);
  if (state.title && !view.space) $("space-title").textContent = state.title;
  $("listener-count").textContent = Number.isFinite(state.listener_count) ? String(state.listener_count) : "–";
  pass.setSample(state.presence_sample);
  renderSpeakers(state.speakers || []);
  renderReactionTotals(state.reactions || {});
  const { bursts, pending } = reactionBursts(previous?.reactions, state.reactions, view.pendingOwn);
  view.pendingOwn = pending;
  for (const [emoji, n] of Object.entries(bursts)) floatEmoji($("float-layer"), emoji, n);
  syncStage(state);
  const program = state.program && state.program.status !== "ok" ? state.program.message : "";
  $("program-alert").textContent = program;
  $("program-alert").hidden = !program;
  const seat = mySeat(state);
  if (seat && (seat.role === "host" || seat.role === "cohost")) $("console-link").hidden = false;
  if (state.state !== "scheduled") $("ics-link").hidden = true;
  const wasOnAir = onAir(previous);
  const nowOnAir = onAir(state);
  if (state.state === "live" && !view.blocked) {
    if (nowOnAir && view.wantListen) {
      listen(); // pressed before the start: the page starts the audio by itself
    } else if (view.wantListen) {
      if (previous?.state === "scheduled") setStatus($("join-status"), waitingSentence(), "wait");
    } else if (!view.listening && !view.wantListen) {
      setPlayLabel(nowOnAir ? LISTEN_LABEL : "Listen when the host goes live");
      if (previous?.state === "scheduled" || (!wasOnAir && nowOnAir && previous)) {
        setStatus($("join-status"), nowOnAir ? "The host is live now: press Listen live." : waitingSentence(), nowOnAir ? "ok" : "");
      }
    } else if (view.listening && !view.mic && wasOnAir !== nowOnAir && previous) {
      setStatus($("join-status"), nowOnAir ? LIVE_SENTENCE : "The host's microphone is off for now; the audio comes back here by itself.", nowOnAir ? "ok" : "wait");
    }
  }
  if (state.state === "ended" && !view.ended) switchToReplay();
}

// -- speaking ------------------------------------------------------------------

function mySeat(state) {
  return me ? (state?.speakers || []).find((s) => s.account_id === me.id) : undefined;
}

function syncStage(state) {
  if (!me || view.ended || view.blocked) return;
  const seat = mySeat(state);
  if (seat && !view.mic && !view.micStarting) {
    if (view.requested) {
      view.requested = false;
      startMic();
    } else {
      $("request-button").hidden = false;
      $("request-button").textContent = "Join the stage";
      $("request-button").dataset.mode = "join";
      setStatus($("speak-status"), "You have been invited on stage.");
    }
  } else if (!seat && view.mic && view.mic.live) {
    stopMic("You are back in the audience.");
  } else if (seat && view.mic?.live && view.selfMuted && !seat.muted && Date.now() - view.backAt < 3 * MUTE_SETTLE_MS) {
    view.mic.remindMuted(me.id); // a node that took the room over does not know our mute: it must not unmute us
  } else if (seat && view.mic?.live && Boolean(seat.muted) !== view.selfMuted && Date.now() - view.muteChangedAt > MUTE_SETTLE_MS) {
    // The host (or you, elsewhere) changed your mute on the server.
    showSelfMuted(Boolean(seat.muted));
    view.mic.setMuted(view.selfMuted);
    if (view.selfMuted) setStatus($("speak-status"), "You are muted.", "");
  }
}

function showSelfMuted(muted) {
  view.selfMuted = muted;
  const button = $("self-mute-button");
  button.setAttribute("aria-pressed", String(muted));
  button.textContent = muted ? "Unmute" : "Mute";
}

async function requestToSpeak() {
  const button = $("request-button");
  if (button.dataset.mode === "join") {
    button.hidden = true;
    startMic();
    return;
  }
  button.disabled = true;
  try {
    await api("POST", `${base}/requests`, { body: {} });
    view.requested = true;
    button.textContent = "Request sent";
    setStatus($("speak-status"), "Request sent. Your microphone goes live when the host approves.", "wait");
  } catch (err) {
    button.disabled = false;
    setStatus($("speak-status"), describeError(err), "error");
  }
}

async function startMic() {
  view.micStarting = true;
  $("request-button").hidden = true;
  const mic = new MicSession({
    spaceId,
    returnAudio: $("return-audio"),
    onStatus: (text) => setStatus($("speak-status"), text, "wait"),
    onReconnecting: (text) => setStatus($("speak-status"), `${text} Listeners do not hear you right now.`, "error"),
    onBack: (text) => {
      setStatus($("speak-status"), `${text} ${view.selfMuted ? "You are muted." : "Your microphone is live."}`, view.selfMuted ? "" : "ok");
      view.muteChangedAt = view.backAt = Date.now(); // the new node learns our mute before its seat is trusted
      if (view.selfMuted) mic.remindMuted(me.id);
    },
    onDrop: (text) => stopMic(`${text} You are listening to the broadcast again; ask to speak again.`),
  });
  view.mic = mic;
  try {
    await mic.start();
    player.destroy(); // hear the room over WebRTC now
    if (!view.listening) setListening(true);
    $("on-stage-controls").hidden = false;
    showSelfMuted(false);
    setStatus($("speak-status"), "You are on stage: your microphone is live.", "ok");
  } catch (err) {
    mic.stop();
    view.mic = null;
    setStatus($("speak-status"), describeError(err), "error");
    $("request-button").hidden = false;
    $("request-button").disabled = false;
    $("request-button").textContent = "Join the stage";
    $("request-button").dataset.mode = "join";
  } finally {
    view.micStarting = false;
  }
}

function stopMic(sentence) {
  const hadMic = Boolean(view.mic);
  view.mic?.stop();
  view.mic = null;
  $("on-stage-controls").hidden = true;
  if (!hadMic) return;
  if (sentence) setStatus($("speak-status"), sentence);
  resetRequestButton();
  if (view.listening && !view.ended) listen();
}

function resetRequestButton() {
  const button = $("request-button");
  button.hidden = !me || view.ended;
  button.disabled = false;
  button.textContent = "Request to speak";
  delete button.dataset.mode;
}

async function toggleSelfMute() {
  if (!view.mic || !me) return;
  const muted = !view.selfMuted;
  view.muteChangedAt = Date.now();
  view.mic.setMuted(muted);
  showSelfMuted(muted);
  setStatus($("speak-status"), muted ? "You are muted." : "You are on stage: your microphone is live.", muted ? "" : "ok");
  try {
    await api("POST", `${base}/speakers/${encodeURIComponent(me.id)}/${muted ? "mute" : "unmute"}`, { body: {} });
  } catch (err) {
    setStatus($("speak-status"), describeError(err), "error");
  }
}

async function leaveStage() {
  try {
    await api("POST", `${base}/speakers/${encodeURIComponent(me.id)}/demote`, { body: {} });
  } catch (err) {
    setStatus($("speak-status"), describeError(err), "error");
  }
  stopMic("You left the stage and are listening again.");
}

// -- reactions -------------------------------------------------------------------

async function react(emoji) {
  const status = $("reaction-status");
  try {
    const token = await pass.ensure();
    await api("POST", `${base}/reactions`, { body: { emoji }, token });
    view.pendingOwn[emoji] = (view.pendingOwn[emoji] || 0) + 1;
    floatEmoji($("float-layer"), emoji, 1);
    setStatus(status, "");
  } catch (err) {
    let text = describeError(err);
    if (err instanceof ApiError && err.status === 429 && err.retry_after_s) {
      text = `Easy there: you can react again in ${Math.ceil(err.retry_after_s)} seconds.`;
    }
    setStatus(status, text, "error");
  }
}

function buildReactionButtons() {
  const box = $("reaction-buttons");
  for (const emoji of EMOJI) {
    box.append(
      h(
        "button",
        { type: "button", class: "reaction", dataset: { emoji }, "aria-label": `Send ${LABELS[emoji]}`, onclick: () => react(emoji) },
        h("span", { "aria-hidden": "true" }, emoji),
        h("span", { class: "count" }),
      ),
    );
  }
}

// -- the end -------------------------------------------------------------------------

async function switchToReplay() {
  view.ended = true;
  const wasListening = view.listening;
  clearTimeout(view.retryTimer);
  view.stalls?.stop();
  view.stalls = null;
  pass.stop();
  player.destroy();
  stopMic("");
  setListening(false);
  poller.stop();
  for (const id of ["play-button", "leave-button", "request-button"]) $(id).hidden = true;
  $("speak-panel").hidden = true;
  $("reaction-buttons").closest("section").hidden = true;
  $("speakers").closest("section").hidden = true;
  document.querySelector(".player-facts").hidden = true;
  clearInterval(view.countdownTimer);
  $("countdown").hidden = true;
  setStatus($("join-status"), "This space has ended. The replay is below.");
  history.replaceState(null, "", `/spaces/${encodeURIComponent(spaceId)}/replay`);
  await mountReplay($("replay-section"), spaceId, { autoplay: wasListening, title: view.space?.title || view.state?.title || "" });
}

// -- start -------------------------------------------------------------------------------

function onStateError(err, status) {
  if (status === 404 && !view.state) {
    setStatus($("join-status"), "There is no live room for this space yet.");
  }
}

renderAccount();
buildReactionButtons();
$("play-button").addEventListener("click", listenPressed);
$("share-button").addEventListener("click", () =>
  shareLink(new URL(`/spaces/${encodeURIComponent(spaceId)}`, location.origin).href, view.space?.title || document.title, $("share-status")),
);
$("leave-button").addEventListener("click", leave);
// closing the page frees the place at once (a ticket in line is kept for a return)
window.addEventListener("pagehide", () => pass.leave());
$("request-button").addEventListener("click", requestToSpeak);
$("self-mute-button").addEventListener("click", toggleSelfMute);
$("leave-stage-button").addEventListener("click", leaveStage);
if (me) {
  resetRequestButton();
} else {
  $("speak-signin").hidden = false;
  $("speak-signin-link").href = signinHref();
}

const poller = pollState(spaceId, { onState, onError: onStateError });

api("GET", base, { token: null })
  .then((space) => {
    showSpace(space);
    if (space.state === "ended" && !view.ended) switchToReplay();
  })
  .catch((err) => {
    if (err instanceof ApiError && err.status === 404) {
      $("space-title").textContent = "Space not found";
      setStatus($("join-status"), "There is no space at this link; check the address.", "error");
      $("play-button").disabled = true;
      poller.stop();
    } else {
      setStatus($("join-status"), describeError(err), "error");
    }
  });
