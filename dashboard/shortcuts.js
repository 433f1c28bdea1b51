// Keyboard shortcuts of the agent app, and the overlay that lists them (`?`). They act on what
// the page shows (the conversation list, the reply box, the action buttons), and never while the
// agent types in a field.

import { h, typingInField } from './ui.js';

const KEYS = [
  { key: 'j', what: 'Next conversation' },
  { key: 'k', what: 'Previous conversation' },
  { key: 'r', what: 'Reply (focus the reply box)' },
  { key: 'e', what: 'Resolve the conversation' },
  { key: 'a', what: 'Assign the conversation to me' },
  { key: '/', what: 'Search' },
  { key: '?', what: 'Show these shortcuts' },
];

function overlay() {
  const close = h('button', { type: 'button', onclick: () => dialog.close() }, 'Close');
  const dialog = h('dialog', { id: 'shortcuts', class: 'shortcuts', 'aria-labelledby': 'shortcuts-title' },
    h('h2', { id: 'shortcuts-title' }, 'Keyboard shortcuts'),
    h('dl', {}, KEYS.flatMap(({ key, what }) => [h('dt', {}, h('kbd', {}, key)), h('dd', {}, what)])),
    h('p', { class: 'muted' }, 'Not while typing in a field: press Esc to leave it first.'),
    close);
  // A click on the backdrop closes it too.
  dialog.addEventListener('click', (event) => { if (event.target === dialog) dialog.close(); });
  return dialog;
}

/// Moves to the next (`step` 1) or previous (-1) conversation of the list.
function move(step, context) {
  const items = [...document.querySelectorAll('#conversation-list .conversation-item')];
  if (!items.length) return;
  const at = items.findIndex((item) => item.getAttribute('aria-current') === 'true');
  const next = at < 0 ? (step > 0 ? 0 : items.length - 1) : at + step;
  if (next < 0 || next >= items.length) return;
  context.quietFocus = true;
  location.hash = items[next].getAttribute('href');
}

const click = (selector) => document.querySelector(selector)?.click();

/// Installs the shortcuts for the signed-in app; returns the function that removes them.
export function installShortcuts(context) {
  const dialog = overlay();
  document.body.append(dialog);
  const onKey = (event) => {
    if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
    if (typingInField(event.target) || dialog.open) return;
    const act = {
      j: () => move(1, context),
      k: () => move(-1, context),
      r: () => document.getElementById('reply')?.focus(),
      e: () => click('#resolve'),
      a: () => click('#assign-me'),
      '/': () => document.getElementById('search')?.focus(),
      '?': () => dialog.showModal(),
    }[event.key];
    if (!act) return;
    event.preventDefault();
    act();
  };
  document.addEventListener('keydown', onKey);
  return () => {
    document.removeEventListener('keydown', onKey);
    dialog.remove();
  };
}
