// Actions on a selection of images (templates/_selection.html): exclude as ambiguous or score again, add to a review
// campaign to be relabelled there, give a category for the chosen run. Each action is one request naming exactly the
// selected ids, applied all or nothing. The map passes its selection (selectionActions); a grid's form
// (data-selection-picks) acts on the ticked cards beside it and is bound again when htmx swaps the grid.
(function () {
  "use strict";
  window.errorbook = window.errorbook || {};

  function post(url, body) {
    return window.errorbook.postJson(url, body).then(function (response) {
      return response.json().then(function (answer) {
        if (!response.ok) {
          throw new Error(answer.detail || answer.message || "HTTP " + response.status);
        }
        return answer;
      });
    });
  }

  // options: ids() -> the selected image ids; runId() -> the chosen run ("" for none); done(what) after a change.
  window.errorbook.selectionActions = function (form, options) {
    var datasetId = form.getAttribute("data-dataset-id");
    var result = form.querySelector("[data-selection-result]");
    var field = function (name) { return form.elements[name] ? form.elements[name].value : ""; };
    form.addEventListener("submit", function (event) { event.preventDefault(); });  // Enter in the reason field

    function run(describe, request) {
      var ids = options.ids();
      if (!ids.length) {
        result.textContent = "Select some images first.";
        return;
      }
      result.textContent = "Working on " + ids.length + "…";
      var sent;
      try {
        sent = request(ids);
      } catch (refused) {
        result.textContent = refused.message;
        return;
      }
      sent.then(function (answer) {
        result.textContent = describe(answer);
        form.setAttribute("data-selection-done", String(Date.now()));
        if (options.done) {
          options.done(answer);
        }
      }).catch(function (error) {
        result.textContent = "Refused: " + error.message;
      });
    }

    function bind(selector, describe, request) {
      var button = form.querySelector(selector);
      if (button) {
        button.addEventListener("click", function () { run(describe, request); });
      }
    }

    bind("[data-selection-exclude]", function (a) {
      return a.changed + " excluded" + (a.unchanged ? ", " + a.unchanged + " already were" : "");
    }, function (ids) {
      return post("/api/datasets/" + datasetId + "/exclusions", { image_ids: ids, excluded: true, reason: field("reason") });
    });
    bind("[data-selection-include]", function (a) {
      return a.changed + " scored again" + (a.unchanged ? ", " + a.unchanged + " already were" : "");
    }, function (ids) {
      return post("/api/datasets/" + datasetId + "/exclusions", { image_ids: ids, excluded: false, reason: "" });
    });
    bind("[data-selection-campaign]", function (a) {
      return a.added + " added to review " + field("review_id") + (a.already ? ", " + a.already + " were in it" : "");
    }, function (ids) {
      return post("/api/reviews/" + field("review_id") + "/items", { image_ids: ids });
    });
    bind("[data-selection-tag]", function (a) {
      return a.tagged + " tagged" + (a.already ? ", " + a.already + " already were" : "");
    }, function (ids) {
      var runId = options.runId ? options.runId() : "";
      if (!runId) {
        throw new Error("Categories belong to a run's examples: choose a run first.");
      }
      return post("/api/runs/" + runId + "/tags/" + field("tag_id") + "/images", { image_ids: ids });
    });
  };

  // A grid's form: the ticked cards of its scope, the run of its scope's run field.
  function bindGrids(root) {
    var forms = root.querySelectorAll("[data-selection-actions][data-selection-picks]");
    Array.prototype.forEach.call(forms, function (form) {
      if (form.getAttribute("data-bound")) {
        return;
      }
      form.setAttribute("data-bound", "1");
      var scope = form.parentNode;  // the grid: the form and its cards
      var picks = function () { return scope.querySelectorAll("[data-pick]"); };
      var count = function () {
        var checked = Array.prototype.filter.call(picks(), function (box) { return box.checked; });
        form.querySelector("[data-selection-count]").textContent = String(checked.length);
        return checked.map(function (box) { return Number(box.value); });
      };
      scope.addEventListener("change", function (event) {
        if (event.target.hasAttribute("data-pick")) {
          count();
        }
      });
      var all = form.querySelector("[data-selection-all]");
      if (all) {
        all.addEventListener("click", function () {
          var boxes = picks();
          var every = Array.prototype.every.call(boxes, function (box) { return box.checked; });
          Array.prototype.forEach.call(boxes, function (box) { box.checked = !every; });
          count();
        });
      }
      count();
      window.errorbook.selectionActions(form, {
        ids: count,
        runId: function () {
          var chosen = document.querySelector(form.getAttribute("data-selection-run") || "[data-none]");
          return chosen ? chosen.value : "";
        },
      });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { bindGrids(document); });
  document.addEventListener("htmx:afterSwap", function (event) { bindGrids(event.target.parentNode || document); });
})();
