// Sign in: POST /api/sessions, keep the session token, go back where you came from.

import { describeError, signIn } from "../api.js";
import { $, nextPath, renderAccount, setStatus } from "../ui.js";

function main() {
  renderAccount();
  const form = $("signin-form");
  const error = $("form-error");
  const next = nextPath("/");
  $("signup-link").href = `/signup?next=${encodeURIComponent(next)}`;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setStatus(error, "");
    const username = form.username.value.trim();
    const password = form.password.value;
    if (!username || !password) {
      setStatus(error, "Enter your username and password.", "error");
      (username ? form.password : form.username).focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await signIn(username, password);
      location.assign(next);
    } catch (err) {
      let text = describeError(err);
      if (err.status === 429 && err.retry_after_s) {
        text = `${text} Try again in ${Math.ceil(err.retry_after_s)} seconds.`;
      }
      setStatus(error, text, "error");
      form.password.focus();
    } finally {
      button.disabled = false;
    }
  });
}

main();
