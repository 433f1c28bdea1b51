// Stream health for SREs: every stream's length, dead letters, and each group's lag, pending and
// consumers, live from the `ops` channel (a snapshot every 5 seconds).

import { h, notice } from '../ui.js';

const number = (value) => (value === null || value === undefined ? '?' : Number(value).toLocaleString());

export function mount(container, context) {
  const updated = h('p', { class: 'muted', role: 'status' }, 'Waiting for the first snapshot…');
  const body = h('div', { class: 'streams' });
  container.replaceChildren(h('section', { class: 'ops', 'aria-label': 'Streams' }, h('h2', {}, 'Streams'), updated, body));

  function render(snapshot) {
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    body.replaceChildren(...snapshot.streams.map((stream) => h('table', { class: 'stream', dataset: { stream: stream.stream } },
      h('caption', {}, `${stream.stream} · ${stream.partitions} partitions · ${number(stream.length)} entries · `,
        h('span', { class: stream.dead_letters ? 'bad' : '' }, `${number(stream.dead_letters)} dead letters`)),
      h('thead', {}, h('tr', {}, ['Group', 'Lag', 'Pending', 'Consumers'].map((title) => h('th', { scope: 'col' }, title)))),
      h('tbody', {}, stream.groups.length
        ? stream.groups.map((group) => h('tr', { dataset: { group: group.group } },
          h('th', { scope: 'row' }, group.group), h('td', {}, number(group.lag)), h('td', {}, number(group.pending)), h('td', {}, number(group.consumers))))
        : h('tr', {}, h('td', { colspan: '4', class: 'muted' }, 'No consumer groups yet'))))));
  }

  context.connection.subscribe('ops', {
    onEvent: (frame) => { if (frame.type === 'ops.streams') render(frame.data); },
  });
  const onError = (event) => {
    if (event.detail.channel === 'ops') body.replaceChildren(notice(event.detail.message, 'error'));
  };
  context.connection.addEventListener('error-frame', onError);
  return () => {
    context.connection.unsubscribe('ops');
    context.connection.removeEventListener('error-frame', onError);
  };
}
