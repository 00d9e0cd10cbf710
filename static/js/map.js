// The embedding map (templates/embeddings/map.html): points on a 2-D canvas, coloured by label, subset, right/wrong,
// data-health issue or suspicion; drag pans, the wheel zooms, shift-drag (or "Box select") selects a box and alt-drag
// (or "Lasso select") a lasso, whose images show as a grid with the selection actions (static/js/selection.js).
// Points are written straight into one ImageData (a typed-array pass, in colour order so grey lies below) and put
// on the canvas once per frame: at 100k points a path of rects per colour took hundreds of milliseconds a frame in
// software rendering (bench/map_browser.py). Hover looks points up in a grid of buckets.
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
  var lassoButton = document.querySelector("[data-map-lasso-mode]");
  var context = canvas.getContext("2d");
  var PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
    "#9c755f", "#bab0ac", "#1f77b4", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#17becf"];
  var FIXED = { right: "#59a14f", wrong: "#e15759", train: "#4e79a7", train_dev: "#76b7b2", dev: "#f28e2b", test: "#b07aa1" };
  var NONE = "#c9c9c9";
  var BUCKETS = 128;
  var SUSPICION_STEPS = 32;
  var ISSUE_COLOURS = ["#e15759", "#f28e2b", "#b07aa1", "#9c755f", "#4e79a7", "#edc948", "#59a14f", "#76b7b2",
    "#ff9da7", "#17becf", "#8c564b", "#bab0ac"];

  var points = { ids: new Int32Array(0), xs: new Float32Array(0), ys: new Float32Array(0), labels: [] };
  var colourOf = new Uint16Array(0);  // index into colours per point
  var colours = [NONE];
  var packed = new Uint32Array(1);  // colours as the canvas's RGBA bytes (little-endian words)
  var order = new Uint32Array(0);  // point positions by colour: grey first, so coloured points lie on top
  var isSelected = new Uint8Array(0);
  var frame = null;  // the ImageData drawn into, reused while the canvas keeps its size
  var paints = [];  // the last paint durations (ms), for bench/map_browser.py
  var DARK = 0;  // the selection's ring, packed once the page has loaded (pack needs a canvas)
  var buckets = [];
  var view = { scale: 1, x: 0, y: 0 };
  var drag = null;
  var mode = "pan";  // pan, box or lasso (the toolbar's buttons; shift-drag boxes, alt-drag lassoes at any time)
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

  function pack(colour) {
    var probe = document.createElement("canvas").getContext("2d");
    probe.fillStyle = colour;
    probe.fillRect(0, 0, 1, 1);
    var rgba = probe.getImageData(0, 0, 1, 1).data;
    return ((255 << 24) | (rgba[2] << 16) | (rgba[1] << 8) | rgba[0]) >>> 0;
  }

  // A size² square of one colour at (x0, y0), clipped to the frame; plain index writes (a fill() per row costs
  // more than the row itself at these sizes).
  function stamp(pixels, width, height, x0, y0, size, colour) {
    var xa = Math.max(0, x0);
    var xb = Math.min(width, x0 + size);
    var yb = Math.min(height, y0 + size);
    for (var y = Math.max(0, y0); y < yb; y++) {
      var row = y * width;
      for (var x = xa; x < xb; x++) {
        pixels[row + x] = colour;
      }
    }
  }

  function paint() {
    var started = performance.now();
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.width;
    var height = canvas.height;
    if (!frame || frame.width !== width || frame.height !== height) {
      frame = context.createImageData(width, height);
    }
    var pixels = new Uint32Array(frame.data.buffer);
    pixels.fill(0);
    var half = Math.max(1, Math.round(Math.max(2, Math.min(6, 2 * Math.sqrt(view.scale))) * ratio / 2));
    var size = 2 * half + 1;
    var s = side() * view.scale * ratio;
    var left = ((canvas.clientWidth - side()) / 2 + view.x) * ratio - half + 0.5;
    var top = ((canvas.clientHeight - side()) / 2 + view.y) * ratio - half + 0.5;
    var xs = points.xs;
    var ys = points.ys;
    var xmax = width - size;
    var ymax = height - size;
    for (var k = 0; k < order.length; k++) {
      var i = order[k];
      var x0 = Math.floor(left + xs[i] * s);
      var y0 = Math.floor(top + ys[i] * s);
      if (x0 <= -size - 1 || y0 <= -size - 1 || x0 > width || y0 > height) {
        continue;  // off screen
      }
      var colour = packed[colourOf[i]];
      if (isSelected[i]) {
        stamp(pixels, width, height, x0 - 1, y0 - 1, size + 2, DARK);
      }
      if (x0 < 0 || y0 < 0 || x0 > xmax || y0 > ymax) {
        stamp(pixels, width, height, x0, y0, size, colour);
        continue;
      }
      for (var row = y0 * width + x0, r = 0; r < size; r++, row += width) {
        for (var q = 0; q < size; q++) {
          pixels[row + q] = colour;
        }
      }
    }
    context.putImageData(frame, 0, 0);
    if (drag && drag.selecting === "box") {
      context.strokeStyle = "#333";
      context.setLineDash([4, 3]);
      context.strokeRect(drag.x0, drag.y0, drag.x1 - drag.x0, drag.y1 - drag.y0);
      context.setLineDash([]);
    } else if (drag && drag.selecting === "lasso" && drag.path.length > 1) {
      context.strokeStyle = "#333";
      context.setLineDash([4, 3]);
      context.beginPath();
      context.moveTo(drag.path[0][0], drag.path[0][1]);
      for (var p = 1; p < drag.path.length; p++) {
        context.lineTo(drag.path[p][0], drag.path[p][1]);
      }
      context.closePath();
      context.stroke();
      context.setLineDash([]);
    }
    paints.push(performance.now() - started);
    if (paints.length > 500) {
      paints.shift();
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
  function legendItem(text, background) {
    var item = document.createElement("li");
    var swatch = document.createElement("i");
    swatch.style.background = background;
    item.appendChild(swatch);
    item.appendChild(document.createTextNode(text));
    legend.appendChild(item);
    return item;
  }

  function suspicionColour(t) {
    return "rgb(" + Math.round(60 + 190 * t) + "," + Math.round(110 - 60 * t) + "," + Math.round(200 - 160 * t) + ")";
  }

  function applyColours(by, values) {
    valueOf = values;
    colours = [NONE];
    var entries = [];
    var slots = {};
    colourOf = new Uint16Array(points.ids.length);
    if (by === "suspicion") {
      for (var step = 0; step < SUSPICION_STEPS; step++) {
        colours.push(suspicionColour(step / (SUSPICION_STEPS - 1)));
      }
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
        var palette = by === "issue" ? ISSUE_COLOURS : PALETTE;
        colours.push(FIXED[value] && by !== "label" && by !== "issue" ? FIXED[value]
          : palette[(colours.length - 1) % palette.length]);
        entries.push([String(value), colours[slots[value]]]);
      }
      colourOf[i] = slots[value];
    }
    packed = new Uint32Array(colours.map(pack));
    DARK = DARK || pack("#111");
    sortByColour();
    legend.textContent = "";
    if (by === "suspicion") {
      // A continuous scale: one bar from low to high.
      var stops = [0, 0.25, 0.5, 0.75, 1].map(suspicionColour).join(", ");
      legendItem("suspicion 0", "linear-gradient(90deg, " + stops + ")").className = "map-scale";
      legend.lastChild.appendChild(document.createTextNode(" … 1"));
    }
    entries.sort(function (a, b) { return a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0; });
    entries.forEach(function (entry) { legendItem(entry[0].replace(/_/g, " "), entry[1]); });
    if (colours.length > 1 || by === "issue") {
      legendItem(by === "issue" ? "none" : "no value", NONE);
    }
    draw();
  }

  // Points in colour order (a counting sort), so the one pass draws grey first and coloured points on top.
  function sortByColour() {
    var counts = new Uint32Array(colours.length + 1);
    for (var i = 0; i < colourOf.length; i++) {
      counts[colourOf[i] + 1] += 1;
    }
    for (var c = 1; c < counts.length; c++) {
      counts[c] += counts[c - 1];
    }
    order = new Uint32Array(colourOf.length);
    for (var j = 0; j < colourOf.length; j++) {
      order[counts[colourOf[j]]++] = j;
    }
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
        colourOf = new Uint16Array(count);  // grey until the colours come
        sortByColour();
        setSelected([]);
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

  // ---- selection: a box or a lasso (a polygon in canvas pixels), tested in world coordinates
  function setSelected(positions) {
    selected = positions;
    isSelected = new Uint8Array(points.ids.length);
    for (var i = 0; i < selected.length; i++) {
      isSelected[selected[i]] = 1;
    }
    showSelection();
  }

  function select(x0, y0, x1, y1) {
    var a = toWorld(Math.min(x0, x1), Math.min(y0, y1));
    var b = toWorld(Math.max(x0, x1), Math.max(y0, y1));
    var found = [];
    for (var i = 0; i < points.ids.length; i++) {
      if (points.xs[i] >= a[0] && points.xs[i] <= b[0] && points.ys[i] >= a[1] && points.ys[i] <= b[1]) {
        found.push(i);
      }
    }
    setSelected(found);
  }

  function inside(polygon, x, y) {
    var within = false;
    for (var i = 0, j = polygon.length - 1; i < polygon.length; j = i++) {
      var xi = polygon[i][0], yi = polygon[i][1], xj = polygon[j][0], yj = polygon[j][1];
      if ((yi > y) !== (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi) {
        within = !within;
      }
    }
    return within;
  }

  function selectLasso(path) {
    var polygon = path.map(function (at) { return toWorld(at[0], at[1]); });
    var low = [Infinity, Infinity];
    var high = [-Infinity, -Infinity];
    polygon.forEach(function (at) {
      low = [Math.min(low[0], at[0]), Math.min(low[1], at[1])];
      high = [Math.max(high[0], at[0]), Math.max(high[1], at[1])];
    });
    var found = [];
    for (var i = 0; i < points.ids.length; i++) {
      var x = points.xs[i];
      var y = points.ys[i];
      if (x >= low[0] && x <= high[0] && y >= low[1] && y <= high[1] && inside(polygon, x, y)) {
        found.push(i);
      }
    }
    setSelected(found);
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

  var actions = selectionCard.querySelector("[data-selection-actions]");
  if (actions) {
    window.errorbook.selectionActions(actions, {
      ids: function () { return selected.map(function (position) { return points.ids[position]; }); },
      runId: function () { return param("run_id"); },
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
    var selecting = event.altKey ? "lasso" : event.shiftKey ? "box" : mode === "pan" ? null : mode;
    drag = { x0: at[0], y0: at[1], x1: at[0], y1: at[1], selecting: selecting, path: [at], vx: view.x, vy: view.y };
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
    var last = drag.path[drag.path.length - 1];
    if (drag.selecting === "lasso" && Math.abs(at[0] - last[0]) + Math.abs(at[1] - last[1]) > 2) {
      drag.path.push(at);
    }
    if (!drag.selecting) {
      view.x = drag.vx + drag.x1 - drag.x0;
      view.y = drag.vy + drag.y1 - drag.y0;
    }
    draw();
  });
  canvas.addEventListener("pointerup", function () {
    if (drag && drag.selecting === "box" && Math.abs(drag.x1 - drag.x0) + Math.abs(drag.y1 - drag.y0) > 4) {
      select(drag.x0, drag.y0, drag.x1, drag.y1);
    } else if (drag && drag.selecting === "lasso" && drag.path.length > 2) {
      selectLasso(drag.path);
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

  function setMode(wanted) {
    mode = mode === wanted ? "pan" : wanted;
    selectButton.setAttribute("aria-pressed", String(mode === "box"));
    lassoButton.setAttribute("aria-pressed", String(mode === "lasso"));
    canvas.classList.toggle("selecting", mode !== "pan");
  }
  selectButton.addEventListener("click", function () { setMode("box"); });
  lassoButton.addEventListener("click", function () { setMode("lasso"); });
  document.querySelector("[data-map-reset]").addEventListener("click", function () {
    view = { scale: 1, x: 0, y: 0 };
    draw();
  });
  document.querySelector("[data-map-clear]").addEventListener("click", function () {
    setSelected([]);
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
    paints: paints,
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
