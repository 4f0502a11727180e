"""The HTML, CSS and JavaScript of the concept browser (no external resources).

The code builds the page with DOM calls and ``textContent``: no user string is ever parsed as HTML.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:8px 14px;display:flex;gap:16px;align-items:center;flex-wrap:wrap}
header h1{font-size:17px;margin:0 12px 0 0}
header label{font-size:13px}
main{display:flex;gap:12px;padding:10px}
#left{flex:3;min-width:0}
#right{flex:2;min-width:320px;max-width:560px;position:sticky;top:0;align-self:flex-start;max-height:100vh;overflow:auto}
.doc{background:#fff;border:1px solid #ddd;border-radius:6px;margin-bottom:8px;padding:6px 10px}
.dochead{font-size:12px;color:#555;margin-bottom:4px}
.mrow{display:flex;gap:8px;align-items:baseline;margin:3px 0;line-height:1.9}
.mname{font-size:11px;color:#fff;background:#546e7a;border-radius:3px;padding:0 5px;white-space:nowrap;min-width:90px;text-align:center}
.tok{border-radius:3px;padding:1px 1px;cursor:pointer}
.tok:hover{outline:1px solid #333}
.tok.sal{outline:2px solid #d32f2f;font-weight:bold}
.tok.sel{box-shadow:0 0 0 2px #1565c0}
.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 10px;margin-bottom:10px}
.panel h2{font-size:15px;margin:0 0 6px}
#card .words span{display:inline-block;margin:2px;padding:1px 5px;border-radius:3px;background:#eceff1;font-size:13px}
#card ul{padding-left:18px;margin:4px 0;font-size:13px}
.bar{height:12px;background:#90a4ae;display:inline-block;vertical-align:middle}
#card table.ann{width:auto;margin:4px 0;font-size:13px}
#card table.ann th{font-weight:normal;color:#555;padding-right:10px}
table{border-collapse:collapse;width:100%;font-size:12px}
td,th{border-bottom:1px solid #eee;padding:2px 4px;text-align:left;vertical-align:top}
tr.concept-row{cursor:pointer}
tr.concept-row:hover{background:#e3f2fd}
.muted{color:#777;font-size:12px}
input[type=search]{width:60%}
button{cursor:pointer}
mark{background:#ffe082}
</style>
</head>
<body>
<header><h1>__TITLE__</h1>
<span id="method-boxes"></span>
<label>Sentences: <input type="search" id="sentence-search" placeholder="search words"></label>
<span><button id="prev">&lt;</button> <span id="page-info"></span> <button id="next">&gt;</button></span>
</header>
<main>
<div id="left"><div id="filter-info" class="muted"></div><div id="docs"></div></div>
<div id="right">
<div class="panel" id="card"><h2>Concept card</h2><div class="muted">Click a token or a concept.</div></div>
<div class="panel"><h2>Concepts of <select id="list-method"></select></h2>
<input type="search" id="concept-search" placeholder="filter by word or id">
<select id="concept-sort"><option value="size">by size</option><option value="salient">by salient count</option>
<option value="id">by id</option><option value="word">by top word</option></select>
<div class="muted" id="concept-count"></div>
<table><thead><tr><th>id</th><th>size</th><th>salient</th><th>top words</th></tr></thead><tbody id="concept-list"></tbody></table>
</div></div>
</main>
<script type="application/json" id="clvq-data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("clvq-data").textContent);
const PAGE = 25;
const S = {shown: D.methods.map((m, i) => i < 4), page: 0, docs: null, query: "", filter: null, listMethod: 0, sel: null};
const $ = (id) => document.getElementById(id);
// every user string (token, sentence, name) goes in as text, never as markup
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === "class") e.className = v; else if (k === "style") e.style.cssText = v; else e.setAttribute(k, v);
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : String(kid));
  return e;
}
const marked = (s) => String(s).split(/\[\[(.*?)\]\]/).map((part, i) => (i % 2 ? el("mark", null, part) : part));
const colour = (c) => "hsl(" + ((c * 137.508) % 360).toFixed(1) + ",70%,84%)";
let docText = null;
function textOf(d) {
  if (!docText) {
    docText = new Array(D.docs.offsets.length - 1);
    for (let i = 0; i < docText.length; i++) {
      let s = "";
      for (let r = D.docs.offsets[i]; r < D.docs.offsets[i + 1]; r++) s += (D.docs.space[r] ? " " : "") + D.docs.vocab[D.docs.tok[r]];
      docText[i] = s.toLowerCase();
    }
  }
  return docText[d];
}
function allDocs() { return Array.from({length: D.docs.offsets.length - 1}, (_, i) => i); }
function applyFilters() {
  let docs = allDocs();
  if (S.filter) {
    const ids = D.methods[S.filter.m].ids;
    docs = docs.filter((d) => { for (let r = D.docs.offsets[d]; r < D.docs.offsets[d + 1]; r++) if (ids[r] === S.filter.c) return true; return false; });
  }
  const q = S.query.trim().toLowerCase();
  if (q) docs = docs.filter((d) => textOf(d).includes(q));
  S.docs = docs; S.page = 0;
  const info = $("filter-info");
  info.replaceChildren();
  if (S.filter) {
    const clear = el("button", {id: "clear-filter"}, "show all");
    clear.onclick = () => { S.filter = null; applyFilters(); };
    info.append("Sentences with concept " + S.filter.c + " of " + D.methods[S.filter.m].name + " ", clear, " · ");
  }
  info.append(docs.length + " sentences");
  renderDocs();
}
function labelName(v) { return v === null || v === undefined ? "" : (D.label_names ? D.label_names[v] : v); }
function tokens(m, mi, d) {
  const out = el("span");
  for (let r = D.docs.offsets[d]; r < D.docs.offsets[d + 1]; r++) {
    const c = m.ids[r], sal = D.docs.salient && D.docs.salient[d] === r;
    if (D.docs.space[r] && r > D.docs.offsets[d]) out.append(" ");
    const t = el("span", {class: "tok" + (sal ? " sal" : ""), "data-m": mi, "data-c": c, style: "background:" + colour(c)},
      D.docs.vocab[D.docs.tok[r]]);
    if (sal) t.title = "salient token";
    out.append(t);
  }
  return out;
}
function renderDocs() {
  const n = S.docs.length, pages = Math.max(1, Math.ceil(n / PAGE));
  $("page-info").textContent = "page " + (S.page + 1) + " / " + pages;
  const shown = [];
  for (const d of S.docs.slice(S.page * PAGE, (S.page + 1) * PAGE)) {
    let head = "#" + d;
    if (D.docs.labels) head += " · label: " + labelName(D.docs.labels[d]);
    if (D.docs.preds) head += " · prediction: " + labelName(D.docs.preds[d]);
    const doc = el("div", {class: "doc", "data-doc": d}, el("div", {class: "dochead"}, head));
    D.methods.forEach((m, mi) => {
      if (S.shown[mi]) doc.append(el("div", {class: "mrow"}, el("span", {class: "mname"}, m.name), tokens(m, mi, d)));
    });
    shown.push(doc);
  }
  $("docs").replaceChildren(...(shown.length ? shown : [el("div", {class: "muted"}, "No sentence matches.")]));
}
function conceptOf(mi, c) { return D.methods[mi].concepts[D.methods[mi].index[c]]; }
function labelBox(k) {
  const tot = k.labels.reduce((a, b) => a + b, 0);
  const box = el("div", {class: "labels"}, el("b", null, "Labels where salient"), " (" + tot + " sentences)");
  D.label_names.forEach((name, j) => {
    box.append(el("br"), name + " ", el("span", {class: "bar", style: "width:" + (tot ? (120 * k.labels[j] / tot) : 0) + "px"}), " " + k.labels[j]);
  });
  return box;
}
// a cell of the caller's annotations: floats to 3 decimals, booleans as yes/no, anything else as text
function annValue(v, type) {
  if (typeof v === "boolean") return v ? "yes" : "no";
  if (typeof v === "number") return type !== "float" && Number.isInteger(v) ? String(v) : v.toFixed(3);
  return String(v);
}
function annotationBox(m, k) {
  if (!m.ann || !k.ann) return null;
  const rows = [];
  m.ann.columns.forEach((name, j) => {
    const v = k.ann[j];
    if (v !== null && v !== undefined && v !== "") rows.push(el("tr", {"data-col": name}, el("th", null, name), el("td", null, annValue(v, m.ann.types[j]))));
  });
  return rows.length ? el("table", {class: "ann"}, el("tbody", null, rows)) : null;
}
function showCard(mi, c) {
  const m = D.methods[mi], k = conceptOf(mi, c);
  S.sel = {m: mi, c: c};
  document.querySelectorAll(".tok.sel").forEach((e) => e.classList.remove("sel"));
  document.querySelectorAll('.tok[data-m="' + mi + '"][data-c="' + c + '"]').forEach((e) => e.classList.add("sel"));
  const parts = [el("h2", null, el("span", {class: "tok", style: "background:" + colour(c)}, m.name + " · concept " + c))];
  if (!k) { $("card").replaceChildren(...parts, el("div", {class: "muted"}, "This concept has no tokens.")); return; }
  parts.push(el("div", {class: "size"}, k.n + " tokens" + (k.kind === "sentences" ? " · mostly special tokens, shown by sentences" : "")));
  const notes = annotationBox(m, k);
  if (notes) parts.push(notes);
  parts.push(el("div", {class: "words"}, k.words.map((w) => el("span", null, w[0] + " ", el("b", null, w[1])))));
  parts.push(el("div", null, el("b", null, "Examples"), el("ul", null, k.sentences.map((s) => el("li", null, marked(s))))));
  if (k.labels && D.label_names) parts.push(labelBox(k));
  const filter = el("button", {id: "filter-concept"}, "sentences with this concept");
  filter.onclick = () => { S.filter = {m: mi, c: c}; applyFilters(); };
  $("card").replaceChildren(...parts, filter);
}
function renderList() {
  const mi = S.listMethod, m = D.methods[mi], q = $("concept-search").value.trim().toLowerCase();
  const textHit = (k) => (k.ann || []).some((v) => typeof v === "string" && v.toLowerCase().includes(q));
  let rows = m.concepts.filter((k) => !q || String(k.id) === q || k.words.some((w) => String(w[0]).toLowerCase().includes(q)) || textHit(k));
  const key = $("concept-sort").value;
  const annKey = (k, j) => (k.ann && typeof k.ann[j] === "number" ? k.ann[j] : -Infinity);
  const cmp = key.startsWith("ann:") ? ((a, b) => annKey(b, +key.slice(4)) - annKey(a, +key.slice(4)) || b.n - a.n) :
    {size: (a, b) => b.n - a.n, salient: (a, b) => (b.ns || 0) - (a.ns || 0), id: (a, b) => a.id - b.id,
    word: (a, b) => String(a.words.length ? a.words[0][0] : "~").localeCompare(String(b.words.length ? b.words[0][0] : "~"))}[key];
  rows = rows.slice().sort(cmp);
  $("concept-count").textContent = rows.length + " of " + m.concepts.length + " concepts";
  const body = document.createDocumentFragment();
  for (const k of rows) {
    body.append(el("tr", {class: "concept-row", "data-c": k.id},
      el("td", null, el("span", {class: "tok", style: "background:" + colour(k.id)}, k.id)), el("td", null, k.n), el("td", null, k.ns || 0),
      el("td", null, k.kind === "sentences" ? [el("i", null, "special tokens"), " "] : [], k.words.slice(0, 6).map((w) => w[0]).join(", "))));
  }
  $("concept-list").replaceChildren(body);
}
// the sort options: the four fixed ones, then each numeric annotation column of the listed method
function sortOptions() {
  const select = $("concept-sort"), kept = select.value, m = D.methods[S.listMethod];
  select.querySelectorAll("option.ann-sort").forEach((o) => o.remove());
  if (m.ann) m.ann.columns.forEach((name, j) => {
    if (m.ann.types[j] === "int" || m.ann.types[j] === "float") select.append(el("option", {value: "ann:" + j, class: "ann-sort"}, "by " + name));
  });
  select.value = Array.from(select.options).some((o) => o.value === kept) ? kept : "size";
}
function init() {
  D.methods.forEach((m) => { m.index = {}; m.concepts.forEach((k, i) => { m.index[k.id] = i; }); });
  $("method-boxes").replaceChildren(...D.methods.map((m, i) => {
    const box = el("input", {type: "checkbox", class: "method-box", "data-m": i});
    box.checked = S.shown[i];
    box.onchange = () => { S.shown[i] = box.checked; renderDocs(); };
    return el("label", null, box, " " + m.name + " ");
  }));
  $("list-method").replaceChildren(...D.methods.map((m, i) => el("option", {value: i}, m.name)));
  $("list-method").onchange = () => { S.listMethod = +$("list-method").value; sortOptions(); renderList(); };
  $("concept-search").oninput = renderList;
  $("concept-sort").onchange = renderList;
  let timer = null;
  $("sentence-search").oninput = () => { clearTimeout(timer); timer = setTimeout(() => { S.query = $("sentence-search").value; applyFilters(); }, 150); };
  $("prev").onclick = () => { if (S.page > 0) { S.page--; renderDocs(); } };
  $("next").onclick = () => { if ((S.page + 1) * PAGE < S.docs.length) { S.page++; renderDocs(); } };
  $("docs").onclick = (e) => { const t = e.target.closest(".tok"); if (t) showCard(+t.dataset.m, +t.dataset.c); };
  $("concept-list").onclick = (e) => { const t = e.target.closest(".concept-row"); if (t) showCard(S.listMethod, +t.dataset.c); };
  applyFilters();
  sortOptions();
  renderList();
  document.body.dataset.ready = "1";
}
init();
</script>
</body>
</html>
"""
