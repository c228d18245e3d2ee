// The dashboard's only way to the server: the public REST API, with the API
// key from this tab's sessionStorage in an Authorization header. The key is
// never put in a URL and never logged.

const KEY = 'shortfleet.apiKey';

export const session = {
  get key() {
    return sessionStorage.getItem(KEY);
  },
  set key(value) {
    sessionStorage.setItem(KEY, value);
  },
  forget() {
    sessionStorage.removeItem(KEY);
  },
};

/** A problem+json answer (RFC 9457), or a network failure (status 0). */
export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `request failed (${status})`);
    this.status = status;
    this.problem = problem || {};
    /** [{field, message}] for validation failures. */
    this.errors = Array.isArray(this.problem.errors) ? this.problem.errors : [];
  }
}

let unauthorized = () => {};

/** Called once per 401, from any call: the key was revoked or expired. */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export function signalUnauthorized() {
  unauthorized();
}

export function authHeaders(extra = {}) {
  return { Authorization: `Bearer ${session.key}`, ...extra };
}

async function send(method, path, body, accept) {
  const headers = authHeaders({ Accept: accept });
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, { detail: 'The server cannot be reached. Try again in a moment.' });
  }
  if (response.status === 401) {
    unauthorized();
    throw new ApiError(401, { detail: 'Your API key is no longer accepted.' });
  }
  return response;
}

async function problemOf(response) {
  const type = response.headers.get('content-type') || '';
  if (type.includes('json')) {
    try {
      return await response.json();
    } catch (e) {
      return null;
    }
  }
  return null;
}

/** JSON in, JSON out; `null` for 204. Throws ApiError. */
export async function api(method, path, body) {
  const response = await send(method, path, body, 'application/json');
  if (response.status === 204) return null;
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  return response.json();
}

/** A binary resource (the QR code). Throws ApiError. */
export async function blob(path) {
  const response = await send('GET', path, undefined, '*/*');
  if (!response.ok) throw new ApiError(response.status, await problemOf(response));
  return response.blob();
}

export const enc = encodeURIComponent;
