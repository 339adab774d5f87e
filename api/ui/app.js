// attune's page: base vs tuned side by side, filters, judging, the latest report.
// Plain JavaScript against the /v1 API of the server that serves it; no dependencies.
"use strict";

const $ = (selector) => document.querySelector(selector);

const state = {
  collections: [],
  collection: null, // name
  spaces: [],
  facets: [],
  lastQuery: null,
  lastResponse: null,
};

// ---------------------------------------------------------------- API

function apiKey() {
  return localStorage.getItem("attune.apiKey") || "";
}

async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  const key = apiKey();
  if (key) headers["x-api-key"] = key;
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const type = response.headers.get("content-type") || "";
  const payload = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    if (response.status === 401) $("#key-box").hidden = false;
    const message = payload && payload.error ? payload.error.message : String(payload);
    const error = new Error(`${response.status}: ${message}`);
    error.status = response.status;
    throw error;
  }
  return payload;
}

function say(message, isError) {
  const status = $("#status");
  status.textContent = message || "";
  status.classList.toggle("error", Boolean(isError));
}

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes || {})) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

const fmt = (value, digits = 4) =>
  typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "–";
const signed = (value, digits = 4) =>
  typeof value === "number" && Number.isFinite(value)
    ? (value > 0 ? "+" : "") + value.toFixed(digits)
    : "–";

// ---------------------------------------------------------------- judgments (saved per collection)

function judgmentKey() {
  return `attune.judgments.${state.collection}`;
}

function loadJudgments() {
  try {
    const saved = JSON.parse(localStorage.getItem(judgmentKey()) || "null");
    if (saved && saved.queries && saved.grades) return saved;
  } catch (_) {
    // A damaged entry starts over.
  }
  return { queries: {}, grades: {} }; // queries: id -> text; grades: "qid\tdoc" -> 0..2
}

function saveJudgments(judgments) {
  localStorage.setItem(judgmentKey(), JSON.stringify(judgments));
  renderJudgments();
}

function queryId(judgments, text) {
  const normalized = text.trim().toLowerCase();
  for (const [id, existing] of Object.entries(judgments.queries)) {
    if (existing.trim().toLowerCase() === normalized) return id;
  }
  const id = `q${Object.keys(judgments.queries).length + 1}`;
  judgments.queries[id] = text.trim();
  return id;
}

function grade(docId) {
  if (!state.lastQuery) return undefined;
  const judgments = loadJudgments();
  const qid = queryId(judgments, state.lastQuery);
  return judgments.grades[`${qid}\t${docId}`];
}

function setGrade(docId, value) {
  const judgments = loadJudgments();
  const qid = queryId(judgments, state.lastQuery);
  const key = `${qid}\t${docId}`;
  if (judgments.grades[key] === value) delete judgments.grades[key];
  else judgments.grades[key] = value;
  saveJudgments(judgments);
  if (state.lastResponse) renderResults(state.lastResponse);
}

function renderJudgments() {
  const judgments = loadJudgments();
  const rows = Object.entries(judgments.grades);
  $("#judgment-count").textContent = String(rows.length);
  const body = $("#judgment-table tbody");
  body.replaceChildren(
    ...rows.map(([key, value]) => {
      const [qid, doc] = key.split("\t");
      return el("tr", {}, el("td", { text: judgments.queries[qid] || qid }), el("td", { text: doc }),
        el("td", { class: "num", text: value }));
    }),
  );
}

function evaluationBody() {
  const judgments = loadJudgments();
  const qrels = Object.entries(judgments.grades).map(([key, score]) => {
    const [query_id, doc_id] = key.split("\t");
    return { query_id, doc_id, score };
  });
  const used = new Set(qrels.map((q) => q.query_id));
  const queries = Object.entries(judgments.queries)
    .filter(([id]) => used.has(id))
    .map(([id, text]) => ({ id, text }));
  return { queries, qrels, k: 10, spaces: selectedSpaces() };
}

async function evaluate() {
  const body = evaluationBody();
  if (!body.qrels.some((q) => q.score > 0)) {
    say("Mark at least one result relevant first (judge mode on the Search tab).", true);
    return;
  }
  say("Evaluating…");
  try {
    const result = await api("POST", `/v1/collections/${encodeURIComponent(state.collection)}/evaluate`, body);
    renderEvaluation(result);
    say(`Evaluated ${result.evaluated_queries} judged queries in ${fmt(result.took_ms, 1)} ms.`);
  } catch (error) {
    say(`Evaluation failed: ${error.message}`, true);
  }
}

function renderEvaluation(result) {
  const metrics = result.spaces.length ? Object.keys(result.spaces[0].metrics) : [];
  const table = el("table", { class: "data", id: "evaluation-metrics" },
    el("thead", {}, el("tr", {}, el("th", { text: "metric" }),
      ...result.spaces.map((s) => el("th", { text: s.space })),
      el("th", { text: "delta" }), el("th", { text: "p" }))));
  const body = el("tbody");
  for (const metric of metrics) {
    const comparison = result.comparisons.find((c) => c.metric === metric);
    body.append(el("tr", {}, el("td", { text: metric }),
      ...result.spaces.map((s) => el("td", { class: "num", text: fmt(s.metrics[metric]) })),
      el("td", { class: `num ${comparison && comparison.mean_delta > 0 ? "pos" : comparison && comparison.mean_delta < 0 ? "neg" : ""}`, text: comparison ? signed(comparison.mean_delta) : "–" }),
      el("td", { class: "num", text: comparison ? fmt(comparison.p_value, 3) : "–" })));
  }
  table.append(body);
  const perQuery = el("table", { class: "data" },
    el("thead", {}, el("tr", {}, el("th", { text: "query" }), el("th", { text: "nDCG delta" }))),
    el("tbody", {}, ...result.per_query.slice(0, 20).map((q) => el("tr", {},
      el("td", { text: loadJudgments().queries[q.query_id] || q.query_id }),
      el("td", { class: `num ${q.delta > 0 ? "pos" : q.delta < 0 ? "neg" : ""}`, text: signed(q.delta) })))));
  const notes = result.unknown_documents
    ? el("p", { text: `${result.unknown_documents} judged documents are not in the collection.` })
    : null;
  $("#evaluation").replaceChildren(
    el("h3", { text: `${result.evaluated_queries} queries, k = ${result.k}` }), table, notes,
    el("h3", { text: "Queries by |delta|" }), perQuery);
}

function exportQrels() {
  const judgments = loadJudgments();
  const lines = ["query-id\tcorpus-id\tscore"];
  for (const [key, value] of Object.entries(judgments.grades)) lines.push(`${key}\t${value}`);
  const queries = Object.entries(judgments.queries).map(([id, text]) => JSON.stringify({ _id: id, text }));
  const blob = new Blob([`${lines.join("\n")}\n\n# queries.jsonl\n${queries.join("\n")}\n`], { type: "text/tab-separated-values" });
  const link = el("a", { href: URL.createObjectURL(blob), download: `${state.collection}-qrels.tsv` });
  link.click();
  URL.revokeObjectURL(link.href);
}

// ---------------------------------------------------------------- collections, spaces, filters

function selectedSpaces() {
  return [$("#space-from").value, $("#space-to").value];
}

async function loadCollections() {
  const listing = await api("GET", "/v1/collections");
  state.collections = listing.collections;
  const select = $("#collection");
  select.replaceChildren(...state.collections.map((c) =>
    el("option", { value: c.name, text: `${c.name} (${c.documents} docs, gen ${c.generation})` })));
  const wanted = new URLSearchParams(location.search).get("collection");
  if (wanted && state.collections.some((c) => c.name === wanted)) select.value = wanted;
  if (!state.collections.length) {
    say("No collection is served yet: build one with `attune pipeline` or `attune index build`.", true);
    return;
  }
  await selectCollection(select.value);
}

async function selectCollection(name) {
  state.collection = name;
  const info = state.collections.find((c) => c.name === name);
  // Every space a search takes: vector spaces, then lexical and hybrid:<space>.
  state.spaces = info ? (info.searchable || info.spaces.map((s) => s.name)) : [];
  const order = ["base", "tuned"].filter((s) => state.spaces.includes(s))
    .concat(state.spaces.filter((s) => s !== "base" && s !== "tuned"));
  for (const [id, index] of [["#space-from", 0], ["#space-to", 1]]) {
    const select = $(id);
    select.replaceChildren(...order.map((s) => el("option", { value: s, text: s })));
    select.value = order[Math.min(index, order.length - 1)] || "";
  }
  updateTitles();
  renderJudgments();
  try {
    const facets = await api("GET", `/v1/collections/${encodeURIComponent(name)}/facets?max_values=60`);
    state.facets = facets.fields;
  } catch (error) {
    state.facets = [];
    say(`Filters unavailable: ${error.message}`, true);
  }
  renderFilters();
  loadReport();
}

function updateTitles() {
  const [from, to] = selectedSpaces();
  $("#title-from").textContent = from || "–";
  $("#title-to").textContent = to || "–";
}

function renderFilters() {
  const usable = state.facets.filter((f) => f.values.length >= 2 && f.distinct <= 60);
  $("#filters").replaceChildren(...usable.map((facet) => {
    const select = el("select", { "data-field": facet.field, "aria-label": `filter ${facet.field}` },
      el("option", { value: "", text: "any" }),
      ...facet.values.map((v) => el("option", { value: JSON.stringify(v.value), text: `${v.value} (${v.count})` })));
    select.addEventListener("change", () => { if (state.lastQuery) search(); });
    return el("label", {}, facet.field, select);
  }));
}

function currentFilter() {
  const filter = {};
  for (const select of document.querySelectorAll("#filters select")) {
    if (select.value !== "") filter[select.dataset.field] = JSON.parse(select.value);
  }
  return Object.keys(filter).length ? filter : undefined;
}

// ---------------------------------------------------------------- search and side-by-side

async function search(event) {
  if (event) event.preventDefault();
  const query = $("#query").value.trim();
  if (!query || !state.collection) return;
  const k = Math.max(1, Math.min(100, Number($("#k").value) || 10));
  const spaces = selectedSpaces();
  if (spaces[0] === spaces[1]) {
    say("Pick two different spaces to compare.", true);
    return;
  }
  say("Searching…");
  try {
    const response = await api("POST", `/v1/collections/${encodeURIComponent(state.collection)}/compare`,
      { query, k, spaces, filter: currentFilter() });
    state.lastQuery = query;
    state.lastResponse = response;
    renderResults(response);
    const moved = response.movements.filter((m) => m.from_rank !== m.to_rank).length;
    $("#summary").textContent =
      `overlap@${k}: ${fmt(response.overlap_at_k, 2)} · ${moved} of ${response.movements.length} documents moved · ` +
      `${response.query_tokens} query tokens${response.truncated ? " (truncated)" : ""} · ${fmt(response.took_ms, 1)} ms`;
    say("");
    const url = new URL(location.href);
    url.searchParams.set("collection", state.collection);
    url.searchParams.set("q", query);
    history.replaceState(null, "", url);
  } catch (error) {
    say(`Search failed: ${error.message}`, true);
  }
}

function movementOf(response, id) {
  return response.movements.find((m) => m.id === id);
}

function moveBadge(movement, side) {
  if (!movement) return null;
  const { from_rank: from, to_rank: to } = movement;
  if (side === "from") {
    return to === null || to === undefined ? el("span", { class: "move left", text: "dropped" }) : null;
  }
  if (from === null || from === undefined) return el("span", { class: "move entered", text: "new" });
  if (from > to) return el("span", { class: "move up", text: `▲ ${from - to}` });
  if (from < to) return el("span", { class: "move down", text: `▼ ${to - from}` });
  return el("span", { class: "move same", text: "=" });
}

function moveClass(movement, side) {
  if (!movement) return "";
  const { from_rank: from, to_rank: to } = movement;
  if (side === "from") return to === null || to === undefined ? "left" : "";
  if (from === null || from === undefined) return "entered";
  if (from > to) return "moved-up";
  if (from < to) return "moved-down";
  return "";
}

function resultItem(hit, rank, response, side) {
  const movement = movementOf(response, hit.id);
  const chips = Object.entries(hit.metadata || {})
    .filter(([, v]) => v !== null && typeof v !== "object")
    .slice(0, 8)
    .map(([k, v]) => el("span", { class: "chip", text: `${k}: ${v}` }));
  const current = grade(hit.id);
  const judge = el("div", { class: "judge" },
    ...[[2, "relevant"], [1, "partly"], [0, "not relevant"]].map(([value, label]) =>
      el("button", {
        type: "button",
        "data-grade": String(value),
        class: current === value ? "selected" : "",
        onclick: () => setGrade(hit.id, value),
        text: label,
      })));
  return el("li", { class: `result ${moveClass(movement, side)}`, "data-id": hit.id },
    el("span", { class: "rank", text: String(rank) }),
    el("span", {}, el("span", { class: "title", text: hit.title || hit.id }), " ",
      el("span", { class: "score", text: `${hit.id} · ${fmt(hit.score, 3)}` })),
    moveBadge(movement, side) || el("span"),
    el("div", { class: "meta" }, ...chips),
    judge);
}

function renderResults(response) {
  const [from, to] = response.lists;
  $("#results-from").replaceChildren(...from.results.map((hit, i) => resultItem(hit, i + 1, response, "from")));
  $("#results-to").replaceChildren(...to.results.map((hit, i) => resultItem(hit, i + 1, response, "to")));
}

// ---------------------------------------------------------------- report

// Query drift per vector space (`GET /v1/collections/{c}/drift`): shares over the sliding
// window of served searches, and whether they recommend retraining, with the evidence.
async function loadDrift() {
  const box = $("#drift-summary");
  const badge = $("#drift-badge");
  try {
    const drift = await api("GET", `/v1/collections/${encodeURIComponent(state.collection)}/drift`);
    badge.hidden = !drift.retraining_recommended;
    const share = (v) => (typeof v === "number" ? `${(v * 100).toFixed(1)}%` : "–");
    const rows = drift.spaces.map((s) => el("tr", { class: s.retraining_recommended ? "neg" : "" },
      el("td", { text: s.space }),
      el("td", { class: "num", text: String(s.window_queries) }),
      el("td", { class: "num", text: share(s.novel_share) }),
      el("td", { class: "num", text: share(s.weak_top_share) }),
      el("td", { class: "num", text: share(s.unseen_word_share) }),
      el("td", { text: `${s.reference === "training_card" ? "training queries" : "first served queries"} (${s.reference_queries}${s.reference_ready ? "" : ", not ready"})` }),
      el("td", { text: s.retraining_recommended ? "retraining recommended" : "ok" })));
    const evidence = drift.spaces.flatMap((s) => s.evidence.map((e) => el("li", { class: "neg", text: `${s.space}: ${e}` })));
    box.replaceChildren(
      el("h3", { text: "Query drift" }),
      el("table", { class: "data" },
        el("thead", {}, el("tr", {}, ...["space", "queries in window", "novel", "weak top-1", "unseen words", "reference", "status"].map((h) => el("th", { text: h })))),
        el("tbody", {}, ...rows)),
      el("ul", {}, ...evidence));
  } catch (error) {
    badge.hidden = true;
    box.replaceChildren(el("p", { text: `Drift unavailable: ${error.message}` }));
  }
}

async function loadReport() {
  loadDrift();
  const summaryBox = $("#report-summary");
  const frame = $("#report-frame");
  try {
    const report = await api("GET", `/v1/collections/${encodeURIComponent(state.collection)}/report`);
    // `summary` is `PipelineReport` (app/src/pipeline/report.rs), the one definition of
    // pipeline.json; the server refuses a published report that does not parse as one.
    const summary = report.summary;
    const parts = [el("p", { class: `verdict ${summary.promoted ? "promoted" : "rejected"}`, text: summary.verdict })];
    for (const role of ["domain", "general"]) {
      const set = summary[role];
      if (!set) continue;
      const metrics = ["ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"];
      parts.push(el("h3", { text: `${role} set: ${set.name} (split ${set.split}, ${set.queries} queries)` }));
      parts.push(el("table", { class: "data" },
        el("thead", {}, el("tr", {}, el("th", { text: "metric" }), el("th", { text: "base" }), el("th", { text: "tuned" }), el("th", { text: "delta" }))),
        el("tbody", {}, ...metrics.map((m) => {
          const base = set.base ? set.base[m] : undefined;
          const tuned = set.tuned ? set.tuned[m] : undefined;
          const delta = typeof base === "number" && typeof tuned === "number" ? tuned - base : undefined;
          return el("tr", {}, el("td", { text: m }), el("td", { class: "num", text: fmt(base) }),
            el("td", { class: "num", text: fmt(tuned) }),
            el("td", { class: `num ${delta > 0 ? "pos" : delta < 0 ? "neg" : ""}`, text: signed(delta) }));
        }))));
    }
    const checks = (summary.gate && summary.gate.checks) || [];
    parts.push(el("h3", { text: "Gate" }),
      el("ul", {}, ...checks.map((c) => el("li", { class: c.passed ? "pos" : "neg", text: `${c.passed ? "PASS" : "FAIL"} ${c.message}` }))));
    summaryBox.replaceChildren(...parts);
    if (report.files.includes("report.html")) {
      frame.srcdoc = await api("GET", `/v1/collections/${encodeURIComponent(state.collection)}/report/report.html`);
      frame.hidden = false;
    } else {
      frame.hidden = true;
    }
  } catch (error) {
    frame.hidden = true;
    summaryBox.replaceChildren(el("p", {
      text: error.status === 404
        ? "No report for this collection yet: `attune pipeline` publishes one."
        : `Report unavailable: ${error.message}`,
    }));
  }
}

// ---------------------------------------------------------------- wiring

function showTab(name) {
  for (const button of document.querySelectorAll(".tab")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const panel of document.querySelectorAll(".panel")) {
    panel.hidden = panel.id !== `tab-${name}`;
  }
}

function wire() {
  for (const button of document.querySelectorAll(".tab")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  $("#search-form").addEventListener("submit", search);
  $("#collection").addEventListener("change", (e) => selectCollection(e.target.value));
  for (const id of ["#space-from", "#space-to"]) {
    $(id).addEventListener("change", () => { updateTitles(); if (state.lastQuery) search(); });
  }
  $("#judge-mode").addEventListener("change", (e) => document.body.classList.toggle("judging", e.target.checked));
  $("#evaluate").addEventListener("click", evaluate);
  $("#export").addEventListener("click", exportQrels);
  $("#clear-judgments").addEventListener("click", () => {
    localStorage.removeItem(judgmentKey());
    renderJudgments();
    $("#evaluation").replaceChildren();
    if (state.lastResponse) renderResults(state.lastResponse);
  });
  const key = $("#api-key");
  key.value = apiKey();
  key.addEventListener("change", () => {
    localStorage.setItem("attune.apiKey", key.value);
    start();
  });
}

async function start() {
  try {
    await loadCollections();
    const q = new URLSearchParams(location.search).get("q");
    if (q) {
      $("#query").value = q;
      await search();
    }
  } catch (error) {
    say(`Cannot list collections: ${error.message}`, true);
  }
}

wire();
start();
