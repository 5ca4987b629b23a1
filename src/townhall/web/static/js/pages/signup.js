// Sign up: POST /api/accounts, then sign in at once.

import { api, describeError, signIn } from "../api.js";
import { $, nextPath, renderAccount, setStatus } from "../ui.js";

function fieldInput(form, problem) {
  const field = problem && Array.isArray(problem.errors) && problem.errors[0]?.field;
  return field && form.elements[field] ? form.elements[field] : null;
}

function main() {
  renderAccount();
  const form = $("signup-form");
  const error = $("form-error");
  const next = nextPath("/");
  $("signin-link").href = `/signin?next=${encodeURIComponent(next)}`;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setStatus(error, "");
    for (const input of form.querySelectorAll("input")) input.removeAttribute("aria-invalid");
    const username = form.username.value.trim();
    const password = form.password.value;
    const display_name = form.display_name.value.trim();
    if (!username || !password) {
      setStatus(error, "Choose a username and a password.", "error");
      (username ? form.password : form.username).focus();
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const body = { username, password };
      if (display_name) body.display_name = display_name;
      await api("POST", "/api/accounts", { body, token: null });
      await signIn(username, password);
      location.assign(next);
    } catch (err) {
      setStatus(error, describeError(err), "error");
      const input = fieldInput(form, err.problem);
      if (input) {
        input.setAttribute("aria-invalid", "true");
        input.focus();
      }
    } finally {
      button.disabled = false;
    }
  });
}

main();
