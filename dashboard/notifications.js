// What needs the signed-in agent: new conversations, customers writing in conversations assigned
// to them or to nobody, and notes that mention them. Counted on the Inbox link and in the page
// title until the conversation is opened, and shown by the browser once the agent allowed it
// (the permission is asked for on a click, never on load).

import { api } from './api.js';
import { h } from './ui.js';

export class Notifier {
  constructor(context) {
    this.context = context;
    this.title = document.title;
    this.unseen = new Map(); // conversation id → how many things the agent has not seen
    this.assignees = new Map(); // conversation id → assignee id (null: nobody)
    this.conversationNames = new Map(); // conversation id → the contact's name
    this.contactNames = new Map(); // contact id → name, from contact events
    this.fresh = new Set(); // conversations counted as new whose first message has not come yet
    this.count = h('span', { class: 'nav-badge-count' });
    this.badge = h('span', { class: 'nav-badge', id: 'unread-badge', hidden: true }, this.count, h('span', { class: 'visually-hidden' }, ' unread'));
    this.permission = h('button', { type: 'button', class: 'link', id: 'notify-enable', hidden: true, onclick: () => this.ask() }, 'Enable notifications');
    this.stop = context.feed.listen((frame) => { this.receive(frame).catch(() => {}); });
    this.onFocus = () => { const open = this.openConversation(); if (open && this.watching(open)) this.seen(open); };
    window.addEventListener('focus', this.onFocus);
    document.addEventListener('visibilitychange', this.onFocus);
    this.showPermission();
  }

  /// What the inbox list knows of its conversations.
  learn(items) {
    for (const item of items) {
      this.assignees.set(item.id, item.assignee_id || null);
      this.conversationNames.set(item.id, item.contact.name || item.contact.external_id);
    }
  }

  openConversation() {
    const match = /^#\/inbox\/([0-9a-f-]{36})/i.exec(location.hash);
    return match ? match[1].toLowerCase() : null;
  }

  /// The agent has the conversation in front of them right now.
  watching(id) {
    return this.openConversation() === id && document.visibilityState === 'visible' && document.hasFocus();
  }

  async assigneeOf(id) {
    if (this.assignees.has(id)) return this.assignees.get(id);
    try {
      const conversation = await api('GET', `/v1/conversations/${id}`);
      this.learn([conversation]);
      return conversation.assignee_id || null;
    } catch {
      return null;
    }
  }

  async receive(frame) {
    const data = frame.data || {};
    const me = this.context.user.id;
    const id = data.conversation_id;
    switch (frame.type) {
      case 'contact.created':
      case 'contact.updated':
        if (data.name) this.contactNames.set(data.contact_id, data.name);
        break;
      case 'conversation.created':
        this.assignees.set(id, null);
        this.fresh.add(id);
        this.add(id);
        break;
      case 'conversation.assigned':
        this.assignees.set(id, data.assignee_id || null);
        break;
      case 'message.created': {
        if (data.direction !== 'inbound') break;
        const name = this.conversationNames.get(id) || this.contactNames.get(data.contact_id) || 'A customer';
        // A new conversation's first message is the same news: counted once, shown with its text.
        if (this.fresh.delete(id)) {
          this.show(id, `New conversation with ${name}`, data.text);
          break;
        }
        const assignee = await this.assigneeOf(id);
        if (assignee && assignee !== me) break;
        this.add(id);
        this.show(id, `${name} wrote`, data.text);
        break;
      }
      case 'note.created':
        if (!(data.mentions || []).includes(me) || data.author?.id === me) break;
        this.add(id);
        this.show(id, `${this.context.directory.nameOf(data.author?.id)} mentioned you in a note`, data.text);
        break;
      default:
        break;
    }
  }

  add(id) {
    if (!id || this.watching(id)) return;
    this.unseen.set(id, (this.unseen.get(id) || 0) + 1);
    this.paint();
  }

  seen(id) {
    if (this.unseen.delete(id)) this.paint();
  }

  paint() {
    const total = [...this.unseen.values()].reduce((sum, count) => sum + count, 0);
    this.badge.hidden = total === 0;
    this.count.textContent = total > 99 ? '99+' : String(total);
    document.title = total ? `(${total}) ${this.title}` : this.title;
  }

  /// A browser notification, when allowed and the agent is looking elsewhere.
  show(id, title, body) {
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    if (document.visibilityState === 'visible' && document.hasFocus()) return;
    const notification = new Notification(title, { body: body || '', tag: id || undefined });
    notification.onclick = () => {
      window.focus();
      if (id) location.hash = `#/inbox/${id}`;
      notification.close();
    };
  }

  showPermission() {
    this.permission.hidden = !('Notification' in window) || Notification.permission !== 'default';
  }

  async ask() {
    try { await Notification.requestPermission(); } catch { /* the browser said no */ }
    this.showPermission();
  }

  close() {
    this.stop();
    window.removeEventListener('focus', this.onFocus);
    document.removeEventListener('visibilitychange', this.onFocus);
    document.title = this.title;
  }
}
