// The reply box of a conversation: a reply to the customer or a private note for the team,
// canned responses after a leading `/`, and `@` mentions of the tenant's users in notes.

import { api } from './api.js';
import { h } from './ui.js';

const SHOWN = 8;

/// A list of choices under a text box, driven from the box's keys (the box keeps the focus,
/// and points screen readers at the active choice).
function suggestionList(textarea, id) {
  const list = h('ul', { id, class: 'suggestions', role: 'listbox', hidden: true });
  let items = [];
  let active = 0;
  let pick = null;

  function paint() {
    [...list.children].forEach((option, index) => option.setAttribute('aria-selected', index === active ? 'true' : 'false'));
    const current = list.children[active];
    if (current && current.getAttribute('role') === 'option') {
      textarea.setAttribute('aria-activedescendant', current.id);
      current.scrollIntoView({ block: 'nearest' });
    } else {
      textarea.removeAttribute('aria-activedescendant');
    }
  }

  const control = {
    element: list,
    get open() { return !list.hidden; },
    /// `render(item)` gives an option's content; `onPick(item)` is called on Enter or a click.
    show(choices, render, onPick, empty) {
      items = choices;
      pick = onPick;
      active = Math.min(active, Math.max(0, items.length - 1));
      list.replaceChildren(...(items.length
        ? items.map((item, index) => h('li', {
          id: `${id}-${index}`,
          role: 'option',
          class: 'suggestion',
          // The box keeps the focus; the click still picks.
          onmousedown: (event) => event.preventDefault(),
          onclick: () => pick(items[index]),
        }, render(item)))
        : [h('li', { class: 'suggestion-empty', role: 'presentation' }, empty)]));
      list.hidden = false;
      textarea.setAttribute('aria-expanded', 'true');
      paint();
    },
    hide() {
      if (list.hidden) return;
      list.hidden = true;
      items = [];
      active = 0;
      textarea.setAttribute('aria-expanded', 'false');
      textarea.removeAttribute('aria-activedescendant');
    },
    /// Handles the keys that belong to an open list; true when it did.
    key(event) {
      if (list.hidden) return false;
      if (event.key === 'Escape') { control.hide(); return true; }
      if (!items.length) return false;
      if (event.key === 'ArrowDown') { active = (active + 1) % items.length; paint(); return true; }
      if (event.key === 'ArrowUp') { active = (active - 1 + items.length) % items.length; paint(); return true; }
      if ((event.key === 'Enter' && !event.shiftKey) || event.key === 'Tab') { pick(items[active]); return true; }
      return false;
    },
    reset() { active = 0; },
  };
  return control;
}

/// `onSubmit()` sends what the box holds, as the current mode says; `onInput()` follows typing.
export function composer(context, conversationId, { onSubmit, onInput, onModeChange }) {
  let mode = 'reply';
  let canned = null; // the conversation's canned responses, fetched when the list opens
  let cannedRequest = 0;
  let listFor = null; // 'canned' | 'mention' | null
  const mentions = new Map(); // user id → the "@name" inserted for them

  const reply = h('textarea', {
    id: 'reply',
    rows: '3',
    'aria-label': 'Reply',
    'aria-autocomplete': 'list',
    'aria-controls': 'reply-suggestions',
    'aria-expanded': 'false',
  });
  const suggestions = suggestionList(reply, 'reply-suggestions');
  const sendButton = h('button', { type: 'button', id: 'reply-send', onclick: () => onSubmit() }, 'Send');
  const modeInput = (value, label) => h('label', { class: 'mode-option' },
    h('input', { type: 'radio', name: `compose-mode-${conversationId}`, id: `mode-${value}`, value, checked: value === mode, onchange: () => setMode(value) }),
    h('span', {}, label));
  const modes = h('fieldset', { class: 'compose-mode' },
    h('legend', { class: 'visually-hidden' }, 'Write'),
    modeInput('reply', 'Reply'), modeInput('note', 'Private note'));
  const hint = h('span', { class: 'compose-hint muted' });
  const element = h('div', { class: 'composer', dataset: { mode } },
    h('div', { class: 'composer-bar' }, modes, hint),
    h('div', { class: 'composer-row' }, reply, sendButton),
    suggestions.element);

  function setMode(next) {
    mode = next;
    element.dataset.mode = mode;
    element.querySelector(`#mode-${mode}`).checked = true;
    reply.setAttribute('aria-label', mode === 'note' ? 'Private note' : 'Reply');
    reply.placeholder = mode === 'note'
      ? 'A note only your team sees — @ to mention someone, Enter to add'
      : 'Write a reply — / for canned responses, Enter to send, Shift+Enter for a new line';
    hint.textContent = mode === 'note' ? 'The customer never sees notes.' : '';
    sendButton.textContent = mode === 'note' ? 'Add note' : 'Send';
    suggestions.hide();
    onModeChange?.(mode);
  }
  setMode('reply');

  async function showCanned(query) {
    if (listFor !== 'canned') {
      listFor = 'canned';
      suggestions.reset();
      canned = null;
      const mine = ++cannedRequest;
      suggestions.show([], () => '', () => {}, 'Loading canned responses…');
      try {
        const answer = await api('GET', `/v1/conversations/${conversationId}/canned_responses`);
        if (mine !== cannedRequest || listFor !== 'canned') return;
        canned = answer.items;
      } catch (failure) {
        if (mine === cannedRequest && listFor === 'canned') suggestions.show([], () => '', () => {}, `Cannot load canned responses: ${failure.message}`);
        return;
      }
      query = cannedQuery();
      if (query === null) return;
    }
    if (!canned) return;
    const wanted = query.toLowerCase();
    const matches = canned
      .filter((item) => !wanted || item.shortcode.includes(wanted) || item.text.toLowerCase().includes(wanted)
        || (item.rendered || '').toLowerCase().includes(wanted))
      .sort((a, b) => Number(b.shortcode.startsWith(wanted)) - Number(a.shortcode.startsWith(wanted)))
      .slice(0, SHOWN);
    suggestions.show(matches,
      (item) => [h('strong', { class: 'shortcode' }, `/${item.shortcode}`), h('span', { class: 'suggestion-text' }, item.rendered ?? item.text)],
      (item) => {
        reply.value = item.rendered ?? item.text;
        reply.setSelectionRange(reply.value.length, reply.value.length);
        closeList();
        onInput?.();
      },
      canned.length ? 'No canned response matches.' : 'No canned responses yet: add them on the Workspace page.');
  }

  /// What follows a leading `/` (on the box's first line), or null.
  function cannedQuery() {
    const match = /^\/([^\n]*)$/.exec(reply.value);
    return match ? match[1].trim() : null;
  }

  /// The `@word` being typed just before the caret, in note mode.
  function mentionAtCaret() {
    if (mode !== 'note') return null;
    const before = reply.value.slice(0, reply.selectionStart);
    const match = /(^|\s)@([^\s@]{0,40})$/.exec(before);
    return match ? { query: match[2], start: before.length - match[2].length - 1 } : null;
  }

  async function showMentions({ query, start }) {
    if (listFor !== 'mention') suggestions.reset();
    listFor = 'mention';
    let users;
    try {
      users = await context.directory.users();
    } catch (failure) {
      suggestions.show([], () => '', () => {}, `Cannot load users: ${failure.message}`);
      return;
    }
    const current = mentionAtCaret();
    if (listFor !== 'mention' || !current || current.start !== start) return;
    const wanted = current.query.toLowerCase();
    const matches = users
      .filter((user) => user.id !== context.user.id && ['owner', 'admin', 'agent'].includes(user.role))
      .filter((user) => user.name.toLowerCase().includes(wanted) || user.email.toLowerCase().startsWith(wanted))
      .slice(0, SHOWN);
    suggestions.show(matches,
      (user) => [h('strong', {}, user.name), h('span', { class: 'suggestion-text' }, user.email)],
      (user) => {
        const tag = `@${user.name}`;
        const caret = reply.selectionStart;
        reply.value = `${reply.value.slice(0, start)}${tag} ${reply.value.slice(caret)}`;
        const after = start + tag.length + 1;
        reply.setSelectionRange(after, after);
        mentions.set(user.id, tag);
        closeList();
      },
      'Nobody of that name.');
  }

  function closeList() {
    listFor = null;
    cannedRequest += 1;
    suggestions.hide();
  }

  function follow() {
    const slash = cannedQuery();
    if (slash !== null) { showCanned(slash); return; }
    const mention = mentionAtCaret();
    if (mention) { showMentions(mention); return; }
    if (listFor) closeList();
  }

  reply.addEventListener('input', () => { follow(); onInput?.(); });
  reply.addEventListener('click', () => { if (listFor === 'mention' || mentionAtCaret()) follow(); });
  reply.addEventListener('blur', () => closeList());
  reply.addEventListener('keydown', (event) => {
    if (event.isComposing) return;
    if (suggestions.key(event)) {
      event.preventDefault();
      return;
    }
    if (event.key === 'Enter' && !event.shiftKey) {
      event.preventDefault();
      onSubmit();
    }
  });

  return {
    element,
    reply,
    get mode() { return mode; },
    setMode,
    /// The users still named in `text`, of those picked from the list.
    mentionsIn(text) {
      return [...mentions].filter(([, tag]) => text.includes(tag)).map(([id]) => id);
    },
    forgetMentions() { mentions.clear(); },
    setDisabled(disabled) {
      reply.disabled = disabled;
      sendButton.disabled = disabled;
      if (disabled) closeList();
    },
  };
}
