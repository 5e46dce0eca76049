// The review viewer: a job's CT in three views with its structures drawn, scrolled with the mouse wheel,
// the sliders or the arrow keys; Approve (the ticked structures) and Reject (with a reason) call the JSON API.
// Each view is a canvas: the CT slice (a grey PNG under the window preset) with the overlay PNG of the ticked
// structures drawn over it. Slices ahead of the scroll are fetched and decoded beforehand, so a step usually
// draws pictures already in memory. window.reviewViewer.latencies holds, per step, the milliseconds from the
// input event to the frame that shows the new slice.
(function () {
  "use strict";
  var root = document.getElementById("viewer");
  if (!root) { return; }
  var job = root.getAttribute("data-job");
  var base = "/review/" + job;
  var statusLine = document.getElementById("viewer-status");
  var message = document.getElementById("review-message");
  var AHEAD = 12, BEHIND = 3, AROUND = 4, MAX_IN_FLIGHT = 4, MAX_CACHED = 400;
  var WHEEL_SIGN = { axial: -1, coronal: 1, sagittal: 1 };  // wheel down: towards the feet, posterior, left
  var state = { window: "soft_tissue", fill: false, shown: [], index: {}, active: "axial", info: null };
  var views = {};
  var cache = new Map();  // url -> promise of the decoded image, least recently used first
  var queue = [];  // urls to fetch ahead, most wanted first
  var inFlight = 0;
  var latencies = [];
  window.reviewViewer = { latencies: latencies, state: state, ready: false };

  function csrfToken() {
    var meta = document.querySelector("meta[name=csrf-token]");
    return meta ? meta.getAttribute("content") : "";
  }

  function ctUrl(plane, i) { return base + "/ct/" + plane + "/" + i + ".png?window=" + state.window; }

  function overlayUrl(plane, i) {
    return base + "/overlay/" + plane + "/" + i + ".png?shown=" + state.shown.join(",") + (state.fill ? "&fill=true" : "");
  }

  function image(url) {
    var found = cache.get(url);
    if (found) { cache.delete(url); cache.set(url, found); return found; }
    var img = new Image();
    img.src = url;
    var promise = img.decode().then(function () { return img; });
    promise.catch(function () { cache.delete(url); });
    cache.set(url, promise);
    if (cache.size > MAX_CACHED) { cache.delete(cache.keys().next().value); }
    return promise;
  }

  function pump() {
    while (inFlight < MAX_IN_FLIGHT && queue.length) {
      var url = queue.shift();
      if (cache.has(url)) { continue; }
      inFlight += 1;
      image(url).catch(function () { return null; }).then(function () { inFlight -= 1; pump(); });
    }
  }

  function wanted(plane, center, direction, ahead, behind) {
    var count = state.info.planes[plane].count, out = [];
    for (var step = 1; step <= ahead; step++) {
      [center + direction * step, step <= behind ? center - direction * step : -1].forEach(function (i) {
        if (i >= 0 && i < count) { out.push(ctUrl(plane, i), overlayUrl(plane, i)); }
      });
    }
    return out;
  }

  function prefetch(plane, direction) {
    var first = wanted(plane, state.index[plane], direction, AHEAD, BEHIND);
    Object.keys(views).forEach(function (other) {
      if (other !== plane) { first = first.concat(wanted(other, state.index[other], 1, AROUND, AROUND)); }
    });
    queue = first;
    pump();
  }

  function draw(plane, started) {
    var view = views[plane], i = state.index[plane], count = state.info.planes[plane].count;
    var ct = ctUrl(plane, i), overlay = overlayUrl(plane, i), want = ct + " " + overlay;
    view.want = want;
    view.slider.value = String(i);
    view.label.textContent = (i + 1) + " / " + count;
    Promise.all([image(ct), image(overlay)]).then(function (pictures) {
      if (view.want !== want) { return; }  // a later slice was asked for meanwhile
      view.context.drawImage(pictures[0], 0, 0);
      view.context.drawImage(pictures[1], 0, 0);
      window.requestAnimationFrame(function (frame) {
        view.canvas.setAttribute("data-shown", String(i));
        view.canvas.setAttribute("data-drawn", state.window + " " + state.shown.join(",") + (state.fill ? " filled" : ""));
        if (started !== undefined) {
          latencies.push({ plane: plane, index: i, ms: Math.max(0, Math.max(frame, performance.now()) - started) });
        }
      });
    }, function () { statusLine.textContent = "A slice could not be loaded: reload the page."; });
  }

  function go(plane, index, direction, started) {
    var count = state.info.planes[plane].count;
    index = Math.max(0, Math.min(count - 1, index));
    state.active = plane;
    if (index === state.index[plane]) { return; }
    state.index[plane] = index;
    draw(plane, started);
    prefetch(plane, direction);
  }

  function redrawAll() {
    Object.keys(views).forEach(function (plane) { draw(plane); });
    prefetch(state.active, 1);
  }

  function setUpView(figure) {
    var plane = figure.getAttribute("data-plane"), info = state.info.planes[plane];
    var view = { canvas: figure.querySelector("canvas"), slider: figure.querySelector("input[type=range]"),
                 label: figure.querySelector(".slice-index"), want: "" };
    view.canvas.width = info.width;
    view.canvas.height = info.height;
    view.context = view.canvas.getContext("2d");
    view.slider.max = String(info.count - 1);
    views[plane] = view;
    state.index[plane] = Math.floor(info.count / 2);
    view.canvas.addEventListener("wheel", function (event) {
      event.preventDefault();
      if (event.deltaY === 0) { return; }
      var step = (event.deltaY > 0 ? 1 : -1) * WHEEL_SIGN[plane];
      go(plane, state.index[plane] + step, step, event.timeStamp);
    }, { passive: false });
    view.slider.addEventListener("input", function (event) {
      var to = Number(view.slider.value);
      go(plane, to, to >= state.index[plane] ? 1 : -1, event.timeStamp);
    });
    ["mouseenter", "focus", "click"].forEach(function (name) {
      figure.addEventListener(name, function () { state.active = plane; }, true);
    });
  }

  var KEYS = { ArrowUp: 1, ArrowRight: 1, ArrowDown: -1, ArrowLeft: -1, PageUp: 10, PageDown: -10 };
  document.addEventListener("keydown", function (event) {
    var tag = event.target && event.target.tagName;
    if (!state.info || !(event.key in KEYS) || tag === "TEXTAREA" || (tag === "INPUT" && event.target.type !== "checkbox")) {
      return;
    }
    event.preventDefault();
    var step = KEYS[event.key];
    go(state.active, state.index[state.active] + step, step > 0 ? 1 : -1, event.timeStamp);
  });

  // the structure list is the page's (the review queue's names and volumes); view.json's order is what
  // the overlay URLs index, so each row is matched to its structure there by catalogue name
  function shownNow() {
    return ticked().map(function (t) { return t.n; }).filter(function (n) { return n !== undefined; });
  }

  function bindRows() {
    Array.prototype.forEach.call(rows(), function (row) {
      var swatch = row.querySelector(".swatch");
      if (swatch) { swatch.style.background = swatch.getAttribute("data-colour"); }
      row.querySelector("input[type=checkbox]").addEventListener("change", function () {
        approveLabel();
        if (state.info) { state.shown = shownNow(); redrawAll(); }
      });
    });
  }

  function indexRows() {
    var order = {};
    state.info.structures.forEach(function (s, n) { order[s.name] = n; });
    Array.prototype.forEach.call(rows(), function (row) {
      var n = order[row.getAttribute("data-structure")];
      if (n !== undefined) { row.setAttribute("data-n", String(n)); }
    });
    state.shown = shownNow();
  }

  function rows() { return document.querySelectorAll("#structures tr[data-structure]"); }

  function ticked() {
    return Array.prototype.filter.call(rows(), function (row) {
      return row.querySelector("input[type=checkbox]").checked;
    }).map(function (row) {
      var n = row.getAttribute("data-n");
      return { n: n === null ? undefined : Number(n), name: row.getAttribute("data-structure") };
    });
  }

  function approveLabel() {
    var button = document.getElementById("approve");
    if (!button) { return; }
    var kept = ticked().length, all = rows().length;
    button.textContent = kept === all ? "Approve all " + all : "Approve " + kept + " of " + all;
    button.disabled = kept === 0;
  }

  function decide(action, body) {
    var buttons = document.querySelectorAll("#decision button");
    Array.prototype.forEach.call(buttons, function (b) { b.disabled = true; });
    message.className = "";
    message.textContent = "Sending…";
    fetch("/api/review/" + job + "/" + action, {
      method: "POST", credentials: "same-origin", body: JSON.stringify(body),
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() }
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (data) {
        if (!response.ok) { throw new Error(typeof data.detail === "string" ? data.detail : "refused (" + response.status + ")"); }
        message.className = "ok";
        message.textContent = data.message || (action === "approve" ? "Approved." : "Rejected.");
        var badge = document.getElementById("job-state");
        if (badge && data.status) { badge.textContent = data.status; badge.className = "state " + data.status; }
        document.getElementById("decision").hidden = true;
      });
    }).catch(function (error) {
      message.className = "error";
      message.textContent = error.message;
      Array.prototype.forEach.call(buttons, function (b) { b.disabled = false; });
      approveLabel();
    });
  }

  function setUpDecision() {
    var approve = document.getElementById("approve"), reject = document.getElementById("reject");
    if (!approve || !reject) { return; }
    approve.addEventListener("click", function () {
      var kept = ticked(), all = kept.length === rows().length;
      var names = kept.map(function (t) { return t.name; });
      if (!all && !window.confirm("Approve only " + names.join(", ") + "? The SEG and RTSTRUCT are rebuilt with these structures alone.")) {
        return;
      }
      decide("approve", { keep: all ? null : names });
    });
    reject.addEventListener("click", function () {
      var reason = document.getElementById("reject-reason").value.trim();
      if (!reason) {
        message.className = "error";
        message.textContent = "Say why the contours are rejected.";
        return;
      }
      decide("reject", { reason: reason });
    });
    approveLabel();
  }

  function setUpPresets() {
    Array.prototype.forEach.call(document.querySelectorAll("button.preset"), function (button) {
      button.addEventListener("click", function () {
        state.window = button.getAttribute("data-window");
        document.querySelectorAll("button.preset").forEach(function (b) { b.classList.toggle("active", b === button); });
        redrawAll();
      });
      button.classList.toggle("active", button.getAttribute("data-window") === state.window);
    });
    document.getElementById("fill").addEventListener("change", function (event) {
      state.fill = event.target.checked;
      redrawAll();
    });
  }

  bindRows();
  setUpDecision();
  fetch(base + "/view.json", { credentials: "same-origin" }).then(function (response) {
    return response.json().then(function (data) {
      if (!response.ok) { throw new Error(typeof data.detail === "string" ? data.detail : "status " + response.status); }
      return data;
    });
  }).then(function (info) {
    state.info = info;
    state.window = info.structures.some(function (s) { return /^lung/i.test(s.name); }) ? "lung" : "soft_tissue";
    indexRows();
    Array.prototype.forEach.call(root.querySelectorAll("figure.view"), setUpView);
    setUpPresets();
    redrawAll();
    statusLine.textContent = "";
    window.reviewViewer.ready = true;
  }).catch(function (error) {
    statusLine.className = "error";
    statusLine.textContent = "The images cannot be shown: " + error.message;
  });
}());
