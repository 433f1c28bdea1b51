// The tenant-wide `inbox` channel, subscribed once per sign-in and shared: the inbox list, the
// open conversation (contact events carry no conversation id, so they arrive only here) and the
// notifications all listen to it, and it survives moving between pages.
//
// Events: `event` (detail: the frame), `subscribed` (detail: the frame), `reset` (the server
// could not replay a gap: reload from REST).

export class Feed extends EventTarget {
  constructor(connection) {
    super();
    this.connection = connection;
    connection.subscribe('inbox', {
      onEvent: (frame) => this.dispatchEvent(new CustomEvent('event', { detail: frame })),
      onSubscribed: (frame) => this.dispatchEvent(new CustomEvent('subscribed', { detail: frame })),
      onReset: () => this.dispatchEvent(new CustomEvent('reset')),
    });
  }

  /// Calls `callback(frame)` for each event; returns the function that stops it.
  listen(callback) {
    const listener = (event) => callback(event.detail);
    this.addEventListener('event', listener);
    return () => this.removeEventListener('event', listener);
  }

  close() { this.connection.unsubscribe('inbox'); }
}
