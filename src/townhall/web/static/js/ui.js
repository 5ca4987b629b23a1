// Small DOM helpers shared by the pages, and the account area of the top bar.

import { api, clearSession, getSession } from "./api.js";

export const $ = (id) => document.getElementById(id);

/** Build an element: h("li", {class: "x", dataset: {a: 1}, onclick: f}, "text", child). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** Show a sentence in a status region; kind is "", "error", "ok" or "wait". */
export function setStatus(el, text, kind = "") {
  if (!el) return;
  el.textContent = text || "";
  el.dataset.kind = kind;
}

export function displayName(person) {
  if (!person) return "someone";
  return person.display_name || person.username || "someone";
}

export function formatWhen(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

/**
 * `next` if it is a path on `origin`, else `fallback`. Browsers read a
 * backslash as "/" and drop tabs and newlines, so "/" + backslash + "evil" or
 * "/" + TAB + "/evil" would become "//evil", another site: such input is
 * refused outright, and what is left is parsed as a URL and kept only if it
 * stays on this origin.
 */
export function safeNext(next, origin = location.origin, fallback = "/") {
  if (typeof next !== "string" || !next.startsWith("/") || next.startsWith("//")) return fallback;
  // backslashes, control characters (tab, CR, LF...), DEL: never part of a path we make
  if (/[\\\u0000-\u001f\u007f]/.test(next)) return fallback;
  let url;
  try {
    url = new URL(next, origin);
  } catch {
    return fallback;
  }
  if (url.origin !== origin) return fallback;
  const path = url.pathname + url.search + url.hash;
  return path.startsWith("/") && !path.startsWith("//") ? path : fallback;
}

/** The path to come back to after signing in or up (same origin only). */
export function nextPath(fallback = "/") {
  return safeNext(new URLSearchParams(location.search).get("next"), location.origin, fallback);
}

export function signinHref(path = location.pathname) {
  return `/signin?next=${encodeURIComponent(path)}`;
}

/** Fill the top bar: "Signed in as X · Sign out", or links to sign in and up. */
export function renderAccount() {
  const box = $("account");
  if (!box) return;
  box.replaceChildren();
  const session = getSession();
  if (session) {
    const out = h("button", { class: "link-button", type: "button" }, "Sign out");
    out.addEventListener("click", async () => {
      out.disabled = true;
      try {
        // revoke the token on the server; signed out here whatever it answers
        await api("DELETE", "/api/sessions/current");
      } catch {
        // unreachable or already invalid: nothing more to revoke from here
      }
      clearSession();
      location.reload();
    });
    box.append(h("span", { class: "who" }, "Signed in as ", h("strong", {}, displayName(session.account))), " ", out);
  } else {
    box.append(
      h("a", { href: signinHref(), id: "nav-signin" }, "Sign in"),
      " ",
      h("a", { href: "/signup", class: "button small" }, "Sign up"),
    );
  }
}

/** Wait `ms` milliseconds unless `signal` aborts first. */
export function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/** "2026-11-20T23:46" read in local time -> "2026-11-20T22:46:00Z" (UTC, no ms); null if invalid. */
export function localToUtcIso(value) {
  const date = new Date(value);
  if (!value || Number.isNaN(date.getTime())) return null;
  return date.toISOString().replace(/\.\d{3}Z$/, "Z");
}

/** "in 2 days 3 h", "in 1 h 05 min", "in 4 min 09 s", "in 12 s"; "" once the time has come. */
export function countdownText(ms) {
  if (!Number.isFinite(ms) || ms <= 0) return "";
  const s = Math.floor(ms / 1000);
  const days = Math.floor(s / 86400);
  const hours = Math.floor((s % 86400) / 3600);
  const minutes = Math.floor((s % 3600) / 60);
  const seconds = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  if (days) return `in ${days} day${days === 1 ? "" : "s"} ${hours} h`;
  if (hours) return `in ${hours} h ${pad(minutes)} min`;
  if (minutes) return `in ${minutes} min ${pad(seconds)} s`;
  return `in ${seconds} s`;
}

/** A file name from a title: "Town hall: Budget!" -> "town-hall-budget.m4a"; the id when nothing is left. */
export function fileNameFor(title, fallback, ext) {
  const slug = String(title || "")
    .normalize("NFKD")
    .replace(/[\u0300-\u036f]/g, "")
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "")
    .slice(0, 80)
    .replace(/-+$/g, "");
  return `${slug || fallback}.${ext}`;
}

/** Share a link with the system share sheet, or copy it; says what happened in `statusEl`. */
export async function shareLink(url, title, statusEl) {
  if (navigator.share) {
    try {
      await navigator.share({ url, title });
      setStatus(statusEl, "");
      return;
    } catch (err) {
      if (err && err.name === "AbortError") return;
    }
  }
  try {
    await navigator.clipboard.writeText(url);
    setStatus(statusEl, "Link copied: paste it anywhere to share this space.", "ok");
  } catch {
    setStatus(statusEl, `Copy this link to share the space: ${url}`);
  }
}
