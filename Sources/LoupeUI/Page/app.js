// Loupe's service map and flow table. Everything in a flow is chosen by a pod (paths, headers,
// DNS names): it is only ever set as text (textContent, createTextNode, attribute values) —
// never as markup. The server's Content-Security-Policy forbids inline script as well.
"use strict";

const SVGNS = "http://www.w3.org/2000/svg";
const CARD_W = 170, CARD_H = 58, BOX_PAD = 12, BOX_HEAD = 24, GAP_Y = 12, INNER_GAP = 50, BOX_GAP = 50, ROW_GAP = 50, MAX_ROWS = 500;
const $ = (id) => document.getElementById(id);

const state = {
  graph: null,            // the last /api/graph answer
  version: -1,            // the graph version it had
  serverVersion: 0,       // the newest version the live stream announced
  fetching: false, lastFetch: 0,
  paused: false, missed: 0,
  selection: null,        // {kind: "node", id} | {kind: "edge", source, destination}
  rows: [],               // [{uuid, line, flow}] newest first
  seen: new Set(),
  nsOrder: [],            // namespace boxes in first-seen order (the layout stays put)
  nodeOrder: new Map(),   // node id -> first-seen index within its box
  rank: new Map(),        // node id -> its column inside the box (see assignRanks)
  namespacesKnown: [],
  skipped: 0,
  fresh: [],              // live rows not drawn yet
  events: null,
};

// ---- DOM helpers (text only) ----
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function svg(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); }
function clip(s, n) { s = String(s); return s.length > n ? s.slice(0, n - 1) + "…" : s; }

// ---- filters → query parameters (loupe observe's names) ----
function selectedNamespaces() {
  if ($("ns-all").checked) return [];
  return [...document.querySelectorAll("#ns-list input:checked")].map((i) => i.value);
}
function flowParams() {
  const p = new URLSearchParams();
  for (const ns of selectedNamespaces()) p.append("namespace", ns);
  const add = (name, id) => { const v = $(id).value.trim(); if (v) p.append(name, v); };
  add("verdict", "f-verdict"); add("http-status", "f-status"); add("protocol", "f-protocol");
  add("pod", "f-pod"); add("ip", "f-ip"); add("port", "f-port"); add("since", "f-since");
  return p;
}
function graphParams() {
  const p = new URLSearchParams();
  for (const ns of selectedNamespaces()) p.append("namespace", ns);
  const v = $("f-verdict").value, pr = $("f-protocol").value, s = $("f-since").value;
  if (v) p.set("verdict", v);
  if (pr) p.set("protocol", pr);
  if (s) p.set("since", s);
  return p;
}
function liveParams() { const p = flowParams(); p.delete("since"); return p; }

// ---- the map ----
function nodeIdOf(ep, names) {
  if (ep && ep.namespace) {
    const w = (ep.workloads || [])[0];
    let name = w && w.name;
    if (!name) { const app = (ep.labels || []).find((l) => l.startsWith("k8s:app=")); name = app ? app.slice(8) : (ep.pod_name || "unknown"); }
    return ep.namespace + "/" + name;
  }
  if ((ep && ep.labels || []).includes("reserved:host")) return "host";
  return (names && names[0]) || "world";
}
function flowEnds(f) {
  const reply = !!f.is_reply;
  const client = reply ? nodeIdOf(f.destination, f.destination_names) : nodeIdOf(f.source, f.source_names);
  const server = reply ? nodeIdOf(f.source, f.source_names) : nodeIdOf(f.destination, f.destination_names);
  const l4 = f.l4 || {}, ports = l4.TCP || l4.UDP || {};
  const port = reply ? ports.source_port : ports.destination_port;
  return { client, server, port };
}

// A card's column inside its namespace box: 0 for workloads nobody calls, one more than their
// callers otherwise (at most 3). Given once, when the card first appears, so cards stay put
// while counts change and new workloads arrive.
function assignRanks(graph) {
  const callers = new Map();
  for (const e of graph.edges) {
    if (e.source === e.destination) continue;
    if (!callers.has(e.destination)) callers.set(e.destination, []);
    callers.get(e.destination).push(e.source);
  }
  const rank = (id, depth) => {
    if (state.rank.has(id)) return state.rank.get(id);
    if (depth > 6) return 0;
    let r = 0;
    for (const c of callers.get(id) || []) r = Math.max(r, rank(c, depth + 1) + 1);
    return Math.min(r, 3);
  };
  for (const n of graph.nodes) if (!state.rank.has(n.id)) state.rank.set(n.id, rank(n.id, 0));
}

function layout(graph) {
  assignRanks(graph);
  const OUTSIDE = "(outside the cluster)";
  const boxes = new Map();
  for (const n of graph.nodes) {
    const b = n.namespace || OUTSIDE;
    if (!state.nodeOrder.has(n.id)) state.nodeOrder.set(n.id, state.nodeOrder.size);
    if (!boxes.has(b)) boxes.set(b, []);
    boxes.get(b).push(n);
  }
  // New boxes join the end, callers' namespaces before the namespaces they call.
  const minRank = (b) => Math.min(...boxes.get(b).map((n) => state.rank.get(n.id)));
  const fresh = [...boxes.keys()].filter((b) => !state.nsOrder.includes(b));
  fresh.sort((p, q) => minRank(p) - minRank(q) || (p < q ? -1 : 1));
  state.nsOrder.push(...fresh);
  const order = state.nsOrder.filter((b) => boxes.has(b) && b !== OUTSIDE);
  if (boxes.has(OUTSIDE)) order.push(OUTSIDE);
  const paneWidth = Math.max(($("map-pane").clientWidth || 900) - 10, 400);
  const pos = new Map(), boxRects = [];
  let x = 20, y = 20, rowHeight = 0, width = 0;
  for (const b of order) {
    const nodes = boxes.get(b).sort((p, q) => state.nodeOrder.get(p.id) - state.nodeOrder.get(q.id));
    const ranks = [...new Set(nodes.map((n) => state.rank.get(n.id)))].sort();
    const columns = ranks.map((r) => nodes.filter((n) => state.rank.get(n.id) === r));
    const w = columns.length * CARD_W + (columns.length - 1) * INNER_GAP + 2 * BOX_PAD;
    const h = BOX_HEAD + Math.max(...columns.map((c) => c.length)) * (CARD_H + GAP_Y) - GAP_Y + BOX_PAD;
    if (x > 20 && x + w > paneWidth) { x = 20; y += rowHeight + ROW_GAP; rowHeight = 0; }
    boxRects.push({ name: b, x, y, w, h });
    columns.forEach((col, i) => col.forEach((n, j) => pos.set(n.id, {
      x: x + BOX_PAD + i * (CARD_W + INNER_GAP), y: y + BOX_HEAD + j * (CARD_H + GAP_Y), node: n })));
    x += w + BOX_GAP;
    width = Math.max(width, x);
    rowHeight = Math.max(rowHeight, h);
  }
  return { pos, boxRects, width: width - BOX_GAP + 20, height: y + rowHeight + 30 };
}

function pairsOf(graph) {
  const pairs = new Map();
  for (const e of graph.edges) {
    const key = e.source + "\u0000" + e.destination;
    if (!pairs.has(key)) pairs.set(key, { source: e.source, destination: e.destination, edges: [] });
    pairs.get(key).edges.push(e);
  }
  return [...pairs.values()];
}
function verdictMix(edges) {
  let fwd = 0, drop = 0;
  for (const e of edges) { fwd += (e.verdicts.FORWARDED || 0) + (e.verdicts.AUDIT || 0); drop += (e.verdicts.DROPPED || 0) + (e.verdicts.ERROR || 0); }
  return { dropped: drop > 0, mixed: drop > 0 && fwd > 0 };
}

// The map's elements, kept by key and updated in place: a redraw once a second touches only
// what changed (no flicker, focus kept, cheap on busy maps).
const mapEls = { ready: false, boxes: new Map(), edges: new Map(), cards: new Map() };
function setAttrs(e, attrs) {
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null) { if (e.hasAttribute(k)) e.removeAttribute(k); } else if (e.getAttribute(k) !== String(v)) e.setAttribute(k, String(v));
  }
}
function setText(e, t) { t = String(t); if (e.textContent !== t) e.textContent = t; }
function activate(grp, onSelect) {
  grp.addEventListener("click", onSelect);
  grp.addEventListener("keydown", (ev) => { if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); onSelect(); } });
}
function mapLayers(map) {
  if (mapEls.ready) return;
  const defs = svg("defs");
  for (const [id, color] of [["arrow", "#5b6578"], ["arrow-red", "#c62828"]]) {
    const m = svg("marker", { id, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
    m.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: color }));
    defs.append(m);
  }
  mapEls.boxLayer = svg("g", { class: "boxes" });
  mapEls.edgeLayer = svg("g", { class: "edges" });
  mapEls.cardLayer = svg("g", { class: "cards" });
  mapEls.note = svg("text", { x: 20, "font-size": 11, fill: "#6b7385" });
  map.append(defs, mapEls.boxLayer, mapEls.edgeLayer, mapEls.cardLayer, mapEls.note);
  mapEls.ready = true;
}
function keep(els, live) { for (const [k, e] of els) if (!live.has(k)) { e.remove(); els.delete(k); } }

function drawMap() {
  const g = state.graph, map = $("map");
  if (!g) return;
  mapLayers(map);
  $("map-empty").hidden = g.nodes.length > 0;
  const { pos, boxRects, width, height } = layout(g);
  setAttrs(map, { width, height, viewBox: `0 0 ${width} ${height}` });

  const liveBoxes = new Set();
  for (const b of boxRects) {
    liveBoxes.add(b.name);
    let e = mapEls.boxes.get(b.name);
    if (!e) {
      e = svg("g", { class: "box", "data-namespace": b.name });
      e.append(svg("rect", { rx: 8, fill: "#e9edf4", stroke: "#c3cad8" }), svg("text", { "font-size": 12, "font-weight": 600, fill: "#4a5366" }));
      mapEls.boxLayer.append(e);
      mapEls.boxes.set(b.name, e);
    }
    setAttrs(e.children[0], { x: b.x, y: b.y, width: b.w, height: b.h });
    setAttrs(e.children[1], { x: b.x + 10, y: b.y + 16 });
    setText(e.children[1], clip(b.name, 30));
  }
  keep(mapEls.boxes, liveBoxes);

  const liveEdges = new Set();
  for (const pair of pairsOf(g)) {
    const a = pos.get(pair.source), b = pos.get(pair.destination);
    if (!a || !b) continue;
    const key = pair.source + "\u0000" + pair.destination;
    liveEdges.add(key);
    const mix = verdictMix(pair.edges);
    let d;
    const ya = a.y + CARD_H / 2, yb = b.y + CARD_H / 2;
    if (a === b) {
      const xr = a.x + CARD_W;
      d = `M${xr},${ya - 10} C${xr + 50},${ya - 40} ${xr + 50},${ya + 40} ${xr},${ya + 10}`;
    } else if (b.x >= a.x + CARD_W) {        // left to right
      const x1 = a.x + CARD_W, x2 = b.x, dx = Math.max((x2 - x1) / 2, 20);
      d = `M${x1},${ya} C${x1 + dx},${ya} ${x2 - dx},${yb} ${x2},${yb}`;
    } else if (b.x + CARD_W <= a.x) {        // right to left
      const x1 = a.x, x2 = b.x + CARD_W, dx = Math.max((x1 - x2) / 2, 20);
      d = `M${x1},${ya} C${x1 - dx},${ya} ${x2 + dx},${yb} ${x2},${yb}`;
    } else {                                 // same column: around the right side
      const xr = a.x + CARD_W, bend = xr + 30 + Math.min(50, Math.abs(yb - ya) / 5);
      d = `M${xr},${ya} C${bend},${ya} ${bend},${yb} ${xr},${yb}`;
    }
    const requests = pair.edges.reduce((n, e) => n + e.requests, 0);
    const label = `${pair.source} → ${pair.destination}: ${pair.edges.map((e) => e.port + "/" + e.protocol).join(", ")}, ${requests} requests` +
      (mix.dropped ? (mix.mixed ? ", some dropped" : ", dropped") : "");
    let e = mapEls.edges.get(key);
    if (!e) {
      e = svg("g", { class: "edge", tabindex: 0, role: "button", "data-source": pair.source, "data-destination": pair.destination });
      e.append(svg("title"), svg("path", { fill: "none", stroke: "transparent", "stroke-width": 12 }), svg("path", { fill: "none", class: "edge-line" }));
      activate(e, () => select({ kind: "edge", source: pair.source, destination: pair.destination }));
      mapEls.edgeLayer.append(e);
      mapEls.edges.set(key, e);
    }
    const sel = state.selection && state.selection.kind === "edge" && state.selection.source === pair.source && state.selection.destination === pair.destination;
    setAttrs(e, { "aria-label": label, "data-dropped": mix.dropped ? "true" : "false", "data-mixed": mix.mixed ? "true" : "false" });
    setText(e.children[0], label);
    setAttrs(e.children[1], { d });
    setAttrs(e.children[2], { d, stroke: mix.dropped ? "#c62828" : "#5b6578", "stroke-width": sel ? 3.5 : 1.8,
      "marker-end": `url(#${mix.dropped ? "arrow-red" : "arrow"})`, "stroke-dasharray": mix.mixed ? "6 4" : null });
  }
  keep(mapEls.edges, liveEdges);

  const liveCards = new Set();
  for (const { x, y, node } of pos.values()) {
    liveCards.add(node.id);
    const sel = state.selection && state.selection.kind === "node" && state.selection.id === node.id;
    const access = node.access.map((p) => p.port + "/" + p.l4 + (p.l7 ? " " + p.l7 : "")).join("  ");
    const label = `${node.kind === "more" ? node.name + " in " + node.namespace : node.id}${access ? ", access " + access : ""}, ${node.flows} flows${node.dropped ? ", " + node.dropped + " dropped" : ""}`;
    let e = mapEls.cards.get(node.id);
    if (!e) {
      e = svg("g", { class: "card", tabindex: 0, role: "button", "data-id": node.id });
      e.append(svg("title"), svg("rect", { width: CARD_W, height: CARD_H, rx: 6 }),
        svg("text", { "font-size": 13, "font-weight": 600, fill: "#1d2330", class: "card-name" }),
        svg("text", { "font-size": 11, fill: "#4a5366" }), svg("text", { "font-size": 11 }));
      activate(e, () => select({ kind: "node", id: node.id }));
      mapEls.cardLayer.append(e);
      mapEls.cards.set(node.id, e);
    }
    setAttrs(e, { "aria-label": label, "data-kind": node.kind });
    setText(e.children[0], label);
    setAttrs(e.children[1], { x, y, fill: node.kind === "more" ? "#f1f2f5" : "#fff",
      stroke: sel ? "#2f7de1" : (node.dropped ? "#c62828" : "#9aa3b5"), "stroke-width": sel ? 3 : 1.2 });
    setAttrs(e.children[2], { x: x + 10, y: y + 20 });
    setText(e.children[2], clip(node.name, 24));
    setAttrs(e.children[3], { x: x + 10, y: y + 36 });
    setText(e.children[3], clip(access || (node.kind === "world" ? "outside the cluster" : node.kind === "more" ? "not drawn (busiest first)" : "client only"), 30));
    setAttrs(e.children[4], { x: x + 10, y: y + 51, fill: node.dropped ? "#c62828" : "#6b7385" });
    setText(e.children[4], `${node.flows} flows` + (node.dropped ? ` · ${node.dropped} dropped` : ""));
  }
  keep(mapEls.cards, liveCards);

  const hidden = g.hidden && (g.hidden.nodes || g.hidden.edges);
  setAttrs(mapEls.note, { y: height - 6 });
  setText(mapEls.note, hidden ? `Not drawn: ${g.hidden.nodes} workloads (in "+N more" cards), ${g.hidden.edges} connections — narrow the namespaces to see them.` : "");
}

function updateNamespaces(list) {
  const known = state.namespacesKnown;
  const added = list.filter((n) => !known.includes(n));
  if (!added.length) return;
  for (const ns of added) {
    known.push(ns);
    const input = el("input", { type: "checkbox", value: ns, "data-namespace": ns });
    input.checked = false;
    input.addEventListener("change", () => {
      $("ns-all").checked = document.querySelectorAll("#ns-list input:checked").length === 0;
      filtersChanged();
    });
    $("ns-list").append(el("label", {}, input, " " + ns));
  }
}

// ---- the selection panel ----
function select(sel) {
  state.selection = sel;
  drawMap();
  drawSelection();
  loadFlows();
}
function drawSelection() {
  const body = $("sel-body"), g = state.graph, sel = state.selection;
  clear(body);
  $("sel-hint").hidden = !!sel;
  if (!sel || !g) { $("sel-title").textContent = "Nothing selected"; return; }
  if (sel.kind === "node") {
    const n = g.nodes.find((x) => x.id === sel.id);
    $("sel-title").textContent = n && n.kind === "more" ? `${n.name} in ${n.namespace}` : sel.id;
    if (!n) return;
    body.append(el("p", {}, `${n.kind} · ${n.flows} flows · ${n.dropped} dropped`));
    if (n.access.length) body.append(el("p", {}, "Access points: " + n.access.map((p) => p.port + "/" + p.l4 + (p.l7 ? " " + p.l7 : "")).join(", ")));
    drawEndpoints(body, n.id);
    const names = (g.dns_names || {})[n.id] || [];
    if (names.length) body.append(el("p", {}, "DNS names queried: " + names.map((x) => `${x.name} (${x.queries})`).join(", ")));
  } else {
    $("sel-title").textContent = `${sel.source} → ${sel.destination}`;
    const edges = g.edges.filter((e) => e.source === sel.source && e.destination === sel.destination);
    const t = el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "Port"), el("th", {}, "Requests"), el("th", {}, "Verdicts"), el("th", {}, "Status"), el("th", {}, "p50 / p95"))));
    const tb = el("tbody");
    for (const e of edges) {
      const v = Object.entries(e.verdicts).map(([k, c]) => `${k} ${c}`).join(", ");
      const s = Object.entries(e.http_status).concat(Object.entries(e.dns_rcodes)).map(([k, c]) => `${k} ${c}`).join(", ");
      const l = e.latency_ms ? `${e.latency_ms.p50} / ${e.latency_ms.p95} ms` : "";
      tb.append(el("tr", {}, el("td", {}, `${e.port}/${e.protocol}`), el("td", {}, e.requests), el("td", {}, v), el("td", {}, s), el("td", {}, l)));
    }
    t.append(tb); body.append(t);
    if (((g.endpoints || {})[sel.destination] || []).length) {
      body.append(el("p", { class: "muted" }, `HTTP endpoints of ${sel.destination} (all its callers):`));
      drawEndpoints(body, sel.destination);
    }
  }
}
function drawEndpoints(body, id) {
  const eps = (state.graph.endpoints || {})[id] || [];
  if (!eps.length) return;
  const t = el("table", { id: "endpoints" }, el("thead", {}, el("tr", {}, el("th", {}, "HTTP endpoint"), el("th", {}, "Calls"), el("th", {}, "Statuses"))));
  const tb = el("tbody");
  for (const e of eps) {
    const st = Object.entries(e.statuses).sort().map(([c, k]) => `${c}×${k}`).join(" ");
    tb.append(el("tr", {}, el("td", {}, (e.method ? e.method + " " : "") + e.path), el("td", {}, e.requests), el("td", {}, st)));
  }
  t.append(tb); body.append(t);
}

// ---- flows ----
function selectionParams(p) {
  const sel = state.selection;
  if (!sel) return p;
  const side = (id) => {
    if (id === "host") return [["label", "reserved:host"]];
    if (id === "world") return [["label", "reserved:world"]];
    const slash = id.indexOf("/");
    if (slash < 0) return [["fqdn", id]];
    const ns = id.slice(0, slash), name = id.slice(slash + 1);
    if (name === "+more") return [["namespace", ns]];
    return [["namespace", ns], ["workload", name]];
  };
  const id = sel.kind === "node" ? sel.id : sel.source;
  for (const [k, v] of side(id)) { p.delete(k); p.append(k, v); }
  return p;
}
function matchesSelection(f) {
  const sel = state.selection;
  if (!sel) return true;
  const { client, server, port } = flowEnds(f);
  if (sel.kind === "node") return client === sel.id || server === sel.id || (sel.id.endsWith("/+more") && (client.startsWith(sel.id.slice(0, -5)) || server.startsWith(sel.id.slice(0, -5))));
  return client === sel.source && server === sel.destination;
}
function matchesText(f) {
  const q = $("f-text").value.trim().toLowerCase();
  if (!q) return true;
  return rowText(f).toLowerCase().includes(q);
}
function l7Info(f) {
  const l7 = f.l7;
  if (l7 && l7.http) {
    const h = l7.http;
    return (h.code ? `${h.code} ` : "") + `${h.method} ${h.url}` + (l7.latency_ns && l7.type === "RESPONSE" ? ` ${(Number(l7.latency_ns) / 1e6).toFixed(1)}ms` : "");
  }
  if (l7 && l7.dns) {
    const d = l7.dns;
    return `DNS ${l7.type === "RESPONSE" ? "answer" : "query"} ${d.query}` + ((d.ips || []).length ? " → " + d.ips.join(", ") : "");
  }
  return f.Summary || "";
}
function endpointText(ep, names, ip) {
  if (ep && ep.namespace) return `${ep.namespace}/${ep.pod_name || ""}`;
  return (names && names[0]) || ip || "world";
}
function rowText(f) {
  return [endpointText(f.source, f.source_names, (f.IP || {}).source), endpointText(f.destination, f.destination_names, (f.IP || {}).destination), l7Info(f), f.verdict, f.Summary].join(" ");
}
function addRows(lines, atTop) {
  const added = [];
  for (const line of lines) {
    let rec;
    try { rec = JSON.parse(line); } catch (e) { continue; }
    const f = rec.flow;
    if (!f || state.seen.has(f.uuid)) continue;
    state.seen.add(f.uuid);
    const row = { uuid: f.uuid, line, flow: f };
    if (atTop) state.rows.unshift(row); else state.rows.push(row);
    added.push(row);
  }
  state.rows.sort((a, b) => (a.flow.time < b.flow.time ? 1 : a.flow.time > b.flow.time ? -1 : 0));
  while (state.rows.length > MAX_ROWS) state.seen.delete(state.rows.pop().uuid);
  return added;
}
function visibleRows() { return state.rows.filter((r) => matchesSelection(r.flow) && matchesText(r.flow)); }
function rowElement(r) {
  const f = r.flow, l4 = f.l4 || {}, ports = l4.TCP || l4.UDP || {};
  const tr = el("tr", { tabindex: 0, "data-uuid": f.uuid, "data-verdict": f.verdict },
    el("td", { title: f.time }, (f.time || "").slice(11, 23)),
    el("td", { title: (f.IP || {}).source || "" }, endpointText(f.source, f.source_names, (f.IP || {}).source)),
    el("td", { title: (f.IP || {}).destination || "" }, endpointText(f.destination, f.destination_names, (f.IP || {}).destination)),
    el("td", {}, ports.destination_port || ""),
    el("td", { title: l7Info(f) }, l7Info(f)),
    el("td", { class: "v-" + f.verdict }, f.verdict));
  tr.addEventListener("click", () => showDetail(r, tr));
  tr.addEventListener("keydown", (ev) => { if (ev.key === "Enter") showDetail(r, tr); });
  return tr;
}
function flowCount() {
  const shown = $("flows").tBodies[0].rows.length;
  $("flow-count").textContent = `${shown} shown` + (state.skipped ? ` · ${state.skipped} not shown (more than a page can follow; narrow the filters)` : "");
}
// The whole table, after a filter or selection change.
function drawFlows() {
  state.fresh = [];
  const tb = $("flows").tBodies[0];
  clear(tb);
  for (const r of visibleRows()) tb.append(rowElement(r));
  flowCount();
}
// Live flows: new rows go on top, the oldest drop off — the rest of the table is not rebuilt.
function drawFresh() {
  const tb = $("flows").tBodies[0];
  const fresh = state.fresh.filter((r) => matchesSelection(r.flow) && matchesText(r.flow));
  state.fresh = [];
  for (const r of fresh) tb.insertBefore(rowElement(r), tb.firstChild);
  while (tb.rows.length > MAX_ROWS) tb.deleteRow(-1);
  flowCount();
}
function showDetail(r, tr) {
  document.querySelectorAll("#flows tr.selected").forEach((x) => x.classList.remove("selected"));
  tr.classList.add("selected");
  const f = r.flow, pre = $("flow-detail");
  const lines = [`${f.time}  ${f.verdict}${f.drop_reason_desc ? " (" + f.drop_reason_desc + ")" : ""}  ${f.Type || ""} ${f.traffic_direction || ""}`,
    `${endpointText(f.source, f.source_names, (f.IP || {}).source)} (${(f.IP || {}).source || ""}) → ${endpointText(f.destination, f.destination_names, (f.IP || {}).destination)} (${(f.IP || {}).destination || ""})`,
    l7Info(f)];
  const h = f.l7 && f.l7.http;
  if (h && h.headers) for (const x of h.headers) lines.push(`  ${x.key}: ${x.value}`);
  if (f.Summary) lines.push(f.Summary);
  pre.textContent = lines.join("\n");
  pre.hidden = false;
}

async function loadFlows() {
  const p = selectionParams(flowParams());
  p.set("last", "200");
  let text;
  try {
    const r = await fetch("api/flows?" + p.toString(), { credentials: "same-origin" });
    text = await r.text();
    if (!r.ok) { banner(`Flows: ${text.trim()}`); return; }
  } catch (e) { banner(`Flows: ${e}`); return; }
  state.rows = []; state.seen.clear();
  addRows(text.split("\n").filter((l) => l.trim() && !l.includes('"lost_events"')), false);
  drawFlows();
}

// ---- the graph ----
async function loadGraph() {
  if (state.fetching) return;
  state.fetching = true;
  try {
    const r = await fetch("api/graph?" + graphParams().toString(), { credentials: "same-origin" });
    if (!r.ok) { banner(`Map: ${(await r.text()).trim()}`); return; }
    const g = await r.json();
    state.graph = g; state.version = g.version; state.lastFetch = Date.now();
    updateNamespaces(g.namespaces);
    drawMap();
    drawSelection();
    document.body.setAttribute("data-graph-version", String(g.version));
    if (!state.mapMarked && g.nodes.length) { state.mapMarked = true; performance.mark("loupe-map-drawn"); }
  } catch (e) {
    banner(`Map: ${e}`);
  } finally { state.fetching = false; }
}
function maybeLoadGraph() {
  if (state.paused) { if (state.serverVersion !== state.version) state.missed++; return; }
  if (state.serverVersion !== state.version && Date.now() - state.lastFetch >= 900) loadGraph();
}

// ---- live stream ----
let bannerText = { server: "", ui: "", other: "" };
function banner(text, kind) {
  bannerText[kind || "other"] = text || "";
  const all = [bannerText.ui, bannerText.server, bannerText.other].filter(Boolean);
  const b = $("banner");
  b.textContent = all.join("  ·  ");
  b.hidden = all.length === 0;
}
function connect() {
  if (state.events) state.events.close();
  const es = new EventSource("api/events?" + liveParams().toString());
  state.events = es;
  es.addEventListener("open", () => banner("", "ui"));
  es.addEventListener("error", () => banner("Lost contact with loupe ui; reconnecting…", "ui"));
  es.addEventListener("status", (ev) => {
    const s = JSON.parse(ev.data);
    const badge = $("server");
    badge.textContent = s.connected ? `${s.server}: connected` : `${s.server}: unreachable`;
    badge.className = "badge " + (s.connected ? "ok" : "down");
    badge.setAttribute("data-connected", s.connected ? "true" : "false");
    banner(s.connected ? "" : `The Hubble API at ${s.server} is unreachable (${s.error || "no answer"}); retrying. The map shows what was seen until then.`, "server");
    $("counts").textContent = `${s.flows_seen} flows seen` + (s.lost_events ? ` · ${s.lost_events} lost by the server` : "");
    state.serverVersion = s.version;
    maybeLoadGraph();
  });
  es.addEventListener("flow", (ev) => {
    if (state.paused) { state.missed++; return; }
    const added = addRows([ev.data], true);
    if (added.length) { state.fresh.push(...added); scheduleFlows(); }
  });
  es.addEventListener("skipped", (ev) => { state.skipped += JSON.parse(ev.data).count; scheduleFlows(); });
}
let flowTimer = 0;
function scheduleFlows() { if (!flowTimer) flowTimer = setTimeout(() => { flowTimer = 0; drawFresh(); }, 200); }

// ---- controls ----
function filtersChanged() {
  state.skipped = 0;
  loadGraph().then(() => {});
  loadFlows();
  connect();
}
function download(name, type, text) {
  const a = el("a", { download: name, href: URL.createObjectURL(new Blob([text], { type })) });
  document.body.append(a); a.click(); a.remove();
}
function init() {
  $("ns-all").addEventListener("change", () => {
    if ($("ns-all").checked) document.querySelectorAll("#ns-list input").forEach((i) => { i.checked = false; });
    filtersChanged();
  });
  for (const id of ["f-verdict", "f-protocol", "f-since"]) $(id).addEventListener("change", filtersChanged);
  for (const id of ["f-status", "f-pod", "f-ip", "f-port"]) $(id).addEventListener("change", filtersChanged);
  $("f-text").addEventListener("input", drawFlows);
  $("filters").addEventListener("submit", (ev) => { ev.preventDefault(); filtersChanged(); });
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("pause").setAttribute("aria-pressed", String(state.paused));
    if (!state.paused) { state.missed = 0; loadGraph(); loadFlows(); }
  });
  $("export-flows").addEventListener("click", () => download("loupe-flows.jsonl", "application/x-ndjson", visibleRows().map((r) => r.line).join("\n") + "\n"));
  $("export-json").addEventListener("click", () => download("loupe-map.json", "application/json", JSON.stringify(state.graph, null, 2)));
  $("export-svg").addEventListener("click", () => {
    const copy = $("map").cloneNode(true);
    copy.setAttribute("xmlns", SVGNS);
    const style = document.createElementNS(SVGNS, "style");
    style.textContent = "text { font-family: 'DejaVu Sans', sans-serif; }";
    copy.insertBefore(style, copy.firstChild);
    download("loupe-map.svg", "image/svg+xml", new XMLSerializer().serializeToString(copy));
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && state.selection) select(null); });
  window.addEventListener("resize", () => drawMap());
  loadGraph();
  loadFlows();
  connect();
}
document.addEventListener("DOMContentLoaded", init);
