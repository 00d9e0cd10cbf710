// The labelling page: a keyboard grid of pool images, the model's suggestion pre-selected. Enter accepts it, a
// digit labels with that label instead, x marks the image not usable, Space selects it for "Accept selected".
// Every change names the label version the page was shown (a 409 means someone labelled it meanwhile).
(function () {
  "use strict";
  var page = document.querySelector("[data-label-page]");
  if (!page) {
    return;
  }
  var grid = page.querySelector("[data-label-grid]");
  var canLabel = page.getAttribute("data-can-label") === "1";
  var batch = Number(page.getAttribute("data-batch"));
  var bulk = page.querySelector("[data-bulk-accept]");
  var labels = Array.prototype.map.call(page.querySelectorAll("[data-key-label]"), function (li) {
    return li.getAttribute("data-key-label");
  });
  var done = 0;
  var queue = Promise.resolve(); // one change at a time, in the order they were asked for

  function cards() {
    return Array.prototype.slice.call(grid.querySelectorAll("[data-card]"));
  }

  function focusCard(card) {
    cards().forEach(function (c) {
      c.setAttribute("tabindex", c === card ? "0" : "-1");
    });
    if (card) {
      card.focus();
    }
  }

  function nextOpen(card) {
    var all = cards();
    var start = all.indexOf(card);
    for (var i = 1; i <= all.length; i += 1) {
      var candidate = all[(start + i) % all.length];
      if (!candidate.hasAttribute("data-done")) {
        return candidate;
      }
    }
    return card;
  }

  function updateCounts() {
    page.querySelector("[data-progress]").textContent = done + " of " + batch + " in this batch labelled";
    page.querySelector("[data-session-count]").textContent = String(done);
    var selected = grid.querySelectorAll("[data-card].selected:not([data-done])").length;
    // A label the key list lacks (or the first one of a dataset with none): typed, then applied to the chosen image.
  var newLabel = page.querySelector("[data-new-label]");
  var chosen = null;
  grid.addEventListener("focusin", function (event) {
    var card = event.target.closest ? event.target.closest("[data-card]") : null;
    if (card) {
      chosen = card;
    }
  });
  if (newLabel) {
    newLabel.addEventListener("submit", function (event) {
      event.preventDefault();
      var input = newLabel.querySelector("[data-new-label-name]");
      var name = input.value.trim();
      var card = chosen || cards()[0];
      if (!name || !card) {
        return;
      }
      apply(card, { label: name }).then(function () {
        if (labels.indexOf(name) < 0 && card.hasAttribute("data-done")) {
          labels.push(name);
          var item = document.createElement("li");
          item.setAttribute("data-key-label", name);
          var kbd = document.createElement("kbd");
          kbd.textContent = String(labels.length);
          item.appendChild(kbd);
          item.appendChild(document.createTextNode(" " + name));
          page.querySelector("[data-label-keys]").appendChild(item);
        }
        input.value = "";
        focusCard(nextOpen(card));
      });
    });
  }

  if (bulk) {
      bulk.querySelector("[data-selected-count]").textContent = String(selected);
      bulk.disabled = selected === 0;
    }
  }

  function post(url, body) {
    return window.errorbook.postJson(url, body).then(function (response) {
      return response
        .json()
        .catch(function () {
          return {};
        })
        .then(function (data) {
          return { ok: response.ok, status: response.status, data: data };
        });
    });
  }

  function finish(card, result, text) {
    var status = card.querySelector("[data-card-status]");
    if (!result.ok) {
      status.textContent = result.data.detail || "refused (" + result.status + ")";
      status.className = "small wrong";
      card.setAttribute("data-refused", String(result.status));
      return;
    }
    card.setAttribute("data-version", String(result.data.label_version));
    card.setAttribute("data-done", "1");
    card.classList.remove("selected");
    card.classList.add("labelled");
    status.textContent = text;
    status.className = "small";
    done += 1;
    updateCounts();
  }

  function apply(card, action) {
    if (!canLabel || card.hasAttribute("data-done")) {
      return queue;
    }
    queue = queue.then(function () {
      if (card.hasAttribute("data-done")) {
        return null; // asked twice before the first answer came: one change, counted once
      }
      var id = card.getAttribute("data-image-id");
      var version = Number(card.getAttribute("data-version"));
      if (action.exclude) {
        return post("/api/images/" + id + "/exclude", { reason: "not usable", expected_version: version }).then(
          function (result) {
            finish(card, result, "not usable");
          }
        );
      }
      card.querySelector("[data-choice]").textContent = action.label;
      return post("/api/images/" + id + "/label", { label: action.label, expected_version: version }).then(
        function (result) {
          finish(card, result, "labelled " + action.label);
        }
      );
    });
    return queue;
  }

  function move(card, step) {
    var all = cards();
    var index = all.indexOf(card) + step;
    if (index >= 0 && index < all.length) {
      focusCard(all[index]);
    }
  }

  grid.addEventListener("keydown", function (event) {
    var card = event.target.closest ? event.target.closest("[data-card]") : null;
    if (!card || event.ctrlKey || event.metaKey || event.altKey) {
      return;
    }
    var key = event.key;
    var perRow = Math.max(1, Math.floor(grid.clientWidth / Math.max(1, card.offsetWidth)));
    if (key === "ArrowRight" || key === "ArrowLeft") {
      move(card, key === "ArrowRight" ? 1 : -1);
    } else if (key === "ArrowDown" || key === "ArrowUp") {
      move(card, key === "ArrowDown" ? perRow : -perRow);
    } else if (key === "Enter") {
      if (!card.getAttribute("data-suggestion")) {
        chosen = card;
        if (newLabel) {
          newLabel.querySelector("[data-new-label-name]").focus(); // no model yet: type the label
        }
        event.preventDefault();
        return;
      }
      apply(card, { label: card.getAttribute("data-suggestion") });
      focusCard(nextOpen(card));
    } else if (/^[1-9]$/.test(key) && labels[Number(key) - 1] !== undefined) {
      apply(card, { label: labels[Number(key) - 1] });
      focusCard(nextOpen(card));
    } else if (key === "x" || key === "X") {
      apply(card, { exclude: true });
      focusCard(nextOpen(card));
    } else if (key === " ") {
      if (!card.hasAttribute("data-done")) {
        card.classList.toggle("selected");
        updateCounts();
      }
    } else {
      return;
    }
    event.preventDefault();
  });

  grid.addEventListener("click", function (event) {
    var card = event.target.closest ? event.target.closest("[data-card]") : null;
    if (card && !card.hasAttribute("data-done")) {
      card.classList.toggle("selected");
      focusCard(card);
      updateCounts();
    }
  });

  // A label the key list lacks (or the first one of a dataset with none): typed, then applied to the chosen image.
  var newLabel = page.querySelector("[data-new-label]");
  var chosen = null;
  grid.addEventListener("focusin", function (event) {
    var card = event.target.closest ? event.target.closest("[data-card]") : null;
    if (card) {
      chosen = card;
    }
  });
  if (newLabel) {
    newLabel.addEventListener("submit", function (event) {
      event.preventDefault();
      var input = newLabel.querySelector("[data-new-label-name]");
      var name = input.value.trim();
      var card = chosen || cards()[0];
      if (!name || !card) {
        return;
      }
      apply(card, { label: name }).then(function () {
        if (labels.indexOf(name) < 0 && card.hasAttribute("data-done")) {
          labels.push(name);
          var item = document.createElement("li");
          item.setAttribute("data-key-label", name);
          var kbd = document.createElement("kbd");
          kbd.textContent = String(labels.length);
          item.appendChild(kbd);
          item.appendChild(document.createTextNode(" " + name));
          page.querySelector("[data-label-keys]").appendChild(item);
        }
        input.value = "";
        focusCard(nextOpen(card));
      });
    });
  }

  if (bulk) {
    bulk.addEventListener("click", function () {
      grid.querySelectorAll("[data-card].selected:not([data-done])").forEach(function (card) {
        if (card.getAttribute("data-suggestion")) {
          apply(card, { label: card.getAttribute("data-suggestion") });
        }
      });
    });
  }
  updateCounts();
})();
