// The operators' page (the sre role of the operators' tenant): every stream's health live from
// the `ops` channel, the last hour of each group's lag and oldest pending age, what holds
// retention back, the dead-letter browser (filter, show, redrive, purge with confirmation),
// replay with its plan shown before confirming, claim and prune, running tasks, and the audit log (live from
// `ops.audit` events). Speaks only the documented REST API (/v1/ops) and protocol.

import { api } from '../api.js';
import { h, notice } from '../ui.js';

const number = (value) => (value === null || value === undefined ? '?' : Number(value).toLocaleString());
const SVG = 'http://www.w3.org/2000/svg';
const plural = (count, one, many) => `${number(count)} ${Number(count) === 1 ? one : many}`;

function ago(ms) {
  if (ms === null || ms === undefined) return '–';
  const seconds = Math.floor(ms / 1000);
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 7200) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

function svg(tag, attributes = {}, ...children) {
  const element = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) element.setAttribute(name, String(value));
  element.append(...children);
  return element;
}

/// A small line chart of `values` (oldest first) with its latest value beside it.
function sparkline(label, samples, format) {
  // One sample draws as a flat line rather than nothing.
  const values = samples.length === 1 ? [samples[0], samples[0]] : samples;
  const width = 220;
  const height = 40;
  const max = Math.max(1, ...values);
  const step = values.length > 1 ? width / (values.length - 1) : width;
  const points = values.map((value, index) => `${(index * step).toFixed(1)},${(height - (value / max) * (height - 4) - 2).toFixed(1)}`).join(' ');
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img', 'aria-label': `${label} over the last hour` },
    svg('polyline', { points, fill: 'none', stroke: 'currentColor', 'stroke-width': 1.5 }));
  const last = values.length ? values[values.length - 1] : 0;
  return h('figure', { class: 'spark' }, chart, h('figcaption', {}, `${label}: `, h('strong', {}, format(last)), ` (max ${format(max === 1 && !values.some(Boolean) ? 0 : max)})`));
}

function liveTables(body, snapshot) {
  body.replaceChildren(...snapshot.streams.map((stream) => h('table', { class: 'stream', dataset: { stream: stream.stream } },
    h('caption', {}, `${stream.stream} · ${stream.partitions} partitions · ${number(stream.length)} entries · `,
      h('span', { class: stream.dead_letters ? 'bad' : '' }, `${number(stream.dead_letters)} dead letters`)),
    h('thead', {}, h('tr', {}, ['Group', 'Lag', 'Pending', 'Consumers'].map((title) => h('th', { scope: 'col' }, title)))),
    h('tbody', {}, stream.groups.length
      ? stream.groups.map((group) => h('tr', { dataset: { group: group.group } },
        h('th', { scope: 'row' }, group.group), h('td', {}, number(group.lag)), h('td', {}, number(group.pending)), h('td', {}, number(group.consumers))))
      : h('tr', {}, h('td', { colspan: '4', class: 'muted' }, 'No consumer groups yet'))))));
}

function field(label, input, hint) {
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, hint ? h('small', { class: 'muted' }, hint) : null);
}

export function mount(container, context) {
  const updated = h('p', { class: 'muted', role: 'status' }, 'Waiting for the first snapshot…');
  const live = h('div', { class: 'streams' });
  const charts = h('div', { class: 'charts', id: 'ops-charts' });
  const holds = h('div', { id: 'ops-retention' });
  const letters = h('div', { id: 'dlq-list' });
  const letter = h('div', { id: 'dlq-letter' });
  const tasks = h('div', { id: 'ops-tasks' });
  const audit = h('ol', { class: 'audit', id: 'ops-audit' });
  const timers = [];
  // A task ran since the letters were last read: read them again once it ends.
  let tasksRan = false;

  // Dead letters: a filter, the newest matches, one letter's fields, redrive and purge.
  const family = h('select', { id: 'dlq-family' }, h('option', { value: '' }, 'every stream'), ...['events', 'send', 'broadcast'].map((name) => h('option', { value: name }, name)));
  const group = h('input', { id: 'dlq-group', placeholder: 'writer' });
  const errorText = h('input', { id: 'dlq-error', placeholder: 'text in the error' });
  const rate = h('input', { id: 'dlq-rate', type: 'number', min: '1', max: '10000', value: '100' });
  const dlqStatus = h('div', { class: 'dlq-status', role: 'status' });
  const filter = () => ({
    family: family.value || undefined,
    group: group.value.trim() || undefined,
    error: errorText.value.trim() || undefined,
  });
  const query = () => new URLSearchParams(Object.entries(filter()).filter(([, value]) => value)).toString();

  async function loadLetters() {
    try {
      const page = await api('GET', `/v1/ops/dlq?${query()}&limit=100`);
      letters.replaceChildren(
        h('p', { class: 'muted', id: 'dlq-total' }, `${page.total_at_least ? 'At least ' : ''}${plural(page.total, 'dead letter matches', 'dead letters match')}`),
        page.letters.length
          ? h('table', { class: 'stream letters' },
            h('thead', {}, h('tr', {}, ['When', 'Letter', 'Group', 'Deliveries', 'Error'].map((title) => h('th', { scope: 'col' }, title)))),
            h('tbody', {}, page.letters.map((item) => h('tr', { class: 'letter', dataset: { reference: item.reference }, tabindex: '0', onclick: () => showLetter(item.reference), onkeydown: (event) => { if (event.key === 'Enter') showLetter(item.reference); } },
              h('td', {}, new Date(item.time).toLocaleString()), h('td', {}, item.reference), h('td', {}, item.group), h('td', {}, item.deliveries), h('td', { class: 'error-text' }, item.error)))))
          : h('p', { class: 'muted', id: 'dlq-empty' }, 'No dead letters.'));
    } catch (error) {
      letters.replaceChildren(notice(error.message, 'error'));
    }
  }

  async function showLetter(reference) {
    const [streamFamily, partition, id] = reference.split('/');
    try {
      const item = await api('GET', `/v1/ops/dlq/${encodeURIComponent(streamFamily)}/${partition}/${encodeURIComponent(id)}`);
      letter.replaceChildren(h('section', { class: 'letter-detail', 'aria-label': 'Dead letter' },
        h('h4', {}, reference),
        h('p', {}, `Group ${item.group} gave up after ${plural(item.deliveries, 'delivery', 'deliveries')} (consumer ${item.consumer}), ${new Date(item.time).toLocaleString()}.`),
        h('p', { class: 'bad', id: 'letter-error' }, item.error),
        h('table', { class: 'stream fields' }, h('tbody', {}, (item.fields || []).map(([name, value]) => h('tr', {}, h('th', { scope: 'row' }, name), h('td', {}, h('code', {}, value)))))),
        h('div', { class: 'bot-actions' },
          h('button', { class: 'primary', id: 'letter-redrive', onclick: () => redrive({ ids: [reference] }) }, 'Redrive this letter'),
          h('button', { id: 'letter-purge', onclick: () => purge({ ids: [reference] }) }, 'Purge…'))));
    } catch (error) {
      letter.replaceChildren(notice(error.message, 'error'));
    }
  }

  async function redrive(selection) {
    try {
      const task = await api('POST', '/v1/ops/dlq/redrive', { ...selection, rate: Number(rate.value) || 100 });
      dlqStatus.replaceChildren(notice(`Redriving ${plural(task.total, 'letter', 'letters')} at ${task.rate}/s (task ${task.id.slice(-6)}).`, 'ok'));
      letter.replaceChildren();
      tasksRan = true;
      loadTasks();
    } catch (error) {
      dlqStatus.replaceChildren(notice(error.message, 'error'));
    }
  }

  async function purge(selection) {
    try {
      const planned = await api('POST', '/v1/ops/dlq/purge', selection);
      if (!planned.count) { dlqStatus.replaceChildren(notice('Nothing matches.', 'info')); return; }
      const confirm = h('div', { class: 'confirm', role: 'alertdialog', 'aria-label': 'Confirm purge' },
        h('p', {}, `Delete ${plural(planned.count, 'dead letter', 'dead letters')} for good? They cannot be redriven afterwards.`),
        h('button', { class: 'danger', id: 'purge-confirm', onclick: async () => {
          try {
            const done = await api('POST', '/v1/ops/dlq/purge', { ...selection, execute: true });
            dlqStatus.replaceChildren(notice(`Purged ${plural(done.count, 'dead letter', 'dead letters')}.`, 'ok'));
            letter.replaceChildren();
            loadLetters();
          } catch (error) { dlqStatus.replaceChildren(notice(error.message, 'error')); }
        } }, `Delete ${number(planned.count)}`),
        h('button', { onclick: () => dlqStatus.replaceChildren() }, 'Keep them'));
      dlqStatus.replaceChildren(confirm);
    } catch (error) {
      dlqStatus.replaceChildren(notice(error.message, 'error'));
    }
  }

  const dlqForm = h('form', { class: 'ops-form', onsubmit: (event) => { event.preventDefault(); loadLetters(); } },
    h('div', { class: 'field-row' }, field('Stream', family), field('Group', group), field('Error contains', errorText), field('Rate (per second)', rate, 'for redrives')),
    h('div', { class: 'bot-actions' },
      h('button', { type: 'submit', id: 'dlq-search' }, 'Search'),
      h('button', { type: 'button', id: 'dlq-redrive-all', onclick: () => redrive(Object.values(filter()).some(Boolean) ? filter() : { all: true }) }, 'Redrive all matching'),
      h('button', { type: 'button', id: 'dlq-purge-all', onclick: () => purge(filter()) }, 'Purge all matching…')));

  // Replay: the plan first, then a confirmation.
  const replayGroup = h('select', { id: 'replay-group' }, ...['writer', 'sender', 'broadcaster', 'autoreply'].map((name) => h('option', { value: name }, name)));
  const replayFrom = h('input', { id: 'replay-from', placeholder: '-1h or 2026-12-06T10:00:00Z', required: true });
  const replayTo = h('input', { id: 'replay-to', placeholder: 'now' });
  const replayPlan = h('div', { id: 'replay-plan', role: 'status' });
  const replayRequest = () => ({ group: replayGroup.value, from: replayFrom.value.trim(), to: replayTo.value.trim() || undefined });
  const replayForm = h('form', { class: 'ops-form', onsubmit: async (event) => {
    event.preventDefault();
    try {
      const { plan } = await api('POST', '/v1/ops/replay', replayRequest());
      const rows = plan.partitions.filter((part) => part.entries || part.trimmed || part.group_missing);
      replayPlan.replaceChildren(h('div', { class: 'plan' },
        h('p', {}, `${number(plan.entries)} entries would be re-delivered to ${plan.family}/${plan.group}.`),
        rows.length ? h('table', { class: 'stream' },
          h('thead', {}, h('tr', {}, ['Partition', 'Entries', 'First', 'Last', 'Notes'].map((title) => h('th', { scope: 'col' }, title)))),
          h('tbody', {}, rows.map((part) => h('tr', {}, h('td', {}, part.partition), h('td', {}, number(part.entries)), h('td', {}, part.first_id || '–'), h('td', {}, part.last_id || '–'),
            h('td', {}, [part.trimmed ? `partly trimmed (holds from ${part.available_from || 'nothing'})` : '', part.group_missing ? 'group missing' : ''].filter(Boolean).join('; ')))))) : null,
        plan.refused ? notice(plan.refused, 'error') : (plan.entries ? h('button', { class: 'primary', id: 'replay-confirm', onclick: async () => {
          try {
            const answer = await api('POST', '/v1/ops/replay', { ...replayRequest(), execute: true });
            replayPlan.replaceChildren(notice(`Replaying ${answer.task.total} entries into ${plan.group} (task ${answer.task.id.slice(-6)}).`, 'ok'));
            tasksRan = true;
            loadTasks();
          } catch (error) { replayPlan.replaceChildren(notice(error.message, 'error')); }
        } }, `Replay ${number(plan.entries)} entries`) : null)));
    } catch (error) {
      replayPlan.replaceChildren(notice(error.message, 'error'));
    }
  } },
  h('div', { class: 'field-row' }, field('Group', replayGroup), field('From', replayFrom, 'entry id, time or -2h'), field('To', replayTo, 'empty: now')),
  h('div', { class: 'bot-actions' }, h('button', { type: 'submit', id: 'replay-plan-button' }, 'Show the plan')));

  // Maintenance: hand a dead consumer's entries over now, prune what gone processes left.
  const claimGroup = h('select', { id: 'claim-group' }, ...['writer', 'sender', 'broadcaster', 'autoreply'].map((name) => h('option', { value: name }, name)));
  const claimIdle = h('input', { id: 'claim-idle', value: '5m', required: true });
  const pruneIdle = h('input', { id: 'prune-idle', value: '1m', required: true });
  const maintenanceStatus = h('div', { id: 'maintenance-status', role: 'status' });
  const maintenance = h('form', { class: 'ops-form', onsubmit: (event) => event.preventDefault() },
    h('div', { class: 'field-row' }, field('Group', claimGroup), field('Idle at least', claimIdle, "not below the group's claim_idle"), field('Prune idle past', pruneIdle, 'gone processes only')),
    h('div', { class: 'bot-actions' },
      h('button', { type: 'button', id: 'claim-button', onclick: async () => {
        try {
          const claimed = await api('POST', '/v1/ops/claim', { group: claimGroup.value, idle: claimIdle.value.trim() });
          maintenanceStatus.replaceChildren(notice(`Handed ${plural(claimed.entries, 'entry', 'entries')} of ${claimed.family}/${claimed.group} to its live consumers${claimed.consumers_removed.length ? `; removed ${claimed.consumers_removed.join(', ')}` : ''}.`, 'ok'));
          loadAudit();
        } catch (error) { maintenanceStatus.replaceChildren(notice(error.message, 'error')); }
      } }, 'Claim idle entries'),
      h('button', { type: 'button', id: 'prune-button', onclick: async () => {
        try {
          const pruned = await api('POST', '/v1/ops/groups/prune', { idle: pruneIdle.value.trim() });
          maintenanceStatus.replaceChildren(notice(`Removed ${plural(pruned.groups_removed.length, 'group', 'groups')} and ${plural(pruned.consumers_removed.length, 'consumer', 'consumers')}.`, 'ok'));
          loadAudit();
        } catch (error) { maintenanceStatus.replaceChildren(notice(error.message, 'error')); }
      } }, 'Prune gone consumers')));

  async function loadTasks() {
    try {
      const { items } = await api('GET', '/v1/ops/tasks');
      tasks.replaceChildren(items.length
        ? h('table', { class: 'stream' },
          h('thead', {}, h('tr', {}, ['Task', 'Kind', 'By', 'State', 'Moved', 'Remaining', '', ''].map((title) => h('th', { scope: 'col' }, title)))),
          h('tbody', {}, items.slice(0, 10).map((task) => h('tr', { class: 'task', dataset: { task: task.id, state: task.state, kind: task.kind } },
            h('td', {}, task.id.slice(-6)), h('td', {}, task.kind), h('td', {}, task.actor), h('td', { class: 'task-state' }, task.state.replace('_', ' ')),
            h('td', { class: 'task-moved' }, `${number(task.moved)} / ${number(task.total)}`), h('td', {}, number(task.remaining)), h('td', { class: 'muted' }, task.message),
            h('td', {}, ['running', 'cancelling'].includes(task.state) ? h('button', { class: 'task-cancel', onclick: async () => { await api('POST', `/v1/ops/tasks/${task.id}/cancel`).catch(() => {}); loadTasks(); } }, 'Cancel') : null)))))
        : h('p', { class: 'muted' }, 'No replays or redrives yet.'));
      if (items.some((task) => ['running', 'cancelling'].includes(task.state))) {
        tasksRan = true;
        timers.push(setTimeout(() => { loadTasks(); loadLetters(); }, 1000));
      } else if (tasksRan) {
        tasksRan = false;
        loadLetters();
        loadAudit();
      }
    } catch (error) {
      tasks.replaceChildren(notice(error.message, 'error'));
    }
  }

  function auditItem(entry) {
    return h('li', { dataset: { action: entry.action } },
      h('time', { datetime: entry.at }, new Date(entry.at).toLocaleString()), ' ',
      h('strong', {}, entry.actor), ` ${entry.action} · ${number(entry.entries)} entries · ${entry.outcome}`,
      entry.detail ? h('span', { class: 'muted' }, ` — ${entry.detail}`) : null);
  }

  async function loadAudit() {
    try {
      const { items } = await api('GET', '/v1/ops/audit?limit=20');
      audit.replaceChildren(...(items.length ? items.map(auditItem) : [h('li', { class: 'muted' }, 'No operator actions yet.')]));
    } catch (error) {
      audit.replaceChildren(h('li', {}, notice(error.message, 'error')));
    }
  }

  async function loadHistory() {
    try {
      const [{ points }, { partitions }] = await Promise.all([api('GET', '/v1/ops/streams/history'), api('GET', '/v1/ops/streams')]);
      const series = new Map();
      for (const point of points) {
        for (const item of point.groups) {
          const key = `${item.stream}/${item.group}`;
          if (!series.has(key)) series.set(key, { lag: [], age: [] });
          series.get(key).lag.push(item.lag);
          series.get(key).age.push(item.oldest_pending_age_ms);
        }
      }
      charts.replaceChildren(...(series.size
        ? [...series].map(([key, values]) => h('div', { class: 'chart', dataset: { group: key } }, h('h4', {}, key),
          sparkline('Lag', values.lag, number), sparkline('Oldest pending', values.age, ago)))
        : [h('p', { class: 'muted' }, 'The first samples arrive within 15 seconds.')]));
      const held = partitions.filter((partition) => partition.retention_held_by);
      holds.replaceChildren(...(held.length
        ? held.map((partition) => notice(`${partition.stream}/${partition.partition}: retention held back by ${partition.retention_held_by.group} (${partition.retention_held_by.reason}${partition.retention_held_by.held_ms ? `, for ${ago(partition.retention_held_by.held_ms)}` : ''})`, 'error'))
        : [h('p', { class: 'muted' }, 'No group holds retention back.')]));
    } catch (error) {
      charts.replaceChildren(notice(error.message, 'error'));
    }
  }

  container.replaceChildren(h('section', { class: 'ops', 'aria-label': 'Streams' },
    h('h2', {}, 'Streams'), updated, live,
    h('h3', {}, 'Last hour'), charts, holds,
    h('h3', {}, 'Dead letters'), dlqForm, dlqStatus, letters, letter,
    h('h3', {}, 'Replay into a group'), replayForm, replayPlan,
    h('h3', {}, 'Claim and prune'), maintenance, maintenanceStatus,
    h('h3', {}, 'Tasks'), tasks,
    h('h3', {}, 'Audit log'), audit));

  loadLetters();
  loadTasks();
  loadAudit();
  loadHistory();
  const history = setInterval(loadHistory, 15_000);

  context.connection.subscribe('ops', {
    onEvent: (frame) => {
      if (frame.type === 'ops.streams') {
        updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
        liveTables(live, frame.data);
      } else if (frame.type === 'ops.audit') {
        audit.querySelector('li.muted')?.remove();
        audit.prepend(auditItem(frame.data));
        loadTasks();
      }
    },
  });
  const onError = (event) => {
    if (event.detail.channel === 'ops') live.replaceChildren(notice(event.detail.message, 'error'));
  };
  context.connection.addEventListener('error-frame', onError);
  return () => {
    clearInterval(history);
    timers.forEach(clearTimeout);
    context.connection.unsubscribe('ops');
    context.connection.removeEventListener('error-frame', onError);
  };
}
