// The dashboard's entry point: the session, hash routing (#/, #/links/CODE,
// #/top), the live stream and what it updates. A client of the public REST
// API only.

import { api, onUnauthorized, session, ApiError } from './api.js';
import { startLive } from './live.js';
import { linkView, listView, signInView, toast, topView } from './views.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const liveState = document.getElementById('live-state');

const state = {
  tag: '',
  cursor: null,
  stack: [],
  period: '7d',
  topPeriod: '7d',
  objectUrls: [],
  rerender: () => render(),
};
let stopLive = null;
let renderSeq = 0;

function signedIn() {
  return Boolean(session.key);
}

function setLive(text) {
  liveState.textContent = `live: ${text}`;
  liveState.dataset.state = text;
}

/** Adds a batch of new clicks to every count on screen for those codes. */
function applyCounts(counts) {
  for (const { code, clicks } of counts) {
    for (const node of main.querySelectorAll('[data-live]')) {
      if (node.dataset.live !== code) continue;
      const now = Number.parseInt(node.textContent, 10);
      node.textContent = String((Number.isNaN(now) ? 0 : now) + Number(clicks));
      node.classList.remove('bump');
      // Restarts the highlight animation (a reflow between class changes).
      void node.getBoundingClientRect();
      node.classList.add('bump');
    }
  }
}

function startStream() {
  if (stopLive) return;
  stopLive = startLive({
    counts: applyCounts,
    resync: () => render(),
    state: setLive,
  });
}

function signOut(message) {
  session.forget();
  if (stopLive) stopLive();
  stopLive = null;
  setLive('off');
  nav.hidden = true;
  for (const u of state.objectUrls.splice(0)) URL.revokeObjectURL(u);
  Object.assign(state, { tag: '', cursor: null, stack: [] });
  if (location.hash !== '' && location.hash !== '#/') history.replaceState(null, '', '#/');
  signInView(main, message, signIn);
}

async function signIn(key, showError) {
  session.key = key;
  try {
    // Proves the key with the cheapest owner call there is.
    await api('GET', '/api/v1/links?limit=1');
  } catch (err) {
    if (err.status === 401) return; // onUnauthorized already showed why
    session.forget();
    showError(err);
    return;
  }
  nav.hidden = false;
  startStream();
  await render();
}

onUnauthorized(() => {
  if (!signedIn()) return;
  signOut('Your API key was not accepted: it may have been revoked or have expired. Sign in with a valid key.');
});

async function render() {
  if (!signedIn()) {
    signOut();
    return;
  }
  const seq = ++renderSeq;
  const hash = location.hash || '#/';
  const focusHeading = state.lastHash !== hash;
  state.lastHash = hash;
  main.setAttribute('aria-busy', 'true');
  try {
    const m = hash.match(/^#\/links\/([^/]+)$/);
    if (m) await linkView(main, decodeURIComponent(m[1]), state);
    else if (hash === '#/top') await topView(main, state);
    else await listView(main, state);
  } catch (err) {
    if (seq !== renderSeq || (err instanceof ApiError && err.status === 401)) return;
    const message = err.status === 404 ? 'That link does not exist (or is not yours).' : err.message;
    main.replaceChildren(document.createElement('h1'));
    main.firstChild.textContent = 'Something went wrong';
    const p = document.createElement('p');
    p.className = 'notice';
    p.textContent = message;
    main.append(p);
  } finally {
    main.removeAttribute('aria-busy');
  }
  if (focusHeading) {
    const heading = main.querySelector('h1');
    if (heading) heading.focus({ preventScroll: false });
  }
}

window.addEventListener('hashchange', () => {
  if (signedIn()) render();
});
document.getElementById('sign-out').addEventListener('click', () => {
  signOut();
  toast('Signed out');
});

if (signedIn()) {
  nav.hidden = false;
  startStream();
  render();
} else {
  signOut();
}
