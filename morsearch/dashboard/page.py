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
<!-- fetched now, run only once the front is drawn (see loadPlotly in app.js) -->
<link rel="preload" href="/static/plotly.js" as="script">
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
<script src="/static/app.js"></script>
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

// plotly.js (4.8 MB) takes a second or two of CPU to run the first time a browser sees it, more
// than the whole first render may take. So the page draws the first front itself, on a canvas
// (drawPreview), and only then runs plotly.js, which the <link rel=preload> has already fetched;
// plotly's interactive plot then replaces the preview. (Running plotly.js beside the front's
// fetch, as this page once did, gives an interactive plot no sooner even on later visits, where
// its compiled code is cached, and draws the first points later.)
var plotlyLoading = null;
function loadPlotly() {
  if (window.Plotly) return Promise.resolve();
  if (!plotlyLoading) {
    plotlyLoading = new Promise(function (resolve, reject) {
      var script = document.createElement('script');
      script.src = '/static/plotly.js';
      script.onload = resolve;
      script.onerror = function () { plotlyLoading = null; reject(new Error('could not load /static/plotly.js')); };
      document.body.appendChild(script);
    });
  }
  return plotlyLoading;
}
function afterPaint() {  // resolves once the browser has painted what is on screen now
  return new Promise(function (resolve) { requestAnimationFrame(function () { setTimeout(resolve, 0); }); });
}

// --- the preview: the front's points on a canvas, drawn from the same figure JSON -------------------
function decoded(a) {  // plotly's typed-array JSON ({dtype, bdata}) or a plain array
  if (!a) return [];
  if (!a.bdata) return a;
  var bin = atob(a.bdata), bytes = new Uint8Array(bin.length);
  for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  var T = {f8: Float64Array, f4: Float32Array, i4: Int32Array, u4: Uint32Array, i2: Int16Array,
    u2: Uint16Array, i1: Int8Array, u1: Uint8Array}[a.dtype];
  return T ? new T(bytes.buffer) : [];
}
function plain(text) {  // figure labels are HTML-escaped for plotly; the canvas draws text as it is
  var t = String(text || '').replace(/<[^>]*>/g, '');
  return t.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&quot;/g, '"').replace(/&#x27;|&#39;/g, "'")
    .replace(/&amp;/g, '&');
}
function niceTicks(lo, hi) {
  var raw = (hi - lo) / 6, mag = Math.pow(10, Math.floor(Math.log10(raw))), f = raw / mag;
  var step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * mag, ticks = [];
  for (var v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9 && ticks.length < 20; v += step) ticks.push(v);
  return ticks;
}
function tickText(v) {
  return Math.abs(v) >= 1e4 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(1) : String(+v.toPrecision(6));
}

function marker(ctx, symbol, x, y, r) {  // adds one marker to the current path
  if (symbol === 'square') {
    ctx.rect(x - r, y - r, 2 * r, 2 * r);
  } else if (symbol === 'diamond') {
    var d = r * 1.3;
    ctx.moveTo(x, y - d); ctx.lineTo(x + d, y); ctx.lineTo(x, y + d); ctx.lineTo(x - d, y); ctx.closePath();
  } else if (symbol === 'x') {
    ctx.moveTo(x - r, y - r); ctx.lineTo(x + r, y + r); ctx.moveTo(x + r, y - r); ctx.lineTo(x - r, y + r);
  } else {
    ctx.moveTo(x + r, y); ctx.arc(x, y, r, 0, 2 * Math.PI);
  }
}
function ink(ctx, mk) {  // fills the path's markers (strokes them for 'x')
  var color = mk.color || '#444';
  if (mk.symbol === 'x') { ctx.strokeStyle = color; ctx.lineWidth = 1.5; ctx.stroke(); }
  else { ctx.fillStyle = color; ctx.fill(); }
}

function drawPreview(figure) {
  var front = $('front'), layout = figure.layout || {}, tpl = (layout.template || {}).layout || {};
  var width = front.clientWidth || 800, height = layout.height || 560, ratio = window.devicePixelRatio || 1;
  var canvas = $('front-preview') || el('canvas');
  canvas.id = 'front-preview'; canvas.width = width * ratio; canvas.height = height * ratio;
  canvas.style.width = width + 'px'; canvas.style.height = height + 'px';
  canvas.setAttribute('role', 'img'); canvas.setAttribute('aria-label', plain((layout.title || {}).text));
  front.appendChild(canvas);
  var ctx = canvas.getContext('2d'); ctx.scale(ratio, ratio);
  var m = layout.margin || {}, left = (m.l || 60) + 20, top = m.t || 50, right = width - (m.r || 20);
  var bottom = height - (m.b || 50) - 60;  // room for the tick labels and the legend below
  var traces = figure.data.map(function (t) { return {t: t, x: decoded(t.x), y: decoded(t.y)}; });
  var x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
  traces.forEach(function (d) {
    for (var i = 0; i < d.x.length; i++) {
      var x = d.x[i], y = d.y[i];
      if (!isFinite(x) || !isFinite(y)) continue;
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
  });
  if (!(x1 >= x0)) { x0 = 0; x1 = 1; y0 = 0; y1 = 1; }
  var px = (x1 - x0) * 0.05 || 1, py = (y1 - y0) * 0.06 || 1;
  x0 -= px; x1 += px; y0 -= py; y1 += py;
  function sx(v) { return left + (v - x0) / (x1 - x0) * (right - left); }
  function sy(v) { return bottom - (v - y0) / (y1 - y0) * (bottom - top); }
  var font = ((tpl.font || {}).family || 'system-ui, sans-serif'), text = (tpl.font || {}).color || '#2a3f5f';
  ctx.fillStyle = tpl.plot_bgcolor || '#E5ECF6'; ctx.fillRect(left, top, right - left, bottom - top);
  ctx.strokeStyle = ((tpl.xaxis || {}).gridcolor) || 'white'; ctx.lineWidth = 1;
  ctx.fillStyle = text; ctx.font = '12px ' + font;
  ctx.textAlign = 'center'; ctx.textBaseline = 'top';
  niceTicks(x0, x1).forEach(function (v) {
    ctx.beginPath(); ctx.moveTo(sx(v), top); ctx.lineTo(sx(v), bottom); ctx.stroke();
    ctx.fillText(tickText(v), sx(v), bottom + 6);
  });
  ctx.textAlign = 'right'; ctx.textBaseline = 'middle';
  niceTicks(y0, y1).forEach(function (v) {
    ctx.beginPath(); ctx.moveTo(left, sy(v)); ctx.lineTo(right, sy(v)); ctx.stroke();
    ctx.fillText(tickText(v), left - 6, sy(v));
  });
  ctx.save(); ctx.beginPath(); ctx.rect(left, top, right - left, bottom - top); ctx.clip();
  traces.forEach(function (d) {
    var t = d.t, mk = t.marker || {}, n = Math.min(d.x.length, d.y.length);
    ctx.globalAlpha = t.opacity === undefined ? 1 : t.opacity;
    ctx.beginPath();
    if ((t.mode || '').indexOf('markers') >= 0) {
      var r = (mk.size || 6) / 2, each = ctx.globalAlpha < 1;  // faded points darken where they overlap
      for (var i = 0; i < n; i++) {
        marker(ctx, mk.symbol, sx(d.x[i]), sy(d.y[i]), r);
        if (each) { ink(ctx, mk); ctx.beginPath(); }
      }
      if (!each) ink(ctx, mk);
    } else if (n) {  // the pair's staircase ('hv': across, then up or down)
      var line = t.line || {};
      ctx.moveTo(sx(d.x[0]), sy(d.y[0]));
      for (var j = 1; j < n; j++) { ctx.lineTo(sx(d.x[j]), sy(d.y[j - 1])); ctx.lineTo(sx(d.x[j]), sy(d.y[j])); }
      ctx.setLineDash(line.dash === 'dot' ? [2, 3] : []); ctx.strokeStyle = line.color || '#444';
      ctx.lineWidth = line.width || 1; ctx.stroke(); ctx.setLineDash([]);
    }
  });
  ctx.restore(); ctx.globalAlpha = 1; ctx.fillStyle = text;
  ctx.textAlign = 'center'; ctx.textBaseline = 'alphabetic'; ctx.font = '14px ' + font;
  ctx.fillText(plain(((layout.xaxis || {}).title || {}).text), (left + right) / 2, bottom + 40);
  ctx.save(); ctx.translate(left - 62, (top + bottom) / 2); ctx.rotate(-Math.PI / 2);
  ctx.fillText(plain(((layout.yaxis || {}).title || {}).text), 0, 0); ctx.restore();
  ctx.textAlign = 'left'; ctx.font = '17px ' + font;
  ctx.fillText(plain((layout.title || {}).text), width * 0.05, top - 20);
  ctx.font = '12px ' + font; ctx.fillStyle = '#57606a'; ctx.textAlign = 'right';
  ctx.fillText('loading the interactive plot...', right, top - 20);
  var lx = left;  // the legend, in one row below the axis title
  ctx.textAlign = 'left'; ctx.textBaseline = 'middle';
  traces.forEach(function (d) {
    if (!d.x.length) return;  // as plotly: an empty trace has no legend entry
    var t = d.t, mk = t.marker || {}, name = plain(t.name), ly = bottom + 62;
    ctx.beginPath(); ctx.globalAlpha = 1;
    if ((t.mode || '').indexOf('markers') >= 0) {
      marker(ctx, mk.symbol, lx + 8, ly, 4); ink(ctx, mk);
    } else {
      ctx.moveTo(lx, ly); ctx.lineTo(lx + 16, ly); ctx.strokeStyle = (t.line || {}).color || '#444'; ctx.stroke();
    }
    ctx.fillStyle = text; ctx.fillText(name, lx + 22, ly);
    lx += 30 + ctx.measureText(name).width;
  });
}

// When the user could first see the front (preview or plot) and when it became interactive, in ms
// since navigation started, taken once the browser has painted it (read by benchmarks/dashboard_scale.py).
function markDrawn(how) {
  var front = $('front');
  front.dataset.drawn = how;
  return afterPaint().then(function () {
    var now = String(Math.round(performance.now()));
    if (front.dataset.drawnAtMs === undefined) { front.dataset.drawnAtMs = now; front.dataset.drawnFirstBy = how; }
    if (how === 'plotly' && front.dataset.interactiveAtMs === undefined) front.dataset.interactiveAtMs = now;
  });
}

var frontRequests = 0;
function loadFront() {
  var t0 = performance.now(), mine = ++frontRequests;
  return api('/api/front?' + query()).then(function (data) {
    if (mine !== frontRequests) return;  // a newer request (filter, view, refresh) will draw instead
    var meta = data.meta; S.version = meta.version; S.study = meta.study;
    buildFilters(meta); buildViews(meta);
    $('shown').textContent = 'showing ' + meta.shown + ' of ' + meta.total + ' completed trials; ' +
      meta.front.length + ' on the front. Click a point for its details.';
    var waited = Promise.resolve();
    if (!window.Plotly) {
      var flat = data.figure.data.every(function (t) { return t.type === 'scattergl' || t.type === 'scatter'; });
      if (flat) { drawPreview(data.figure); waited = markDrawn('preview'); }
    }
    return waited.then(loadPlotly).then(function () {
      if (mine !== frontRequests) return;
      var config = {displaylogo: false, responsive: true};
      var t1 = performance.now(), preview = $('front-preview');
      if (preview) preview.remove();
      return Plotly.react('front', data.figure.data, data.figure.layout, config).then(function () {
        var front = $('front');
        front.dataset.plotMs = String(Math.round(performance.now() - t1));
        if (!S.clickBound) {
          S.clickBound = true;
          front.on('plotly_click', function (ev) {
            var p = ev.points && ev.points[0];
            if (p && p.customdata !== undefined) loadTrial(p.customdata);
          });
        }
        markDrawn('plotly');
        front.dataset.renderedMs = String(Math.round(performance.now() - t0));
        front.dataset.version = meta.version;
        showError('');
      });
    });
  }).catch(function (e) { showError(e.message); loadPlotly().catch(function () {}); });
}

function table(rows) {
  var t = $('d-objectives'); t.textContent = '';
  rows.forEach(function (r) {
    var tr = el('tr'); r.forEach(function (c) { tr.appendChild(el('td', c)); }); t.appendChild(tr);
  });
}

function loadTrial(number) {
  var asked = api('/api/trial?' + new URLSearchParams({study: S.study, number: number}));
  return Promise.all([asked, loadPlotly()]).then(function (done) {
    var data = done[0];
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
