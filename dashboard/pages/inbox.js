// The inbox: conversations with filters (status, assignee, label) and live updates, and the open
// conversation beside them.

import { api } from '../api.js';
import { h, labelChip, notice, time } from '../ui.js';
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
  let labelFilter = sessionStorage.getItem('chatdesk.label') || '';
  let items = [];
  let reloadTimer = null;
  let wanted = null;
  let disposed = false;
  let listed = false;
  // The page last drawn by a reload: a look again that finds the same page leaves the list's
  // elements in place (a click or hover on one is not lost to a redraw).
  let drawn = null;

  const list = h('ul', { class: 'conversations', id: 'conversation-list', 'aria-label': 'Conversations' });
  const status = h('div', { class: 'list-status' });
  const filters = h('div', { class: 'filters', role: 'tablist', 'aria-label': 'Filter conversations' });
  const labelSelect = h('select', {
    id: 'label-filter',
    onchange: () => {
      labelFilter = labelSelect.value;
      sessionStorage.setItem('chatdesk.label', labelFilter);
      reload();
    },
  });
  const labelBar = h('div', { class: 'label-filter' }, h('label', { for: 'label-filter' }, 'Label'), labelSelect);
  const detail = h('section', { class: 'detail', 'aria-label': 'Conversation' });
  container.replaceChildren(h('aside', { class: 'sidebar' }, filters, labelBar, status, list), detail);

  function renderLabelFilter() {
    const labels = context.directory.known.labels;
    // A label deleted meanwhile filters nothing any more.
    if (labelFilter && context.directory.loaded.has('labels') && !labels.some((label) => label.id === labelFilter)) {
      labelFilter = '';
      sessionStorage.removeItem('chatdesk.label');
    }
    labelSelect.replaceChildren(h('option', { value: '' }, 'Any label'),
      ...labels.map((label) => h('option', { value: label.id, selected: label.id === labelFilter }, label.name)));
    labelSelect.value = labelFilter;
  }

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

  function renderStatus() {
    status.replaceChildren(items.length || !listed ? '' : notice('No conversations here yet.'));
  }

  function renderList() {
    renderStatus();
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
        item.labels && item.labels.length ? h('span', { class: 'labels' },
          item.labels.map((id) => context.directory.labelById(id)).filter(Boolean).map((label) => labelChip(label))) : null,
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
    const query = FILTERS.find((candidate) => candidate.id === filter).query
      + (labelFilter ? `&label=${encodeURIComponent(labelFilter)}` : '');
    try {
      const page = await api('GET', `/v1/conversations?${query}&limit=100`);
      if (disposed || mine !== round) return;
      items = page.items;
      listed = true;
      context.notifier?.learn(items);
      const seen = JSON.stringify(items);
      if (seen !== drawn) {
        drawn = seen;
        renderList();
      } else {
        renderStatus();
      }
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

  // Events of every conversation (the feed is the app's, shared with the notifications).
  const stopFeed = context.feed.listen((frame) => {
    if (frame.type === 'presence' || frame.type === 'typing') return;
    // Contact events name a contact, not a conversation: its name may show in the list.
    const about = frame.data.conversation_id || frame.data.contact_id;
    scheduleReload(about, frame.type === 'message.created' ? frame.event_id : null);
  });
  const onReset = () => scheduleReload();
  context.feed.addEventListener('reset', onReset);
  context.connection.addEventListener('state', onState);
  function onState(event) {
    if (event.detail === 'resumed') scheduleReload();
  }
  const onDirectory = (event) => {
    if (event.detail !== 'labels') return;
    renderLabelFilter();
    renderList();
  };
  context.directory.addEventListener('change', onDirectory);
  context.directory.labels().then(() => {
    if (disposed) return;
    const before = labelFilter;
    renderLabelFilter();
    if (before !== labelFilter) reload(); else renderList();
  }, () => {});

  renderFilters();
  renderLabelFilter();
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
    stopFeed();
    context.feed.removeEventListener('reset', onReset);
    context.directory.removeEventListener('change', onDirectory);
    context.connection.removeEventListener('state', onState);
  };
}
