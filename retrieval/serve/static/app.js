// buscador web page: text / image / "more like this" searches and the genre form, over the JSON API.
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ credentials: "same-origin" }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (response.status === 401) { $("token-box").hidden = false; }
  if (!response.ok) {
    throw new Error((body && body.error) || ("HTTP " + response.status));
  }
  return body;
}

function formatTimings(t) {
  return Object.entries(t || {}).map(([k, v]) => k + " " + v.toFixed(1) + " ms").join(" · ");
}

function render(answer) {
  const grid = $("results");
  grid.replaceChildren();
  for (const r of answer.results) {
    const fig = document.createElement("figure");
    fig.dataset.id = r.id;
    fig.tabIndex = 0;
    fig.title = "más como esta";
    const img = document.createElement("img");
    img.src = r.thumbnail;
    img.alt = r.id;
    img.loading = "lazy";
    const cap = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = "#" + r.rank + " " + r.score.toFixed(3);
    cap.append(score, document.createElement("br"), r.id);
    fig.append(img, cap);
    fig.addEventListener("click", () => searchById(r.id));
    fig.addEventListener("keydown", (e) => { if (e.key === "Enter") searchById(r.id); });
    grid.append(fig);
  }
  $("summary").textContent = answer.results.length + " resultados para " + answer.query;
  $("timings").textContent = formatTimings(answer.timings);
  grid.dataset.query = answer.query;
}

async function run(promise) {
  showError("");
  $("go").disabled = true;
  try { render(await promise); } catch (e) { showError(e.message); } finally { $("go").disabled = false; }
}

function k() { return $("k").value; }

function searchText(q) {
  return run(api("/api/search?" + new URLSearchParams({ q: q, k: k() })));
}

function searchById(id) {
  window.scrollTo({ top: 0, behavior: "smooth" });
  return run(api("/api/search?" + new URLSearchParams({ id: id, k: k() })));
}

function searchImage(file) {
  const form = new FormData();
  form.append("image", file);
  form.append("k", k());
  return run(api("/api/search", { method: "POST", body: form }));
}

async function classify(event) {
  event.preventDefault();
  showError("");
  const form = new FormData();
  const overview = $("overview").value.trim();
  if (overview) form.append("overview", overview);
  if ($("poster").files[0]) form.append("poster", $("poster").files[0]);
  form.append("top", "3");
  const list = $("genres");
  try {
    const answer = await api("/api/genres", { method: "POST", body: form });
    list.replaceChildren();
    for (const g of answer.genres) {
      const li = document.createElement("li");
      li.className = g.predicted ? "yes" : "no";
      li.textContent = g.genre + " " + (100 * g.probability).toFixed(0) + " %" + (g.predicted ? " ✓" : "");
      list.append(li);
    }
  } catch (e) { showError(e.message); }
}

async function loadInfo() {
  try {
    const info = await api("/api/info");
    const index = info.artifacts.index;
    $("status").textContent = index.n + " imágenes · " + index.kind + " (" + index.metric + ")" +
      (info.stale.length ? " · ⚠ " + info.stale.join("; ") : "");
    $("genre-box").hidden = !info.genres;
    $("drop").hidden = !info.image_queries;
    $("q").disabled = !info.text_queries;
    document.body.dataset.ready = "1";
  } catch (e) { showError(e.message); }
}

function setUp() {
  $("search-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("q").value.trim();
    if (q) searchText(q);
  });
  $("image").addEventListener("change", () => { if ($("image").files[0]) searchImage($("image").files[0]); });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) searchImage(e.dataTransfer.files[0]);
  });
  $("genre-form").addEventListener("submit", classify);
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    document.cookie = "buscador_token=" + encodeURIComponent($("token").value) + "; path=/; SameSite=Strict";
    $("token-box").hidden = true;
    loadInfo();
  });
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setUp);
