// Live click counts: GET /api/v1/events read with fetch and a stream
// reader (EventSource cannot send an Authorization header, and the key must
// never go into a URL). Reconnects by itself, sending Last-Event-ID; the
// server then says "resync" and the page reloads its totals.

import { authHeaders, signalUnauthorized } from './api.js';

const RETRY_MS = 2000;

/** Parses one SSE block ("field: value" lines) into {event, data, id}. */
export function parseBlock(block) {
  const message = { event: 'message', data: [], id: null };
  for (const line of block.split('\n')) {
    if (line === '' || line.startsWith(':')) continue;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') message.event = value;
    else if (field === 'data') message.data.push(value);
    else if (field === 'id') message.id = value;
  }
  return { ...message, data: message.data.join('\n') };
}

/**
 * Starts the stream; `handlers.counts([{code, clicks}])` gets each batch of
 * new clicks, `handlers.resync()` is called after a reconnect, and
 * `handlers.state(text)` follows the connection. Returns a stop function.
 */
export function startLive(handlers) {
  const abort = new AbortController();
  let lastId = null;
  let stopped = false;

  function deliver(block) {
    const m = parseBlock(block);
    if (m.id !== null) lastId = m.id;
    if (m.event === 'clicks') {
      try {
        handlers.counts(JSON.parse(m.data).counts || []);
      } catch (e) {
        // A malformed event is skipped; the next resync corrects totals.
      }
    } else if (m.event === 'resync') {
      handlers.resync();
    }
  }

  async function once() {
    const headers = authHeaders({ Accept: 'text/event-stream' });
    if (lastId !== null) headers['Last-Event-ID'] = lastId;
    const response = await fetch('/api/v1/events', {
      headers, cache: 'no-store', credentials: 'omit', signal: abort.signal,
    });
    if (response.status === 401) {
      stopped = true;
      signalUnauthorized();
      return;
    }
    if (!response.ok || !response.body) throw new Error(`events: ${response.status}`);
    handlers.state('live');
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value.replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        deliver(buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        await once();
      } catch (e) {
        // Aborted on sign-out, or the connection broke: retry below.
      }
      if (stopped) break;
      handlers.state('reconnecting');
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
    handlers.state('off');
  })();

  return () => {
    stopped = true;
    abort.abort();
  };
}
