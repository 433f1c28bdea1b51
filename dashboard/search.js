// The search box in the header: the tenant's messages (snippets with the matched words marked)
// and contacts. A message opens its conversation; a contact opens its newest conversation.

import { api } from './api.js';
import { dateTime, h, highlighted, notice } from './ui.js';

const DEBOUNCE_MS = 350;
const PAGE = 20;

export function searchBox() {
  let timer = null;
  let round = 0;
  let lastQuery = '';

  const input = h('input', {
    id: 'search',
    type: 'search',
    name: 'q',
    placeholder: 'Search messages and contacts',
    autocomplete: 'off',
    'aria-label': 'Search messages and contacts',
    'aria-controls': 'search-results',
    'aria-keyshortcuts': '/',
  });
  const results = h('div', { id: 'search-results', class: 'search-results', role: 'region', 'aria-label': 'Search results', hidden: true, tabindex: '-1' });
  const form = h('form', {
    class: 'search',
    role: 'search',
    onsubmit: (event) => {
      event.preventDefault();
      clearTimeout(timer);
      run(input.value.trim(), true);
    },
  }, input, results);

  input.addEventListener('input', () => {
    clearTimeout(timer);
    const q = input.value.trim();
    if (q.length < 2) { close(); return; }
    timer = setTimeout(() => run(q), DEBOUNCE_MS);
  });
  input.addEventListener('focus', () => { if (input.value.trim() && results.childElementCount) results.hidden = false; });
  form.addEventListener('keydown', (event) => {
    if (event.key === 'Escape') {
      close();
      input.focus();
      return;
    }
    if (event.key !== 'ArrowDown' && event.key !== 'ArrowUp') return;
    const choices = [...results.querySelectorAll('a.search-hit, button.search-contact, button.search-more')];
    if (!choices.length) return;
    event.preventDefault();
    const at = choices.indexOf(document.activeElement);
    const next = event.key === 'ArrowDown' ? Math.min(at + 1, choices.length - 1) : at - 1;
    (next < 0 ? input : choices[next]).focus();
  });
  // A click elsewhere closes the results.
  const onOutside = (event) => { if (!form.contains(event.target)) close(); };
  document.addEventListener('mousedown', onOutside);

  function close() {
    round += 1;
    results.hidden = true;
  }

  async function run(q, force = false) {
    if (!q) { close(); return; }
    if (q === lastQuery && !force && !results.hidden) return;
    lastQuery = q;
    const mine = ++round;
    results.hidden = false;
    results.setAttribute('aria-busy', 'true');
    results.replaceChildren(h('p', { class: 'muted search-loading' }, 'Searching…'));
    try {
      const answer = await api('GET', `/v1/search?q=${encodeURIComponent(q)}&limit=${PAGE}`);
      if (mine !== round) return;
      render(q, answer);
    } catch (failure) {
      if (mine === round) results.replaceChildren(notice(failure.message, 'error'));
    } finally {
      if (mine === round) results.removeAttribute('aria-busy');
    }
  }

  function messageHit(hit) {
    return h('li', {},
      h('a', {
        class: 'search-hit',
        href: `#/inbox/${hit.conversation_id}`,
        dataset: { conversation: hit.conversation_id, message: hit.message_id },
        onclick: () => close(),
      },
      h('span', { class: 'snippet' }, highlighted(hit.snippet)),
      h('span', { class: 'meta' }, hit.direction === 'inbound' ? 'Customer' : 'Team', ' · ', h('time', { datetime: hit.created_at }, dateTime(hit.created_at)))));
  }

  function render(q, answer) {
    const messages = h('ul', { class: 'search-messages', 'aria-label': 'Messages' }, answer.messages.map(messageHit));
    const more = (cursor) => (cursor ? h('button', {
      type: 'button',
      class: 'link search-more',
      onclick: async (event) => {
        const button = event.currentTarget;
        button.disabled = true;
        const mine = round;
        try {
          const next = await api('GET', `/v1/search?q=${encodeURIComponent(q)}&limit=${PAGE}&cursor=${encodeURIComponent(cursor)}`);
          if (mine !== round) return;
          messages.append(...next.messages.map(messageHit));
          button.replaceWith(more(next.next_cursor) || '');
        } catch (failure) {
          button.replaceWith(notice(failure.message, 'error'));
        }
      },
    }, 'More messages') : null);
    const contacts = answer.contacts.map((contact) => h('li', {},
      h('button', { type: 'button', class: 'search-contact', dataset: { id: contact.id }, onclick: () => openContact(contact) },
        h('strong', {}, contact.name || contact.external_id),
        h('span', { class: 'muted' }, [contact.email, contact.phone].filter(Boolean).join(' · ') || contact.external_id))));
    const empty = !answer.messages.length && !answer.contacts.length;
    results.replaceChildren(...(empty ? [h('p', { class: 'muted' }, `Nothing matches “${q}”.`)] : [
      answer.messages.length ? h('h3', {}, 'Messages') : null,
      answer.messages.length ? messages : null,
      more(answer.next_cursor),
      contacts.length ? h('h3', {}, 'Contacts') : null,
      contacts.length ? h('ul', { class: 'search-contacts', 'aria-label': 'Contacts' }, contacts) : null,
    ].filter(Boolean)));
  }

  async function openContact(contact) {
    try {
      const detail = await api('GET', `/v1/contacts/${contact.id}`);
      if (detail.conversations.length) {
        close();
        location.hash = `#/inbox/${detail.conversations[0].id}`;
      } else {
        results.prepend(notice(`${contact.name || contact.external_id} has no conversation you can open.`));
      }
    } catch (failure) {
      results.prepend(notice(failure.message, 'error'));
    }
  }

  return { element: form, input, close, dispose: () => document.removeEventListener('mousedown', onOutside) };
}
