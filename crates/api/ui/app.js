// Pacer dashboard: a client of Pacer's REST API, with the operator's own bearer token.
// The token lives in this tab's sessionStorage only; every request carries it in the
// Authorization header (no cookie), so the API's own role checks decide what succeeds.
// No framework, no build step: elements are built with `h()`, never from HTML strings.
'use strict';

(() => {
  const TOKEN_KEY = 'pacer.token';
  const main = document.getElementById('main');
  const flashBox = document.getElementById('flash');

  let token = sessionStorage.getItem(TOKEN_KEY);
  let me = null; // the answer of GET /api/v1/whoami
  let page = null; // the page on screen: { onEvent(event), dispose() }
  let renderSeq = 0;

  // ---------- elements ----------

  /** An element with attributes (`class`, `text`, `on*` handlers, anything else) and children. */
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') el.className = value;
      else if (key === 'text') el.textContent = value;
      else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  /** Replaces the children of `el` (skipping null, undefined and false, as `h` does). */
  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  function svg(tag, attrs) {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [key, value] of Object.entries(attrs || {})) el.setAttribute(key, String(value));
    return el;
  }

  const link = (href, text, attrs) => h('a', { href, ...attrs }, text);
  const jobHref = (name) => `#/jobs/${encodeURIComponent(name)}`;
  const taskHref = (id) => `#/tasks/${encodeURIComponent(id)}`;
  const enc = encodeURIComponent;

  // ---------- formatting ----------

  const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  const thisYear = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: 'numeric', minute: '2-digit', second: '2-digit' });

  /** A time in the browser's zone, with UTC on hover. */
  function time(iso) {
    if (!iso) return h('span', { class: 'muted' }, '—');
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return iso;
    const utc = d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z').replace('Z', ' UTC');
    const format = d.getFullYear() === new Date().getFullYear() ? thisYear : dateTime;
    return h('time', { datetime: iso, title: utc }, format.format(d));
  }

  function ago(iso) {
    if (!iso) return '—';
    const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
    if (s < 0) return 'in ' + span(-s * 1000);
    return span(s * 1000) + ' ago';
  }

  /** Milliseconds as `850 ms`, `12.3 s`, `4 m 10 s`, `2 h 5 m`. */
  function span(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
    if (ms < 1000) return `${Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} m ${Math.round(s % 60)} s`;
    const hrs = Math.floor(m / 60);
    if (hrs < 48) return `${hrs} h ${m % 60} m`;
    return `${Math.floor(hrs / 24)} d ${hrs % 24} h`;
  }

  function duration(start, end) {
    if (!start || !end) return null;
    return new Date(end).getTime() - new Date(start).getTime();
  }

  const TONE = {
    completed: 'ok', completed_with_errors: 'warn', failed: 'bad', cancelled: '',
    pending: 'info', processing: 'info',
    accepted: 'ok', already_running: 'ok', transient_error: 'warn', permanent_error: 'bad',
    abandoned: 'warn', interrupted: 'warn',
    critical: 'bad', warning: 'warn', info: 'info',
    open: 'bad', acked: 'warn', resolved: 'ok',
  };

  function badge(text, tone) {
    const t = tone === undefined ? TONE[text] : tone;
    return h('span', { class: 'badge' + (t ? ' ' + t : '') }, String(text).replaceAll('_', ' '));
  }

  function json(value) {
    return h('pre', { class: 'json', tabindex: '0' }, JSON.stringify(value, null, 2));
  }

  function facts(rows) {
    return h('dl', { class: 'facts' }, rows.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  }

  /** A table with a header row; `rows` are arrays of cells (a cell may be `[content, attrs]`). */
  function table(label, headers, rows, empty) {
    if (!rows.length) return h('p', { class: 'empty panel' }, empty || 'Nothing here.');
    const cls = (i) => headers[i].cls || null;
    return h('div', { class: 'scroll' },
      h('table', {},
        h('caption', {}, label),
        h('thead', {}, h('tr', {}, headers.map((c, i) => h('th', { scope: 'col', class: cls(i) }, c.label || c)))),
        h('tbody', {}, rows.map((r) => row(r, cls)))));
  }

  function row(cells, cls) {
    const tr = h('tr');
    cells.forEach((c, i) => {
      const [content, attrs] = Array.isArray(c) && c.length === 2 && c[1] && c[1].cell ? c : [c, {}];
      const cl = [cls(i), attrs.class].filter(Boolean).join(' ') || null;
      tr.append(h('td', { class: cl }, content));
    });
    return tr;
  }

  // ---------- the API ----------

  class ApiError extends Error {
    constructor(status, problem) {
      super(problem.detail || problem.title || `HTTP ${status}`);
      this.status = status;
      this.problem = problem;
    }
  }

  async function api(method, path, body) {
    const headers = { accept: 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), cache: 'no-store' });
    } catch (e) {
      throw new ApiError(0, { title: 'Network error', detail: `The node did not answer: ${e.message}` });
    }
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch { data = null; }
    if (!res.ok) {
      const problem = data && typeof data === 'object' ? data : { title: res.statusText, detail: text };
      if (!problem.status) problem.status = res.status;
      if (res.status === 401 && path !== '/api/v1/whoami') {
        signOut(problem);
      }
      throw new ApiError(res.status, problem);
    }
    return data;
  }

  const get = (path) => api('GET', path);
  const post = (path, body) => api('POST', path, body);

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : '';
  }

  /** Every page of a list, up to `max` items. */
  async function getAll(path, params, max) {
    const items = [];
    let cursor = null;
    do {
      const page = await get(path + query({ ...params, limit: 500, cursor }));
      items.push(...page.items);
      cursor = page.next_cursor;
    } while (cursor && items.length < max);
    return items;
  }

  /** Whether the signed-in token grants `role` (`admin` grants every role). */
  function may(role) {
    return !!me && (me.roles.includes(role) || me.roles.includes('admin'));
  }

  // ---------- problems, notices, confirmation ----------

  /** A problem+json answer as the API gave it: title, status, detail and field errors. */
  function problemBox(err) {
    const p = err instanceof ApiError ? err.problem : { title: 'Error', detail: String(err && err.message || err) };
    const status = p.status ? ` (${p.status})` : '';
    return h('div', { class: 'problem', role: 'alert' },
      h('strong', {}, (p.title || 'Refused') + status), ' ', p.detail || '',
      p.errors && p.errors.length ? h('ul', {}, p.errors.map((e) => h('li', {}, h('code', {}, e.field), ': ', e.message))) : null,
      p.type ? h('div', { class: 'small muted mono' }, p.type) : null);
  }

  function flash(content) {
    flashBox.replaceChildren();
    if (!content) return;
    const close = h('button', { type: 'button', class: 'flash-close', 'aria-label': 'Dismiss', onclick: () => flashBox.replaceChildren() }, '×');
    content.prepend(close);
    flashBox.append(content);
  }

  const notice = (content) => flash(h('div', { class: 'notice', role: 'status' }, content));

  const dialog = document.getElementById('confirm');

  /** Asks before a destructive action; resolves to true when confirmed. */
  function confirmAction(title, text, verb) {
    return new Promise((resolve) => {
      document.getElementById('confirm-title').textContent = title;
      document.getElementById('confirm-text').textContent = text;
      const yes = document.getElementById('confirm-yes');
      const no = document.getElementById('confirm-no');
      yes.textContent = verb || 'Confirm';
      const done = (answer) => {
        yes.removeEventListener('click', onYes);
        no.removeEventListener('click', onNo);
        dialog.removeEventListener('cancel', onNo);
        if (dialog.open) dialog.close();
        resolve(answer);
      };
      const onYes = () => done(true);
      const onNo = () => done(false);
      yes.addEventListener('click', onYes);
      no.addEventListener('click', onNo);
      dialog.addEventListener('cancel', onNo);
      dialog.showModal();
      no.focus();
    });
  }

  /**
   * A button for one API action, shown only when the caller's role allows it. It asks first when
   * `confirm` is set, shows the API's problem when refused, and calls `then` with the answer.
   */
  function action(label, opts) {
    if (opts.role && !may(opts.role)) return null;
    const button = h('button', { type: 'button', class: opts.danger ? 'danger' : null, 'data-action': opts.id || null });
    button.textContent = label;
    button.addEventListener('click', async () => {
      if (opts.confirm && !(await confirmAction(opts.confirm.title, opts.confirm.text, label))) return;
      button.disabled = true;
      try {
        const answer = await opts.run();
        flash(null);
        if (opts.done) notice(typeof opts.done === 'function' ? opts.done(answer) : opts.done);
        if (opts.then) await opts.then(answer);
      } catch (err) {
        flash(problemBox(err));
      } finally {
        button.disabled = false;
      }
    });
    return button;
  }

  // ---------- the live event stream ----------

  // One stream per tab, read with fetch (EventSource cannot send a bearer header). It resumes
  // with Last-Event-ID after any drop, so a page misses nothing while reconnecting.
  const live = { id: null, controller: null, wanted: false, wake: null };
  const liveBadge = document.getElementById('live');

  function setLive(state) {
    liveBadge.className = 'live ' + (state === 'on' ? 'on' : 'off');
    liveBadge.textContent = state === 'on' ? 'live' : state === 'off' ? 'reconnecting…' : 'connecting…';
    liveBadge.dataset.state = state;
  }

  function startStream() {
    if (live.wanted || !may('operator')) return;
    live.wanted = true;
    streamLoop();
  }

  function stopStream() {
    live.wanted = false;
    live.id = null;
    if (live.controller) live.controller.abort();
  }

  async function streamLoop() {
    let delay = 500;
    while (live.wanted) {
      const controller = new AbortController();
      live.controller = controller;
      setLive(live.id ? 'off' : 'connecting');
      try {
        const headers = { authorization: `Bearer ${token}`, accept: 'text/event-stream' };
        if (live.id) headers['last-event-id'] = live.id;
        const res = await fetch('/api/v1/events', { headers, signal: controller.signal, cache: 'no-store' });
        if (res.status === 401) { signOut(await res.json().catch(() => null)); return; }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        setLive('on');
        delay = 500;
        await readEvents(res.body);
      } catch (err) {
        if (controller.signal.aborted && !live.wanted) return;
      }
      if (!live.wanted) return;
      setLive('off');
      await new Promise((r) => {
        const timer = setTimeout(r, delay);
        live.wake = () => { clearTimeout(timer); r(); };
      });
      live.wake = null;
      delay = Math.min(delay * 2, 10000);
    }
  }

  // A stream can outlive the network it was opened on without noticing for a long while: drop
  // it when the browser goes offline, and resume (from the last event seen) once it is back.
  window.addEventListener('offline', () => {
    if (live.controller) live.controller.abort();
  });
  window.addEventListener('online', () => {
    if (live.wake) live.wake();
  });

  async function readEvents(body) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let event = { data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let nl;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        let line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.endsWith('\r')) line = line.slice(0, -1);
        if (line === '') {
          // An event ends: its id (even alone, as the stream's first line) is where to resume.
          if (event.id !== undefined) live.id = event.id;
          if (event.data.length) deliver(event);
          event = { data: [] };
          continue;
        }
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        let text = colon < 0 ? '' : line.slice(colon + 1);
        if (text.startsWith(' ')) text = text.slice(1);
        if (field === 'id') event.id = text;
        else if (field === 'event') event.kind = text;
        else if (field === 'data') event.data.push(text);
      }
    }
  }

  function deliver(raw) {
    let event;
    try { event = JSON.parse(raw.data.join('\n')); } catch { return; }
    if (page && page.onEvent) {
      try { page.onEvent(event); } catch (err) { console.error(err); }
    }
  }

  /**
   * Calls `fn` `wait` ms after the first of a burst of calls, once for the whole burst: a page
   * catches up at most that often however busy the cluster, and never falls behind for good.
   */
  function coalesce(fn, wait) {
    let timer = null;
    const coalesced = () => {
      if (timer === null) timer = setTimeout(() => { timer = null; fn(); }, wait);
    };
    coalesced.cancel = () => { clearTimeout(timer); timer = null; };
    return coalesced;
  }

  // ---------- sign-in and the frame ----------

  async function signIn(text) {
    const candidate = text.trim().replace(/^bearer\s+/i, '');
    if (!candidate) throw new ApiError(0, { title: 'No token', detail: 'Paste a token first.' });
    token = candidate;
    try {
      me = await get('/api/v1/whoami');
    } catch (err) {
      token = null;
      throw err;
    }
    sessionStorage.setItem(TOKEN_KEY, token);
    frame();
  }

  let farewell = null; // shown on the sign-in page after a sign-out

  function signOut(problem, message) {
    farewell = message || null;
    stopStream();
    token = null;
    me = null;
    sessionStorage.removeItem(TOKEN_KEY);
    frame();
    if (problem) flash(problemBox(new ApiError(problem.status || 401, problem)));
    if (location.hash !== '#/signin') location.hash = '#/signin';
    else route();
  }

  function frame() {
    const signedIn = !!me;
    document.getElementById('nav').hidden = !signedIn;
    document.getElementById('who').hidden = !signedIn;
    for (const a of document.querySelectorAll('#nav a[data-role]')) a.hidden = !may(a.dataset.role);
    document.getElementById('who-name').textContent = signedIn ? `${me.subject} (${me.roles.join(', ') || 'no roles'})` : '';
    liveBadge.hidden = !may('operator');
    if (signedIn) startStream();
  }

  document.getElementById('signout').addEventListener('click', () => {
    signOut(null, 'Signed out. This tab has forgotten the token.');
  });

  function signInPage() {
    const area = h('textarea', { id: 'token', name: 'token', autocomplete: 'off', spellcheck: 'false', required: true, 'aria-describedby': 'token-help' });
    const error = h('div');
    const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
    const form = h('form', { class: 'panel', 'aria-labelledby': 'signin-title' },
      h('label', { for: 'token' }, 'API token'),
      area,
      h('p', { id: 'token-help', class: 'small muted' },
        'A JWT from your identity provider, or for a development node: ',
        h('code', {}, 'pacer token --role operator --sub your-name'),
        '. It is kept in this tab only (sessionStorage) and sent as a bearer header.'),
      error,
      h('div', { class: 'actions' }, button));
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      button.disabled = true;
      error.replaceChildren();
      try {
        await signIn(area.value);
        flash(null);
        const back = sessionStorage.getItem('pacer.after-signin');
        sessionStorage.removeItem('pacer.after-signin');
        location.hash = back && back !== '#/signin' ? back : '#/';
      } catch (err) {
        error.append(problemBox(err));
      } finally {
        button.disabled = false;
      }
    });
    return {
      title: 'Sign in',
      node: h('section', { class: 'signin' },
        farewell ? h('div', { class: 'notice', role: 'status', id: 'farewell' }, farewell) : null,
        h('h1', { id: 'signin-title' }, 'Sign in to Pacer'),
        h('p', {}, 'Paste a token to see and operate this cluster. What you can do follows the token’s roles: ',
          h('strong', {}, 'operator'), ' reads, runs, pauses, cancels and retries; ',
          h('strong', {}, 'admin'), ' may everything; ', h('strong', {}, 'upstream'), ' creates tasks.'),
        form),
      focus: area,
    };
  }

  // ---------- shared pieces ----------

  /** Loads `load()` into a fresh container, showing its problem when refused. */
  function section(title, load, opts) {
    const body = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
    const el = h('section', { 'aria-labelledby': opts && opts.id }, title ? h('h2', { id: opts && opts.id }, title) : null, body);
    let latest = 0;
    const refresh = async () => {
      const seq = ++latest;
      try {
        const content = await load();
        if (seq !== latest) return;
        fill(body, ...[content].flat().filter(Boolean));
      } catch (err) {
        fill(body, problemBox(err));
      } finally {
        body.removeAttribute('aria-busy');
      }
    };
    refresh();
    return { el, refresh };
  }

  /** A list with cursor paging: `fetchPage(cursor)` returns `{items, next_cursor}`. */
  function pagedList(render, fetchPage) {
    const box = h('div');
    const cursors = [null];
    let at = 0;
    let latest = 0;
    const load = async () => {
      const seq = ++latest;
      box.setAttribute('aria-busy', 'true');
      try {
        const pageData = await fetchPage(cursors[at]);
        if (seq !== latest) return;
        const prev = h('button', { type: 'button', disabled: at === 0 ? true : null, onclick: () => { at -= 1; load(); } }, 'Newer');
        const next = h('button', {
          type: 'button', disabled: pageData.next_cursor ? null : true,
          onclick: () => { cursors[at + 1] = pageData.next_cursor; at += 1; load(); },
        }, 'Older');
        fill(box, render(pageData.items),
          h('nav', { class: 'pager', 'aria-label': 'Pages' }, prev, next, h('span', { class: 'small muted' }, `page ${at + 1}`)));
      } catch (err) {
        fill(box, problemBox(err));
      } finally {
        box.removeAttribute('aria-busy');
      }
    };
    const reset = () => { cursors.length = 1; at = 0; return load(); };
    load();
    return { el: box, reload: load, reset };
  }

  function taskRows(tasks) {
    return tasks.map((t) => [
      link(taskHref(t.id), t.id.slice(0, 8) + '…' + t.id.slice(-4), { class: 'mono', title: t.id }),
      badge(t.state),
      [t.overdue ? badge('overdue', 'warn') : null],
      [origin(t.origin), { cell: true, class: 'opt' }],
      time(t.created_at),
      span(duration(t.started_at, t.finished_at)),
      [String(t.attempt), { cell: true, class: 'num opt' }],
    ]);
  }

  const TASK_HEADERS = ['Task', 'State', 'Flags', { label: 'Origin', cls: 'opt' }, 'Created', 'Duration', { label: 'Attempts', cls: 'opt' }];

  function origin(o) {
    if (!o) return '—';
    const parts = [o.kind];
    if (o.kind === 'retry' && o.task_id) return ['retry of ', link(taskHref(o.task_id), o.task_id.slice(0, 8) + '…', { class: 'mono' })];
    if (o.kind === 'message' && o.type) parts.push(o.type);
    if (o.actor) parts.push(`by ${o.actor}`);
    return parts.join(' · ');
  }

  /** Outcome bars of recent runs: height is the duration, colour the outcome (oldest left). */
  function sparkline(tasks) {
    const runs = tasks.slice().reverse();
    const width = 120;
    const height = 26;
    const el = svg('svg', { class: 'spark', viewBox: `0 0 ${width} ${height}`, role: 'img', preserveAspectRatio: 'none' });
    const counts = {};
    runs.forEach((t) => { counts[t.state] = (counts[t.state] || 0) + 1; });
    const summary = Object.entries(counts).map(([s, n]) => `${n} ${s.replaceAll('_', ' ')}`).join(', ');
    el.setAttribute('aria-label', runs.length ? `Last ${runs.length} runs: ${summary}` : 'No runs yet');
    const title = svg('title');
    title.textContent = el.getAttribute('aria-label');
    el.append(title);
    const durations = runs.map((t) => duration(t.started_at, t.finished_at) ?? 0);
    const max = Math.max(1, ...durations);
    const slot = width / 20;
    runs.forEach((t, i) => {
      const d = durations[i];
      const bar = Math.max(3, Math.round((d / max) * (height - 2)));
      const rect = svg('rect', { x: (i * slot + 1).toFixed(1), y: height - bar, width: (slot - 2).toFixed(1), height: bar, rx: 1 });
      const tone = TONE[t.state];
      if (tone) rect.setAttribute('class', tone);
      const tip = svg('title');
      tip.textContent = `${t.state.replaceAll('_', ' ')}, ${span(duration(t.started_at, t.finished_at))}, ${new Date(t.created_at).toLocaleString()}`;
      rect.append(tip);
      el.append(rect);
    });
    return el;
  }

  /** Runs `fn` over `items` with at most `limit` at a time. */
  function queue(limit) {
    const waiting = [];
    let running = 0;
    const pump = () => {
      while (running < limit && waiting.length) {
        const job = waiting.shift();
        running += 1;
        job().finally(() => { running -= 1; pump(); });
      }
    };
    return (job) => { waiting.push(job); pump(); };
  }

  // ---------- overview ----------

  function overviewPage() {
    const started = performance.now();
    const cluster = section('Cluster', async () => clusterCards(await get('/api/v1/cluster'), await get('/api/v1/scheduler')), { id: 'h-cluster' });
    const alerts = section('Open alerts', async () => alertCounts(await getAll('/api/v1/alerts', { state: 'open' }, 2000)), { id: 'h-alerts' });
    const top = h('div', { class: 'cards' }, cluster.el, alerts.el);
    cluster.el.classList.add('panel', 'card');
    alerts.el.classList.add('panel', 'card');

    const search = h('input', { type: 'search', id: 'job-search', placeholder: 'name, text or label=value', autocomplete: 'off' });
    const labelSelect = h('select', { id: 'job-label' }, h('option', { value: '' }, 'any label'));
    const stateSelect = h('select', { id: 'job-state' },
      h('option', { value: '' }, 'any'), h('option', { value: 'active' }, 'active'), h('option', { value: 'paused' }, 'paused'));
    const count = h('span', { class: 'small muted', role: 'status', 'aria-live': 'polite' });
    const tbody = h('tbody');
    const jobsBox = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading jobs…'));
    const rows = new Map(); // job name -> { tr, job, cells, loaded }
    const fetchQueue = queue(4);

    const observer = new IntersectionObserver((entries) => {
      for (const entry of entries) {
        if (!entry.isIntersecting) continue;
        const r = rows.get(entry.target.dataset.job);
        if (r && !r.loaded) { r.loaded = true; fetchQueue(() => loadSummary(r)); }
      }
    }, { rootMargin: '200px' });

    async function loadSummary(r) {
      const name = r.job.name;
      try {
        const [summary, recent] = await Promise.all([
          get(`/api/v1/jobs/${enc(name)}/summary`),
          get(`/api/v1/tasks${query({ job: name, limit: 20 })}`),
        ]);
        fillRow(r, summary, recent.items);
      } catch (err) {
        fill(r.cells.last, h('span', { class: 'small', title: err.message }, `unavailable (${err.status || 'error'})`));
      }
    }

    function fillRow(r, s, recent) {
      r.paused = s.paused;
      fill(r.cells.state, s.paused ? badge('paused', 'warn') : badge('active', 'ok'));
      const last = s.last_run;
      fill(r.cells.last, ...(last ? [badge(last.state), ' ', time(last.created_at),
        h('div', { class: 'small muted' }, last.duration_ms !== null && last.duration_ms !== undefined ? `took ${span(last.duration_ms)}` : 'running')] : [h('span', { class: 'muted' }, 'never run')]));
      const fire = s.next_fire_times[0];
      fill(r.cells.next, fire ? time(fire.at) : h('span', { class: 'muted' }, s.paused ? 'paused' : 'none'));
      const rate = s.recent.success_rate;
      fill(r.cells.rate, rate === null || rate === undefined ? h('span', { class: 'muted' }, '—')
        : h('span', { title: `${s.recent.completed} of ${s.recent.finished} finished runs completed (last ${s.recent.window})` }, `${Math.round(rate * 1000) / 10}%`));
      fill(r.cells.chart, sparkline(recent));
      const open = s.open.pending + s.open.processing;
      fill(r.cells.open, open ? link(`${jobHref(r.job.name)}?state=pending,processing`, `${s.open.pending} pending · ${s.open.processing} processing`) : h('span', { class: 'muted' }, '0'));
      r.tr.dataset.paused = s.paused ? 'true' : 'false';
    }

    function jobRow(job) {
      const cells = {
        state: h('td', {}, job.paused ? badge('paused', 'warn') : badge('active', 'ok')),
        last: h('td', {}, h('span', { class: 'muted' }, '…')),
        next: h('td', { class: 'opt' }),
        rate: h('td', { class: 'num' }),
        chart: h('td', { class: 'opt' }),
        open: h('td', { class: 'opt' }),
      };
      const labels = Object.entries(job.labels || {}).map(([k, v]) => `${k}=${v}`);
      const tr = h('tr', { 'data-job': job.name },
        h('th', { scope: 'row' }, link(jobHref(job.name), job.name),
          job.description ? h('div', { class: 'small muted' }, job.description) : null,
          labels.length ? h('div', { class: 'small' }, labels.map((l) => [badge(l, ''), ' '])) : null),
        cells.state, cells.last, cells.next, cells.rate, cells.chart, cells.open);
      const text = [job.name, job.description || '', ...labels].join(' ').toLowerCase();
      return { tr, job, cells, loaded: false, labels, text, paused: job.paused };
    }

    function applyFilter() {
      const terms = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      const label = labelSelect.value;
      const state = stateSelect.value;
      let shown = 0;
      for (const r of rows.values()) {
        const match = terms.every((t) => r.text.includes(t))
          && (!label || r.labels.includes(label))
          && (!state || (state === 'paused') === r.paused);
        r.tr.hidden = !match;
        if (match) shown += 1;
      }
      count.textContent = `${shown} of ${rows.size} jobs`;
    }

    for (const el of [search, labelSelect, stateSelect]) el.addEventListener('input', applyFilter);

    (async () => {
      try {
        const jobs = await getAll('/api/v1/jobs', {}, 100000);
        const labels = new Set();
        const fragment = document.createDocumentFragment();
        for (const job of jobs) {
          const r = jobRow(job);
          rows.set(job.name, r);
          r.labels.forEach((l) => labels.add(l));
          fragment.append(r.tr);
        }
        tbody.append(fragment);
        [...labels].sort().forEach((l) => labelSelect.append(h('option', { value: l }, l)));
        fill(jobsBox, jobs.length ? h('div', { class: 'scroll' },
          h('table', { id: 'jobs' },
            h('caption', {}, 'Every job; the last-run, next-fire and recent-run columns load as rows come into view.'),
            h('thead', {}, h('tr', {}, ['Job', 'State', 'Last run', { l: 'Next fire', o: 1 }, 'Success', { l: 'Recent runs', o: 1 }, { l: 'Open tasks', o: 1 }]
              .map((c) => h('th', { scope: 'col', class: c.o ? 'opt' : null }, c.l || c)))),
            tbody))
          : h('p', { class: 'empty panel' }, 'No jobs yet. An admin defines them with PUT /api/v1/jobs/{name}.'));
        applyFilter();
        for (const r of rows.values()) observer.observe(r.tr);
        // How long the overview took to show every job (once laid out and painted: the frame
        // after the rows went in), for the browser test to print.
        requestAnimationFrame(() => setTimeout(() => {
          const rendered = performance.now() - started;
          performance.mark('pacer:overview-rendered', { detail: { jobs: jobs.length, ms: rendered } });
        }, 0));
      } catch (err) {
        fill(jobsBox, problemBox(err));
      } finally {
        jobsBox.removeAttribute('aria-busy');
      }
    })();

    const refreshJob = new Map();
    const refreshCluster = coalesce(() => cluster.refresh(), 300);
    const refreshAlerts = coalesce(() => alerts.refresh(), 300);
    const heartbeat = setInterval(() => cluster.refresh(), 10000);

    return {
      title: 'Overview',
      node: h('div', {},
        h('h1', {}, 'Overview'),
        top,
        h('section', { 'aria-labelledby': 'h-jobs' },
          h('h2', { id: 'h-jobs' }, 'Jobs'),
          h('div', { class: 'toolbar', role: 'search' },
            h('label', {}, 'Search', search), h('label', {}, 'Label', labelSelect), h('label', {}, 'State', stateSelect), count),
          jobsBox)),
      onEvent(event) {
        if (event.kind.startsWith('leader.')) refreshCluster();
        if (event.kind.startsWith('alert.')) refreshAlerts();
        const r = event.job && rows.get(event.job);
        if (r && r.loaded) {
          if (!refreshJob.has(event.job)) refreshJob.set(event.job, coalesce(() => fetchQueue(() => loadSummary(r)), 1000));
          refreshJob.get(event.job)();
        }
      },
      dispose() { observer.disconnect(); clearInterval(heartbeat); for (const d of refreshJob.values()) d.cancel(); },
    };
  }

  function clusterCards(c, scheduler) {
    const alive = c.nodes.filter((n) => n.alive);
    return [
      facts([
        ['Leader', c.leader && c.leader.node ? h('span', { id: 'leader' }, c.leader.node) : badge('none', 'bad')],
        ['Term', String(c.term)],
        ['Scheduler', scheduler.paused ? badge('standby', 'warn') : badge('running', 'ok')],
        ['Nodes alive', `${alive.length} of ${c.nodes.length}`],
      ]),
      h('ul', { class: 'small' }, c.nodes.map((n) => h('li', {},
        n.alive ? badge('alive', 'ok') : badge('dead', 'bad'), ' ', h('strong', {}, n.id), ' ',
        h('span', { class: 'muted' }, 'heartbeat '), h('span', { title: n.last_heartbeat_at }, ago(n.last_heartbeat_at))))),
      link('#/cluster', 'Cluster details'),
    ];
  }

  function alertCounts(alerts) {
    const by = { critical: 0, warning: 0, info: 0 };
    alerts.forEach((a) => { by[a.severity] = (by[a.severity] || 0) + 1; });
    return [
      h('div', { class: 'big' }, String(alerts.length)),
      h('p', { id: 'alert-counts' }, ['critical', 'warning', 'info'].map((s) => [badge(`${by[s]} ${s}`, by[s] ? TONE[s] : ''), ' '])),
      link('#/alerts', 'See alerts'),
    ];
  }

  // ---------- job ----------

  function jobPage(name, params) {
    const path = `/api/v1/jobs/${enc(name)}`;
    const heading = h('h1', {}, name);
    const header = h('div');
    let job = null;

    const actions = h('div', { class: 'actions', role: 'group', 'aria-label': 'Job actions' });
    const summaryBox = h('div');
    const definition = h('div');

    async function loadJob() {
      try {
        job = await get(path);
        fill(heading, name, ' ', job.paused ? badge('paused', 'warn') : badge('active', 'ok'));
        fill(header, 
          job.description ? h('p', { class: 'sub' }, job.description) : null,
          Object.keys(job.labels || {}).length ? h('p', {}, Object.entries(job.labels).map(([k, v]) => [badge(`${k}=${v}`, ''), ' '])) : null);
        fill(definition, jobFacts(job), h('details', {}, h('summary', {}, 'Raw JSON'), json(job)));
      } catch (err) {
        job = null;
        fill(definition, problemBox(err));
      }
      renderActions();
    }

    function renderActions() {
      const done = () => { loadJob(); if (runs) { loadSummary(); runs.reset(); } };
      const paused = job && job.paused;
      fill(actions, ...[
        action('Run now', { id: 'run', role: 'operator', run: () => post(`${path}/run`, {}), done: (t) => ['Started task ', link(taskHref(t.id), t.id, { class: 'mono' }), '.'], then: done }),
        job && !paused ? action('Pause job', {
          id: 'pause', role: 'operator', danger: true,
          confirm: { title: `Pause ${name}?`, text: 'Its triggers stop firing and messages stop creating tasks until it is resumed. Open tasks continue.' },
          run: () => post(`${path}/pause`), done: `Paused ${name}.`, then: done,
        }) : null,
        job && paused ? action('Resume job', { id: 'resume', role: 'operator', run: () => post(`${path}/resume`), done: `Resumed ${name}.`, then: done }) : null,
        action('Retry failed', {
          id: 'retry-failed', role: 'operator',
          confirm: { title: `Retry the failed tasks of ${name}?`, text: 'Each failed task gets a new task linked to it.' },
          run: () => post(`${path}/retry-failed`), done: (r) => `Retried ${r.retried.length} failed task(s)${r.more ? '; more remain' : ''}.`, then: done,
        }),
        may('upstream') ? createTaskForm(name, done) : null,
      ].filter(Boolean));
      if (!actions.childElementCount) actions.append(h('p', { class: 'small muted' }, 'Your token’s roles allow no actions here.'));
    }

    async function loadSummary() {
      try {
        const s = await get(`${path}/summary`);
        const r = s.recent;
        fill(summaryBox, h('div', { class: 'cards' },
          h('div', { class: 'panel' }, h('div', { class: 'small muted' }, 'Success rate'), h('div', { class: 'big' }, r.success_rate === null ? '—' : `${Math.round(r.success_rate * 1000) / 10}%`),
            h('div', { class: 'small muted' }, `${r.completed} completed, ${r.completed_with_errors} with errors, ${r.failed} failed, ${r.cancelled} cancelled of the last ${r.window}`)),
          h('div', { class: 'panel' }, h('div', { class: 'small muted' }, 'Duration p50 / p95'), h('div', { class: 'big' }, `${span(r.p50_ms)} / ${span(r.p95_ms)}`)),
          h('div', { class: 'panel' }, h('div', { class: 'small muted' }, 'Open tasks'), h('div', { class: 'big', id: 'open-tasks' }, `${s.open.pending + s.open.processing}`),
            h('div', { class: 'small muted' }, `${s.open.pending} pending, ${s.open.processing} processing`)),
          h('div', { class: 'panel' }, h('div', { class: 'small muted' }, 'Last run'),
            s.last_run ? [h('div', {}, badge(s.last_run.state), ' ', link(taskHref(s.last_run.task), 'open')), h('div', { class: 'small' }, time(s.last_run.created_at))] : h('div', { class: 'muted' }, 'never'),
            s.open_alerts.total ? h('div', {}, link(`#/alerts?job=${enc(name)}`, `${s.open_alerts.total} open alert(s)`)) : null)));
      } catch (err) {
        fill(summaryBox, problemBox(err));
      }
    }

    const triggers = !may('operator') ? null : section('Triggers', async () => {
      const list = await getAll(`${path}/triggers`, {}, 1000);
      return table('Triggers of this job, with their next fire times.',
        ['Schedule', 'Next fire', { label: 'Last fired', cls: 'opt' }, 'Misfire', { label: 'Skipped', cls: 'opt' }, 'State', ''],
        list.map((t) => [
          h('div', {}, schedule(t), t.description ? h('div', { class: 'small muted' }, t.description) : null),
          t.paused ? h('span', { class: 'muted' }, 'paused') : h('div', {}, time(t.next_fire_at), firePreview(`${path}/triggers/${t.id}/preview`)),
          [time(t.last_fired_at), { cell: true, class: 'opt' }],
          h('span', { title: `grace ${t.misfire_grace}, catch-up limit ${t.catch_up_limit}` }, t.misfire.replaceAll('_', ' '), h('div', { class: 'small muted' }, `grace ${t.misfire_grace}`)),
          [String(t.skipped), { cell: true, class: 'num opt' }],
          t.paused ? badge('paused', 'warn') : badge('active', 'ok'),
          t.paused
            ? action('Resume', { id: 'resume-trigger', role: 'operator', run: () => post(`${path}/triggers/${t.id}/resume`), done: 'Trigger resumed.', then: () => triggers.refresh() })
            : action('Pause', {
              id: 'pause-trigger', role: 'operator', danger: true,
              confirm: { title: 'Pause this trigger?', text: 'It stops firing until resumed; occurrences meanwhile follow its misfire policy.' },
              run: () => post(`${path}/triggers/${t.id}/pause`), done: 'Trigger paused.', then: () => triggers.refresh(),
            }),
        ]), 'No triggers: this job runs on demand, from messages or from upstream calls.');
    }, { id: 'h-triggers' });

    const stateFilter = h('select', { id: 'runs-state' }, ['', 'pending', 'processing', 'pending,processing', 'completed', 'completed_with_errors', 'failed', 'cancelled']
      .map((s) => h('option', { value: s, selected: (params.get('state') || '') === s ? true : null }, s ? s.replaceAll('_', ' ').replace(',', ' or ') : 'any state')));
    const after = h('input', { type: 'datetime-local', id: 'runs-after' });
    const before = h('input', { type: 'datetime-local', id: 'runs-before' });
    const isoOf = (input) => (input.value ? new Date(input.value).toISOString() : undefined);
    const runs = !may('operator') ? null : pagedList(
      (items) => table('Runs of this job, newest first.', TASK_HEADERS, taskRows(items), 'No runs match.'),
      (cursor) => get(`/api/v1/tasks${query({ job: name, state: stateFilter.value, created_after: isoOf(after), created_before: isoOf(before), limit: 25, cursor })}`));
    for (const el of [stateFilter, after, before]) el.addEventListener('change', () => runs.reset());

    const skips = !may('operator') ? null : section('Skips', async () => {
      const list = await get(`/api/v1/skips${query({ job: name, limit: 20 })}`);
      return skipTable(list.items, 'The latest skipped occurrences of this job.');
    }, { id: 'h-skips' });

    loadJob();
    if (!may('operator')) {
      // Reading a job needs the operator role: show what this token may do, and the API's
      // refusal of the rest once (from loading the definition), not once per section.
      return {
        title: name,
        node: h('div', {}, heading, actions, h('section', { 'aria-labelledby': 'h-def' }, h('h2', { id: 'h-def' }, 'Definition'), definition)),
      };
    }
    loadSummary();

    const refresh = coalesce(() => { loadSummary(); runs.reload(); }, 400);
    return {
      title: name,
      node: h('div', {},
        h('p', { class: 'small' }, link('#/', 'Overview'), ' / job'),
        heading, header, actions, summaryBox,
        h('section', { 'aria-labelledby': 'h-def' }, h('h2', { id: 'h-def' }, 'Definition'), definition),
        triggers.el,
        h('section', { 'aria-labelledby': 'h-runs' }, h('h2', { id: 'h-runs' }, 'Runs'),
          h('div', { class: 'toolbar' }, h('label', {}, 'State', stateFilter), h('label', {}, 'Created after', after), h('label', {}, 'Created before', before)),
          runs.el),
        skips.el),
      onEvent(event) {
        if (event.job === name) refresh();
      },
      dispose() { refresh.cancel(); },
    };
  }

  function createTaskForm(name, then) {
    const area = h('textarea', { id: 'new-task-payload', rows: 3, 'aria-label': 'Payload of the new task (JSON object)' }, '{}');
    const box = h('details', { class: 'create-task' }, h('summary', {}, 'Create a task…'),
      h('label', { for: 'new-task-payload', class: 'small muted' }, 'Payload (JSON object, laid over the job’s payload)'), area,
      action('Create task', {
        id: 'create-task', role: 'upstream',
        run: () => {
          let payload;
          try { payload = JSON.parse(area.value || '{}'); } catch (e) { throw new ApiError(0, { title: 'Not JSON', detail: e.message }); }
          return post(`/api/v1/jobs/${enc(name)}/tasks`, { payload });
        },
        done: (t) => `Created task ${t.id} (${t.state}).`,
        then: (t) => { if (may('operator')) location.hash = taskHref(t.id); else then(); },
      }));
    return box;
  }

  /** The next fire times of a trigger, loaded when opened. */
  function firePreview(url) {
    const list = h('ol', { class: 'small' });
    const box = h('details', {}, h('summary', { class: 'small' }, 'next 5'), list);
    box.addEventListener('toggle', async () => {
      if (!box.open || list.childElementCount) return;
      try {
        const preview = await get(`${url}?count=5`);
        fill(list, preview.fire_times.map((at) => h('li', {}, time(at))));
      } catch (err) {
        fill(list, h('li', {}, problemBox(err)));
      }
    });
    return box;
  }

  function schedule(t) {
    if (t.kind === 'cron') return h('span', {}, h('code', {}, t.expression), ` ${t.timezone || 'UTC'}`);
    if (t.kind === 'interval') return h('span', {}, `every ${t.every}`, t.start_at ? [' from ', time(t.start_at)] : null);
    if (t.kind === 'once') return h('span', {}, 'once at ', time(t.at));
    return t.kind;
  }

  function jobFacts(job) {
    const target = job.target || {};
    const retry = job.retry || {};
    return facts([
      ['Target', target.kind === 'amqp' ? `amqp: ${target.exchange} / ${target.routing_key}` : h('code', {}, target.url || '—')],
      target.auth ? ['Outbound auth', JSON.stringify(target.auth)] : null,
      ['Re-poll every', job.repoll_interval],
      ['Dispatch timeout', job.dispatch_timeout],
      ['Timeout', job.timeout],
      ['Deadline', job.deadline || 'none'],
      ['Retry', `${retry.max_attempts} attempts, backoff ${retry.initial_backoff} → ${retry.max_backoff} ×${retry.multiplier} ±${retry.jitter}`],
      ['Expects a callback', job.expect_callback ? 'yes' : 'no (a 2xx completes the task)'],
      ['Overlap policy', h('span', { id: 'overlap' }, job.overlap)],
      job.on_messages && job.on_messages.length ? ['On messages', job.on_messages.join(', ')] : null,
      ['Version', [`${job.version}, updated `, time(job.updated_at)]],
    ]);
  }

  function skipTable(items, caption) {
    return table(caption, ['Job', 'Reason', 'Scheduled for', 'Recorded', { label: 'Trigger', cls: 'opt' }],
      items.map((s) => [link(jobHref(s.job), s.job), badge(s.calendar ? `${s.reason}: ${s.calendar}` : s.reason, 'warn'), time(s.scheduled_at), time(s.recorded_at),
        [s.trigger_id ? h('span', { class: 'mono small' }, s.trigger_id.slice(0, 8) + '…') : '—', { cell: true, class: 'opt' }]]),
      'No skipped occurrences.');
  }

  // ---------- task ----------

  function taskPage(id) {
    const path = `/api/v1/tasks/${enc(id)}`;
    const body = h('div', { 'aria-busy': 'true' }, h('p', { class: 'muted' }, 'Loading…'));
    const heading = h('h1', {}, 'Task ', h('span', { class: 'mono' }, id));

    // A later load may answer before an earlier one: only the latest is shown.
    let latest = 0;
    async function load() {
      const seq = ++latest;
      try {
        const t = await get(path);
        if (seq !== latest) return;
        fill(heading, 'Task ', h('span', { class: 'mono' }, id), ' ', h('span', { id: 'task-state' }, badge(t.state)),
          ...(t.overdue ? [' ', badge('overdue', 'warn')] : []));
        heading.dataset.state = t.state;
        fill(body, ...taskBody(t, load));
      } catch (err) {
        fill(body, problemBox(err));
      } finally {
        body.removeAttribute('aria-busy');
      }
    }
    load();
    const refresh = coalesce(load, 150);
    return {
      title: `Task ${id}`,
      node: h('div', {}, h('p', { class: 'small' }, link('#/', 'Overview'), ' / task'), heading, body),
      onEvent(event) { if (event.task === id) refresh(); },
      dispose() { refresh.cancel(); },
    };
  }

  function taskBody(t, reload) {
    const open = t.state === 'pending' || t.state === 'processing';
    const path = `/api/v1/tasks/${enc(t.id)}`;
    const actions = [
      open ? action('Cancel task', {
        id: 'cancel', role: 'operator', danger: true,
        confirm: { title: 'Cancel this task?', text: 'It ends as cancelled (final); the downstream is told, best effort.' },
        run: () => post(`${path}/cancel`), done: 'Task cancelled.', then: reload,
      }) : null,
      !open ? action('Retry', { id: 'retry', role: 'operator', run: () => post(`${path}/retry`), done: (r) => `Created retry ${r.id}.`, then: (r) => { location.hash = taskHref(r.id); } }) : null,
      t.claimed_by ? action('Release claim', {
        id: 'release', role: 'operator', danger: true,
        confirm: { title: 'Release the claim?', text: `Node ${t.claimed_by} holds this task. Releasing hands it back to the queue; that node's answer is then ignored.` },
        run: () => post(`${path}/release`), done: 'Claim released.', then: reload,
      }) : null,
    ].filter(Boolean);
    const started = t.started_at ? new Date(t.started_at).getTime() : null;
    // Latency bars share one scale, at least a second wide, so a quick answer looks quick.
    const maxLatency = Math.max(1000, ...(t.attempts || []).map((a) => a.latency_ms || 0));
    return [
      actions.length ? h('div', { class: 'actions', role: 'group', 'aria-label': 'Task actions' }, actions) : null,
      progressBar(t),
      h('div', { class: 'cards' },
        h('div', { class: 'panel' }, facts([
          ['Job', link(jobHref(t.job), t.job)],
          ['State', badge(t.state)],
          t.failure_reason ? ['Failure', badge(t.failure_reason, 'bad')] : null,
          ['Origin', origin(t.origin)],
          t.origin && t.origin.trigger_id ? ['Trigger', link(`${jobHref(t.job)}`, t.origin.trigger_id, { class: 'mono small' })] : null,
          t.origin && t.origin.message_id ? ['Message', h('span', { class: 'mono small' }, t.origin.message_id)] : null,
          t.origin && t.origin.scheduled_at ? ['Scheduled for', time(t.origin.scheduled_at)] : null,
          t.idempotency_key ? ['Idempotency key', h('span', { class: 'mono small' }, t.idempotency_key)] : null,
          ['Attempts', String(t.attempt)],
          t.claimed_by ? ['Claimed by', t.claimed_by] : null,
          t.message ? ['Last message', t.message] : null,
          t.last_error ? ['Last error', h('span', { class: 'mono' }, t.last_error)] : null,
          t.retries && t.retries.length ? ['Retried by', t.retries.map((r) => [link(taskHref(r), r.slice(0, 8) + '…', { class: 'mono' }), ' '])] : null,
        ])),
        h('div', { class: 'panel' }, facts([
          ['Created', time(t.created_at)],
          ['Due', time(t.due_at)],
          ['Started', time(t.started_at)],
          ['Finished', time(t.finished_at)],
          ['Took', span(duration(t.started_at, t.finished_at) ?? (started ? Date.now() - started : null))],
          open ? ['Next dispatch', time(t.next_dispatch_at)] : null,
          ['Deadline', time(t.deadline_at)],
          ['Times out', time(t.timeout_at)],
        ]))),
      h('section', { 'aria-labelledby': 'h-attempts' }, h('h2', { id: 'h-attempts' }, 'Attempts'),
        t.attempts && t.attempts.length ? h('ol', { class: 'timeline', id: 'attempts' }, t.attempts.map((a) => h('li', { class: TONE[a.outcome] || '' },
          h('strong', {}, `#${a.number}`), ' ', badge(a.outcome), ' ',
          a.http_status ? h('span', {}, `HTTP ${a.http_status}`) : null, ' · ',
          h('span', {}, span(a.latency_ms)), ' · node ', h('strong', {}, a.node), ' · ', time(a.started_at),
          a.error ? h('div', { class: 'small mono' }, a.error) : null,
          h('span', { class: 'latency', 'data-width': Math.round(((a.latency_ms || 0) / maxLatency) * 100) }))))
          : h('p', { class: 'muted' }, 'Not dispatched yet.')),
      h('section', { 'aria-labelledby': 'h-history' }, h('h2', { id: 'h-history' }, 'History'),
        table('State changes and callbacks, oldest first.', ['When', 'What', 'Detail'],
          (t.history || []).map((e) => [time(e.at), e.kind, eventDetail(e)]), 'No history yet.')),
      h('section', { 'aria-labelledby': 'h-result' }, h('h2', { id: 'h-result' }, 'Result'),
        t.result === null || t.result === undefined ? h('p', { class: 'muted' }, 'No result yet.') : json(t.result)),
      h('details', {}, h('summary', {}, 'Payload'), json(t.payload)),
      h('details', {}, h('summary', {}, 'Raw JSON'), json(t)),
    ];
  }

  function progressBar(t) {
    const p = t.progress;
    if (p === null || p === undefined) return null;
    let value = null;
    let max = 100;
    let text = '';
    if (typeof p === 'number') {
      value = p <= 1 ? p * 100 : Math.min(p, 100);
      text = `${Math.round(value)}%`;
    } else if (p && typeof p === 'object' && typeof p.done === 'number' && typeof p.total === 'number' && p.total > 0) {
      value = Math.min(p.done, p.total);
      max = p.total;
      text = `${p.done} of ${p.total} (${Math.round((p.done / p.total) * 100)}%)`;
    } else if (p && typeof p === 'object' && typeof p.percent === 'number') {
      value = Math.min(p.percent, 100);
      text = `${Math.round(value)}%`;
    }
    const open = t.state === 'pending' || t.state === 'processing';
    if (!open) text += ' — as last reported';
    return h('section', { 'aria-labelledby': 'h-progress', class: 'panel' }, h('h2', { id: 'h-progress', class: 'small muted' }, 'Progress'),
      value === null ? json(p) : [h('progress', { id: 'progress', value, max, 'aria-labelledby': 'h-progress', 'aria-valuetext': text }), ' ', h('span', {}, text)]);
  }

  function eventDetail(e) {
    const d = e.data || {};
    if (e.kind === 'task.state') {
      return [d.previous ? [badge(d.previous), ' → '] : null, badge(d.state || '—'),
        d.attempt ? h('span', { class: 'small muted' }, ` attempt ${d.attempt}`) : null,
        d.reason || d.failure_reason ? ` (${d.reason || d.failure_reason})` : '', d.message ? ` ${d.message}` : ''];
    }
    if (e.kind === 'task.callback') {
      return [d.status ? badge(d.status) : null, d.message ? ` ${d.message}` : '', d.progress !== undefined && d.progress !== null ? ` progress ${JSON.stringify(d.progress)}` : ''];
    }
    return h('span', { class: 'mono small' }, JSON.stringify(d));
  }

  // ---------- alerts, skips, messages, audit, cluster ----------

  function alertsPage(params) {
    const state = h('select', { id: 'alerts-state' }, [['open', 'open'], ['acked', 'acknowledged'], ['resolved', 'resolved'], ['', 'all']]
      .map(([v, l]) => h('option', { value: v, selected: (params.get('state') ?? 'open') === v ? true : null }, l)));
    const job = params.get('job');
    const list = pagedList((items) => table('Alerts, newest first.',
      ['Severity', 'Alert', 'Subject', { label: 'Count', cls: 'num' }, 'Opened', { label: 'Last seen', cls: 'opt' }, 'State', ''],
      items.map((a) => [
        badge(a.severity),
        h('div', {}, h('strong', {}, a.kind.replaceAll('_', ' ')), h('div', { class: 'small' }, a.summary)),
        h('div', { class: 'small' }, a.subject.job ? [link(jobHref(a.subject.job), a.subject.job), ' '] : null,
          a.subject.task ? link(taskHref(a.subject.task), a.subject.task.slice(0, 8) + '…', { class: 'mono' }) : null, a.subject.node || null),
        String(a.count),
        time(a.opened_at),
        [time(a.last_seen_at), { cell: true, class: 'opt' }],
        h('div', {}, badge(a.state), a.acked_by ? h('div', { class: 'small muted' }, `by ${a.acked_by}`) : null),
        h('div', { class: 'actions' },
          a.state === 'open' ? action('Acknowledge', { id: 'ack', role: 'operator', run: () => post(`/api/v1/alerts/${a.id}/ack`, {}), done: 'Alert acknowledged.', then: () => list.reload() }) : null,
          a.state !== 'resolved' ? action('Resolve', {
            id: 'resolve', role: 'operator', danger: true,
            confirm: { title: 'Resolve this alert?', text: 'Resolved is final; the problem opens a new alert if it happens again.' },
            run: () => post(`/api/v1/alerts/${a.id}/resolve`, {}), done: 'Alert resolved.', then: () => list.reload(),
          }) : null),
      ]), 'No alerts in this state.'),
    (cursor) => get(`/api/v1/alerts${query({ state: state.value, job, limit: 50, cursor })}`));
    state.addEventListener('change', () => list.reset());
    const refresh = coalesce(() => list.reload(), 400);
    return {
      title: 'Alerts',
      node: h('div', {}, h('h1', {}, 'Alerts'), job ? h('p', { class: 'sub' }, 'Of job ', link(jobHref(job), job)) : null,
        h('div', { class: 'toolbar' }, h('label', {}, 'State', state)), list.el),
      onEvent(event) { if (event.kind.startsWith('alert.')) refresh(); },
      dispose() { refresh.cancel(); },
    };
  }

  function skipsPage() {
    const list = pagedList((items) => skipTable(items, 'Skipped occurrences, newest first.'), (cursor) => get(`/api/v1/skips${query({ limit: 50, cursor })}`));
    return { title: 'Skips', node: h('div', {}, h('h1', {}, 'Skips'), h('p', { class: 'sub' }, 'Every occurrence that got no task, and why.'), list.el) };
  }

  function messagesPage() {
    const list = pagedList((items) => table('Messages, newest first.', ['Received', 'Type', { label: 'Key', cls: 'opt' }, { label: 'Source', cls: 'opt' }, 'Tasks', { label: 'Skipped', cls: 'opt' }, ''],
      items.map((m) => [
        time(m.received_at), h('div', {}, h('strong', {}, m.type), h('div', { class: 'small mono muted' }, m.id)),
        [m.key || '—', { cell: true, class: 'opt' }], [m.source, { cell: true, class: 'opt' }],
        m.routed ? m.tasks.map((t) => h('div', {}, link(jobHref(t.job), t.job), ' ', link(taskHref(t.task_id), t.task_id.slice(0, 8) + '…', { class: 'mono' }))) : badge('no subscriber', 'warn'),
        [m.skipped.map((s) => h('div', { class: 'small' }, `${s.job}: ${s.reason}`)), { cell: true, class: 'opt' }],
        h('details', {}, h('summary', {}, 'Payload'), json(m.payload)),
      ]), 'No messages yet.'),
    (cursor) => get(`/api/v1/messages${query({ limit: 50, cursor })}`));
    return { title: 'Messages', node: h('div', {}, h('h1', {}, 'Messages'), list.el) };
  }

  function auditPage() {
    const list = pagedList((items) => table('Changes, newest first.', ['When', 'Actor', 'Action', 'Target', 'Change'],
      items.map((a) => [time(a.at), h('span', { title: `issuer ${a.issuer}` }, a.actor), a.action.replaceAll('_', ' '), h('span', { class: 'mono small' }, a.target),
        h('details', {}, h('summary', {}, 'Before / after'), json({ before: a.before ?? null, after: a.after ?? null }))]), 'Nothing changed yet.'),
    (cursor) => get(`/api/v1/audit${query({ limit: 50, cursor })}`));
    return { title: 'Audit log', node: h('div', {}, h('h1', {}, 'Audit log'), list.el) };
  }

  function clusterPage() {
    const body = section(null, async () => {
      const [c, scheduler] = await Promise.all([get('/api/v1/cluster'), get('/api/v1/scheduler')]);
      return [
        h('div', { class: 'actions', role: 'group', 'aria-label': 'Scheduler actions' },
          scheduler.paused
            ? action('Resume scheduler', { id: 'scheduler-resume', role: 'operator', run: () => post('/api/v1/scheduler/resume'), done: 'The scheduler is running.', then: () => body.refresh() })
            : action('Standby scheduler', {
              id: 'scheduler-pause', role: 'operator', danger: true,
              confirm: { title: 'Put the scheduler in standby?', text: 'No trigger fires anywhere in the cluster until it is resumed; missed occurrences then follow each trigger’s misfire policy.' },
              run: () => post('/api/v1/scheduler/pause'), done: 'The scheduler is in standby.', then: () => body.refresh(),
            }),
          action('Run all jobs', {
            id: 'run-all', role: 'operator', danger: true,
            confirm: { title: 'Run every job now?', text: 'Each unpaused job gets a task now, subject to its overlap policy.' },
            run: () => post('/api/v1/scheduler/run-all'),
            done: (r) => `Started ${r.started.length}; ${r.skipped.length} refused by their overlap policy; ${r.paused.length} paused.`,
          })),
        h('div', { class: 'cards' }, h('div', { class: 'panel' }, facts([
          ['Scheduler', scheduler.paused ? badge('standby', 'warn') : badge('running', 'ok')],
          ['Leader', c.leader && c.leader.node ? c.leader.node : badge('none', 'bad')],
          ['Term', String(c.term)],
          c.leader ? ['Leader since', time(c.leader.since)] : null,
          c.leader ? ['Lease expires', time(c.leader.lease_expires_at)] : null,
        ]))),
        h('h2', {}, 'Nodes'),
        table('Every node that has run against this database.', ['Node', 'Alive', 'Last heartbeat', { label: 'Address', cls: 'opt' }, { label: 'Version', cls: 'opt' }, { label: 'Started', cls: 'opt' }, { label: 'Messages', cls: 'opt' }],
          c.nodes.map((n) => [h('strong', {}, n.id), n.alive ? badge('alive', 'ok') : badge(n.stopped_at ? 'stopped' : 'dead', n.stopped_at ? '' : 'bad'),
            h('span', {}, ago(n.last_heartbeat_at), h('div', { class: 'small' }, time(n.last_heartbeat_at))),
            [n.address, { cell: true, class: 'opt' }], [n.version, { cell: true, class: 'opt' }], [time(n.started_at), { cell: true, class: 'opt' }],
            [n.amqp ? `${n.amqp.state}` : '—', { cell: true, class: 'opt' }]])),
      ];
    });
    const refresh = coalesce(() => body.refresh(), 300);
    const timer = setInterval(() => body.refresh(), 5000);
    return {
      title: 'Cluster',
      node: h('div', {}, h('h1', {}, 'Cluster'), body.el),
      onEvent(event) { if (event.kind.startsWith('leader.')) refresh(); },
      dispose() { clearInterval(timer); refresh.cancel(); },
    };
  }

  function forbiddenPage(title, role) {
    return {
      title,
      node: h('div', {}, h('h1', {}, title), problemBox(new ApiError(403, {
        title: 'Forbidden', status: 403, detail: `this page needs the ${role} role; your token has ${me.roles.join(', ') || 'none'}`,
      }))),
    };
  }

  /** The start page of a token without the operator role: what it may do, nothing it may not. */
  function limitedPage() {
    const name = h('input', { id: 'task-job', autocomplete: 'off', required: true });
    const target = h('div');
    const show = () => {
      if (name.value.trim()) fill(target, createTaskForm(name.value.trim(), () => {}));
    };
    name.addEventListener('change', show);
    return {
      title: 'Pacer',
      node: h('div', {}, h('h1', {}, 'Pacer'),
        h('p', {}, `This token grants ${me.roles.join(', ') || 'no role'}. Reading jobs, tasks and alerts needs the operator role; `,
          'the API refuses them to this token, so the dashboard does not offer them.'),
        may('upstream') ? h('section', { class: 'panel', 'aria-labelledby': 'h-create' }, h('h2', { id: 'h-create' }, 'Create a task'),
          h('label', { for: 'task-job' }, 'Job name'), ' ', name, target) : null),
    };
  }

  // ---------- routing ----------

  function parseHash() {
    const raw = location.hash.replace(/^#/, '') || '/';
    const [pathPart, queryPart] = raw.split('?');
    return { parts: pathPart.split('/').filter(Boolean).map(decodeURIComponent), params: new URLSearchParams(queryPart || '') };
  }

  async function route() {
    const seq = ++renderSeq;
    if (page && page.dispose) page.dispose();
    page = null;
    if (token && !me) {
      try {
        me = await get('/api/v1/whoami');
      } catch (err) {
        if (seq !== renderSeq) return;
        token = null;
        sessionStorage.removeItem(TOKEN_KEY);
        flash(problemBox(err));
      }
      frame();
    }
    if (seq !== renderSeq) return;
    const { parts, params } = parseHash();
    let next;
    if (!me) {
      if (parts[0] !== 'signin') sessionStorage.setItem('pacer.after-signin', location.hash || '#/');
      next = signInPage();
    } else if (parts[0] === 'signin') {
      location.hash = '#/';
      return;
    } else if (parts[0] === 'jobs' && parts[1]) {
      next = jobPage(parts[1], params);
    } else if (!may('operator')) {
      next = limitedPage();
    } else if (parts[0] === 'tasks' && parts[1]) {
      next = taskPage(parts[1]);
    } else if (parts[0] === 'alerts') {
      next = alertsPage(params);
    } else if (parts[0] === 'skips') {
      next = skipsPage();
    } else if (parts[0] === 'messages') {
      next = messagesPage();
    } else if (parts[0] === 'audit') {
      next = may('admin') ? auditPage() : forbiddenPage('Audit log', 'admin');
    } else if (parts[0] === 'cluster') {
      next = clusterPage();
    } else {
      next = overviewPage();
    }
    page = next;
    document.title = `${next.title} · Pacer`;
    fill(main, next.node);
    for (const a of document.querySelectorAll('#nav a')) {
      const target = a.getAttribute('href');
      const current = target === '#/' ? parts.length === 0 : location.hash.startsWith(target);
      if (current) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    (next.focus || main).focus({ preventScroll: next.focus === undefined });
  }

  // Latency bars get their width from data (CSP forbids inline style attributes, not CSSOM).
  new MutationObserver(() => {
    for (const bar of main.querySelectorAll('.latency[data-width]')) {
      bar.style.width = `${bar.dataset.width}%`;
      bar.removeAttribute('data-width');
    }
  }).observe(main, { childList: true, subtree: true });

  window.addEventListener('hashchange', () => { flashOnNavigate(); route(); });
  function flashOnNavigate() {
    // A notice belongs to the page it was shown on; a problem stays until dismissed.
    if (flashBox.querySelector('.notice')) flash(null);
  }
  route();
})();
