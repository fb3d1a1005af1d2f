// The m2m operator console: a single-page app over the node's HTTP API (`/api/v1`).
//
// Plain JavaScript, no framework and no build step: the node serves these files from its binary.
// Pages are hash routes (`#/overview`, `#/devices/<id>`, ...). Every request carries the session
// cookie; every request other than GET also carries the CSRF token the login returned. A 401
// anywhere brings the login form back. A route the node does not have (404/405) makes its panel say
// "not available" instead of breaking the page.

const API = '/api/v1';

/** Who is logged in. `auth` is false on a node that has no logins (no `/me` route). */
const session = { user: null, role: null, csrf: null, via: null, auth: true, ready: false };

/** Facts about the node (`/node`), once loaded. */
let nodeFacts = null;

// ---------------------------------------------------------------------------------------------
// DOM helpers

/** An element: `h('a', {href: '#/x', class: 'y'}, 'text', child, ...)`. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  append(el, children);
  setAttrs(el, attrs);
  return el;
}

/** An SVG element, as `h` does for HTML. */
function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  append(el, children);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'testid') el.dataset.testid = v;
    else if (k === 'value') el.value = v;
    else if (k === 'checked' || k === 'disabled' || k === 'hidden' || k === 'selected') el[k] = Boolean(v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

/** Replaces the children of `el` (null and false are left out). */
function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

const $ = (sel, root = document) => root.querySelector(sel);

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

// ---------------------------------------------------------------------------------------------
// Formatting

const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });

function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  return typeof n === 'number' ? numberFormat.format(n) : String(n);
}

function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${numberFormat.format(n)} ${units[i]}`;
}

function fmtDuration(secs) {
  if (secs === null || secs === undefined) return '—';
  secs = Math.floor(secs);
  const d = Math.floor(secs / 86400);
  const hh = Math.floor((secs % 86400) / 3600);
  const mm = Math.floor((secs % 3600) / 60);
  const ss = secs % 60;
  if (d) return `${d} d ${hh} h`;
  if (hh) return `${hh} h ${mm} min`;
  if (mm) return `${mm} min ${ss} s`;
  return `${ss} s`;
}

/** A time (unix ms, or an RFC 3339 string) as local date and time. */
function fmtTime(t) {
  if (t === null || t === undefined || t === '') return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

/** "12 s ago", with the exact time as a tooltip. */
function ago(t) {
  if (t === null || t === undefined || t === '') return h('span', { class: 'muted' }, 'never');
  const ms = new Date(t).getTime();
  const secs = Math.max(0, (Date.now() - ms) / 1000);
  const text = secs < 60 ? `${Math.floor(secs)} s ago` : `${fmtDuration(secs)} ago`;
  return h('time', { datetime: new Date(ms).toISOString(), title: fmtTime(ms) }, text);
}

/** A payload on one line when it is short, indented when it is long. */
function prettyPayload(payload) {
  if (typeof payload === 'string') return payload;
  const line = JSON.stringify(payload);
  return line.length <= 100 ? line : JSON.stringify(payload, null, 2);
}

function payloadText(payload) {
  if (payload === null || payload === undefined) return '';
  return typeof payload === 'string' ? payload : JSON.stringify(payload);
}

// ---------------------------------------------------------------------------------------------
// The API

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** The node does not have this route or this feature (an older node, or the feature is off). */
  get missing() {
    return this.status === 404 || this.status === 405 || this.status === 501;
  }
}

/** Builds `?a=b&c=d` from an object, leaving out empty values (`+` and `#` are encoded). */
function qs(params) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  }
  const s = p.toString();
  return s ? `?${s}` : '';
}

async function errorOf(res) {
  let code = '';
  let message = res.statusText || `HTTP ${res.status}`;
  try {
    const body = await res.json();
    if (body && typeof body === 'object') {
      // `{"error": code, "message": text}`, or the older `{"error": text}`.
      if (body.message) {
        message = body.message;
        code = body.error || '';
      } else if (body.error) {
        message = body.error;
      }
    }
  } catch {
    // Not JSON: keep the status text.
  }
  return new ApiError(res.status, code, message);
}

/** Calls the API: resolves to the parsed JSON (or null), rejects with an `ApiError`. */
async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (method !== 'GET' && method !== 'HEAD' && session.csrf) headers['X-CSRF-Token'] = session.csrf;
  let res;
  try {
    res = await fetch(API + path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `the node cannot be reached (${e.message})`);
  }
  if (res.ok) {
    if (res.status === 204) return null;
    const text = await res.text();
    return text ? JSON.parse(text) : null;
  }
  const err = await errorOf(res);
  if (res.status === 401 && path !== '/login' && path !== '/me') showLogin(err.message);
  throw err;
}

const get = (path, params) => api('GET', path + qs(params));

/**
 * Follows `GET /api/v1/stream` (Server-Sent Events) until the page is left, reconnecting after a
 * break. `handlers` has a function per event name (`stats`, `message`, ...) and optionally
 * `unavailable(err)` (the node has no stream: called once, no retry), `open()` and `closed()`.
 * Read with fetch rather than EventSource, so that a 401 or a 404 can be told apart.
 */
function follow(ctx, params, handlers) {
  const ctrl = new AbortController();
  let stopped = false;
  ctx.onLeave(() => {
    stopped = true;
    ctrl.abort();
  });
  (async () => {
    let delay = 1000;
    while (!stopped) {
      try {
        const res = await fetch(`${API}/stream${qs(params)}`, {
          headers: { Accept: 'text/event-stream' },
          credentials: 'same-origin',
          cache: 'no-store',
          signal: ctrl.signal,
        });
        if (!res.ok) {
          const err = await errorOf(res);
          if (res.status === 401) showLogin(err.message);
          else handlers.unavailable?.(err);
          return;
        }
        delay = 1000;
        handlers.open?.();
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value.replace(/\r\n?/g, '\n');
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            dispatchEvent(buf.slice(0, end), handlers);
            buf = buf.slice(end + 2);
          }
        }
      } catch {
        if (stopped) return;
      }
      if (stopped) return;
      handlers.closed?.();
      await sleep(delay);
      delay = Math.min(delay * 2, 15000);
    }
  })();
}

function dispatchEvent(block, handlers) {
  let name = 'message';
  const data = [];
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') name = value;
    else if (field === 'data') data.push(value);
  }
  if (!data.length || typeof handlers[name] !== 'function') return;
  let parsed;
  try {
    parsed = JSON.parse(data.join('\n'));
  } catch {
    parsed = data.join('\n');
  }
  handlers[name](parsed);
}

// ---------------------------------------------------------------------------------------------
// Feedback

function toast(message, kind = 'error') {
  const box = $('.toasts');
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: 'toast' },
    h('span', {}, message),
    h('button', { type: 'button', class: 'toast-close', 'aria-label': 'Dismiss', onclick: () => el.remove() }, '×'));
  box.append(el);
  setTimeout(() => el.remove(), kind === 'error' ? 10000 : 4000);
}

function toastError(err) {
  if (err instanceof ApiError && err.status === 401) return; // the login form says it
  toast(err.message || String(err), 'error');
}

/** What a panel shows instead of its content when its request failed. */
function problem(err, what) {
  if (err instanceof ApiError && err.missing) {
    return h('p', { class: 'notice', testid: 'not-available' },
      h('strong', {}, `${what || 'This'} is not available on this node`), ` (${err.message}).`);
  }
  return h('p', { class: 'notice notice-error', testid: 'error' }, err.message || String(err));
}

// ---------------------------------------------------------------------------------------------
// Roles

const RANK = { viewer: 0, operator: 1, admin: 2 };

function can(role) {
  return (RANK[session.role] ?? -1) >= RANK[role];
}

// ---------------------------------------------------------------------------------------------
// Charts: time series on a canvas, drawn by hand

const PALETTE = ['#2563eb', '#059669', '#d97706', '#dc2626', '#7c3aed'];

/** Round numbers for an axis from `min` to `max`, about `count` of them. */
function niceTicks(min, max, count) {
  if (min === max) {
    const pad = Math.abs(min) * 0.1 || 1;
    min -= pad;
    max += pad;
  }
  const raw = (max - min) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
  const lo = Math.floor(min / step) * step;
  const hi = Math.ceil(max / step) * step;
  const ticks = [];
  for (let v = lo; v <= hi + step / 2; v += step) ticks.push(Number(v.toPrecision(12)));
  return { lo, hi, ticks };
}

function timeLabel(ms, spanMs) {
  const d = new Date(ms);
  const hm = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  if (spanMs > 2 * 86400e3) return `${d.getMonth() + 1}/${d.getDate()} ${hm}`;
  return spanMs <= 600e3 ? `${hm}:${String(d.getSeconds()).padStart(2, '0')}` : hm;
}

class LineChart {
  /**
   * `series`: [{label}]; `span`: show the last `span` ms (a live chart), else the data's range;
   * `zero`: the y axis starts at 0; `unit`: appended to y labels.
   */
  constructor(canvas, { series, span = null, zero = false, unit = '', empty = 'No data yet' }) {
    this.canvas = canvas;
    this.series = series;
    this.span = span;
    this.zero = zero;
    this.unit = unit;
    this.empty = empty;
    this.points = []; // [{t, v: [number|null per series]}], oldest first
    this.range = null;
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(canvas);
  }

  set(points, range = null) {
    this.points = points;
    this.range = range;
    this.draw();
  }

  push(point, keep = 600) {
    this.points.push(point);
    if (this.points.length > keep) this.points.splice(0, this.points.length - keep);
    this.draw();
  }

  dispose() {
    this.observer.disconnect();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const hgt = c.clientHeight;
    if (!w || !hgt) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(hgt * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(hgt * dpr);
    }
    const g = c.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, hgt);
    g.font = '11px system-ui, -apple-system, "Segoe UI", Roboto, sans-serif';

    const now = Date.now();
    let [t0, t1] = this.range || (this.span ? [now - this.span, now] : [null, null]);
    const pts = this.points.filter((p) => (t0 === null || p.t >= t0) && (t1 === null || p.t <= t1));
    const values = pts.flatMap((p) => p.v.filter((v) => typeof v === 'number' && Number.isFinite(v)));
    if (!values.length) {
      g.fillStyle = '#8a94a6';
      g.textAlign = 'center';
      g.textBaseline = 'middle';
      g.fillText(this.empty, w / 2, hgt / 2);
      return;
    }
    if (t0 === null) {
      t0 = pts[0].t;
      t1 = pts[pts.length - 1].t;
      if (t0 === t1) {
        t0 -= 30e3;
        t1 += 30e3;
      }
    }
    let min = Math.min(...values);
    let max = Math.max(...values);
    if (this.zero) {
      min = Math.min(0, min);
      max = Math.max(max, 1);
    }
    const { lo, hi, ticks } = niceTicks(min, max, 4);
    const labels = ticks.map((v) => fmtNum(v) + this.unit);
    const left = Math.ceil(Math.max(...labels.map((l) => g.measureText(l).width))) + 12;
    const pad = { left, right: 12, top: 10, bottom: 22 };
    const pw = w - pad.left - pad.right;
    const ph = hgt - pad.top - pad.bottom;
    const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * pw;
    const y = (v) => pad.top + ph - ((v - lo) / (hi - lo)) * ph;

    // Grid and y labels.
    g.strokeStyle = '#e6e9ef';
    g.lineWidth = 1;
    g.fillStyle = '#6b7489';
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    ticks.forEach((v, i) => {
      const yy = Math.round(y(v)) + 0.5;
      g.beginPath();
      g.moveTo(pad.left, yy);
      g.lineTo(w - pad.right, yy);
      g.stroke();
      g.fillText(labels[i], pad.left - 6, yy);
    });
    // Time labels.
    g.textAlign = 'center';
    g.textBaseline = 'top';
    const n = Math.max(2, Math.min(6, Math.floor(pw / 90)));
    for (let i = 0; i <= n; i += 1) {
      const t = t0 + ((t1 - t0) * i) / n;
      const xx = x(t);
      g.textAlign = i === 0 ? 'left' : i === n ? 'right' : 'center';
      g.fillText(timeLabel(t, t1 - t0), xx, hgt - pad.bottom + 6);
    }
    // Lines.
    g.save();
    g.beginPath();
    g.rect(pad.left, pad.top - 2, pw, ph + 4);
    g.clip();
    this.series.forEach((s, i) => {
      g.strokeStyle = s.color || PALETTE[i % PALETTE.length];
      g.fillStyle = g.strokeStyle;
      g.lineWidth = s.width || 2;
      g.setLineDash(s.dash || []);
      g.lineJoin = 'round';
      g.beginPath();
      let drawing = false;
      let count = 0;
      for (const p of pts) {
        const v = p.v[i];
        if (typeof v !== 'number' || !Number.isFinite(v)) {
          drawing = false;
          continue;
        }
        if (drawing) g.lineTo(x(p.t), y(v));
        else g.moveTo(x(p.t), y(v));
        drawing = true;
        count += 1;
      }
      g.stroke();
      if (count <= 40) {
        for (const p of pts) {
          const v = p.v[i];
          if (typeof v !== 'number' || !Number.isFinite(v)) continue;
          g.beginPath();
          g.arc(x(p.t), y(v), 2.5, 0, Math.PI * 2);
          g.fill();
        }
      }
    });
    g.restore();
    g.setLineDash([]);
  }
}

function legend(series) {
  return h('div', { class: 'legend' },
    series.map((s, i) => h('span', { class: 'legend-item' }, h('i', { class: `swatch swatch-${i}` }), s.label)));
}

/** A chart card: title, legend, canvas. Returns {card, chart}. */
function chartCard(ctx, title, options, testid) {
  const canvas = h('canvas', { class: 'chart', testid, role: 'img', 'aria-label': title });
  const chart = new LineChart(canvas, options);
  ctx.onLeave(() => chart.dispose());
  const note = h('div', { class: 'chart-note' });
  const card = h('section', { class: 'card' },
    h('div', { class: 'card-head' }, h('h3', {}, title), legend(options.series)),
    canvas, note);
  return { card, chart, note };
}

// ---------------------------------------------------------------------------------------------
// Layout pieces

function pageHead(title, ...extra) {
  return h('div', { class: 'page-head' }, h('h2', {}, title), h('div', { class: 'page-actions' }, extra));
}

function card(title, ...children) {
  return h('section', { class: 'card' }, title ? h('div', { class: 'card-head' }, h('h3', {}, title)) : null, children);
}

function badge(text, kind) {
  return h('span', { class: `badge badge-${kind}` }, text);
}

function table(headers, rows, testid) {
  return h('div', { class: 'table-wrap' },
    h('table', { testid },
      // A header `[text, class]` gives its column a class (`opt`: hidden on narrow screens).
      h('thead', {}, h('tr', {}, headers.map((c) => (Array.isArray(c) ? h('th', { class: c[1] }, c[0]) : h('th', {}, c))))),
      h('tbody', {}, rows)));
}

function emptyRow(span, text) {
  return h('tr', { class: 'empty' }, h('td', { colspan: span }, text));
}

function dl(pairs) {
  return h('dl', { class: 'facts' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

function button(text, attrs = {}) {
  return h('button', { type: 'button', class: 'btn', ...attrs }, text);
}

/** Runs `fn` (an async action behind a button), disabling the button meanwhile; errors become toasts. */
async function busy(btn, fn) {
  btn.disabled = true;
  try {
    return await fn();
  } catch (e) {
    toastError(e);
    return undefined;
  } finally {
    btn.disabled = false;
  }
}

function field(label, input, hint) {
  return h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), input,
    hint ? h('span', { class: 'field-hint' }, hint) : null);
}

function select(options, attrs = {}) {
  return h('select', attrs, options.map(([value, text]) => h('option', { value }, text)));
}

// ---------------------------------------------------------------------------------------------
// Quarantine helpers

function activeEntries(entries) {
  return entries.filter((e) => !e.expired);
}

function targetText(t) {
  if (!t) return '—';
  const kinds = { client_id: 'client id', username: 'username', address: 'address', pattern: 'pattern' };
  return `${kinds[t.kind] || t.kind} ${t.value}`;
}

/** The active entries that name this device (by client id or username). */
function entriesFor(entries, id) {
  return activeEntries(entries).filter(
    (e) => (e.target.kind === 'client_id' || e.target.kind === 'username') && e.target.value === id);
}

// ---------------------------------------------------------------------------------------------
// JSON fields: the numbers found in a payload, as field paths for history queries

function numericFields(payload, prefix = 'payload', out = [], depth = 0) {
  if (depth > 4 || out.length > 50) return out;
  if (typeof payload === 'number' || typeof payload === 'boolean') out.push(prefix);
  else if (typeof payload === 'string' && payload.trim() !== '' && !Number.isNaN(Number(payload))) out.push(prefix);
  else if (payload && typeof payload === 'object' && !Array.isArray(payload)) {
    for (const [k, v] of Object.entries(payload)) {
      if (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) numericFields(v, `${prefix}.${k}`, out, depth + 1);
    }
  }
  return out;
}

const RANGES = [
  ['5m', 'Last 5 minutes', 5 * 60e3, '2s'],
  ['15m', 'Last 15 minutes', 15 * 60e3, '10s'],
  ['1h', 'Last hour', 3600e3, '1m'],
  ['6h', 'Last 6 hours', 6 * 3600e3, '5m'],
  ['24h', 'Last 24 hours', 86400e3, '15m'],
  ['7d', 'Last 7 days', 7 * 86400e3, '1h'],
];

/**
 * A history chart with topic, field and range pickers. `topics()` gives the topics to offer and
 * `fields(topic)` the numeric fields of a topic. Returns {el, refresh}.
 */
function historyPanel(ctx, { topics, fields, testid = 'history-chart' }) {
  const topicSel = h('select', { testid: 'history-topic', 'aria-label': 'Topic' });
  const fieldSel = h('select', { testid: 'history-field', 'aria-label': 'Field' });
  const rangeSel = select(RANGES.map(([v, t]) => [v, t]), { testid: 'history-range', 'aria-label': 'Range', value: '15m' });
  const series = [{ label: 'average' }, { label: 'min', width: 1, dash: [4, 3] }, { label: 'max', width: 1, dash: [4, 3] }];
  const { card: el, chart, note } = chartCard(ctx, 'History', { series, empty: 'No numeric values in this range' }, testid);
  el.querySelector('.card-head').after(h('div', { class: 'toolbar' }, topicSel, fieldSel, rangeSel));
  note.dataset.testid = 'history-summary';

  function fill(sel, values, preferred) {
    const current = sel.value;
    const key = values.join('\n');
    if (sel.dataset.key === key) return;
    sel.dataset.key = key;
    put(sel, values.map((v) => h('option', { value: v }, v)));
    if (values.includes(current)) sel.value = current;
    else if (preferred && values.includes(preferred)) sel.value = preferred;
  }

  async function refresh() {
    fill(topicSel, topics());
    // A topic's own field first: payload.temp on .../temp.
    const own = topicSel.value ? `payload.${topicSel.value.split('/').pop()}` : null;
    fill(fieldSel, topicSel.value ? fields(topicSel.value) : [], own);
    if (!topicSel.value || !fieldSel.value) {
      chart.set([]);
      note.textContent = 'Pick a topic with numeric values.';
      return;
    }
    const [, , span, bucket] = RANGES.find(([v]) => v === rangeSel.value);
    const to = Date.now();
    try {
      const res = await get('/history/aggregate', {
        filter: topicSel.value, field: fieldSel.value, from: to - span, to: to + 1000, bucket, agg: 'avg,min,max',
      });
      const s = (res.series || []).find((x) => x.topic === topicSel.value) || (res.series || [])[0];
      const buckets = s ? s.buckets : [];
      let points = buckets.filter((b) => b.count > 0).map((b) => ({ t: b.start_us / 1000, v: [b.avg, b.min, b.max] }));
      let raw = false;
      if (points.length <= 3) {
        // Too few buckets to draw a line: the values themselves.
        const res2 = await get('/history', { filter: topicSel.value, field: fieldSel.value, from: to - span, to: to + 1000, limit: 2000, order: 'desc' });
        points = (res2.points || []).map((p) => ({ t: p.ts_us / 1000, v: [typeof p.value === 'number' ? p.value : Number(p.value)] })).reverse();
        raw = true;
      }
      // Zoomed to the data: a device that started a minute ago fills the chart, not its last pixels.
      const bucketMs = raw ? 1000 : { s: 1e3, m: 60e3, h: 3600e3 }[bucket.slice(-1)] * Number(bucket.slice(0, -1));
      const start = points.length ? Math.max(to - span, points[0].t - bucketMs) : to - span;
      chart.set(points, [start, to]);
      const count = buckets.reduce((n, b) => n + b.count, 0);
      note.textContent = raw
        ? `${fmtNum(count)} values of ${fieldSel.value} on ${topicSel.value}${points.length < count ? ` (the last ${fmtNum(points.length)} drawn)` : ''}.`
        : `${fmtNum(count)} values of ${fieldSel.value} on ${topicSel.value}, in buckets of ${bucket}.`;
    } catch (e) {
      chart.set([]);
      put(note, problem(e, 'History'));
    }
  }
  for (const sel of [topicSel, fieldSel, rangeSel]) sel.addEventListener('change', refresh);
  return { el, refresh };
}

// ---------------------------------------------------------------------------------------------
// Pages. Each builds its skeleton at once, then fills it; `ctx` says whether the page is still
// shown and takes what to stop when it is left.

async function overviewPage(view, _param, ctx) {
  const tiles = {
    connections: tile('Connections', 'tile-connections'),
    in: tile('Messages in /s', 'tile-in-rate'),
    out: tile('Messages out /s', 'tile-out-rate'),
    dropped: tile('Dropped /s', 'tile-drop-rate'),
    quarantined: tile('Quarantined', 'tile-quarantined'),
    rules: tile('Rules running', 'tile-rules'),
  };
  const rates = chartCard(ctx, 'Messages per second', { series: [{ label: 'in' }, { label: 'out' }], span: 300e3, zero: true }, 'chart-rates');
  const conns = chartCard(ctx, 'Connections', { series: [{ label: 'connections' }], span: 300e3, zero: true }, 'chart-connections');
  const facts = h('div', { testid: 'node-facts' }, h('p', { class: 'muted' }, 'Loading…'));
  const meshBox = h('div', { testid: 'overview-mesh' }, h('p', { class: 'muted' }, 'Loading…'));
  const alarms = h('div', { testid: 'alarms' }, h('p', { class: 'muted' }, 'Loading…'));
  view.append(
    pageHead('Overview'),
    h('div', { class: 'tiles' }, Object.values(tiles).map((t) => t.el)),
    h('div', { class: 'grid grid-2' }, rates.card, conns.card),
    h('div', { class: 'grid grid-3' }, card('Alarms', alarms), card('This node', facts), card('Mesh', meshBox)));

  function tile(label, testid) {
    const value = h('div', { class: 'tile-value', testid }, '—');
    return { el: h('div', { class: 'tile' }, h('div', { class: 'tile-label' }, label), value), value };
  }

  const samples = [];
  function addSample(s) {
    samples.push(s);
    if (samples.length > 1 && s.ts < samples[samples.length - 2].ts) samples.sort((a, b) => a.ts - b.ts);
    if (samples.length > 600) samples.splice(0, samples.length - 600);
    s = samples[samples.length - 1];
    tiles.connections.value.textContent = fmtNum(s.connections);
    tiles.in.value.textContent = fmtNum(s.in_rate);
    tiles.out.value.textContent = fmtNum(s.out_rate);
    tiles.dropped.value.textContent = fmtNum(s.drop_rate);
  }
  function redraw() {
    rates.chart.set(samples.map((s) => ({ t: s.ts, v: [s.in_rate, s.out_rate] })));
    conns.chart.set(samples.map((s) => ({ t: s.ts, v: [s.connections] })));
  }

  // Rates: seeded from the last five minutes, then live.
  get('/node/rates', { seconds: 300 }).then((r) => {
    const known = new Set(samples.map((s) => s.ts));
    for (const s of r.samples || []) if (!known.has(s.ts)) addSample(s);
    redraw();
  }).catch((e) => {
    if (e.status !== 401) put(rates.note, problem(e, 'The rate history'));
  });
  follow(ctx, {}, {
    stats(s) {
      if (samples.length && s.ts <= samples[samples.length - 1].ts) return;
      addSample(s);
      redraw();
    },
    unavailable(e) {
      put(rates.note, problem(e, 'The live stream'));
      put(conns.note, problem(e, 'The live stream'));
    },
  });
  // Keep the charts scrolling even between samples.
  const tick = setInterval(() => { rates.chart.draw(); conns.chart.draw(); }, 1000);
  ctx.onLeave(() => clearInterval(tick));

  ctx.every(5000, async () => {
    const [node, quarantine, rules, mesh] = await Promise.allSettled([
      get('/node'), get('/quarantine'), get('/rules'), meshNodes()]);
    if (!ctx.alive()) return;
    // Node facts.
    if (node.status === 'fulfilled') {
      const n = node.value;
      nodeFacts = n;
      const st = n.stats || {};
      put(facts, dl([
        ['Node', n.node_id],
        ['Version', n.version],
        ['Up', `${fmtDuration(n.uptime_secs)} (since ${fmtTime(n.started)})`],
        ['Listeners', (n.listeners || []).map((l) => `${l.transport} ${l.address}`).join(', ') || '—'],
        ['Features', Object.entries(n.features || {}).filter(([, on]) => on).map(([k]) => k).join(', ') || 'none'],
        ['Sessions', fmtNum(st.sessions)],
        ['Subscriptions', fmtNum(st.subscriptions)],
        ['Retained', fmtNum(st.retained)],
        ['Received', `${fmtNum(st.messages_received)} msgs, ${fmtBytes(st.bytes_received)}`],
        ['Sent', `${fmtNum(st.messages_sent)} msgs, ${fmtBytes(st.bytes_sent)}`],
        ['Dropped', fmtNum(st.messages_dropped)],
      ]));
      if (!samples.length) tiles.connections.value.textContent = fmtNum(st.connections);
    } else {
      put(facts, problem(node.reason, 'Node information'));
    }
    // Alarms: active quarantine entries, rules stopped for failing.
    const items = [];
    if (quarantine.status === 'fulfilled') {
      const active = activeEntries(quarantine.value);
      tiles.quarantined.value.textContent = fmtNum(active.length);
      for (const e of active) {
        items.push(h('li', { class: 'alarm alarm-quarantine', testid: 'alarm' },
          badge(e.mode, 'bad'), ' ',
          h('a', { href: e.target.kind === 'client_id' ? `#/devices/${encodeURIComponent(e.target.value)}` : '#/quarantine' }, targetText(e.target)),
          h('div', { class: 'muted small' }, `${e.reason} — by ${e.actor}, ${fmtTime(e.created_ms)}`)));
      }
    } else {
      items.push(h('li', {}, problem(quarantine.reason, 'The quarantine list')));
    }
    if (rules.status === 'fulfilled') {
      tiles.rules.value.textContent = fmtNum(rules.value.filter((r) => r.state === 'running').length);
      for (const r of rules.value.filter((x) => x.state === 'disabled_failing' || x.state === 'invalid')) {
        items.push(h('li', { class: 'alarm alarm-rule', testid: 'alarm' },
          badge(r.state === 'invalid' ? 'invalid' : 'failing', 'warn'), ' ',
          h('a', { href: `#/rules/${encodeURIComponent(r.id)}` }, `rule ${r.id}`),
          h('div', { class: 'muted small' }, r.metrics?.last_error || 'stopped by the engine')));
      }
    } else if (!(rules.reason instanceof ApiError && rules.reason.missing)) {
      items.push(h('li', {}, problem(rules.reason, 'Rules')));
    } else {
      tiles.rules.value.textContent = 'off';
    }
    put(alarms, items.length
      ? h('ul', { class: 'alarms' }, items)
      : h('p', { class: 'ok-line', testid: 'no-alarms' }, '✓ No alarms'));
    // Mesh.
    if (mesh.status === 'fulfilled') {
      const { nodes, note } = mesh.value;
      const others = nodes.filter((n) => !n.local);
      put(meshBox, 
        others.length
          ? h('ul', { class: 'node-list' }, others.map((n) => h('li', {},
            h('span', { class: `dot ${n.reachable ? 'dot-ok' : 'dot-bad'}` }), n.node_id,
            h('span', { class: 'muted small' }, n.reachable ? ` ${n.rtt_ms != null ? `${fmtNum(n.rtt_ms)} ms` : ''}` : ' unreachable',
              n.backlog ? `, ${fmtNum(n.backlog)} waiting` : ''))))
          : h('p', { class: 'muted' }, note || 'No other nodes.'),
        h('p', {}, h('a', { href: '#/mesh' }, 'Topology →')));
    } else {
      put(meshBox, problem(mesh.reason, 'The mesh'));
    }
  });
}

/**
 * The nodes of the mesh, this one first: from `/nodes`, else from `/mesh`. A node on its own
 * (no mesh) gives just itself and a note.
 */
async function meshNodes() {
  try {
    const nodes = await get('/nodes');
    // `/mesh` adds the links, traffic counters and filters, when the node is in a mesh.
    const mesh = await get('/mesh').catch(() => null);
    for (const n of mesh?.nodes || []) {
      const known = nodes.find((x) => x.node_id === n.id);
      if (known) Object.assign(known, { linked: n.linked, acknowledged: n.acknowledged, filters: n.filters });
    }
    return { nodes, mesh, note: null };
  } catch (e) {
    if (!(e instanceof ApiError) || !e.missing) throw e;
  }
  const self = nodeFacts?.node_id || 'this node';
  try {
    const m = await get('/mesh');
    const nodes = [{ node_id: m.node_id, local: true, reachable: true }].concat(
      (m.nodes || []).map((n) => ({ node_id: n.id, local: false, reachable: n.reachable, linked: n.linked,
        rtt_ms: n.rtt_ms, backlog: n.backlog, acknowledged: n.acknowledged, filters: n.filters })));
    return { nodes, mesh: m, note: null };
  } catch (e) {
    if (e instanceof ApiError && e.missing) {
      return { nodes: [{ node_id: self, local: true, reachable: true }], note: `This node is on its own (${e.message}).` };
    }
    throw e;
  }
}

// ----- Devices

async function devicesPage(view, _param, ctx) {
  const search = h('input', { type: 'search', placeholder: 'Search by id, user or group', testid: 'device-search', 'aria-label': 'Search devices' });
  const stateSel = select([['all', 'All'], ['online', 'Online'], ['offline', 'Offline'], ['quarantined', 'Quarantined']], { testid: 'device-state-filter', 'aria-label': 'State' });
  const addBtn = can('operator') ? button('Add device', { class: 'btn btn-primary', testid: 'device-add' }) : null;
  const form = h('form', { class: 'card form-inline', hidden: true, testid: 'device-form' });
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const note = h('div', {});
  view.append(pageHead('Devices', search, stateSel, addBtn), form, note, body);
  search.value = sessionStorage.getItem('device-search') || '';
  let last = null;

  if (addBtn) {
    const id = h('input', { name: 'id', required: true, placeholder: 'sensor-7', testid: 'new-device-id' });
    const pw = h('input', { name: 'password', type: 'password', autocomplete: 'new-password', placeholder: 'optional' });
    const groups = h('input', { name: 'groups', placeholder: 'line-1, sensors' });
    form.append(field('Device id', id), field('Password', pw), field('Groups', groups),
      h('div', { class: 'form-buttons' }, h('button', { type: 'submit', class: 'btn btn-primary' }, 'Register'),
        button('Cancel', { onclick: () => { form.hidden = true; } })));
    addBtn.addEventListener('click', () => { form.hidden = !form.hidden; id.focus(); });
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const submit = form.querySelector('[type=submit]');
      await busy(submit, async () => {
        const req = { id: id.value.trim() };
        if (pw.value) req.password = pw.value;
        const g = groups.value.split(',').map((x) => x.trim()).filter(Boolean);
        if (g.length) req.groups = g;
        await api('POST', '/devices', req);
        toast(`Device ${req.id} registered`, 'ok');
        form.reset();
        form.hidden = true;
        await load();
      });
    });
  }

  async function load() {
    const [devices, clients, quarantine] = await Promise.allSettled([
      get('/devices'), get('/clients', { state: 'all', limit: 1000 }), get('/quarantine')]);
    if (!ctx.alive()) return;
    const notes = [];
    if (devices.status === 'rejected') notes.push(problem(devices.reason, 'The device registry'));
    if (clients.status === 'rejected') notes.push(problem(clients.reason, 'The connection state of clients'));
    put(note, notes);
    const entries = quarantine.status === 'fulfilled' ? quarantine.value : [];
    const rows = new Map();
    for (const d of devices.status === 'fulfilled' ? devices.value : []) rows.set(d.id, { id: d.id, device: d, client: null });
    const clientList = clients.status === 'fulfilled' ? clients.value : null;
    for (const c of clientList || []) {
      const row = rows.get(c.client_id) || [...rows.values()].find((r) => !r.client && c.username && r.id === c.username);
      if (row && !row.client) row.client = c;
      else if (!rows.has(c.client_id)) rows.set(c.client_id, { id: c.client_id, device: null, client: c });
    }
    for (const row of rows.values()) row.quarantine = entriesFor(entries, row.id);
    last = { rows: [...rows.values()].sort((a, b) => a.id.localeCompare(b.id)), clientsKnown: clientList !== null };
    render();
  }

  function render() {
    if (!last) return;
    const q = search.value.trim().toLowerCase();
    const wanted = stateSel.value;
    const rows = last.rows.filter((r) => {
      const hay = [r.id, r.client?.username, ...(r.device?.groups || [])].filter(Boolean).join(' ').toLowerCase();
      if (q && !hay.includes(q)) return false;
      if (wanted === 'online') return r.client?.online;
      if (wanted === 'offline') return !r.client?.online;
      if (wanted === 'quarantined') return r.quarantine.length > 0;
      return true;
    });
    put(body, table(
      ['Device', 'State', ['Address', 'opt'], ['Protocol', 'opt'], ['Messages in', 'opt'], 'Last seen', ['Groups', 'opt']],
      rows.length ? rows.map((r) => {
        const c = r.client;
        return h('tr', { testid: 'device-row', 'data-id': r.id, class: 'clickable', onclick: (ev) => {
          if (!(ev.target instanceof HTMLAnchorElement)) location.hash = `#/devices/${encodeURIComponent(r.id)}`;
        } },
        h('td', { class: 'nowrap' }, h('a', { href: `#/devices/${encodeURIComponent(r.id)}`, class: 'strong' }, r.id),
          r.device ? null : h('div', { class: 'muted small' }, 'not registered')),
        h('td', {}, stateBadges(r, last.clientsKnown)),
        h('td', { class: 'opt' }, c?.address || '—'),
        h('td', { class: 'opt' }, c ? `MQTT ${c.protocol} ${c.transport}` : '—'),
        h('td', { class: 'num opt' }, c ? fmtNum(c.messages_in) : '—'),
        h('td', { class: 'nowrap' }, ago(c?.last_seen || r.device?.last_seen_ms)),
        h('td', { class: 'opt' }, (r.device?.groups || []).join(', ') || '—'));
      }) : emptyRow(7, last.rows.length ? 'No device matches.' : 'No devices yet.'),
      'devices-table'));
  }
  search.addEventListener('input', () => { sessionStorage.setItem('device-search', search.value); render(); });
  stateSel.addEventListener('change', render);
  ctx.every(3000, load);
}

function stateBadges(r, clientsKnown) {
  const out = [];
  if (r.quarantine.length) out.push(badge(`quarantined (${r.quarantine[0].mode})`, 'bad'));
  if (r.client) out.push(r.client.online ? badge('online', 'ok') : badge('offline', 'off'));
  else if (clientsKnown) out.push(badge('offline', 'off'));
  if (r.device && !r.device.enabled) out.push(badge('disabled', 'warn'));
  if (!out.length) out.push(badge('unknown', 'off'));
  return h('span', { class: 'badges', testid: 'device-state' }, out);
}

async function devicePage(view, id, ctx) {
  const enc = encodeURIComponent(id);
  const state = h('span', { class: 'badges', testid: 'device-state' });
  const qBtn = button('Quarantine…', { class: 'btn btn-danger', testid: 'quarantine-button', hidden: !can('operator') });
  const rBtn = button('Release', { class: 'btn', testid: 'release-button', hidden: true });
  const dBtn = button('Disconnect', { class: 'btn', testid: 'disconnect-button', hidden: true });
  const qForm = quarantineForm(id, async () => { qForm.hidden = true; await refreshState(); });
  qForm.hidden = true;
  const registry = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const conn = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const refusals = h('div', {});
  const filter = h('input', { value: sessionStorage.getItem(`latest-filter:${id}`) || `+/${id}/#`, testid: 'latest-filter', 'aria-label': 'Topic filter', spellcheck: 'false' });
  const latestBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  let latest = [];
  const hist = historyPanel(ctx, {
    // What the device published itself first.
    topics: () => latest.filter((p) => numericFields(p.payload).length)
      .sort((a, b) => (b.client_id === id) - (a.client_id === id)).map((p) => p.topic),
    fields: (topic) => numericFields(latest.find((p) => p.topic === topic)?.payload),
  });
  view.append(
    h('nav', { class: 'crumbs' }, h('a', { href: '#/devices' }, 'Devices'), ' / ', id),
    pageHead(id, state, qBtn, rBtn, dBtn),
    qForm,
    h('div', { class: 'grid grid-2' },
      card('Last values', h('div', { class: 'toolbar' }, field('Topic filter', filter)), latestBox),
      hist.el),
    h('div', { class: 'grid grid-3' }, card('Registry', registry), card('Connection', conn), card('Refused while quarantined', refusals)));

  let entries = [];
  async function refreshState() {
    const [device, client, quarantine, refused] = await Promise.allSettled([
      get(`/devices/${enc}`), get(`/clients/${enc}`), get('/quarantine'), get(`/clients/${enc}/refusals`)]);
    if (!ctx.alive()) return;
    entries = quarantine.status === 'fulfilled' ? entriesFor(quarantine.value, id) : [];
    const d = device.status === 'fulfilled' ? device.value : null;
    const c = client.status === 'fulfilled' ? client.value : null;
    const clientsKnown = client.status === 'fulfilled' || (client.reason instanceof ApiError && client.reason.status === 404 && !/route/.test(client.reason.message));
    put(state, [...stateBadges({ device: d, client: c, quarantine: entries }, clientsKnown).childNodes]);
    rBtn.hidden = !entries.length || !can('operator');
    qBtn.hidden = entries.length > 0 || !can('operator');
    dBtn.hidden = !(c?.online && can('operator'));
    if (d) {
      put(registry, dl([
        ['Password', d.has_password ? 'set' : 'none'],
        ['Groups', d.groups.join(', ') || '—'],
        ['Enabled', d.enabled ? 'yes' : 'no'],
        ['Registered', fmtTime(d.created_ms)],
        ['Last connected', ago(d.last_seen_ms)],
        ...Object.entries(d.attributes || {}).map(([k, v]) => [k, v]),
      ]));
    } else {
      put(registry, device.reason?.status === 404 && !/route/.test(device.reason.message)
        ? h('p', { class: 'muted' }, 'Not in the registry (it connects anonymously or with a token).')
        : problem(device.reason, 'The registry'));
    }
    if (c) {
      put(conn, dl([
        ['State', c.online ? `online since ${fmtTime(c.connected_at)}` : `offline, last seen ${fmtTime(c.last_seen)}`],
        ['Address', c.address],
        ['Protocol', `MQTT ${c.protocol} over ${c.transport}`],
        ['User', c.username],
        ['Keep alive', `${c.keep_alive} s`],
        ['Messages', `${fmtNum(c.messages_in)} in (${fmtNum(c.in_rate)}/s), ${fmtNum(c.messages_out)} out (${fmtNum(c.out_rate)}/s)`],
        ['Bytes', `${fmtBytes(c.bytes_in)} in, ${fmtBytes(c.bytes_out)} out`],
        ['Queued / in flight', `${fmtNum(c.queued)} / ${fmtNum(c.inflight)}`],
        ['Subscriptions', (c.subscriptions || []).map((s) => `${s.filter} (QoS ${s.qos})`).join(', ') || 'none'],
      ]));
    } else {
      put(conn, client.reason?.status === 404 && !/route/.test(client.reason.message)
        ? h('p', { class: 'muted' }, 'This client has not connected since the node started.')
        : problem(client.reason, 'Connection details'));
    }
    if (refused.status === 'fulfilled') {
      const list = Array.isArray(refused.value) ? refused.value : refused.value.refusals || [];
      put(refusals, list.length
        ? h('ul', { class: 'plain small' }, list.slice(-10).reverse().map((r) => h('li', {}, typeof r === 'string' ? r : `${fmtTime(r.at_ms ?? r.ts)} ${r.what ?? r.kind ?? ''} ${r.topic ?? r.detail ?? ''}`)))
        : h('p', { class: 'muted' }, entries.length ? 'Nothing refused yet.' : 'Not quarantined.'));
    } else {
      put(refusals, problem(refused.reason, 'Refusals'));
    }
  }

  async function refreshLatest() {
    sessionStorage.setItem(`latest-filter:${id}`, filter.value);
    try {
      const res = await get('/latest', { filter: filter.value.trim() || '#' });
      if (!ctx.alive()) return;
      latest = res.values || [];
      put(latestBox, table(['Topic', 'Value', 'Received'], latest.length
        ? latest.map((p) => h('tr', { testid: 'latest-row' },
          h('td', {}, h('a', { href: `#/topics/${encodeURIComponent(p.topic)}` }, p.topic)),
          h('td', { class: 'mono' }, payloadText(p.payload)),
          h('td', {}, ago(p.ts))))
        : emptyRow(3, 'No messages on this filter yet.'), 'latest-values'));
    } catch (e) {
      latest = [];
      put(latestBox, problem(e, 'Last values'));
    }
    await hist.refresh();
  }
  filter.addEventListener('change', refreshLatest);

  qBtn.addEventListener('click', () => { qForm.hidden = !qForm.hidden; if (!qForm.hidden) $('input', qForm).focus(); });
  rBtn.addEventListener('click', () => busy(rBtn, async () => {
    for (const e of entries) await api('DELETE', `/quarantine/${e.id}`);
    toast(`${id} released`, 'ok');
    await refreshState();
  }));
  dBtn.addEventListener('click', () => busy(dBtn, async () => {
    await api('POST', `/clients/${enc}/disconnect`);
    toast(`${id} disconnected`, 'ok');
    await refreshState();
  }));
  ctx.every(3000, refreshState);
  ctx.every(5000, refreshLatest);
}

/** The form that quarantines a client id (or another target on the quarantine page). */
function quarantineForm(clientId, done) {
  const kind = select([['client_id', 'Client id'], ['username', 'Username'], ['address', 'Address (IP or CIDR)'], ['pattern', 'Client id pattern (regex)']], { testid: 'quarantine-kind' });
  const value = h('input', { value: clientId || '', required: true, testid: 'quarantine-value', spellcheck: 'false' });
  const mode = select([['ban', 'Ban: refused at connect'], ['isolate', 'Isolate: only its repair namespace']], { testid: 'quarantine-mode' });
  const reason = h('input', { required: true, placeholder: 'Why (shown in the audit log)', testid: 'quarantine-reason' });
  const expires = select([['', 'Until released'], ['600', '10 minutes'], ['3600', '1 hour'], ['86400', '1 day'], ['604800', '7 days']], { testid: 'quarantine-expires' });
  const submit = h('button', { type: 'submit', class: 'btn btn-danger', testid: 'quarantine-submit' }, 'Quarantine');
  const form = h('form', { class: 'card form-grid', testid: 'quarantine-form' },
    clientId ? null : field('Target', kind),
    field(clientId ? 'Client id' : 'Value', value),
    field('Mode', mode),
    field('Reason', reason),
    field('Expires', expires),
    h('div', { class: 'form-buttons' }, submit, button('Cancel', { onclick: () => { form.hidden = true; } })));
  if (clientId) value.readOnly = true;
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await busy(submit, async () => {
      const req = { target: { kind: clientId ? 'client_id' : kind.value, value: value.value.trim() }, mode: mode.value, reason: reason.value.trim() };
      if (expires.value) req.expires_in_secs = Number(expires.value);
      if (session.user) req.actor = session.user;
      const entry = await api('POST', '/quarantine', req);
      toast(`Quarantined ${targetText(entry.target)} (${entry.mode})`, 'ok');
      reason.value = '';
      await done(entry);
    });
  });
  return form;
}

// ----- Topics

async function topicsPage(view, param, ctx) {
  const filter = h('input', { value: sessionStorage.getItem('topic-filter') || '#', testid: 'topic-filter', 'aria-label': 'Topic filter', spellcheck: 'false' });
  const treeBox = h('div', { class: 'tree', testid: 'topic-tree' }, h('p', { class: 'muted' }, 'Loading…'));
  const detail = h('div', { class: 'topic-detail', testid: 'topic-detail' });
  view.append(pageHead('Topics', field('Filter', filter)),
    h('div', { class: 'split' }, card('Topic tree', treeBox), detail));
  const open = new Set(JSON.parse(sessionStorage.getItem('topic-open') || '[]'));

  async function loadTree() {
    sessionStorage.setItem('topic-filter', filter.value);
    try {
      const res = await get('/topics', { filter: filter.value.trim() || '#' });
      if (!ctx.alive()) return;
      const topics = res.topics || [];
      const root = { children: new Map() };
      for (const t of topics) {
        let node = root;
        const levels = t.topic.split('/');
        levels.forEach((level, i) => {
          if (!node.children.has(level)) node.children.set(level, { name: level, path: levels.slice(0, i + 1).join('/'), children: new Map(), info: null, count: 0 });
          node = node.children.get(level);
          node.count += t.messages;
        });
        node.info = t;
      }
      put(treeBox, topics.length ? renderTree(root) : h('p', { class: 'muted' }, 'No topics in the history on this filter.'),
        h('p', { class: 'muted small' }, topics.length === 1 ? '1 topic' : `${fmtNum(topics.length)} topics`));
    } catch (e) {
      put(treeBox, problem(e, 'The topic list'));
    }
  }

  function renderTree(node) {
    const items = [...node.children.values()].sort((a, b) => a.name.localeCompare(b.name));
    return h('ul', {}, items.map((n) => {
      const hasKids = n.children.size > 0;
      const isOpen = open.has(n.path) || (param && param.startsWith(`${n.path}/`));
      const kids = hasKids ? renderTree(n) : null;
      if (kids) kids.hidden = !isOpen;
      const toggle = hasKids
        ? h('button', { type: 'button', class: `twisty${isOpen ? ' open' : ''}`, 'aria-label': 'Expand', 'aria-expanded': String(Boolean(isOpen)), onclick: () => {
          kids.hidden = !kids.hidden;
          toggle.classList.toggle('open', !kids.hidden);
          toggle.setAttribute('aria-expanded', String(!kids.hidden));
          if (kids.hidden) open.delete(n.path); else open.add(n.path);
          sessionStorage.setItem('topic-open', JSON.stringify([...open]));
        } }, '')
        : h('span', { class: 'twisty-space' });
      const label = n.info
        ? h('a', { href: `#/topics/${encodeURIComponent(n.path)}`, class: n.path === param ? 'selected' : '', testid: 'topic-link', 'data-topic': n.path }, n.name || '(empty)')
        : h('span', {}, n.name || '(empty)');
      return h('li', {}, h('div', { class: 'tree-row' }, toggle, label, h('span', { class: 'count' }, fmtNum(n.count))), kids);
    }));
  }

  filter.addEventListener('change', loadTree);
  ctx.every(10000, loadTree);
  if (param) topicDetail(detail, param, ctx);
  else detail.append(card(null, h('p', { class: 'muted' }, 'Pick a topic to see its live values and history.')));
}

function topicDetail(box, topic, ctx) {
  const live = h('ol', { class: 'messages', testid: 'topic-live' });
  const liveNote = h('p', { class: 'muted small', testid: 'topic-live-note' }, 'Connecting…');
  const info = h('div', {});
  let lastPayload = null;
  const hist = historyPanel(ctx, { topics: () => [topic], fields: () => numericFields(lastPayload) });
  box.append(
    card(null, h('h3', { class: 'topic-name', testid: 'topic-name' }, topic), info),
    card('Live', liveNote, live),
    hist.el,
    can('operator') ? publishForm(topic) : null);

  function show(msg) {
    const ts = msg.ts ?? Date.now();
    const newest = !live.firstChild || ts >= Number(live.firstChild.dataset.ts);
    if (newest) lastPayload = msg.payload;
    const item = h('li', { 'data-ts': ts },
      h('time', { class: 'muted small' }, new Date(ts).toLocaleTimeString()),
      msg.retain ? badge('retained', 'off') : null,
      h('pre', { class: 'mono' }, prettyPayload(msg.payload)));
    const after = [...live.children].find((li) => Number(li.dataset.ts) <= ts);
    live.insertBefore(item, after || null);
    while (live.children.length > 20) live.lastChild.remove();
  }

  let lastTs = 0;
  // Seed with the last value, then follow the stream (or poll the last value without one).
  get('/latest', { filter: topic }).then((res) => {
    const p = (res.values || [])[0];
    if (p && ctx.alive()) {
      lastTs = p.ts_us;
      show({ ...p, ts: p.ts_us ? p.ts_us / 1000 : p.ts });
      hist.refresh();
    }
  }).catch(() => {});
  get('/topics', { filter: topic }).then((res) => {
    const t = (res.topics || []).find((x) => x.topic === topic);
    if (t) put(info, dl([['Messages kept', fmtNum(t.messages)], ['First', fmtTime(t.first)], ['Last', fmtTime(t.last)]]));
  }).catch((e) => put(info, problem(e, 'Topic statistics')));

  follow(ctx, { filter: topic }, {
    open() { liveNote.textContent = 'Live: new messages appear at the top.'; },
    closed() { liveNote.textContent = 'The stream broke off; reconnecting…'; },
    message(msg) { show(msg); },
    lagged(l) { liveNote.textContent = `Live (${fmtNum(l.dropped)} messages skipped: too many per second).`; },
    unavailable(e) {
      put(liveNote, problem(e, 'The live stream'), 'Polling the last value instead.');
      ctx.every(2000, async () => {
        const res = await get('/latest', { filter: topic });
        const p = (res.values || [])[0];
        if (p && p.ts_us !== lastTs) {
          lastTs = p.ts_us;
          show({ ...p, ts: p.ts_us / 1000 });
        }
      });
    },
  });
  ctx.every(10000, () => hist.refresh());
}

function publishForm(topic) {
  const payload = h('textarea', { rows: 3, class: 'mono', placeholder: '{"on": true}', testid: 'publish-payload' });
  const qos = select([['0', 'QoS 0'], ['1', 'QoS 1'], ['2', 'QoS 2']]);
  const retain = h('input', { type: 'checkbox' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'publish-submit' }, 'Publish');
  const form = h('form', { class: 'card' }, h('div', { class: 'card-head' }, h('h3', {}, 'Publish')),
    field('Payload (JSON or text)', payload),
    h('div', { class: 'toolbar' }, qos, h('label', { class: 'check' }, retain, ' retain'), submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await busy(submit, async () => {
      let body = payload.value;
      try { body = JSON.parse(payload.value); } catch { /* text */ }
      await api('POST', '/publish', { topic, payload: body, qos: Number(qos.value), retain: retain.checked });
      toast(`Published on ${topic}`, 'ok');
    });
  });
  return form;
}

// ----- Rules

async function rulesPage(view, param, ctx) {
  if (param) return ruleEditor(view, param === '~new' ? null : param, ctx);
  const newBtn = can('operator') ? h('a', { href: '#/rules/~new', class: 'btn btn-primary', testid: 'rule-new' }, 'New rule') : null;
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  view.append(pageHead('Rules', newBtn), body);
  ctx.every(3000, async () => {
    let rules;
    try {
      rules = await get('/rules');
    } catch (e) {
      put(body, problem(e, 'Rules'));
      return;
    }
    if (!ctx.alive()) return;
    put(body, table(['Rule', 'State', 'Query', 'Matched', 'Passed', 'Failed', 'Actions ok / failed', 'Last error', ''],
      rules.length ? rules.map((r) => h('tr', { testid: 'rule-row', 'data-id': r.id },
        h('td', {}, h('a', { href: `#/rules/${encodeURIComponent(r.id)}`, class: 'strong' }, r.id), r.description ? h('div', { class: 'muted small' }, r.description) : null),
        h('td', {}, ruleState(r.state)),
        h('td', { class: 'mono sql-cell', title: r.sql }, r.sql),
        h('td', { class: 'num', testid: 'rule-matched' }, fmtNum(r.metrics.matched)),
        h('td', { class: 'num' }, fmtNum(r.metrics.passed)),
        h('td', { class: 'num' }, fmtNum(r.metrics.failed)),
        h('td', { class: 'num' }, `${fmtNum(r.metrics.actions_ok)} / ${fmtNum(r.metrics.actions_failed)}`),
        h('td', { class: 'small error-text' }, r.metrics.last_error || ''),
        h('td', { class: 'row-actions' }, can('operator') ? toggleButton(r, () => ctx.refresh()) : null)))
        : emptyRow(9, 'No rules yet.'),
      'rules-table'));
  });
}

function ruleState(state) {
  const kinds = { running: 'ok', disabled: 'off', disabled_failing: 'bad', invalid: 'bad' };
  const text = { disabled_failing: 'stopped: failing' }[state] || state;
  return badge(text, kinds[state] || 'off');
}

function toggleButton(rule, after) {
  const enable = rule.state !== 'running';
  const b = button(enable ? 'Enable' : 'Disable', { class: 'btn btn-small', testid: 'rule-toggle' });
  b.addEventListener('click', () => busy(b, async () => {
    await api('POST', `/rules/${encodeURIComponent(rule.id)}/${enable ? 'enable' : 'disable'}`);
    toast(`Rule ${rule.id} ${enable ? 'enabled' : 'disabled'}`, 'ok');
    await after();
  }));
  return b;
}

const RULE_EXAMPLE = {
  sql: 'SELECT payload.temp AS t, clientid FROM "factory/+/temp" WHERE payload.temp > 80',
  actions: [{ type: 'republish', topic: 'alerts/${clientid}/hot', qos: 1 }],
};

async function ruleEditor(view, id, ctx) {
  const editing = id !== null;
  const idInput = h('input', { value: id || '', required: true, pattern: '[A-Za-z0-9_.\\-]{1,64}', placeholder: 'hot-machines', testid: 'rule-id', spellcheck: 'false', readonly: editing });
  const desc = h('input', { placeholder: 'What it is for', testid: 'rule-description' });
  const sql = h('textarea', { rows: 4, class: 'mono', required: true, testid: 'rule-sql', spellcheck: 'false' });
  const actions = h('textarea', { rows: 6, class: 'mono', testid: 'rule-actions', spellcheck: 'false' });
  const enabled = h('input', { type: 'checkbox', checked: true, testid: 'rule-enabled' });
  const save = h('button', { type: 'submit', class: 'btn btn-primary', testid: 'rule-save' }, editing ? 'Save' : 'Create');
  const del = editing && can('operator') ? button('Delete', { class: 'btn btn-danger', testid: 'rule-delete' }) : null;
  const formError = h('div', { testid: 'rule-error' });
  const sTopic = h('input', { value: 'factory/press-1/temp', testid: 'sample-topic', spellcheck: 'false' });
  const sPayload = h('textarea', { rows: 3, class: 'mono', testid: 'sample-payload', spellcheck: 'false' }, '{"temp": 85.5}');
  const sClient = h('input', { value: 'press-1', testid: 'sample-client', spellcheck: 'false' });
  const testBtn = button('Test on sample', { class: 'btn', testid: 'rule-test' });
  const testOut = h('pre', { class: 'mono output', testid: 'rule-test-output' }, 'Run the query on a sample message: no action is taken.');
  const metrics = h('div', { testid: 'rule-metrics' });
  const stateBox = h('span', { testid: 'rule-state' });

  const form = h('form', { class: 'card form-grid rule-form', testid: 'rule-form' },
    field('Id', idInput, editing ? null : '1 to 64 of A–Z a–z 0–9 _ - .'),
    field('Description', desc),
    h('div', { class: 'wide' }, field('Query (SQL)', sql, 'SELECT columns FROM "topic/filter" WHERE condition; payload.x reaches into JSON payloads.')),
    h('div', { class: 'wide' }, field('Actions (JSON array)', actions, 'republish {topic, payload?, qos?, retain?}, webhook {url, body?}, quarantine {client?, mode?, reason?}, forward {uplink}; ${column} in text is replaced by the output.')),
    h('label', { class: 'check' }, enabled, ' Enabled'),
    h('div', { class: 'form-buttons wide' }, can('operator') ? save : null, del, h('a', { href: '#/rules', class: 'btn btn-quiet' }, 'Back to rules')),
    h('div', { class: 'wide' }, formError));

  view.append(
    h('nav', { class: 'crumbs' }, h('a', { href: '#/rules' }, 'Rules'), ' / ', editing ? id : 'new'),
    pageHead(editing ? `Rule ${id}` : 'New rule', stateBox),
    h('div', { class: 'grid grid-main' },
      form,
      h('div', {},
        card('Test on a sample message', field('Topic', sTopic), field('Payload (JSON or text)', sPayload), field('Client id', sClient),
          h('div', { class: 'form-buttons' }, testBtn), testOut),
        editing ? card('Metrics', metrics) : null)));

  if (editing) {
    try {
      const r = await get(`/rules/${encodeURIComponent(id)}`);
      sql.value = r.sql;
      actions.value = JSON.stringify(r.actions || [], null, 2);
      desc.value = r.description || '';
      enabled.checked = r.enabled !== false;
    } catch (e) {
      put(formError, problem(e, 'This rule'));
    }
    ctx.every(2000, async () => {
      const r = await get(`/rules/${encodeURIComponent(id)}`);
      if (!ctx.alive()) return;
      const m = r.metrics || {};
      put(stateBox, ruleState(r.state), can('operator') ? toggleButton(r, () => ctx.refresh()) : null);
      put(metrics, h('div', { class: 'metric-grid' },
        metric('Matched', m.matched, 'metric-matched'), metric('Passed', m.passed, 'metric-passed'),
        metric('Failed', m.failed, 'metric-failed'), metric('Actions ok', m.actions_ok, 'metric-actions-ok'),
        metric('Actions failed', m.actions_failed, 'metric-actions-failed'),
        metric('Mean evaluation', m.eval_mean_ns != null ? `${fmtNum(m.eval_mean_ns / 1000)} µs` : '—', 'metric-eval')),
      m.last_error ? h('p', { class: 'notice notice-error' }, `Last error: ${m.last_error}`) : null);
    });
  } else {
    sql.value = RULE_EXAMPLE.sql;
    actions.value = JSON.stringify(RULE_EXAMPLE.actions, null, 2);
  }

  function readActions() {
    const text = actions.value.trim();
    if (!text) return [];
    const parsed = JSON.parse(text);
    if (!Array.isArray(parsed)) throw new Error('the actions must be a JSON array');
    return parsed;
  }

  testBtn.addEventListener('click', () => busy(testBtn, async () => {
    let payload = sPayload.value;
    try { payload = JSON.parse(sPayload.value); } catch { /* sent as text */ }
    const req = { sql: sql.value, topic: sTopic.value, payload };
    if (sClient.value) req.clientid = sClient.value;
    testOut.classList.remove('bad');
    try {
      const res = await api('POST', '/rules/test', req);
      testOut.textContent = res.output === null || res.output === undefined
        ? 'No output: the message does not match FROM, or WHERE is false.'
        : `Output:\n${JSON.stringify(res.output, null, 2)}`;
    } catch (e) {
      testOut.classList.add('bad');
      testOut.textContent = e.message;
    }
  }));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    put(formError);
    let acts;
    try {
      acts = readActions();
    } catch (e) {
      put(formError, h('p', { class: 'notice notice-error' }, `Actions: ${e.message}`));
      return;
    }
    const body = { sql: sql.value, actions: acts, enabled: enabled.checked, description: desc.value };
    save.disabled = true;
    try {
      const rid = idInput.value.trim();
      if (editing) await api('PUT', `/rules/${encodeURIComponent(rid)}`, body);
      else await api('POST', '/rules', { id: rid, ...body });
      toast(`Rule ${rid} saved`, 'ok');
      if (!editing) location.hash = `#/rules/${encodeURIComponent(rid)}`;
    } catch (e) {
      put(formError, h('p', { class: 'notice notice-error' }, e.message));
    } finally {
      save.disabled = false;
    }
  });
  del?.addEventListener('click', () => {
    if (!window.confirm(`Delete rule ${id}?`)) return;
    busy(del, async () => {
      await api('DELETE', `/rules/${encodeURIComponent(id)}`);
      toast(`Rule ${id} deleted`, 'ok');
      location.hash = '#/rules';
    });
  });
}

function metric(label, value, testid) {
  return h('div', { class: 'metric' }, h('div', { class: 'metric-value', testid }, typeof value === 'number' ? fmtNum(value) : value ?? '—'), h('div', { class: 'metric-label' }, label));
}

// ----- Quarantine and audit

async function quarantinePage(view, _param, ctx) {
  const addBtn = can('operator') ? button('Add entry', { class: 'btn btn-danger', testid: 'quarantine-add' }) : null;
  const showExpired = h('input', { type: 'checkbox' });
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const form = quarantineForm(null, async () => { form.hidden = true; await ctx.refresh(); });
  form.hidden = true;
  addBtn?.addEventListener('click', () => { form.hidden = !form.hidden; });
  view.append(pageHead('Quarantine', h('label', { class: 'check' }, showExpired, ' show expired'), addBtn), form, body,
    h('p', { class: 'muted small' }, 'A ban refuses the client at connect and disconnects it if it is connected; an isolated client may connect but reaches only $quarantine/<client-id>/#. ',
      h('a', { href: '#/audit' }, 'Audit log →')));
  showExpired.addEventListener('change', () => ctx.refresh());
  ctx.every(3000, async () => {
    let entries;
    try {
      entries = await get('/quarantine');
    } catch (e) {
      put(body, problem(e, 'The quarantine list'));
      return;
    }
    if (!ctx.alive()) return;
    const shown = showExpired.checked ? entries : activeEntries(entries);
    put(body, table(['#', 'Target', 'Mode', 'Reason', 'By', 'Since', 'Expires', ''],
      shown.length ? shown.map((e) => {
        const rel = can('operator') && !e.expired ? button('Release', { class: 'btn btn-small', testid: 'release-entry' }) : null;
        rel?.addEventListener('click', () => busy(rel, async () => {
          await api('DELETE', `/quarantine/${e.id}`);
          toast(`Released ${targetText(e.target)}`, 'ok');
          await ctx.refresh();
        }));
        return h('tr', { testid: 'quarantine-row', 'data-id': e.id, class: e.expired ? 'dim' : '' },
          h('td', {}, e.id),
          h('td', {}, e.target.kind === 'client_id' ? h('a', { href: `#/devices/${encodeURIComponent(e.target.value)}` }, targetText(e.target)) : targetText(e.target)),
          h('td', {}, badge(e.mode, e.mode === 'ban' ? 'bad' : 'warn')),
          h('td', {}, e.reason),
          h('td', {}, e.actor),
          h('td', {}, ago(e.created_ms)),
          h('td', {}, e.expired ? 'expired' : e.expires_ms ? fmtTime(e.expires_ms) : 'when released'),
          h('td', { class: 'row-actions' }, rel));
      }) : emptyRow(8, 'Nothing is quarantined.'),
      'quarantine-table'));
  });
}

async function auditPage(view, _param, ctx) {
  const limit = select([['100', 'Last 100'], ['500', 'Last 500'], ['2000', 'Last 2000']], { 'aria-label': 'How many' });
  const filter = h('input', { type: 'search', placeholder: 'Filter by actor, action, subject', testid: 'audit-filter', 'aria-label': 'Filter' });
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  view.append(pageHead('Audit log', filter, limit), body);
  let events = [];
  function render() {
    const q = filter.value.trim().toLowerCase();
    const shown = events.filter((e) => !q || `${e.actor} ${e.action} ${e.subject} ${e.detail || ''}`.toLowerCase().includes(q));
    put(body, table(['When', 'Who', 'What', 'On', 'Details'], shown.length ? shown.map((e) => h('tr', { testid: 'audit-row' },
      h('td', { class: 'nowrap' }, fmtTime(e.at_ms)), h('td', {}, e.actor), h('td', {}, h('code', {}, e.action)), h('td', {}, e.subject),
      h('td', { class: 'small' }, e.detail || ''))) : emptyRow(5, 'No events.'), 'audit-table'));
  }
  filter.addEventListener('input', render);
  limit.addEventListener('change', () => ctx.refresh());
  ctx.every(5000, async () => {
    try {
      events = await get('/audit', { limit: limit.value });
    } catch (e) {
      put(body, problem(e, 'The audit log'));
      return;
    }
    if (ctx.alive()) render();
  });
}

// ----- Mesh

async function meshPage(view, _param, ctx) {
  const drawing = h('div', { class: 'topology', testid: 'mesh-topology' });
  const note = h('div', {});
  const nodesBox = h('div', {});
  const uplinksBox = h('div', {});
  const stats = h('div', {});
  view.append(pageHead('Mesh'), note,
    h('div', { class: 'grid grid-main' }, card('Topology', drawing,
      h('div', { class: 'legend' },
        h('span', { class: 'legend-item' }, h('i', { class: 'line line-ok' }), 'linked'),
        h('span', { class: 'legend-item' }, h('i', { class: 'line line-via' }), 'reachable through others'),
        h('span', { class: 'legend-item' }, h('i', { class: 'line line-bad' }), 'unreachable'))), card('Traffic', stats)),
    card('Nodes', nodesBox), card('Uplinks to external brokers', uplinksBox));
  ctx.every(5000, async () => {
    let res;
    try {
      res = await meshNodes();
    } catch (e) {
      put(note, problem(e, 'The mesh'));
      return;
    }
    if (!ctx.alive()) return;
    put(note, res.note ? h('p', { class: 'notice' }, res.note) : '');
    put(drawing, topology(res.nodes));
    const m = res.mesh;
    put(stats, m ? dl([['Node', m.node_id], ['Listens on', (m.listen || []).join(', ') || '—'], ['Connects to', (m.connect || []).join(', ') || '—'],
      ['Sent', fmtNum(m.sent)], ['Received', fmtNum(m.received)], ['Dropped', fmtNum(m.dropped)], ['Malformed', fmtNum(m.malformed)]])
      : h('p', { class: 'muted' }, res.note ? 'No mesh traffic.' : 'See the node table.'));
    put(nodesBox, table(['Node', 'Reachable', 'Link', 'Round trip', 'Waiting in outbox', 'Acknowledged', 'Filters'],
      res.nodes.map((n) => h('tr', { testid: 'mesh-node' },
        h('td', { class: 'strong' }, n.node_id, n.local ? h('span', { class: 'muted small' }, ' (this node)') : null),
        h('td', {}, n.local ? '—' : n.reachable ? badge('reachable', 'ok') : badge('unreachable', 'bad')),
        h('td', {}, n.local ? '—' : n.linked === undefined ? '—' : n.linked ? 'direct' : 'through others'),
        h('td', { class: 'num' }, n.rtt_ms != null ? `${fmtNum(n.rtt_ms)} ms` : '—'),
        h('td', { class: 'num' }, n.backlog != null ? fmtNum(n.backlog) : '—'),
        h('td', { class: 'num' }, n.acknowledged != null ? fmtNum(n.acknowledged) : '—'),
        h('td', { class: 'small mono' }, (n.filters || []).join(' ')))), 'mesh-nodes'));
    try {
      const ups = await get('/uplinks');
      put(uplinksBox, ups.length ? table(['Uplink', 'Connected', 'Waiting', 'Details'], ups.map((u) => h('tr', {},
        h('td', { class: 'strong' }, u.name ?? u.id ?? '—'),
        h('td', {}, u.connected ? badge('connected', 'ok') : badge('disconnected', 'bad')),
        h('td', { class: 'num' }, fmtNum(u.backlog)),
        h('td', { class: 'small' }, u.last_error || Object.entries(u).filter(([k, v]) => typeof v === 'number' && k !== 'backlog').map(([k, v]) => `${k} ${fmtNum(v)}`).join(', '))))) : h('p', { class: 'muted' }, 'No uplinks.'));
    } catch (e) {
      put(uplinksBox, problem(e, 'Uplinks'));
    }
  });
}

/** This node in the middle, the others around it, a line to each: solid when linked directly. */
function topology(nodes) {
  const W = 640;
  const H = 380;
  const cx = W / 2;
  const cy = H / 2;
  const self = nodes.find((n) => n.local) || nodes[0];
  const others = nodes.filter((n) => n !== self);
  const r = Math.min(W, H) / 2 - 60;
  const pos = others.map((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(1, others.length);
    return { n, x: cx + r * 1.35 * Math.cos(a), y: cy + r * Math.sin(a) };
  });
  const root = svg('svg', { viewBox: `0 0 ${W} ${H}`, class: 'topology-svg', role: 'img', 'aria-label': 'Mesh topology' });
  for (const p of pos) {
    const kind = !p.n.reachable ? 'bad' : p.n.linked === false ? 'via' : 'ok';
    root.append(svg('line', { x1: cx, y1: cy, x2: p.x, y2: p.y, class: `edge edge-${kind}` }));
    if (p.n.rtt_ms != null && p.n.reachable) {
      root.append(svg('text', { x: (cx + p.x) / 2, y: (cy + p.y) / 2 - 6, class: 'edge-label', 'text-anchor': 'middle' }, `${fmtNum(p.n.rtt_ms)} ms`));
    }
  }
  const nodeShape = (x, y, n, local) => svg('g', { class: `mesh-node ${local ? 'local' : n.reachable ? 'up' : 'down'}`, 'data-node': n.node_id },
    svg('circle', { cx: x, cy: y, r: local ? 30 : 22 }),
    svg('text', { x, y: y + (local ? 48 : 40), 'text-anchor': 'middle', class: 'node-label' }, n.node_id),
    n.backlog ? svg('text', { x, y: y + (local ? 62 : 54), 'text-anchor': 'middle', class: 'node-sub' }, `${fmtNum(n.backlog)} waiting`) : null,
    svg('title', {}, `${n.node_id}${local ? ' (this node)' : n.reachable ? ' reachable' : ' unreachable'}`));
  for (const p of pos) root.append(nodeShape(p.x, p.y, p.n, false));
  root.append(nodeShape(cx, cy, self, true));
  return root;
}

// ----- Users and tokens

async function usersPage(view, _param, ctx) {
  const usersBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const tokensBox = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  const newToken = h('div', { testid: 'new-token' });
  const roles = [['viewer', 'viewer: reads'], ['operator', 'operator: reads and acts'], ['admin', 'admin: everything, users too']];

  const uName = h('input', { required: true, placeholder: 'name', testid: 'user-name', autocomplete: 'off' });
  const uPass = h('input', { required: true, type: 'password', placeholder: 'password', testid: 'user-password', autocomplete: 'new-password' });
  const uRole = select(roles, { testid: 'user-role' });
  const uForm = h('form', { class: 'toolbar' }, uName, uPass, uRole, h('button', { type: 'submit', class: 'btn btn-primary', testid: 'user-add' }, 'Add user'));
  const tName = h('input', { required: true, placeholder: 'token name, e.g. grafana', testid: 'token-name' });
  const tRole = select(roles, { testid: 'token-role' });
  const tForm = h('form', { class: 'toolbar' }, tName, tRole, h('button', { type: 'submit', class: 'btn btn-primary', testid: 'token-add' }, 'Create token'));
  const cur = h('input', { type: 'password', required: true, placeholder: 'current password', autocomplete: 'current-password' });
  const nw = h('input', { type: 'password', required: true, placeholder: 'new password', autocomplete: 'new-password' });
  const pForm = h('form', { class: 'toolbar' }, cur, nw, h('button', { type: 'submit', class: 'btn' }, 'Change my password'));

  view.append(pageHead('Users & tokens'),
    card('Users', can('admin') ? uForm : null, usersBox),
    card('API tokens', h('p', { class: 'muted small' }, 'For scripts and other programs: send Authorization: Bearer <token>. A token is shown once, when it is created.'),
      can('admin') ? tForm : null, newToken, tokensBox),
    session.auth ? card('My password', pForm) : null);

  uForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await busy(uForm.querySelector('button'), async () => {
      await api('POST', '/users', { name: uName.value.trim(), password: uPass.value, role: uRole.value });
      toast(`User ${uName.value.trim()} added`, 'ok');
      uForm.reset();
      await ctx.refresh();
    });
  });
  tForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await busy(tForm.querySelector('button'), async () => {
      const t = await api('POST', '/tokens', { name: tName.value.trim(), role: tRole.value });
      const value = h('code', { class: 'secret', testid: 'token-value' }, t.token);
      const copy = button('Copy', { class: 'btn btn-small', onclick: async () => {
        try { await navigator.clipboard.writeText(t.token); toast('Copied', 'ok'); } catch { toast('Select the token and copy it by hand', 'info'); }
      } });
      put(newToken, h('div', { class: 'notice notice-ok' }, h('p', {}, `Token ${t.name} (${t.role}); copy it now, it will not be shown again:`), h('div', { class: 'toolbar' }, value, copy)));
      tForm.reset();
      await ctx.refresh();
    });
  });
  pForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    await busy(pForm.querySelector('button'), async () => {
      await api('POST', '/me/password', { current: cur.value, new: nw.value });
      toast('Password changed', 'ok');
      pForm.reset();
    });
  });

  ctx.every(10000, async () => {
    const [users, tokens] = await Promise.allSettled([get('/users'), get('/tokens')]);
    if (!ctx.alive()) return;
    if (users.status === 'fulfilled') {
      put(usersBox, table(['User', 'Role', 'Created', ''], users.value.map((u) => {
        const role = select(roles.map(([v]) => [v, v]), { value: u.role, 'aria-label': `Role of ${u.name}`, disabled: !can('admin') });
        role.value = u.role;
        role.addEventListener('change', () => busy(role, async () => {
          await api('PATCH', `/users/${encodeURIComponent(u.name)}`, { role: role.value });
          toast(`${u.name} is now ${role.value}`, 'ok');
        }));
        const reset = button('Set password…', { class: 'btn btn-small' });
        reset.addEventListener('click', () => {
          const pw = window.prompt(`New password for ${u.name}`);
          if (pw) busy(reset, async () => { await api('PATCH', `/users/${encodeURIComponent(u.name)}`, { password: pw }); toast(`Password of ${u.name} changed`, 'ok'); });
        });
        const del = button('Delete', { class: 'btn btn-small btn-danger' });
        del.addEventListener('click', () => {
          if (window.confirm(`Delete user ${u.name}?`)) busy(del, async () => { await api('DELETE', `/users/${encodeURIComponent(u.name)}`); await ctx.refresh(); });
        });
        return h('tr', { testid: 'user-row', 'data-name': u.name }, h('td', { class: 'strong' }, u.name, u.name === session.user ? h('span', { class: 'muted small' }, ' (you)') : null),
          h('td', {}, role), h('td', {}, fmtTime(u.created)), h('td', { class: 'row-actions' }, can('admin') ? [reset, del] : null));
      }), 'users-table'));
    } else {
      put(usersBox, problem(users.reason, 'User management'));
    }
    if (tokens.status === 'fulfilled') {
      put(tokensBox, table(['Token', 'Role', 'Created', ''], tokens.value.length ? tokens.value.map((t) => {
        const del = button('Revoke', { class: 'btn btn-small btn-danger' });
        del.addEventListener('click', () => {
          if (window.confirm(`Revoke token ${t.name}?`)) busy(del, async () => { await api('DELETE', `/tokens/${encodeURIComponent(t.id)}`); await ctx.refresh(); });
        });
        return h('tr', { testid: 'token-row' }, h('td', { class: 'strong' }, t.name), h('td', {}, t.role), h('td', {}, fmtTime(t.created)), h('td', { class: 'row-actions' }, del));
      }) : emptyRow(4, 'No tokens.'), 'tokens-table'));
    } else {
      put(tokensBox, problem(tokens.reason, 'API tokens'));
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Login

function showLogin(message) {
  session.ready = false;
  leavePage();
  $('.session').hidden = true;
  $('#nav').hidden = true;
  document.body.classList.add('logged-out');
  const view = $('#view');
  const existing = $('[data-testid=login-form]', view);
  const errorBox = h('p', { class: 'notice notice-error', testid: 'login-error', role: 'alert' }, message || '');
  if (existing) {
    const old = $('[data-testid=login-error]', existing);
    old.replaceWith(errorBox);
    errorBox.hidden = !message;
    return;
  }
  errorBox.hidden = !message || message === 'not logged in';
  const user = h('input', { name: 'user', autocomplete: 'username', required: true, value: 'admin', testid: 'login-user' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true, testid: 'login-password' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary btn-wide', testid: 'login-submit' }, 'Sign in');
  const form = h('form', { class: 'login card', testid: 'login-form' },
    h('div', { class: 'login-brand' }, h('img', { src: 'favicon.svg', alt: '', width: 40, height: 40 }), h('div', {}, h('h1', {}, 'm2m console'), h('p', { class: 'muted' }, 'Sign in to this node'))),
    field('User', user), field('Password', password), errorBox, submit,
    h('p', { class: 'muted small' }, 'On first start the node prints the admin password on its standard output.'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    const err = $('[data-testid=login-error]', form);
    err.hidden = true;
    try {
      const me = await api('POST', '/login', { user: user.value.trim(), password: password.value });
      setSession(me);
      password.value = '';
      await enterApp();
    } catch (e) {
      err.textContent = e.missing ? `Logging in is not available on this node (${e.message}).` : e.message;
      err.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  put(view, h('div', { class: 'login-wrap' }, form));
  (password.closest('form') && user.value ? password : user).focus();
}

function setSession(me) {
  session.user = me.user ?? null;
  session.role = me.role ?? 'viewer';
  session.csrf = me.csrf ?? session.csrf;
  session.via = me.via ?? 'session';
}

async function logout() {
  try {
    await api('POST', '/logout');
  } catch (e) {
    if (e.status !== 401) toastError(e);
  }
  session.csrf = null;
  showLogin();
}

// ---------------------------------------------------------------------------------------------
// The router

const PAGES = {
  overview: overviewPage,
  devices: (view, param, ctx) => (param ? devicePage(view, param, ctx) : devicesPage(view, param, ctx)),
  topics: topicsPage,
  rules: rulesPage,
  quarantine: quarantinePage,
  audit: auditPage,
  mesh: meshPage,
  users: usersPage,
};

let current = null;

function leavePage() {
  if (!current) return;
  current.alive = false;
  for (const f of current.leave.splice(0)) {
    try { f(); } catch { /* keep leaving */ }
  }
  current = null;
}

async function route() {
  if (!session.ready) return;
  leavePage();
  const hash = location.hash.replace(/^#\/?/, '');
  if (!hash) {
    location.replace('#/overview');
    return;
  }
  const [name, ...rest] = hash.split('/');
  let param = rest.length ? rest.join('/') : null;
  try { param = param === null ? null : decodeURIComponent(param); } catch { /* keep as is */ }
  const page = PAGES[name];
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
  closeNav();
  const view = $('#view');
  put(view);
  view.dataset.page = name;
  window.scrollTo(0, 0);
  const me = { alive: true, leave: [], loops: [] };
  current = me;
  const ctx = {
    alive: () => me.alive,
    onLeave: (f) => me.leave.push(f),
    /** Runs `f` now and every `ms` after it finished, until the page is left. */
    every(ms, f) {
      let timer = null;
      const run = async () => {
        if (!me.alive) return;
        try { await f(); } catch (e) { if (me.alive && !(e instanceof ApiError && e.status === 401)) toastError(e); }
        if (me.alive) timer = setTimeout(run, ms);
      };
      me.loops.push(run);
      me.leave.push(() => clearTimeout(timer));
      run();
    },
    /** Runs every loop of the page now (after a change). */
    async refresh() { await Promise.all(me.loops.map((f) => f())); },
  };
  if (!page) {
    view.append(pageHead('Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/overview' }, 'Go to the overview.')));
    return;
  }
  if (name === 'users' && !can('admin')) {
    view.append(pageHead('Users & tokens'), h('p', { class: 'notice' }, 'Only an admin manages users and tokens.'));
    return;
  }
  try {
    await page(view, param, ctx);
  } catch (e) {
    if (me.alive && !(e instanceof ApiError && e.status === 401)) view.append(problem(e));
  }
}

async function enterApp() {
  session.ready = true;
  document.body.classList.remove('logged-out');
  $('#nav').hidden = false;
  $('.session').hidden = false;
  $('[data-testid=session-user]').textContent = session.user
    ? `${session.user} (${session.role})`
    : 'no login on this node';
  $('[data-testid=logout]').hidden = !session.auth;
  for (const a of document.querySelectorAll('#nav [data-admin]')) a.hidden = !can('admin');
  get('/node').then((n) => {
    nodeFacts = n;
    $('[data-testid=node-name]').textContent = n.node_id;
    document.title = `${n.node_id} · m2m console`;
  }).catch(() => {
    get('/mesh').then((m) => { $('[data-testid=node-name]').textContent = m.node_id; }).catch(() => {});
  });
  await route();
}

function closeNav() {
  document.body.classList.remove('nav-open');
  $('.nav-toggle').setAttribute('aria-expanded', 'false');
}

async function start() {
  $('.nav-toggle').addEventListener('click', () => {
    const open = document.body.classList.toggle('nav-open');
    $('.nav-toggle').setAttribute('aria-expanded', String(open));
  });
  $('[data-testid=logout]').addEventListener('click', logout);
  window.addEventListener('hashchange', route);
  try {
    const me = await api('GET', '/me');
    // The console always logs in: a node may admit loopback clients without one, but an
    // operator's actions are attributed to a user.
    if (me.via === 'loopback') {
      showLogin('');
      return;
    }
    setSession(me);
  } catch (e) {
    if (e instanceof ApiError && e.missing) {
      // A node without logins: its API decides who may read and change what.
      session.auth = false;
      setSession({ user: null, role: 'admin', via: 'none' });
    } else {
      showLogin(e.status === 401 ? '' : e.message);
      return;
    }
  }
  await enterApp();
}

start();
