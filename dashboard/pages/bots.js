// Auto-reply per inbox, for owners and admins: pick an inbox, choose its bot (an AI model behind an
// OpenAI-compatible endpoint, or a scripted flow), its limits, handoff keywords and hours, and save;
// then try it in the test chat beside the form, which talks to the inbox's saved configuration.
// Speaks only the documented REST API.

import { api, session } from '../api.js';
import { h, notice } from '../ui.js';

const DAYS = ['Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat', 'Sun']; // 1..7, Monday first
const MODES = [['off', 'Off — agents answer everything'], ['llm', 'AI model'], ['flow', 'Flow (scripted questions)']];
const HOURS = [['', 'Any time'], ['outside', 'Only outside business hours'], ['inside', 'Only inside business hours']];
const DEFAULTS = {
  mode: 'off', llm: null, flow: null, debounce_ms: 2000, max_wait_ms: 30000, max_replies: 10,
  handoff_keywords: ['human', 'agent', 'operator'], hours: null, reenable_on_resolve: true,
};
const LLM_DEFAULTS = {
  base_url: '', model: '', system_prompt: '', temperature: null, max_context_messages: 20, timeout_ms: 15000,
  on_error: 'handoff', fallback_text: null, api_key_set: false,
};
const STORED_KEY = 'stored — leave blank to keep';

/// PUTs the configuration; unlike api(), the error keeps the field the server names, so the form
/// can point at it. A 401 goes through api() to sign out as every other call does.
async function saveConfig(inboxId, body) {
  const path = `/v1/inboxes/${encodeURIComponent(inboxId)}/autoreply`;
  const token = session.load()?.token;
  if (!token) return api('PUT', path, body);
  let response;
  try {
    response = await fetch(path, {
      method: 'PUT',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json', Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
  } catch {
    throw new Error('The server cannot be reached.');
  }
  if (response.status === 401) return api('PUT', path, body);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = data?.error;
    throw Object.assign(new Error(error?.message || response.statusText || `HTTP ${response.status}`),
      { field: error?.field ?? error?.details?.field ?? null });
  }
  return data;
}

function field(label, input, hint) {
  return h('div', { class: 'field' }, h('label', { for: input.id }, label), input, hint ? h('small', { class: 'muted' }, hint) : null);
}

function options(pairs) {
  return pairs.map(([value, label]) => h('option', { value }, label));
}

const integer = (input) => (input.value === '' ? null : Number(input.value));

/// The settings of one inbox's bot. `onSaved` hears every successful save; `onDirty` whether the
/// form differs from what is saved (the test chat uses the saved settings).
function settingsForm({ onSaved, onDirty }) {
  let inboxId = null;
  let saved = null; // the last configuration the server gave
  let flows = [];
  let generation = 0;

  const status = h('div', { id: 'bot-status', class: 'bot-status' });
  const mode = h('select', { id: 'bot-mode', name: 'mode' }, options(MODES));

  // The AI model.
  const baseUrl = h('input', { id: 'bot-base-url', type: 'url', required: true, placeholder: 'https://api.openai.com/v1', autocomplete: 'off' });
  const apiKey = h('input', { id: 'bot-api-key', type: 'password', autocomplete: 'new-password', placeholder: 'sk-…' });
  const model = h('input', { id: 'bot-model', required: true, placeholder: 'gpt-4o-mini', autocomplete: 'off' });
  const systemPrompt = h('textarea', { id: 'bot-system-prompt', rows: 5, placeholder: 'You answer customers of Acme Outdoor. Be brief. Hand off to a human for refunds.' });
  const temperature = h('input', { id: 'bot-temperature', type: 'number', min: '0', max: '2', step: '0.1', placeholder: 'model default' });
  const maxContext = h('input', { id: 'bot-max-context', type: 'number', min: '1', max: '200', step: '1', required: true });
  const timeout = h('input', { id: 'bot-timeout', type: 'number', min: '100', max: '120000', step: '100', required: true });
  const onError = h('select', { id: 'bot-on-error' }, options([['handoff', 'Hand off to a human'], ['fallback', 'Send the fallback text']]));
  const fallbackText = h('textarea', { id: 'bot-fallback-text', rows: 2, placeholder: 'Sorry, I cannot answer right now — an agent will reply soon.' });
  const fallbackField = field('Fallback text', fallbackText);
  const llmFields = h('fieldset', { id: 'bot-llm', class: 'bot-section' },
    h('legend', {}, 'AI model'),
    field('Base URL (OpenAI-compatible)', baseUrl),
    field('API key', apiKey, 'Write-only: it is never shown again.'),
    field('Model', model),
    field('System prompt', systemPrompt),
    h('div', { class: 'field-row' },
      field('Temperature', temperature), field('Max context messages', maxContext), field('Timeout (ms)', timeout)),
    field('When the model fails', onError),
    fallbackField);

  // The flow.
  const flow = h('select', { id: 'bot-flow' });
  const flowDescription = h('p', { id: 'bot-flow-description', class: 'muted' });
  const flowFields = h('fieldset', { id: 'bot-flow-fields', class: 'bot-section' },
    h('legend', {}, 'Flow'), field('Flow', flow), flowDescription);

  // Common to both.
  const debounce = h('input', { id: 'bot-debounce', type: 'number', min: '0', max: '60000', step: '100', required: true });
  const maxWait = h('input', { id: 'bot-max-wait', type: 'number', min: '0', max: '600000', step: '100', required: true });
  const maxReplies = h('input', { id: 'bot-max-replies', type: 'number', min: '1', max: '1000', step: '1', required: true });
  const keywords = h('input', { id: 'bot-keywords', placeholder: 'human, agent, operator', autocomplete: 'off' });
  const handoffText = h('input', { id: 'bot-handoff-text', maxlength: '4096', autocomplete: 'off',
    placeholder: 'e.g. One moment, a member of our team will take it from here.' });
  const hoursWhen = h('select', { id: 'bot-hours' }, options(HOURS));
  const days = DAYS.map((label, index) => h('input', { type: 'checkbox', id: `bot-day-${index + 1}`, name: 'bot-day', value: String(index + 1) }));
  const hoursFrom = h('input', { id: 'bot-hours-from', type: 'time', required: true });
  const hoursTo = h('input', { id: 'bot-hours-to', type: 'time', required: true });
  const utcOffset = h('input', { id: 'bot-utc-offset', type: 'number', min: '-840', max: '840', step: '15', required: true });
  const hoursDetail = h('fieldset', { id: 'bot-hours-detail', class: 'bot-hours' },
    h('legend', { class: 'muted' }, 'Business hours'),
    h('div', { class: 'days', role: 'group', 'aria-label': 'Days' },
      days.map((box, index) => h('label', { class: 'check', for: box.id }, box, DAYS[index]))),
    h('div', { class: 'field-row' },
      field('From', hoursFrom), field('To', hoursTo), field('UTC offset (minutes)', utcOffset)));
  const reenable = h('input', { id: 'bot-reenable', type: 'checkbox' });
  const common = h('fieldset', { class: 'bot-section' },
    h('legend', {}, 'Every bot'),
    h('div', { class: 'field-row' },
      field('Wait for more messages (ms)', debounce, 'Replies after the customer pauses this long…'),
      field('Longest wait (ms)', maxWait, '…but no longer than this.'),
      field('Max bot replies per conversation', maxReplies)),
    field('Handoff keywords (comma separated)', keywords, 'A customer who writes one of these gets a human.'),
    field('Told to the customer at a handoff', handoffText, 'Leave empty to say nothing.'),
    field('When the bot answers', hoursWhen),
    hoursDetail,
    h('label', { class: 'check', for: 'bot-reenable' }, reenable, 'Turn the bot back on when a conversation is resolved'));

  const save = h('button', { id: 'bot-save', type: 'submit', class: 'primary' }, 'Save');
  const controls = h('fieldset', { id: 'bot-settings', class: 'bot-settings', disabled: true },
    field('Mode', mode), llmFields, flowFields, common);
  const form = h('form', {
    id: 'bot-form', class: 'bot-form', 'aria-label': 'Bot settings',
    onsubmit: async (event) => {
      event.preventDefault();
      if (!inboxId || controls.disabled) return; // nothing loaded to save over yet
      const target = inboxId;
      clearInvalid();
      showStatus('saving', 'Saving…');
      save.disabled = true;
      try {
        const answer = await saveConfig(target, body());
        if (target !== inboxId) return;
        fill(answer);
        showStatus('saved', 'Saved');
        onSaved(answer);
      } catch (failure) {
        if (target !== inboxId) return;
        showStatus('error', failure.message);
        point(failure.field);
      } finally {
        save.disabled = false;
      }
    },
  }, controls, h('div', { class: 'bot-actions' }, save, status));

  // Keyed by the last part of the field the server names ("llm.base_url", "hours.days[0]", …).
  const FIELDS = {
    mode, llm: baseUrl, base_url: baseUrl, api_key: apiKey, model, system_prompt: systemPrompt, temperature,
    max_context_messages: maxContext, timeout_ms: timeout, on_error: onError, fallback_text: fallbackText, flow,
    debounce_ms: debounce, max_wait_ms: maxWait, max_replies: maxReplies, handoff_keywords: keywords,
    hours: hoursWhen, when: hoursWhen, days: days[0], from: hoursFrom, to: hoursTo, utc_offset_minutes: utcOffset,
    reenable_on_resolve: reenable, handoff_text: handoffText,
  };

  function point(name) {
    if (!name) return;
    const parts = String(name).split(/[.[\]]/).filter((part) => part && !/^\d+$/.test(part));
    const input = FIELDS[parts[parts.length - 1]] || FIELDS[parts[0]];
    if (!input) return;
    input.setAttribute('aria-invalid', 'true');
    input.setAttribute('aria-describedby', 'bot-status');
    input.focus();
  }

  function clearInvalid() {
    for (const input of form.querySelectorAll('[aria-invalid]')) {
      input.removeAttribute('aria-invalid');
      input.removeAttribute('aria-describedby');
    }
  }

  function showStatus(state, text) {
    status.dataset.state = state;
    status.replaceChildren(text ? notice(text, state === 'error' ? 'error' : state === 'saved' ? 'ok' : 'info') : '');
  }

  /// Shows what matters for the chosen mode; hidden parts are disabled too, so the browser does
  /// not ask for fields nobody can see.
  function sync() {
    llmFields.hidden = llmFields.disabled = mode.value !== 'llm';
    flowFields.hidden = flowFields.disabled = mode.value !== 'flow';
    fallbackField.hidden = onError.value !== 'fallback';
    fallbackText.required = onError.value === 'fallback';
    hoursDetail.hidden = hoursDetail.disabled = hoursWhen.value === '';
    const chosen = flows.find((candidate) => candidate.name === flow.value);
    flowDescription.replaceChildren(...(chosen ? [
      chosen.description || '',
      chosen.states && chosen.states.length ? h('span', { class: 'flow-states' }, ` Asks for: ${chosen.states.join(', ')}.`) : '',
    ] : [flows.length ? '' : 'No flows are available.']));
  }

  function fill(config) {
    saved = { ...DEFAULTS, ...config };
    const llm = { ...LLM_DEFAULTS, ...(saved.llm || {}) };
    mode.value = saved.mode;
    baseUrl.value = llm.base_url || '';
    apiKey.value = '';
    // Whether a key is stored: beside `llm` in the API's view (read inside it too).
    apiKey.placeholder = (saved.api_key_set ?? llm.api_key_set) ? STORED_KEY : 'sk-…';
    model.value = llm.model || '';
    systemPrompt.value = llm.system_prompt || '';
    temperature.value = llm.temperature ?? '';
    maxContext.value = llm.max_context_messages ?? '';
    timeout.value = llm.timeout_ms ?? '';
    onError.value = llm.on_error || 'handoff';
    fallbackText.value = llm.fallback_text || '';
    if (saved.flow && !flows.some((candidate) => candidate.name === saved.flow)) flow.append(h('option', { value: saved.flow }, saved.flow));
    flow.value = saved.flow || (flows[0] ? flows[0].name : '');
    debounce.value = saved.debounce_ms ?? '';
    maxWait.value = saved.max_wait_ms ?? '';
    maxReplies.value = saved.max_replies ?? '';
    keywords.value = (saved.handoff_keywords || []).join(', ');
    handoffText.value = saved.handoff_text || '';
    const hours = saved.hours;
    hoursWhen.value = hours ? hours.when : '';
    const chosenDays = hours ? hours.days : [1, 2, 3, 4, 5];
    days.forEach((box) => { box.checked = chosenDays.includes(Number(box.value)); });
    hoursFrom.value = hours ? hours.from : '09:00';
    hoursTo.value = hours ? hours.to : '17:00';
    // New hours start in the browser's own offset (getTimezoneOffset is UTC minus local).
    utcOffset.value = hours ? hours.utc_offset_minutes : -new Date().getTimezoneOffset();
    reenable.checked = saved.reenable_on_resolve !== false;
    sync();
    onDirty(false);
  }

  function llmBody() {
    const llm = {
      base_url: baseUrl.value.trim(), model: model.value.trim(), system_prompt: systemPrompt.value,
      temperature: temperature.value === '' ? null : Number(temperature.value),
      max_context_messages: integer(maxContext), timeout_ms: integer(timeout),
      on_error: onError.value, fallback_text: fallbackText.value.trim() || null,
    };
    // Write-only: sent only when typed, so a blank field keeps the stored key.
    if (apiKey.value) llm.api_key = apiKey.value;
    return llm;
  }

  function body() {
    // Another mode keeps the model's settings when they are complete, so switching back finds them.
    const keepLlm = baseUrl.value.trim() && model.value.trim() && maxContext.value !== '' && timeout.value !== '';
    return {
      mode: mode.value,
      llm: mode.value === 'llm' || keepLlm ? llmBody() : null,
      flow: mode.value === 'flow' ? flow.value || null : saved?.flow ?? null,
      debounce_ms: integer(debounce),
      max_wait_ms: integer(maxWait),
      max_replies: integer(maxReplies),
      handoff_keywords: keywords.value.split(',').map((word) => word.trim()).filter(Boolean),
      hours: hoursWhen.value === '' ? null : {
        when: hoursWhen.value,
        utc_offset_minutes: integer(utcOffset),
        days: days.filter((box) => box.checked).map((box) => Number(box.value)),
        from: hoursFrom.value,
        to: hoursTo.value,
      },
      reenable_on_resolve: reenable.checked,
      handoff_text: handoffText.value.trim() || null,
    };
  }

  const changed = (event) => {
    if (event.target instanceof Element) event.target.removeAttribute('aria-invalid');
    if (status.dataset.state !== 'saving') showStatus('', '');
    sync();
    onDirty(true);
  };
  form.addEventListener('input', changed);
  form.addEventListener('change', changed);

  return {
    form,
    setFlows(list) {
      flows = list;
      // Keeps what the form shows (the flows may arrive after an inbox's settings).
      const current = flow.value || saved?.flow || (list[0] ? list[0].name : '');
      flow.replaceChildren(...list.map((candidate) => h('option', { value: candidate.name }, candidate.name)));
      if (current && !list.some((candidate) => candidate.name === current)) flow.append(h('option', { value: current }, current));
      flow.value = current;
      sync();
    },
    async load(id) {
      inboxId = id;
      const mine = ++generation;
      controls.disabled = true;
      delete form.dataset.inbox;
      clearInvalid();
      showStatus('', '');
      try {
        const config = await api('GET', `/v1/inboxes/${encodeURIComponent(id)}/autoreply`);
        if (mine !== generation) return;
        fill(config);
        controls.disabled = false;
        form.dataset.inbox = id; // the form now shows this inbox's saved settings
      } catch (failure) {
        if (mine !== generation) return;
        saved = null;
        showStatus('error', failure.message);
      }
    },
  };
}

/// The test chat: the transcript stays here and goes whole to the server on every turn, with the
/// flow state the previous answer returned.
function testChat() {
  let inboxId = null;
  let turns = []; // {kind: customer|bot|handoff|order|note, …}
  let flowState = null;
  let busy = false;
  let handedOff = false;
  let generation = 0;

  const log = h('ol', { id: 'bot-test-log', class: 'bot-log', 'aria-label': 'Test conversation', 'aria-live': 'polite' });
  const typing = h('p', { id: 'bot-test-typing', class: 'typing', hidden: true }, 'Bot is typing…');
  const problem = h('div', { id: 'bot-test-error' });
  const unsaved = h('p', { id: 'bot-test-unsaved', class: 'notice', hidden: true }, 'Unsaved changes: the test chat uses the saved settings.');
  const input = h('input', { id: 'bot-test-input', placeholder: 'Write as the customer…', 'aria-label': 'Message as the customer', autocomplete: 'off' });
  const send = h('button', { id: 'bot-test-send', type: 'submit', class: 'primary' }, 'Send');
  const reset = h('button', { id: 'bot-test-reset', type: 'button', onclick: () => { clear(); input.focus(); } }, 'Reset');
  const element = h('section', { class: 'bot-test', 'aria-labelledby': 'bot-test-title' },
    h('div', { class: 'bot-test-head' }, h('h3', { id: 'bot-test-title' }, 'Try it'), reset),
    h('p', { class: 'muted' }, 'You write as the customer; the bot answers with the saved settings. Nothing is sent to anyone.'),
    unsaved, log, typing, problem,
    h('form', { class: 'bot-test-composer', onsubmit: (event) => { event.preventDefault(); say(input.value); } }, input, send));

  function transcript() {
    return turns.filter((turn) => turn.kind === 'customer' || turn.kind === 'bot').map((turn) => ({ role: turn.kind, text: turn.text }));
  }

  function renderTurn(turn, last) {
    switch (turn.kind) {
      case 'customer':
        return h('li', { class: 'turn turn-customer' }, h('p', { class: 'text' }, turn.text));
      case 'bot':
        return h('li', { class: 'turn turn-bot' }, h('p', { class: 'text' }, turn.text),
          turn.buttons.length ? h('div', { class: 'chips' }, turn.buttons.map((button) => h('button', {
            type: 'button', class: 'chip', dataset: { id: button.id }, disabled: !last || busy || handedOff,
            onclick: () => say(button.title),
          }, button.title))) : null);
      case 'handoff':
        return h('li', { class: 'turn turn-handoff', dataset: { reason: turn.reason } },
          `Handed off to a human: ${turn.reason}${turn.detail ? ` — ${turn.detail}` : ''}`);
      case 'order':
        return h('li', { class: 'turn turn-order' }, h('strong', {}, 'Order: '),
          Object.entries(turn.fields).map(([key, value]) => `${key}: ${typeof value === 'string' ? value : JSON.stringify(value)}`).join(' · '));
      default:
        return h('li', { class: 'turn turn-note' }, turn.text);
    }
  }

  function render() {
    log.replaceChildren(...turns.map((turn, index) => renderTurn(turn, index === turns.length - 1)));
    log.scrollTop = log.scrollHeight;
    typing.hidden = !busy;
    input.disabled = send.disabled = busy || handedOff || !inboxId;
    input.placeholder = handedOff ? 'Handed off — Reset to start over' : 'Write as the customer…';
  }

  function clear() {
    generation += 1;
    turns = [];
    flowState = null;
    busy = false;
    handedOff = false;
    problem.replaceChildren();
    render();
  }

  async function say(raw) {
    const text = raw.trim();
    if (!text || busy || handedOff || !inboxId) return;
    const mine = generation;
    problem.replaceChildren();
    turns.push({ kind: 'customer', text });
    input.value = '';
    busy = true;
    render();
    try {
      const answer = await api('POST', `/v1/inboxes/${encodeURIComponent(inboxId)}/autoreply/test`, { messages: transcript(), flow_state: flowState });
      if (mine !== generation) return;
      const replies = answer.replies || [];
      for (const reply of replies) turns.push({ kind: 'bot', text: reply.text, buttons: reply.buttons || [] });
      flowState = answer.flow_state ?? null;
      if (answer.order) turns.push({ kind: 'order', fields: answer.order.fields || {} });
      if (answer.handoff) {
        handedOff = true;
        turns.push({ kind: 'handoff', reason: answer.handoff.reason, detail: answer.handoff.detail });
      }
      if (!replies.length && !answer.handoff && !answer.order) turns.push({ kind: 'note', text: 'The bot did not answer.' });
    } catch (failure) {
      if (mine !== generation) return;
      // Not answered: the turn goes back into the box, as an unsent reply does.
      turns.pop();
      input.value = text;
      problem.replaceChildren(notice(failure.message, 'error'));
    } finally {
      if (mine === generation) {
        busy = false;
        render();
        if (!handedOff) input.focus();
      }
    }
  }

  render();
  return {
    element,
    use(id) { inboxId = id; clear(); },
    dirty(on) { unsaved.hidden = !on; },
    dispose() { generation += 1; },
  };
}

/// The tenant's model use today against its budget, and the orders its flows took (newest
/// first), with "Refresh" and "Older" for the next page.
function activity() {
  const usage = h('p', { id: 'bot-usage', class: 'muted' });
  const rows = h('tbody', { id: 'bot-orders' });
  const older = h('button', { type: 'button', id: 'bot-orders-older', hidden: true }, 'Older');
  const refresh = h('button', { type: 'button', id: 'bot-orders-refresh' }, 'Refresh');
  const problem = h('div', { class: 'form-error' });
  let cursor = null;
  const limit = (used, max, what) => `${used.toLocaleString()} ${what}${max == null ? '' : ` of ${max.toLocaleString()}`}`;
  const row = (order) => h('tr', { dataset: { orderId: order.id } },
    h('td', {}, new Date(order.created_at).toLocaleString()),
    h('td', {}, order.flow),
    h('td', {}, Object.entries(order.fields || {}).map(([name, value]) => `${name}: ${value}`).join(' · ')),
    h('td', {}, order.status));
  async function page(reset) {
    problem.replaceChildren();
    try {
      if (reset) {
        const today = await api('GET', '/v1/autoreply/usage');
        usage.textContent = `Model use today (UTC): ${limit(today.calls_used, today.calls_limit, 'calls')}, `
          + `${limit(today.tokens_used, today.tokens_limit, 'tokens')}.`;
        cursor = null;
      }
      const query = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
      const answer = await api('GET', `/v1/orders?limit=20${query}`);
      const items = (answer.items || []).map(row);
      if (reset) {
        rows.replaceChildren(...(items.length ? items : [h('tr', {}, h('td', { colspan: '4', class: 'muted' }, 'No orders yet.'))]));
      } else {
        rows.append(...items);
      }
      cursor = answer.next_cursor;
      older.hidden = !cursor;
    } catch (failure) {
      problem.replaceChildren(notice(failure.message, 'error'));
    }
  }
  refresh.addEventListener('click', () => page(true));
  older.addEventListener('click', () => page(false));
  page(true);
  return h('section', { class: 'bot-activity', 'aria-label': 'Model use and orders' },
    h('h3', {}, 'Orders taken by flows'), usage, problem,
    h('table', { class: 'orders' },
      h('thead', {}, h('tr', {}, h('th', {}, 'When'), h('th', {}, 'Flow'), h('th', {}, 'Details'), h('th', {}, 'Status'))),
      rows),
    h('div', { class: 'bot-actions' }, refresh, older));
}

export function mount(container) {
  const error = h('div', { class: 'form-error' });
  const inbox = h('select', { id: 'bot-inbox', 'aria-label': 'Inbox' });
  const chat = testChat();
  const settings = settingsForm({ onSaved: () => chat.dirty(false), onDirty: (on) => chat.dirty(on) });
  const body = h('div', { class: 'bots-layout', hidden: true }, settings.form, chat.element);
  container.replaceChildren(h('section', { class: 'ops bots', 'aria-label': 'Bots' },
    h('h2', {}, 'Bots'),
    h('p', { class: 'muted' }, 'Let a bot answer an inbox first: it hands the conversation to your agents when it cannot help, when the customer asks for a human, or when an agent steps in.'),
    h('div', { class: 'field bot-inbox' }, h('label', { for: 'bot-inbox' }, 'Inbox'), inbox),
    error, body, activity()));

  const choose = (id) => {
    sessionStorage.setItem('chatdesk.bots.inbox', id);
    chat.use(id);
    settings.load(id);
  };
  inbox.addEventListener('change', () => choose(inbox.value));

  api('GET', '/v1/autoreply/flows')
    .then((answer) => settings.setFlows(answer.items || []))
    .catch((failure) => error.replaceChildren(notice(`Flows: ${failure.message}`, 'error')));
  api('GET', '/v1/inboxes').then((answer) => {
    const items = answer.items || [];
    inbox.replaceChildren(...items.map((item) => h('option', { value: item.id, dataset: { name: item.name } }, `${item.name} (${item.kind})`)));
    if (!items.length) {
      error.replaceChildren(notice('There is no inbox yet: add one first.', 'error'));
      return;
    }
    const remembered = sessionStorage.getItem('chatdesk.bots.inbox');
    inbox.value = items.some((item) => item.id === remembered) ? remembered : items[0].id;
    body.hidden = false;
    choose(inbox.value);
  }).catch((failure) => error.replaceChildren(notice(failure.message, 'error')));

  return () => chat.dispose();
}
