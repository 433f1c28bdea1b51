// The contact beside a conversation: its details (edited in place), channel identities, when it
// was first and last seen, its other conversations, and merging another contact of the same
// person into it. Edits and merges are events: the panel shows them when they come back on the
// `inbox` channel, and reads the contact again once the writer has stored them.

import { api } from './api.js';
import { dateTime, h, notice } from './ui.js';

const FIELDS = [
  { key: 'name', label: 'Name', type: 'text', autocomplete: 'name' },
  { key: 'email', label: 'E-mail', type: 'email', autocomplete: 'email' },
  { key: 'phone', label: 'Phone', type: 'tel', autocomplete: 'tel' },
];

// PostgreSQL trails the stream by a moment: read again after these delays.
const REREAD_MS = [300, 1000, 2500];

/// Mounts the panel into `element`; `onContact(detail)` hears of every version read or edited.
export function mountContactPanel(element, context, { contactId, conversationId, onContact }) {
  let contact = null;
  let currentId = contactId;
  let editing = null;
  let disposed = false;
  let rereads = [];
  let loadRound = 0;

  const heading = h('h3', { id: 'contact-heading' }, 'Contact');
  const status = h('div', { class: 'contact-status', id: 'contact-status' });
  const fields = h('dl', { class: 'contact-fields' });
  const seen = h('dl', { class: 'contact-seen' });
  const identities = h('ul', { class: 'contact-identities', 'aria-label': 'Channel identities' });
  const others = h('ul', { class: 'contact-conversations', id: 'contact-conversations', 'aria-label': 'Other conversations' });
  const merge = h('div', { class: 'contact-merge' });
  element.replaceChildren(heading, status, fields, seen,
    h('h4', {}, 'Channels'), identities,
    h('h4', {}, 'Other conversations'), others,
    merge);
  element.setAttribute('aria-labelledby', 'contact-heading');

  async function load() {
    const mine = ++loadRound;
    try {
      const detail = await api('GET', `/v1/contacts/${currentId}`);
      if (disposed || mine !== loadRound) return;
      contact = detail;
      // A merged contact answers with the one it now belongs to.
      currentId = detail.id;
      render();
      onContact?.(contact);
    } catch (failure) {
      if (!disposed && mine === loadRound) status.replaceChildren(notice(`Cannot load the contact: ${failure.message}`, 'error'));
    }
  }

  function rereadSoon() {
    rereads.forEach(clearTimeout);
    rereads = REREAD_MS.map((delay) => setTimeout(load, delay));
  }

  function render() {
    if (!contact) return;
    // A field being edited keeps what the agent typed.
    if (!editing) renderFields();
    seen.replaceChildren(
      h('dt', {}, 'First seen'), h('dd', { id: 'contact-first-seen' }, dateTime(contact.first_seen_at)),
      h('dt', {}, 'Last seen'), h('dd', { id: 'contact-last-seen' }, contact.last_seen_at ? dateTime(contact.last_seen_at) : 'Never wrote'));
    identities.replaceChildren(...(contact.identities.length ? contact.identities.map((identity) => {
      return h('li', { dataset: { inbox: identity.inbox_id } },
        h('span', { class: 'identity-inbox' }, `${identity.inbox_name} (${identity.inbox_kind})`),
        h('span', { class: 'identity-id' }, identity.external_id));
    }) : [h('li', { class: 'muted' }, 'None')]));
    const rest = contact.conversations.filter((item) => item.id !== conversationId);
    others.replaceChildren(...(rest.length ? rest.map((item) => h('li', {},
      h('a', { href: `#/inbox/${item.id}`, dataset: { id: item.id } },
        h('span', { class: `status status-${item.status}` }, item.status),
        ' · ', h('time', { datetime: item.last_activity_at }, dateTime(item.last_activity_at)))))
      : [h('li', { class: 'muted' }, 'None')]));
    if (!merge.childElementCount) renderMergeStart();
  }

  function renderFields() {
    fields.replaceChildren(...FIELDS.flatMap((field) => {
      const value = contact[field.key];
      if (editing === field.key) return [h('dt', {}, h('label', { for: `contact-edit-${field.key}` }, field.label)), h('dd', {}, editor(field, value))];
      return [
        h('dt', {}, field.label),
        h('dd', { class: 'contact-value' },
          h('span', { id: `contact-${field.key}`, class: value ? null : 'muted' }, value || '—'),
          h('button', {
            type: 'button', class: 'link', id: `contact-edit-${field.key}-button`,
            'aria-label': `Edit ${field.label.toLowerCase()}`,
            onclick: () => { editing = field.key; renderFields(); fields.querySelector('input')?.focus(); },
          }, 'Edit')),
      ];
    }));
  }

  function editor(field, value) {
    const error = h('div', { class: 'field-error' });
    const input = h('input', { id: `contact-edit-${field.key}`, type: field.type, autocomplete: field.autocomplete, value: value || '', required: true });
    const stop = () => { editing = null; renderFields(); };
    input.addEventListener('keydown', (event) => { if (event.key === 'Escape') { event.preventDefault(); stop(); } });
    return h('form', {
      class: 'contact-edit',
      onsubmit: async (event) => {
        event.preventDefault();
        const next = input.value.trim();
        if (next === (value || '')) { stop(); return; }
        input.disabled = true;
        try {
          await api('PATCH', `/v1/contacts/${currentId}`, { [field.key]: next });
          contact = { ...contact, [field.key]: next };
          onContact?.(contact);
          stop();
          rereadSoon();
        } catch (failure) {
          input.disabled = false;
          input.setAttribute('aria-invalid', 'true');
          error.replaceChildren(notice(failure.message, 'error'));
          input.focus();
        }
      },
    }, input,
    h('span', { class: 'edit-actions' },
      h('button', { type: 'submit' }, 'Save'),
      h('button', { type: 'button', class: 'link', onclick: stop }, 'Cancel')),
    error);
  }

  function renderMergeStart() {
    merge.replaceChildren(h('button', { type: 'button', id: 'contact-merge', onclick: renderMergeSearch }, 'Merge with…'));
  }

  function renderMergeSearch() {
    const query = h('input', { id: 'merge-query', type: 'search', placeholder: 'Name, e-mail or phone', autocomplete: 'off' });
    const results = h('ul', { class: 'merge-results', id: 'merge-results', 'aria-label': 'Contacts found' });
    const problem = h('div');
    merge.replaceChildren(h('form', {
      class: 'merge-search',
      onsubmit: async (event) => {
        event.preventDefault();
        const q = query.value.trim();
        if (!q) return;
        problem.replaceChildren();
        try {
          const answer = await api('GET', `/v1/search?q=${encodeURIComponent(q)}&limit=1`);
          const found = answer.contacts.filter((candidate) => candidate.id !== currentId);
          results.replaceChildren(...(found.length ? found.map((candidate) => h('li', {},
            h('button', { type: 'button', class: 'merge-candidate', dataset: { id: candidate.id }, onclick: () => renderMergeConfirm(candidate) },
              h('strong', {}, candidate.name || candidate.external_id),
              h('span', { class: 'muted' }, [candidate.email, candidate.phone].filter(Boolean).join(' · ') || candidate.external_id))))
            : [h('li', { class: 'muted' }, 'No other contact matches.')]));
        } catch (failure) {
          problem.replaceChildren(notice(failure.message, 'error'));
        }
      },
    },
    h('label', { for: 'merge-query' }, 'Find the other contact'),
    h('div', { class: 'inline-form' }, query, h('button', { type: 'submit' }, 'Search')),
    problem, results,
    h('button', { type: 'button', class: 'link', onclick: renderMergeStart }, 'Cancel')));
    query.focus();
  }

  function renderMergeConfirm(other) {
    const otherName = other.name || other.external_id;
    const thisName = contact.name || contact.identities[0]?.external_id || 'this contact';
    const problem = h('div');
    const confirm = h('button', {
      type: 'button', class: 'danger', id: 'merge-confirm',
      onclick: async () => {
        confirm.disabled = true;
        try {
          await api('POST', `/v1/contacts/${currentId}/merge`, { contact_id: other.id });
          merge.replaceChildren(notice(`Merging ${otherName} into ${thisName}…`, 'ok'));
          rereadSoon();
          setTimeout(() => { if (!disposed) renderMergeStart(); }, 3000);
        } catch (failure) {
          confirm.disabled = false;
          problem.replaceChildren(notice(failure.message, 'error'));
        }
      },
    }, 'Merge');
    merge.replaceChildren(h('div', { class: 'confirm', role: 'alertdialog', 'aria-label': 'Confirm the merge' },
      h('p', {}, `Merge ${otherName} into ${thisName}? Its conversations move here and its channel identities reach this contact from now on.`),
      confirm,
      h('button', { type: 'button', onclick: renderMergeStart }, 'Cancel'),
      problem));
    confirm.focus();
  }

  const stop = context.feed.listen((frame) => {
    const data = frame.data || {};
    if (frame.type === 'contact.updated' && data.contact_id === currentId && contact) {
      const changed = {};
      for (const { key } of FIELDS) if (data[key] !== undefined && data[key] !== null) changed[key] = data[key];
      contact = { ...contact, ...changed };
      render();
      onContact?.(contact);
    } else if (frame.type === 'contact.merged' && (data.contact_id === currentId || data.merged_id === currentId)) {
      currentId = data.contact_id;
      rereadSoon();
    }
  });
  const onDirectory = (event) => { if (event.detail === 'inboxes') render(); };
  context.directory.addEventListener('change', onDirectory);
  context.directory.inboxes().then(() => { if (!disposed) render(); }, () => {});

  load();
  return {
    reload: load,
    dispose() {
      disposed = true;
      rereads.forEach(clearTimeout);
      stop();
      context.directory.removeEventListener('change', onDirectory);
    },
  };
}
