// The fedwarden dashboard page: fetches the JSON API and draws every chart as inline SVG.
// No external asset is loaded; every value is inserted as text, never as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const CHART_WIDTH = 440;
const CHART_HEIGHT = 220;
const MARGIN = { left: 64, right: 16, top: 44, bottom: 34 };

let selectedRunId = null;

function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function svgElement(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

function cell(row, text, className = null) {
  const node = element("td", className ? { class: className } : {}, text);
  row.appendChild(node);
  return node;
}

function formatNumber(value, digits = 4) {
  if (value === null || value === undefined) return "\u2014";
  if (Number.isInteger(value)) return String(value);
  return value.toFixed(digits);
}

function formatTime(value) {
  return value ? value.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "") : "\u2014";
}

function token() {
  return document.getElementById("token").value;
}

async function getJson(path) {
  const response = await fetch(path, { headers: { Accept: "application/json", Authorization: `Bearer ${token()}` } });
  if (!response.ok) throw new Error(`${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

// Charts.

function lineChart(name, title, series, options = {}) {
  const svg = svgElement("svg", {
    class: "chart",
    "data-chart": name,
    width: CHART_WIDTH,
    height: CHART_HEIGHT,
    viewBox: `0 0 ${CHART_WIDTH} ${CHART_HEIGHT}`,
    role: "img",
    "aria-label": title,
  });
  svg.appendChild(svgElement("text", { class: "title", x: MARGIN.left, y: 16 }, title));
  const points = series.flatMap((one) => one.points.filter((point) => point.value !== null));
  const extra = options.budget === null || options.budget === undefined ? [] : [options.budget];
  const values = points.map((point) => point.value).concat(extra, options.zero ? [0] : []);
  if (points.length === 0) {
    svg.appendChild(svgElement("text", { x: MARGIN.left, y: CHART_HEIGHT / 2 }, "no data yet"));
    return svg;
  }
  const rounds = points.map((point) => point.round);
  const [xLow, xHigh] = [Math.min(...rounds), Math.max(...rounds)];
  let [yLow, yHigh] = [Math.min(...values), Math.max(...values)];
  if (yHigh === yLow) [yLow, yHigh] = [yLow - 1, yHigh + 1];
  const plotWidth = CHART_WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = CHART_HEIGHT - MARGIN.top - MARGIN.bottom;
  const x = (round) => MARGIN.left + (xHigh === xLow ? plotWidth / 2 : ((round - xLow) / (xHigh - xLow)) * plotWidth);
  const y = (value) => MARGIN.top + (1 - (value - yLow) / (yHigh - yLow)) * plotHeight;
  const format = options.format || ((value) => formatNumber(value));

  for (const tick of [yLow, (yLow + yHigh) / 2, yHigh]) {
    svg.appendChild(svgElement("line", { class: "grid", x1: MARGIN.left, x2: CHART_WIDTH - MARGIN.right, y1: y(tick), y2: y(tick) }));
    svg.appendChild(svgElement("text", { x: MARGIN.left - 6, y: y(tick) + 4, "text-anchor": "end" }, format(tick)));
  }
  svg.appendChild(svgElement("line", { class: "axis", x1: MARGIN.left, x2: MARGIN.left, y1: MARGIN.top, y2: MARGIN.top + plotHeight }));
  svg.appendChild(svgElement("line", { class: "axis", x1: MARGIN.left, x2: CHART_WIDTH - MARGIN.right, y1: MARGIN.top + plotHeight, y2: MARGIN.top + plotHeight }));
  for (const round of [...new Set(rounds)]) {
    svg.appendChild(svgElement("text", { x: x(round), y: CHART_HEIGHT - 18, "text-anchor": "middle" }, String(round)));
  }
  svg.appendChild(svgElement("text", { x: MARGIN.left + plotWidth / 2, y: CHART_HEIGHT - 4, "text-anchor": "middle" }, "round"));

  if (extra.length) {
    const budgetY = y(options.budget);
    svg.appendChild(svgElement("line", { class: "budget", "data-budget": options.budget, x1: MARGIN.left, x2: CHART_WIDTH - MARGIN.right, y1: budgetY, y2: budgetY }));
    svg.appendChild(svgElement("text", { class: "budget-label", x: CHART_WIDTH - MARGIN.right, y: budgetY - 4, "text-anchor": "end" }, `budget \u03b5 = ${formatNumber(options.budget, 3)}`));
  }

  series.forEach((one, index) => {
    const drawn = one.points.filter((point) => point.value !== null);
    const group = svgElement("g", { class: `series-${index}`, "data-series": one.name });
    group.appendChild(svgElement("polyline", { class: `series-${index}`, points: drawn.map((point) => `${x(point.round)},${y(point.value)}`).join(" ") }));
    for (const point of drawn) {
      const dot = svgElement("circle", { class: `point series-${index}`, cx: x(point.round), cy: y(point.value), r: 3.5, "data-series": one.name, "data-round": point.round, "data-value": point.value });
      dot.appendChild(svgElement("title", {}, `${one.label}, round ${point.round}: ${format(point.value)}`));
      group.appendChild(dot);
    }
    svg.appendChild(group);
    if (series.length > 1) {
      const legendX = MARGIN.left + 8 + index * 96;
      svg.appendChild(svgElement("rect", { class: `series-${index}`, x: legendX, y: 26, width: 10, height: 4 }));
      svg.appendChild(svgElement("text", { x: legendX + 14, y: 31 }, one.label));
    }
  });
  return svg;
}

function seriesOf(rounds, name, label, value = (round) => round[name]) {
  return { name, label, points: rounds.map((round) => ({ round: round.round, value: value(round) })) };
}

function drawCharts(data) {
  const rounds = data.rounds;
  const charts = document.getElementById("charts");
  charts.replaceChildren(
    lineChart("accuracy", "central accuracy", [seriesOf(rounds, "accuracy", "accuracy")]),
    lineChart("loss", "central loss", [seriesOf(rounds, "loss", "loss")]),
    lineChart("epsilon", data.budget_epsilon === null ? "\u03b5 spent (no DP budget)" : "\u03b5 spent against the budget", [seriesOf(rounds, "epsilon", "\u03b5 spent")], { budget: data.budget_epsilon, zero: true }),
    lineChart("participation", "participation", [
      seriesOf(rounds, "sampled", "sampled"),
      seriesOf(rounds, "participants", "aggregated"),
      seriesOf(rounds, "dropped", "dropped", (round) => round.dropped + round.failed),
      seriesOf(rounds, "rejected", "rejected"),
    ], { zero: true, format: (value) => formatNumber(value, 1) }),
    lineChart("bytes", "bytes per round", [seriesOf(rounds, "bytes_up", "up"), seriesOf(rounds, "bytes_down", "down")], { zero: true, format: (value) => formatNumber(value, 0) }),
  );
  const body = document.querySelector("#rounds tbody");
  body.replaceChildren();
  for (const round of rounds) {
    const row = element("tr", { "data-round": round.round });
    cell(row, String(round.round));
    cell(row, formatNumber(round.accuracy), "accuracy");
    cell(row, formatNumber(round.loss), "loss");
    cell(row, formatNumber(round.epsilon), "epsilon");
    cell(row, `${round.participants} / ${round.sampled}`);
    cell(row, String(round.dropped + round.failed));
    cell(row, String(round.rejected) + (round.rejected ? ` (${Object.entries(round.rejection_reasons).map(([reason, count]) => `${reason}: ${count}`).join(", ")})` : ""));
    cell(row, String(round.bytes_up));
    cell(row, String(round.bytes_down));
    cell(row, round.applied ? "yes" : "no");
    body.appendChild(row);
  }
  const problem = document.getElementById("rounds-problem");
  problem.hidden = !data.problem;
  problem.textContent = data.problem || "";
}

// Panels.

function drawRuns(runs) {
  const body = document.querySelector("#runs tbody");
  body.replaceChildren();
  for (const run of runs) {
    const row = element("tr", { "data-run-id": run.run_id });
    if (run.run_id === selectedRunId) row.classList.add("selected");
    const link = element("button", { type: "button", class: "run-link" }, run.run_id);
    link.addEventListener("click", () => { selectedRunId = run.run_id; refresh(); });
    row.appendChild(element("td")).appendChild(link);
    cell(row, run.name);
    cell(row, run.status + (run.message ? `: ${run.message}` : ""), run.status === "failed" ? "bad" : null);
    cell(row, formatTime(run.created_at));
    cell(row, run.budget_epsilon === null ? "no DP" : formatNumber(run.budget_epsilon, 3));
    body.appendChild(row);
  }
}

function drawClients(data) {
  const body = document.querySelector("#clients tbody");
  body.replaceChildren();
  for (const client of data.clients) {
    const row = element("tr", { "data-client-id": client.client_id });
    cell(row, client.client_id);
    cell(row, client.enrolled ? "yes" : "no");
    cell(row, client.sampled_rounds.join(", ") || "\u2014");
    cell(row, String(client.accepted_updates));
    cell(row, client.rejections.map((rejection) => `round ${rejection.round ?? "\u2014"}: ${rejection.reason} (${rejection.message})`).join("; ") || "none", client.rejections.length ? "bad" : null);
    cell(row, client.flagged_rounds.join(", ") || "none", client.flagged_rounds.length ? "bad" : null);
    cell(row, client.quarantined ? "QUARANTINED" : "no", client.quarantined ? "bad" : null);
    body.appendChild(row);
  }
}

function drawAudit(data) {
  const status = document.getElementById("audit-status");
  const verification = data.verification;
  if (!verification.checked) {
    status.className = "muted";
    status.textContent = `Audit log (${verification.entries} entries) ${verification.problem}`;
  } else if (verification.ok) {
    status.className = "ok";
    status.textContent = `Audit log verified: ${verification.entries} entries, last hash ${verification.last_hash}`;
  } else {
    status.className = "bad";
    status.textContent = `Audit log FAILED verification at entry ${verification.first_bad}: ${verification.problem}`;
  }
  const body = document.querySelector("#audit tbody");
  body.replaceChildren();
  for (const entry of data.entries) {
    const row = element("tr", { "data-sequence": entry.sequence });
    if (verification.checked && !verification.ok && entry.sequence >= verification.first_bad) row.classList.add("bad");
    cell(row, String(entry.sequence));
    cell(row, formatTime(entry.timestamp));
    cell(row, entry.kind);
    cell(row, entry.payload, "payload");
    body.appendChild(row);
  }
}

function registryRequest(path, body) {
  return fetch(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${token()}` },
    body: JSON.stringify(body),
  });
}

async function changeRegistry(path, body, done) {
  const result = document.getElementById("registry-result");
  result.className = "";
  result.textContent = "working\u2026";
  try {
    const response = await registryRequest(path, body);
    const answer = await response.json();
    if (response.ok) {
      result.className = "ok";
      result.textContent = done(answer);
    } else {
      result.className = "bad";
      result.textContent = `refused (${response.status}): ${typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail)}`;
    }
  } catch (error) {
    result.className = "bad";
    result.textContent = `request failed: ${error}`;
  }
  await refresh();
}

function promote(reference) {
  const pilot = document.getElementById("pilot-accuracy").value;
  return changeRegistry(`/api/models/${encodeURIComponent(reference)}/promote`, {
    by: document.getElementById("by").value,
    pilot_accuracy: pilot === "" ? null : Number(pilot),
    override: document.getElementById("override").checked,
    reason: document.getElementById("reason").value,
  }, (version) => `${version.reference} is in production`);
}

function rollback(model) {
  return changeRegistry("/api/models/rollback", { by: document.getElementById("by").value, model },
    (version) => `${version.reference} is in production again`);
}

function drawModels(data) {
  document.getElementById("registry-note").textContent = data.can_change ? "" : data.cannot_change_because;
  document.getElementById("registry-note").className = data.can_change ? "" : "muted";
  const body = document.querySelector("#models tbody");
  body.replaceChildren();
  for (const version of data.models) {
    const row = element("tr", { "data-reference": version.reference });
    cell(row, version.reference);
    cell(row, version.stage + (version.rolled_back ? " (rolled back)" : ""), "stage");
    cell(row, version.run_id);
    cell(row, String(version.rounds));
    cell(row, String(version.participants));
    cell(row, formatNumber(version.recorded_accuracy));
    cell(row, formatTime(version.registered_at));
    const action = cell(row, "");
    const button = version.stage === "candidate"
      ? element("button", { type: "button", class: "promote" }, "promote")
      : version.stage === "production" ? element("button", { type: "button", class: "rollback" }, "roll back") : null;
    if (button) {
      button.disabled = !data.can_change;
      if (!data.can_change) button.title = data.cannot_change_because;
      button.addEventListener("click", () => (version.stage === "candidate" ? promote(version.reference) : rollback(version.model)));
      action.appendChild(button);
    }
    body.appendChild(row);
  }
}

async function refresh() {
  const status = document.getElementById("load-status");
  if (!token()) {
    status.className = "muted";
    status.textContent = "enter the dashboard token (in the registry form) to load the data";
    return;
  }
  try {
    const [runs, audit, models] = await Promise.all([getJson("/api/runs"), getJson("/api/audit"), getJson("/api/models")]);
    if (!runs.some((run) => run.run_id === selectedRunId)) selectedRunId = runs.length ? runs[0].run_id : null;
    drawRuns(runs);
    drawAudit(audit);
    drawModels(models);
    document.getElementById("selected-run").textContent = selectedRunId ?? "\u2014";
    if (selectedRunId !== null) {
      const path = `/api/runs/${encodeURIComponent(selectedRunId)}`;
      const [rounds, clients] = await Promise.all([getJson(`${path}/rounds`), getJson(`${path}/clients`)]);
      drawCharts(rounds);
      drawClients(clients);
    }
    status.className = "muted";
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    status.className = "bad";
    status.textContent = `cannot load the dashboard data: ${error.message}`;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("token").addEventListener("change", refresh);
  refresh();
  const seconds = Number(document.body.dataset.refreshSeconds);
  if (seconds > 0) setInterval(refresh, seconds * 1000);
});
