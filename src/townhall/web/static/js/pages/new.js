// New space: create now (live at once) or schedule; then open the host console.

import { api, describeError, getSession } from "../api.js";
import { $, localToUtcIso, renderAccount, setStatus, signinHref } from "../ui.js";

function main() {
  renderAccount();
  const form = $("new-form");
  const error = $("form-error");
  if (!getSession()) {
    $("need-signin").hidden = false;
    $("need-signin").querySelector("a").href = signinHref("/new");
    for (const el of form.elements) el.disabled = true;
    return;
  }
  for (const [field, counter] of [["title", "title-count"], ["description", "description-count"]]) {
    const input = form[field];
    const show = () => {
      const max = Number(input.maxLength) || 0;
      const left = max - input.value.length;
      $(counter).textContent = max ? `${left} of ${max} characters left` : "";
    };
    input.addEventListener("input", show);
    show();
  }
  const when = () => form.querySelector("input[name=when]:checked").value;
  for (const radio of form.querySelectorAll("input[name=when]")) {
    radio.addEventListener("change", () => {
      form.scheduled_for.disabled = when() !== "later";
      if (when() === "later") form.scheduled_for.focus();
    });
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    setStatus(error, "");
    const title = form.title.value.trim();
    if (!title) {
      setStatus(error, "Give the space a title.", "error");
      form.title.focus();
      return;
    }
    const body = {
      title,
      description: form.description.value.trim(),
      visibility: form.querySelector("input[name=visibility]:checked").value,
    };
    if (when() === "later") {
      const iso = localToUtcIso(form.scheduled_for.value);
      if (!iso) {
        setStatus(error, "Pick the date and time the space starts.", "error");
        form.scheduled_for.focus();
        return;
      }
      body.scheduled_for = iso;
    }
    const button = $("create-button");
    button.disabled = true;
    try {
      const space = await api("POST", "/api/spaces", { body });
      location.assign(`/spaces/${encodeURIComponent(space.id)}/host`);
    } catch (err) {
      setStatus(error, describeError(err), "error");
      if (err.status === 401) location.assign(signinHref("/new"));
    } finally {
      button.disabled = false;
    }
  });
}

main();
