// The team's workspace settings: labels (owners and admins define them), canned responses (any
// agent may write them) and who works each inbox (owners and admins).

import { api } from '../api.js';
import { h, labelChip, notice } from '../ui.js';

const ADMINS = ['owner', 'admin'];
const VARIABLES = ['{{contact.name}}', '{{contact.email}}', '{{contact.phone}}', '{{agent.name}}', '{{agent.email}}'];

export function mount(container, context) {
  const admin = ADMINS.includes(context.user.role);
  let disposed = false;
  const sections = [labelsSection(context, admin, () => disposed), cannedSection(() => disposed)];
  if (admin) sections.push(membersSection(context, () => disposed));
  container.replaceChildren(h('section', { class: 'ops workspace', 'aria-labelledby': 'workspace-title' },
    h('h2', { id: 'workspace-title' }, 'Workspace'),
    h('p', { class: 'muted' }, 'What the team shares: labels for conversations, canned responses for the reply box, and who works each inbox.'),
    ...sections));
  return () => { disposed = true; };
}

function labelsSection(context, admin, gone) {
  const list = h('ul', { class: 'workspace-labels', id: 'label-list', 'aria-label': 'Labels' });
  const status = h('div', { role: 'status' });

  async function load() {
    try {
      const labels = await context.directory.refresh('labels');
      if (gone()) return;
      list.replaceChildren(...(labels.length ? labels.map(row) : [h('li', { class: 'muted' }, 'No labels yet.')]));
    } catch (failure) {
      status.replaceChildren(notice(failure.message, 'error'));
    }
  }

  function row(label) {
    const item = h('li', { dataset: { labelId: label.id } }, labelChip(label));
    if (admin) {
      item.append(h('button', {
        type: 'button', class: 'link', 'aria-label': `Delete label ${label.name}`,
        onclick: () => item.replaceChildren(labelChip(label),
          h('span', { class: 'confirm' },
            h('p', {}, `Delete ${label.name}? It comes off every conversation.`),
            h('button', {
              type: 'button', class: 'danger',
              onclick: async () => {
                try {
                  await api('DELETE', `/v1/labels/${label.id}`);
                  load();
                } catch (failure) {
                  status.replaceChildren(notice(failure.message, 'error'));
                }
              },
            }, 'Delete'),
            h('button', { type: 'button', onclick: () => item.replaceWith(row(label)) }, 'Cancel'))),
      }, 'Delete'));
    }
    return item;
  }

  const name = h('input', { id: 'label-name', required: true, maxlength: '50', placeholder: 'VIP' });
  const colour = h('input', { id: 'label-colour', type: 'color', value: '#0b63c5' });
  const form = admin ? h('form', {
    class: 'ops-form workspace-form', id: 'label-form', 'aria-label': 'New label',
    onsubmit: async (event) => {
      event.preventDefault();
      status.replaceChildren();
      try {
        await api('POST', '/v1/labels', { name: name.value.trim(), colour: colour.value });
        name.value = '';
        status.replaceChildren(notice('Label added.', 'ok'));
        load();
      } catch (failure) {
        status.replaceChildren(notice(failure.message, 'error'));
        name.focus();
      }
    },
  },
  h('div', { class: 'inline-fields' },
    h('div', { class: 'field' }, h('label', { for: 'label-name' }, 'Name'), name),
    h('div', { class: 'field' }, h('label', { for: 'label-colour' }, 'Colour'), colour),
    h('button', { type: 'submit', class: 'primary' }, 'Add label'))) : h('p', { class: 'muted' }, 'Owners and admins define labels.');

  load();
  return h('section', { class: 'workspace-section', 'aria-labelledby': 'labels-title' },
    h('h3', { id: 'labels-title' }, 'Labels'), list, form, status);
}

function cannedSection(gone) {
  const table = h('tbody');
  const status = h('div', { role: 'status' });

  async function load() {
    try {
      const answer = await api('GET', '/v1/canned_responses');
      if (gone()) return;
      table.replaceChildren(...(answer.items.length ? answer.items.map(row)
        : [h('tr', {}, h('td', { colspan: '3', class: 'muted' }, 'No canned responses yet.'))]));
    } catch (failure) {
      status.replaceChildren(notice(failure.message, 'error'));
    }
  }

  function row(item) {
    const tr = h('tr', { dataset: { cannedId: item.id } },
      h('td', {}, h('code', {}, `/${item.shortcode}`)),
      h('td', { class: 'canned-text' }, item.text),
      h('td', { class: 'row-actions' },
        h('button', { type: 'button', class: 'link', 'aria-label': `Edit /${item.shortcode}`, onclick: () => tr.replaceWith(editor(item)) }, 'Edit'),
        h('button', {
          type: 'button', class: 'link', 'aria-label': `Delete /${item.shortcode}`,
          onclick: async () => {
            try {
              await api('DELETE', `/v1/canned_responses/${item.id}`);
              load();
            } catch (failure) {
              status.replaceChildren(notice(failure.message, 'error'));
            }
          },
        }, 'Delete')));
    return tr;
  }

  function editor(item) {
    const code = h('input', { value: item.shortcode, 'aria-label': 'Shortcode', pattern: '[a-z0-9_\\-]{1,32}', required: true });
    const text = h('textarea', { rows: '3', 'aria-label': 'Text', required: true });
    text.value = item.text;
    const error = h('div');
    const tr = h('tr', { dataset: { cannedId: item.id } },
      h('td', {}, code),
      h('td', {}, text, error),
      h('td', { class: 'row-actions' },
        h('button', {
          type: 'button',
          onclick: async () => {
            const change = {};
            if (code.value.trim() !== item.shortcode) change.shortcode = code.value.trim();
            if (text.value !== item.text) change.text = text.value;
            try {
              if (Object.keys(change).length) await api('PATCH', `/v1/canned_responses/${item.id}`, change);
              load();
            } catch (failure) {
              error.replaceChildren(notice(failure.message, 'error'));
            }
          },
        }, 'Save'),
        h('button', { type: 'button', class: 'link', onclick: () => tr.replaceWith(row(item)) }, 'Cancel')));
    return tr;
  }

  const shortcode = h('input', { id: 'canned-shortcode', required: true, pattern: '[a-z0-9_\\-]{1,32}', placeholder: 'thanks', 'aria-describedby': 'canned-shortcode-hint' });
  const text = h('textarea', { id: 'canned-text', rows: '3', required: true, placeholder: 'Thanks {{contact.name}}, glad to help! — {{agent.name}}', 'aria-describedby': 'canned-text-hint' });
  const form = h('form', {
    class: 'ops-form workspace-form', id: 'canned-form', 'aria-label': 'New canned response',
    onsubmit: async (event) => {
      event.preventDefault();
      status.replaceChildren();
      try {
        await api('POST', '/v1/canned_responses', { shortcode: shortcode.value.trim(), text: text.value });
        shortcode.value = '';
        text.value = '';
        status.replaceChildren(notice('Canned response added.', 'ok'));
        load();
      } catch (failure) {
        status.replaceChildren(notice(failure.message, 'error'));
      }
    },
  },
  h('div', { class: 'field' }, h('label', { for: 'canned-shortcode' }, 'Shortcode'), shortcode,
    h('small', { id: 'canned-shortcode-hint', class: 'muted' }, 'a-z, 0-9, - and _: type / and the shortcode in the reply box.')),
  h('div', { class: 'field' }, h('label', { for: 'canned-text' }, 'Text'), text,
    h('small', { id: 'canned-text-hint', class: 'muted' }, `Filled in for each conversation: ${VARIABLES.join(' ')}`)),
  h('button', { type: 'submit', class: 'primary' }, 'Add canned response'));

  load();
  return h('section', { class: 'workspace-section', 'aria-labelledby': 'canned-title' },
    h('h3', { id: 'canned-title' }, 'Canned responses'),
    h('table', { class: 'stream canned', id: 'canned-list' },
      h('thead', {}, h('tr', {}, ['Shortcode', 'Text', ''].map((title) => h('th', { scope: 'col' }, title)))),
      table),
    form, status);
}

function membersSection(context, gone) {
  const inbox = h('select', { id: 'members-inbox' });
  const people = h('fieldset', { class: 'members', id: 'members' }, h('legend', {}, 'Members'));
  const status = h('div', { role: 'status' });
  const save = h('button', { type: 'submit', class: 'primary', disabled: true }, 'Save members and routing');
  const mode = h('select', { id: 'routing-mode' },
    h('option', { value: 'manual' }, 'Manual: agents pick or assign'),
    h('option', { value: 'round_robin' }, 'Round robin among online members'));
  const capacity = h('input', { id: 'routing-capacity', type: 'number', min: 1, max: 1000, required: true, value: 10 });
  const grace = h('input', { id: 'routing-grace', type: 'number', min: 1, max: 86400, placeholder: 'never' });
  let users = [];

  async function start() {
    try {
      const [inboxes, everyone] = await Promise.all([context.directory.inboxes(), context.directory.users()]);
      if (gone()) return;
      users = everyone.filter((user) => ADMINS.includes(user.role) || user.role === 'agent');
      inbox.replaceChildren(...inboxes.map((item) => h('option', { value: item.id }, `${item.name} (${item.kind})`)));
      if (inboxes.length) show(); else status.replaceChildren(notice('No inboxes yet.'));
    } catch (failure) {
      status.replaceChildren(notice(failure.message, 'error'));
    }
  }

  async function show() {
    save.disabled = true;
    status.replaceChildren();
    const id = inbox.value;
    try {
      const [members, routing] = await Promise.all([
        api('GET', `/v1/inboxes/${id}/members`), api('GET', `/v1/inboxes/${id}/routing`)]);
      if (gone() || inbox.value !== id) return;
      mode.value = routing.mode;
      capacity.value = routing.agent_capacity;
      grace.value = routing.reassign_after_seconds ?? '';
      people.replaceChildren(h('legend', {}, 'Members'),
        ...users.map((user) => h('label', { class: 'check' },
          h('input', { type: 'checkbox', name: 'member', value: user.id, checked: members.user_ids.includes(user.id) }),
          `${user.name} <${user.email}> · ${user.role}`)));
      save.disabled = false;
    } catch (failure) {
      status.replaceChildren(notice(failure.message, 'error'));
    }
  }

  inbox.addEventListener('change', show);
  start();
  return h('section', { class: 'workspace-section', 'aria-labelledby': 'members-title' },
    h('h3', { id: 'members-title' }, 'Inbox members and routing'),
    h('p', { class: 'muted' }, 'An inbox without members is the whole team’s; with members, agents other than them do not see its conversations (owners and admins see every inbox). Round robin assigns each new or reopened conversation at once to the next member who is online and under the limit; when nobody is, it waits unassigned.'),
    h('form', {
      class: 'ops-form workspace-form', id: 'members-form', 'aria-label': 'Inbox members',
      onsubmit: async (event) => {
        event.preventDefault();
        const chosen = [...people.querySelectorAll('input[name="member"]:checked')].map((box) => box.value);
        save.disabled = true;
        try {
          const answer = await api('PUT', `/v1/inboxes/${inbox.value}/members`, { user_ids: chosen });
          await api('PUT', `/v1/inboxes/${inbox.value}/routing`, {
            mode: mode.value,
            agent_capacity: Number(capacity.value),
            reassign_after_seconds: grace.value === '' ? null : Number(grace.value),
          });
          status.replaceChildren(notice(answer.user_ids.length ? `${answer.user_ids.length} members saved.` : 'Saved: the whole team works this inbox.', 'ok'));
        } catch (failure) {
          status.replaceChildren(notice(failure.message, 'error'));
        }
        save.disabled = false;
      },
    },
    h('div', { class: 'field' }, h('label', { for: 'members-inbox' }, 'Inbox'), inbox),
    people,
    h('div', { class: 'field' }, h('label', { for: 'routing-mode' }, 'Assignment'), mode),
    h('div', { class: 'field' }, h('label', { for: 'routing-capacity' }, 'Open conversations per agent'), capacity),
    h('div', { class: 'field' }, h('label', { for: 'routing-grace' }, 'Hand an offline agent’s unanswered conversations to others after (seconds)'), grace),
    save),
    status);
}
