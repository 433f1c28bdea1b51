// One conversation: history from REST, live events from the socket, ticks, typing, reply box and
// the agent's actions.

import { api } from '../api.js';
import { compareOffsets, newClientId } from '../connection.js';
import { h, notice, shortId, STATUS_RANK, tick, time } from '../ui.js';

const TYPING_SHOWN_MS = 6000;

export function mount(container, context, conversationId, { onChange }) {
  const channel = `conversation:${conversationId}`;
  const messages = new Map(); // event_id → message
  const pending = new Map(); // client_msg_id → message not yet appended
  let conversation = null;
  let olderCursor = null;
  let typingTimer = null;
  let disposed = false;
  let lastTyping = 0;

  const title = h('h2', { id: 'conv-title' }, 'Conversation');
  const statusLabel = h('span', { id: 'conv-status', class: 'status' });
  const assigneeLabel = h('span', { id: 'conv-assignee', class: 'assignee' });
  // Why the bot stepped aside, until the conversation is resolved.
  const handoffLabel = h('span', { class: 'handoff-badge', hidden: true });
  const actions = h('div', { class: 'actions' });
  const history = h('ol', { class: 'messages', id: 'messages', 'aria-label': 'Messages', tabindex: '0' });
  const older = h('button', { class: 'link older', hidden: true, onclick: () => loadOlder() }, 'Show older messages');
  const typing = h('p', { id: 'typing', class: 'typing', hidden: true, 'aria-live': 'polite' }, 'The customer is typing…');
  const problem = h('div', { class: 'problem' });
  const reply = h('textarea', {
    id: 'reply',
    rows: '3',
    placeholder: 'Write a reply — Enter to send, Shift+Enter for a new line',
    'aria-label': 'Reply',
    onkeydown: (event) => {
      if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        send();
      }
    },
  });
  const sendButton = h('button', { type: 'button', onclick: () => send() }, 'Send');
  container.replaceChildren(
    h('header', { class: 'conversation-head' }, title, statusLabel, assigneeLabel, handoffLabel, actions),
    problem,
    h('div', { class: 'scroller' }, older, history),
    typing,
    h('div', { class: 'composer' }, reply, sendButton),
  );

  function renderHead() {
    if (!conversation) return;
    const contact = conversation.contact;
    title.textContent = contact.name || contact.external_id;
    statusLabel.textContent = conversation.status;
    statusLabel.className = `status status-${conversation.status}`;
    statusLabel.dataset.status = conversation.status;
    const assignee = conversation.assignee_id;
    assigneeLabel.textContent = !assignee ? 'Unassigned' : assignee === context.user.id ? 'Assigned to you' : `Assigned to agent …${shortId(assignee)}`;
    assigneeLabel.dataset.assignee = assignee || '';
    const handedOff = conversation.handoff;
    handoffLabel.hidden = !handedOff;
    handoffLabel.dataset.reason = handedOff ? handedOff.reason : '';
    handoffLabel.textContent = handedOff ? `Bot handed off: ${handedOff.reason.replace('_', ' ')}` : '';
    handoffLabel.title = handedOff && handedOff.detail ? handedOff.detail : '';
    const button = (id, label, action, body) => h('button', { id, type: 'button', onclick: () => act(action, body) }, label);
    actions.replaceChildren(...[
      assignee === context.user.id ? null : button('assign-me', 'Assign to me', 'assign', { assignee_id: context.user.id }),
      conversation.status === 'resolved' || conversation.status === 'blocked'
        ? button('reopen', 'Reopen', 'reopen')
        : button('resolve', 'Resolve', 'resolve'),
      conversation.status === 'blocked' ? null : button('block', 'Block', 'block'),
    ].filter(Boolean));
    reply.disabled = conversation.status === 'blocked';
  }

  async function act(action, body) {
    problem.replaceChildren();
    try {
      await api('POST', `/v1/conversations/${conversationId}/${action}`, body || {});
    } catch (failure) {
      problem.replaceChildren(notice(failure.message, 'error'));
    }
  }

  function ordered() {
    const stored = [...messages.values()].sort((a, b) => compareOffsets(a.offset, b.offset));
    return stored.concat([...pending.values()]);
  }

  function renderMessages() {
    const nearBottom = history.parentElement.scrollHeight - history.parentElement.scrollTop - history.parentElement.clientHeight < 80;
    const handoffLine = ({ event_id: eventId, handoff: { reason, detail } }) => h('li', {
      class: 'handoff-line', role: 'note', dataset: { eventId: eventId || '', reason },
    }, `Bot handed off to a human: ${reason}${detail ? ` — ${detail}` : ''}`);
    history.replaceChildren(...ordered().map((message) => (message.handoff ? handoffLine(message) : h('li', {
      class: `message ${message.direction}`,
      dataset: { eventId: message.event_id || '', direction: message.direction, sender: message.sender_kind || '' },
    },
    h('p', { class: 'text' }, message.text),
    h('span', { class: 'meta' },
      message.sender_kind === 'bot' ? h('span', { class: 'who badge-bot', title: 'Sent by the bot' }, 'bot')
        : h('span', { class: 'who' }, message.sender_kind === 'customer' ? 'Customer' : message.sender_id === context.user.id ? 'You' : 'Agent'),
      message.created_at ? h('time', {}, time(message.created_at)) : null,
      message.direction === 'outbound' ? tick(message.status, message.failure_reason) : null)))));
    if (nearBottom) history.parentElement.scrollTop = history.parentElement.scrollHeight;
  }

  function fromRest(item) {
    // A handoff, should the history carry one (as the event, or its payload beside the id and offset).
    if (item.type === 'conversation.handoff') return handoff(item.event_id, item.offset, item.data || item);
    return { ...item, sender_kind: item.sender_kind ?? item.sender?.kind, status: item.status };
  }

  /// A handoff is kept among the messages (by its event id, in offset order) and shown as a line.
  function handoff(eventId, offset, data) {
    return { event_id: eventId, offset, handoff: { reason: data.reason, detail: data.detail || null } };
  }

  /// Drops the on-screen copy of a reply once the message itself is known: by its client id
  /// (live events carry it) or by the event id its send was acknowledged with (history from REST
  /// does not carry the client id, and may arrive before or after the acknowledgement).
  function settle(message) {
    if (message.client_msg_id) pending.delete(message.client_msg_id);
    for (const [clientMsgId, copy] of pending) {
      if (copy.event_id && copy.event_id === message.event_id) pending.delete(clientMsgId);
    }
  }

  function add(message) {
    settle(message);
    if (messages.has(message.event_id)) return;
    messages.set(message.event_id, message);
  }

  function onEvent(frame) {
    const data = frame.data;
    switch (frame.type) {
      case 'message.created':
        add({
          event_id: frame.event_id,
          offset: frame.offset,
          direction: data.direction,
          sender_kind: data.sender.kind,
          sender_id: data.sender.id || null,
          text: data.text,
          status: data.direction === 'outbound' ? 'queued' : null,
          client_msg_id: data.client_msg_id || null,
          created_at: new Date(Number(frame.offset.split('-')[0])).toISOString(),
        });
        if (data.direction === 'inbound') {
          showTyping(false);
          context.connection.read(conversationId, frame.offset);
        }
        renderMessages();
        break;
      case 'message.status': {
        const message = messages.get(data.message_id);
        if (message && (STATUS_RANK[data.status] ?? -1) > (STATUS_RANK[message.status] ?? -1)) {
          message.status = data.status;
          if (data.reason) message.failure_reason = data.reason;
          renderMessages();
        }
        break;
      }
      case 'typing':
        if (data.who && data.who.kind === 'customer') showTyping(data.typing);
        break;
      case 'conversation.assigned':
        if (conversation) { conversation.assignee_id = data.assignee_id; renderHead(); onChange(); }
        break;
      case 'conversation.handoff':
        add(handoff(frame.event_id, frame.offset, data));
        renderMessages();
        if (conversation) { conversation.handoff = { reason: data.reason, detail: data.detail || null }; renderHead(); }
        break;
      case 'conversation.status_changed':
        if (conversation) {
          conversation.status = data.status;
          if (data.status === 'resolved') conversation.handoff = null;
          renderHead();
          onChange();
        }
        break;
      default:
        break;
    }
  }

  function showTyping(on) {
    clearTimeout(typingTimer);
    typing.hidden = !on;
    if (on) typingTimer = setTimeout(() => { typing.hidden = true; }, TYPING_SHOWN_MS);
  }

  async function send() {
    const text = reply.value.trim();
    if (!text || reply.disabled) return;
    reply.value = '';
    lastTyping = 0;
    const clientMsgId = newClientId();
    const message = { event_id: null, offset: null, direction: 'outbound', sender_kind: 'agent', sender_id: context.user.id, text, status: 'queued', client_msg_id: clientMsgId, created_at: new Date().toISOString() };
    pending.set(clientMsgId, message);
    renderMessages();
    const acknowledged = (answer) => {
      message.event_id = answer && answer.event_id ? answer.event_id : null;
      const stored = message.event_id && messages.get(message.event_id);
      if (stored) settle(stored);
      renderMessages();
    };
    try {
      acknowledged(await context.connection.send(conversationId, text, clientMsgId));
    } catch {
      // No socket right now: the same command over REST, idempotent by client_msg_id.
      try {
        acknowledged(await api('POST', `/v1/conversations/${conversationId}/messages`, { text, client_msg_id: clientMsgId }));
      } catch (failure) {
        pending.delete(clientMsgId);
        renderMessages();
        problem.replaceChildren(notice(`Not sent: ${failure.message}`, 'error'));
        reply.value = text;
      }
    }
  }

  async function loadOlder() {
    if (!olderCursor) return;
    const page = await api('GET', `/v1/conversations/${conversationId}/messages?limit=50&cursor=${encodeURIComponent(olderCursor)}`);
    page.items.forEach((item) => add(fromRest(item)));
    olderCursor = page.next_cursor;
    older.hidden = !olderCursor;
    renderMessages();
  }

  async function load() {
    problem.replaceChildren();
    history.replaceChildren(h('li', { class: 'loading' }, 'Loading…'));
    try {
      conversation = await api('GET', `/v1/conversations/${conversationId}`);
      const page = await api('GET', `/v1/conversations/${conversationId}/messages?limit=50`);
      if (disposed) return null;
      messages.clear();
      page.items.forEach((item) => add(fromRest(item)));
      olderCursor = page.next_cursor;
      older.hidden = !olderCursor;
      renderHead();
      renderMessages();
      const newest = page.items[0];
      if (newest && newest.direction === 'inbound') context.connection.read(conversationId, newest.offset);
      reply.focus();
      return newest ? newest.offset : '0-0';
    } catch (failure) {
      if (!disposed) problem.replaceChildren(notice(failure.status === 404 ? 'No such conversation.' : failure.message, 'error'));
      return null;
    }
  }

  load().then((since) => {
    if (disposed || since === null) return;
    context.connection.subscribe(channel, {
      since,
      onEvent,
      // The server could not replay the gap: reload from REST and continue from there.
      onReset: () => { load(); },
    });
  });

  reply.addEventListener('input', () => {
    const now = Date.now();
    if (now - lastTyping > 2000) {
      lastTyping = now;
      context.connection.typing(conversationId, true);
    }
  });

  return () => {
    disposed = true;
    clearTimeout(typingTimer);
    context.connection.unsubscribe(channel);
  };
}
