// The embedding map (templates/embeddings/map.html): points on a 2-D canvas, coloured by label, subset, right/wrong
// or suspicion; drag pans, the wheel zooms, shift-drag (or "Box select") selects a box whose images show as a grid.
// Plain canvas 2-D: 100k rects batched per colour draw in a few milliseconds, and hover uses a grid of buckets.
(function () {
  "use strict";
  var canvas = document.querySelector("[data-map-canvas]");
  if (!canvas) {
    return;
  }
  var datasetId = canvas.getAttribute("data-dataset-id");
  var controls = document.querySelector("[data-map-controls]");
  var statusLine = document.querySelector("[data-map-status]");
  var hover = document.querySelector("[data-map-hover]");
  var legend = document.querySelector("[data-map-legend]");
  var selectionCard = document.querySelector("[data-map-selection]");
  var selectButton = document.querySelector("[data-map-select-mode]");
  var context = canvas.getContext("2d");
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf"];
  var FIXED = { right: "#59a14f", wrong: "#e15759", train: "#4e79a7", train_dev: "#76b7b2", dev: "#f28e2b", test: "#b07aa1" };
  var NONE = "#c9c9c9";
  var BUCKETS = 128;
  var SUSPICION_STEPS = 10;

  var points = { ids: new Int32Array(0), xs: new Float32Array(0), ys: new Float32Array(0), labels: [] };
  var colourOf = new Uint16Array(0);  // index into colours per point
  var colours = [NONE];
  var buckets = [];
  var view = { scale: 1, x: 0, y: 0 };
  var drag = null;
  var selectMode = false;
  var selected = [];

  function param(name) {
    var field = controls.elements[name];
    return field ? field.value : "";
  }

  function setStatus(text) {
    statusLine.textContent = text;
  }

  // ---- geometry: world [0, 1]² to canvas pixels (CSS pixels; the backing store is scaled by devicePixelRatio)
  function side() {
    return Math.min(canvas.clientWidth, canvas.clientHeight) * 0.94;
  }
  function toScreen(x, y) {
    var s = side() * view.scale;
    return [(canvas.clientWidth - side()) / 2 + x * s + view.x, (canvas.clientHeight - side()) / 2 + y * s + view.y];
  }
  function toWorld(px, py) {
    var s = side() * view.scale;
    return [(px - (canvas.clientWidth - side()) / 2 - view.x) / s, (py - (canvas.clientHeight - side()) / 2 - view.y) / s];
  }

  function resize() {
    var ratio = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(canvas.clientWidth * ratio));
    canvas.height = Math.max(1, Math.round(canvas.clientHeight * ratio));
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    draw();
  }

  var pending = false;
  function draw() {
    if (pending) {
      return;
    }
    pending = true;
    window.requestAnimationFrame(function () {
      pending = false;
      paint();
    });
  }

  function paint() {
    context.clearRect(0, 0, canvas.clientWidth, canvas.clientHeight);
    var size = Math.max(2, Math.min(6, 2 * Math.sqrt(view.scale)));
    var half = size / 2;
    var s = side() * view.scale;
    var left = (canvas.clientWidth - side()) / 2 + view.x;
    var top = (canvas.clientHeight - side()) / 2 + view.y;
    var count = points.ids.length;
    // Grey (no value) first, so coloured points lie on top.
    for (var c = 0; c < colours.length; c++) {
      context.fillStyle = colours[c];
      context.beginPath();
      for (var i = 0; i < count; i++) {
        if (colourOf[i] === c) {
          context.rect(left + points.xs[i] * s - half, top + points.ys[i] * s - half, size, size);
        }
      }
      context.fill();
    }
    if (selected.length) {
      context.strokeStyle = "#111";
      context.lineWidth = 1;
      context.beginPath();
      for (var j = 0; j < selected.length; j++) {
        var p = selected[j];
        context.rect(left + points.xs[p] * s - half - 1, top + points.ys[p] * s - half - 1, size + 2, size + 2);
      }
      context.stroke();
    }
    if (drag && drag.selecting) {
      context.strokeStyle = "#333";
      context.setLineDash([4, 3]);
      context.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0);
      context.setLineDash([]);
    }
  }

  // ---- hover: points bucketed on a BUCKETS² grid of the world square
  function index() {
    buckets = new Array(BUCKETS * BUCKETS);
    for (var i = 0; i < points.ids.length; i++) {
      var key = cell(points.xs[i]) * BUCKETS + cell(points.ys[i]);
      (buckets[key] || (buckets[key] = [])).push(i);
    }
  }
  function cell(value) {
    return Math.max(0, Math.min(BUCKETS - 1, Math.floor(value * BUCKETS)));
  }
  function nearest(px, py) {
    var radius = 8 / (side() * view.scale);  // 8 CSS pixels, in world units
    var world = toWorld(px, py);
    var best = -1;
    var bestDistance = radius * radius;
    for (var bx = cell(world[0] - radius); bx <= cell(world[0] + radius); bx++) {
      for (var by = cell(world[1] - radius); by <= cell(world[1] + radius); by++) {
        var found = buckets[bx * BUCKETS + by] || [];
        for (var k = 0; k < found.length; k++) {
          var dx = points.xs[found[k]] - world[0];
          var dy = points.ys[found[k]] - world[1];
          if (dx * dx + dy * dy <= bestDistance) {
            bestDistance = dx * dx + dy * dy;
            best = found[k];
          }
        }
      }
    }
    return best;
  }

  var valueOf = {};
  function showHover(px, py) {
    var found = nearest(px, py);
    if (found < 0) {
      hover.hidden = true;
      return;
    }
    var id = points.ids[found];
    var image = hover.querySelector("img");
    var wanted = "/images/" + id + "/thumb";
    if (image.getAttribute("src") !== wanted) {
      image.setAttribute("src", wanted);
    }
    var value = valueOf[id];
    hover.querySelector("span").textContent = "#" + id + " · " + points.labels[found] +
      (value !== undefined && param("by") !== "label" ? " · " + value : "");
    hover.setAttribute("data-image-id", String(id));
    hover.hidden = false;
    hover.style.left = Math.min(px + 12, canvas.clientWidth - 140) + "px";
    hover.style.top = Math.min(py + 12, canvas.clientHeight - 150) + "px";
  }

  // ---- colours
  function applyColours(by, values) {
    valueOf = values;
    colours = [NONE];
    var entries = [];
    var slots = {};
    colourOf = new Uint16Array(points.ids.length);
    if (by === "suspicion") {
      for (var step = 0; step < SUSPICION_STEPS; step++) {
        var t = step / (SUSPICION_STEPS - 1);
        colours.push("rgb(" + Math.round(60 + 190 * t) + "," + Math.round(110 - 60 * t) + "," + Math.round(200 - 160 * t) + ")");
      }
      entries = [["low suspicion", colours[1]], ["high", colours[SUSPICION_STEPS]]];
    }
    for (var i = 0; i < points.ids.length; i++) {
      var value = by === "label" ? points.labels[i] : values[points.ids[i]];
      if (value === undefined || value === null || value === "") {
        continue;
      }
      if (by === "suspicion") {
        colourOf[i] = 1 + Math.min(SUSPICION_STEPS - 1, Math.floor(Number(value) * SUSPICION_STEPS));
        continue;
      }
      if (!(value in slots)) {
        slots[value] = colours.length;
        colours.push(FIXED[value] && by !== "label" ? FIXED[value] : PALETTE[(colours.length - 1) % PALETTE.length]);
        entries.push([String(value), colours[slots[value]]]);
      }
      colourOf[i] = slots[value];
    }
    legend.textContent = "";
    entries.forEach(function (entry) {
      var item = document.createElement("li");
      var swatch = document.createElement("i");
      swatch.style.background = entry[1];
      item.appendChild(swatch);
      item.appendChild(document.createTextNode(entry[0]));
      legend.appendChild(item);
    });
    if (colours.length > 1) {
      var none = document.createElement("li");
      var grey = document.createElement("i");
      grey.style.background = NONE;
      none.appendChild(grey);
      none.appendChild(document.createTextNode("no value"));
      legend.appendChild(none);
    }
    draw();
  }

  function fetchValues(query) {
    if (query.indexOf("=") < 0) {
      query = "by=" + encodeURIComponent(query);
    }
    return fetch("/api/datasets/" + datasetId + "/map/colours?" + query, { credentials: "same-origin" })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) {
            throw new Error(body.detail || body.message || "HTTP " + response.status);
          }
          return body;
        });
      });
  }

  function loadColours() {
    var by = param("by");
    if (by === "label") {
      applyColours("label", {});
      return Promise.resolve();
    }
    var query = "by=" + encodeURIComponent(by);
    if (by === "subset" && param("split_id")) {
      query += "&split_id=" + encodeURIComponent(param("split_id"));
    }
    if (by !== "subset" && param("run_id")) {
      query += "&run_id=" + encodeURIComponent(param("run_id"));
    }
    return fetchValues(query)
      .then(function (body) {
        setStatus(points.ids.length.toLocaleString() + " images · colour: " + by + " from " + body.source);
        applyColours(by, body.values);
      })
      .catch(function (error) {
        setStatus("Could not colour the map: " + error.message);
      });
  }

  // ---- loading
  function load() {
    var backbone = param("backbone");
    setStatus("Loading the map…");
    var url = "/api/datasets/" + datasetId + "/map" + (backbone ? "?backbone=" + encodeURIComponent(backbone) : "");
    return fetch(url, { credentials: "same-origin" }).then(function (response) {
      return response.json().then(function (body) {
        if (response.status === 409) {
          missing(body);
          return;
        }
        if (!response.ok) {
          setStatus("The map failed to load: " + (body.detail || response.status));
          return;
        }
        var count = body.points.length;
        points = { ids: new Int32Array(count), xs: new Float32Array(count), ys: new Float32Array(count), labels: new Array(count) };
        for (var i = 0; i < count; i++) {
          var p = body.points[i];
          points.ids[i] = p.image_id;
          points.xs[i] = p.x;
          points.ys[i] = p.y;
          points.labels[i] = "";
        }
        index();
        setStatus(count.toLocaleString() + " images (" + body.backbone + ")" +
          (body.stale ? " · newer images are not on the map yet: run the embeddings job again" : ""));
        // Labels change with every relabel, the points only when the job lays them out: fetched apart.
        return fetchValues("label").then(function (body) {
          for (var j = 0; j < count; j++) {
            var label = body.values[points.ids[j]];
            points.labels[j] = label === undefined ? "" : label;
          }
          canvas.setAttribute("data-points", String(count));
          return loadColours();
        });
      });
    });
  }

  function missing(body) {
    var box = document.querySelector("[data-map-missing]");
    box.hidden = false;
    box.querySelector("[data-map-missing-text]").textContent = body.detail || body.message || "No embeddings yet.";
    setStatus("No map yet.");
    var start = box.querySelector("[data-map-start]");
    if (start) {
      start.onclick = function () {
        start.disabled = true;
        fetch(body.start || "/api/datasets/" + datasetId + "/embeddings", {
          method: "POST",
          credentials: "same-origin",
          headers: { "Content-Type": "application/json", "X-CSRF-Token": window.errorbook.csrfToken() },
          body: JSON.stringify({ backbone: body.backbone || param("backbone") || undefined }),
        }).then(function (response) {
          return response.json().then(function (started) {
            setStatus(response.ok ? "Embeddings job " + started.job_id + " started; reload this page once it has finished (see Jobs)."
              : "Could not start the job: " + (started.detail || response.status));
          });
        });
      };
    }
  }

  // ---- selection
  function select(x0, y0, x1, y1) {
    var a = toWorld(Math.min(x0, x1), Math.min(y0, y1));
    var b = toWorld(Math.max(x0, x1), Math.max(y0, y1));
    selected = [];
    for (var i = 0; i < points.ids.length; i++) {
      if (points.xs[i] >= a[0] && points.xs[i] <= b[0] && points.ys[i] >= a[1] && points.ys[i] <= b[1]) {
        selected.push(i);
      }
    }
    showSelection();
  }

  var SHOWN = 200;
  function showSelection() {
    var grid = selectionCard.querySelector("[data-map-grid]");
    grid.textContent = "";
    selectionCard.hidden = selected.length === 0;
    selectionCard.querySelector("[data-map-selected-count]").textContent = selected.length.toLocaleString();
    selectionCard.querySelector("[data-map-selection-note]").textContent = selected.length > SHOWN
      ? "Showing the first " + SHOWN + "; the actions apply to all " + selected.length.toLocaleString() + "." : "";
    selected.slice(0, SHOWN).forEach(function (position) {
      var id = points.ids[position];
      var link = document.createElement("a");
      link.className = "thumb";
      link.href = "/images/" + id;
      link.setAttribute("data-image-id", String(id));
      var image = document.createElement("img");
      image.src = "/images/" + id + "/thumb";
      image.alt = "image " + id;
      image.loading = "lazy";
      image.width = 150;
      image.height = 150;
      var meta = document.createElement("span");
      meta.className = "meta";
      var label = document.createElement("span");
      label.textContent = points.labels[position];
      meta.appendChild(label);
      var value = valueOf[id];
      if (value !== undefined && param("by") !== "label") {
        var extra = document.createElement("span");
        extra.className = "muted";
        extra.textContent = String(value);
        meta.appendChild(extra);
      }
      link.appendChild(image);
      link.appendChild(meta);
      grid.appendChild(link);
    });
    draw();
  }

  // The review grid's per-image actions, one image after another: each needs the label version it changes.
  function eachSelected(action, done) {
    var ids = selected.map(function (position) { return points.ids[position]; });
    var changed = 0;
    var refused = [];
    var chain = Promise.resolve();
    ids.forEach(function (id) {
      chain = chain.then(function () {
        return fetch("/api/images/" + id + "/label", { credentials: "same-origin" })
          .then(function (response) { return response.json(); })
          .then(function (state) { return action(id, state.label_version); })
          .then(function (response) {
            return response.json().then(function (body) {
              if (response.ok) {
                changed += 1;
              } else {
                refused.push("#" + id + ": " + (body.detail || response.status));
              }
            });
          });
      });
    });
    chain.then(function () { done(changed, refused); });
  }
  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": window.errorbook.csrfToken() },
      body: JSON.stringify(body),
    });
  }
  var actions = document.querySelector("[data-map-actions]");
  if (actions) {
    var result = actions.querySelector("[data-map-action-result]");
    var report = function (verb) {
      return function (changed, refused) {
        result.textContent = changed + " " + verb + (refused.length ? "; refused: " + refused.slice(0, 3).join("; ") : "");
        load();
      };
    };
    actions.addEventListener("submit", function (event) {
      event.preventDefault();
      var label = actions.elements.label.value.trim();
      eachSelected(function (id, version) {
        return post("/api/images/" + id + "/label", { label: label, expected_version: version, reason: "map selection" });
      }, report("relabelled"));
    });
    actions.querySelector("[data-map-exclude]").addEventListener("click", function () {
      eachSelected(function (id, version) {
        return post("/api/images/" + id + "/exclude", { reason: "ambiguous (map selection)", expected_version: version });
      }, report("excluded"));
    });
  }

  // ---- pointer
  function local(event) {
    var box = canvas.getBoundingClientRect();
    return [event.clientX - box.left, event.clientY - box.top];
  }
  canvas.addEventListener("pointerdown", function (event) {
    var at = local(event);
    canvas.setPointerCapture(event.pointerId);
    drag = { x0: at[0], y0: at[1], x1: at[0], y1: at[1], selecting: selectMode || event.shiftKey, vx: view.x, vy: view.y };
    hover.hidden = true;
  });
  canvas.addEventListener("pointermove", function (event) {
    var at = local(event);
    if (!drag) {
      showHover(at[0], at[1]);
      return;
    }
    drag.x1 = at[0];
    drag.y1 = at[1];
    if (!drag.selecting) {
      view.x = drag.vx + drag.x1 - drag.x0;
      view.y = drag.vy + drag.y1 - drag.y0;
    }
    draw();
  });
  canvas.addEventListener("pointerup", function () {
    if (drag && drag.selecting && Math.abs(drag.x1 - drag.x0) + Math.abs(drag.y1 - drag.y0) > 4) {
      select(drag.x0, drag.y0, drag.x1, drag.y1);
    }
    drag = null;
    draw();
  });
  canvas.addEventListener("pointerleave", function () {
    hover.hidden = true;
  });
  canvas.addEventListener("wheel", function (event) {
    event.preventDefault();
    var at = local(event);
    var before = toWorld(at[0], at[1]);
    view.scale = Math.max(0.5, Math.min(200, view.scale * Math.exp(-event.deltaY * 0.0015)));
    var after = toScreen(before[0], before[1]);
    view.x += at[0] - after[0];  // keep the point under the cursor where it was
    view.y += at[1] - after[1];
    draw();
  }, { passive: false });

  selectButton.addEventListener("click", function () {
    selectMode = !selectMode;
    selectButton.setAttribute("aria-pressed", String(selectMode));
    canvas.classList.toggle("selecting", selectMode);
  });
  document.querySelector("[data-map-reset]").addEventListener("click", function () {
    view = { scale: 1, x: 0, y: 0 };
    draw();
  });
  document.querySelector("[data-map-clear]").addEventListener("click", function () {
    selected = [];
    showSelection();
  });
  controls.addEventListener("change", function (event) {
    if (event.target.name === "backbone") {
      load();
    } else {
      loadColours();
    }
  });
  controls.addEventListener("submit", function (event) {
    event.preventDefault();
  });

  // Where an image sits on the canvas (client pixels), for tests and the keyboard-less: {x, y} or null.
  window.errorbookMap = {
    screenOf: function (imageId) {
      for (var i = 0; i < points.ids.length; i++) {
        if (points.ids[i] === imageId) {
          var box = canvas.getBoundingClientRect();
          var at = toScreen(points.xs[i], points.ys[i]);
          return { x: box.left + at[0], y: box.top + at[1] };
        }
      }
      return null;
    },
  };
  window.addEventListener("resize", resize);
  resize();
  load();
})();
