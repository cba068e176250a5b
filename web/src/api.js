// The daemon's HTTP API as the page uses it: the same routes as the CLI (docs/api.yaml). The
// login cookie goes with every request; state-changing ones echo the keel_csrf cookie in
// X-Keel-CSRF, which the daemon requires of requests that ride on the cookie.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

function csrfToken() {
  const m = document.cookie.match(/(?:^|;\s*)keel_csrf=([^;]*)/);
  return m ? m[1] : '';
}

export async function api(method, path, body) {
  const headers = {};
  if (method !== 'GET') headers['X-Keel-CSRF'] = csrfToken();
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 401) {
    location.reload();  // the login page
    throw new ApiError(401, 'unauthorized', 'logged out');
  }
  const text = await res.text();
  let data = null;
  try {
    data = JSON.parse(text);
  } catch {
    data = null;
  }
  if (!res.ok) {
    throw new ApiError(res.status, data?.error?.code ?? 'error',
                       data?.error?.message ?? `the daemon answered ${res.status}`);
  }
  return data;
}

// Follows GET /v1/events (one JSON object per line) for as long as the page lives, reconnecting
// after a break. `onState(true|false)` says whether the stream is open.
export async function followEvents(onEvent, onState) {
  for (;;) {
    try {
      const res = await fetch('/v1/events', { credentials: 'same-origin' });
      if (!res.ok) throw new Error(`events: ${res.status}`);
      onState(true);
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let pending = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        for (let nl; (nl = pending.indexOf('\n')) >= 0;) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (line) onEvent(JSON.parse(line));
        }
      }
    } catch (e) {
      // reconnect below
    }
    onState(false);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
