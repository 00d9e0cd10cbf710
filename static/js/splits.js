// The split form's preview says when it no longer matches the form: it remembers the form it was made for,
// and is marked out of date as soon as a field differs (while typing, before the next preview arrives).
(function () {
  "use strict";
  var form = document.querySelector("[data-split-form]");
  if (!form) {
    return;
  }
  var requested = null;

  function snapshot() {
    var fields = [];
    new FormData(form).forEach(function (value, key) {
      if (key !== "csrf_token") {
        fields.push(key + "=" + value);
      }
    });
    return fields.join("&");
  }

  function mark() {
    var preview = document.querySelector("[data-split-preview]");
    if (!preview || !preview.hasAttribute("data-for")) {
      return;
    }
    var stale = preview.getAttribute("data-for") !== snapshot();
    preview.classList.toggle("stale", stale);
    var note = preview.querySelector("[data-stale-note]");
    if (note) {
      note.hidden = !stale;
    }
  }

  form.addEventListener("htmx:beforeRequest", function () {
    requested = snapshot();
  });
  // A new preview has just been swapped in: it is the answer to the latest request (hx-sync drops older ones).
  document.addEventListener("htmx:load", function (event) {
    var preview = event.detail.elt;
    if (!preview || !preview.hasAttribute || !preview.hasAttribute("data-split-preview") || requested === null) {
      return;
    }
    preview.setAttribute("data-for", requested);
    mark();
  });
  form.addEventListener("input", mark);
  form.addEventListener("change", mark);
})();
