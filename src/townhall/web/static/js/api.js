// townhall's API from the browser: JSON in and out, problem+json turned into
// ApiError (status, detail, retry_after_s), and the session kept in localStorage.

const SESSION_KEY = "townhall.session";

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `The server answered ${status}.`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
    this.retry_after_s = typeof problem.retry_after_s === "number" ? problem.retry_after_s : null;
  }
}

/** The signed-in session ({token, expires_at, account}) or null when absent or expired. */
export function getSession() {
  let session = null;
  try {
    session = JSON.parse(localStorage.getItem(SESSION_KEY) || "null");
  } catch {
    return null;
  }
  if (!session || typeof session.token !== "string") return null;
  if (session.expires_at && Date.parse(session.expires_at) <= Date.now()) {
    clearSession();
    return null;
  }
  return session;
}

export function saveSession(session) {
  localStorage.setItem(SESSION_KEY, JSON.stringify(session));
}

export function clearSession() {
  localStorage.removeItem(SESSION_KEY);
}

/**
 * Call the API. `token`: undefined sends the session token if signed in,
 * null sends none, a string sends that token. Throws ApiError on any non-2xx
 * answer and TypeError when the server cannot be reached.
 */
export async function api(method, path, { body, token, signal, headers: extra = {} } = {}) {
  const headers = { Accept: "application/json", ...extra };
  const bearer = token === undefined ? getSession()?.token : token;
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, signal, cache: "no-store", credentials: "same-origin" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (!response.ok) {
    const problem = data && typeof data === "object" ? data : { detail: text.slice(0, 200) };
    if (problem.retry_after_s == null) {
      const header = Number(response.headers.get("Retry-After"));
      if (Number.isFinite(header) && header > 0) problem.retry_after_s = header;
    }
    if (response.status === 401 && bearer && bearer === getSession()?.token) clearSession();
    throw new ApiError(response.status, problem);
  }
  return data;
}

const FIELD_NAMES = {
  title: "title",
  description: "description",
  username: "username",
  password: "password",
  display_name: "display name",
  scheduled_for: "start time",
  emoji: "reaction",
};

/**
 * One field error from a 422 problem ({field, message}, the message as the
 * validator wrote it) as a sentence a person can act on.
 */
export function fieldSentence(field, message) {
  const name = FIELD_NAMES[field] || String(field || "value").replace(/_/g, " ");
  const text = String(message || "");
  const Name = name.charAt(0).toUpperCase() + name.slice(1);
  let m = /at most (\d+) character/i.exec(text);
  if (m) return `The ${name} can be at most ${m[1]} characters long; shorten it.`;
  m = /at least (\d+) character/i.exec(text);
  if (m) return `The ${name} needs at least ${m[1]} characters.`;
  if (/should match pattern/i.test(text)) {
    if (field === "username") return "The username may use only letters, digits and underscores.";
    return `The ${name} contains characters that are not allowed.`;
  }
  if (/field required|missing/i.test(text)) return `Fill in the ${name}.`;
  if (/datetime|date/i.test(text)) return `The ${name} is not a date and time we can read; pick it again.`;
  if (/too far ahead/i.test(text)) return `The ${name} is too far ahead; pick a nearer date.`;
  if (/in the past/i.test(text)) return `The ${name} is in the past; pick a later time.`;
  if (/should be|input should/i.test(text)) return `${Name} is not valid: ${text.replace(/^Input should be /i, "it should be ")}.`;
  return `${Name}: ${text}.`;
}

/** A sentence for any error thrown by api() or fetch(). */
export function describeError(err) {
  if (err instanceof ApiError) {
    const fields = Array.isArray(err.problem.errors) ? err.problem.errors : [];
    // the validator's raw text ("String should match pattern ...") never reaches people
    if (/^Field '[^']*' is invalid:/.test(err.message) && fields.length && fields.every((f) => f && f.message)) {
      return fields.map((f) => fieldSentence(f.field, f.message)).join(" ");
    }
    if (fields.length > 1) {
      return `${err.message} ${fields.slice(1).map((f) => `${f.field}: ${f.message}.`).join(" ")}`;
    }
    return err.message;
  }
  if (err instanceof TypeError) return "The server cannot be reached; check your connection and try again.";
  if (err && err.name === "NotAllowedError") return "The browser did not allow the microphone; allow it in the address bar and try again.";
  if (err && err.name === "NotFoundError") return "No microphone was found; plug one in and try again.";
  return (err && err.message) || String(err);
}

/** Sign in and keep the session; returns the session document. */
export async function signIn(username, password) {
  const session = await api("POST", "/api/sessions", { body: { username, password }, token: null });
  saveSession({ token: session.token, expires_at: session.expires_at, account: session.account });
  return session;
}
