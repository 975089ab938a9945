// The console's page: plain DOM, no framework. Everything it shows comes from /console/api/,
// and every write carries X-Nexus-Console: 1, which the gateway requires of console writes.

const $ = (selector) => document.querySelector(selector);

class ApiError extends Error {}

async function api(path, { method = 'GET', body } = {}) {
  const init = { method, headers: {} };
  if (method !== 'GET') init.headers['X-Nexus-Console'] = '1';
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`/console/api/${path}`, init);
  const text = await response.text();
  let data;
  try {
    data = text ? JSON.parse(text) : {};
  } catch {
    data = { message: text };
  }
  if (!response.ok) throw new ApiError(data.message || `${response.status} ${response.statusText}`);
  return data;
}

// Builds an element; text children are added as text, never parsed as HTML.
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  setAttributes(el, attrs);
  el.append(...children.flat().filter((c) => c != null).map((c) => (c instanceof Node ? c : String(c))));
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttributes(el, attrs);
  el.append(...children.flat().filter((c) => c != null).map((c) => (c instanceof Node ? c : String(c))));
  return el;
}

function setAttributes(el, attrs) {
  for (const [key, value] of Object.entries(attrs)) {
    if (value === false || value == null) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : value);
  }
}

function showFailure(error) {
  const banner = $('#failure');
  banner.textContent = error ? `${error.message}` : '';
  banner.hidden = !error;
}

const state = { writable: false, endpoints: [], selected: null, editing: null, timers: [] };

// ---- Endpoints -------------------------------------------------------------------------

function targetText(spec) {
  if (spec.target.worker) return `${spec.target.worker.namespace} / ${spec.target.worker.taskQueue}`;
  return spec.target.external ? spec.target.external.url : '';
}

async function loadEndpoints() {
  const all = [];
  let token = '';
  do {
    const page = await api(`endpoints?pageSize=1000${token ? `&nextPageToken=${encodeURIComponent(token)}` : ''}`);
    all.push(...(page.endpoints || []));
    token = page.nextPageToken || '';
  } while (token);
  state.endpoints = all;
  renderEndpoints();
}

function renderEndpoints() {
  const query = $('#search').value.trim().toLowerCase();
  const matches = state.endpoints.filter((e) => {
    const s = e.spec;
    const text = [s.name, targetText(s), ...(s.allowedCallerNamespaces || []), s.description || ''];
    return !query || text.some((t) => t.toLowerCase().includes(query));
  });
  const rows = matches.map((e) => h('tr', { 'data-endpoint': e.spec.name, tabindex: 0, onclick: () => showDetail(e.id) },
    h('td', {}, e.spec.name),
    h('td', {}, targetText(e.spec)),
    h('td', {}, (e.spec.allowedCallerNamespaces || []).join(', ')),
    h('td', { class: 'clip' }, e.spec.description || ''),
    h('td', {}, e.version)));
  $('#endpoint-table tbody').replaceChildren(...rows);
  $('#endpoint-empty').hidden = rows.length > 0;
}

function showDetail(id) {
  const endpoint = state.endpoints.find((e) => e.id === id);
  if (!endpoint) return;
  state.selected = endpoint;
  const s = endpoint.spec;
  $('#detail-name').textContent = s.name;
  const fields = [
    ['Id', endpoint.id],
    ['Target', s.target.worker ? `task queue ${s.target.worker.taskQueue} of namespace ${s.target.worker.namespace}` : `external handler ${targetText(s)}`],
    ['Allowed callers', (s.allowedCallerNamespaces || []).join(', ') || 'nobody'],
    ['Description', s.description || '—'],
    ['URL prefix', endpoint.urlPrefix || ''],
    ['Version', endpoint.version],
    ['Created', endpoint.createdTime],
    ['Last modified', endpoint.lastModifiedTime],
  ];
  $('#detail-fields').replaceChildren(...fields.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  $('#delete-endpoint').textContent = 'Delete';
  $('#endpoint-form').hidden = true;
  $('#endpoint-detail').hidden = false;
}

function openForm(endpoint) {
  state.editing = endpoint;
  const form = $('#endpoint-form');
  form.reset();
  $('#form-title').textContent = endpoint ? `Edit ${endpoint.spec.name}` : 'New endpoint';
  if (endpoint) {
    const s = endpoint.spec;
    form.elements.name.value = s.name;
    form.elements.kind.value = s.target.worker ? 'worker' : 'external';
    form.elements.namespace.value = s.target.worker ? s.target.worker.namespace : '';
    form.elements.taskQueue.value = s.target.worker ? s.target.worker.taskQueue : '';
    form.elements.url.value = s.target.external ? s.target.external.url : '';
    form.elements.callers.value = (s.allowedCallerNamespaces || []).join(', ');
    form.elements.description.value = s.description || '';
  }
  showTargetFields();
  $('#form-error').hidden = true;
  $('#endpoint-detail').hidden = true;
  form.hidden = false;
  form.elements.name.focus();
}

function showTargetFields() {
  const form = $('#endpoint-form');
  const kind = form.elements.kind.value;
  for (const el of form.querySelectorAll('.worker')) el.hidden = kind !== 'worker';
  for (const el of form.querySelectorAll('.external')) el.hidden = kind !== 'external';
}

function specFromForm() {
  const f = $('#endpoint-form').elements;
  const target = f.kind.value === 'worker'
    ? { worker: { namespace: f.namespace.value.trim(), taskQueue: f.taskQueue.value.trim() } }
    : { external: { url: f.url.value.trim() } };
  return {
    name: f.name.value.trim(),
    description: f.description.value,
    target,
    allowedCallerNamespaces: f.callers.value.split(/[\s,]+/).filter(Boolean),
  };
}

async function saveEndpoint(event) {
  event.preventDefault();
  const spec = specFromForm();
  const editing = state.editing;
  try {
    const answer = editing
      ? await api(`endpoints/${encodeURIComponent(editing.id)}`, { method: 'PUT', body: { version: editing.version, spec } })
      : await api('endpoints', { method: 'POST', body: { spec } });
    $('#endpoint-form').hidden = true;
    await loadEndpoints();
    showDetail(answer.endpoint.id);
  } catch (error) {
    $('#form-error').textContent = error.message;
    $('#form-error').hidden = false;
  }
}

// A second click confirms: the page never uses window.confirm.
async function deleteEndpoint() {
  const button = $('#delete-endpoint');
  if (button.textContent !== 'Confirm delete') {
    button.textContent = 'Confirm delete';
    return;
  }
  const endpoint = state.selected;
  try {
    await api(`endpoints/${encodeURIComponent(endpoint.id)}?version=${endpoint.version}`, { method: 'DELETE' });
    $('#endpoint-detail').hidden = true;
    await loadEndpoints();
    showFailure(null);
  } catch (error) {
    showFailure(error);
  }
}

// ---- Traffic ---------------------------------------------------------------------------

function ms(value) {
  return value < 10 ? `${value.toFixed(2)} ms` : `${Math.round(value)} ms`;
}

async function loadTraffic() {
  const answer = await api(`traffic?window=${$('#window').value}`);
  const rows = answer.rows.map((r) => h('tr', { 'data-caller': r.caller, 'data-endpoint': r.endpoint, 'data-target': r.target },
    h('td', {}, r.caller || '(no identity)'),
    h('td', {}, r.endpoint || '(none)'),
    h('td', {}, r.target || '(none)'),
    h('td', { class: 'num rate', 'data-rate': r.rate }, `${r.rate.toFixed(2)}/s`),
    h('td', { class: r.errorRate > 0 ? 'num bad' : 'num' }, `${(r.errorRate * 100).toFixed(1)} %`),
    h('td', { class: 'num' }, ms(r.p50Ms)),
    h('td', { class: 'num' }, ms(r.p99Ms)),
    h('td', { class: 'num' }, r.requests)));
  $('#traffic-table tbody').replaceChildren(...rows);
  $('#traffic-empty').hidden = rows.length > 0;
}

const PALETTE = ['#2f6fdf', '#e07b24', '#2a9d5c', '#c23b6e', '#7b5cd6', '#8a8a2a', '#1f9bb5', '#a0522d'];

// A stacked bar per hour, one colour per caller namespace; drawn by hand as SVG.
function drawChart(chart) {
  const width = 760;
  const height = 240;
  const left = 40;
  const bottom = 24;
  const plotHeight = height - bottom - 10;
  const slot = (width - left) / chart.hours.length;
  const totals = chart.hours.map((_, i) => chart.callers.reduce((sum, c) => sum + c.actions[i], 0));
  const max = Math.max(1, ...totals);
  const y = (value) => (value / max) * plotHeight;
  const bars = [];
  chart.hours.forEach((hour, i) => {
    let stacked = 0;
    chart.callers.forEach((caller, n) => {
      const actions = caller.actions[i];
      if (!actions) return;
      const x = left + i * slot + 2;
      bars.push(svg('rect', {
        x, y: height - bottom - y(stacked + actions), width: slot - 4, height: y(actions),
        fill: PALETTE[n % PALETTE.length], 'data-caller': caller.caller, 'data-hour': hour, 'data-actions': actions,
      }, svg('title', {}, `${caller.caller}: ${actions} action${actions === 1 ? '' : 's'} in the hour from ${hour}`)));
      stacked += actions;
    });
  });
  const labels = chart.hours.map((hour, i) => (i % 3 === 0 || i === chart.hours.length - 1
    ? svg('text', { x: left + i * slot + slot / 2, y: height - 6, 'text-anchor': 'middle', class: 'axis' }, `${hour.slice(11, 13)}:00`)
    : null));
  const axis = [
    svg('line', { x1: left, y1: height - bottom, x2: width, y2: height - bottom, class: 'axis-line' }),
    svg('text', { x: left - 6, y: height - bottom - plotHeight + 4, 'text-anchor': 'end', class: 'axis' }, max),
    svg('text', { x: left - 6, y: height - bottom, 'text-anchor': 'end', class: 'axis' }, 0),
  ];
  const picture = svg('svg', { viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'Billable actions per hour by caller namespace (UTC hours)' },
    ...axis, ...bars, ...labels);
  const legend = h('ul', { class: 'legend' }, chart.callers.map((c, n) => h('li', { 'data-caller': c.caller },
    svg('svg', { width: 12, height: 12 }, svg('rect', { width: 12, height: 12, fill: PALETTE[n % PALETTE.length] })),
    ` ${c.caller}: ${c.total}`)));
  $('#chart').replaceChildren(picture, legend);
  $('#chart-empty').hidden = chart.callers.length > 0;
}

async function loadChart() {
  drawChart(await api('usage'));
}

// ---- Destinations ----------------------------------------------------------------------

async function loadDestinations() {
  const answer = await api('destinations');
  const rows = answer.lanes.map((l) => h('tr', { 'data-destination': l.destination },
    h('td', {}, l.kind), h('td', {}, l.source), h('td', {}, l.destination),
    h('td', { class: 'num' }, l.queued), h('td', { class: 'num' }, l.inFlight),
    h('td', { class: 'num' }, l.rejectedFull), h('td', { class: 'num' }, l.rejectedOpen),
    h('td', { class: `breaker ${l.breaker}` }, l.breaker)));
  $('#lane-table tbody').replaceChildren(...rows);
  $('#lane-empty').hidden = rows.length > 0;
  const c = answer.completions;
  $('#completion-counts').textContent = `${c.pending} pending, ${c.failed} failed, ${c.delivered} delivered`;
  await loadCompletions();
}

async function loadCompletions() {
  const filter = $('#completion-state').value;
  const answer = await api(`completions${filter ? `?state=${filter}` : ''}`);
  const rows = answer.completions.map((c) => h('tr', { 'data-completion': c.id },
    h('td', {}, c.id), h('td', {}, c.state), h('td', {}, c.callerNamespace || ''),
    h('td', {}, c.endpoint || ''), h('td', {}, c.callerHost || ''), h('td', { class: 'num' }, c.attempts),
    h('td', {}, c.nextAttempt || ''), h('td', { class: 'clip' }, c.lastError || ''),
    h('td', {},
      h('button', { class: 'write', onclick: () => completionAction(c.id, 'retry') }, 'Retry'),
      h('button', { class: 'write danger', onclick: (e) => completionAction(c.id, 'drop', e.target) }, 'Drop'))));
  $('#completion-table tbody').replaceChildren(...rows);
  $('#completion-empty').hidden = rows.length > 0;
}

async function completionAction(id, action, button) {
  if (action === 'drop' && button.textContent !== 'Confirm drop') {
    button.textContent = 'Confirm drop';
    pause();
    return;
  }
  try {
    if (action === 'retry') await api(`completions/${id}/retry`, { method: 'POST' });
    else await api(`completions/${id}`, { method: 'DELETE' });
    showFailure(null);
  } catch (error) {
    showFailure(error);
  }
  show('destinations');
}

// ---- Views -----------------------------------------------------------------------------

const VIEWS = {
  endpoints: [[loadEndpoints, 0]],
  traffic: [[loadTraffic, 2000], [loadChart, 5000]],
  destinations: [[loadDestinations, 2000]],
};

function pause() {
  for (const timer of state.timers) clearInterval(timer);
  state.timers = [];
}

// Shows one view and refreshes its data every few seconds while it is shown.
function show(view) {
  pause();
  for (const name of Object.keys(VIEWS)) {
    $(`#${name}`).hidden = name !== view;
    document.querySelector(`nav a[data-view="${name}"]`).classList.toggle('active', name === view);
  }
  for (const [load, every] of VIEWS[view]) {
    const run = () => load().then(() => showFailure(null), showFailure);
    run();
    if (every) state.timers.push(setInterval(run, every));
  }
}

async function start() {
  const overview = await api('overview');
  state.writable = overview.writable;
  document.body.classList.toggle('read-only', !overview.writable);
  $('#read-only').hidden = overview.writable;
  $('#mode').textContent = overview.writable ? 'read-write' : 'read-only';
  $('#search').addEventListener('input', renderEndpoints);
  $('#new-endpoint').addEventListener('click', () => openForm(null));
  $('#edit-endpoint').addEventListener('click', () => openForm(state.selected));
  $('#delete-endpoint').addEventListener('click', deleteEndpoint);
  $('#close-detail').addEventListener('click', () => { $('#endpoint-detail').hidden = true; });
  $('#cancel-form').addEventListener('click', () => { $('#endpoint-form').hidden = true; });
  $('#endpoint-form').addEventListener('submit', saveEndpoint);
  for (const radio of document.querySelectorAll('input[name="kind"]')) radio.addEventListener('change', showTargetFields);
  $('#window').addEventListener('change', () => loadTraffic().catch(showFailure));
  $('#completion-state').addEventListener('change', () => loadCompletions().catch(showFailure));
  const route = () => show(VIEWS[location.hash.slice(1)] ? location.hash.slice(1) : 'endpoints');
  window.addEventListener('hashchange', route);
  route();
}

start().catch(showFailure);
