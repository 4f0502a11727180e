"""The HTML, CSS and JavaScript of the human study page (no external resources).

The code builds the page with DOM calls and ``textContent``: no user string is ever parsed as HTML;
the instructions are text in which ``**...**`` is shown bold.
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>__TITLE__</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f5f5f5;color:#222}
header{background:#263238;color:#fff;padding:10px 16px;display:flex;gap:18px;align-items:center;flex-wrap:wrap}
header h1{font-size:17px;margin:0}
main{max-width:820px;margin:16px auto;padding:0 12px}
.panel{background:#fff;border:1px solid #ddd;border-radius:8px;padding:14px 18px;margin-bottom:12px}
#instructions{font-size:14px;color:#444;white-space:pre-line}
.chip{display:inline-block;margin:4px;padding:4px 10px;border-radius:14px;background:#e3f2fd;font-size:16px}
.sentences li{margin:4px 0}
mark{background:#ffe082;font-weight:bold}
#answers button{font-size:16px;margin:6px 8px 6px 0;padding:8px 18px;border-radius:6px;border:1px solid #90a4ae;background:#fff;cursor:pointer}
#answers button.chosen{background:#1565c0;color:#fff;border-color:#1565c0}
#nav button,#export button{margin-right:8px;padding:5px 12px;cursor:pointer}
#done{display:none;color:#2e7d32;font-weight:bold}
textarea{width:100%;height:90px;font-family:monospace;font-size:11px}
.muted{color:#777;font-size:13px}
</style>
</head>
<body>
<header><h1>__TITLE__</h1>
<label>Your name or code: <input id="annotator" autocomplete="off"></label>
<span id="progress"></span></header>
<main>
<div class="panel" id="instructions"></div>
<div class="panel"><div class="muted" id="item-head"></div><div id="concept"></div></div>
<div class="panel"><div><b>Which label did the model predict?</b></div><div id="answers"></div>
<div id="nav"><button id="prev">&lt; previous</button><button id="next">next &gt;</button>
<button id="next-open">next unanswered</button></div>
<div id="done">All items answered - thank you! Please export your answers below.</div></div>
<div class="panel" id="export"><b>Export</b> (your answers are kept in this browser until you export them)<br>
<button id="export-json">download JSON</button><button id="export-csv">download CSV</button>
<button id="reset">clear my answers</button>
<textarea id="export-text" readonly></textarea></div>
</main>
<script type="application/json" id="study-data">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("study-data").textContent);
const KEY = "concept-study-" + D.study_id;
const $ = (id) => document.getElementById(id);
// every user string (words, sentences, labels, instructions) goes in as text, never as markup
function el(tag, props, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) { if (k === "class") e.className = v; else e.setAttribute(k, v); }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined) e.append(kid instanceof Node ? kid : String(kid));
  return e;
}
const TOKEN = /\[\[(.*?)\]\]/, BOLD = /\*\*(.+?)\*\*/;
// text with its [[token]] (or **bold** part) wrapped in <mark> (or <b>)
const marked = (s, re = TOKEN, tag = "mark") => String(s).split(re).map((part, i) => (i % 2 ? el(tag, null, part) : part));
function load() {
  try { const s = JSON.parse(localStorage.getItem(KEY)); if (s && s.answers) return s; } catch (e) { /* fresh start */ }
  return {annotator: "", answers: {}, pos: 0};
}
let S = load();
function save() { localStorage.setItem(KEY, JSON.stringify(S)); }
function nAnswered() { return D.items.filter((it) => S.answers[it.id]).length; }
function render() {
  const it = D.items[S.pos];
  $("progress").textContent = "Item " + (S.pos + 1) + " of " + D.items.length + " · " + nAnswered() + " answered";
  $("item-head").textContent = "Item " + it.id;
  const parts = [];
  if (it.sentence) parts.push(el("p", {class: "muted"}, "Sentence: ", marked(it.sentence)));
  if (it.kind === "sentences") {
    parts.push(el("div", {class: "muted"}, "The concept is shown by sentences in which it occurs (its token is highlighted):"),
      el("ul", {class: "sentences"}, it.data.map((s) => el("li", null, marked(s)))));
  } else {
    parts.push(el("div", {class: "muted"}, "The concept's most frequent words:"), it.data.map((w) => el("span", {class: "chip"}, w)));
  }
  $("concept").replaceChildren(...parts.flat());
  const chosen = S.answers[it.id] ? S.answers[it.id].answer : null;
  $("answers").replaceChildren(...D.label_names.map((name) => el("button", {class: "answer" + (name === chosen ? " chosen" : ""), "data-label": name}, name)));
  $("done").style.display = nAnswered() === D.items.length ? "block" : "none";
  $("export-text").value = JSON.stringify(exportData());
}
function exportData() {
  return {format: "concept-study-answers", study_id: D.study_id, annotator: S.annotator || "anonymous", n_items: D.items.length,
    answers: D.items.filter((it) => S.answers[it.id]).map((it) => ({item_id: it.id, answer: S.answers[it.id].answer, time: S.answers[it.id].time}))};
}
function download(name, text, type) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([text], {type: type}));
  a.download = name;
  document.body.appendChild(a); a.click(); a.remove();
}
function fileName(ext) { return "study-" + D.study_id + "-" + (S.annotator || "anonymous").replace(/[^A-Za-z0-9_-]+/g, "_") + "." + ext; }
function csvCell(v) { v = String(v); return /[",\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
function init() {
  $("instructions").replaceChildren(...marked(D.instructions, BOLD, "b"));
  $("annotator").value = S.annotator;
  $("annotator").oninput = () => { S.annotator = $("annotator").value.trim(); save(); render(); };
  $("answers").onclick = (e) => {
    const b = e.target.closest(".answer"); if (!b) return;
    S.answers[D.items[S.pos].id] = {answer: b.dataset.label, time: new Date().toISOString()};
    if (S.pos < D.items.length - 1) S.pos++;
    save(); render();
  };
  $("prev").onclick = () => { if (S.pos > 0) { S.pos--; save(); render(); } };
  $("next").onclick = () => { if (S.pos < D.items.length - 1) { S.pos++; save(); render(); } };
  $("next-open").onclick = () => { const i = D.items.findIndex((it) => !S.answers[it.id]); if (i >= 0) { S.pos = i; save(); render(); } };
  $("export-json").onclick = () => download(fileName("json"), JSON.stringify(exportData(), null, 1), "application/json");
  $("export-csv").onclick = () => {
    const e = exportData();
    const rows = ["study_id,annotator,item_id,answer,time"].concat(e.answers.map((a) => [e.study_id, e.annotator, a.item_id, a.answer, a.time].map(csvCell).join(",")));
    download(fileName("csv"), rows.join("\n") + "\n", "text/csv");
  };
  $("reset").onclick = () => { if (confirm("Clear all your answers in this browser?")) { S = {annotator: S.annotator, answers: {}, pos: 0}; save(); render(); } };
  S.pos = Math.min(S.pos || 0, D.items.length - 1);
  render();
  document.body.dataset.ready = "1";
}
init();
</script>
</body>
</html>
"""
