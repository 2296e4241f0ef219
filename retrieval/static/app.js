// The search page: everything it needs is served by the app itself (no external resources).
"use strict";

const $ = (id) => document.getElementById(id);

function seconds(x) {
  return x == null ? "end" : `${Number(x).toFixed(1)} s`;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

function errorText(body, response) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) return detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  return `${response.status} ${response.statusText}`;
}

function render(data) {
  const list = $("results");
  list.replaceChildren();
  const template = $("result-template");
  for (const hit of data.results) {
    const item = template.content.firstElementChild.cloneNode(true);
    item.dataset.id = hit.id;
    item.querySelector(".score").textContent = hit.score.toFixed(3);
    item.querySelector(".name").textContent = hit.name;
    item.querySelector(".name").title = hit.member ? `${hit.path} → ${hit.member}` : hit.path;
    const total = hit.duration == null ? "" : ` of ${seconds(hit.duration)}`;
    item.querySelector(".span").textContent = `${seconds(hit.start)} – ${seconds(hit.end)}${total}`;
    const texts = [...hit.captions];
    if (hit.labels.length) texts.push(`labels: ${hit.labels.join(", ")}`);
    item.querySelector(".texts").textContent = texts.join(" · ");
    const audio = item.querySelector("audio");
    audio.src = hit.span_url;
    item.querySelector(".full").href = hit.audio_url;
    const button = item.querySelector(".play");
    button.addEventListener("click", () => {
      if (audio.paused) {
        for (const other of document.querySelectorAll("audio")) if (other !== audio) other.pause();
        audio.play().catch((err) => setStatus(`cannot play: ${err.message}`, true));
      } else {
        audio.pause();
      }
    });
    audio.addEventListener("play", () => { button.textContent = "❚❚ Pause"; });
    audio.addEventListener("pause", () => { button.textContent = "▶ Play"; });
    list.appendChild(item);
  }
  const n = data.results.length;
  setStatus(`${n} result${n === 1 ? "" : "s"} from ${data.index} in ${data.took_ms} ms`);
}

async function run(request) {
  setStatus("searching…");
  try {
    const response = await fetch("/search", request);
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      setStatus(errorText(body, response), true);
      return;
    }
    render(body);
  } catch (err) {
    setStatus(`search failed: ${err.message}`, true);
  }
}

$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("query").value.trim();
  if (!text) return;
  const body = { text, k: Number($("k").value), index: $("index").value || null };
  run({ method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
});

$("audio-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const file = $("clip").files[0];
  if (!file) {
    setStatus("choose an audio file first", true);
    return;
  }
  const form = new FormData();
  form.append("file", file);
  form.append("k", $("k").value);
  if ($("index").value) form.append("index", $("index").value);
  run({ method: "POST", body: form });
});

async function loadIndices() {
  try {
    const response = await fetch("/indices");
    const indices = await response.json();
    const select = $("index");
    for (const index of indices) {
      const option = document.createElement("option");
      option.value = index.name;
      option.textContent = `${index.name} (${index.count} windows)`;
      select.appendChild(option);
    }
  } catch (err) {
    setStatus(`cannot list indices: ${err.message}`, true);
  }
}

loadIndices();
