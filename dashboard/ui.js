// Small DOM helpers shared by the pages.

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else element.setAttribute(name, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function time(rfc3339) {
  const date = new Date(rfc3339);
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

const TICKS = { queued: '🕓', sent: '✓', delivered: '✓✓', read: '✓✓', failed: '!' };
const TICK_LABELS = { queued: 'Queued', sent: 'Sent', delivered: 'Delivered', read: 'Read', failed: 'Failed' };

export function tick(status, reason) {
  if (!status) return null;
  return h('span', {
    class: `tick tick-${status}`,
    dataset: { status },
    title: reason ? `${TICK_LABELS[status]}: ${reason}` : TICK_LABELS[status],
    'aria-label': TICK_LABELS[status] || status,
  }, TICKS[status] || status);
}

export const STATUS_RANK = { queued: 0, sent: 1, failed: 2, delivered: 3, read: 4 };

export function shortId(id) { return id ? id.slice(-6) : ''; }

export function notice(text, kind = 'info') {
  return h('p', { class: `notice notice-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, text);
}

export function dateTime(rfc3339) {
  const date = new Date(rfc3339);
  if (Number.isNaN(date.getTime())) return '';
  return date.toLocaleString([], { dateStyle: 'medium', timeStyle: 'short' });
}

/// Black or white text, whichever reads better on a `#rrggbb` background.
function textOn(colour) {
  const value = /^#[0-9a-f]{6}$/i.test(colour) ? parseInt(colour.slice(1), 16) : 0xeeeeee;
  const [r, g, b] = [value >> 16, (value >> 8) & 255, value & 255];
  return (0.299 * r + 0.587 * g + 0.114 * b) > 150 ? '#1f2328' : '#fff';
}

/// A label as a coloured chip; with `onRemove`, it carries a × button that removes it.
export function labelChip(label, onRemove) {
  const chip = h('span', { class: 'label-chip', dataset: { labelId: label.id } }, h('span', { class: 'label-name' }, label.name));
  // Through the CSSOM: the page's content security policy refuses style attributes.
  chip.style.backgroundColor = label.colour;
  chip.style.color = textOn(label.colour);
  if (onRemove) {
    chip.append(h('button', { type: 'button', class: 'label-remove', 'aria-label': `Remove label ${label.name}`, title: 'Remove', onclick: onRemove }, '×'));
  }
  return chip;
}

const MARK_OPEN = '\u2063[';
const MARK_CLOSE = ']\u2063';

/// A search snippet as text nodes, its matched words (between the server's U+2063 marks) in
/// <mark>: the snippet is the customer's text, so it never becomes markup itself.
export function highlighted(snippet) {
  const nodes = [];
  let rest = snippet || '';
  for (;;) {
    const start = rest.indexOf(MARK_OPEN);
    const end = start < 0 ? -1 : rest.indexOf(MARK_CLOSE, start + MARK_OPEN.length);
    if (end < 0) break;
    if (start > 0) nodes.push(document.createTextNode(rest.slice(0, start)));
    nodes.push(h('mark', {}, rest.slice(start + MARK_OPEN.length, end)));
    rest = rest.slice(end + MARK_CLOSE.length);
  }
  if (rest) nodes.push(document.createTextNode(rest.replaceAll('\u2063', '')));
  return nodes;
}

/// Whether a key press belongs to a field the user is typing in.
export function typingInField(target) {
  if (!(target instanceof Element)) return false;
  return target.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName);
}
