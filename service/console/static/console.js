// labelrank console: the API key, JSON bodies for htmx, and label edits through /v1 routes.
"use strict";

const KEY = "labelrank-api-key";

function apiKey() {
  return sessionStorage.getItem(KEY);
}

function authHeaders() {
  const key = apiKey();
  return key ? { Authorization: "Bearer " + key } : {};
}

function say(message, kind) {
  const status = document.getElementById("status");
  status.textContent = message;
  status.className = kind || "";
}

function askForKey(message) {
  const dialog = document.getElementById("key-dialog");
  document.getElementById("key-message").textContent = message;
  if (!dialog.open) dialog.showModal();
  document.getElementById("key-input").focus();
}

// The error body is {"error": {"code", "message"}}; anything else is shown as it came.
function errorText(status, body) {
  try {
    const error = JSON.parse(body).error;
    return error.message + " [" + error.code + "]";
  } catch {
    return "HTTP " + status + (body ? ": " + body.slice(0, 200) : "");
  }
}

function onFailure(status, body, target) {
  if (status === 401) {
    askForKey(apiKey() ? "That key was refused. Enter a valid API key."
                       : "This server needs an API key to show its data.");
    say("This page shows its data once a valid API key is given (the API key button).");
    if (target) target.innerHTML = '<p class="hint">Needs the API key.</p>';
  } else if (status === 403) {
    askForKey("This key can read but not change labels: enter the write key.");
    say(errorText(status, body), "error");
  } else {
    say(errorText(status, body), "error");
  }
}

// A form's fields as JSON: checkboxes are booleans, number inputs numbers, fields marked
// data-list become lists of non-empty lines, and empty fields are left out (the default).
function formJSON(form) {
  const body = {};
  for (const field of form.elements) {
    if (!field.name || field.disabled || field.dataset.query !== undefined) continue;
    if (field.type === "checkbox") {
      body[field.name] = field.checked;
    } else if (field.dataset.list !== undefined) {
      body[field.name] = field.value.split("\n").map((s) => s.trim()).filter(Boolean);
    } else if (field.value.trim() === "") {
      continue;
    } else {
      body[field.name] = field.type === "number" ? Number(field.value) : field.value;
    }
  }
  return body;
}

async function sendJSON(method, url, body) {
  const headers = { ...authHeaders(), Accept: "application/json" };
  const init = { method, headers };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(url, init);
  const text = await response.text();
  if (!response.ok) {
    onFailure(response.status, text);
    throw new Error(errorText(response.status, text));
  }
  return text ? JSON.parse(text) : null;
}

htmx.defineExtension("json", {
  onEvent(name, event) {
    if (name === "htmx:configRequest") event.detail.headers["Content-Type"] = "application/json";
  },
  encodeParameters(xhr, parameters, element) {
    xhr.overrideMimeType("text/json");
    return JSON.stringify(formJSON(element.closest("form") || element));
  },
});

document.body.addEventListener("htmx:configRequest", (event) => {
  Object.assign(event.detail.headers, authHeaders());
});
// An error stays until something works again; a success message until the next one.
document.body.addEventListener("htmx:afterRequest", (event) => {
  if (event.detail.successful && document.getElementById("status").className === "error") say("");
});
document.body.addEventListener("htmx:responseError", (event) => {
  const { xhr, requestConfig, target } = event.detail;
  if (xhr.status === 503 && requestConfig.verb === "get") {
    // Just started: the embedder and the index load in the background. Ask again shortly.
    say(errorText(xhr.status, xhr.responseText) + "; trying again in a few seconds.");
    setTimeout(() => htmx.ajax("GET", requestConfig.path, { target, swap: "innerHTML" }), 3000);
    return;
  }
  onFailure(xhr.status, xhr.responseText, target);
});
document.body.addEventListener("htmx:sendError", () => {
  say("The server did not answer. Is labelrank serve still running?", "error");
});

document.getElementById("key-form").addEventListener("submit", (event) => {
  const key = document.getElementById("key-input").value.trim();
  if (!key) {
    event.preventDefault();
    return;
  }
  sessionStorage.setItem(KEY, key);
  location.reload();
});
document.getElementById("key-button").addEventListener("click", () => {
  askForKey(apiKey() ? "A key is set for this tab. Enter another, or forget it."
                     : "Enter the API key (LABELRANK_API_KEY, or the write key to edit).");
});
document.getElementById("key-forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  location.reload();
});

// Forms marked data-api send their fields as JSON to an API route, then reload what the
// change affects: data-then (a fragment for data-target) and the label tree.
document.body.addEventListener("submit", async (event) => {
  const form = event.target;
  if (!form.dataset.api) return;
  event.preventDefault();
  if (form.dataset.confirm && !confirm(form.dataset.confirm)) return;
  const method = form.dataset.api;
  const fields = formJSON(form);
  let url = form.dataset.url.replace(/\{(\w+)\}/g,
                                     (_, name) => encodeURIComponent(fields[name] || ""));
  const query = [...form.querySelectorAll("[data-query]")].filter((f) => f.checked);
  if (query.length) url += "?" + query.map((f) => f.name + "=true").join("&");
  try {
    await sendJSON(method, url, method === "DELETE" ? undefined : fields);
  } catch {
    return;
  }
  say(form.dataset.done || "Saved.", "ok");
  const then = form.dataset.then && form.dataset.then.replace(
    /\{(\w+)\}/g, (_, name) => encodeURIComponent(fields[name] || ""));
  if (then) {
    await htmx.ajax("GET", then, { target: form.dataset.target || "#label", swap: "innerHTML" });
    if (form.dataset.push) history.replaceState(null, "", then.replace("/console/label/", "/labels?id="));
  } else if (form.dataset.target) {
    document.querySelector(form.dataset.target).innerHTML = "";
  }
  if (form.dataset.reset !== undefined) form.reset();
  htmx.trigger(document.body, "labels-changed");
});

// Playground feedback: confirm or reject one candidate for one text, then ask again.
document.body.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-feedback]");
  if (!button) return;
  const { feedback, label, name } = button.dataset;
  const text = button.closest("[data-text]").dataset.text;
  const body = { text, [feedback === "confirm" ? "labels" : "rejected"]: [label] };
  try {
    await sendJSON("POST", "/v1/feedback", body);
  } catch {
    return;
  }
  say((feedback === "confirm" ? "Confirmed " : "Rejected ") + name +
      " for that text; the answers below are the new ones.", "ok");
  htmx.trigger(document.getElementById("playground"), "submit");
});

// "New label here" on a label fills the new-label form's parent and opens it.
document.body.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-new-child]");
  if (!button) return;
  const form = document.getElementById("new-label");
  form.open = true;
  form.querySelector("[name=parent]").value = button.dataset.newChild;
  form.querySelector("[name=id]").value = button.dataset.newChild + ".";
  form.querySelector("[name=id]").focus();
});
