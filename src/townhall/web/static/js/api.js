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

/** A sentence for any error thrown by api() or fetch(). */
export function describeError(err) {
  if (err instanceof ApiError) {
    const fields = Array.isArray(err.problem.errors) ? err.problem.errors : [];
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
