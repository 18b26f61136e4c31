(function () {
  "use strict";

  var DATA = JSON.parse(document.getElementById("sop-data").textContent);
  var app = document.getElementById("app");
  var tip = document.getElementById("tip");
  var drawer = document.getElementById("details");
  var TOKEN = new URLSearchParams(location.search).get("token") || "";
  // A task with more records than this opens with its steps collapsed; at most ROWS rows are drawn at once.
  var COLLAPSE_AT = 600, ROWS = 1500, TABLE_ROWS = 10, FINDINGS = 8;
  var KIND = { agent: "agent run", step: "step", model: "model call", tool: "tool call" };
  var PALETTE = ["#4f46e5", "#0891b2", "#d97706", "#059669", "#db2777", "#7c3aed", "#65a30d", "#dc2626"];

  var S = null;            // the session on screen
  var view = { tab: "compare", open: {}, collapsed: {}, limit: {}, sel: null, all: {} };

  // -- formatting -----------------------------------------------------------------------------------------------
  function esc(value) {
    return String(value == null ? "" : value).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function int(n) { return n == null ? "–" : Math.round(n).toLocaleString("en-US"); }
  function dur(s) {
    if (s == null) return "–";
    if (s < 1e-3) return Math.round(s * 1e6) + " µs";
    if (s < 1) return (s * 1e3).toFixed(s < 0.01 ? 2 : 1) + " ms";
    if (s < 60) return s.toFixed(2) + " s";
    if (s < 3600) return Math.floor(s / 60) + "m " + (s % 60).toFixed(0).padStart(2, "0") + "s";
    return Math.floor(s / 3600) + "h " + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
  }
  function cost(c, unpriced) {
    if (c == null) return "unknown";
    var text = c === 0 ? "$0" : c < 0.01 ? "$" + c.toPrecision(3) : c < 100 ? "$" + c.toFixed(4) : "$" + int(c);
    return (unpriced ? "≥ " : "") + text;
  }
  function pct(part, whole) { return whole ? (part / whole * 100).toFixed(part / whole < 0.1 ? 1 : 0) + "%" : "–"; }
  function when(iso) {
    if (!iso) return "–";
    var d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "medium" });
  }
  function badge(status) {
    var cls = status === "completed" || status === "success" || status === "ok" ? "ok"
      : status === "running" || status === "pending" || status === "empty" ? "running" : "error";
    return '<span class="badge ' + cls + '">' + esc(status) + "</span>";
  }
  function plural(n, word) { return int(n) + " " + word + (n === 1 ? "" : "s"); }

  // -- page -----------------------------------------------------------------------------------------------------
  function render() {
    if (DATA.kind === "list") return renderList();
    if (DATA.kind === "compare") return renderCompare();
    S = DATA.session;
    app.innerHTML = '<main id="main" class="wrap">' + sessionHtml(S) + "</main>";
    afterRender();
  }

  function brand() {
    return '<span class="brand"><svg width="22" height="22" viewBox="0 0 22 22" aria-hidden="true">' +
      '<rect x="1" y="3" width="12" height="4" rx="2" fill="#6366f1"/><rect x="6" y="9" width="14" height="4" rx="2" ' +
      'fill="#0891b2"/><rect x="9" y="15" width="8" height="4" rx="2" fill="#059669"/></svg></span>';
  }

  function sessionHtml(s) {
    var env = s.environment || {};
    var versions = [];
    if (env.python_version) versions.push("Python " + env.python_version);
    Object.keys(env).forEach(function (k) {  // smolagents_version, framework versions, whatever the file has
      var v = env[k];
      if (!/^(python|telemetry|os)_version$/.test(k) && /_version$/.test(k) && typeof v === "string")
        versions.push(k.replace(/_version$/, "") + " " + v);
      if ((/version/.test(k) || k === "frameworks") && v && typeof v === "object")  // {"smolagents": "1.26.0", ...}
        Object.keys(v).forEach(function (f) { versions.push(f + " " + v[f]); });
    });
    var live = DATA.live ? '<span class="live" title="Refreshes while the file changes"><i></i>live</span>' : "";
    return '<header class="top"><h1>' + brand() + " Session<span class=\"mono\">" + esc(s.id) + "</span></h1>" +
      '<span class="meta">' + esc(when(s.start)) + (versions.length ? " · " + esc(versions.join(" · ")) : "") +
      (env.hostname ? " · " + esc(env.hostname) : "") + "</span>" + live + "</header>" +
      cardsHtml(s) + findingsHtml(s) + tasksHtml(s) + breakdownHtml(s) + envHtml(s) +
      '<footer>Drawn by sop_telemetry ' + esc(DATA.version || "") + " from session file schema " +
      esc(s.schema_version) + ". Costs are estimates.</footer>";
  }

  function card(key, label, value, sub, raw) {
    return '<div class="card" data-fig="' + key + '" data-value="' + esc(raw == null ? "" : raw) + '">' +
      '<div class="k">' + esc(label) + '</div><div class="v">' + value + "</div>" +
      (sub ? '<div class="s">' + sub + "</div>" : "") + "</div>";
  }

  function cardsHtml(s) {
    var h = s.header;
    var costSub = h.cost == null ? (h.model_calls ? "no known price" : "no model calls")
      : h.unpriced_calls ? "at least: " + esc(plural(h.unpriced_calls, "call")) + " without a price" : "estimated";
    var dropped = h.dropped_model_calls ? " (+" + int(h.dropped_model_calls) + " dropped)" : "";
    var unreported = h.unreported_calls ? " · " + esc(plural(h.unreported_calls, "call")) + " without usage" : "";
    return '<section class="cards" aria-label="Session figures">' +
      card("status", "Status", badge(h.status), null, h.status) +
      card("duration", "Duration", esc(dur(h.duration)), null, h.duration) +
      card("tasks", "Tasks", int(h.tasks), h.failed_tasks ? esc(int(h.failed_tasks) + " failed") : "", h.tasks) +
      card("agent_runs", "Agent runs", int(h.agent_runs), null, h.agent_runs) +
      card("model_calls", "Model calls", int(h.model_calls) + esc(dropped), esc(plural(h.tool_calls, "tool call")),
        h.model_calls) +
      card("total_tokens", "Tokens", int(h.total_tokens),
        "in " + int(h.prompt_tokens) + " · out " + int(h.completion_tokens) + unreported, h.total_tokens) +
      card("cost", "Estimated cost", esc(cost(h.cost)), costSub, h.cost) +
      "</section>";
  }

  function findingsHtml(s) {
    var all = view.all.findings, shown = all ? s.findings : s.findings.slice(0, FINDINGS);
    var items = shown.map(function (f, n) {
      var refs = f.refs.length ? '<button class="btn" data-finding="' + n + '" aria-label="Show the ' +
        esc(plural(f.refs.length, "record")) + " of: " + esc(f.title) + '">Show ' + (f.refs.length > 1 ?
        f.refs.length + " records" : "record") + "</button>" : "<span></span>";
      return '<li data-rule="' + esc(f.rule) + '"><span class="dot ' + esc(f.level) + '" role="img" aria-label="' +
        esc(f.level) + '"></span><div><div class="t">' + esc(f.title) + '</div><div class="x">' + esc(f.text) +
        "</div></div>" + refs + "</li>";
    });
    var more = s.findings.length > FINDINGS ? '<button class="btn showall" data-all="findings">' + (all ?
      "Show the first " + FINDINGS : "Show all " + int(s.findings.length) + " findings") + "</button>" : "";
    return '<section class="box" id="findings" aria-labelledby="findings-h"><h2 id="findings-h">Findings</h2>' +
      (items.length ? '<ul class="findings">' + items.join("") + "</ul>" + more
        : '<p class="none">Nothing stands out: no failures, no missing usage, no fast-growing context.</p>') +
      "</section>";
  }

  function tasksHtml(s) {
    if (!s.tasks.length) return '<section class="box"><h2>Tasks</h2><p class="none">No tasks recorded.</p></section>';
    var rows = s.tasks.map(function (t, n) {
      if (!(n in view.open)) view.open[n] = s.tasks.length <= 3 || n === s.tasks.length - 1;
      return '<details class="task" data-t="' + n + '"' + (view.open[n] ? " open" : "") + "><summary>" +
        '<span class="tid">' + esc(t.id) + "</span>" + badge(t.status) +
        '<span class="desc" title="' + esc(t.description) + '">' + esc(t.description) + "</span>" +
        '<span class="fig">' + esc(dur(t.duration)) + " · " + esc(plural(t.model_calls, "model call")) + " · " +
        esc(plural(t.tool_calls, "tool call")) + " · " + int(t.total_tokens) + " tokens · " + esc(cost(t.cost)) +
        '</span></summary><div class="task-body" id="task-' + n + '"></div></details>';
    });
    return '<section class="box" id="tasks" aria-labelledby="tasks-h"><h2 id="tasks-h">Tasks' +
      '<span class="spacer"></span><span class="muted" style="font-weight:400;font-size:12.5px">' +
      esc(plural(s.tasks.length, "task")) + "</span></h2>" + rows.join("") + "</section>";
  }

  // -- one task: waterfall, context growth, time split ------------------------------------------------------------
  function prepare(t) {
    if (t._depth) return;
    var n = t.records.length;
    t._depth = new Array(n);
    t._kids = new Array(n).fill(0);
    var end = (t.duration || 0) * 1000;
    t.records.forEach(function (r, i) {
      t._depth[i] = r.parent == null ? 0 : t._depth[r.parent] + 1;
      if (r.parent != null) t._kids[r.parent] += 1;
      end = Math.max(end, r.start + (r.duration || 0) * 1000);
    });
    t._span = end > 0 ? end : 1;
  }

  function collapsedOf(n, t) {
    if (!view.collapsed[n]) {
      var set = {};
      if (t.records.length > COLLAPSE_AT) {
        t.records.forEach(function (r, i) { if (r.kind === "step" && t._kids[i]) set[i] = true; });
      }
      view.collapsed[n] = set;
    }
    return view.collapsed[n];
  }

  function visibleRows(n, t) {
    var collapsed = collapsedOf(n, t), rows = [], skipDepth = -1;
    for (var i = 0; i < t.records.length; i++) {
      var d = t._depth[i];
      if (skipDepth >= 0) { if (d > skipDepth) continue; skipDepth = -1; }
      rows.push(i);
      if (collapsed[i]) skipDepth = d;
    }
    return rows;
  }

  function niceStep(span, count) {
    var raw = span / count, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var k = 0; k < steps.length; k++) if (steps[k] * mag >= raw) return steps[k] * mag;
    return 10 * mag;
  }
  function msLabel(ms, step) {
    if (step >= 1000) return (ms / 1000).toFixed(step >= 10000 ? 0 : 1) + " s";
    if (step >= 1) return ms.toFixed(0) + " ms";
    return ms.toFixed(step >= 0.1 ? 1 : 2) + " ms";
  }

  function barLabel(r) {
    var parts = [KIND[r.kind] + " " + r.name];
    if (r.agent && r.kind !== "agent") parts.push("agent " + r.agent);
    parts.push(dur(r.duration));
    if (r.kind === "model") parts.push(r.tokens_reported === false ? "usage not reported"
      : int(r.input_tokens) + " in, " + int(r.output_tokens) + " out");
    if (r.status === "error") parts.push("failed" + (r.error ? ": " + r.error : ""));
    if (r.status === "running") parts.push("not finished");
    return parts.join(", ");
  }

  function drawTask(n) {
    var t = S.tasks[n], body = document.getElementById("task-" + n);
    if (!body) return;
    prepare(t);
    var html = "";
    if (t.error) html += '<div class="task-error"><b>Failed:</b> ' + esc(t.error) + "</div>";
    if (t.dropped && Object.keys(t.dropped).length)
      html += '<p class="muted">Records over the per-task caps were not kept: ' + esc(Object.keys(t.dropped).map(
        function (k) { return int(t.dropped[k]) + " " + k; }).join(", ")) + ".</p>";
    html += '<div class="legend" aria-hidden="true"><span><i class="k-agent" style="opacity:.5"></i>agent run</span>' +
      '<span><i class="k-step"></i>step</span><span><i class="k-model"></i>model call</span>' +
      '<span><i class="k-tool"></i>tool call</span><span><i style="background:var(--error)"></i>failed</span>' +
      '<span class="spacer"></span></div>' +
      '<div class="legend"><button class="btn" data-expand="' + n + '">Expand all</button>' +
      '<button class="btn" data-collapse="' + n + '">Collapse steps</button><span class="muted">' +
      esc(plural(t.records.length, "record")) + " on one time axis; hover or click a bar for details.</span></div>" +
      '<div class="wf" id="wf-' + n + '"></div>' +
      '<div class="charts"><div class="chart" id="ctx-' + n + '"></div><div class="split" id="split-' + n +
      '"></div></div>';
    body.innerHTML = html;
    drawWaterfall(n);
    drawContext(n);
    document.getElementById("split-" + n).innerHTML = "<h3>Where the task's time went</h3>" + splitHtml(t.split);
  }

  function drawWaterfall(n) {
    var t = S.tasks[n], box = document.getElementById("wf-" + n);
    if (!box) return;
    var rows = visibleRows(n, t), limit = view.limit[n] || ROWS, shown = rows.slice(0, limit);
    // About one tick per 90 px of the time axis (the axis is roughly two thirds of the box).
    var ticksWanted = Math.max(2, Math.min(8, Math.floor((box.clientWidth || 900) * 0.62 / 90)));
    var collapsed = collapsedOf(n, t), span = t._span, step = niceStep(span, ticksWanted);
    var ticks = [];
    for (var v = 0; v <= span + 1e-9; v += step) ticks.push(v);
    var axis = ticks.map(function (v) {
      // A label near the end is right-aligned to its tick so that it stays inside the axis.
      return '<span style="left:' + (v / span * 100) + '%' + (v / span > 0.9 ? ";transform:translateX(-100%)" : "") +
        '">' + msLabel(v, step) + "</span>";
    }).join("");
    var period = step / span * 100;
    var grid = "repeating-linear-gradient(90deg, var(--grid) 0 1px, transparent 1px " + period + "%)";
    var out = [];
    for (var k = 0; k < shown.length; k++) {
      var i = shown[k], r = t.records[i], kids = t._kids[i], open = !collapsed[i];
      var left = r.start / span * 100;
      var width = ((r.duration == null ? span - r.start : r.duration * 1000) / span) * 100;
      var sel = view.sel && view.sel[0] === n && view.sel[1] === i ? " sel" : "";
      out.push('<div class="wf-row' + sel + '" data-i="' + i + '" role="treeitem" aria-level="' + (t._depth[i] + 1) +
        '"' + (kids ? ' aria-expanded="' + open + '"' : "") + '><div class="lab" style="padding-left:' +
        (6 + t._depth[i] * 14) + 'px"><button class="tg' + (kids ? "" : " leaf") + '" data-tg="' + i +
        '" tabindex="' + (kids ? 0 : -1) + '" aria-label="' + (open ? "Collapse " : "Expand ") + esc(r.name) +
        '">' + (open ? "▾" : "▸") + '</button><span class="kd k-' + r.kind + '"></span><span class="nm" title="' +
        esc(r.name) + '">' + esc(r.name) + "</span>" +
        (r.status === "error" ? '<span class="fail" title="failed">✕</span>' : "") +
        (kids && !open ? '<span class="muted" style="font-size:11.5px">+' + kids + "</span>" : "") +
        '<span class="dur">' + esc(dur(r.duration)) + '</span></div><div class="track"><button class="bar ' + r.kind + " " + r.status + sel + '" data-i="' + i + '" style="left:' +
        left.toFixed(4) + "%;width:" + Math.max(0, width).toFixed(4) + '%" aria-label="' + esc(barLabel(r)) +
        '"></button></div></div>');
    }
    var more = rows.length > shown.length ? '<div class="more-row"><button class="btn" data-more="' + n +
      '">Show ' + int(Math.min(ROWS, rows.length - shown.length)) + " more rows</button> <span class=\"muted\">" +
      int(rows.length - shown.length) + " of " + int(rows.length) + " rows not drawn yet</span></div>" : "";
    box.style.setProperty("--gl", grid);
    box.innerHTML = '<div class="wf-scroll"><div class="wf-head"><div class="lab">Agent runs, steps and calls</div>' +
      '<div class="axis">' + axis + '</div></div><div role="tree" aria-label="Records of task ' + esc(t.id) + '">' +
      out.join("") + "</div></div>" + more;
  }

  function drawContext(n) {
    var t = S.tasks[n], box = document.getElementById("ctx-" + n);
    var series = t.context.filter(function (c) { return c.points.length; });
    var head = "<h3>Context growth: input tokens per step</h3>";
    if (!series.length) { box.innerHTML = head + '<p class="muted">No steps recorded.</p>'; return; }
    var W = Math.max(300, Math.min(900, (box.clientWidth || 600))), H = 220, L = 52, R = 12, T = 10, B = 34;
    var maxN = 0, maxY = 0;
    series.forEach(function (c) {
      maxN = Math.max(maxN, c.points.length);
      c.points.forEach(function (p) { maxY = Math.max(maxY, p.tokens || 0); });
    });
    var yStep = niceStep(maxY || 1, 4), yTop = Math.ceil((maxY || 1) / yStep) * yStep;
    function x(k) { return L + (maxN <= 1 ? (W - L - R) / 2 : k / (maxN - 1) * (W - L - R)); }
    function y(v) { return T + (1 - (v || 0) / yTop) * (H - T - B); }
    var svg = ['<svg viewBox="0 0 ' + W + " " + H + '" role="img" aria-label="Input tokens per step for ' +
      esc(plural(series.length, "agent run")) + '">'];
    for (var v = 0; v <= yTop + 1e-9; v += yStep) {
      svg.push('<line class="gl" x1="' + L + '" x2="' + (W - R) + '" y1="' + y(v) + '" y2="' + y(v) + '"/>' +
        '<text x="' + (L - 6) + '" y="' + (y(v) + 4) + '" text-anchor="end">' + compact(v) + "</text>");
    }
    var xEvery = Math.max(1, Math.ceil(maxN / 12));
    for (var k = 0; k < maxN; k += xEvery)
      svg.push('<text x="' + x(k) + '" y="' + (H - B + 16) + '" text-anchor="middle">' + (k + 1) + "</text>");
    svg.push('<text x="' + ((L + W - R) / 2) + '" y="' + (H - 4) + '" text-anchor="middle">step of the run</text>');
    var dense = maxN > 150;
    series.forEach(function (c, s) {
      var color = PALETTE[s % PALETTE.length];
      var pts = c.points.map(function (p, k) { return x(k).toFixed(1) + "," + y(p.tokens).toFixed(1); });
      svg.push('<polyline fill="none" stroke="' + color + '" stroke-width="2" stroke-linejoin="round" points="' +
        pts.join(" ") + '"/>');
      c.points.forEach(function (p, k) {
        var at = '<circle class="pt" data-i="' + p.record + '" cx="' + x(k).toFixed(1) + '" cy="' +
          y(p.tokens).toFixed(1) + '" fill="' + color + '"';
        // Thousands of points: small and plain (the bars carry the same figures); a few: labelled and focusable.
        svg.push(dense ? at + ' r="2"/>' : at + ' r="4" tabindex="0" role="button" aria-label="' + esc(c.name + ", " +
          p.label + ": " + int(p.tokens) + " input tokens") + '"><title>' + esc(c.name + " · " + p.label + " · " +
          int(p.tokens) + " input tokens") + "</title></circle>");
      });
    });
    svg.push("</svg>");
    var legend = '<div class="legend">' + series.map(function (c, s) {
      return '<span><i style="background:' + PALETTE[s % PALETTE.length] + '"></i>' + esc(c.name) + "</span>";
    }).join("") + "</div>";
    box.innerHTML = head + svg.join("") + legend;
  }

  function compact(v) {
    if (v >= 1e6) return (v / 1e6).toFixed(v % 1e6 ? 1 : 0) + "M";
    if (v >= 1e3) return (v / 1e3).toFixed(v % 1e3 ? 1 : 0) + "k";
    return String(v);
  }

  function splitHtml(sp) {
    if (!sp || !sp.wall) return '<p class="muted">No finished task to split.</p>';
    var parts = [["model", "Model calls", sp.model], ["tools", "Tools", sp.tools], ["own", "The agent's own work",
      sp.overhead]];
    return '<div class="splitbar" role="img" aria-label="' + esc(parts.map(function (p) {
      return p[1] + " " + pct(p[2], sp.wall); }).join(", ")) + '">' + parts.map(function (p) {
      return '<i class="sp-' + p[0] + '" style="width:' + (p[2] / sp.wall * 100) + '%"></i>'; }).join("") +
      '</div><ul class="splitkeys">' + parts.map(function (p) {
        return '<li><i class="sp-' + p[0] + '"></i>' + esc(p[1]) + '<span class="num">' + esc(dur(p[2])) +
          ' <span class="muted">' + pct(p[2], sp.wall) + "</span></span></li>";
      }).join("") + '<li class="muted">of ' + esc(dur(sp.wall)) + " wall time; overlapping calls counted once</li></ul>";
  }

  // -- tables -----------------------------------------------------------------------------------------------------
  function table(id, caption, columns, rows) {
    var all = view.all[id], shown = all ? rows : rows.slice(0, TABLE_ROWS);
    var head = columns.map(function (c) { return '<th scope="col"' + (c[1] ? ' class="num"' : "") + ">" + esc(c[0]) +
      "</th>"; }).join("");
    var body = shown.map(function (r) {
      return "<tr" + (r.err ? ' class="err"' : "") + ">" + r.cells.map(function (cell, k) {
        return "<td" + (columns[k][1] ? ' class="num"' : "") + ">" + cell + "</td>"; }).join("") + "</tr>";
    }).join("");
    var more = rows.length > TABLE_ROWS ? '<button class="btn showall" data-all="' + id + '">' +
      (all ? "Show the first " + TABLE_ROWS : "Show all " + int(rows.length)) + "</button>" : "";
    return '<section class="box" id="' + id + '" aria-labelledby="' + id + '-h"><h2 id="' + id + '-h">' +
      esc(caption) + "</h2>" + (rows.length ? '<div class="tw"><table><thead><tr>' + head + "</tr></thead><tbody>" +
      body + "</tbody></table></div>" + more : '<p class="none">None.</p>') + "</section>";
  }

  function nm(text) { return '<span class="nm">' + esc(text) + "</span>"; }

  function breakdownHtml(s) {
    var models = table("per-model", "Tokens and cost per model", [["model"], ["calls", 1], ["input", 1],
      ["output", 1], ["total", 1], ["cost", 1], ["time", 1], ["failed", 1]], s.models.map(function (m) {
      return { err: m.errors, cells: [nm(m.name), int(m.calls), int(m.prompt_tokens), int(m.completion_tokens),
        int(m.total_tokens), esc(cost(m.cost, m.unpriced_calls)), esc(dur(m.time)), int(m.errors)] };
    }));
    var agents = table("per-agent", "Tokens and cost per agent", [["agent"], ["runs", 1], ["failed", 1],
      ["model calls", 1], ["tokens", 1], ["cost", 1], ["time", 1]], s.agents.map(function (a) {
      return { err: a.failed, cells: [nm(a.name), int(a.runs), int(a.failed), int(a.calls || 0),
        int(a.total_tokens || 0), esc(cost(a.cost, a.unpriced_calls)), esc(dur(a.time))] };
    }));
    var tools = table("per-tool", "Calls and time per tool", [["tool"], ["calls", 1], ["failed", 1], ["total", 1],
      ["mean", 1], ["p95", 1], ["max", 1]], s.tools.map(function (t) {
      return { err: t.errors, cells: [nm(t.name), int(t.count), int(t.errors), esc(dur(t.total)), esc(dur(t.mean)),
        esc(dur(t.p95)), esc(dur(t.max))] };
    }));
    var slow = table("slowest", "Slowest calls", [["call"], ["agent"], ["task"], ["duration", 1], ["status"]],
      s.slowest.map(function (ref) {
        var r = s.tasks[ref.task].records[ref.record];
        return { err: r.status === "error", cells: ['<button class="link" data-goto="' + ref.task + ":" + ref.record +
          '" aria-label="Show ' + esc(KIND[r.kind] + " " + r.name) + ' in the timeline"><span class="kd k-' +
          r.kind + '" style="display:inline-block"></span> ' + esc(r.name) + "</button>", esc(r.agent || "–"),
          '<span class="mono">' + esc(s.tasks[ref.task].id) + "</span>", esc(dur(r.duration)),
          badge(r.status === "ok" ? "success" : r.status)] };
      }));
    var split = '<section class="box" id="time-split" aria-labelledby="time-split-h"><h2 id="time-split-h">' +
      'Time split over all tasks</h2><div class="box-b split">' + splitHtml(s.split) + "</div></section>";
    return '<div class="grid2" style="margin-bottom:18px">' + models + agents + "</div>" +
      '<div class="grid2" style="margin-bottom:18px">' + tools + split + "</div>" + slow;
  }

  function envHtml(s) {
    var env = s.environment || {};
    var keys = Object.keys(env);
    if (!keys.length) return "";
    var rows = keys.map(function (k) {
      var v = env[k];
      if (v && typeof v === "object") v = Object.keys(v).map(function (x) { return x + "=" + v[x]; }).join(", ");
      return "<dt>" + esc(k.replace(/_/g, " ")) + "</dt><dd>" + esc(v) + "</dd>";
    }).join("");
    return '<section class="box env"><details><summary class="box-h" style="cursor:pointer">Environment</summary>' +
      '<div class="box-b"><dl>' + rows + "</dl></div></details></section>";
  }

  // -- interaction --------------------------------------------------------------------------------------------------
  function afterRender() {
    if (!S) return;
    S.tasks.forEach(function (_t, n) { if (view.open[n]) drawTask(n); });
    if (view.sel) showDetails(view.sel[0], view.sel[1], false);
  }

  function record(n, i) { return S && S.tasks[n] && S.tasks[n].records[i]; }

  function showDetails(n, i, scroll) {
    var r = record(n, i);
    if (!r) { closeDetails(); return; }
    view.sel = [n, i];
    document.querySelectorAll(".wf-row.sel, .bar.sel").forEach(function (e) { e.classList.remove("sel"); });
    var row = document.querySelector("#wf-" + n + ' .wf-row[data-i="' + i + '"]');
    if (row) {
      row.classList.add("sel");
      row.querySelector(".bar").classList.add("sel");
      if (scroll) row.scrollIntoView({ block: "center" });
    }
    // Fields shown above (or as the error) are not repeated; the rest, known to this version or not, are listed.
    var f = r.fields || {}, skip = { start_time: 1, end_time: 1, duration: 1, status: 1, error_type: 1,
      error_message: 1, cost_estimate: 1, tokens_reported: 1 };
    var main = [["kind", KIND[r.kind]], ["status", r.status === "ok" ? "success" : r.status],
      ["duration", dur(r.duration)], ["starts at", "+" + dur(r.start / 1000) + " into the task"]];
    if (r.kind === "model") {
      main.push(["tokens", r.tokens_reported === false ? "not reported (unknown)" :
        int(r.input_tokens) + " in · " + int(r.output_tokens) + " out"]);
      main.push(["cost", cost(r.cost)]);
    }
    var rows = main.concat(Object.keys(f).filter(function (k) { return !skip[k]; }).map(function (k) {
      var v = f[k];
      return [k.replace(/_/g, " "), v && typeof v === "object" ? JSON.stringify(v) : v];
    }));
    drawer.innerHTML = '<button class="btn close" data-close aria-label="Close the details">Close</button>' +
      "<h2>" + esc(r.name) + '</h2><div class="muted">' + esc(KIND[r.kind]) + (r.agent ? " of " + esc(r.agent) : "") +
      " · task " + esc(S.tasks[n].id) + "</div>" + (r.error ? '<div class="err">' + esc(r.error) + "</div>" : "") +
      "<dl>" + rows.map(function (p) { return "<dt>" + esc(p[0]) + "</dt><dd>" + esc(p[1]) + "</dd>"; }).join("") +
      "</dl>";
    drawer.hidden = false;
  }

  function closeDetails() {
    view.sel = null;
    drawer.hidden = true;
    document.querySelectorAll(".wf-row.sel, .bar.sel").forEach(function (e) { e.classList.remove("sel"); });
  }

  function reveal(n, i) {
    // Opens the task, expands the record's ancestors and draws enough rows to show it.
    var t = S.tasks[n], d = document.querySelector('details.task[data-t="' + n + '"]');
    prepare(t);
    var collapsed = collapsedOf(n, t);
    for (var p = t.records[i].parent; p != null; p = t.records[p].parent) delete collapsed[p];
    var position = visibleRows(n, t).indexOf(i);
    if (position >= (view.limit[n] || ROWS)) view.limit[n] = position + 1;
    if (d && !d.open) { view.open[n] = true; d.open = true; drawTask(n); } else drawWaterfall(n);
  }

  function goTo(n, i) {
    reveal(n, i);
    showDetails(n, i, true);
  }

  function showTip(bar, x, y) {
    var box = bar.closest("[id^=wf-]"), n = box ? +box.id.slice(3) : null, r = record(n, +bar.dataset.i);
    if (!r) return;
    var lines = ["<b>" + esc(r.name) + "</b> <span>" + esc(KIND[r.kind]) + "</span>", esc(dur(r.duration)) +
      (r.agent && r.kind !== "agent" ? " · " + esc(r.agent) : "")];
    if (r.kind === "model") lines.push(r.tokens_reported === false ? "usage not reported" :
      int(r.input_tokens) + " in · " + int(r.output_tokens) + " out · " + esc(cost(r.cost)));
    if (r.kind === "step") lines.push(int(r.input_tokens) + " input tokens");
    if (r.error) lines.push('<span class="e">' + esc(r.error.length > 160 ? r.error.slice(0, 160) + "…" : r.error) +
      "</span>");
    tip.innerHTML = lines.join("<br>");
    tip.hidden = false;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    tip.style.left = Math.max(4, Math.min(innerWidth - w - 4, x + 12)) + "px";
    tip.style.top = (y + h + 20 > innerHeight ? y - h - 12 : y + 16) + "px";
  }

  app.addEventListener("click", function (e) {
    var el = e.target.closest("button, circle.pt, .wf-row");
    if (!el) return;
    var wf = el.closest("[id^=wf-]"), n = wf ? +wf.id.slice(3) : null, ds = el.dataset;
    if (ds.tg != null) {
      var set = collapsedOf(n, S.tasks[n]);
      if (set[ds.tg]) delete set[ds.tg]; else set[ds.tg] = true;
      drawWaterfall(n);
      var again = document.querySelector("#wf-" + n + ' [data-tg="' + ds.tg + '"]');
      if (again) again.focus();
    } else if (el.classList.contains("bar") || el.classList.contains("wf-row")) {
      showDetails(n, +ds.i, false);
    } else if (el.classList.contains("pt")) {
      var ctx = el.closest("[id^=ctx-]");
      goTo(+ctx.id.slice(4), +ds.i);
    } else if (ds.expand != null) {
      view.collapsed[ds.expand] = {};
      drawWaterfall(+ds.expand);
    } else if (ds.collapse != null) {
      var t = S.tasks[ds.collapse], c = {};
      t.records.forEach(function (r, i) { if (r.kind === "step" && t._kids[i]) c[i] = true; });
      view.collapsed[ds.collapse] = c;
      drawWaterfall(+ds.collapse);
    } else if (ds.more != null) {
      view.limit[ds.more] = (view.limit[ds.more] || ROWS) + ROWS;
      drawWaterfall(+ds.more);
    } else if (ds.all != null) {
      view.all[ds.all] = !view.all[ds.all];
      rerender();
    } else if (ds.goto != null) {
      var p = ds.goto.split(":");
      goTo(+p[0], +p[1]);
    } else if (ds.finding != null) {
      var refs = S.findings[+ds.finding].refs;
      document.querySelectorAll(".wf-row.hit").forEach(function (r) { r.classList.remove("hit"); });
      refs.forEach(function (ref) { reveal(ref[0], ref[1]); });
      refs.forEach(function (ref) {
        var row = document.querySelector("#wf-" + ref[0] + ' .wf-row[data-i="' + ref[1] + '"]');
        if (row) row.classList.add("hit");
      });
      if (refs.length) showDetails(refs[0][0], refs[0][1], true);
    } else if (ds.tab != null) {
      view.tab = ds.tab;
      view.sel = null; view.open = {}; view.collapsed = {}; view.limit = {};
      closeDetails();
      renderCompare();
    }
  });
  app.addEventListener("keydown", function (e) {
    if ((e.key === "Enter" || e.key === " ") && e.target.matches && e.target.matches("circle.pt")) {
      e.preventDefault();
      e.target.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    }
  });
  app.addEventListener("toggle", function (e) {
    var d = e.target;
    if (!d.matches || !d.matches("details.task")) return;
    var n = +d.dataset.t, body = document.getElementById("task-" + n);
    view.open[n] = d.open;
    // Opening by hand draws the task; a page drawn with the task open fires this too, after drawing it.
    if (d.open && body && !body.hasChildNodes()) drawTask(n);
  }, true);
  app.addEventListener("mouseover", function (e) {
    var bar = e.target.closest && e.target.closest(".bar");
    if (bar) showTip(bar, e.clientX, e.clientY);
  });
  app.addEventListener("mousemove", function (e) {
    if (!tip.hidden && e.target.closest && e.target.closest(".bar")) showTip(e.target.closest(".bar"), e.clientX,
      e.clientY);
  });
  app.addEventListener("mouseout", function (e) {
    if (e.target.closest && e.target.closest(".bar")) tip.hidden = true;
  });
  app.addEventListener("focusin", function (e) {
    if (e.target.classList && e.target.classList.contains("bar")) {
      var rect = e.target.getBoundingClientRect();
      showTip(e.target, rect.left, rect.bottom - 10);
    }
  });
  app.addEventListener("focusout", function () { tip.hidden = true; });
  drawer.addEventListener("click", function (e) { if (e.target.closest("[data-close]")) closeDetails(); });
  document.addEventListener("keydown", function (e) { if (e.key === "Escape" && !drawer.hidden) closeDetails(); });
  var resizeTimer = null;
  addEventListener("resize", function () {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(function () {
      if (S) S.tasks.forEach(function (_t, n) {
        if (view.open[n] && document.getElementById("ctx-" + n)) { drawWaterfall(n); drawContext(n); }
      });
    }, 150);
  });

  function rerender() {
    var y = scrollY;
    if (DATA.kind === "compare") renderCompare(); else render();
    scrollTo(0, y);
  }

  // -- two sessions side by side --------------------------------------------------------------------------------
  function renderCompare() {
    var a = DATA.a, b = DATA.b, c = DATA.comparison;
    var tabs = [["compare", "Comparison"], ["a", "A · " + a.id], ["b", "B · " + b.id]];
    var html = '<main id="main" class="wrap"><header class="top"><h1>' + brand() + " Comparison</h1>" +
      '<span class="meta">A ' + esc(c.label_a) + " · B " + esc(c.label_b) + "</span></header>" +
      '<div class="tabs" role="tablist">' + tabs.map(function (tb) {
        return '<button role="tab" data-tab="' + tb[0] + '" aria-selected="' + (view.tab === tb[0]) + '">' +
          esc(tb[1]) + "</button>"; }).join("") + "</div>";
    if (view.tab === "compare") {
      S = null;
      html += compareHtml(c) + "</main>";
      app.innerHTML = html;
      return;
    }
    S = view.tab === "a" ? a : b;
    app.innerHTML = html + sessionHtml(S) + "</main>";
    afterRender();
  }

  function delta(x, y, fmt, lowerIsBetter) {
    if (x == null || y == null) return { cls: x == null && y == null ? "" : "gone", text: "–" };
    if (x === y) return { cls: "", text: "=" };
    var d = y - x, rel = x ? " (" + (d > 0 ? "+" : "") + (d / x * 100).toFixed(0) + "%)" : "";
    var cls = lowerIsBetter === null ? "chg" : (lowerIsBetter === false ? d < 0 : d > 0) ? "up" : "down";
    return { cls: cls, text: (d > 0 ? "+" : "−") + fmt(Math.abs(d)) + rel };
  }

  // More tasks or agent runs is neither better nor worse: only marked as changed.
  var FIGS = [["duration", "Duration", dur], ["tasks", "Tasks", int, null], ["failed_tasks", "Failed tasks", int],
    ["agent_runs", "Agent runs", int, null], ["model_calls", "Model calls", int], ["tool_calls", "Tool calls", int],
    ["prompt_tokens", "Input tokens", int], ["completion_tokens", "Output tokens", int],
    ["total_tokens", "Total tokens", int], ["cost", "Estimated cost", function (v) { return cost(v); }]];
  var ROWFIGS = [["calls", "calls", int], ["tokens", "tokens", int], ["cost", "cost", function (v) { return cost(v); }],
    ["time", "time", dur]];

  function compareHtml(c) {
    var ha = DATA.a.header, hb = DATA.b.header;
    var head = '<section class="box" id="compare-figures" aria-labelledby="cf-h"><h2 id="cf-h">Sessions</h2>' +
      '<div class="tw"><table><thead><tr><th scope="col">figure</th><th class="num" scope="col">A</th>' +
      '<th class="num" scope="col">B</th><th class="num" scope="col">B − A</th></tr></thead><tbody>' +
      '<tr><td>status</td><td class="num">' + badge(ha.status) + '</td><td class="num">' + badge(hb.status) +
      "</td><td></td></tr>" + FIGS.map(function (f) {
        var d = delta(ha[f[0]], hb[f[0]], f[2], f[3]);
        return '<tr data-fig="' + f[0] + '"><td>' + esc(f[1]) + '</td><td class="num">' + esc(f[2](ha[f[0]])) +
          '</td><td class="num">' + esc(f[2](hb[f[0]])) + '</td><td class="num ' + d.cls + '">' + esc(d.text) +
          "</td></tr>";
      }).join("") + "</tbody></table></div></section>";
    var pairs = c.pairs.map(function (p, k) {
      var cols = "<th scope=\"col\">agent run and step</th>" + ROWFIGS.map(function (f) {
        return '<th class="num" scope="col">' + f[1] + ' A</th><th class="num" scope="col">' + f[1] +
          ' B</th><th class="num" scope="col">Δ</th>'; }).join("");
      var rows = p.rows.map(function (r) {
        var changed = false;
        var cells = ROWFIGS.map(function (f) {
          var va = r.a ? r.a[f[0]] : null, vb = r.b ? r.b[f[0]] : null, d = delta(va, vb, f[2]);
          if (d.cls) changed = true;
          return '<td class="num' + (r.a ? "" : " gone") + '">' + (r.a ? esc(f[2](va)) : "–") + '</td><td class="num' +
            (r.b ? "" : " gone") + '">' + (r.b ? esc(f[2](vb)) : "–") + '</td><td class="num ' + d.cls + '">' +
            esc(d.text) + "</td>";
        }).join("");
        var status = (r.a && r.a.failed) || (r.b && r.b.failed) ? ' class="err"' : "";
        return "<tr" + status + (changed ? ' data-changed="1"' : "") + '><td style="padding-left:' +
          (10 + r.depth * 14) + 'px">' + (r.kind === "agent" ? "<b>" + esc(r.label) + "</b>" : esc(r.label)) +
          (r.a ? "" : ' <span class="badge running">only in B</span>') +
          (r.b ? "" : ' <span class="badge running">only in A</span>') + "</td>" + cells + "</tr>";
      }).join("");
      return '<section class="box" aria-labelledby="pair-' + k + '"><h2 id="pair-' + k + '">Task ' +
        '<span class="mono">' + esc(p.task_a || "–") + "</span> vs <span class=\"mono\">" + esc(p.task_b || "–") +
        '</span></h2><div class="tw"><table><thead><tr>' + cols + "</tr></thead><tbody>" + rows +
        "</tbody></table></div></section>";
    }).join("");
    return head + pairs;
  }

  // -- the dashboard's session list (sop-telemetry ui) ----------------------------------------------------------
  function api(path, params) {
    var q = new URLSearchParams(params || {});
    q.set("token", TOKEN);
    return fetch(path + "?" + q.toString(), { cache: "no-store" }).then(function (r) {
      if (r.ok) return r.json();
      return r.text().then(function (text) { throw new Error(text.trim() || String(r.status)); });
    });
  }

  var FILTERS = [["since", "since", "7d, 2026-01-31"], ["until", "until", ""], ["agent", "agent", ""],
    ["model", "model", ""], ["tool", "tool", ""]];

  function renderList() {
    var form = '<form class="filters" id="filters" aria-label="Filter sessions">' + FILTERS.map(function (f) {
      return "<label>" + f[1] + '<input name="' + f[0] + '" placeholder="' + esc(f[2]) + '"></label>'; }).join("") +
      '<label>status<select name="status"><option value="">any</option>' + ["running", "completed", "failed",
      "cancelled", "pending"].map(function (s) { return "<option>" + s + "</option>"; }).join("") +
      '</select></label><button class="btn" type="submit">Filter</button></form>';
    app.innerHTML = '<main id="main" class="wrap"><header class="top"><h1>' + brand() + " Sessions</h1>" +
      '<span class="meta">' + esc(DATA.directory || "") + '</span><span class="live"><i></i>live</span></header>' +
      '<section class="box">' + form + '<div id="list"><p class="none">Loading…</p></div></section></main>';
    var filters = DATA.filters || {};
    Object.keys(filters).forEach(function (k) {
      var input = document.querySelector('#filters [name="' + k + '"]');
      if (input) input.value = filters[k];
    });
    document.getElementById("filters").addEventListener("submit", function (e) { e.preventDefault(); loadList(); });
    loadList();
    setInterval(loadList, 5000);
  }

  function loadList() {
    var params = {};
    new FormData(document.getElementById("filters")).forEach(function (v, k) { if (v) params[k] = v; });
    api("/api/sessions", params).then(function (rows) {
      var box = document.getElementById("list");
      if (!rows.length) { box.innerHTML = '<p class="none">No sessions match.</p>'; return; }
      box.innerHTML = '<div class="tw"><table><thead><tr><th scope="col">session</th><th scope="col">started</th>' +
        '<th class="num" scope="col">duration</th><th class="num" scope="col">tasks</th><th class="num" ' +
        'scope="col">failed</th><th class="num" scope="col">tokens</th><th class="num" scope="col">cost</th>' +
        "</tr></thead><tbody>" + rows.slice().reverse().map(function (r) {
          return "<tr" + (r.failed_tasks ? ' class="err"' : "") + '><td><a class="mono" href="/session/' +
            encodeURIComponent(r.session_id) + "?token=" + encodeURIComponent(TOKEN) + '">' + esc(r.session_id) +
            "</a>" + (r.running ? ' <span class="badge running">running</span>' : "") + "</td><td>" +
            esc(when(r.start_time)) + '</td><td class="num">' + esc(dur(r.duration)) + '</td><td class="num">' +
            int(r.tasks) + '</td><td class="num">' + int(r.failed_tasks) + '</td><td class="num">' +
            int(r.total_tokens) + '</td><td class="num">' + esc(cost(r.cost, r.unpriced_calls)) + "</td></tr>";
        }).join("") + "</tbody></table></div>";
    }).catch(function (err) {
      document.getElementById("list").innerHTML = '<p class="none">Cannot load the list: ' + esc(err.message) + "</p>";
    });
  }

  // A session still being written: poll its stamp (size and mtime) and redraw when it changes.
  function watch() {
    var live = DATA.live, busy = false;
    setInterval(function () {
      if (busy) return;
      busy = true;
      api(live.stamp_url).then(function (r) {
        if (r.stamp === live.stamp) return null;
        live.stamp = r.stamp;
        return api(live.data_url).then(function (d) { DATA.session = d.session; rerender(); });
      }).catch(function () { /* the next poll tries again */ }).then(function () { busy = false; });
    }, live.interval || 1500);
  }

  render();
  if (DATA.live) watch();
})();
