// The inbox: conversations with filters and live updates, and the open conversation beside them.

import { api } from '../api.js';
import { h, notice, time } from '../ui.js';
import * as conversationView from './conversation.js';

const FILTERS = [
  { id: 'open', label: 'Open', query: 'status=open' },
  { id: 'pending', label: 'Pending', query: 'status=pending' },
  { id: 'resolved', label: 'Resolved', query: 'status=resolved' },
  { id: 'blocked', label: 'Blocked', query: 'status=blocked' },
  { id: 'mine', label: 'Mine', query: 'assignee=me' },
  { id: 'unassigned', label: 'Unassigned', query: 'assignee=none' },
];

export function mount(container, context, [selected] = []) {
  let filter = sessionStorage.getItem('chatdesk.filter') || 'open';
  let items = [];
  let reloadTimer = null;
  let wanted = null;
  let disposed = false;

  const list = h('ul', { class: 'conversations', id: 'conversation-list', 'aria-label': 'Conversations' });
  const status = h('div', { class: 'list-status' });
  const filters = h('div', { class: 'filters', role: 'tablist', 'aria-label': 'Filter conversations' });
  const detail = h('section', { class: 'detail', 'aria-label': 'Conversation' });
  container.replaceChildren(h('aside', { class: 'sidebar' }, filters, status, list), detail);

  function renderFilters() {
    filters.replaceChildren(...FILTERS.map((candidate) => h('button', {
      role: 'tab',
      class: 'filter',
      dataset: { filter: candidate.id },
      'aria-selected': candidate.id === filter ? 'true' : 'false',
      onclick: () => {
        filter = candidate.id;
        sessionStorage.setItem('chatdesk.filter', filter);
        renderFilters();
        reload();
      },
    }, candidate.label)));
  }

  function renderList() {
    status.replaceChildren(items.length ? '' : notice('No conversations here yet.'));
    list.replaceChildren(...items.map((item) => {
      const name = item.contact.name || item.contact.external_id;
      return h('li', {},
        h('a', {
          class: 'conversation-item',
          href: `#/inbox/${item.id}`,
          dataset: { id: item.id, status: item.status },
          'aria-current': item.id === selected ? 'true' : null,
        },
        h('span', { class: 'name' }, name),
        item.unread_count ? h('span', { class: 'unread', 'aria-label': `${item.unread_count} unread` }, item.unread_count) : null,
        h('span', { class: 'preview' }, item.last_message ? item.last_message.text : ''),
        h('span', { class: 'meta' },
          h('span', { class: `status status-${item.status}` }, item.status),
          item.assignee_id ? h('span', { class: 'assignee' }, item.assignee_id === context.user.id ? 'mine' : 'assigned') : null,
          item.last_message ? h('time', {}, time(item.last_message.at)) : null)));
    }));
  }

  // Each event starts a new round of reloads and ends the one before: an older round giving up
  // must not stop a newer one still waiting for PostgreSQL (the list would stay stale).
  let round = 0;

  async function reload(attempt = 0, mine = round) {
    const query = FILTERS.find((candidate) => candidate.id === filter).query;
    try {
      const page = await api('GET', `/v1/conversations?${query}&limit=100`);
      if (disposed || mine !== round) return;
      items = page.items;
      renderList();
      // PostgreSQL trails the stream by a moment. A new message: look again until it is there.
      // Any other change (status, assignment) cannot be recognised in a page: look a few times.
      const arrived = (item) => item.id === wanted.conversation
        && item.last_message && item.last_message.id === wanted.message;
      const again = wanted && (wanted.message ? !items.some(arrived) && attempt < 20 : attempt < 3);
      if (again) {
        setTimeout(() => reload(attempt + 1, mine), Math.min(300 * (attempt + 1), 2000));
      } else if (mine === round) {
        wanted = null;
      }
    } catch (failure) {
      if (!disposed) status.replaceChildren(notice(`Cannot load conversations: ${failure.message}`, 'error'));
    }
  }

  function scheduleReload(conversation, message) {
    wanted = conversation ? { conversation, message } : null;
    round += 1;
    const mine = round;
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(() => reload(0, mine), 150);
  }

  context.connection.subscribe('inbox', {
    onEvent: (frame) => {
      if (frame.type === 'presence') {
        if (frame.data.online) context.online.add(frame.data.user_id);
        else context.online.delete(frame.data.user_id);
        context.presenceChanged();
        return;
      }
      if (frame.type === 'typing') return;
      scheduleReload(frame.data.conversation_id, frame.type === 'message.created' ? frame.event_id : null);
    },
    onSubscribed: (frame) => {
      if (frame.presence) {
        context.online = new Set(frame.presence);
        context.presenceChanged();
      }
    },
    onReset: () => scheduleReload(),
  });
  context.connection.addEventListener('state', onState);
  function onState(event) {
    if (event.detail === 'resumed') scheduleReload();
  }

  renderFilters();
  reload();
  let closeConversation = null;
  if (selected) {
    closeConversation = conversationView.mount(detail, context, selected, { onChange: () => scheduleReload() });
  } else {
    detail.replaceChildren(h('div', { class: 'empty' }, h('p', {}, 'Pick a conversation on the left.')));
  }

  return () => {
    disposed = true;
    clearTimeout(reloadTimer);
    closeConversation?.();
    context.connection.unsubscribe('inbox');
    context.connection.removeEventListener('state', onState);
  };
}
