// sluice dashboard: polls the admin API with the token the operator typed.
// The token lives in sessionStorage (this tab only) and goes in the
// Authorization header, never in a URL.
(function () {
  "use strict";
  var KEY = "sluice.admin.token";
  var POLL_MS = 2000;
  var tokenInput = document.getElementById("token");
  var statusEl = document.getElementById("status");
  var tbody = document.querySelector("#targets tbody");
  var history = { t: [], backlog: {}, ingress: [], delivery: [] };
  var charts = {};

  document.getElementById("login").addEventListener("submit", function (e) {
    e.preventDefault();
    sessionStorage.setItem(KEY, tokenInput.value);
    tokenInput.value = "";
    poll();
  });

  function api(method, path, body) {
    var headers = { "Accept": "application/json" };
    var tok = sessionStorage.getItem(KEY);
    if (tok) headers["Authorization"] = "Bearer " + tok;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    return fetch(path, { method: method, headers: headers, body: body === undefined ? undefined : JSON.stringify(body), cache: "no-store" })
      .then(function (r) {
        return r.json().then(function (j) {
          if (!r.ok) throw new Error((j.error && j.error.message) || ("HTTP " + r.status));
          return j;
        });
      });
  }

  function setStatus(text, err) {
    statusEl.textContent = text;
    statusEl.className = err ? "err" : "";
  }

  function fmtETA(t) {
    if (t.drain_eta_seconds < 0) return "never (paused)";
    var s = t.drain_eta_seconds;
    if (s < 1) return "now";
    if (s < 120) return Math.round(s) + " s";
    if (s < 7200) return Math.round(s / 60) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function render(state) {
    tbody.textContent = "";
    state.routes.forEach(function (r) {
      (r.targets || []).forEach(function (t) {
        var tr = document.createElement("tr");
        tr.dataset.route = r.name;
        tr.dataset.target = t.name;
        if (t.paused) tr.className = "paused";
        cell(tr, r.name + (r.retired ? " (removed)" : ""));
        cell(tr, t.name);
        cell(tr, String(t.backlog), "num backlog");
        cell(tr, String(t.in_flight), "num");
        cell(tr, t.rate + (t.operator_rate ? " (operator: " + t.operator_rate + ")" : ""));
        cell(tr, t.rate_reason, "reason");
        cell(tr, fmtETA(t), "eta");
        cell(tr, t.breaker);
        var dl = cell(tr, "", "num");
        var b = document.createElement("button");
        b.className = "link dead";
        b.textContent = String(t.dead_letters);
        b.addEventListener("click", function () { showDead(r.name, t.name); });
        dl.appendChild(b);
        cell(tr, String(t.delivered), "num");
        var act = cell(tr, "");
        var btn = document.createElement("button");
        btn.className = t.paused ? "resume" : "pause";
        btn.textContent = t.paused ? "resume" : "pause";
        btn.addEventListener("click", function () {
          var verb = t.paused ? "resume" : "pause";
          api("POST", "/v1/routes/" + encodeURIComponent(r.name) + "/targets/" + encodeURIComponent(t.name) + "/" + verb, {})
            .then(poll, function (e) { setStatus(verb + " failed: " + e.message, true); });
        });
        act.appendChild(btn);
        tbody.appendChild(tr);
      });
    });
  }

  // fromSamples turns the server's history (GET /v1/history: a sample
  // every few seconds for the last ten minutes) into the charts' columns.
  function fromSamples(samples) {
    history = { t: [], backlog: {}, ingress: [], delivery: [] };
    samples.forEach(function (smp) {
      Object.keys(smp.backlog || {}).forEach(function (k) {
        if (!history.backlog[k]) history.backlog[k] = history.t.map(function () { return null; });
      });
    });
    var prev = null;
    samples.forEach(function (smp) {
      var t = Date.parse(smp.t) / 1000;
      history.t.push(t);
      Object.keys(history.backlog).forEach(function (k) {
        var v = smp.backlog ? smp.backlog[k] : undefined;
        history.backlog[k].push(v === undefined ? null : v);
      });
      if (prev && t > prev.t) {
        history.ingress.push(Math.max(0, (smp.appended - prev.appended) / (t - prev.t)));
        history.delivery.push(Math.max(0, (smp.delivered - prev.delivered) / (t - prev.t)));
      } else {
        history.ingress.push(null);
        history.delivery.push(null);
      }
      prev = { t: t, appended: smp.appended, delivered: smp.delivered };
    });
  }

  var palette = ["#1d3557", "#e63946", "#2a9d8f", "#f4a261", "#6a4c93", "#457b9d", "#8ab17d", "#bc6c25"];

  function drawCharts() {
    if (typeof uPlot === "undefined") return;
    var width = Math.min(640, document.body.clientWidth - 40);
    var keys = Object.keys(history.backlog);
    var bdata = [history.t].concat(keys.map(function (k) { return history.backlog[k]; }));
    var sig = keys.join(",");
    if (!charts.backlog || charts.backlogSig !== sig) {
      if (charts.backlog) charts.backlog.destroy();
      charts.backlog = new uPlot({
        width: width, height: 240,
        series: [{}].concat(keys.map(function (k, i) { return { label: k, stroke: palette[i % palette.length], width: 2 }; })),
        axes: [{}, {}]
      }, bdata, document.getElementById("chart-backlog"));
      charts.backlogSig = sig;
    } else {
      charts.backlog.setData(bdata);
    }
    var rdata = [history.t, history.ingress, history.delivery];
    if (!charts.rates) {
      charts.rates = new uPlot({
        width: width, height: 240,
        series: [{}, { label: "ingress", stroke: "#e63946", width: 2 }, { label: "delivery", stroke: "#2a9d8f", width: 2 }],
        axes: [{}, {}]
      }, rdata, document.getElementById("chart-rates"));
    } else {
      charts.rates.setData(rdata);
    }
  }

  function showDead(route, target) {
    var box = document.getElementById("dead");
    var base = "/v1/routes/" + encodeURIComponent(route) + "/targets/" + encodeURIComponent(target) + "/dead";
    api("GET", base + "?limit=100").then(function (list) {
      box.textContent = "";
      var h = document.createElement("h3");
      h.textContent = route + " / " + target + ": " + list.dead_letters.length + (list.next ? "+" : "") + " dead letters";
      box.appendChild(h);
      var replay = document.createElement("button");
      replay.textContent = "replay all at 10/s";
      replay.addEventListener("click", function () {
        api("POST", base + "/replay", { all: true, rate: "10/s" }).then(function (r) {
          setStatus("replayed " + r.replayed, false); showDead(route, target); poll();
        }, function (e) { setStatus("replay failed: " + e.message, true); });
      });
      box.appendChild(replay);
      var t = document.createElement("table");
      var head = document.createElement("tr");
      ["id", "status", "class", "error", "attempts", "dead at"].forEach(function (x) { var th = document.createElement("th"); th.textContent = x; head.appendChild(th); });
      t.appendChild(head);
      list.dead_letters.forEach(function (d) {
        var tr = document.createElement("tr");
        [d.id, d.status || "", d.class, d.error || "", d.attempts, d.dead_at || ""].forEach(function (x) { cell(tr, String(x)); });
        t.appendChild(tr);
      });
      box.appendChild(t);
    }, function (e) { setStatus("dead letters: " + e.message, true); });
  }

  function poll() {
    return api("GET", "/v1/routes").then(function (state) {
      render(state);
      return api("GET", "/v1/history");
    }).then(function (h) {
      fromSamples(h.samples || []);
      drawCharts();
      setStatus("updated " + new Date().toLocaleTimeString(), false);
    }, function (e) {
      setStatus(e.message, true);
    });
  }

  poll();
  setInterval(poll, POLL_MS);
})();
