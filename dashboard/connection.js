// One WebSocket speaking protocol v1 (docs/protocol.md): handshake, channels with resume
// cursors, reconnects with backoff, acknowledged sends. Used by the agent app and by the web
// widget (dashboard/widget/chat.js), so it imports nothing: the widget loads it on customers' sites.

/// Stream offsets ("<ms>-<seq>") in order: two numbers, never text.
export function compareOffsets(a, b) {
  const [am, as] = a.split('-').map(Number);
  const [bm, bs] = b.split('-').map(Number);
  return am - bm || as - bs;
}

/// A `client_msg_id`: sending it again is answered with the first send's event, never sent twice.
export function newClientId() {
  return (crypto.randomUUID ? crypto.randomUUID() : `${Date.now()}-${Math.random().toString(16).slice(2)}`);
}

export class Connection extends EventTarget {
  constructor(url, token) {
    super();
    this.url = url;
    this.token = token;
    this.state = 'connecting';
    this.channels = new Map();
    this.pendingSends = new Map();
    this.attempt = 0;
    this.everConnected = false;
    this.closed = false;
    this.open();
  }

  setState(state) {
    this.state = state;
    this.dispatchEvent(new CustomEvent('state', { detail: state }));
  }

  open() {
    const socket = new WebSocket(this.url);
    this.socket = socket;
    socket.addEventListener('open', () => this.write({ op: 'hello', token: this.token, protocol: 1 }));
    socket.addEventListener('message', (message) => {
      let frame;
      try { frame = JSON.parse(message.data); } catch { return; }
      this.receive(frame);
    });
    socket.addEventListener('close', (event) => this.closedBy(event.code));
  }

  write(frame) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(frame));
    return true;
  }

  receive(frame) {
    switch (frame.op) {
      case 'welcome': {
        this.attempt = 0;
        const resumed = this.everConnected;
        this.everConnected = true;
        clearInterval(this.pinger);
        this.pinger = setInterval(() => this.write({ op: 'ping' }), Math.max(5000, frame.heartbeat_ms / 2));
        for (const [channel, subscription] of this.channels) this.requestSubscription(channel, subscription);
        this.setState(resumed ? 'resumed' : 'connected');
        break;
      }
      case 'subscribed': {
        const subscription = this.channels.get(frame.channel);
        if (!subscription) break;
        subscription.epoch = frame.epoch;
        if (!frame.recovered) {
          // The gap cannot be replayed: start over from what the server has now.
          subscription.since = frame.head || null;
          subscription.onReset?.();
        } else if (!subscription.since && frame.head) {
          subscription.since = frame.head;
        }
        subscription.onSubscribed?.(frame);
        break;
      }
      case 'event': {
        const subscription = this.channels.get(frame.channel);
        if (!subscription) break;
        if (frame.offset) {
          if (subscription.since && compareOffsets(frame.offset, subscription.since) <= 0) break;
          subscription.since = frame.offset;
        }
        subscription.onEvent(frame);
        break;
      }
      case 'ack': {
        const pending = this.pendingSends.get(frame.client_msg_id);
        if (pending) {
          this.pendingSends.delete(frame.client_msg_id);
          pending.resolve(frame);
        }
        break;
      }
      case 'error':
        this.dispatchEvent(new CustomEvent('error-frame', { detail: frame }));
        break;
      default:
        break;
    }
  }

  closedBy(code) {
    clearInterval(this.pinger);
    for (const [, pending] of this.pendingSends) pending.reject(new Error('disconnected'));
    this.pendingSends.clear();
    if (this.closed) return;
    if (code === 4003) {
      this.setState('offline');
      this.dispatchEvent(new CustomEvent('unauthorized'));
      return;
    }
    this.reconnect();
  }

  /// Opens again after a backoff: 0.5 s doubling to 10 s, with jitter; a welcome resets it.
  reconnect() {
    this.setState('reconnecting');
    this.attempt += 1;
    const ceiling = Math.min(10000, 500 * 2 ** (this.attempt - 1));
    const delay = ceiling / 2 + Math.random() * ceiling / 2;
    clearTimeout(this.retry);
    this.retry = setTimeout(() => this.open(), delay);
  }

  /// The token for the next `hello` (a renewed session). After `unauthorized` (close 4003) the
  /// connection waits for one: given it, it reconnects and resumes every channel from its offset.
  useToken(token) {
    this.token = token;
    if (this.state === 'offline' && !this.closed) this.reconnect();
  }

  requestSubscription(channel, subscription) {
    const frame = { op: 'subscribe', channel };
    if (subscription.since) {
      frame.since = subscription.since;
      if (subscription.epoch) frame.epoch = subscription.epoch;
    }
    this.write(frame);
  }

  /// Subscribes (and re-subscribes after every reconnect, from the last offset seen).
  subscribe(channel, { since = null, onEvent, onReset, onSubscribed }) {
    const subscription = { since, epoch: null, onEvent, onReset, onSubscribed };
    this.channels.set(channel, subscription);
    if (this.state === 'connected' || this.state === 'resumed') this.requestSubscription(channel, subscription);
  }

  unsubscribe(channel) {
    if (this.channels.delete(channel)) this.write({ op: 'unsubscribe', channel });
  }

  /// Sends a reply; resolves with the ack. Rejects when the socket is not open.
  send(conversation, text, clientMsgId) {
    return new Promise((resolve, reject) => {
      if (!this.write({ op: 'send', conversation, text, client_msg_id: clientMsgId })) {
        reject(new Error('not connected'));
        return;
      }
      this.pendingSends.set(clientMsgId, { resolve, reject });
    });
  }

  typing(conversation, typing) { this.write({ op: 'typing', conversation, typing }); }
  read(conversation, offset) { this.write({ op: 'read', conversation, offset }); }

  close() {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.pinger);
    this.socket?.close(1000);
  }
}
