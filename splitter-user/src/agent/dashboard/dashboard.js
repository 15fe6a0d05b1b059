// The dashboard's script: polls /dashboard.json every second and redraws
// the services. Plain DOM, no framework, no build step; every value goes in
// as text (never as markup).
"use strict";

const POLL_MS = 1000;
const KINDS = [
  ["configured", "configured (file)"],
  ["live", "live (served now)"],
  ["observed", "observed"],
];

/** An element with attributes (`class`, `data-*`, others) and children. */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") e.className = v;
    else e.setAttribute(k, String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const pct = (x) => (x === null || x === undefined ? "–" : `${x.toFixed(1)} %`);

function duration(ms) {
  if (ms >= 3600000 && ms % 3600000 === 0) return `${ms / 3600000} h`;
  if (ms >= 60000 && ms % 60000 === 0) return `${ms / 60000} min`;
  if (ms >= 1000) return `${(ms / 1000).toFixed(ms % 1000 ? 1 : 0)} s`;
  return `${ms} ms`;
}

/** A gate's value in the unit its name says. */
function gateValue(gate, v) {
  if (v === null || v === undefined) return "–";
  if (/rate\b/.test(gate)) return `${(v * 100).toFixed(2)} %`;
  if (/seconds\b/.test(gate)) return `${(v * 1000).toFixed(1)} ms`;
  return Number.isInteger(v) ? String(v) : v.toPrecision(4);
}

function ago(unixMs, now) {
  const s = Math.max(0, Math.round((now - unixMs) / 1000));
  return s < 120 ? `${s} s ago` : `${Math.round(s / 60)} min ago`;
}

function shares(svc, observedSecs) {
  const legend = el("div", { class: "legend" },
    KINDS.map(([k, label]) => el("span", {}, el("i", { class: k }),
      k === "observed" ? `${label} (last ${observedSecs} s)` : label)));
  const rows = svc.versions.map((v) => {
    const row = el("div", { class: "version", "data-version": v.name }, el("div", { class: "name" }, v.name));
    for (const [kind] of KINDS) {
      const value = v[kind];
      const fill = el("div", {
        class: `fill ${kind}`,
        "data-service": svc.name,
        "data-version": v.name,
        "data-kind": kind,
        "data-share": value === null ? "" : value,
      });
      // CSSOM, which the page's content security policy allows.
      fill.style.width = `${value === null ? 0 : Math.min(100, Math.max(0, value))}%`;
      let label = pct(value);
      if (kind === "observed" && v.observed_count !== null) label += ` · ${v.observed_count}`;
      row.append(el("div", { class: "share" }, el("div", { class: "track", title: kind }, fill),
        el("span", { class: "pct" }, label)));
    }
    return row;
  });
  return [el("h3", {}, "Split"), legend, ...rows];
}

function rollout(svc) {
  const r = svc.rollout;
  if (!r) return [];
  const steps = el("ol", { class: "steps", "data-service": svc.name, "data-step": r.step, "data-state": r.state },
    r.steps.map((p, i) => el("li", {
      class: i < r.step || r.state === "promoted" ? "done" : i === r.step ? "current" : "todo",
    }, `${p} %`)));
  const where = r.state === "running" || r.state === "paused"
    ? `step ${r.step + 1} of ${r.steps.length} (${r.steps[r.step]} % to ${r.to}), ` +
      `${duration(r.elapsed_ms)} of ${duration(r.interval_ms)}`
    : `to ${r.to}`;
  const state = el("div", {},
    el("strong", { class: `state-${r.state.replace(" ", "-")}` }, r.state), ` — ${where}; ${r.origin}`,
    r.why ? el("div", { class: "why" }, r.why) : null);
  const out = [el("h3", {}, "Rollout"), steps, state];
  if (r.gates.length) {
    out.push(el("table", { class: "gates" },
      el("tr", {}, el("th", {}, "gate"), el("th", {}, "canary"), el("th", {}, "baseline"),
        el("th", {}, "limit"), el("th", {}, "verdict")),
      r.gates.map((g) => el("tr", {},
        el("td", {}, g.gate),
        el("td", { class: "num" }, gateValue(g.gate, g.value)),
        el("td", { class: "num" }, gateValue(g.gate, g.baseline)),
        el("td", { class: "num" }, g.limit === null ? "(in its name)" : gateValue(g.gate, g.limit)),
        el("td", { class: g.verdict }, g.verdict)))));
  }
  return out;
}

function health(svc, now) {
  const h = svc.health;
  if (!h) return [];
  const down = h.endpoints.filter((e) => !e.up).length;
  return [
    el("h3", {}, `Endpoints (${h.endpoints.length - down} of ${h.endpoints.length} up)`),
    el("table", { class: "health" },
      el("tr", {}, el("th", {}, "endpoint"), el("th", {}, "version"), el("th", {}, "state"),
        el("th", {}, "since"), el("th", {}, "why")),
      h.endpoints.map((e) => {
        const state = e.ejected ? "ejected" : e.up ? "up" : "down";
        return el("tr", { "data-endpoint": e.endpoint },
          el("td", {}, el("code", {}, e.endpoint)), el("td", {}, e.version),
          el("td", { class: state }, state), el("td", {}, ago(e.since_unix_ms, now)),
          el("td", {}, e.last_error ? `${e.reason}: ${e.last_error}` : e.reason));
      })),
  ];
}

function mirror(svc, now) {
  const out = [];
  const m = svc.mirror;
  if (m) {
    out.push(el("h3", {}, "Mirror comparison"),
      el("div", { class: "mirror", "data-service": svc.name },
        `${m.sampled} sampled, ${m.compared} compared: ${m.matched} matched, `,
        el("span", { class: m.differ ? "breached" : "ok" }, `${m.differ} differed`),
        `; ${m.shadow_errors} shadow errors, ${m.shadow_timeouts} timeouts, ${m.dropped_queue_full} dropped`));
    if (svc.diffs.length) {
      out.push(el("table", { class: "diffs" },
        el("tr", {}, el("th", {}, "when"), el("th", {}, "request"), el("th", {}, "primary"),
          el("th", {}, "shadow"), el("th", {}, "what differs")),
        svc.diffs.map((d) => el("tr", {},
          el("td", {}, ago(d.at_unix_ms, now)), el("td", { class: "request" }, d.request),
          el("td", { class: "num" }, d.primary_status), el("td", { class: "num" }, d.shadow_status),
          el("td", {}, d.diff)))));
    }
  }
  const f = svc.flow_mirror;
  if (f) {
    out.push(el("h3", {}, "Flow mirror"),
      el("div", {}, `${f.interface || "off"} at ${f.percent} % of new flows: ${f.packets} packets copied`));
  }
  return out;
}

function service(svc, view) {
  return el("section", { class: "service", "data-service": svc.name },
    el("h2", {}, svc.name),
    el("div", { class: "meta" }, `${svc.mode} ${svc.protocol} on `, el("code", {}, svc.listen),
      svc.differs_from_file ? el("span", { class: "differs" }, " · differs from the file") : null),
    shares(svc, view.observed_secs),
    rollout(svc),
    health(svc, view.at_unix_ms),
    mirror(svc, view.at_unix_ms));
}

function render(view) {
  const agent = view.pid === null ? "no agent answers" : `agent pid ${view.pid}`;
  const node = view.node ? ` · node ${view.node}` : "";
  document.getElementById("agent").textContent =
    `${agent}${node} · ${view.active_flows} of ${view.flow_table_size} flow entries`;
  document.getElementById("updated").textContent =
    `updated ${new Date(view.at_unix_ms).toLocaleTimeString()}`;
  document.getElementById("updated").dataset.at = view.at_unix_ms;
  document.getElementById("services").replaceChildren(...view.services.map((s) => service(s, view)));
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const answer = await fetch("/dashboard.json", { cache: "no-store" });
    if (!answer.ok) throw new Error(`${answer.status}: ${(await answer.text()).trim()}`);
    render(await answer.json());
    error.hidden = true;
  } catch (e) {
    error.textContent = `The agent does not answer (${e.message}); showing the last data.`;
    error.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
