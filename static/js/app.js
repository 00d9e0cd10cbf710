// Errorbook's page glue. No inline scripts anywhere (the CSP forbids them); everything hangs off data-* hooks.
(function () {
  "use strict";
  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }
  // A JSON POST as every page's scripts send it: the session cookie and the CSRF token.
  function postJson(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() },
      body: JSON.stringify(body),
    });
  }
  window.errorbook = { csrfToken: csrfToken, postJson: postJson };

  document.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrfToken();
  });
  // Swap 4xx fragments too: the server retargets them into #flash with a readable reason.
  document.addEventListener("DOMContentLoaded", function () {
    if (window.htmx) {
      htmx.config.responseHandling = [
        { code: "204", swap: false },
        { code: "[23]..", swap: true },
        { code: "4..", swap: true, error: false },
        { code: "5..", swap: false, error: true },
      ];
    }
  });
  // Forms that move many things ask first; "{into}" in the question is the form's chosen option.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form && form.getAttribute ? form.getAttribute("data-confirm") : null;
    if (!question) {
      return;
    }
    var select = form.querySelector("select");
    var chosen = select && select.selectedIndex >= 0 ? select.options[select.selectedIndex].text : "";
    if (!window.confirm(question.split("{into}").join(chosen))) {
      event.preventDefault();
    }
  });
  document.addEventListener("htmx:responseError", function (event) {
    var flash = document.getElementById("flash");
    if (flash) {
      flash.textContent = "";
      var div = document.createElement("div");
      div.className = "flash error";
      div.textContent = "The server failed (" + event.detail.xhr.status + "). Nothing was changed; try again.";
      flash.appendChild(div);
    }
  });
})();
