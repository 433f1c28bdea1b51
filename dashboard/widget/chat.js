// The web widget's chat bubble, started by the loader a customer's site embeds (dashboard/widget.js).
// The visitor gives an e-mail address and a name, then chats live: REST to write and to read the
// history, protocol v1 through the shared Connection to follow the conversation. A reload within
// the standby window continues the same conversation, with its history.

import { Connection, compareOffsets, newClientId } from '../connection.js';

// A silent typing indicator counts as stopped after this long (docs/protocol.md).
const TYPING_SHOWN_MS = 6000;
const TYPING_EVERY_MS = 2000;
const SEND_TRIES = 5;

const STYLE = `
  :host { all: initial; }
  [hidden] { display: none !important; }
  .chat { display: flex; flex-direction: column; flex: 1; min-height: 0; }
  * { box-sizing: border-box; font: 15px/1.4 system-ui, -apple-system, "Segoe UI", sans-serif; }
  .bubble { position: fixed; right: 1.25rem; bottom: 1.25rem; width: 3.5rem; height: 3.5rem; border-radius: 50%;
    border: 0; background: #0b63c5; color: #fff; display: grid; place-items: center; cursor: pointer; box-shadow: 0 4px 14px #0004; z-index: 2147483000; }
  .panel { position: fixed; right: 1.25rem; bottom: 5.5rem; width: min(22rem, calc(100vw - 2rem)); height: min(32rem, calc(100vh - 7rem));
    background: #fff; color: #1f2328; border-radius: 12px; box-shadow: 0 8px 30px #0003; display: flex; flex-direction: column; overflow: hidden; z-index: 2147483000; }
  .panel[hidden] { display: none; }
  header { background: #0b63c5; color: #fff; padding: .75rem 1rem; font-weight: 600; display: flex; justify-content: space-between; }
  header button { background: none; border: 0; color: #fff; font-size: 1.2rem; cursor: pointer; }
  form.start { padding: 1rem; display: grid; gap: .5rem; }
  label { font-weight: 600; font-size: .9rem; }
  input, textarea { width: 100%; padding: .5rem; border: 1px solid #c9d1d9; border-radius: 6px; }
  button.primary { background: #0b63c5; color: #fff; border: 0; border-radius: 6px; padding: .55rem; cursor: pointer; }
  button:focus-visible, input:focus-visible, textarea:focus-visible { outline: 3px solid #0b63c580; }
  ol { list-style: none; margin: 0; padding: .75rem; flex: 1; overflow-y: auto; display: flex; flex-direction: column; gap: .4rem; }
  li { max-width: 80%; padding: .45rem .7rem; border-radius: 10px; background: #f0f2f5; white-space: pre-wrap; overflow-wrap: anywhere; }
  li.mine { align-self: flex-end; background: #0b63c5; color: #fff; }
  li.choices { display: flex; flex-wrap: wrap; gap: .35rem; align-self: flex-start; background: none; padding: 0; max-width: 100%; }
  .choices button { font: inherit; font-size: .85rem; border: 1px solid #0b63c5; color: #0b63c5; background: #fff; border-radius: 999px; padding: .2rem .7rem; cursor: pointer; }
  .error { color: #c4232f; font-size: .85rem; padding: 0 1rem; margin: .25rem 0; }
  .status { color: #5d6670; font-size: .8rem; padding: 0 .75rem; }
  .composer { display: flex; gap: .4rem; padding: .6rem; border-top: 1px solid #e1e4e8; }
  .composer textarea { resize: none; height: 2.6rem; }`;

const MARKUP = `
  <button class="bubble" part="bubble" aria-label="Chat with us" aria-expanded="false"><svg viewBox="0 0 24 24" width="28" height="28" aria-hidden="true"><path fill="currentColor" d="M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z"/></svg></button>
  <section class="panel" role="dialog" aria-label="Chat" hidden>
    <header><span>Chat with us</span><button class="close" aria-label="Close chat">×</button></header>
    <form class="start">
      <p>Leave your e-mail address so we can follow up.</p>
      <label for="cd-email">E-mail</label><input id="cd-email" name="email" type="email" required autocomplete="email">
      <label for="cd-name">Name</label><input id="cd-name" name="name" autocomplete="name">
      <p class="error" role="alert"></p>
      <button class="primary" type="submit">Start chatting</button>
    </form>
    <div class="chat" hidden>
      <ol class="messages" aria-label="Messages" aria-live="polite"></ol>
      <p class="typing status" hidden>Typing…</p>
      <p class="status" role="status"></p>
      <div class="composer">
        <textarea aria-label="Message" placeholder="Type a message — Enter to send"></textarea>
        <button class="primary send" type="button">Send</button>
      </div>
    </div>
  </section>`;

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/// Adds the chat bubble to the page for the web inbox `inbox` of the chatdesk at `base` (an origin).
export function start({ inbox, base }) {
  const storageKey = `chatdesk.widget.${inbox}`;
  const load = () => { try { return JSON.parse(localStorage.getItem(storageKey) || 'null'); } catch { return null; } };
  const save = (value) => localStorage.setItem(storageKey, JSON.stringify(value));

  const host = document.createElement('div');
  host.id = 'chatdesk-widget';
  const root = host.attachShadow({ mode: 'open' });
  root.innerHTML = `<style>${STYLE}</style>${MARKUP}`;
  document.body.append(host);

  const $ = (selector) => root.querySelector(selector);
  const bubble = $('.bubble');
  const panel = $('.panel');
  const startForm = $('form.start');
  const chat = $('.chat');
  const list = $('ol.messages');
  const statusLine = $('.status[role="status"]');
  const typingLine = $('.typing');
  const input = $('.composer textarea');
  const messages = new Map(); // event_id → {text, mine, offset}
  const pending = new Map(); // client_msg_id → {text, event_id once the server answered}
  let state = load();
  let connection = null;
  let channel = null; // the conversation channel followed now
  let lastTyping = 0;
  let typingTimer = null;

  const open = (show) => {
    panel.hidden = !show;
    bubble.setAttribute('aria-expanded', String(show));
    if (show) (state ? input : $('#cd-email')).focus();
  };
  bubble.addEventListener('click', () => open(panel.hidden));
  $('.close').addEventListener('click', () => { open(false); bubble.focus(); });
  root.addEventListener('keydown', (event) => { if (event.key === 'Escape' && !panel.hidden) { open(false); bubble.focus(); } });

  function render() {
    const stored = [...messages.values()].sort((a, b) => compareOffsets(a.offset, b.offset));
    const items = stored.map((message) => ({ text: message.text, mine: message.mine }))
      .concat([...pending.values()].map((message) => ({ text: message.text, mine: true })));
    const elements = items.map((item) => {
      const element = document.createElement('li');
      element.className = item.mine ? 'mine' : 'agent';
      element.textContent = item.text;
      return element;
    });
    // A bot's question with buttons, while it is the last word: one tap answers it.
    const last = stored[stored.length - 1];
    if (last && !last.mine && last.buttons.length && !pending.size) {
      const choices = document.createElement('li');
      choices.className = 'choices';
      for (const button of last.buttons) {
        const choice = document.createElement('button');
        choice.type = 'button';
        choice.textContent = button.title;
        choice.addEventListener('click', () => { input.value = button.title; send(); });
        choices.append(choice);
      }
      elements.push(choices);
    }
    list.replaceChildren(...elements);
    list.scrollTop = list.scrollHeight;
  }

  /// The widget's REST API with the visitor token; an expired token is renewed once, which
  /// continues the same conversation within the standby window.
  async function request(method, path, body, { renew = true } = {}) {
    const headers = body === undefined ? {} : { 'Content-Type': 'application/json' };
    if (state) headers.Authorization = `Bearer ${state.token}`;
    const response = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await response.json().catch(() => null);
    if (response.status === 401 && renew && state && state.email) {
      await startSession(state.email, state.name);
      return request(method, path, body, { renew: false });
    }
    if (!response.ok) throw new HttpError(response.status, data && data.error ? data.error.message : response.statusText);
    return data;
  }

  async function startSession(email, name) {
    // The visitor key is this browser's proof of being the same visitor: without it, the server
    // starts a new conversation whatever e-mail is given.
    const visitorKey = state && state.visitor_key ? state.visitor_key : undefined;
    const session = await request('POST', `/v1/widget/${inbox}/sessions`, { email, name: name || undefined, visitor_key: visitorKey }, { renew: false });
    state = {
      token: session.token,
      conversation_id: session.conversation_id,
      expires_at: session.expires_at,
      visitor_key: session.visitor_key,
      email,
      name,
    };
    save(state);
    connection?.useToken(state.token);
  }

  startForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const error = startForm.querySelector('.error');
    error.textContent = '';
    try {
      await startSession($('#cd-email').value.trim(), $('#cd-name').value.trim());
      showChat();
    } catch (failure) {
      error.textContent = failure.status === 422 ? 'Please check the e-mail address.' : `Cannot start the chat: ${failure.message}`;
    }
  });

  function showChat() {
    startForm.hidden = true;
    chat.hidden = false;
    connect();
    input.focus();
  }

  async function websocketUrl() {
    try {
      const info = await fetch(`${base}/v1`).then((response) => response.json());
      if (info.websocket_url) return info.websocket_url;
    } catch { /* fall back to this host */ }
    return base.replace(/^http/, 'ws') + '/v1/ws';
  }

  /// Shows a stored message once, replacing the widget's own pending copy of it.
  function addMessage(eventId, text, direction, offset, providerId, buttons = []) {
    if (messages.has(eventId)) return;
    const mine = direction === 'inbound';
    if (mine) {
      // The widget's own message: the server's answer named its event id, or its provider id
      // ends with the client_msg_id it was sent with.
      for (const [id, message] of pending) {
        if (message.event_id === eventId || (providerId || '').endsWith(`:${id}`)) pending.delete(id);
      }
    }
    messages.set(eventId, { text, mine, offset, buttons: Array.isArray(buttons) ? buttons : [] });
    render();
  }

  function showAgentTyping(on) {
    clearTimeout(typingTimer);
    typingLine.hidden = !on;
    if (on) typingTimer = setTimeout(() => { typingLine.hidden = true; }, TYPING_SHOWN_MS);
  }

  function onEvent(frame) {
    if (frame.type === 'message.created') {
      if (frame.data.direction === 'outbound') showAgentTyping(false);
      const buttons = (frame.data.extra && frame.data.extra.buttons) || [];
      addMessage(frame.event_id, frame.data.text, frame.data.direction, frame.offset, frame.data.provider_message_id, buttons);
    } else if (frame.type === 'typing' && frame.data.who && ['agent', 'bot'].includes(frame.data.who.kind)) {
      showAgentTyping(frame.data.typing);
    }
  }

  /// The conversation so far, over REST; answers the offset to follow it live from.
  async function loadHistory() {
    const history = await request('GET', `/v1/widget/${inbox}/messages`);
    for (const item of history.items) {
      addMessage(item.event_id, item.text, item.direction, item.offset, null, item.buttons || []);
    }
    return history.resume_from;
  }

  /// Follows the session's conversation: its history, then its channel from where the history
  /// ends. A renewed session past the standby window is a new conversation, shown from empty.
  async function follow() {
    const wanted = `conversation:${state.conversation_id}`;
    if (channel === wanted) return;
    if (channel) connection.unsubscribe(channel);
    channel = wanted;
    messages.clear();
    render();
    let since;
    for (let attempt = 1; ; attempt += 1) {
      try {
        since = await loadHistory();
        break;
      } catch {
        statusLine.textContent = 'Reconnecting…';
        await new Promise((resolve) => setTimeout(resolve, Math.min(10000, 500 * 2 ** attempt)));
      }
      if (channel !== wanted) return;
    }
    if (channel !== wanted) return;
    statusLine.textContent = connection.state === 'reconnecting' ? 'Reconnecting…' : '';
    connection.subscribe(channel, {
      since,
      onEvent,
      // The server could not replay the gap: what it misses comes from the history again.
      onReset: () => { loadHistory().catch(() => {}); },
    });
  }

  async function connect() {
    if (!connection) {
      connection = new Connection(await websocketUrl(), state.token);
      connection.addEventListener('state', (event) => {
        statusLine.textContent = event.detail === 'reconnecting' ? 'Reconnecting…' : '';
      });
      connection.addEventListener('unauthorized', async () => {
        // The visitor token expired: a new session continues the conversation within the standby window.
        try {
          await startSession(state.email, state.name);
        } catch {
          statusLine.textContent = 'Please start the chat again.';
          return;
        }
        follow();
      });
    }
    await follow();
  }

  async function send() {
    const text = input.value.trim();
    if (!text) return;
    input.value = '';
    // The next keystroke starts a new typing signal.
    lastTyping = 0;
    const clientMsgId = newClientId();
    const message = { text, event_id: null };
    pending.set(clientMsgId, message);
    render();
    for (let tries = 0; tries < SEND_TRIES; tries += 1) {
      try {
        const accepted = await request('POST', `/v1/widget/${inbox}/messages`, { text, client_msg_id: clientMsgId });
        if (accepted.conversation_id && accepted.conversation_id !== state.conversation_id) {
          // The visitor was away past the standby window: the message opened a new
          // conversation. A new session (with the visitor key) follows that one, history first.
          pending.delete(clientMsgId);
          await startSession(state.email, state.name);
          await follow();
          return;
        }
        // The event may have arrived over the socket before this answer.
        if (messages.has(accepted.event_id)) pending.delete(clientMsgId);
        else message.event_id = accepted.event_id;
        render();
        return;
      } catch (failure) {
        if (failure.status && failure.status < 500 && failure.status !== 429) break;
        await new Promise((resolve) => setTimeout(resolve, 500 * (tries + 1)));
      }
    }
    pending.delete(clientMsgId);
    render();
    statusLine.textContent = 'Your message could not be sent. Please try again.';
    input.value = text;
  }

  $('.send').addEventListener('click', send);
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  input.addEventListener('input', () => {
    const now = Date.now();
    if (connection && now - lastTyping > TYPING_EVERY_MS) {
      lastTyping = now;
      connection.typing(state.conversation_id, true);
    }
  });

  if (state && state.expires_at * 1000 > Date.now()) {
    showChat();
  } else if (state && state.email) {
    // The token lapsed: within the standby window the same conversation continues.
    startSession(state.email, state.name).then(showChat).catch(() => { state = null; });
  }
}
