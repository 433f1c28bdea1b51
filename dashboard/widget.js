// The chatdesk web widget, as a customer's site embeds it:
//   <script src="https://<chatdesk>/widget.js" data-inbox="<web inbox id>"></script>
// adds a chat bubble to the page. A classic script, so the tag needs no type="module" and can read
// its own data-inbox; it imports the chat (widget/chat.js, which follows the conversation through
// the dashboard's connection.js) from the same chatdesk as its own src. Those modules are served
// with CORS, since a cross-origin module import needs it.
(() => {
  const script = document.currentScript;
  const inbox = script && script.dataset.inbox;
  if (!inbox) {
    console.warn('chatdesk widget: data-inbox is missing on the script tag');
    return;
  }
  const source = new URL(script.src, location.href);
  import(new URL('assets/widget/chat.js', source).href)
    .then((chat) => chat.start({ inbox, base: source.origin }))
    .catch((failure) => console.warn(`chatdesk widget: cannot load the chat from ${source.origin}: ${failure.message}`));
})();
