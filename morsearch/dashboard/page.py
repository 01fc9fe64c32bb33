"""The live dashboard's one page: its HTML and its script (served as /static/app.js).

Kept apart from ``app`` so the server reads as Python. The script inserts every string
that comes from the store with ``textContent`` (never as HTML), draws with the
plotly.js the server ships, and talks only to this server's JSON endpoints, which
the page's Content-Security-Policy also enforces.
"""

from __future__ import annotations

__all__ = ["PAGE_HTML", "PAGE_JS"]

PAGE_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>morsearch dashboard</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {font-family: system-ui, sans-serif; margin: 0; color: #1b1f24; display: flex; height: 100vh}
aside {width: 300px; overflow-y: auto; border-right: 1px solid #d0d7de; padding: 10px; box-sizing: border-box}
main {flex: 1; overflow-y: auto; padding: 10px 16px}
h1 {font-size: 1.2em; margin: 0 0 6px} h2 {font-size: 1em; margin: 14px 0 4px}
label {display: block; font-size: .85em; margin: 2px 0}
input[type=number] {width: 42%} .pair {display: flex; gap: 4px; align-items: center}
.muted {color: #57606a; font-size: .85em} .error {color: #b42318; font-weight: 600}
#views button {margin: 0 4px 4px 0} #views button.active {font-weight: 700; background: #ddf4ff}
#details {border-top: 1px solid #d0d7de; margin-top: 8px; padding-top: 8px}
pre {background: #f6f8fa; padding: 6px; overflow-x: auto; font-size: .85em}
table {border-collapse: collapse; font-size: .9em}
td, th {padding: 2px 8px; border-bottom: 1px solid #eaeef2; text-align: left}
.mini {display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 8px}
.mini > div {height: 280px}
ul.plain {list-style: none; padding: 0; margin: 0} ul.plain a {cursor: pointer; color: #0969da}
</style></head>
<body>
<aside>
  <h1>morsearch</h1>
  <label>study <select id="study"></select></label>
  <p id="status" class="muted">loading...</p>
  <label><input type="checkbox" id="live" checked> refresh as trials finish</label>
  <h2>Objectives</h2><div id="bounds"></div>
  <h2>Design choices</h2><div id="choices"></div>
  <button id="apply">Apply filters</button> <button id="reset">Reset</button>
  <h2>Failed and pruned trials</h2><ul id="failed" class="plain"></ul>
</aside>
<main>
  <p id="error" class="error" role="alert"></p>
  <div id="views"></div>
  <p id="shown" class="muted"></p>
  <div id="front" style="height: 560px"></div>
  <section id="details" hidden>
    <h2 id="d-title"></h2>
    <p id="d-failure" class="error"></p>
    <table id="d-objectives"></table>
    <p><button id="export">Export this configuration</button></p>
    <div id="export-result" hidden>
      <p>Written: <code id="export-path"></code></p>
      <p>Train it: <code id="train-command"></code></p>
    </div>
    <p class="muted">CLI export: <code id="d-export-command"></code></p>
    <div class="mini"><div id="d-curve"></div><div id="d-routing"></div><div id="d-phases"></div></div>
    <h2>Configuration</h2><pre id="d-config"></pre>
    <h2>Design choices</h2><pre id="d-params"></pre>
    <h2>Measurement</h2><pre id="d-measurement"></pre>
  </section>
</main>
<!-- app.js first: it starts fetching the front while the browser is still parsing plotly.js -->
<script src="/static/app.js"></script>
<script src="/static/plotly.js"></script>
</body></html>
"""

PAGE_JS = r"""
'use strict';
// Every string from the server is inserted with textContent: nothing from the store is parsed as HTML.
var S = {study: null, view: '0-1', version: null, options: null, trial: null, filters: null, clickBound: false};
function $(id) { return document.getElementById(id); }
function el(tag, text) { var e = document.createElement(tag); if (text !== undefined) e.textContent = text; return e; }
function showError(msg) { $('error').textContent = msg || ''; }

function api(path, body) {
  var init = body ? {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(body)} : {};
  return fetch(path, init).then(function (r) {
    return r.json().then(function (data) {
      if (!r.ok) throw new Error(data.error || r.statusText);
      return data;
    });
  });
}

function query() {
  var q = new URLSearchParams({view: S.view});
  if (S.study) q.append('study', S.study);  // none yet: the server shows the first study
  var f = S.filters || {};
  Object.keys(f.bounds || {}).forEach(function (k) { q.append('bound.' + k, f.bounds[k]); });
  Object.keys(f.ranges || {}).forEach(function (k) { q.append('range.' + k, f.ranges[k]); });
  Object.keys(f.choices || {}).forEach(function (k) {
    f.choices[k].forEach(function (v) { q.append('choice.' + k, v); });
  });
  return q.toString();
}

function readFilters() {
  var f = {bounds: {}, ranges: {}, choices: {}};
  document.querySelectorAll('[data-bound]').forEach(function (box) {
    var lo = box.querySelector('.lo').value, hi = box.querySelector('.hi').value;
    if (lo !== '' || hi !== '') f[box.dataset.kind][box.dataset.bound] = lo + ',' + hi;
  });
  document.querySelectorAll('[data-choice]').forEach(function (box) {
    var all = box.querySelectorAll('input'), on = box.querySelectorAll('input:checked');
    if (on.length === all.length) return;
    f.choices[box.dataset.choice] = Array.prototype.map.call(on, function (i) { return i.value; });
  });
  return f;
}

function rangeBox(kind, name, label, range) {
  var box = el('div'); box.dataset.bound = name; box.dataset.kind = kind;
  box.appendChild(el('label', label));
  var row = el('div'); row.className = 'pair';
  ['lo', 'hi'].forEach(function (cls, k) {
    var input = el('input'); input.type = 'number'; input.step = 'any'; input.className = cls;
    input.setAttribute('aria-label', label + (k ? ' at most' : ' at least'));
    if (range[k] !== null) input.placeholder = Number(range[k]).toPrecision(4);
    row.appendChild(input);
    if (!k) row.appendChild(el('span', 'to'));
  });
  box.appendChild(row);
  return box;
}

function buildFilters(meta) {
  if (S.options) return;  // built once per study; values typed by the user survive refreshes
  S.options = meta.options;
  var bounds = $('bounds'), choices = $('choices');
  bounds.textContent = ''; choices.textContent = '';
  meta.objectives.forEach(function (o) {
    var better = o.direction === 'minimize' ? ' (lower is better)' : ' (higher is better)';
    var hint = (o.unit ? ' [' + o.unit + ']' : '') + better;
    bounds.appendChild(rangeBox('bounds', o.name, o.name + hint, meta.options.objectives[o.name]));
  });
  Object.keys(meta.options.choices).forEach(function (name) {
    var box = el('fieldset'); box.dataset.choice = name; box.appendChild(el('legend', name));
    meta.options.choices[name].forEach(function (level) {
      var label = el('label'), input = el('input'); input.type = 'checkbox'; input.checked = true; input.value = level;
      label.appendChild(input); label.appendChild(document.createTextNode(' ' + level)); box.appendChild(label);
    });
    choices.appendChild(box);
  });
  Object.keys(meta.options.ranges).forEach(function (name) {
    choices.appendChild(rangeBox('ranges', name, name, meta.options.ranges[name]));
  });
}

function buildViews(meta) {
  var views = $('views'); views.textContent = '';
  meta.views.forEach(function (v) {
    var names = v.split('-').map(function (i) { return meta.objectives[+i] ? meta.objectives[+i].name : ''; });
    var label = v === '3d' ? 'all three (3-D)' : names.join(' vs ');
    var b = el('button', label); b.dataset.view = v; if (v === S.view) b.className = 'active';
    b.onclick = function () { S.view = v; loadFront(); };
    views.appendChild(b);
  });
}

// DOMContentLoaded fires once plotly.js (the next script) has run
var plotlyReady = new Promise(function (resolve) {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', resolve); else resolve();
});

function loadFront() {
  var t0 = performance.now();
  return Promise.all([api('/api/front?' + query()), plotlyReady]).then(function (done) {
    var data = done[0], meta = data.meta; S.version = meta.version; S.study = meta.study;
    buildFilters(meta); buildViews(meta);
    $('shown').textContent = 'showing ' + meta.shown + ' of ' + meta.total + ' completed trials; ' +
      meta.front.length + ' on the front. Click a point for its details.';
    var config = {displaylogo: false, responsive: true};
    var t1 = performance.now();
    return Plotly.react('front', data.figure.data, data.figure.layout, config).then(function () {
      $('front').dataset.plotMs = String(Math.round(performance.now() - t1));
      var front = $('front');
      if (!S.clickBound) {
        S.clickBound = true;
        front.on('plotly_click', function (ev) {
          var p = ev.points && ev.points[0];
          if (p && p.customdata !== undefined) loadTrial(p.customdata);
        });
      }
      front.dataset.renderedMs = String(Math.round(performance.now() - t0));
      front.dataset.version = meta.version;
      showError('');
    });
  }).catch(function (e) { showError(e.message); });
}

function table(rows) {
  var t = $('d-objectives'); t.textContent = '';
  rows.forEach(function (r) {
    var tr = el('tr'); r.forEach(function (c) { tr.appendChild(el('td', c)); }); t.appendChild(tr);
  });
}

function loadTrial(number) {
  return api('/api/trial?' + new URLSearchParams({study: S.study, number: number})).then(function (data) {
    var d = data.details; S.trial = d.trial;
    $('details').hidden = false; $('export-result').hidden = true;
    var kind = d.state.toLowerCase() + (d.baseline ? ', baseline ' + d.baseline : '');
    $('d-title').textContent = 'Trial ' + d.trial + ' (' + kind + ')';
    var detail = d.failure_detail ? ' - ' + d.failure_detail : '';
    $('d-failure').textContent = d.failure_reason ? 'failed: ' + d.failure_reason + detail : '';
    var rows = Object.keys(d.objectives).map(function (k) {
      return [k, String(d.objectives[k].value), d.objectives[k].direction];
    });
    table(rows.concat(d.feasible ? [] : [['constraints', JSON.stringify(d.constraints), 'violated']]));
    $('export').disabled = !d.exportable;
    $('d-export-command').textContent = d.export_command;
    $('d-config').textContent = d.model_config ? JSON.stringify(d.model_config, null, 2) : '(no model config recorded)';
    $('d-params').textContent = JSON.stringify(d.params, null, 2);
    $('d-measurement').textContent = JSON.stringify(d.measurement, null, 2);
    ['curve', 'routing', 'phases'].forEach(function (k) {
      var div = $('d-' + k); Plotly.purge(div);
      var fig = data.figures[k];
      if (fig) Plotly.newPlot(div, fig.data, fig.layout, {displaylogo: false, responsive: true});
    });
    showError('');
  }).catch(function (e) { showError(e.message); });
}

function loadState() {
  return api('/api/state?' + new URLSearchParams({study: S.study})).then(function (st) {
    var c = st.counts;
    $('status').textContent = Object.keys(c).sort().map(function (k) { return k + ': ' + c[k]; }).join(', ') +
      ' (updated ' + new Date().toLocaleTimeString() + ')';
    var failed = $('failed'); failed.textContent = '';
    st.failed.forEach(function (f) {
      var li = el('li'), a = el('a', 'trial ' + f.trial + ': ' + (f.reason || 'no reason recorded'));
      a.onclick = function () { loadTrial(f.trial); }; li.appendChild(a); failed.appendChild(li);
    });
    if (S.version !== null && st.version !== S.version) return loadFront();
  }).catch(function (e) { showError(e.message); });
}

function selectStudy(name) {
  S.study = name; S.options = null; S.filters = null; S.version = null; S.view = '0-1';
  $('details').hidden = true;
  return loadFront().then(loadState);
}

$('apply').onclick = function () { S.filters = readFilters(); loadFront(); };
$('reset').onclick = function () { S.filters = null; S.options = null; loadFront(); };
$('export').onclick = function () {
  api('/api/export', {study: S.study, number: S.trial}).then(function (r) {
    $('export-path').textContent = r.path; $('train-command').textContent = r.train_command;
    $('export-result').hidden = false; showError('');
  }).catch(function (e) { showError(e.message); });
};
$('study').onchange = function () { selectStudy($('study').value); };
setInterval(function () {
  if (!$('live').checked) return;
  if (S.study) loadState(); else loadFront().then(loadState);  // no study yet: wait for the first
}, 3000);

// The front is requested at once (the server picks the first study); the list fills the selector.
loadFront().then(loadState);
api('/api/studies').then(function (r) {
  var sel = $('study');
  r.studies.forEach(function (n) { var o = el('option', n); o.value = n; sel.appendChild(o); });
  if (!r.studies.length) $('status').textContent = 'no study in ' + r.store + ' yet';
}).catch(function (e) { showError(e.message); });
"""
