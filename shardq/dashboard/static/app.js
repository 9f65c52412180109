// shardq dashboard: a read-only view polling the local JSON API (/api/...).
// DOM is built with el() and textContent only: job data (error text, ids) is never parsed as HTML.
"use strict";

const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const COLORS = { ok: "#2e9d57", fail: "#d1453b", retry: "#e69b23", reduce: "#7b4fc9", line: "#2f6fdb", diverged: "#b8a200" };
const ROUND_NOTE =
  "Mean over the round's shards weighted by samples; the band spans the shards' min to max. " +
  "A running round's point covers the shards recorded so far.";
const state = { refreshMs: 2000, timer: null, charts: {}, timeline: null, view: null, jobId: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") Object.assign(node.style, value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function num(value, digits = 6) {
  // A non-finite metric travels as its name ("nan", "inf", "-inf": standard JSON has no NaN).
  if (typeof value === "string" && !Number.isFinite(Number(value))) return value;
  if (value === undefined || value === null || Number.isNaN(value)) return "";
  return String(Number(Number(value).toPrecision(digits)));
}

function ago(seconds) {
  if (seconds === null || seconds === undefined) return "";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
  return `${Math.floor(s / 86400)}d${Math.floor((s % 86400) / 3600)}h`;
}

function badge(status) {
  return el("span", { class: `badge ${status}` }, status);
}

// "2 failed", and ", 1 diverged" once a sweep trial diverged (among done: it trained, its objective
// is not finite, it ranks last): the same words as the CLI's status, list and watch.
function outcomes(failed, diverged) {
  return `${failed} failed` + (diverged ? `, ${diverged} diverged` : "");
}

function failedCell(failed, diverged) {
  return diverged ? [String(failed), " ", el("span", { class: "diverged" }, `(${diverged} diverged)`)] : failed;
}

function bar(done, failed, total, diverged = 0) {
  const pct = (n) => (total ? `${Math.min(100, (100 * n) / total)}%` : "0%");
  return el(
    "span",
    { class: "bar", title: `${done} done, ${outcomes(failed, diverged)} of ${total}` },
    el("span", { class: "done", style: { width: pct(done) } }),
    el("span", { class: "failed", style: { left: pct(done), width: pct(failed) } }),
  );
}

async function api(path) {
  const response = await fetch(path, { headers: { Accept: "application/json" } });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `${response.status} ${response.statusText}`);
  return body;
}

function showError(error) {
  const node = document.getElementById("error");
  node.hidden = !error;
  node.textContent = error ? `Cannot read the job store: ${error.message || error}` : "";
}

function stamp() {
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// -- job list ----------------------------------------------------------------------------------

async function renderList() {
  const form = document.getElementById("filters");
  const params = new URLSearchParams();
  for (const name of ["status", "kind"]) if (form.elements[name].value) params.set(name, form.elements[name].value);
  const jobs = await api(`/api/jobs?${params}`);
  const q = form.elements.q.value.trim().toLowerCase();
  const shown = jobs.filter((j) => !q || j.job_id.toLowerCase().includes(q));
  const body = document.querySelector("#jobs-table tbody");
  body.replaceChildren(
    ...shown.map((j) =>
      el(
        "tr",
        { class: "clickable", dataset: { jobId: j.job_id, status: j.status }, onclick: () => (location.hash = `#/job/${encodeURIComponent(j.job_id)}`) },
        el("td", {}, el("a", { href: `#/job/${encodeURIComponent(j.job_id)}` }, j.job_id)),
        el("td", {}, badge(j.status)),
        el("td", {}, j.kind),
        el("td", { class: "num" }, `${j.round + 1}/${j.rounds} ${j.phase}`),
        el("td", { class: "progress", dataset: { pct: j.progress_pct } }, bar(j.tasks_completed - j.failed, j.failed, j.tasks_total, j.tasks_diverged), el("span", { class: "pct" }, `${j.progress_pct}%`)),
        el("td", { class: "num", dataset: { diverged: j.tasks_diverged } }, failedCell(j.failed, j.tasks_diverged)),
        el("td", { class: "num", title: j.created_at }, ago(j.age_s)),
        el("td", { class: "muted" }, j.created_at),
      ),
    ),
  );
  document.getElementById("jobs-empty").hidden = shown.length > 0;
  return true;
}

// -- one job -----------------------------------------------------------------------------------

// A FedBuff job's versions: applied and late updates and mean staleness of each (null otherwise).
function versionsText(fedbuff) {
  if (!fedbuff) return null;
  return fedbuff.per_version.map((v) => `v${v.version}: ${v.applied} applied, ${v.late} late, mean τ ${v.mean_staleness.toFixed(2)}`).join(" · ") || null;
}

// Whose job it is, how urgent, and its window: the CLI's `status` wording
// (shardq/cli/scheduling_view.py scheduling_text): "vision · priority 900 · 6 queued or running of a window of 8".
function schedulingText(job) {
  const parts = [job.tenant || "default", job.priority === null || job.priority === undefined ? "priority 500 (default)" : `priority ${job.priority}`];
  if (job.window !== null && job.window !== undefined) parts.push(`${job.queued || 0} queued or running of a window of ${job.window}`);
  return parts.join(" · ");
}

function renderFields(job, stall, fedbuff) {
  const pairs = [
    ["status", badge(job.status)],
    // Why a running job stands still (no result for a while): the queue that holds it.
    ["stalled", stall ? el("span", { class: "error", dataset: { reason: stall.reason } }, stall.message) : null],
    ["kind", job.kind],
    // Tenant, priority and window (shardq.core.admission), as `shardq status` shows them.
    ["scheduling", schedulingText(job)],
    ["round", `${job.round + 1}/${job.rounds} (${job.phase})`],
    // FedBuff: version v of R, the open buffer k/K, late updates, mean staleness; then per version.
    ["fedbuff", job.fedbuff_text],
    ["versions", versionsText(fedbuff)],
    ["tasks", `${job.shard_count} per round; ${job.tasks_completed}/${job.tasks_total} recorded (${job.progress_pct}%), ${outcomes(job.failed, job.tasks_diverged)} (failure budget ${job.max_failed_shards})`],
    ["created", `${job.created_at} (${ago(job.age_s)} ago)`],
    ["finished", job.finished_at ? `${job.finished_at} (took ${ago(job.elapsed_s)})` : null],
    // What its counted results cost, its budget and the budget stop (null: unpriced, no budget).
    ["cost", job.cost_text],
    ["model", job.model_uri],
    ["result", job.result_uri ? el("span", {}, job.result_uri, " · ", el("a", { href: `/api/jobs/${encodeURIComponent(job.job_id)}/manifest` }, "result.json")) : null],
    ["error", job.error ? el("span", { class: "error" }, job.error) : null],
  ];
  document.getElementById("job-fields").replaceChildren(
    ...pairs.filter(([, v]) => v !== null && v !== undefined && v !== "").flatMap(([k, v]) => [el("dt", {}, k), el("dd", { dataset: { field: k } }, v)]),
  );
}

function renderProgress(rows) {
  document.querySelector("#progress-table tbody").replaceChildren(
    ...rows.map((p) =>
      el(
        "tr",
        { dataset: { round: p.round, phase: p.phase } },
        el("td", { class: "num" }, p.round + 1),
        el("td", {}, p.phase),
        el("td", {}, bar(p.done, p.failed, p.total, p.diverged)),
        el("td", { class: "num done" }, p.done),
        el("td", { class: "num failed", dataset: { diverged: p.diverged } }, failedCell(p.failed, p.diverged)),
        el("td", { class: "num" }, p.outstanding),
        el("td", { class: "num" }, p.enqueued),
        el("td", { class: "num" }, p.total),
      ),
    ),
  );
}

// What a round's reduce reported of the global model it made (the round's headline), if anything.
function globalValue(r, name) {
  const m = r.reduce && r.reduce.metrics;
  return m && name in m ? m[name] : null;
}

function curveData(rounds, name) {
  const rows = rounds.filter((r) => (r.metrics && r.metrics[name]) || globalValue(r, name) !== null);
  const shard = (r, key) => (r.metrics && r.metrics[name] ? r.metrics[name][key] : null);
  return {
    labels: rows.map((r) => `${r.round + 1}${r.partial ? "*" : ""}`),
    mean: rows.map((r) => shard(r, "mean")),
    min: rows.map((r) => shard(r, "min")),
    max: rows.map((r) => shard(r, "max")),
    global: rows.map((r) => globalValue(r, name)),
    rows,
  };
}

function yScale() {
  return document.getElementById("log-scale").checked ? "logarithmic" : "linear";
}

function curveCard(name) {
  const canvas = el("canvas", { class: "curve-canvas", dataset: { metric: name }, "aria-label": `${name} per round` });
  const table = el("table", { class: "grid small curve-values" }, el("thead", {}, el("tr", {}, el("th", {}, "round"), el("th", {}, "global model"), el("th", {}, "mean"), el("th", {}, "min"), el("th", {}, "max"), el("th", {}, "shards"))), el("tbody"));
  const card = el("div", { class: "card curve", dataset: { metric: name } }, el("h3", {}, name), el("div", { class: "chart-box" }, canvas), el("details", {}, el("summary", {}, "values"), table));
  const chart = new Chart(canvas, {
    type: "line",
    data: {
      labels: [],
      datasets: [
        { label: "max", data: [], borderColor: "rgba(47,111,219,.25)", backgroundColor: "rgba(47,111,219,.10)", pointRadius: 0, borderWidth: 1, fill: "+1" },
        { label: "min", data: [], borderColor: "rgba(47,111,219,.25)", pointRadius: 0, borderWidth: 1, fill: false },
        { label: `${name} (shards' weighted mean)`, data: [], borderColor: COLORS.line, backgroundColor: COLORS.line, pointRadius: 3, borderWidth: 2, fill: false },
        { label: `${name} (global model)`, data: [], borderColor: "#111", backgroundColor: "#111", pointRadius: 4, pointStyle: "rect", borderWidth: 3, fill: false },
      ],
    },
    options: {
      animation: false,
      maintainAspectRatio: false,
      interaction: { mode: "index", intersect: false },
      scales: {
        x: { title: { display: true, text: "round (* = running)" } },
        y: { type: yScale(), title: { display: true, text: name } },
      },
      plugins: { legend: { display: false } },
    },
  });
  return { card, chart, table };
}

// A one-round job (sweep, map) has one point per metric: show each shard's (trial's) value instead.
function perShard(detail) {
  return detail.job.kind !== "data_parallel" && detail.job.rounds === 1;
}

function shardCard(name, what) {
  const canvas = el("canvas", { class: "curve-canvas", dataset: { metric: name }, "aria-label": `${name} per ${what}` });
  const table = el("table", { class: "grid small curve-values" }, el("thead", {}, el("tr", {}, el("th", {}, what), el("th", {}, name))), el("tbody"));
  const card = el("div", { class: "card curve per-shard", dataset: { metric: name } }, el("h3", {}, `${name} per ${what}`), el("div", { class: "chart-box" }, canvas), el("details", {}, el("summary", {}, "values"), table));
  const chart = new Chart(canvas, {
    type: "bar",
    data: { labels: [], datasets: [{ label: name, data: [], backgroundColor: COLORS.line }] },
    options: {
      animation: false,
      maintainAspectRatio: false,
      scales: { x: { title: { display: true, text: what } }, y: { type: yScale(), title: { display: true, text: name } } },
      plugins: { legend: { display: false } },
    },
  });
  return { card, chart, table, perShard: true };
}

function renderShardValues(name, entry, detail) {
  const what = detail.job.kind === "sweep" ? "trial" : "shard";
  const rows = detail.timeline.entries
    .filter((e) => e.task_type === "train" && e.status === "succeeded" && e.metrics && name in e.metrics)
    .sort((a, b) => a.shard_id - b.shard_id);
  entry.chart.data.labels = rows.map((e) => `${what} ${e.shard_id}`);
  entry.chart.data.datasets[0].data = rows.map((e) => e.metrics[name]);
  entry.chart.update("none");
  entry.table.tBodies[0].replaceChildren(
    ...rows.map((e) => el("tr", { dataset: { shard: e.shard_id } }, el("td", { class: "num" }, e.shard_id), el("td", { class: "num value", dataset: { value: e.metrics[name] } }, num(e.metrics[name])))),
  );
}

// A successive-halving sweep: each trial's objective over the budget of every rung it ran (not
// rung means over the survivors); the best trial (first on the leaderboard) drawn bold.
function renderTrialCurves(curves, detail) {
  const box = document.getElementById("curves");
  const best = detail.leaderboard && detail.leaderboard.rows.length ? detail.leaderboard.rows[0].trial : null;
  const datasets = curves.trials.map((t) => ({
    label: `trial ${t.trial}`,
    data: t.points.filter((p) => p.objective !== null).map((p) => ({ x: p.budget, y: p.objective })),
    borderColor: t.trial === best ? "#111" : "rgba(47,111,219,.45)",
    backgroundColor: t.trial === best ? "#111" : "rgba(47,111,219,.45)",
    borderWidth: t.trial === best ? 3 : 1,
    pointRadius: t.trial === best ? 4 : 2,
    fill: false,
  }));
  let entry = state.charts.__trials;
  if (!entry) {
    for (const [name, old] of Object.entries(state.charts)) {
      old.chart.destroy();
      old.card.remove();
      delete state.charts[name];
    }
    const canvas = el("canvas", { class: "curve-canvas", dataset: { metric: curves.metric }, "aria-label": `${curves.metric} per trial over ${curves.budget_param}` });
    const card = el("div", { class: "card curve per-trial", dataset: { metric: curves.metric } }, el("h3", {}, `${curves.metric} per trial over ${curves.budget_param}`), el("div", { class: "chart-box" }, canvas));
    const chart = new Chart(canvas, {
      type: "line",
      data: { datasets },
      options: {
        animation: false,
        maintainAspectRatio: false,
        parsing: true,
        scales: {
          x: { type: "logarithmic", title: { display: true, text: `${curves.budget_param} (rung budget)` }, afterBuildTicks: (axis) => { axis.ticks = curves.x.map((v) => ({ value: v })); } },
          y: { type: yScale(), title: { display: true, text: curves.metric } },
        },
        plugins: { legend: { display: false } },
      },
    });
    entry = state.charts.__trials = { card, chart, table: null };
    box.append(card);
  } else {
    entry.chart.data.datasets = datasets;
    entry.chart.update("none");
  }
  document.getElementById("curves-empty").hidden = curves.trials.length > 0;
  document.getElementById("metrics-title").textContent = `${curves.metric} per trial`;
  document.getElementById("metrics-note").textContent =
    `Successive halving: each line is a trial, one point per rung it ran, at that rung's ${curves.budget_param}; the best trial is drawn in black.`;
}

function renderCurves(detail) {
  if (detail.trial_curves) {
    renderTrialCurves(detail.trial_curves, detail);
    return;
  }
  const box = document.getElementById("curves");
  // The global model's metrics first: they are what a round produced.
  const global = detail.global_metric_names || [];
  const names = [...global, ...detail.metric_names.filter((n) => !global.includes(n))];
  const shards = perShard(detail);
  for (const [name, entry] of Object.entries(state.charts)) {
    if (!names.includes(name)) {
      entry.chart.destroy();
      entry.card.remove();
      delete state.charts[name];
    }
  }
  for (const name of names) {
    if (!state.charts[name]) {
      state.charts[name] = shards ? shardCard(name, detail.job.kind === "sweep" ? "trial" : "shard") : curveCard(name);
      box.append(state.charts[name].card);
    }
    if (shards) {
      renderShardValues(name, state.charts[name], detail);
      continue;
    }
    const { chart, table } = state.charts[name];
    const d = curveData(detail.rounds, name);
    chart.data.labels = d.labels;
    chart.data.datasets[0].data = d.max;
    chart.data.datasets[1].data = d.min;
    chart.data.datasets[2].data = d.mean;
    chart.data.datasets[3].data = d.global;
    chart.update("none");
    table.tBodies[0].replaceChildren(
      ...d.rows.map((r) =>
        el(
          "tr",
          { dataset: { round: r.round, partial: r.partial } },
          el("td", { class: "num" }, `${r.round + 1}${r.partial ? " (running)" : ""}`),
          el("td", { class: "num global", dataset: { value: globalValue(r, name) ?? "" } }, globalValue(r, name) === null ? "" : num(globalValue(r, name))),
          ...(r.metrics && r.metrics[name]
            ? [
                el("td", { class: "num mean", dataset: { value: r.metrics[name].mean } }, num(r.metrics[name].mean)),
                el("td", { class: "num" }, num(r.metrics[name].min)),
                el("td", { class: "num" }, num(r.metrics[name].max)),
                el("td", { class: "num" }, r.metrics[name].count),
              ]
            : [el("td"), el("td"), el("td"), el("td")]),
        ),
      ),
    );
  }
  document.getElementById("curves-empty").hidden = names.length > 0;
  const what = detail.job.kind === "sweep" ? "trial" : "shard";
  document.getElementById("metrics-title").textContent = shards ? `Metrics per ${what}` : "Metrics per round";
  document.getElementById("metrics-note").textContent = shards
    ? `A one-round job: each chart shows every ${what}'s own recorded value (the weighted mean over them is in the result).`
    : ROUND_NOTE;
}

function barColor(entry) {
  if (entry.status === "failed") return COLORS.fail;
  if (entry.status === "diverged") return COLORS.diverged;
  if (entry.retried) return COLORS.retry;
  if (entry.task_type === "reduce") return COLORS.reduce;
  return COLORS.ok;
}

function renderTimeline(timeline) {
  const entries = timeline.entries;
  const workers = timeline.workers;
  const data = entries.map((e) => ({ x: [e.start_s, e.end_s], y: e.worker_id, entry: e }));
  const dataset = {
    label: "tasks",
    data,
    backgroundColor: entries.map(barColor),
    borderColor: "rgba(0,0,0,.25)",
    borderWidth: 1,
    borderSkipped: false,
    grouped: false,
    barPercentage: 0.8,
    categoryPercentage: 0.9,
  };
  const box = document.querySelector(".timeline-box");
  box.style.height = `${Math.max(160, 70 + 34 * workers.length)}px`;
  if (!state.timeline) {
    state.timeline = new Chart(document.getElementById("timeline"), {
      type: "bar",
      data: { labels: workers, datasets: [dataset] },
      options: {
        indexAxis: "y",
        animation: false,
        maintainAspectRatio: false,
        scales: {
          x: { type: "linear", min: 0, title: { display: true, text: "seconds since the job was submitted" } },
          y: { type: "category", title: { display: true, text: "worker" } },
        },
        plugins: {
          legend: { display: false },
          tooltip: {
            callbacks: {
              label: (ctx) => {
                const e = ctx.raw.entry;
                const what = `round ${e.round + 1} ${e.task_type} shard ${e.shard_id}: ${e.status}`;
                return `${what}, ${num(e.duration_s, 3)} s, ${attemptText(e)}${e.receive_count ? `, received ${e.receive_count}×` : ""}`;
              },
            },
          },
        },
      },
    });
  } else {
    state.timeline.data.labels = workers;
    state.timeline.data.datasets[0] = dataset;
    state.timeline.update("none");
  }
  const failed = entries.filter((e) => e.status === "failed").length;
  const diverged = entries.filter((e) => e.status === "diverged").length;
  const retried = entries.filter((e) => e.retried && e.status !== "failed").length;
  document.getElementById("timeline-note").textContent =
    `${entries.length} outcomes on ${workers.length} worker lane(s): ${failed} failed (red), ` +
    (diverged ? `${diverged} diverged (olive), ` : "") +
    `${retried} succeeded after a retry (orange), reduce tasks in purple` +
    (timeline.truncated ? `; the ${timeline.truncated} oldest are not drawn` : "");
  document.querySelector("#timeline-table tbody").replaceChildren(
    ...entries.map((e) =>
      el(
        "tr",
        { dataset: { round: e.round, shard: e.shard_id, type: e.task_type, status: e.status } },
        el("td", { class: "num" }, e.round + 1),
        el("td", { class: "num" }, e.shard_id),
        el("td", {}, e.task_type),
        el("td", {}, e.status),
        el("td", { class: "num" }, num(e.start_s, 4)),
        el("td", { class: "num" }, num(e.end_s, 4)),
        el("td", { class: "num duration", dataset: { value: e.duration_s } }, num(e.duration_s, 4)),
        el("td", {}, e.worker_id),
        el("td", { class: "num", title: earlierText(e) }, attemptText(e)),
        el("td", { class: "num" }, e.receive_count ?? ""),
        el("td", { class: "muted" }, e.recorded_at),
      ),
    ),
  );
}

// "attempt 3, resumed from step 1200": where a preempted task's last attempt started.
function attemptText(e) {
  const resumed = e.resume_step === null || e.resume_step === undefined ? "" : `, resumed from step ${e.resume_step}`;
  return `attempt ${e.attempt}${resumed}`;
}

// The attempts before it, as their checkpoints recorded them (hover text of the attempt cell).
function earlierText(e) {
  return (e.earlier_attempts || [])
    .map((a) => `attempt ${a.attempt} on ${a.worker_id}: from ${a.resume_step ?? "the start"} to step ${a.last_step}`)
    .join("\n");
}

function renderLeaderboard(board) {
  const section = document.getElementById("leaderboard-section");
  section.hidden = !board;
  if (!board) return;
  document.getElementById("leaderboard-objective").textContent =
    `${board.objective.direction} ${board.objective.metric}: ${board.rows.length} of ${board.trials} trials recorded`;
  document.querySelector("#leaderboard tbody").replaceChildren(
    ...board.rows.map((r) =>
      el(
        "tr",
        { dataset: { trial: r.trial, outcome: r.outcome } },
        el("td", { class: "num" }, r.rank),
        el("td", { class: "num" }, r.trial),
        // A diverged trial has no objective (its metric is NaN or infinite): it says so, ranked last.
        r.outcome === "diverged"
          ? el("td", { class: "objective diverged" }, "diverged")
          : el("td", { class: "num objective", dataset: { value: r.objective } }, num(r.objective)),
        el("td", {}, el("code", {}, JSON.stringify(r.hyperparameters))),
        el("td", { class: "muted" }, Object.entries(r.metrics).map(([k, v]) => `${k}=${num(v, 4)}`).join(" ")),
        // What the trial's results cost over its rungs (absent: its workers were unpriced).
        el("td", { class: "num cost" }, r.cost_usd === undefined ? "—" : usd(r.cost_usd)),
      ),
    ),
  );
}

// $0.06, or $0.0031 below a cent (the CLI's wording: shardq/core/budgets.py money).
function usd(value) {
  return value && Math.abs(value) < 0.01 ? `$${value.toFixed(4)}` : `$${value.toFixed(2)}`;
}

function renderFailures(failures) {
  document.querySelector("#failures tbody").replaceChildren(
    ...failures.map((f) =>
      el(
        "tr",
        { dataset: { round: f.round, shard: f.shard_id } },
        el("td", { class: "num" }, f.round + 1),
        el("td", { class: "num" }, f.shard_id),
        el("td", {}, f.task_type),
        el("td", {}, f.source),
        el("td", { class: "num" }, f.attempt ?? ""),
        el("td", { class: "num" }, f.receive_count ?? ""),
        el("td", { class: "error-text" }, f.error),
      ),
    ),
  );
  document.getElementById("failures-empty").hidden = failures.length > 0;
}

async function renderJob(jobId) {
  const detail = await api(`/api/jobs/${encodeURIComponent(jobId)}`);
  const job = detail.job;
  document.title = `${job.job_id} · shardq`;
  const title = document.getElementById("job-title");
  title.replaceChildren(job.job_id, " ", badge(job.status));
  title.dataset.status = job.status;
  renderFields(job, detail.stall, detail.fedbuff);
  renderProgress(detail.progress);
  renderCurves(detail);
  renderLeaderboard(detail.leaderboard);
  renderTimeline(detail.timeline);
  renderFailures(detail.failures);
  // A finished job does not change: stop polling it (the queues panel still refreshes on reload).
  return !TERMINAL.has(job.status);
}

async function renderQueues() {
  const queues = await api("/api/queues");
  document.querySelector("#queues tbody").replaceChildren(
    ...queues.map((q) =>
      el(
        "tr",
        { dataset: { queue: q.queue } },
        el("td", { title: q.url }, q.queue),
        el("td", { class: `num${q.dead_letter && q.visible ? " error" : ""}` }, q.visible),
        el("td", { class: "num" }, q.in_flight),
        el("td", { class: "num" }, q.delayed),
      ),
    ),
  );
}

// -- routing and polling -----------------------------------------------------------------------

function resetJobView() {
  for (const entry of Object.values(state.charts)) entry.chart.destroy();
  document.getElementById("curves").replaceChildren();
  state.charts = {};
  if (state.timeline) state.timeline.destroy();
  state.timeline = null;
}

async function tick() {
  clearTimeout(state.timer);
  let again = true;
  try {
    const [live] = await Promise.all([state.view === "job" ? renderJob(state.jobId) : renderList(), renderQueues()]);
    again = live;
    showError(null);
    stamp();
    document.body.dataset.loaded = "true";
  } catch (error) {
    showError(error);
  }
  if (again) state.timer = setTimeout(tick, state.refreshMs);
}

function route() {
  const match = location.hash.match(/^#\/job\/(.+)$/);
  const view = match ? "job" : "list";
  const jobId = match ? decodeURIComponent(match[1]) : null;
  if (view !== state.view || jobId !== state.jobId) resetJobView();
  state.view = view;
  state.jobId = jobId;
  document.getElementById("list-view").hidden = view !== "list";
  document.getElementById("job-view").hidden = view !== "job";
  delete document.body.dataset.loaded;
  tick();
}

async function start() {
  try {
    const config = await api("/api/config");
    state.refreshMs = Math.max(500, 1000 * config.refresh_s);
    document.getElementById("source").textContent = config.source ? `· ${config.source}` : "";
    document.getElementById("source").title = "where the job table and queues are read";
  } catch (error) {
    showError(error);
  }
  const form = document.getElementById("filters");
  form.addEventListener("change", () => tick());
  form.addEventListener("input", () => tick());
  form.addEventListener("submit", (event) => event.preventDefault());
  document.getElementById("log-scale").addEventListener("change", () => {
    for (const { chart } of Object.values(state.charts)) {
      chart.options.scales.y.type = yScale();
      chart.update("none");
    }
  });
  window.addEventListener("hashchange", route);
  route();
}

start();
