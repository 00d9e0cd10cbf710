// A label-review campaign, driven from the keyboard: arrows move (grid.js), digits choose a class, k keeps, a marks
// the item ambiguous (with the reason typed in the large view), u undoes this page's last action. Space or Ctrl-click
// picks items for a bulk relabel. Every action names the label version the reviewer saw; a 409 means someone
// changed the image meanwhile: the card shows the current label and nothing is overwritten.
(function () {
  "use strict";
  var grid = document.querySelector("[data-review-grid]");
  if (!grid) {
    return;
  }
  var reviewId = grid.getAttribute("data-review-id");
  var canReview = grid.getAttribute("data-can-review") === "1";
  var toolbar = document.querySelector("[data-review-toolbar]");
  var detail = document.getElementById("review-detail");
  var picked = {};
  var undoStack = [];
  // Actions go one after another, so each one names the version the previous one produced.
  var queue = Promise.resolve();

  var nav = window.errorbook.keyboardGrid({
    grid: grid,
    card: "[data-item]",
    idPrefix: "item-",
    onSelect: loadDetail,
    onKey: onKey,
    onTypingKey: onTypingKey,
  });
  var cards = nav.cards;
  var cardById = nav.cardById;

  function select(card) {
    nav.select(card, true);
  }

  var flashTimer = null;
  var FLASH_MS = 6000;

  // A message says what just happened: it goes when the next action starts, and a confirmation also after a
  // few seconds (a refusal stays until then, so it can be read).
  function clearFlash() {
    var box = document.getElementById("flash");
    if (box) {
      box.textContent = "";
    }
  }

  function flash(message, kind) {
    var box = document.getElementById("flash");
    if (!box) {
      return;
    }
    clearTimeout(flashTimer);
    box.textContent = "";
    var div = document.createElement("div");
    div.className = "flash " + (kind || "ok");
    div.setAttribute("role", kind === "error" ? "alert" : "status");
    div.textContent = message;
    box.appendChild(div);
    if (kind !== "error") {
      flashTimer = setTimeout(clearFlash, FLASH_MS);
    }
  }

  function loadDetail() {
    if (detail && nav.selectedId() !== null && window.htmx) {
      htmx.ajax("GET", "/reviews/" + reviewId + "/items/" + nav.selectedId(), { target: "#review-detail", swap: "innerHTML" });
    }
  }

  function advanceFrom(imageId) {
    // The next undecided item after this one (dev and test alternate in review order).
    var list = cards();
    var index = list.indexOf(cardById(imageId));
    for (var i = index + 1; i < list.length; i += 1) {
      if (list[i].getAttribute("data-status") === "pending") {
        select(list[i]);
        return;
      }
    }
    loadDetail();
  }

  function setStatus(card, status) {
    card.setAttribute("data-status", status);
    card.className = card.className.replace(/\bstatus-\S+/, "status-" + status);
    card.querySelector("[data-item-status]").textContent = status;
  }

  function applyState(card, state) {
    if (state.label_version !== undefined) {
      card.setAttribute("data-version", String(state.label_version));
    }
    if (typeof state.label === "string") {
      card.setAttribute("data-label", state.label);
      card.querySelector("[data-item-label]").textContent = state.label;
    }
    if (state.review_status) {
      setStatus(card, state.review_status);
    }
  }

  // After a refusal the card shows what the server holds now, whatever the refusal carried.
  function refreshCard(card) {
    return fetch("/api/images/" + card.getAttribute("data-image-id") + "/label", { credentials: "same-origin" })
      .then(function (response) {
        return response.ok ? response.json() : null;
      })
      .then(function (state) {
        if (state) {
          applyState(card, state);
        }
      });
  }

  function changed() {
    document.body.dispatchEvent(new CustomEvent("review:changed"));
  }

  function post(url, body) {
    return window.errorbook.postJson(url, body).then(function (response) {
      return response.json().catch(function () {
        return {};
      }).then(function (data) {
        return { ok: response.ok, status: response.status, data: data };
      });
    });
  }

  // Runs one action for one card; resolves to the new state, or null after showing why it was refused.
  function act(card, url, body) {
    return post(url, body).then(function (result) {
      if (result.ok) {
        applyState(card, result.data);
        return result.data;
      }
      flash(result.data.detail || "The server refused this (" + result.status + ").", "error");
      return (result.status === 409 ? refreshCard(card) : Promise.resolve()).then(function () {
        return null;
      });
    });
  }

  function enqueue(work) {
    clearFlash();
    queue = queue.then(work).catch(function () {
      flash("The server could not be reached. Nothing was changed; try again.", "error");
    });
    return queue;
  }

  function reasonText() {
    var input = detail ? detail.querySelector("[data-reason]") : null;
    return input ? input.value.trim() : "";
  }

  function relabel(card, label, options) {
    var imageId = card.getAttribute("data-image-id");
    return act(card, "/api/images/" + imageId + "/label", {
      label: label,
      expected_version: Number(card.getAttribute("data-version")),
      review_id: Number(reviewId),
      reason: options.reason || "",
    }).then(function (state) {
      if (state && state.change_id) {
        undoStack.push({ kind: "change", changeId: state.change_id, imageId: imageId });
      } else if (state && state.review_status === "kept") {
        undoStack.push({ kind: "keep", imageId: imageId });
      }
      return state;
    });
  }

  function chooseLabel(label) {
    var card = cardById(nav.selectedId());
    if (!canReview || !card || !label) {
      return;
    }
    var reason = reasonText();
    enqueue(function () {
      return relabel(card, label, { reason: reason }).then(function (state) {
        if (state) {
          changed();
          advanceFrom(card.getAttribute("data-image-id"));
        }
      });
    });
  }

  function keep() {
    var card = cardById(nav.selectedId());
    if (!canReview || !card) {
      return;
    }
    var imageId = card.getAttribute("data-image-id");
    enqueue(function () {
      return act(card, "/api/reviews/" + reviewId + "/items/" + imageId + "/decision", {
        decision: "kept",
        expected_version: Number(card.getAttribute("data-version")),
      }).then(function (state) {
        if (state) {
          undoStack.push({ kind: "keep", imageId: imageId });
          changed();
          advanceFrom(imageId);
        }
      });
    });
  }

  function ambiguous() {
    var card = cardById(nav.selectedId());
    if (!canReview || !card) {
      return;
    }
    var reason = reasonText();
    if (!reason) {
      var input = detail ? detail.querySelector("[data-reason]") : null;
      flash("Type why the label is ambiguous, then press Enter.", "warn");
      if (input) {
        input.setAttribute("data-submit", "ambiguous");
        input.focus();
      }
      return;
    }
    var imageId = card.getAttribute("data-image-id");
    enqueue(function () {
      return act(card, "/api/images/" + imageId + "/exclude", {
        reason: reason,
        expected_version: Number(card.getAttribute("data-version")),
        review_id: Number(reviewId),
      }).then(function (state) {
        if (state) {
          undoStack.push({ kind: "change", changeId: state.change_id, imageId: imageId });
          changed();
          advanceFrom(imageId);
        }
      });
    });
  }

  function revert(card, changeId) {
    return act(card, "/api/label-changes/" + changeId + "/revert", {
      expected_version: Number(card.getAttribute("data-version")),
    });
  }

  function undo() {
    var last = undoStack.pop();
    if (!canReview || !last) {
      return;
    }
    var card = cardById(last.imageId);
    if (!card) {
      return;
    }
    enqueue(function () {
      var done = last.kind === "change" ? revert(card, last.changeId) : act(
        card,
        "/api/reviews/" + reviewId + "/items/" + last.imageId + "/decision",
        { decision: "pending", expected_version: Number(card.getAttribute("data-version")) }
      );
      return done.then(function (state) {
        if (state) {
          flash("Undone: image " + last.imageId + " is " + state.label + " again.", "ok");
          changed();
          select(card);
        }
      });
    });
  }

  function updatePicked() {
    var count = Object.keys(picked).length;
    var counter = document.querySelector("[data-picked-count]");
    var button = document.querySelector("[data-bulk-apply]");
    if (counter) {
      counter.textContent = String(count);
    }
    if (button) {
      button.disabled = count === 0;
    }
  }

  function togglePick(card) {
    var id = card.getAttribute("data-image-id");
    if (picked[id]) {
      delete picked[id];
      card.classList.remove("picked");
    } else {
      picked[id] = true;
      card.classList.add("picked");
    }
    updatePicked();
  }

  function bulkRelabel() {
    var labelSelect = document.querySelector("[data-bulk-label]");
    var label = labelSelect ? labelSelect.value : "";
    var ids = Object.keys(picked);
    if (!canReview || !label || ids.length === 0) {
      return;
    }
    var reason = reasonText();
    var summary = { changed: 0, refused: 0 };
    enqueue(function () {
      var chain = Promise.resolve();
      ids.forEach(function (id) {
        var card = cardById(id);
        chain = chain.then(function () {
          return relabel(card, label, { reason: reason }).then(function (state) {
            summary[state ? "changed" : "refused"] += 1;
            if (state) {
              togglePick(card);
            }
          });
        });
      });
      return chain.then(function () {
        flash(summary.changed + " relabeled to " + label + (summary.refused ? "; " + summary.refused +
          " refused (changed by someone else meanwhile, still picked)" : "") + ".", summary.refused ? "warn" : "ok");
        changed();
        loadDetail();
      });
    });
  }

  // Enter in the reason field ends it, and finishes "ambiguous" when that is what asked for the reason.
  function onTypingKey(event, target) {
    if (event.key === "Enter" && target.hasAttribute("data-reason")) {
      event.preventDefault();
      target.blur();
      if (target.getAttribute("data-submit") === "ambiguous") {
        target.removeAttribute("data-submit");
        ambiguous();
      }
    }
  }

  function onKey(key) {
    if (/^[0-9]$/.test(key)) {
      var button = toolbar ? toolbar.querySelector('[data-key="' + key + '"]') : null;
      chooseLabel(button ? button.getAttribute("data-label-key") : null);
    } else if (key === "k" || key === "K") {
      keep();
    } else if (key === "a" || key === "A") {
      ambiguous();
    } else if (key === "u" || key === "U") {
      undo();
    } else if (key === " ") {
      var card = cardById(nav.selectedId());
      if (card && canReview) {
        togglePick(card);
      }
    } else {
      return false;
    }
    return true;
  }

  grid.addEventListener("click", function (event) {
    var card = event.target.closest("[data-item]");
    if (!card) {
      return;
    }
    if ((event.ctrlKey || event.metaKey || event.shiftKey) && canReview) {
      togglePick(card);
    } else {
      select(card);
    }
  });

  document.addEventListener("click", function (event) {
    var labelButton = event.target.closest("[data-label-key]");
    var action = event.target.closest("[data-action]");
    var revertButton = event.target.closest("[data-revert-change]");
    if (labelButton) {
      chooseLabel(labelButton.getAttribute("data-label-key"));
    } else if (action) {
      var name = action.getAttribute("data-action");
      if (name === "keep") {
        keep();
      } else if (name === "ambiguous") {
        ambiguous();
      } else if (name === "undo") {
        undo();
      }
    } else if (event.target.closest("[data-apply-any]")) {
      var any = detail.querySelector("[data-any-label]");
      chooseLabel(any ? any.value : null);
    } else if (event.target.closest("[data-bulk-apply]")) {
      bulkRelabel();
    } else if (revertButton) {
      var card = cardById(detail.querySelector("[data-item-detail]").getAttribute("data-image-id"));
      var changeId = revertButton.getAttribute("data-revert-change");
      enqueue(function () {
        return revert(card, changeId).then(function (state) {
          if (state) {
            flash("Change " + changeId + " reverted: image " + state.image_id + " is " + state.label + ".", "ok");
            changed();
            loadDetail();
          }
        });
      });
    }
  });

  var first = cards().filter(function (card) {
    return card.getAttribute("data-status") === "pending";
  })[0] || cards()[0];
  if (first) {
    select(first);
  }
})();
