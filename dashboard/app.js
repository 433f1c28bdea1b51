// The agent dashboard: login, then pages. Each page is a module with `mount(container, context)`
// returning an `unmount()`; add one to PAGES (and a link appears in the navigation). Every file
// under dashboard/ is served as it is (crates/chatdesk-api/build.rs): nothing else lists pages.

import { api, login, session, websocketUrl, whenUnauthorized } from './api.js';
import { Connection } from './connection.js';
import { Directory } from './directory.js';
import { Feed } from './feed.js';
import { Notifier } from './notifications.js';
import { searchBox } from './search.js';
import { installShortcuts } from './shortcuts.js';
import { h, notice, shortId } from './ui.js';
import * as inbox from './pages/inbox.js';
import * as workspace from './pages/workspace.js';
import * as streams from './pages/streams.js';
import * as campaigns from './pages/campaigns.js';
import * as bots from './pages/bots.js';

// Each page names the roles that may use it (as the API and the protocol enforce them).
const PAGES = [
  { path: 'inbox', title: 'Inbox', module: inbox, roles: ['owner', 'admin', 'agent'] },
  { path: 'workspace', title: 'Workspace', module: workspace, roles: ['owner', 'admin', 'agent'] },
  { path: 'campaigns', title: 'Campaigns', module: campaigns, roles: ['owner', 'admin', 'marketer'] },
  { path: 'bots', title: 'Bots', module: bots, roles: ['owner', 'admin'] },
  { path: 'streams', title: 'Streams', module: streams, roles: ['sre'] },
];

const root = document.getElementById('app');
let context = null;
let unmountPage = null;

// The roles that work conversations: they get the inbox feed, notifications, search and shortcuts.
const AGENT_ROLES = ['owner', 'admin', 'agent'];

function logout() {
  session.clear();
  context?.close();
  context = null;
  location.hash = '#/login';
  render();
}
whenUnauthorized(logout);

/// Signing out revokes the session's tokens on the server too, so a copied token stops working.
async function signOut() {
  try { await api('POST', '/v1/auth/logout'); } catch { /* signed out here either way */ }
  logout();
}

function renderLogin(message) {
  const error = h('div', { id: 'login-error' }, message ? notice(message, 'error') : null);
  const email = h('input', { name: 'email', type: 'email', autocomplete: 'username', required: true, id: 'login-email' });
  const password = h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true, id: 'login-password' });
  const button = h('button', { type: 'submit' }, 'Sign in');
  const form = h('form', {
    class: 'login',
    'aria-labelledby': 'login-title',
    onsubmit: async (event) => {
      event.preventDefault();
      button.disabled = true;
      error.replaceChildren();
      try {
        await login(email.value.trim(), password.value);
        location.hash = '';
        render();
      } catch (failure) {
        error.replaceChildren(notice(failure.status === 401 ? 'Wrong e-mail or password.' : failure.message, 'error'));
        button.disabled = false;
        password.focus();
      }
    },
  },
  h('h1', { id: 'login-title' }, 'chatdesk'),
  h('p', { class: 'muted' }, 'Sign in to answer your customers.'),
  h('label', { for: 'login-email' }, 'E-mail'), email,
  h('label', { for: 'login-password' }, 'Password'), password,
  error, button);
  root.replaceChildren(h('main', { class: 'login-page' }, form));
  email.focus();
}

function connectionBadge(connection) {
  const badge = h('span', { id: 'connection', class: 'connection', role: 'status' });
  const show = (state) => {
    badge.dataset.state = state;
    badge.textContent = { connecting: 'Connecting…', connected: 'Connected', resumed: 'Resumed', reconnecting: 'Reconnecting…', offline: 'Offline' }[state] || state;
  };
  show(connection.state);
  connection.addEventListener('state', (event) => show(event.detail));
  return badge;
}

function presenceList(context) {
  const element = h('span', { id: 'presence', class: 'presence', title: 'Agents online' });
  const show = () => {
    const others = [...context.online].filter((id) => id !== context.user.id);
    const me = context.online.has(context.user.id) ? 1 : 0;
    element.textContent = `${others.length + me} online`;
    element.title = [...context.online].map((id) => (id === context.user.id ? 'you' : `agent …${shortId(id)}`)).join(', ');
  };
  context.presenceChanged = show;
  show();
  return element;
}

async function startContext() {
  const saved = session.load();
  const connection = new Connection(await websocketUrl(), saved.token);
  connection.addEventListener('unauthorized', logout);
  const started = {
    user: saved.user,
    connection,
    online: new Set(),
    presenceChanged: () => {},
    close: () => connection.close(),
  };
  if (!AGENT_ROLES.includes(saved.user.role)) return started;
  started.directory = new Directory(saved.user);
  started.feed = new Feed(connection);
  started.feed.addEventListener('subscribed', (event) => {
    if (!event.detail.presence) return;
    started.online = new Set(event.detail.presence);
    started.presenceChanged();
  });
  started.feed.listen((frame) => {
    if (frame.type !== 'presence') return;
    if (frame.data.online) started.online.add(frame.data.user_id);
    else started.online.delete(frame.data.user_id);
    started.presenceChanged();
  });
  started.notifier = new Notifier(started);
  started.search = searchBox();
  const removeShortcuts = installShortcuts(started);
  started.close = () => {
    removeShortcuts();
    started.search.dispose();
    started.notifier.close();
    started.feed.close();
    connection.close();
  };
  return started;
}

async function render() {
  unmountPage?.();
  unmountPage = null;
  if (!session.load()) {
    renderLogin();
    return;
  }
  const allowed = PAGES.filter((candidate) => candidate.roles.includes(session.load().user.role));
  if (!allowed.length) {
    root.replaceChildren(h('main', { class: 'center' }, notice('Your role has no pages here yet.', 'error'),
      h('button', { onclick: signOut }, 'Sign out')));
    return;
  }
  const [, name = allowed[0].path, ...rest] = (location.hash || `#/${allowed[0].path}`).slice(1).split('/');
  const page = allowed.find((candidate) => candidate.path === name) || allowed[0];
  if (!context) {
    try {
      context = await startContext();
    } catch (failure) {
      root.replaceChildren(h('main', { class: 'center' }, notice(`Cannot reach the server: ${failure.message}`, 'error')));
      setTimeout(render, 3000);
      return;
    }
  }
  const nav = h('nav', { 'aria-label': 'Pages' },
    allowed.map((candidate) => h('a', { href: `#/${candidate.path}`, 'aria-current': candidate === page ? 'page' : null },
      candidate.title, candidate.module === inbox && context.notifier ? context.notifier.badge : null)),
    h('a', { href: '/system' }, 'System'));
  const header = h('header', { class: 'top' },
    h('strong', { class: 'brand' }, 'chatdesk'), nav,
    h('span', { class: 'spacer' }),
    context.search ? context.search.element : null,
    page.module === inbox ? presenceList(context) : null, connectionBadge(context.connection),
    context.notifier ? context.notifier.permission : null,
    h('span', { class: 'me', title: context.user.email }, context.user.email),
    h('button', { class: 'link', onclick: signOut }, 'Sign out'));
  if (page.module === inbox && rest[0]) context.notifier?.seen(rest[0].toLowerCase());
  const container = h('div', { class: 'page' });
  root.replaceChildren(header, container);
  unmountPage = page.module.mount(container, context, rest);
}

window.addEventListener('hashchange', render);
render().catch((failure) => root.replaceChildren(notice(failure.message, 'error')));
