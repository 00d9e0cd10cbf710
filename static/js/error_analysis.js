// The error grid, driven from the keyboard: arrows move (grid.js), 1-9 toggle a category, m marks mislabeled,
// Enter opens the large view, Esc closes it. Each toggle is an htmx request that saves at once and answers
// with the example's card and (out of band) the updated ceiling table.
(function () {
  "use strict";
  var grid = document.querySelector("[data-error-grid]");
  if (!grid) {
    return;
  }
  var toolbar = document.querySelector("[data-errors-toolbar]");
  var detail = document.getElementById("detail");
  var canTag = grid.getAttribute("data-can-tag") === "1";
  var subset = grid.getAttribute("data-subset");
  var following = false;  // a large view for a newly selected example is on its way
  // Toggles go one after another, so each answer's ceiling table is at least as new as the one before.
  var saving = Promise.resolve();
  var nav = window.errorbook.keyboardGrid({
    grid: grid,
    card: "[data-card]",
    idPrefix: "card-",
    onSelect: function (card) {
      followInDetail(card);
      // Keep the place across reloads without making the browser jump to an anchor.
      history.replaceState(null, "", "#image-" + nav.selectedId());
    },
    onKey: onKey,
  });
  var cardById = nav.cardById;

  function shownId() {
    var open = detail ? detail.querySelector("[data-detail]") : null;
    return open ? open.getAttribute("data-image-id") : null;
  }

  // An open large view always shows the selected example: otherwise a key pressed after a move would tag a card
  // hidden under the panel while the panel still shows the one before.
  function followInDetail(card) {
    var shown = shownId();
    var link = card.querySelector("[data-open]");
    if (shown === null || shown === nav.selectedId() || !link) {
      return;
    }
    detail.querySelector("[data-detail]").classList.add("stale");  // dimmed until the selected one arrives
    if (following) {
      return;  // the answer in flight is checked against the selection when it lands (htmx:load below)
    }
    following = true;
    function landed() {
      following = false;
      var open = shownId();
      var card = cardById(nav.selectedId());
      if (open !== null && open !== nav.selectedId() && card) {
        followInDetail(card);
      }
    }
    htmx.ajax("GET", link.getAttribute("hx-get"), { target: "#detail" }).then(landed, landed);
  }

  function toggle(tagId) {
    var card = cardById(nav.selectedId());
    if (!canTag || !card || !tagId) {
      return;
    }
    var url = grid.getAttribute("data-toggle-base") + nav.selectedId() + "/tags/" + tagId + "/toggle?subset=" +
      encodeURIComponent(subset);
    var target = "#card-" + nav.selectedId();
    saving = saving.then(function () {
      return htmx.ajax("POST", url, { target: target, swap: "outerHTML" });
    }).catch(function () {
      return null;  // htmx has already shown the failure in #flash; keep the queue going
    });
  }

  function tagIdOf(selector) {
    var button = toolbar ? toolbar.querySelector(selector) : null;
    return button ? button.getAttribute("data-tag-id") : null;
  }

  function openSelected() {
    var card = cardById(nav.selectedId());
    var link = card ? card.querySelector("[data-open]") : null;
    if (link) {
      link.click();
    }
  }

  function closeDetail() {
    if (detail) {
      detail.innerHTML = "";
    }
    var card = cardById(nav.selectedId());
    if (card) {
      card.scrollIntoView({ block: "nearest" });
    }
  }

  function onKey(key) {
    if (key === "Enter") {
      openSelected();
    } else if (key === "Escape") {
      closeDetail();
    } else if (/^[1-9]$/.test(key)) {
      toggle(tagIdOf('[data-key="' + key + '"]'));
    } else if (key === "m" || key === "M") {
      toggle(tagIdOf("[data-mislabeled]"));
    } else {
      return false;
    }
    return true;
  }

  grid.addEventListener("click", function (event) {
    var card = event.target.closest("[data-card]");
    if (card) {
      nav.select(card, false);
    }
  });

  if (toolbar) {
    toolbar.addEventListener("click", function (event) {
      var button = event.target.closest("[data-tag-id]");
      if (button) {
        toggle(button.getAttribute("data-tag-id"));
      }
    });
  }

  if (detail) {
    detail.addEventListener("click", function (event) {
      if (event.target.closest("[data-close-detail]")) {
        closeDetail();
      }
    });
  }

  // A toggled card comes back as a new element: keep it selected, and show its categories in the large view
  // when that example is open there (the chips are the server's escaped markup, copied as they are).
  document.addEventListener("htmx:load", function (event) {
    var element = event.detail.elt;
    if (!element || !element.hasAttribute || !element.hasAttribute("data-card")) {
      return;
    }
    var imageId = element.getAttribute("data-image-id");
    if (imageId === nav.selectedId()) {
      nav.markSelected(element);
    }
    var open = detail ? detail.querySelector('[data-detail][data-image-id="' + imageId + '"] [data-detail-tags]') : null;
    var chips = element.querySelector(".ecard-tags");
    if (open && chips) {
      open.innerHTML = chips.innerHTML;
    }
  });

  var fromHash = /^#image-(\d+)$/.exec(window.location.hash);
  var first = (fromHash && cardById(fromHash[1])) || nav.cards()[0];
  if (first) {
    nav.select(first, Boolean(fromHash));
  }
})();
