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
