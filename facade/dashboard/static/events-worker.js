// distributed-agents dashboard: one Server-Sent Events connection shared by every tab of this origin.
// A browser opens at most 6 HTTP/1.1 connections per host; one EventSource per tab would hold them all
// open, so a 7th tab (and every fetch) would stall. Each tab connects to this SharedWorker instead and
// says which workflow it shows ("" for all); the worker keeps one EventSource to /events and hands
// each tab the events it wants (the same filter as /events?workflow=ID applies on the server).
"use strict";
var tabs = []; // {port, workflow}
var source = null;
var state = "connecting";

function send(tab, message) {
  try { tab.port.postMessage(message); } catch (error) { drop(tab.port); }
}

function broadcast(message) { tabs.slice().forEach(function (tab) { send(tab, message); }); }

function drop(port) { tabs = tabs.filter(function (tab) { return tab.port !== port; }); }

function open() {
  source = new EventSource("/events");
  source.onopen = function () { state = "open"; broadcast({kind: "open"}); };
  source.onerror = function () { state = "error"; broadcast({kind: "error"}); };
  source.onmessage = function (message) {
    var event;
    try { event = JSON.parse(message.data); } catch (error) { return; }
    tabs.slice().forEach(function (tab) {
      var id = event.workflow_id;
      if (!tab.workflow || id === undefined || id === null || id === tab.workflow || event.type === "gap") {
        send(tab, {kind: "event", event: event});
      }
    });
  };
}

self.onconnect = function (connection) {
  var port = connection.ports[0];
  var tab = {port: port, workflow: ""};
  port.onmessage = function (message) {
    var data = message.data || {};
    if (data.kind === "hello") {
      tab.workflow = data.workflow || "";
      tabs.push(tab);
      if (!source) open();
      if (state === "open") send(tab, {kind: "open"});
    } else if (data.kind === "bye") {
      drop(port);
    }
  };
  port.start();
};
