// The sweep page's live view (freestack.ui.sweep_live). On load it asks the page's live endpoint
// (#summary's data-live-url) once for every part, which draws the parallel coordinates and the parameter
// importance; while the sweep runs it asks again every few seconds with the signature it has ("known"),
// and redraws what changed: the summary, each trial's row (updated in place, new trials appended), the
// importance table and the figures. It stops once the sweep is finished or stopped.
(function () {
  "use strict";
  const MAX_FAILURES = 5;

  function fragment(html) {
    const tpl = document.createElement("template");
    tpl.innerHTML = html.trim();
    return tpl.content.firstElementChild;
  }

  /** Update the trial's row in place (the table's sort and filter keep it), or append a new trial's row. */
  function putRow(tbody, id, html) {
    const fresh = fragment(html);
    const row = Array.from(tbody.rows).find((r) => r.dataset.trial === id);
    if (!row) {
      tbody.appendChild(fresh);
      return true;
    }
    if (row.innerHTML === fresh.innerHTML && row.className === fresh.className && row.dataset.state === fresh.dataset.state) return false;
    for (const a of Array.from(fresh.attributes)) row.setAttribute(a.name, a.value);
    row.replaceChildren(...Array.from(fresh.childNodes));
    return true;
  }

  function putRows(update) {
    const table = document.getElementById("trials");
    if (!table) return;
    const head = table.tHead;
    const fresh = fragment(update.header);
    if (head && fresh && head.rows[0] && head.rows[0].cells.length !== fresh.cells.length) head.replaceChildren(fresh);
    const tbody = table.tBodies[0] || table.createTBody();
    let changed = false;
    for (const [id, html] of update.rows) changed = putRow(tbody, id, html) || changed;
    if (!changed) return;
    table.dispatchEvent(new CustomEvent("fs:rows-changed", {bubbles: true}));
    const filter = document.getElementById(table.id + "-filter");  // views.js's filter box: apply it again
    if (filter && filter.value) filter.dispatchEvent(new Event("input"));
  }

  function draw(id, json) {
    const el = document.getElementById(id);
    if (!el || !window.Plotly) return;
    const fig = JSON.parse(json);
    const dark = document.documentElement.classList.contains("dark");
    const layout = Object.assign({}, fig.layout, {paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)"});
    layout.font = Object.assign({}, layout.font, {color: dark ? "#e4e4e7" : "#27272a"});
    window.Plotly.react(el, fig.data, layout, {responsive: true, displaylogo: false})
      .then(() => el.setAttribute("data-drawn", "true"));
  }

  function apply(summary, update) {
    summary.innerHTML = update.summary;
    putRows(update);
    const box = document.getElementById("importance-box");
    if (box) box.innerHTML = update.importance;
    for (const [id, json] of Object.entries(update.figures)) draw(id, json);
  }

  function start() {
    const summary = document.getElementById("summary");
    if (!summary || !summary.dataset.liveUrl) return;
    let known = "";
    let failures = 0;
    async function ask() {
      let update = null;
      try {
        const url = summary.dataset.liveUrl + "?known=" + encodeURIComponent(known);
        const r = await fetch(url, {credentials: "same-origin", headers: {Accept: "application/json"}});
        if (!r.ok) throw new Error("HTTP " + r.status);
        update = await r.json();
        failures = 0;
      } catch (e) {
        failures += 1;
        if (failures >= MAX_FAILURES) {
          summary.dataset.status = "unreachable";
          return;
        }
      }
      if (update) {
        if (update.changed) {
          apply(summary, update);
          known = update.signature;
        }
        summary.dataset.status = update.status;
        summary.dataset.signature = known;
        if (update.status !== "running") return;
      }
      const wait = (update ? update.poll_seconds : 3) * 1000 * (failures ? 2 ** failures : 1);
      window.setTimeout(ask, wait);
    }
    ask();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
