// The run page's "try the model" box: drop or choose images, POST them to /api/runs/{id}/predict, show the
// top-5 labels of each as bars (or the reason a file was refused). Nothing is stored on the server.
(function () {
  "use strict";
  var zone = document.querySelector("[data-predict-run]");
  if (!zone) { return; }
  var runId = zone.getAttribute("data-predict-run");
  var maxFiles = parseInt(zone.getAttribute("data-predict-max"), 10) || 64;
  var input = zone.querySelector("[data-predict-input]");
  var status = document.querySelector("[data-predict-status]");
  var results = document.querySelector("[data-predict-results]");

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) { node.className = className; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  function showItem(item) {
    var entry = element("li", "prediction");
    entry.appendChild(element("div", "prediction-file", item.filename || "(no name)"));
    if (item.refused) {
      entry.appendChild(element("div", "prediction-refused", "refused: " + item.refused.reason));
      return entry;
    }
    item.top.forEach(function (guess) {
      var row = element("div", "prediction-row");
      row.appendChild(element("span", "prediction-label", guess.label));
      var track = element("span", "prediction-track");
      var bar = element("span", "prediction-bar");
      bar.style.width = (100 * guess.probability).toFixed(1) + "%";
      track.appendChild(bar);
      row.appendChild(track);
      row.appendChild(element("span", "prediction-value", (100 * guess.probability).toFixed(1) + "%"));
      entry.appendChild(row);
    });
    return entry;
  }

  function send(files) {
    if (!files.length) { return; }
    if (files.length > maxFiles) {
      status.textContent = "At most " + maxFiles + " images at a time; you chose " + files.length + ".";
      return;
    }
    var body = new FormData();
    Array.prototype.forEach.call(files, function (file) { body.append("files", file, file.name); });
    status.textContent = "Scoring " + files.length + " image" + (files.length === 1 ? "" : "s") + "…";
    results.textContent = "";
    fetch("/api/runs/" + runId + "/predict", {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "X-CSRF-Token": window.errorbook.csrfToken() },
    }).then(function (response) {
      return response.json().then(function (data) { return { ok: response.ok, data: data }; });
    }).then(function (answer) {
      if (!answer.ok) {
        status.textContent = "Refused: " + (answer.data.detail || "error");
        return;
      }
      answer.data.items.forEach(function (item) { results.appendChild(showItem(item)); });
      status.textContent = "Scored by " + answer.data.runtime + ".";
    }).catch(function () {
      status.textContent = "The request failed; nothing was changed. Try again.";
    });
  }

  zone.addEventListener("dragover", function (event) { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", function () { zone.classList.remove("over"); });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    zone.classList.remove("over");
    send(event.dataTransfer.files);
  });
  input.addEventListener("change", function () { send(input.files); input.value = ""; });
})();
