// The REST API (docs/openapi.json) and the signed-in agent's session.

const SESSION_KEY = 'chatdesk.session';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export const session = {
  load() {
    try {
      const saved = JSON.parse(localStorage.getItem(SESSION_KEY) || 'null');
      if (saved && saved.expires_at * 1000 > Date.now()) return saved;
    } catch { /* a damaged entry is the same as none */ }
    return null;
  },
  save(value) { localStorage.setItem(SESSION_KEY, JSON.stringify(value)); },
  clear() { localStorage.removeItem(SESSION_KEY); },
};

let onUnauthorized = () => {};
export function whenUnauthorized(callback) { onUnauthorized = callback; }

export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  const current = session.load();
  if (current) headers.Authorization = `Bearer ${current.token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch {
    throw new ApiError(0, 'network', 'The server cannot be reached.');
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!response.ok) {
    const error = data && data.error ? data.error : { code: 'http_' + response.status, message: text || response.statusText };
    if (response.status === 401 && path !== '/v1/auth/login') onUnauthorized();
    throw new ApiError(response.status, error.code, error.message);
  }
  return data;
}

export async function login(email, password) {
  const answer = await api('POST', '/v1/auth/login', { email, password });
  session.save({ token: answer.token, expires_at: answer.expires_at, user: { ...answer.user, email } });
  return answer;
}

/// Where the WebSocket protocol is served.
export async function websocketUrl() {
  const info = await api('GET', '/v1');
  if (info && info.websocket_url) return info.websocket_url;
  return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/v1/ws`;
}
