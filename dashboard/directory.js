// The tenant's users, labels and inboxes, fetched once per sign-in and shared by the pages.
// Whoever changes one of them (the Workspace page, a label event naming an unknown label) calls
// `refresh`, and every page listening for `change` redraws.

import { api } from './api.js';

const SOURCES = { users: '/v1/users', labels: '/v1/labels', inboxes: '/v1/inboxes' };

export class Directory extends EventTarget {
  constructor(user) {
    super();
    this.user = user;
    this.loading = new Map();
    this.known = { users: [], labels: [], inboxes: [] };
    this.loaded = new Set();
  }

  get(kind) {
    if (!this.loading.has(kind)) {
      // Agents may not list inboxes (the API answers 403): ask only when the answer is useful.
      const allowed = kind !== 'inboxes' || ['owner', 'admin'].includes(this.user.role);
      const promise = allowed
        ? api('GET', SOURCES[kind]).then((answer) => {
          this.known[kind] = answer.items;
          this.loaded.add(kind);
          return answer.items;
        })
        : Promise.resolve([]);
      // A failure is not remembered: the next call asks again.
      promise.catch(() => { if (this.loading.get(kind) === promise) this.loading.delete(kind); });
      this.loading.set(kind, promise);
    }
    return this.loading.get(kind);
  }

  users() { return this.get('users'); }
  labels() { return this.get('labels'); }
  inboxes() { return this.get('inboxes'); }

  refresh(kind) {
    this.loading.delete(kind);
    const promise = this.get(kind);
    promise.then(() => this.dispatchEvent(new CustomEvent('change', { detail: kind })), () => {});
    return promise;
  }

  userById(id) { return this.known.users.find((user) => user.id === id) || null; }
  labelById(id) { return this.known.labels.find((label) => label.id === id) || null; }
  inboxById(id) { return this.known.inboxes.find((inbox) => inbox.id === id) || null; }

  /// How to name a user to the signed-in one.
  nameOf(id) {
    if (!id) return '';
    if (id === this.user.id) return 'You';
    return this.userById(id)?.name || `agent …${id.slice(-6)}`;
  }
}
