// The dashboard's screens, built with DOM calls (never markup strings), so
// nothing a link carries can become script. Each view renders into <main>.

import { api, blob, ApiError, enc } from './api.js';
import { buckets, drawChart } from './chart.js';

/** h('tag.class', {attr: value, onclick: fn}, ...children) */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split('.');
  const node = document.createElement(tag);
  if (classes.length) node.className = classes.join(' ');
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

let fieldIds = 0;

/** A labelled input with an error slot beside it. */
function field(labelText, name, attrs = {}, hint) {
  const id = `f-${name}-${++fieldIds}`;
  const error = h('p.field-error', { id: `${id}-error`, 'data-field': name, hidden: true });
  const control = attrs.options
    ? h('select', { id, name }, attrs.options.map(([v, t]) => h('option', { value: v, selected: v === attrs.value }, t)))
    : h('input', { id, name, 'aria-describedby': `${id}-error`, ...attrs });
  return h('div.field', {}, h('label', { for: id }, labelText), control,
    hint ? h('small.hint', {}, hint) : null, error);
}

/** Shows problem+json `errors[]` beside the fields they name. */
export function showErrors(form, err) {
  for (const slot of form.querySelectorAll('.field-error')) {
    slot.hidden = true;
    slot.textContent = '';
  }
  for (const input of form.querySelectorAll('[aria-invalid]')) input.removeAttribute('aria-invalid');
  const general = form.querySelector('.form-error');
  general.textContent = '';
  if (!err) return;
  let placed = false;
  for (const e of err.errors || []) {
    const name = String(e.field || '').split(/[[.]/)[0];
    const slot = form.querySelector(`.field-error[data-field="${CSS.escape(name)}"]`);
    if (slot) {
      slot.textContent = e.message;
      slot.hidden = false;
      const input = form.querySelector(`[name="${CSS.escape(name)}"]`);
      if (input) input.setAttribute('aria-invalid', 'true');
      // "rule 2: …" points at that row of the rules editor.
      const row = name === 'rules' && /^rule (\d+):/.exec(e.message || '');
      const ruleRowEl = row && form.querySelectorAll('.rule-row')[Number(row[1]) - 1];
      if (ruleRowEl) ruleRowEl.querySelector('select').setAttribute('aria-invalid', 'true');
      placed = true;
    }
  }
  if (!placed) general.textContent = err.message;
  const first = form.querySelector('[aria-invalid]');
  // A group (the rules) takes focus on its first control.
  const target = first && first.matches('fieldset')
    ? first.querySelector('[aria-invalid]') || first.querySelector('input, select, button') : first;
  if (target) {
    // A field inside closed "More options" is shown before it is focused.
    const details = target.closest('details');
    if (details) details.open = true;
    target.focus();
  }
}

export function toast(text) {
  const t = document.getElementById('toast');
  t.textContent = text;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { t.textContent = ''; }, 4000);
}

/** Resolves true when the user confirms in the page's <dialog>. */
export function confirmDialog(text, okLabel) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = 'cancel';
    dialog.showModal();
  });
}

export function linkStatus(link, now = Date.now()) {
  if (link.disabled) return 'disabled';
  if (link.expires_at && Date.parse(link.expires_at) <= now) return 'expired';
  if (link.max_clicks !== null && link.max_clicks !== undefined
      && link.clicks !== null && link.clicks >= link.max_clicks) return 'over click limit';
  return 'active';
}

function copyButton(text) {
  return h('button.small', {
    type: 'button',
    'aria-label': `Copy ${text}`,
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text);
        toast('Short URL copied');
      } catch (e) {
        toast(`Copy this: ${text}`);
      }
    },
  }, 'Copy');
}

function clicksText(n) {
  return n === null || n === undefined ? '–' : String(n);
}

/** The link's fields as form controls (create: with alias). */
function linkFields(link, creating) {
  const exp = link && link.expires_at ? toLocalInput(link.expires_at) : '';
  return [
    creating ? field('Alias', 'alias', { type: 'text', autocomplete: 'off', maxlength: 64 }, '3–64 of A–Z a–z 0–9 _ -') : null,
    field('Tags', 'tags', { type: 'text', value: link ? link.tags.join(', ') : '' }, 'comma-separated'),
    field('Expires at', 'expires_at', { type: 'datetime-local', value: exp }),
    field('Max clicks', 'max_clicks', { type: 'number', min: 1, value: link && link.max_clicks !== null ? link.max_clicks : '' }),
    field('Redirect type', 'redirect_type', {
      options: [['302', '302 Found'], ['301', '301 Moved Permanently'], ['307', '307 Temporary'], ['308', '308 Permanent']],
      value: String(link ? link.redirect_type : 302),
    }),
  ];
}

// ------------------------------------------------------------------ behaviour

// The redirect rule vocabulary (write-svc checks the same lists).
const DEVICES = ['mobile', 'tablet', 'desktop'];
const OSES = ['android', 'ios', 'windows', 'macos', 'chromeos', 'linux'];
const BROWSERS = ['chrome', 'firefox', 'safari', 'edge', 'opera', 'samsung-internet'];
export const MAX_RULES = 20;

/** A labelled checkbox with an error slot. */
function checkbox(labelText, name, checked, hint) {
  const id = `f-${name}-${++fieldIds}`;
  return h('div.field.check', {},
    h('span.check-line', {},
      h('input', { id, name, type: 'checkbox', checked: Boolean(checked), 'aria-describedby': `${id}-error` }),
      h('label', { for: id }, labelText)),
    hint ? h('small.hint', {}, hint) : null,
    h('p.field-error', { id: `${id}-error`, 'data-field': name, hidden: true }));
}

/** One rule's controls: conditions, target, and its place in the list. */
function ruleRow(rule) {
  const when = (rule && rule.when) || {};
  const control = (labelText, key, make) => {
    const id = `f-rule-${key}-${++fieldIds}`;
    return h(`div.field.rule-${key}`, {}, h('label', { for: id }, labelText), make(id));
  };
  const choice = (labelText, key, values) => control(labelText, key, (id) => h('select', { id, 'data-rule': key },
    h('option', { value: '' }, 'any'), values.map((v) => h('option', { value: v, selected: v === when[key] }, v))));
  const text = (labelText, key, attrs) => control(labelText, key, (id) => h('input', {
    id, 'data-rule': key, type: 'text', autocomplete: 'off', spellcheck: 'false', value: when[key] || '', ...attrs,
  }));
  const row = h('li.rule-row', { 'data-testid': 'rule-row' },
    h('p.rule-title', {}, 'Rule'),
    h('div.rule-when', {},
      choice('Device', 'device', DEVICES),
      choice('OS', 'os', OSES),
      choice('Browser', 'browser', BROWSERS),
      text('Country', 'country', { maxlength: 2, placeholder: 'any', autocapitalize: 'characters' }),
      text('Language', 'language', { maxlength: 35, placeholder: 'any' })),
    control('Send to', 'url', (id) => h('input', {
      id, 'data-rule-url': '', type: 'url', placeholder: 'a full URL', value: (rule && rule.url) || '',
    })),
    h('div.actions', {},
      h('button.small', { type: 'button', 'data-move': 'up', onclick: () => moveRule(row, -1) }, 'Up'),
      h('button.small', { type: 'button', 'data-move': 'down', onclick: () => moveRule(row, 1) }, 'Down'),
      h('button.small.danger', { type: 'button', onclick: () => removeRule(row) }, 'Remove rule')));
  return row;
}

function moveRule(row, by) {
  const list = row.parentNode;
  const sibling = by < 0 ? row.previousElementSibling : row.nextElementSibling;
  if (!sibling) return;
  if (by < 0) list.insertBefore(row, sibling);
  else list.insertBefore(sibling, row);
  renumberRules(list);
  // Keep the focus on the row: on the same button, or the other at an end.
  const same = row.querySelector(`[data-move="${by < 0 ? 'up' : 'down'}"]`);
  (same.disabled ? row.querySelector(`[data-move="${by < 0 ? 'down' : 'up'}"]`) : same).focus();
}

function removeRule(row) {
  const list = row.parentNode;
  const next = row.nextElementSibling || row.previousElementSibling;
  row.remove();
  renumberRules(list);
  const focus = next ? next.querySelector('select') : list.parentNode.querySelector('[data-add-rule]');
  if (focus) focus.focus();
}

/** Titles, the ends' move buttons, and the add button at the limit. */
function renumberRules(list) {
  const rows = [...list.children];
  rows.forEach((row, i) => {
    row.querySelector('.rule-title').textContent = `Rule ${i + 1}`;
    const up = row.querySelector('[data-move="up"]');
    const down = row.querySelector('[data-move="down"]');
    up.disabled = i === 0;
    down.disabled = i === rows.length - 1;
    up.setAttribute('aria-label', `Move rule ${i + 1} up`);
    down.setAttribute('aria-label', `Move rule ${i + 1} down`);
  });
  const group = list.closest('fieldset');
  const add = group.querySelector('[data-add-rule]');
  add.disabled = rows.length >= MAX_RULES;
  group.querySelector('.rules-empty').hidden = rows.length > 0;
  group.querySelector('.rules-count').textContent = `${rows.length} of ${MAX_RULES}`;
}

/** The ordered rules editor: the first rule whose conditions all hold wins. */
function rulesEditor(rules) {
  const list = h('ol.rules', {}, (rules || []).map(ruleRow));
  const group = h('fieldset.rules-group', { name: 'rules', 'data-testid': 'rules' },
    h('legend', {}, 'Redirect rules ', h('span.hint.rules-count', {})),
    h('p.hint', {}, 'Tried in order: the first rule whose conditions all hold sends the visitor to its URL; '
      + 'none → the link’s URL. Country is ISO 3166 (DE, US…), language a tag (en, pt-BR).'),
    h('p.hint.rules-empty', {}, 'No rules: everyone goes to the link’s URL.'),
    list,
    h('p.field-error', { 'data-field': 'rules', hidden: true }),
    h('button.small', {
      type: 'button',
      'data-add-rule': '',
      onclick: () => {
        if (list.children.length >= MAX_RULES) return;
        const row = ruleRow(null);
        list.append(row);
        renumberRules(list);
        row.querySelector('select').focus();
      },
    }, 'Add rule'));
  renumberRules(list);
  return group;
}

/** Password, forwarding, crawling, where gone links go, and the rules. */
function behaviourFields(link) {
  const protectedNow = Boolean(link && link.password_protected);
  return h('div.behaviour', {},
    h('div.grid', {},
      h('div.password-field', {},
        protectedNow ? h('p.protected-state', { 'data-testid': 'password-state' },
          h('span.badge.badge-protected', {}, 'protected'), ' A password is set (it is never shown).') : null,
        field(protectedNow ? 'New password' : 'Password', 'password', {
          type: 'password', autocomplete: 'new-password', maxlength: 512,
        }, protectedNow ? 'leave empty to keep the current one' : 'visitors must enter it before the redirect'),
        protectedNow ? checkbox('Remove the password', 'remove_password', false) : null),
      field('When expired or disabled, send to', 'expired_url', {
        type: 'url', placeholder: 'a full URL (default: 410 Gone)', value: (link && link.expired_url) || '',
      })),
    h('div.grid', {},
      checkbox('Forward query string', 'forward_query', link && link.forward_query,
        'the visitor’s ?query is appended to the target’s'),
      checkbox('Crawlable', 'crawlable', link && link.crawlable,
        'search engines may index it (otherwise noindex, and robots.txt disallows it)')),
    rulesEditor(link ? link.rules : []));
}

/** The rules as entered: empty conditions left out. */
function rulesOf(form) {
  return [...form.querySelectorAll('.rule-row')].map((row) => {
    const when = {};
    for (const c of row.querySelectorAll('[data-rule]')) {
      const value = c.value.trim();
      if (value) when[c.dataset.rule] = value;
    }
    return { when, url: row.querySelector('[data-rule-url]').value.trim() };
  });
}

/** Small labels of what a link does besides redirecting. */
function behaviourBadges(link) {
  const n = (link.rules || []).length;
  return [
    link.password_protected ? h('span.badge.badge-protected', { 'data-testid': 'badge-protected' }, 'protected') : null,
    n ? h('span.badge', { 'data-testid': 'badge-rules' }, n === 1 ? '1 rule' : `${n} rules`) : null,
    link.forward_query ? h('span.badge', {}, 'forwards query') : null,
    link.crawlable ? h('span.badge', {}, 'crawlable') : null,
    link.expired_url ? h('span.badge', { title: link.expired_url }, 'expired → URL') : null,
  ];
}

/** A rule in words: "device mobile, country DE → (its url)". */
function ruleText(rule) {
  const when = Object.entries(rule.when || {}).map(([k, v]) => `${k} ${v}`).join(', ');
  return `${when} → ${rule.url}`;
}

function toLocalInput(iso) {
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Form values → request body; `patch` sends nulls to clear. */
function bodyOf(form, patch) {
  const v = (n) => (form.elements[n] ? form.elements[n].value.trim() : '');
  const body = { url: v('url') };
  if (!patch && v('alias')) body.alias = v('alias');
  const tags = v('tags').split(',').map((t) => t.trim()).filter(Boolean);
  if (patch || tags.length) body.tags = tags;
  const exp = v('expires_at');
  if (exp) body.expires_at = new Date(exp).toISOString();
  else if (patch) body.expires_at = null;
  const max = v('max_clicks');
  if (max) body.max_clicks = Number(max);
  else if (patch) body.max_clicks = null;
  body.redirect_type = Number(v('redirect_type') || 302);
  const checked = (n) => Boolean(form.elements[n] && form.elements[n].checked);
  // Write-only: sent when typed; on edit, null removes it.
  const password = form.elements.password ? form.elements.password.value : '';
  if (patch && checked('remove_password')) body.password = null;
  else if (password) body.password = password;
  const rules = rulesOf(form);
  if (patch || rules.length) body.rules = rules;
  if (patch || checked('forward_query')) body.forward_query = checked('forward_query');
  if (patch || checked('crawlable')) body.crawlable = checked('crawlable');
  const expiredUrl = v('expired_url');
  if (expiredUrl) body.expired_url = expiredUrl;
  else if (patch) body.expired_url = null;
  return body;
}

// ------------------------------------------------------------------ sign in

export function signInView(main, message, onKey) {
  const form = h('form.card.narrow', { novalidate: true },
    h('h1', {}, 'Sign in'),
    message ? h('p.notice', { role: 'alert' }, message) : null,
    field('API key', 'key', { type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' }),
    h('p.form-error', { role: 'alert' }),
    h('button.primary', { type: 'submit' }, 'Sign in'),
    h('p.hint', {}, 'The key stays in this tab only and is forgotten when you sign out or close it.'));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const key = form.elements.key.value.trim();
    if (!key) {
      showErrors(form, { message: 'Enter your API key.', errors: [{ field: 'key', message: 'Enter your API key.' }] });
      return;
    }
    await onKey(key, (err) => showErrors(form, err));
  });
  main.replaceChildren(form);
  form.elements.key.focus();
}

// ------------------------------------------------------------------ links

export async function listView(main, state) {
  const params = new URLSearchParams({ limit: '20' });
  if (state.tag) params.set('tag', state.tag);
  if (state.cursor) params.set('cursor', state.cursor);
  const page = await api('GET', `/api/v1/links?${params}`);

  const createForm = h('form.card', { novalidate: true, 'aria-labelledby': 'shorten-title' },
    h('h2', { id: 'shorten-title' }, 'Shorten a link'),
    h('div.row', {}, field('URL', 'url', { type: 'url', required: true, placeholder: 'Paste a long link' }),
      h('button.primary', { type: 'submit' }, 'Shorten')),
    h('details', {}, h('summary', {}, 'More options'), h('div.grid', {}, linkFields(null, true)), behaviourFields(null)),
    h('p.form-error', { role: 'alert' }));
  createForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      const link = await api('POST', '/api/v1/links', bodyOf(createForm, false));
      toast(`Created ${link.short_url}`);
      state.cursor = null;
      state.stack = [];
      await state.rerender();
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) showErrors(createForm, err);
    }
  });

  const filter = h('form.filter', { role: 'search' },
    field('Filter by tag', 'tag', { type: 'text', value: state.tag || '' }),
    h('button', { type: 'submit' }, 'Apply'),
    state.tag ? h('button', { type: 'button', onclick: () => { state.tag = ''; state.cursor = null; state.stack = []; state.rerender(); } }, 'Clear') : null);
  filter.addEventListener('submit', (e) => {
    e.preventDefault();
    state.tag = filter.elements.tag.value.trim();
    state.cursor = null;
    state.stack = [];
    state.rerender();
  });

  const rows = page.items.map((link) => linkRow(link, state));
  const list = rows.length
    ? h('ul.links', { 'aria-label': 'Your links, newest first' }, rows)
    : h('p.empty', {}, state.tag ? `No links tagged “${state.tag}”.` : 'No links yet: shorten one above.');
  const pager = h('div.pager', {},
    state.stack.length ? h('button', { type: 'button', onclick: () => { state.cursor = state.stack.pop() || null; state.rerender(); } }, 'Newer') : null,
    page.next_cursor ? h('button', { type: 'button', onclick: () => { state.stack.push(state.cursor || ''); state.cursor = page.next_cursor; state.rerender(); } }, 'Older') : null);

  main.replaceChildren(h('h1', { tabindex: -1 }, 'Your links'), createForm,
    h('section', { 'aria-label': 'Links' }, filter, list, pager));
}

function linkRow(link, state) {
  const status = linkStatus(link);
  const row = h('li.link-row', { 'data-testid': 'link-row', 'data-code': link.code },
    h('div.code', {}, h('a', { href: `#/links/${enc(link.code)}` }, link.code)),
    h('div.short', {}, h('span.mono', {}, link.short_url), copyButton(link.short_url)),
    h('div.target', { title: link.url }, link.url),
    h('div.tags', {}, link.tags.map((t) => h('span.tag', {}, t)), behaviourBadges(link)),
    h(`span.status.status-${status.replace(/ /g, '-')}`, { 'data-testid': 'link-status' }, status),
    h('span.clicks', {}, h('span', { 'data-testid': 'link-clicks', 'data-live': link.code }, clicksText(link.clicks)), ' clicks'),
    h('div.actions', {},
      h('a.button.small', { href: `#/links/${enc(link.code)}` }, 'Edit'),
      h('button.small', { type: 'button', onclick: () => setDisabled(link, !link.disabled, state) }, link.disabled ? 'Enable' : 'Disable'),
      h('button.small.danger', { type: 'button', onclick: () => deleteLink(link, state) }, 'Delete')));
  return row;
}

async function setDisabled(link, disabled, state) {
  try {
    await api('PATCH', `/api/v1/links/${enc(link.code)}`, { disabled });
    toast(`${link.code} ${disabled ? 'disabled' : 'enabled'}`);
    await state.rerender();
  } catch (err) {
    if (err.status !== 401) toast(err.message);
  }
}

async function deleteLink(link, state, after) {
  if (!(await confirmDialog(`Delete ${link.code}? It stops redirecting at once.`, 'Delete'))) return;
  try {
    await api('DELETE', `/api/v1/links/${enc(link.code)}`);
    toast(`${link.code} deleted`);
    if (after) after();
    else await state.rerender();
  } catch (err) {
    if (err.status !== 401) toast(err.message);
  }
}

// ------------------------------------------------------------------ one link

export const PERIODS = [
  { id: '24h', label: '24 hours', ms: 86400e3, interval: 'hour' },
  { id: '7d', label: '7 days', ms: 7 * 86400e3, interval: 'day' },
  { id: '30d', label: '30 days', ms: 30 * 86400e3, interval: 'day' },
  { id: '90d', label: '90 days', ms: 90 * 86400e3, interval: 'day' },
];

function ranked(title, items) {
  const max = Math.max(1, ...items.map((i) => i.clicks));
  return h('section.card.ranked', { 'aria-label': title }, h('h3', {}, title),
    items.length
      ? h('ol', {}, items.map((i) => {
        const bar = h('span.meter-fill');
        bar.style.width = `${(100 * i.clicks) / max}%`;
        return h('li', {}, h('span.name', {}, i.name || '(none)'), h('span.count', {}, String(i.clicks)),
          h('span.meter', { 'aria-hidden': 'true' }, bar));
      }))
      : h('p.empty', {}, 'No data for this period.'));
}

export async function linkView(main, code, state) {
  const link = await api('GET', `/api/v1/links/${enc(code)}`);
  const period = PERIODS.find((p) => p.id === state.period) || PERIODS[1];
  const to = Date.now();
  const from = to - period.ms;
  const q = new URLSearchParams({ from: new Date(from).toISOString(), to: new Date(to).toISOString(), interval: period.interval });
  let stats = null;
  let statsError = null;
  try {
    stats = await api('GET', `/api/v1/links/${enc(code)}/stats?${q}`);
  } catch (err) {
    if (err.status === 401) throw err;
    statsError = err.message;
  }

  const total = h('strong', { 'data-testid': 'live-clicks', 'data-live': link.code }, clicksText(link.clicks));
  const periods = h('div.segmented', { role: 'group', 'aria-label': 'Period' }, PERIODS.map((p) => h('button', {
    type: 'button', 'aria-pressed': String(p.id === period.id),
    onclick: () => { state.period = p.id; state.rerender(); },
  }, p.label)));
  const chart = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  chart.setAttribute('data-testid', 'clicks-chart');
  chart.setAttribute('class', 'chart');
  if (stats) drawChart(chart, buckets(stats.series, from, to, period.interval), period.interval);

  const qrImg = h('img.qr', { alt: `QR code of ${link.short_url}`, width: 192, height: 192 });
  const svgLink = h('a.button.small', { download: `${link.code}.svg` }, 'Download SVG');
  const pngLink = h('a.button.small', { download: `${link.code}.png` }, 'Download PNG');
  loadQr(code, qrImg, svgLink, pngLink, state);

  const edit = h('form.card', { novalidate: true, 'aria-labelledby': 'edit-title' },
    h('h2', { id: 'edit-title' }, 'Edit'),
    h('div.grid', {}, field('URL', 'url', { type: 'url', required: true, value: link.url }), linkFields(link, false)),
    behaviourFields(link),
    h('p.form-error', { role: 'alert' }),
    h('div.actions', {}, h('button.primary', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', onclick: () => setDisabled(link, !link.disabled, state) }, link.disabled ? 'Enable' : 'Disable'),
      h('button.danger', { type: 'button', onclick: () => deleteLink(link, state, () => { location.hash = '#/'; }) }, 'Delete')));
  edit.addEventListener('submit', async (e) => {
    e.preventDefault();
    try {
      await api('PATCH', `/api/v1/links/${enc(code)}`, bodyOf(edit, true));
      toast('Saved');
      await state.rerender();
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) showErrors(edit, err);
    }
  });

  const s = stats || {};
  const summary = h('dl.summary', {},
    h('div', {}, h('dt', {}, 'All-time clicks (live)'), h('dd', {}, total)),
    h('div', {}, h('dt', {}, `Clicks, last ${period.label}`), h('dd', { 'data-testid': 'period-clicks' }, clicksText(s.total))),
    h('div', {}, h('dt', {}, 'Unique visitors'), h('dd', {}, clicksText(s.unique_visitors))),
    h('div', {}, h('dt', {}, 'Humans / bots'), h('dd', {}, `${clicksText(s.total)} / ${clicksText(s.bots)}`)));

  // replaceChildren would show a null as text: absent parts are dropped.
  main.replaceChildren(...[
    h('p.crumbs', {}, h('a', { href: '#/' }, '← All links')),
    h('h1', { tabindex: -1 }, link.code, ' ', h(`span.status.status-${linkStatus(link).replace(/ /g, '-')}`, {}, linkStatus(link))),
    h('p.short', {}, h('span.mono', {}, link.short_url), ' ', copyButton(link.short_url)),
    h('p.target', {}, '→ ', link.url),
    behaviourBadges(link).some(Boolean) ? h('p.tags', { 'data-testid': 'link-behaviour' }, behaviourBadges(link)) : null,
    link.rules && link.rules.length ? h('ol.rule-summary', { 'data-testid': 'rule-summary', 'aria-label': 'Redirect rules' },
      link.rules.map((r) => h('li', {}, ruleText(r)))) : null,
    summary,
    h('section.card', { 'aria-labelledby': 'chart-title' }, h('h2', { id: 'chart-title' }, 'Clicks over time'), periods,
      statsError ? h('p.notice', {}, `Stats are unavailable: ${statsError}`) : chart),
    stats ? h('div.ranks', {},
      ranked('Referrers', stats.referrers), ranked('Browsers', stats.browsers),
      ranked('Operating systems', stats.os), ranked('Devices', stats.devices),
      ranked('Countries', stats.countries)) : null,
    h('section.card.qr-card', { 'aria-labelledby': 'qr-title' }, h('h2', { id: 'qr-title' }, 'QR code'), qrImg,
      h('div.actions', {}, svgLink, pngLink)),
    edit,
  ].filter(Boolean));
}

async function loadQr(code, img, svgLink, pngLink, state) {
  try {
    const [svg, png] = await Promise.all([
      blob(`/api/v1/links/${enc(code)}/qr?format=svg&size=256`),
      blob(`/api/v1/links/${enc(code)}/qr?format=png&size=512`),
    ]);
    const svgUrl = URL.createObjectURL(svg);
    const pngUrl = URL.createObjectURL(png);
    state.objectUrls.push(svgUrl, pngUrl);
    img.src = svgUrl;
    svgLink.href = svgUrl;
    pngLink.href = pngUrl;
  } catch (err) {
    img.alt = 'QR code unavailable';
  }
}

// ------------------------------------------------------------------ top links

export async function topView(main, state) {
  const period = PERIODS.find((p) => p.id === state.topPeriod) || PERIODS[1];
  const to = Date.now();
  const q = new URLSearchParams({ from: new Date(to - period.ms).toISOString(), to: new Date(to).toISOString(), limit: '10' });
  const top = await api('GET', `/api/v1/stats/top?${q}`);
  const items = top.links || top.items || [];
  const max = Math.max(1, ...items.map((i) => i.clicks));
  const periods = h('div.segmented', { role: 'group', 'aria-label': 'Period' }, PERIODS.map((p) => h('button', {
    type: 'button', 'aria-pressed': String(p.id === period.id),
    onclick: () => { state.topPeriod = p.id; state.rerender(); },
  }, p.label)));
  main.replaceChildren(h('h1', { tabindex: -1 }, 'Top links'), periods,
    items.length
      ? h('ol.ranked.card', { 'data-testid': 'top-links' }, items.map((i) => {
        const code = i.code || i.name;
        const bar = h('span.meter-fill');
        bar.style.width = `${(100 * i.clicks) / max}%`;
        return h('li', {}, h('a.name', { href: `#/links/${enc(code)}` }, code), h('span.count', {}, String(i.clicks)),
          h('span.meter', { 'aria-hidden': 'true' }, bar));
      }))
      : h('p.empty', {}, 'No clicks in this period.'));
}
