// Keeps a failure group's replay progress up to date: each element with data-progress-url polls
// that JSON endpoint (the admin's group progress view) every second until its replays are done.
// A static file, no inline script: it works under a Content-Security-Policy of script-src 'self'.
(function () {
  "use strict";
  var INTERVAL_MS = 1000;

  function show(element, state) {
    element.textContent = state.progress;
    element.dataset.done = state.done ? "true" : "false";
    var scope = element.closest("[data-progress-scope]") || document;
    Object.keys(state.counts).forEach(function (status) {
      scope.querySelectorAll('[data-status-count="' + status + '"]').forEach(function (cell) {
        cell.textContent = state.counts[status];
      });
    });
    scope.querySelectorAll("[data-open-count]").forEach(function (cell) {
      cell.textContent = state.open;
    });
    // Replay is offered only while some member is failed and not already being replayed.
    scope.querySelectorAll("[data-needs-failed]").forEach(function (button) {
      button.hidden = !state.replayable;
    });
    // Archive, while anything is open.
    scope.querySelectorAll("[data-needs-open]").forEach(function (button) {
      button.hidden = !state.open;
    });
  }

  function poll(element, delay) {
    window.setTimeout(function () {
      fetch(element.dataset.progressUrl, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (!response.ok) { throw new Error(response.status); }
          return response.json();
        })
        .then(function (state) {
          show(element, state);
          if (!state.done) { poll(element, INTERVAL_MS); }
        })
        .catch(function () { poll(element, INTERVAL_MS * 5); });
    }, delay);
  }

  document.querySelectorAll("[data-progress-url]").forEach(function (element) {
    if (element.dataset.done !== "true") { poll(element, INTERVAL_MS); }
  });
})();
