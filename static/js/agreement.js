// Two-reviewer agreement on the campaign page: a second reviewer confirms (c) or rejects (r) the proposed relabel of
// the selected item, or uses the buttons in the proposals table and the large view. A confirmation is applied at the
// label version it was proposed on; a 409 says which change came in between, and nothing is overwritten.
(function () {
  "use strict";
  var grid = document.querySelector("[data-review-grid]");
  if (!grid || grid.getAttribute("data-can-review") !== "1") {
    return;
  }
  var reviewId = grid.getAttribute("data-review-id");
  var busy = false;

  function notice(text, kind) {
    var area = document.getElementById("flash");
    if (area) {
      area.innerHTML = "";
      var line = document.createElement("div");
      line.className = "flash " + kind;
      line.setAttribute("role", kind === "error" ? "alert" : "status");
      line.textContent = text;
      area.appendChild(line);
    }
  }

  function showOnCard(imageId, state) {
    var card = document.getElementById("item-" + imageId);
    if (!card) {
      return;
    }
    card.setAttribute("data-version", String(state.label_version));
    card.setAttribute("data-label", state.label);
    card.setAttribute("data-status", state.review_status || "pending");
    card.className = card.className.replace(/\bstatus-\S+/, "status-" + (state.review_status || "pending"));
    card.querySelector("[data-item-label]").textContent = state.label;
    card.querySelector("[data-item-status]").textContent = state.review_status || "pending";
    var line = card.querySelector("[data-item-proposal]");
    if (line) {
      line.remove();
    }
  }

  function refreshDetail(imageId) {
    var shown = document.querySelector("#review-detail [data-item-detail]");
    if (shown && shown.getAttribute("data-image-id") === String(imageId) && window.htmx) {
      htmx.ajax("GET", "/reviews/" + reviewId + "/items/" + imageId, { target: "#review-detail", swap: "innerHTML" });
    }
  }

  function decide(imageId, verb) {
    if (busy || !imageId) {
      return;
    }
    busy = true;
    var input = document.querySelector("#review-detail [data-reason]");
    var payload = verb === "reject" ? { reason: input ? input.value.trim() : "" } : {};
    fetch("/api/reviews/" + reviewId + "/items/" + imageId + "/" + verb, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": window.errorbook.csrfToken() },
      body: JSON.stringify(payload),
    }).then(function (response) {
      return response.json().catch(function () {
        return {};
      }).then(function (data) {
        if (!response.ok) {
          notice(data.detail || "The server refused this (" + response.status + ").", "error");
          return;
        }
        showOnCard(imageId, data);
        var proposal = data.proposal || {};
        notice(verb === "confirm"
          ? "Confirmed: image " + imageId + " is " + data.label + " now (proposed by " + (proposal.proposed_by || "?") + ")."
          : (proposal.withdrawn ? "Withdrawn" : "Rejected") + ": image " + imageId + " stays " + data.label + ".", "ok");
        document.body.dispatchEvent(new CustomEvent("review:changed"));
        refreshDetail(imageId);
      });
    }).catch(function () {
      notice("The server could not be reached. Nothing was changed; try again.", "error");
    }).then(function () {
      busy = false;
    });
  }

  document.addEventListener("keydown", function (event) {
    var target = event.target;
    if (event.ctrlKey || event.metaKey || event.altKey || (target && (target.tagName === "INPUT" ||
        target.tagName === "TEXTAREA" || target.tagName === "SELECT" || target.isContentEditable))) {
      return;
    }
    var key = event.key.toLowerCase();
    var card = grid.querySelector("[data-item].selected");
    if ((key !== "c" && key !== "r") || !card || card.getAttribute("data-status") !== "proposed") {
      return;
    }
    event.preventDefault();
    decide(card.getAttribute("data-image-id"), key === "c" ? "confirm" : "reject");
  });

  document.addEventListener("click", function (event) {
    var confirmButton = event.target.closest("[data-confirm-proposal]");
    var rejectButton = event.target.closest("[data-reject-proposal]");
    var show = event.target.closest("[data-show-item]");
    if (confirmButton) {
      decide(confirmButton.getAttribute("data-confirm-proposal"), "confirm");
    } else if (rejectButton) {
      decide(rejectButton.getAttribute("data-reject-proposal"), "reject");
    } else if (show) {
      var card = document.getElementById("item-" + show.getAttribute("data-show-item"));
      if (card) {
        event.preventDefault();
        card.click();
      }
    }
  });
})();
