// Broadcast campaigns for marketers: create one from a CSV file (with a preview of the rows that
// will not be sent and why), watch its progress live on `campaign:<id>`, pause, resume or
// cancel it, and see each recipient's status. Speaks only the documented REST API and protocol.

import { api, session } from '../api.js';
import { h, notice } from '../ui.js';

const number = (value) => Number(value || 0).toLocaleString();
const FINAL = ['sent', 'delivered', 'read', 'failed', 'skipped', 'expired'];
const COUNTS = ['pending', 'queued', 'sent', 'delivered', 'read', 'failed', 'skipped', 'expired', 'deferred'];

function done(counts) {
  return FINAL.reduce((sum, status) => sum + Number(counts[status] || 0), 0);
}

function percent(counts) {
  return counts.total ? Math.floor((done(counts) * 100) / counts.total) : 0;
}

function progressBar(counts) {
  const value = percent(counts);
  const fill = h('div', { class: 'progress-fill' });
  // Through the CSSOM: the page's content security policy refuses style attributes.
  fill.style.width = `${value}%`;
  return h('div', { class: 'progress', role: 'progressbar', 'aria-valuemin': '0', 'aria-valuemax': '100', 'aria-valuenow': String(value), 'aria-label': 'Progress' },
    fill, h('span', { class: 'progress-text' }, `${value}%`));
}

function newKey() {
  return crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random()}`;
}

/// POSTs a campaign with an Idempotency-Key, so a retried click makes one campaign.
async function createCampaign(body, key) {
  const response = await fetch('/v1/campaigns', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'application/json', Authorization: `Bearer ${session.load().token}`, 'Idempotency-Key': key },
    body: JSON.stringify(body),
  });
  const data = await response.json().catch(() => null);
  if (!response.ok) throw Object.assign(new Error(data?.error?.message || response.statusText), { details: data?.error?.details });
  return data;
}

function reportView(report) {
  const summary = h('p', { class: 'report-summary' },
    `${number(report.accepted)} recipients · ${number(report.duplicates)} duplicates removed · ${number(report.opted_out)} opted out · ${number(report.rejected_count)} rejected`);
  if (!report.rejected.length) return h('div', { class: 'report' }, summary);
  return h('div', { class: 'report' }, summary,
    h('table', { class: 'stream rejected' },
      h('caption', {}, 'Rows that will not be sent'),
      h('thead', {}, h('tr', {}, ['Line', 'To', 'Why'].map((title) => h('th', { scope: 'col' }, title)))),
      h('tbody', {}, report.rejected.map((row) => h('tr', {},
        h('td', {}, row.line ?? (row.index !== undefined ? `#${row.index}` : '')), h('td', {}, row.to), h('td', {}, row.reason))))));
}

function renderForm(container, onCreated) {
  const error = h('div', { class: 'form-error' });
  const inbox = h('select', { id: 'campaign-inbox', required: true });
  const name = h('input', { id: 'campaign-name', placeholder: 'Winter sale' });
  const text = h('textarea', { id: 'campaign-text', rows: 3, required: true, placeholder: 'Hi {{name}}, our winter sale starts today!' });
  const rate = h('input', { id: 'campaign-rate', type: 'number', min: '1', max: '1000', value: '5', required: true });
  const file = h('input', { id: 'campaign-csv', type: 'file', accept: '.csv,text/csv', required: true });
  const preview = h('div', { id: 'campaign-preview' });
  const start = h('button', { type: 'submit', class: 'primary', disabled: true }, 'Start campaign');
  let csv = null;
  let key = newKey();

  api('GET', '/v1/inboxes').then((answer) => {
    const usable = answer.items.filter((item) => item.kind !== 'web');
    inbox.replaceChildren(...usable.map((item) => h('option', { value: item.id }, `${item.name} (${item.kind})`)));
    if (!usable.length) error.replaceChildren(notice('No inbox can send campaigns: add a WhatsApp, Telegram or generic inbox first.', 'error'));
  }).catch((failure) => error.replaceChildren(notice(failure.message, 'error')));

  const body = (dryRun) => ({
    inbox_id: inbox.value, name: name.value.trim() || undefined, text: text.value,
    rate_per_sec: Number(rate.value), recipients_csv: csv, dry_run: dryRun,
  });

  // The preview follows every change; Start stays as it is meanwhile (a click that blurs the
  // text box must not land on a button disabled by that very blur), and the server checks again.
  async function check() {
    error.replaceChildren();
    if (!csv || !inbox.value || !text.value.trim()) { preview.replaceChildren(); start.disabled = true; return; }
    try {
      const answer = await createCampaign(body(true), newKey());
      preview.replaceChildren(reportView(answer.report));
      start.disabled = false;
    } catch (failure) {
      preview.replaceChildren(failure.details && failure.details.rejected ? reportView(failure.details) : []);
      error.replaceChildren(notice(failure.message, 'error'));
    }
  }

  file.addEventListener('change', async () => {
    csv = file.files[0] ? await file.files[0].text() : null;
    key = newKey();
    check();
  });
  for (const input of [inbox, text, rate]) input.addEventListener('change', () => { key = newKey(); check(); });

  const form = h('form', {
    class: 'campaign-form', 'aria-label': 'New campaign',
    onsubmit: async (event) => {
      event.preventDefault();
      start.disabled = true;
      try {
        const answer = await createCampaign(body(false), key);
        onCreated(answer.campaign);
      } catch (failure) {
        error.replaceChildren(notice(failure.message, 'error'));
        start.disabled = false;
      }
    },
  },
  h('h3', {}, 'New campaign'),
  h('label', { for: 'campaign-inbox' }, 'Send from'), inbox,
  h('label', { for: 'campaign-name' }, 'Name'), name,
  h('label', { for: 'campaign-text' }, 'Message (use {{column}} for a CSV column)'), text,
  h('label', { for: 'campaign-rate' }, 'Messages per second'), rate,
  h('label', { for: 'campaign-csv' }, 'Recipients (CSV with a "to" column)'), file,
  preview, error, start);
  container.replaceChildren(form);
}

function renderList(container, context) {
  const list = h('tbody', {});
  const formBox = h('div', {});
  const newButton = h('button', { id: 'new-campaign', onclick: () => {
    renderForm(formBox, (campaign) => { location.hash = `#/campaigns/${campaign.id}`; });
    newButton.hidden = true;
  } }, 'New campaign');
  container.replaceChildren(h('section', { class: 'ops campaigns', 'aria-label': 'Campaigns' },
    h('h2', {}, 'Campaigns'), newButton, formBox,
    h('table', { class: 'stream campaign-list' },
      h('thead', {}, h('tr', {}, ['Campaign', 'Status', 'Progress', 'Sent', 'Failed', 'Rate'].map((title) => h('th', { scope: 'col' }, title)))),
      list)));
  api('GET', '/v1/campaigns').then((answer) => {
    list.replaceChildren(...(answer.items.length ? answer.items.map((campaign) => h('tr', { dataset: { campaign: campaign.id } },
      h('th', { scope: 'row' }, h('a', { href: `#/campaigns/${campaign.id}` }, campaign.name)),
      h('td', {}, campaign.status), h('td', {}, progressBar(campaign.counts)),
      h('td', {}, number(campaign.counts.sent + campaign.counts.delivered + campaign.counts.read)),
      h('td', {}, number(campaign.counts.failed)), h('td', {}, `${campaign.measured_rate}/s`)))
      : [h('tr', {}, h('td', { colspan: '6', class: 'muted' }, 'No campaigns yet'))]));
  }).catch((failure) => list.replaceChildren(h('tr', {}, h('td', { colspan: '6' }, notice(failure.message, 'error')))));
  return () => {};
}

function renderDetail(container, context, id) {
  const channel = `campaign:${id}`;
  const title = h('h2', {}, 'Campaign');
  const status = h('span', { id: 'campaign-status', class: 'status-badge' });
  const bar = h('div', { id: 'campaign-progress' });
  const rate = h('p', { id: 'campaign-rate-now', class: 'muted' });
  const counts = h('dl', { class: 'counts' });
  const error = h('div', {});
  const act = (verb) => async () => {
    error.replaceChildren();
    try { show(await api('POST', `/v1/campaigns/${id}/${verb}`)); } catch (failure) { error.replaceChildren(notice(failure.message, 'error')); }
  };
  const pause = h('button', { id: 'campaign-pause', onclick: act('pause') }, 'Pause');
  const resume = h('button', { id: 'campaign-resume', onclick: act('resume') }, 'Resume');
  const cancel = h('button', { id: 'campaign-cancel', onclick: act('cancel') }, 'Cancel');
  const filter = h('select', { id: 'recipient-filter', 'aria-label': 'Show recipients' },
    h('option', { value: '' }, 'All recipients'), COUNTS.map((value) => h('option', { value }, value)));
  const recipients = h('tbody', {});
  filter.addEventListener('change', () => loadRecipients());

  function show(campaign) {
    if (campaign.name) title.textContent = campaign.name;
    status.textContent = campaign.status;
    status.dataset.status = campaign.status;
    bar.replaceChildren(progressBar(campaign.counts));
    rate.textContent = `${campaign.measured_rate}/s now${campaign.rate_per_sec ? ` · limit ${campaign.rate_per_sec}/s` : ''}${campaign.estimated_finish_at ? ` · done about ${new Date(campaign.estimated_finish_at).toLocaleTimeString()}` : ''}`;
    counts.replaceChildren(...['total', ...COUNTS].flatMap((key) => [h('dt', {}, key), h('dd', { dataset: { count: key } }, number(campaign.counts[key]))]));
    const active = ['running', 'scheduled'].includes(campaign.status);
    pause.hidden = !active;
    resume.hidden = campaign.status !== 'paused';
    cancel.hidden = !(active || campaign.status === 'paused');
  }

  async function loadRecipients() {
    const query = filter.value ? `&status=${filter.value}` : '';
    try {
      const page = await api('GET', `/v1/campaigns/${id}/recipients?limit=100${query}`);
      recipients.replaceChildren(...page.items.map((row) => h('tr', {},
        h('td', {}, row.position + 1), h('td', {}, row.to), h('td', { dataset: { status: row.status } }, row.status), h('td', {}, row.reason || ''))));
    } catch (failure) {
      recipients.replaceChildren(h('tr', {}, h('td', { colspan: '4' }, notice(failure.message, 'error'))));
    }
  }

  container.replaceChildren(h('section', { class: 'ops campaign', 'aria-label': 'Campaign' },
    h('p', {}, h('a', { href: '#/campaigns' }, '← Campaigns')),
    title, h('p', {}, status, ' ', pause, resume, cancel), bar, rate, counts, error,
    h('h3', {}, 'Recipients'), filter,
    h('table', { class: 'stream recipients' },
      h('thead', {}, h('tr', {}, ['#', 'To', 'Status', 'Why'].map((heading) => h('th', { scope: 'col' }, heading)))),
      recipients)));

  api('GET', `/v1/campaigns/${id}`).then(show).catch((failure) => error.replaceChildren(notice(failure.message, 'error')));
  loadRecipients();
  let refreshed = 0;
  let trailing = null;
  const refresh = () => { refreshed = Date.now(); trailing = null; loadRecipients(); };
  context.connection.subscribe(channel, {
    onEvent: (frame) => {
      if (frame.type !== 'campaign.progress') return;
      show(frame.data);
      // The recipient list follows at most every 2 s, and once more after the last change, so it
      // ends where the campaign ends.
      const wait = 2000 - (Date.now() - refreshed);
      if (wait <= 0) refresh();
      else if (!trailing) trailing = setTimeout(refresh, wait);
    },
  });
  const onError = (event) => {
    if (event.detail.channel === channel) error.replaceChildren(notice(event.detail.message, 'error'));
  };
  context.connection.addEventListener('error-frame', onError);
  return () => {
    if (trailing) clearTimeout(trailing);
    context.connection.unsubscribe(channel);
    context.connection.removeEventListener('error-frame', onError);
  };
}

export function mount(container, context, rest = []) {
  const [id] = rest;
  return id ? renderDetail(container, context, id) : renderList(container, context);
}
