// The dashboard and the web widget in headless Chromium, against a running chatdesk. Run by the
// `browser` integration test, which starts the servers and passes CHATDESK_BROWSER_CONFIG; this
// script runs the gateway process itself so it can kill and restart it.

import { spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:http';
import { chromium } from 'playwright-core';

const config = JSON.parse(process.env.CHATDESK_BROWSER_CONFIG);
const TIMEOUT = 20_000;
const consoleErrors = [];
let gatewayDown = false;

function log(message) { console.log(`[browser] ${message}`); }

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function waitFor(what, predicate, timeout = TIMEOUT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function startGateway() {
  const child = spawn(config.gateway.bin, config.gateway.args, {
    env: { ...process.env, ...config.gateway.env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  return child;
}

async function ready(base) {
  await waitFor(`${base}/readyz`, async () => {
    try { return (await fetch(`${base}/readyz`)).ok; } catch { return false; }
  }, 60_000);
}

/// A customer's site, on another origin than chatdesk, embedding the widget with the tag the docs
/// give (so the widget's modules load cross-origin, as they do in production).
async function startShop() {
  const page = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Acme Outdoor</title>
  <link rel="icon" href="data:,">
  <style>
    body { font: 16px/1.5 Georgia, serif; margin: 0; color: #222; background: #fbfaf7; }
    main { max-width: 42rem; margin: 3rem auto; padding: 0 1.5rem; }
  </style>
</head>
<body>
  <main>
    <h1>Acme Outdoor</h1>
    <p>Tents, stoves and everything for a weekend outside. Questions about your order? Use the chat bubble in the corner.</p>
  </main>
  <script src="${config.base}/widget.js" data-inbox="${config.web_inbox}"></script>
</body>
</html>`;
  const server = createServer((request, response) => {
    response.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    response.end(page);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, url: `http://127.0.0.1:${server.address().port}/` };
}

function watch(page, name) {
  page.on('console', (message) => {
    if (message.type() !== 'error') return;
    const text = message.text();
    // Chromium reports a refused WebSocket while the gateway is down; that is the scenario.
    if (gatewayDown && /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/.test(text)) return;
    consoleErrors.push(`${name}: ${text}`);
  });
  page.on('pageerror', (error) => consoleErrors.push(`${name}: ${error.message}`));
}

async function agentPage(browser, agent, name) {
  const context = await browser.newContext({ viewport: { width: 1366, height: 820 } });
  const page = await context.newPage();
  page.setDefaultTimeout(TIMEOUT);
  watch(page, name);
  await page.goto(config.base + '/');
  await page.fill('#login-email', agent.email);
  await page.fill('#login-password', agent.password);
  await page.press('#login-password', 'Enter');
  try {
    await page.waitForSelector('#connection[data-state="connected"]');
  } catch (error) {
    throw new Error(`${error.message} (${name} signing in): the page shows ${JSON.stringify((await page.textContent('body')).slice(0, 300))}`);
  }
  return page;
}

/// An SRE sees the streams page (and no inbox): the ops feed as a table per stream, the last
/// hour's charts, and a dead letter, which they open and redrive; the audit log says who did it.
async function checkStreamsPage(browser) {
  const sre = await agentPage(browser, config.sre, 'sre');
  await sre.waitForSelector('table.stream[data-stream="events"] tr[data-group="writer"]');
  check(await sre.locator('nav a', { hasText: 'Inbox' }).count() === 0, 'an SRE has no inbox page');
  await sre.waitForSelector('#dlq-total');
  check((await sre.textContent('#dlq-total')).startsWith('1 dead letter matches'), `one dead letter listed: ${await sre.textContent('#dlq-total')}`);
  await sre.fill('#dlq-error', 'faulty');
  await sre.click('#dlq-search');
  const row = sre.locator('tr.letter').first();
  await row.waitFor();
  await row.click();
  await sre.waitForSelector('#letter-error');
  check((await sre.textContent('#letter-error')).includes('faulty trigger'), 'the letter shows its error');
  check((await sre.textContent('.letter-detail')).includes('poison for the SRE'), 'the letter shows its original fields');
  await sre.screenshot({ path: `${config.screenshots}/streams.png` });
  await sre.click('#letter-redrive');
  await sre.waitForSelector('tr.task[data-kind="redrive"][data-state="done"]', { timeout: 30_000 });
  await sre.waitForSelector('#dlq-empty', { timeout: 30_000 });
  await sre.waitForSelector(`#ops-audit li[data-action="dlq.redrive"]`, { timeout: 30_000 });
  check((await sre.textContent('#ops-audit li[data-action="dlq.redrive"]')).includes(config.sre.email), 'the audit log names the SRE');
  // Pruning what gone processes left, recorded under the SRE's name.
  await sre.fill('#prune-idle', '1h');
  await sre.click('#prune-button');
  await sre.waitForSelector('#maintenance-status .notice-ok');
  await sre.waitForSelector('#ops-audit li[data-action="prune"]', { timeout: 30_000 });
  // A replay shows its plan before anything happens.
  await sre.fill('#replay-from', '-1h');
  await sre.click('#replay-plan-button');
  await sre.waitForSelector('#replay-plan .plan');
  check((await sre.textContent('#replay-plan')).includes('would be re-delivered to events/writer'), 'the plan is shown');
  await sre.context().close();
}

/// A metric of the API process (0 when not recorded yet).
async function metric(name) {
  const text = await (await fetch(`${config.base}/metrics`)).text();
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name} `));
  return line ? Number(line.slice(name.length + 1)) : 0;
}

/// A marketer uploads a CSV (one row cannot be sent, and the preview says why), starts the
/// campaign, watches the progress bar, pauses and resumes it, and sees it reach 100%.
async function checkCampaignsPage(browser) {
  const marketer = await agentPage(browser, config.marketer, 'marketer');
  check(await marketer.locator('nav a', { hasText: 'Inbox' }).count() === 0, 'a marketer has no inbox page');
  await marketer.click('nav a:has-text("Campaigns")');
  await marketer.click('#new-campaign');
  await marketer.waitForSelector('#campaign-inbox option:has-text("Marketing")', { state: 'attached' });
  await marketer.selectOption('#campaign-inbox', { label: 'Marketing (generic)' });
  await marketer.fill('#campaign-name', 'Spring sale');
  await marketer.fill('#campaign-text', 'Hi {{name}}, spring sale: 20% off this week.');
  await marketer.fill('#campaign-rate', '10');
  const rows = ['to,name', ...Array.from({ length: 80 }, (_, index) => `customer-${index},Customer ${index}`), ',Nobody'];
  await marketer.setInputFiles('#campaign-csv', { name: 'spring.csv', mimeType: 'text/csv', buffer: Buffer.from(rows.join('\n') + '\n') });
  await marketer.waitForSelector('table.rejected td:has-text("to: is empty")');
  const summary = await marketer.textContent('.report-summary');
  check(summary.includes('80 recipients') && summary.includes('1 rejected'), `the preview says ${summary}`);
  await marketer.click('button:has-text("Start campaign")');
  await marketer.waitForSelector('#campaign-status[data-status="running"]');
  const sent = async () => Number((await marketer.textContent('dd[data-count="sent"]')).replace(/\D/g, ''));
  await waitFor('the first sends', async () => (await sent()) > 5);
  await marketer.click('#campaign-pause');
  await marketer.waitForSelector('#campaign-status[data-status="paused"]');
  // The pause has reached both stages: the runner gave its slot up, and the sender holds what
  // it still had (or nothing is left in flight).
  await waitFor('the pause to reach runner and sender', async () => await metric('chatdesk_broadcast_running_campaigns') === 0
    && (await metric('chatdesk_sender_campaign_held_total{provider="generic"}') > 0
      || Number(await marketer.textContent('dd[data-count="queued"]')) === 0));
  // Provider calls, not the page's count: statuses of calls made before the pause may still
  // arrive, and count as sent when they do.
  const calls = async () => (await (await fetch(`${config.base}/metrics`)).text()).split('\n')
    .filter((line) => line.startsWith('chatdesk_sender_campaign_sends_total{'))
    .reduce((total, line) => total + Number(line.slice(line.lastIndexOf(' ') + 1)), 0);
  const atPause = await calls();
  await marketer.waitForSelector('#campaign-status[data-status="paused"]');
  check(await calls() === atPause, 'nothing is sent while paused');
  check(atPause < 80, 'paused before the end');
  await marketer.click('#campaign-resume');
  await marketer.waitForSelector('#campaign-progress [role="progressbar"][aria-valuenow="100"]', { timeout: 30_000 });
  await marketer.waitForSelector('#campaign-status[data-status="finished"]', { timeout: 30_000 });
  check(await sent() === 80, 'every recipient sent');
  await marketer.screenshot({ path: `${config.screenshots}/campaign.png` });
  await marketer.click('a:has-text("← Campaigns")');
  await marketer.waitForSelector('table.campaign-list a:has-text("Spring sale")');
  await marketer.context().close();
}

/// An owner or admin sets a bot up for an inbox: first an AI model behind `baseUrl` (a stand-in
/// that answers `reply`), saved and tried in the test chat; then the "order" flow, whose first
/// question asks for the address. `inbox` is the inbox's name; `user` signs in (owner or admin).
async function checkBotsPage(browser, { user = config.owner, inbox, baseUrl, reply, apiKey = 'sk-browser-test', model = 'gpt-4o-mini' }) {
  const owner = await agentPage(browser, user, 'bots');
  await owner.click('nav a:has-text("Bots")');
  const option = owner.locator(`#bot-inbox option[data-name="${inbox}"]`);
  await option.waitFor({ state: 'attached' });
  const inboxId = await option.getAttribute('value');
  await owner.selectOption('#bot-inbox', inboxId);
  // The form shows this inbox's saved settings (and is enabled) once they have loaded.
  await owner.waitForSelector(`#bot-form[data-inbox="${inboxId}"] #bot-settings:not([disabled])`);
  const save = async (what) => {
    await owner.click('#bot-save');
    const state = await waitFor(`the ${what} to be saved`, async () => {
      const now = await owner.getAttribute('#bot-status', 'data-state');
      return ['saved', 'error'].includes(now) && now;
    });
    const status = (await owner.textContent('#bot-status')).trim();
    check(state === 'saved' && status === 'Saved', `saving the ${what} says ${status}`);
  };
  const botSays = async (what, text) => {
    try {
      await owner.locator('#bot-test-log .turn-bot', { hasText: text }).first().waitFor();
    } catch (error) {
      throw new Error(`${error.message} (${what}): the test chat shows ${JSON.stringify(await texts(owner.locator('#bot-test-log li, #bot-test-error')))}`);
    }
  };

  // An AI model.
  await owner.selectOption('#bot-mode', 'llm');
  await owner.fill('#bot-base-url', baseUrl);
  await owner.fill('#bot-api-key', apiKey);
  await owner.fill('#bot-model', model);
  await owner.fill('#bot-system-prompt', 'You answer the customers of Acme Outdoor. Be brief.');
  await owner.fill('#bot-timeout', '5000');
  await owner.selectOption('#bot-on-error', 'handoff');
  await save('model settings');
  // The key is write-only: the field empties and says one is stored.
  await owner.waitForSelector(`#bot-api-key[placeholder^="stored"]`);
  check(await owner.inputValue('#bot-api-key') === '', 'the API key is not shown again');
  await owner.fill('#bot-test-input', 'Hello bot');
  await owner.click('#bot-test-send');
  await botSays('the model\'s reply', reply);
  await owner.waitForSelector('#bot-test-typing', { state: 'hidden' });
  await expectTexts('the test chat', owner.locator('#bot-test-log .turn-customer'), ['Hello bot']);
  await owner.screenshot({ path: `${config.screenshots}/bots.png` });

  // The order flow, from a fresh chat.
  await owner.selectOption('#bot-mode', 'flow');
  await owner.selectOption('#bot-flow', 'order');
  await save('flow');
  await owner.click('#bot-test-reset');
  await expectTexts('an empty test chat', owner.locator('#bot-test-log li'), []);
  await owner.fill('#bot-test-input', 'hi');
  await owner.click('#bot-test-send');
  await botSays('the order flow\'s first question', /address/i);
  await owner.context().close();
}

/// An agent watches a bot at work in a conversation: the bot's messages carry a "bot" badge, and
/// when the customer asks for a human the handoff shows, live, with its reason.
async function checkBotInConversation(browser) {
  const login = await (await fetch(`${config.base}/v1/auth/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(config.owner),
  })).json();
  const inbox = config.generic.webhook_path.split('/').pop();
  const configured = await fetch(`${config.base}/v1/inboxes/${inbox}/autoreply`, {
    method: 'PUT',
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${login.token}` },
    body: JSON.stringify({ mode: 'flow', flow: 'order', debounce_ms: 200 }),
  });
  check(configured.ok, `configuring the webhook inbox's bot answered ${configured.status}`);
  const customer = { id: 'bot-customer', name: 'Bot Customer' };
  await postGeneric('Hi, I would like to order', `bot-1-${Date.now()}`, customer);
  const agent = await agentPage(browser, config.agents[1], 'agent watching the bot');
  const item = agent.locator('.conversation-item', { hasText: 'Bot Customer' });
  await item.waitFor();
  await item.click();
  await agent.locator('#messages .message', { has: agent.locator('.badge-bot'), hasText: 'delivery address' }).waitFor();
  await postGeneric('Can I talk to a human?', `bot-2-${Date.now()}`, customer);
  try {
    await agent.waitForSelector('#messages .handoff-line[data-reason="keyword"]');
  } catch (error) {
    throw new Error(`${error.message}: the conversation shows ${JSON.stringify(await texts(agent.locator('#messages li')))}`);
  }
  try {
    await agent.waitForSelector('.handoff-badge[data-reason="keyword"]:not([hidden])');
  } catch (error) {
    await agent.screenshot({ path: `${config.screenshots}/bot-conversation-failed.png` });
    throw new Error(`${error.message}: the header shows ${JSON.stringify(await agent.innerHTML('.conversation-head'))}`);
  }
  await agent.screenshot({ path: `${config.screenshots}/bot-conversation.png` });
  await agent.context().close();
}

/// A visitor on the customer's site talks to the bot (the "Website" inbox runs the order flow by
/// now): the yes/no question comes with buttons, and a tap answers it.
async function checkWidgetBot(browser, shop) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  const visitor = await context.newPage();
  visitor.setDefaultTimeout(TIMEOUT);
  watch(visitor, 'visitor talking to the bot');
  await visitor.goto(shop.url);
  await visitor.click('.bubble');
  await visitor.fill('#cd-email', 'olga@example.com');
  await visitor.fill('#cd-name', 'Olga');
  await visitor.press('#cd-name', 'Enter');
  const input = visitor.locator('.composer textarea');
  const botSays = (text) => visitor.locator('ol.messages li.agent', { hasText: text }).last().waitFor();
  for (const [said, answer] of [
    ['Hi, I would like to order', 'delivery address'],
    ['5 Harbour Road, Galway', 'phone number'],
    ['+353 91 555 0100', 'How many'],
    ['2', 'Is that right?'],
  ]) {
    await input.fill(said);
    await input.press('Enter');
    await botSays(answer);
  }
  // A reload keeps the question's buttons (they come back with the history).
  await visitor.reload();
  await visitor.click('.bubble');
  await visitor.locator('ol.messages li.choices button', { hasText: 'Yes' }).click();
  await botSays('Thank you! Your order');
  await context.close();

  // The owner finds the order, and today's model use, on the Bots page.
  const owner = await agentPage(browser, config.owner, 'owner reading orders');
  await owner.click('nav a:has-text("Bots")');
  await owner.locator('#bot-orders tr', { hasText: '5 Harbour Road, Galway' }).waitFor();
  await owner.locator('#bot-usage', { hasText: 'Model use today' }).waitFor();
  await owner.context().close();
}

/// A REST call as the tenant's owner.
/// An owner sets an inbox to round robin with a limit and a grace on the Workspace page, then
/// back to manual, and the API holds each setting.
async function checkRouting(browser) {
  const owner = await agentPage(browser, config.owner, 'owner setting routing');
  await owner.click('nav a:has-text("Workspace")');
  await owner.waitForSelector('#members-inbox option', { state: 'attached' });
  const inbox = await owner.inputValue('#members-inbox');
  await owner.waitForSelector('#members input[name="member"]');
  await owner.selectOption('#routing-mode', 'round_robin');
  await owner.fill('#routing-capacity', '5');
  await owner.fill('#routing-grace', '600');
  await owner.click('#members-form button[type="submit"]');
  await waitFor('round robin saved from the page', async () => {
    const routing = await asOwner('GET', `/v1/inboxes/${inbox}/routing`);
    return routing.mode === 'round_robin' && routing.agent_capacity === 5 && routing.reassign_after_seconds === 600;
  });
  await owner.selectOption('#routing-mode', 'manual');
  await owner.fill('#routing-grace', '');
  await owner.click('#members-form button[type="submit"]');
  await waitFor('manual routing saved', async () => {
    const now = await asOwner('GET', `/v1/inboxes/${inbox}/routing`);
    return now.mode === 'manual' && now.reassign_after_seconds === null;
  });
  await owner.context().close();
}

async function asOwner(method, path, body) {
  const login = await (await fetch(`${config.base}/v1/auth/login`, {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(config.owner),
  })).json();
  const response = await fetch(config.base + path, {
    method,
    headers: { 'Content-Type': 'application/json', Authorization: `Bearer ${login.token}` },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  check(response.ok, `${method} ${path} answered ${response.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

async function unread(page) {
  if (await page.locator('#unread-badge').isHidden()) return 0;
  return Number(await page.textContent('#unread-badge .nav-badge-count'));
}

/// An agent's workspace around Ana's conversation: a canned response with its variables filled
/// in, a label (a chip on the conversation, and the inbox's label filter), the contact edited
/// beside it, a private note mentioning a colleague (who is notified), and the header search
/// finding the conversation by a word of one of its messages.
async function checkWorkspace(browser, colleague) {
  const label = await asOwner('POST', '/v1/labels', { name: 'VIP', colour: '#f2c94c' });
  await asOwner('POST', '/v1/canned_responses', { shortcode: 'greet', text: 'Hello {{contact.name}}, this is {{agent.name}} from Acme. How can I help?' });

  // The colleague works elsewhere, on the Workspace page (which lists the new label).
  await colleague.click('nav a:has-text("Workspace")');
  await colleague.waitForSelector(`#label-list li[data-label-id="${label.id}"]`);
  const unreadBefore = await unread(colleague);

  const agent = await agentPage(browser, config.agents[0], 'agent in the workspace');
  await agent.locator('.conversation-item', { hasText: 'Ana Souza' }).click();
  await agent.waitForSelector('#conv-title:text-is("Ana Souza")');
  await agent.waitForSelector('#contact-panel #contact-name:text-is("Ana Souza")');

  // "/" opens the canned responses; Enter inserts the chosen one, filled in for Ana.
  await agent.click('#reply');
  await agent.keyboard.type('/gre');
  await agent.locator('#reply-suggestions [role="option"]', { hasText: '/greet' }).waitFor();
  await agent.keyboard.press('Enter');
  await agent.waitForSelector('#reply-suggestions', { state: 'hidden' });
  const inserted = await agent.inputValue('#reply');
  check(inserted.startsWith('Hello Ana Souza, this is ') && !inserted.includes('{{'), `the canned response inserted ${JSON.stringify(inserted)}`);
  await agent.press('#reply', 'Enter');
  await agent.locator('#messages .message.outbound .text', { hasText: 'Hello Ana Souza, this is' }).waitFor();
  log('a canned response was inserted with the contact\'s name and sent');

  // A label: its chip shows (from the event), and the inbox's label filter lists the conversation.
  await agent.selectOption('#add-label', label.id);
  await agent.locator('#conv-labels .label-chip', { hasText: 'VIP' }).waitFor();
  await agent.selectOption('#label-filter', label.id);
  await expectTexts('the conversations labelled VIP', agent.locator('#conversation-list .conversation-item .name'), ['Ana Souza']);
  await agent.locator('.conversation-item .label-chip', { hasText: 'VIP' }).waitFor();
  log('a label was added and filters the inbox');

  // The contact's phone, edited in the panel.
  await agent.click('#contact-edit-phone-button');
  await agent.fill('#contact-edit-phone', '+353 1 555 0199');
  await agent.press('#contact-edit-phone', 'Enter');
  await agent.waitForSelector('#contact-phone:text-is("+353 1 555 0199")');

  // A private note mentioning the colleague, picked from the "@" list.
  await agent.check('#mode-note');
  await agent.click('#reply');
  await agent.keyboard.type('Refund promised last week, @bo');
  await agent.locator('#reply-suggestions [role="option"]', { hasText: 'bob' }).waitFor();
  await agent.keyboard.press('Enter');
  await agent.keyboard.type('please follow up.');
  await agent.keyboard.press('Enter');
  const note = agent.locator('#messages li.note', { hasText: 'Refund promised last week' });
  await note.waitFor();
  check(await note.locator('.note-tag').textContent() === 'Private note', 'the note is tagged as private');
  await note.locator('.mention', { hasText: '@bob' }).waitFor();
  const [noteBackground, messageBackground] = await Promise.all([
    note.evaluate((element) => getComputedStyle(element).backgroundColor),
    agent.locator('#messages .message').first().evaluate((element) => getComputedStyle(element).backgroundColor),
  ]);
  check(noteBackground !== messageBackground, `a note looks unlike a message (${noteBackground})`);
  check(await agent.locator('#messages .message .text', { hasText: 'Refund promised' }).count() === 0, 'a note is not a message');
  await waitFor('the mention on the colleague\'s unread badge', async () => (await unread(colleague)) > unreadBefore);
  check((await colleague.title()).startsWith('('), `the colleague's title counts it: ${await colleague.title()}`);
  log('a private note mentioning a colleague was added, and the colleague notified');

  // After a reload, everything comes from REST: the note among the messages, the chip, the phone.
  await agent.reload();
  await agent.waitForSelector('#connection[data-state="connected"]');
  await note.waitFor();
  await agent.locator('#conv-labels .label-chip', { hasText: 'VIP' }).waitFor();
  await agent.waitForSelector('#contact-phone:text-is("+353 1 555 0199")');
  const timeline = await agent.locator('#messages > li').evaluateAll((items) => items.map((item) => item.className));
  check(timeline.at(-1) === 'note', `the note comes last, by offset: ${JSON.stringify(timeline)}`);
  await agent.screenshot({ path: `${config.screenshots}/workspace-conversation.png` });

  // The shortcuts overlay, then "/" to search from another conversation.
  await agent.selectOption('#label-filter', '');
  await agent.locator('.conversation-item', { hasText: 'Webhook Customer' }).click();
  await agent.waitForSelector('#conv-title:text-is("Webhook Customer")');
  await agent.locator('#messages').focus();
  await agent.keyboard.press('?');
  await agent.waitForSelector('#shortcuts[open]');
  await agent.keyboard.press('Escape');
  await agent.waitForSelector('#shortcuts:not([open])', { state: 'attached' });
  await agent.keyboard.press('/');
  check(await agent.evaluate(() => document.activeElement?.id) === 'search', '"/" focuses the search box');
  await agent.keyboard.type('gateway');
  await agent.keyboard.press('Enter');
  const hit = agent.locator('#search-results a.search-hit', { hasText: 'gateway' }).first();
  await hit.waitFor();
  check((await hit.locator('mark').first().textContent()).toLowerCase() === 'gateway', 'the matched word is highlighted');
  await agent.screenshot({ path: `${config.screenshots}/search.png` });
  const conversationId = await hit.getAttribute('data-conversation');
  await hit.click();
  await agent.waitForSelector('#conv-title:text-is("Ana Souza")');
  await agent.waitForSelector('#search-results', { state: 'hidden' });
  check((await agent.evaluate(() => location.hash)) === `#/inbox/${conversationId}`, 'the search opened the conversation');
  log('the header search found the conversation by a word and opened it');

  // j and k move through the list, leaving the keys to the list (not the reply box).
  const names = await texts(agent.locator('#conversation-list .conversation-item .name'));
  const at = names.indexOf('Ana Souza');
  const [step, back] = at + 1 < names.length ? ['j', 'k'] : ['k', 'j'];
  await agent.locator('#messages').focus();
  await agent.keyboard.press(step);
  await agent.waitForSelector(`#conv-title:text-is(${JSON.stringify(names[at + (step === 'j' ? 1 : -1)])})`);
  await agent.keyboard.press(back);
  await agent.waitForSelector('#conv-title:text-is("Ana Souza")');
  log('j and k moved between conversations');

  // The webhook customer is Ana too: merged, their conversation becomes one of hers.
  await agent.click('#contact-merge');
  await agent.fill('#merge-query', 'Webhook');
  await agent.press('#merge-query', 'Enter');
  await agent.locator('#merge-results .merge-candidate', { hasText: 'Webhook Customer' }).click();
  await agent.click('#merge-confirm');
  await agent.locator('#contact-conversations a').first().waitFor();
  check(await agent.locator('#contact-conversations a').count() === 1, 'the merged contact\'s conversation is listed');
  log('a contact was merged into Ana\'s');
  await agent.context().close();
}

async function texts(locator) {
  return (await locator.allTextContents()).map((text) => text.trim());
}

async function expectTexts(what, locator, expected) {
  try {
    await waitFor(what, async () => JSON.stringify(await texts(locator)) === JSON.stringify(expected));
  } catch (error) {
    throw new Error(`${error.message}: have ${JSON.stringify(await texts(locator))}, want ${JSON.stringify(expected)}`);
  }
}

async function postGeneric(text, id, from = { id: 'webhook-customer', name: 'Webhook Customer' }) {
  const body = JSON.stringify({ message_id: id, from, text });
  const { createHmac } = await import('node:crypto');
  const signature = 'sha256=' + createHmac('sha256', config.generic.secret).update(body).digest('hex');
  const response = await fetch(config.base + config.generic.webhook_path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Chatdesk-Signature': signature },
    body,
  });
  check(response.ok, `the webhook answered ${response.status}`);
}

async function main() {
  mkdirSync(config.screenshots, { recursive: true });
  let gateway = startGateway();
  await ready(config.gateway.base);
  const shop = await startShop();
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  try {
    // Two agents sign in; the inbox is empty.
    const alice = await agentPage(browser, config.agents[0], 'agent 1');
    const bob = await agentPage(browser, config.agents[1], 'agent 2');
    await alice.waitForSelector('text=No conversations here yet.');

    // A visitor opens the widget on a customer's site and writes.
    const visitorContext = await browser.newContext({ viewport: { width: 1100, height: 760 } });
    const visitor = await visitorContext.newPage();
    visitor.setDefaultTimeout(TIMEOUT);
    watch(visitor, 'visitor');
    await visitor.goto(shop.url);
    await visitor.click('.bubble');
    await visitor.fill('#cd-email', 'ana@example.com');
    await visitor.fill('#cd-name', 'Ana Souza');
    await visitor.press('#cd-name', 'Enter');
    const visitorInput = visitor.locator('.composer textarea');
    await visitorInput.fill('Hello from the widget');
    await visitorInput.press('Enter');
    log('visitor wrote');

    // The conversation appears live; the agent opens it and replies.
    const item = alice.locator('.conversation-item', { hasText: 'Ana Souza' });
    await alice.locator('.conversation-item', { hasText: 'Hello from the widget' }).waitFor();
    await item.click();
    const aliceMessages = alice.locator('#messages .message .text');
    await expectTexts('the message in the agent view', aliceMessages, ['Hello from the widget']);
    await alice.fill('#reply', 'Hi Ana! How can I help?');
    await alice.press('#reply', 'Enter');
    await alice.locator('.message.outbound .tick').first().waitFor();
    const visitorMessages = visitor.locator('ol.messages li');
    await expectTexts('the reply in the widget', visitorMessages, ['Hello from the widget', 'Hi Ana! How can I help?']);
    await expectTexts('both messages once in the agent view', aliceMessages, ['Hello from the widget', 'Hi Ana! How can I help?']);
    await alice.waitForSelector('.message.outbound .tick[data-status="sent"]');
    log('reply delivered both ways');

    // The customer's typing shows on the agent's side.
    await visitorInput.type('I have a que', { delay: 30 });
    await alice.waitForSelector('#typing:not([hidden])');
    await visitorInput.fill('');
    await alice.type('#reply', 'Let me check', { delay: 30 });
    await visitor.waitForSelector('.typing:not([hidden])');
    await alice.fill('#reply', '');
    log('typing indicators shown both ways');

    // Another agent's open conversation follows assign / resolve / reopen live.
    await bob.locator('.conversation-item', { hasText: 'Ana Souza' }).click();
    await bob.waitForSelector('#conv-status[data-status="open"]');
    await alice.click('#assign-me');
    await bob.waitForSelector(`#conv-assignee[data-assignee="${config.agents[0].id}"]`);
    await alice.click('#resolve');
    await bob.waitForSelector('#conv-status[data-status="resolved"]');
    await alice.click('#reopen');
    await bob.waitForSelector('#conv-status[data-status="open"]');
    log('assign, resolve and reopen followed live');
    // The list follows too: resolved, the conversation leaves the Open list; reopened, it is back
    // (however long PostgreSQL takes, and whichever reload answers last).
    await alice.locator('.conversation-item[data-status="open"]', { hasText: 'Ana Souza' }).waitFor();

    await alice.screenshot({ path: `${config.screenshots}/conversation.png` });
    await visitor.screenshot({ path: `${config.screenshots}/widget.png` });

    // The gateway dies; messages are sent in the gap from both sides; it comes back.
    gatewayDown = true;
    gateway.kill('SIGKILL');
    await new Promise((resolve) => gateway.once('exit', resolve));
    await alice.waitForSelector('#connection[data-state="reconnecting"]');
    log('gateway killed');
    // Each side's message is accepted over REST while no gateway runs.
    const posted = (page) => page.waitForResponse((response) => response.request().method() === 'POST'
      && response.url().endsWith('/messages') && response.status() === 202);
    const visitorPosted = posted(visitor);
    await visitorInput.fill('Sent while the gateway was down');
    await visitorInput.press('Enter');
    await visitorPosted;
    await postGeneric('A webhook customer writes in the gap', `gap-${Date.now()}`);
    const agentPosted = posted(alice);
    await alice.fill('#reply', 'Agent reply in the gap');
    await alice.press('#reply', 'Enter');
    await agentPosted;
    gateway = startGateway();
    await ready(config.gateway.base);
    await alice.waitForSelector('#connection[data-state="resumed"]', { timeout: 30_000 });
    gatewayDown = false;
    log('gateway restarted, dashboard resumed');
    await alice.fill('#reply', 'After the restart');
    await alice.press('#reply', 'Enter');
    const conversation = ['Hello from the widget', 'Hi Ana! How can I help?', 'Sent while the gateway was down', 'Agent reply in the gap', 'After the restart'];
    await expectTexts('every message once, in order, on the agent side', aliceMessages, conversation);
    await expectTexts('every message once, in order, in the widget', visitorMessages, conversation);
    const webhookCustomer = alice.locator('.conversation-item', { hasText: 'Webhook Customer' });
    await webhookCustomer.waitFor();
    await webhookCustomer.click();
    await expectTexts('the webhook message sent in the gap', alice.locator('#messages .message .text'), ['A webhook customer writes in the gap']);

    // The inbox with both conversations.
    await alice.locator('.filter[data-filter="open"]').click();
    await alice.screenshot({ path: `${config.screenshots}/inbox.png` });
    log('screenshots written');

    // A reload of the widget's page continues the same conversation with its history.
    await visitor.reload();
    await visitor.click('.bubble');
    await expectTexts('the history after a reload', visitor.locator('ol.messages li'), conversation);
    log('widget reload kept the conversation');

    await checkWorkspace(browser, bob);
    await checkRouting(browser);
    log('an owner set an inbox to round robin with a limit and a grace, then back to manual');

    await checkStreamsPage(browser);
    log('the SRE saw the streams, opened a dead letter and redrove it');

    await checkCampaignsPage(browser);
    log('a marketer ran a campaign from a CSV, paused and resumed it');

    await checkBotsPage(browser, { inbox: config.bot.inbox, baseUrl: config.bot.base_url, reply: config.bot.reply });
    log('an owner set a bot up (a model, then the order flow) and talked to it in the test chat');

    await checkBotInConversation(browser);
    log('an agent saw the bot answer with its badge, then hand off when the customer asked for a human');

    await checkWidgetBot(browser, shop);
    log('a visitor took an order from the bot in the widget, answering its question with a button');

    check(consoleErrors.length === 0, `console errors:\n${consoleErrors.join('\n')}`);
  } finally {
    await browser.close();
    gateway.kill('SIGTERM');
    shop.server.close();
  }
}

main().then(() => {
  log('all browser checks passed');
  process.exit(0);
}, (error) => {
  console.error(`[browser] FAILED: ${error.message}`);
  // What the pages reported so far often says why (a module that did not load, say).
  if (consoleErrors.length) console.error(`[browser] console errors:\n${consoleErrors.join('\n')}`);
  process.exit(1);
});
