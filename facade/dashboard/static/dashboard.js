// distributed-agents dashboard: live updates over Server-Sent Events, actions without reloads.
// Every page works without this script (links and forms); with it, events patch the page:
// each event schedules one fetch of the page's live parts (JSON: element id -> HTML), which
// replace the matching sections. A section the user is typing in is left alone until it loses focus.
(function () {
  "use strict";
  var body = document.body;
  var live = body.dataset.live;
  var partsUrl = body.dataset.parts;
  var workflow = body.dataset.workflow || "";
  var liveState = document.getElementById("live-state");
  var tokenInput = document.getElementById("dashboard-token");
  var pending = null;
  var stale = {};

  if (tokenInput) {
    tokenInput.value = sessionStorage.getItem("da-dashboard-token") || "";
    tokenInput.addEventListener("input", function () {
      sessionStorage.setItem("da-dashboard-token", tokenInput.value);
    });
  }

  // With the script, the page's one token field serves every action: hide each form's own field
  // (it is there for a browser without JavaScript).
  var hideFormTokens = document.createElement("style");
  hideFormTokens.textContent = ".form-token { display: none; }";
  document.head.appendChild(hideFormTokens);

  function say(text, isError) {
    var box = document.getElementById("messages");
    if (!box) return;
    var p = document.createElement("p");
    p.className = isError ? "notice error" : "notice";
    p.textContent = text;
    box.replaceChildren(p);
    return p;
  }

  function sayAndFocus(text, isError) {
    // After an action, keyboard and screen-reader users land on its result (the box is aria-live).
    var p = say(text, isError);
    if (p) { p.tabIndex = -1; p.focus(); }
  }

  function currentPartsUrl() {
    if (!partsUrl) return null;
    if (live === "workflow") {
      var step = new URLSearchParams(location.search).get("step");
      return partsUrl + (step ? "?step=" + encodeURIComponent(step) : "");
    }
    return partsUrl;
  }

  function replacePart(id, html) {
    var old = document.getElementById(id);
    if (!old) return;
    if (old.contains(document.activeElement) && document.activeElement !== document.body) {
      stale[id] = html; // do not pull a form from under the user: swap it in once they leave it
      return;
    }
    var holder = document.createElement("div");
    holder.innerHTML = html;
    var fresh = holder.firstElementChild;
    // Keep what the user typed in a field the fresh rendering has empty (an answer being written).
    old.querySelectorAll("textarea[id], input[id]:not([type=hidden])").forEach(function (field) {
      var twin = holder.querySelector("#" + CSS.escape(field.id));
      if (twin && field.value && !twin.value) twin.value = field.value;
    });
    if (fresh && fresh.id === id) old.replaceWith(fresh);
    else old.innerHTML = html; // a part given as content only: keep the element, so later updates find it
  }

  document.addEventListener("focusout", function (event) {
    Object.keys(stale).forEach(function (id) {
      var part = document.getElementById(id);
      if (part && !part.contains(event.relatedTarget)) {
        var html = stale[id];
        delete stale[id];
        replacePart(id, html);
      }
    });
  });

  function refresh() {
    var url = currentPartsUrl();
    if (!url) return Promise.resolve();
    return fetch(url, {headers: {Accept: "application/json"}}).then(function (response) {
      if (response.status === 503) {
        return response.json().then(function (answer) {
          if (liveState) backendDown(answer.error);
          throw new Error(answer.error);
        });
      }
      if (!response.ok) throw new Error("refresh failed: " + response.status);
      return response.json();
    }).then(function (parts) {
      Object.keys(parts).forEach(function (id) { replacePart(id, parts[id]); });
      body.dataset.updates = String(Number(body.dataset.updates || "0") + 1);
    }).catch(function (error) { say(String(error), true); });
  }

  function schedule() {
    // Coalesce a burst of events into one refresh; a refresh in flight is followed by one more.
    if (pending) { pending.again = true; return; }
    pending = {again: false};
    setTimeout(function () {
      refresh().then(function () {
        var again = pending.again;
        pending = null;
        if (again) schedule();
      });
    }, 100);
  }

  function logEvent(event) {
    var log = document.getElementById("event-log");
    if (!log) return;
    var item = document.createElement("li");
    var when = event.time ? new Date(event.time * 1000).toISOString().slice(11, 23) : "";
    var text = when + " " + event.type;
    if (event.namespace && event.namespace.length) text += " [" + event.namespace.join("/") + "]";
    if (event.node) text += " " + event.node;
    if (event.step !== undefined) text += " (step " + event.step + ")";
    if (event.worker) text += " on " + event.worker;
    if (typeof event.duration === "number") text += " in " + event.duration.toFixed(3) + " s";
    if (event.error) text += ": " + event.error;
    if (event.message) text += ": " + event.message;
    item.textContent = text;
    log.prepend(item);
    while (log.children.length > 200) log.lastElementChild.remove();
  }

  function markNode(event) {
    // Mark the node in the drawing at once; the refresh that follows redraws the rest.
    if (!event.node || (event.namespace && event.namespace.length)) return;
    var states = {"node.started": "current", "node.completed": "finished", "node.failed": "failed"};
    var state = states[event.type];
    if (!state) return;
    document.querySelectorAll("#part-graph g.da-node").forEach(function (g) {
      if (g.getAttribute("data-node") === event.node) {
        g.classList.remove("state-current", "state-finished", "state-failed", "state-interrupted");
        g.classList.add("state-" + state);
      }
    });
  }

  function connected() {
    liveState.textContent = "live";
    body.dataset.connected = "true";
  }
  function backendDown(message) {
    if (!liveState) return;
    liveState.textContent = "disconnected: backend unreachable";
    liveState.title = message || "";
    body.dataset.connected = "false";
  }
  function disconnected() {
    liveState.textContent = "reconnecting…";
    body.dataset.connected = "false";
  }
  function onEvent(event) {
    if (live === "workflow") {
      logEvent(event);
      markNode(event);
      if (event.type === "notice") say(event.message, true);
    }
    if (event.type === "backend") { // the server lost (or found again) its backend
      if (event.ok) connected(); else backendDown(event.message);
      say(event.message, !event.ok);
    }
    if (event.type === "registry" && live !== "list") return; // workers/queues changed: list pages only
    schedule();
  }

  if (live && window.SharedWorker) {
    // One event stream for every tab of the dashboard (see events-worker.js): tabs beyond the
    // browser's 6 connections per host would otherwise never load.
    var worker = new SharedWorker("/static/events-worker.js", {name: "da-dashboard-events"});
    worker.port.onmessage = function (message) {
      var data = message.data;
      if (data.kind === "open") connected();
      else if (data.kind === "error") disconnected();
      else if (data.kind === "event") onEvent(data.event);
    };
    worker.port.start();
    worker.port.postMessage({kind: "hello", workflow: workflow});
    window.addEventListener("pagehide", function () { worker.port.postMessage({kind: "bye"}); });
    window.addEventListener("pageshow", function (event) {  // back from the page cache: listen again
      if (event.persisted) worker.port.postMessage({kind: "hello", workflow: workflow});
    });
  } else if (live && window.EventSource) {
    var url = "/events" + (workflow ? "?workflow=" + encodeURIComponent(workflow) : "");
    var source = new EventSource(url);
    source.onopen = connected;
    source.onerror = disconnected;
    source.onmessage = function (message) { onEvent(JSON.parse(message.data)); };
  } else if (liveState) {
    liveState.textContent = "";
  }

  // Heartbeat ages count up between updates (a local clock: nothing is fetched).
  if (document.querySelector("[data-age]") || live === "list") {
    setInterval(function () {
      var now = performance.now();
      document.querySelectorAll("[data-age]").forEach(function (cell) {
        if (!cell.dataset.t0) cell.dataset.t0 = String(now);
        var age = Number(cell.dataset.age) + (now - Number(cell.dataset.t0)) / 1000;
        cell.textContent = age.toFixed(1) + " s";
      });
    }, 1000);
  }

  // Actions: POST with the token in a header, show the answer, patch the page.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches("form.action")) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    var headers = {Accept: "application/json", "Content-Type": "application/x-www-form-urlencoded"};
    if (tokenInput && tokenInput.value) headers["X-Dashboard-Token"] = tokenInput.value;
    var button = form.querySelector("button");
    if (button) button.disabled = true;
    fetch(form.action, {method: "POST", body: new URLSearchParams(new FormData(form)).toString(), headers: headers})
      .then(function (response) { return response.json(); })
      .then(function (answer) {
        sayAndFocus(answer.message, !answer.ok);
        if (!answer.ok) return; // refused: leave the form as it is, so the user can fix and send again
        if (answer.location && answer.location !== location.pathname) {
          var join = answer.location.indexOf("?") < 0 ? "?" : "&";
          location.assign(answer.location + join + "notice=" + encodeURIComponent(answer.message));
          return;
        }
        schedule();
      })
      .catch(function (error) { sayAndFocus(String(error), true); })
      .finally(function () { if (button) button.disabled = false; });
  });

  // The state picker and the "state" links: show another step without leaving the page.
  document.addEventListener("click", function (event) {
    var link = event.target.closest("a[data-step]");
    if (!link || live !== "workflow") return;
    event.preventDefault();
    history.replaceState(null, "", "?step=" + encodeURIComponent(link.dataset.step) + "#part-state");
    refresh().then(function () {
      var heading = document.getElementById("h-state");
      if (heading) { heading.tabIndex = -1; heading.focus(); }
    });
  });
  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (!form.matches("form.step-picker") || live !== "workflow") return;
    event.preventDefault();
    var step = form.querySelector("select").value;
    history.replaceState(null, "", "?step=" + encodeURIComponent(step) + "#part-state");
    refresh();
  });
})();
