// One conversation: history and private notes from REST, live events from the socket, ticks,
// typing, the reply box (replies, notes, canned responses), labels, the agent's actions and the
// contact beside it.

import { api } from '../api.js';
import { compareOffsets, newClientId } from '../connection.js';
import { composer as makeComposer } from '../composer.js';
import { mountContactPanel } from '../contact-panel.js';
import { h, labelChip, notice, STATUS_RANK, tick, time } from '../ui.js';

const TYPING_SHOWN_MS = 6000;
// A label change is an event: if it has not come back on the socket by then (no socket, say),
// read the conversation again.
const LABELS_REREAD_MS = 1500;

export function mount(container, context, conversationId, { onChange }) {
  const channel = `conversation:${conversationId}`;
  const messages = new Map(); // event_id → message
  const notes = new Map(); // note id (its event id) → note
  const pending = new Map(); // client_msg_id → message not yet appended
  let conversation = null;
  let olderCursor = null;
  let typingTimer = null;
  let labelsTimer = null;
  let disposed = false;
  let lastTyping = 0;
  let contactPanel = null;
  const askedForLabels = new Set();
  // Moving between conversations from the keyboard keeps the keys for moving on: the reply box
  // does not take the focus then.
  const quietFocus = Boolean(context.quietFocus);
  context.quietFocus = false;

  const title = h('h2', { id: 'conv-title' }, 'Conversation');
  const statusLabel = h('span', { id: 'conv-status', class: 'status' });
  const assigneeLabel = h('span', { id: 'conv-assignee', class: 'assignee' });
  // Why the bot stepped aside, until the conversation is resolved.
  const handoffLabel = h('span', { class: 'handoff-badge', hidden: true });
  const actions = h('div', { class: 'actions' });
  const labels = h('div', { class: 'labels', id: 'conv-labels', role: 'group', 'aria-label': 'Labels' });
  const history = h('ol', { class: 'messages', id: 'messages', 'aria-label': 'Messages and notes', tabindex: '0' });
  const older = h('button', { class: 'link older', hidden: true, onclick: () => loadOlder() }, 'Show older messages');
  const typing = h('p', { id: 'typing', class: 'typing', hidden: true, 'aria-live': 'polite' }, 'The customer is typing…');
  const problem = h('div', { class: 'problem' });
  const box = makeComposer(context, conversationId, {
    onSubmit: () => (box.mode === 'note' ? sendNote() : send()),
    onInput: () => typed(),
    onModeChange: () => renderHead(),
  });
  const reply = box.reply;
  const panel = h('aside', { class: 'contact-panel', id: 'contact-panel' });
  container.classList.add('with-contact');
  container.replaceChildren(
    h('div', { class: 'conversation-main' },
      h('header', { class: 'conversation-head' }, title, statusLabel, assigneeLabel, handoffLabel, actions, labels),
      problem,
      h('div', { class: 'scroller' }, older, history),
      typing,
      box.element),
    panel,
  );

  function renderHead() {
    if (!conversation) return;
    const contact = conversation.contact;
    title.textContent = contact.name || contact.external_id;
    statusLabel.textContent = conversation.status;
    statusLabel.className = `status status-${conversation.status}`;
    statusLabel.dataset.status = conversation.status;
    const assignee = conversation.assignee_id;
    assigneeLabel.textContent = !assignee ? 'Unassigned' : assignee === context.user.id ? 'Assigned to you' : `Assigned to ${context.directory.nameOf(assignee)}`;
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
    // Nothing reaches a blocked customer; the team may still write notes.
    box.setDisabled(conversation.status === 'blocked' && box.mode === 'reply');
    renderLabels();
  }

  function renderLabels() {
    if (!conversation) return;
    const known = context.directory.known.labels;
    const on = conversation.labels || [];
    // A label this page has not heard of was made since it read them: read them again (once:
    // a label deleted meanwhile stays unknown).
    const unknown = on.filter((id) => !context.directory.labelById(id) && !askedForLabels.has(id));
    if (unknown.length && context.directory.loaded.has('labels')) {
      unknown.forEach((id) => askedForLabels.add(id));
      context.directory.refresh('labels').catch(() => {});
    }
    const chips = on.map((id) => context.directory.labelById(id)).filter(Boolean)
      .map((label) => labelChip(label, () => changeLabels({ remove: [label.id] })));
    const addable = known.filter((label) => !on.includes(label.id));
    const add = h('select', {
      id: 'add-label',
      'aria-label': 'Add a label',
      disabled: !addable.length,
      onchange: () => { if (add.value) changeLabels({ add: [add.value] }); },
    }, h('option', { value: '' }, addable.length || known.length ? '+ Label' : 'No labels yet'),
    addable.map((label) => h('option', { value: label.id }, label.name)));
    labels.replaceChildren(...chips, add);
  }

  async function changeLabels(change) {
    problem.replaceChildren();
    try {
      await api('POST', `/v1/conversations/${conversationId}/labels`, change);
      clearTimeout(labelsTimer);
      labelsTimer = setTimeout(rereadLabels, LABELS_REREAD_MS);
    } catch (failure) {
      problem.replaceChildren(notice(failure.message, 'error'));
      renderLabels();
    }
  }

  async function rereadLabels() {
    try {
      const fresh = await api('GET', `/v1/conversations/${conversationId}`);
      if (disposed || !conversation) return;
      conversation.labels = fresh.labels;
      renderLabels();
    } catch { /* the next event or load shows them */ }
  }

  async function act(action, body) {
    problem.replaceChildren();
    try {
      await api('POST', `/v1/conversations/${conversationId}/${action}`, body || {});
    } catch (failure) {
      problem.replaceChildren(notice(failure.message, 'error'));
    }
  }

  /// Messages and notes by offset, then the replies not yet appended. While older messages are
  /// not loaded, notes older than the oldest shown wait with them.
  function ordered() {
    const stored = [...messages.values()].sort((a, b) => compareOffsets(a.offset, b.offset));
    const oldest = olderCursor && stored.length ? stored[0].offset : null;
    const shownNotes = [...notes.values()].filter((note) => !oldest || compareOffsets(note.offset, oldest) >= 0);
    return stored.concat(shownNotes).sort((a, b) => compareOffsets(a.offset, b.offset)).concat([...pending.values()]);
  }

  /// A note's text, its mentions of users in bold.
  function noteText(note) {
    const tags = (note.mentions || []).map((id) => context.directory.userById(id)).filter(Boolean).map((user) => `@${user.name}`);
    if (!tags.length) return [note.text];
    const pattern = new RegExp(`(${tags.map((tag) => tag.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})`);
    return note.text.split(pattern).map((part, index) => (index % 2 ? h('strong', { class: 'mention' }, part) : part));
  }

  function noteLine(note) {
    const mentioned = (note.mentions || []).map((id) => context.directory.nameOf(id));
    return h('li', { class: 'note', role: 'note', 'aria-label': 'Private note', dataset: { noteId: note.id, offset: note.offset } },
      h('span', { class: 'note-tag' }, 'Private note'),
      h('p', { class: 'note-text' }, noteText(note)),
      h('span', { class: 'meta' },
        h('span', { class: 'who' }, note.author_kind === 'agent' ? context.directory.nameOf(note.author_id) : 'System'),
        mentioned.length ? h('span', { class: 'mentions' }, `mentions ${mentioned.join(', ')}`) : null,
        note.created_at ? h('time', {}, time(note.created_at)) : null));
  }

  function renderMessages() {
    const nearBottom = history.parentElement.scrollHeight - history.parentElement.scrollTop - history.parentElement.clientHeight < 80;
    const handoffLine = ({ event_id: eventId, handoff: { reason, detail } }) => h('li', {
      class: 'handoff-line', role: 'note', dataset: { eventId: eventId || '', reason },
    }, `Bot handed off to a human: ${reason}${detail ? ` — ${detail}` : ''}`);
    history.replaceChildren(...ordered().map((message) => (message.note ? noteLine(message) : message.handoff ? handoffLine(message) : h('li', {
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

  function addNote(note) {
    if (!notes.has(note.id)) notes.set(note.id, { ...note, note: true });
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
      case 'note.created':
        addNote({
          id: frame.event_id,
          offset: frame.offset,
          author_kind: data.author?.kind || 'agent',
          author_id: data.author?.id || null,
          text: data.text,
          mentions: data.mentions || [],
          created_at: new Date(Number(frame.offset.split('-')[0])).toISOString(),
        });
        renderMessages();
        break;
      case 'conversation.labels':
        if (conversation) {
          const removed = new Set(data.removed || []);
          const kept = (conversation.labels || []).filter((id) => !removed.has(id));
          conversation.labels = kept.concat((data.added || []).filter((id) => !kept.includes(id)));
          clearTimeout(labelsTimer);
          renderLabels();
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

  async function sendNote() {
    const text = reply.value.trim();
    if (!text) return;
    const mentions = box.mentionsIn(text);
    reply.value = '';
    problem.replaceChildren();
    try {
      const answer = await api('POST', `/v1/conversations/${conversationId}/notes`, { text, mentions });
      box.forgetMentions();
      // Shown at once under its event id and offset; the event, when it comes, is the same note.
      if (answer && answer.offset) {
        addNote({ id: answer.event_id, offset: answer.offset, author_kind: 'agent', author_id: context.user.id, text, mentions, created_at: new Date().toISOString() });
        renderMessages();
      }
    } catch (failure) {
      problem.replaceChildren(notice(`Note not added: ${failure.message}`, 'error'));
      if (!reply.value) reply.value = text;
    }
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
      const [page, noteList] = await Promise.all([
        api('GET', `/v1/conversations/${conversationId}/messages?limit=50`),
        api('GET', `/v1/conversations/${conversationId}/notes`),
      ]);
      if (disposed) return null;
      messages.clear();
      page.items.forEach((item) => add(fromRest(item)));
      notes.clear();
      noteList.items.forEach(addNote);
      olderCursor = page.next_cursor;
      older.hidden = !olderCursor;
      renderHead();
      renderMessages();
      showContact();
      const newest = page.items[0];
      if (newest && newest.direction === 'inbound') context.connection.read(conversationId, newest.offset);
      if (!quietFocus) reply.focus();
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

  /// The contact beside the conversation, mounted once (it follows its contact's events itself).
  function showContact() {
    if (contactPanel || !conversation) return;
    contactPanel = mountContactPanel(panel, context, {
      contactId: conversation.contact.id,
      conversationId,
      onContact: (contact) => {
        if (!conversation) return;
        conversation.contact = { ...conversation.contact, id: contact.id, name: contact.name ?? conversation.contact.name };
        renderHead();
      },
    });
  }

  // The customer sees "typing…" for replies, never for notes.
  function typed() {
    if (box.mode !== 'reply') return;
    const now = Date.now();
    if (now - lastTyping > 2000) {
      lastTyping = now;
      context.connection.typing(conversationId, true);
    }
  }

  // Names of users and labels arrive on their own; redraw what shows them.
  const onDirectory = () => { if (conversation) { renderHead(); renderMessages(); } };
  context.directory.addEventListener('change', onDirectory);
  Promise.all([context.directory.users(), context.directory.labels()]).then(() => { if (!disposed) onDirectory(); }, () => {});

  return () => {
    disposed = true;
    clearTimeout(typingTimer);
    clearTimeout(labelsTimer);
    contactPanel?.dispose();
    context.directory.removeEventListener('change', onDirectory);
    context.connection.unsubscribe(channel);
  };
}
