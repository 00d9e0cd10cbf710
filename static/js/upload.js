// The upload page: choose or drop files, folders and zips; send them in resumable batches; show the report.
//
// Every file is keyed by its sha256. Before sending, the page asks the server which of a batch it already has
// (this upload, an earlier attempt, or any earlier upload), so a dropped connection or a reload resends
// nothing that arrived. Small files go in multipart batches, a few batches at a time; big files (zips) go in
// chunks appended in order, and resume at the byte the server reports. Files are read one at a time to hash
// them and are sent straight from disk, so the tab's memory does not grow with the number or size of files.
(function () {
  "use strict";
  var root = document.querySelector("[data-uploader]");
  if (!root) return;

  var BATCH_FILES = 50;
  var BATCH_BYTES = 8 * 1024 * 1024;
  var PARALLEL_BATCHES = 3;
  var HASH_SLICE = 4 * 1024 * 1024;
  var MAX_ATTEMPTS = 10;
  var datasetId = root.getAttribute("data-dataset-id");
  var chunkBytes = Number(root.getAttribute("data-chunk-bytes"));
  var form = root.querySelector("[data-upload-form]");
  var startButton = root.querySelector("[data-start]");
  var clearButton = root.querySelector("[data-clear]");
  var selectionText = root.querySelector("[data-selection]");
  var progressBox = root.querySelector("[data-progress]");
  var progressBar = root.querySelector("[data-bytes-progress]");
  var phaseText = root.querySelector("[data-phase]");
  var progressText = root.querySelector("[data-progress-text]");
  var progressDetail = root.querySelector("[data-progress-detail]");
  var dropzone = root.querySelector("[data-dropzone]");
  var chosen = [];
  var chosenPaths = new Set();
  var busy = false;

  // ---- SHA-256: crypto.subtle for small files; an incremental one for big files (subtle cannot stream) and
  // for pages served over plain http (no crypto.subtle outside a secure context).
  var K = new Int32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);

  function Sha256() {
    this.state = new Int32Array([
      0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
    ]);
    this.block = new Uint8Array(64);
    this.used = 0;
    this.bytes = 0;
    this.w = new Int32Array(64);
  }

  Sha256.prototype.compress = function (data, offset) {
    var w = this.w, s = this.state, i, j, x, y;
    for (i = 0; i < 16; i++) {
      j = offset + i * 4;
      w[i] = (data[j] << 24) | (data[j + 1] << 16) | (data[j + 2] << 8) | data[j + 3];
    }
    for (i = 16; i < 64; i++) {
      x = w[i - 15];
      y = w[i - 2];
      w[i] = (w[i - 16] + (((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3)) + w[i - 7] +
        (((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10))) | 0;
    }
    var a = s[0], b = s[1], c = s[2], d = s[3], e = s[4], f = s[5], g = s[6], h = s[7], t1, t2;
    for (i = 0; i < 64; i++) {
      t1 = (h + (((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7))) +
        ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
      t2 = ((((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10))) +
        ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    s[0] = (s[0] + a) | 0; s[1] = (s[1] + b) | 0; s[2] = (s[2] + c) | 0; s[3] = (s[3] + d) | 0;
    s[4] = (s[4] + e) | 0; s[5] = (s[5] + f) | 0; s[6] = (s[6] + g) | 0; s[7] = (s[7] + h) | 0;
  };

  Sha256.prototype.update = function (data) {
    var i = 0, n = data.length;
    this.bytes += n;
    if (this.used > 0) {
      i = Math.min(64 - this.used, n);
      this.block.set(data.subarray(0, i), this.used);
      this.used += i;
      if (this.used < 64) return;
      this.compress(this.block, 0);
      this.used = 0;
    }
    for (; i + 64 <= n; i += 64) this.compress(data, i);
    if (i < n) {
      this.block.set(data.subarray(i), 0);
      this.used = n - i;
    }
  };

  Sha256.prototype.hex = function () {
    var high = Math.floor(this.bytes / 0x20000000), low = (this.bytes * 8) >>> 0;
    var pad = new Uint8Array((this.used < 56 ? 64 : 128) - this.used);
    var end = pad.length - 8;
    pad[0] = 0x80;
    pad[end] = high >>> 24; pad[end + 1] = (high >>> 16) & 255; pad[end + 2] = (high >>> 8) & 255; pad[end + 3] = high & 255;
    pad[end + 4] = low >>> 24; pad[end + 5] = (low >>> 16) & 255; pad[end + 6] = (low >>> 8) & 255; pad[end + 7] = low & 255;
    this.update(pad);
    var out = "";
    for (var i = 0; i < 8; i++) out += ("00000000" + (this.state[i] >>> 0).toString(16)).slice(-8);
    return out;
  };

  function hexOf(buffer) {
    var bytes = new Uint8Array(buffer), out = "";
    for (var i = 0; i < bytes.length; i++) out += (bytes[i] < 16 ? "0" : "") + bytes[i].toString(16);
    return out;
  }

  async function hashFile(file, onProgress) {
    if (file.size < chunkBytes && window.crypto && window.crypto.subtle) {
      return hexOf(await window.crypto.subtle.digest("SHA-256", await file.arrayBuffer()));
    }
    var hash = new Sha256();
    for (var offset = 0; offset < file.size; offset += HASH_SLICE) {
      hash.update(new Uint8Array(await file.slice(offset, offset + HASH_SLICE).arrayBuffer()));
      if (onProgress) onProgress(Math.min(offset + HASH_SLICE, file.size));
    }
    return hash.hex();
  }

  window.errorbook = window.errorbook || {};
  window.errorbook.sha256Hex = function (bytes) {
    var hash = new Sha256();
    hash.update(bytes);
    return hash.hex();
  };

  // ---- choosing files --------------------------------------------------------------------------------
  function ignored(path) {
    return path.split("/").some(function (part) {
      var lower = part.toLowerCase();
      return part.charAt(0) === "." || lower === "__macosx" || lower === "thumbs.db" || lower === "desktop.ini";
    });
  }

  function add(file, path) {
    path = (path || file.name).replace(/^\/+/, "");
    if (ignored(path) || chosenPaths.has(path)) return;
    chosenPaths.add(path);
    chosen.push({ file: file, path: path });
  }

  function describe() {
    var bytes = 0, zips = 0;
    chosen.forEach(function (item) {
      bytes += item.file.size;
      if (/\.zip$/i.test(item.path)) zips += 1;
    });
    selectionText.textContent = chosen.length
      ? chosen.length.toLocaleString() + " files chosen (" + formatBytes(bytes) + (zips ? ", " + zips + " zip" + (zips > 1 ? "s" : "") : "") + ")."
      : "Nothing chosen yet.";
    var unlabelled = everyFileUnlabelled();
    noLabelWarning.hidden = !unlabelled;
    startButton.disabled = busy || chosen.length === 0 || unlabelled;
    clearButton.disabled = busy || chosen.length === 0;
  }

  // Loose files (no class folder, not in a zip) with no typed label and no labels CSV would all be rejected.
  function everyFileUnlabelled() {
    var unlabeledBox = root.querySelector("[data-unlabeled]");
    if (unlabeledBox && unlabeledBox.checked) {
      return false; // stored without a label, on purpose
    }
    if (!chosen.length || form.elements.label.value.trim() || root.querySelector("[data-labels-csv]").files.length) {
      return false;
    }
    return chosen.every(function (item) { return item.path.indexOf("/") < 0 && !/\.zip$/i.test(item.path); });
  }
  var noLabelWarning = root.querySelector("[data-no-label-warning]");
  form.elements.label.addEventListener("input", function () { describe(); });
  root.querySelector("[data-labels-csv]").addEventListener("change", function () { describe(); });
  if (root.querySelector("[data-unlabeled]")) {
    root.querySelector("[data-unlabeled]").addEventListener("change", function () { describe(); });
  }

  function formatBytes(bytes) {
    if (bytes < 1024) return bytes + " B";
    var units = ["KB", "MB", "GB", "TB"], value = bytes, unit = -1;
    do { value /= 1024; unit += 1; } while (value >= 1024 && unit < units.length - 1);
    return value.toFixed(value < 10 ? 1 : 0) + " " + units[unit];
  }

  root.querySelector("[data-pick-files]").addEventListener("change", function (event) {
    Array.prototype.forEach.call(event.target.files, function (file) { add(file, file.name); });
    event.target.value = "";
    describe();
  });
  root.querySelector("[data-pick-folder]").addEventListener("change", function (event) {
    Array.prototype.forEach.call(event.target.files, function (file) { add(file, file.webkitRelativePath || file.name); });
    event.target.value = "";
    describe();
  });
  clearButton.addEventListener("click", function () {
    chosen = [];
    chosenPaths = new Set();
    describe();
  });

  function readEntries(reader) {
    return new Promise(function (resolve, reject) { reader.readEntries(resolve, reject); });
  }

  async function walk(entry) {
    if (entry.isFile) {
      var file = await new Promise(function (resolve, reject) { entry.file(resolve, reject); });
      add(file, entry.fullPath);
      return;
    }
    var reader = entry.createReader(), batch;
    while ((batch = await readEntries(reader)).length) {  // a directory reader hands out 100 entries at a time
      for (var i = 0; i < batch.length; i++) await walk(batch[i]);
    }
  }

  dropzone.addEventListener("dragover", function (event) {
    event.preventDefault();
    dropzone.classList.add("over");
  });
  dropzone.addEventListener("dragleave", function () { dropzone.classList.remove("over"); });
  dropzone.addEventListener("drop", async function (event) {
    event.preventDefault();
    dropzone.classList.remove("over");
    if (busy) return;
    var entries = Array.prototype.map.call(event.dataTransfer.items, function (item) {
      return item.webkitGetAsEntry ? item.webkitGetAsEntry() : null;
    });
    var files = Array.prototype.slice.call(event.dataTransfer.files);
    selectionText.textContent = "Reading the dropped folders…";
    for (var i = 0; i < entries.length; i++) {
      if (entries[i]) await walk(entries[i]);
      else if (files[i]) add(files[i], files[i].name);
    }
    describe();
  });

  // ---- talking to the server -------------------------------------------------------------------------
  function showError(message) {
    var flash = document.getElementById("flash");
    flash.textContent = "";
    var div = document.createElement("div");
    div.className = "flash error";
    div.setAttribute("role", "alert");
    div.textContent = message;
    flash.appendChild(div);
  }

  function request(method, url, body, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open(method, url);
      xhr.setRequestHeader("X-CSRF-Token", window.errorbook.csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      if (body && !(body instanceof FormData) && !(body instanceof Blob)) {
        xhr.setRequestHeader("Content-Type", "application/json");
        body = JSON.stringify(body);
      } else if (body instanceof Blob) {
        xhr.setRequestHeader("Content-Type", "application/octet-stream");
      }
      if (onProgress) xhr.upload.onprogress = function (event) { onProgress(event.loaded); };
      xhr.onload = function () {
        var data = null;
        try { data = JSON.parse(xhr.responseText); } catch (ignore) { data = null; }
        resolve({ status: xhr.status, data: data });
      };
      xhr.onerror = function () { reject(new Error("network")); };
      xhr.ontimeout = xhr.onerror;
      xhr.send(body || null);
    });
  }

  function sleep(ms) { return new Promise(function (resolve) { setTimeout(resolve, ms); }); }

  // Network failures and 5xx are retried with growing pauses (a dropped connection, a restarting server);
  // 4xx answers are the server refusing something and go back to the caller.
  async function withRetries(what, attempt) {
    for (var tries = 1; ; tries++) {
      var response = null;
      try { response = await attempt(); } catch (error) { response = null; }
      if (response && response.status > 0 && response.status < 500 && response.status !== 429) return response;
      if (tries >= MAX_ATTEMPTS) throw new Error(what + " failed " + tries + " times; check the connection and choose the same files again to resume");
      var pause = Math.min(30000, 1000 * Math.pow(2, tries - 1));
      progressDetail.textContent = "Connection problem while " + what + "; trying again in " + Math.round(pause / 1000) + " s…";
      await sleep(pause);
      progressDetail.textContent = "";
    }
  }

  function refused(response) {
    var detail = response.data && (response.data.detail || response.data.error);
    return new Error(typeof detail === "string" ? detail : "the server refused the request (" + response.status + ")");
  }

  // ---- progress --------------------------------------------------------------------------------------
  var totals = { bytes: 0, files: 0 }, done = { bytes: 0, files: 0 }, inFlight = new Map();

  function render() {
    var sending = 0;
    inFlight.forEach(function (value) { sending += value; });
    var fraction = totals.bytes ? Math.min(1, (done.bytes + sending) / totals.bytes) : 1;
    progressBar.value = fraction;
    progressText.textContent = done.files.toLocaleString() + " of " + totals.files.toLocaleString() + " files, " +
      formatBytes(done.bytes + sending) + " of " + formatBytes(totals.bytes) + " (" + Math.floor(fraction * 100) + "%)";
  }

  function finished(items) {
    items.forEach(function (item) { done.bytes += item.file.size; done.files += 1; });
    render();
  }

  // ---- sending ---------------------------------------------------------------------------------------
  async function have(uploadId, items) {
    var response = await withRetries("checking what arrived", function () {
      return request("POST", "/api/uploads/" + uploadId + "/have", {
        files: items.map(function (item) { return { name: item.path, sha256: item.sha256, size: item.file.size }; }),
      });
    });
    if (response.status !== 200) throw refused(response);
    return response.data;
  }

  async function sendBatch(uploadId, batch, key) {
    for (var i = 0; i < batch.length; i++) batch[i].sha256 = await hashFile(batch[i].file);
    var answer = await have(uploadId, batch);
    var missing = new Set(answer.missing);
    var toSend = batch.filter(function (item) { return missing.has(item.path); });
    finished(batch.filter(function (item) { return !missing.has(item.path); }));
    if (!toSend.length) return;
    var response = await withRetries("sending files", function () {
      var body = new FormData();
      toSend.forEach(function (item) { body.append("files", item.file, item.path); });
      inFlight.set(key, 0);
      return request("POST", "/api/uploads/" + uploadId + "/files", body, function (loaded) {
        inFlight.set(key, loaded);
        render();
      });
    });
    inFlight.delete(key);
    if (response.status !== 200) throw refused(response);
    finished(toSend);
  }

  async function sendBig(uploadId, item, maxChunk) {
    phaseText.textContent = "Checking " + item.path;
    item.sha256 = await hashFile(item.file, function (hashed) {
      progressDetail.textContent = "Reading " + item.path + ": " + Math.floor((100 * hashed) / item.file.size) + "%";
    });
    progressDetail.textContent = "";
    phaseText.textContent = "Sending";
    var answer = await have(uploadId, [item]);
    if (answer.missing.indexOf(item.path) < 0) {
      finished([item]);
      return;
    }
    var offset = answer.partial[item.path] || 0;
    while (offset < item.file.size) {
      var start = offset;
      var response = await withRetries("sending " + item.path, function () {
        var url = "/api/uploads/" + uploadId + "/chunks?" + new URLSearchParams({
          name: item.path, sha256: item.sha256, size: String(item.file.size), offset: String(start),
        });
        return request("POST", url, item.file.slice(start, start + maxChunk), function (loaded) {
          inFlight.set(item.path, start + loaded);
          render();
        });
      });
      if (response.status === 409 && response.data && typeof response.data.received === "number") {
        offset = response.data.received;  // the server has more (or less) than we thought: continue from there
      } else if (response.status !== 200) {
        inFlight.delete(item.path);
        throw refused(response);
      } else {
        offset = response.data.received;
      }
      inFlight.set(item.path, offset);
      render();
    }
    inFlight.delete(item.path);
    finished([item]);
  }

  function batchesOf(items) {
    var batches = [], current = [], bytes = 0;
    items.forEach(function (item) {
      if (current.length && (current.length >= BATCH_FILES || bytes + item.file.size > BATCH_BYTES)) {
        batches.push(current);
        current = [];
        bytes = 0;
      }
      current.push(item);
      bytes += item.file.size;
    });
    if (current.length) batches.push(current);
    return batches;
  }

  async function inParallel(tasks, lanes) {
    var next = 0, failure = null;
    async function lane() {
      while (next < tasks.length && !failure) {
        var task = tasks[next++];
        try { await task(); } catch (error) { failure = failure || error; }
      }
    }
    var running = [];
    for (var i = 0; i < lanes; i++) running.push(lane());
    await Promise.all(running);
    if (failure) throw failure;
  }

  async function upload() {
    var fields = new FormData(form);
    var source = String(fields.get("source") || "default");
    var label = String(fields.get("label") || "");
    var unlabeled = fields.get("unlabeled") === "true";
    var opened = await withRetries("starting the upload", function () {
      return request("POST", "/api/datasets/" + datasetId + "/uploads/open", {
        source: source,
        label: label || null,
        unlabeled: unlabeled,
      });
    });
    if (opened.status !== 200) throw refused(opened);
    var uploadId = opened.data.upload_id;
    root.setAttribute("data-upload-id", uploadId);
    var small = chosen.filter(function (item) { return item.file.size < chunkBytes; });
    var big = chosen.filter(function (item) { return item.file.size >= chunkBytes; });
    totals = { bytes: 0, files: chosen.length };
    chosen.forEach(function (item) { totals.bytes += item.file.size; });
    done = { bytes: 0, files: 0 };
    phaseText.textContent = opened.data.resumed ? "Resuming upload " + uploadId : "Sending";
    render();
    var tasks = batchesOf(small).map(function (batch, index) {
      return function () { return sendBatch(uploadId, batch, "batch-" + index); };
    });
    await inParallel(tasks, PARALLEL_BATCHES);
    for (var i = 0; i < big.length; i++) await sendBig(uploadId, big[i], chunkBytes);

    phaseText.textContent = "Sent";
    var finish = new FormData();
    finish.append("source", source);
    if (label) finish.append("label", label);
    var csv = root.querySelector("[data-labels-csv]").files[0];
    if (csv) finish.append("labels_csv", csv, csv.name);
    var response = await withRetries("finishing the upload", function () {
      return request("POST", "/api/uploads/" + uploadId + "/finish", finish);
    });
    if (response.status !== 202) throw refused(response);
    return uploadId;
  }

  form.addEventListener("submit", async function (event) {
    event.preventDefault();
    if (busy || !chosen.length) return;
    busy = true;
    describe();
    document.getElementById("flash").textContent = "";
    progressBox.hidden = false;
    try {
      var uploadId = await upload();
      var resume = root.querySelector("[data-resume]");
      if (resume) resume.remove();
      phaseText.textContent = "Uploaded; now checking and adding the images (the report below follows)";
      chosen = [];
      chosenPaths = new Set();
      htmx.ajax("GET", "/uploads/" + uploadId + "/panel", { target: "#upload-result", swap: "innerHTML" });
    } catch (error) {
      phaseText.textContent = "Stopped";
      showError("Upload stopped: " + error.message);
    } finally {
      busy = false;
      describe();
    }
  });

  var discard = root.querySelector("[data-discard]");
  if (discard) {
    discard.addEventListener("click", async function () {
      var uploadId = discard.closest("[data-resume]").getAttribute("data-upload-id");
      var response = await request("DELETE", "/api/uploads/" + uploadId);
      if (response.status === 204) window.location.reload();
      else showError(refused(response).message);
    });
  }
  // The phase line says what the report panel says once the panel (which polls itself) reaches an end, so
  // "now checking" never stays beside a finished report.
  document.addEventListener("htmx:load", function (event) {
    var panel = event.detail.elt;
    if (!panel || !panel.hasAttribute || !panel.hasAttribute("data-upload-panel") || !phaseText) {
      return;
    }
    var status = panel.getAttribute("data-status");
    var ends = { done: "Done: the report below is final", failed: "Failed: see the report below",
      cancelled: "Cancelled: see the report below" };
    if (ends[status]) {
      phaseText.textContent = ends[status];
    } else if (status === "queued" || status === "ingesting") {
      phaseText.textContent = "Uploaded; now checking and adding the images (" + status + ")";
    }
  });
})();
