// The freestack pages' one script (the CSP allows no other): loaded in <head>, before the page paints.
//
// - theme: the page follows Airflow's UI (next-themes puts class "dark" or "light" on the UI's <html>, and
//   keeps the choice in localStorage "theme"); framed, it watches the UI's <html>; alone, it follows
//   localStorage, then the system's prefers-color-scheme;
// - deep links: framed under Airflow's /plugin/freestack route, each page writes its own path into the
//   address bar (/plugin/freestack/models/digits/v3); Airflow frames the entry's href whatever the path
//   after the route is, so that href carries "fs-shell" and the page it loads goes on to the path the
//   address bar names (a reload, a bookmark, an extra link); Back steps back through the frame's pages;
//   links to Airflow's own pages (target=_top) are followed inside the UI, without reloading it;
// - loading: a progress bar and spinner from a click until the next page paints;
// - tables: sort (click a header; numbers as numbers) and a filter box, on each table with a header row;
// - Plotly: draws each <script type="application/json" class="plotly-figure"> into its data-target.
(function () {
  "use strict";
  const root = document.documentElement;
  const BASE = root.dataset.base || "/freestack/ui";
  const ROUTE = root.dataset.route || "freestack";
  const SHELL_PARAM = "fs-shell";
  const shellPath = new RegExp("^(.*/plugin/" + ROUTE + ")(/.*)?$");

  /** The Airflow UI framing this page (same origin), else null. */
  const ui = (function () {
    try {
      if (window.parent !== window && window.parent.location.origin === window.location.origin) return window.parent;
    } catch (e) { /* another origin */ }
    return null;
  })();
  if (ui) root.classList.add("fs-framed");

  // ------------------------------------------------------------------------------------------------ theme
  function mode() {
    if (ui) {
      const c = ui.document.documentElement.classList;
      if (c.contains("dark")) return "dark";
      if (c.contains("light")) return "light";
    }
    let stored = null;
    try { stored = window.localStorage.getItem("theme"); } catch (e) { /* storage off */ }
    if (stored === "dark" || stored === "light") return stored;
    return window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  function applyTheme() {
    const m = mode();
    root.classList.toggle("dark", m === "dark");
    root.classList.toggle("light", m !== "dark");
    root.style.colorScheme = m;
    if (document.readyState !== "loading") rethemeFigures();
  }
  applyTheme();
  window.addEventListener("storage", (e) => { if (e.key === null || e.key === "theme") applyTheme(); });
  if (window.matchMedia) window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", applyTheme);

  // ------------------------------------------------------------------------------------------- deep links
  /** {prefix: ".../plugin/freestack", sub: "/models/digits"} of the UI's address, or null off the route. */
  function uiRoute() {
    const m = ui && ui.location.pathname.match(shellPath);
    return m ? {prefix: m[1], sub: m[2] && m[2] !== "/" ? m[2] : ""} : null;
  }
  /** This page's path under BASE ("/models/digits"), or null for a page outside it. */
  function ownSub() {
    const p = window.location.pathname;
    return p === BASE ? "/" : p.startsWith(BASE + "/") ? p.slice(BASE.length) : null;
  }
  const same = (a, b) => (a || "/models").replace(/^\/$/, "/models") === (b || "/models").replace(/^\/$/, "/models");
  /** A framed page's own URL for the sub-path and query the UI's address names (only paths under BASE). */
  function target(sub, search, hash) {
    if (!/^\/[^/\\]/.test(sub) || /(^|\/)\.\.?(\/|$)/.test(sub)) return null;
    const url = new URL(BASE + sub + (search || "") + (hash || ""), window.location.origin);
    return url.origin === window.location.origin && url.pathname.startsWith(BASE + "/") ? url : null;
  }
  /** This page's path and query (less fs-shell), "/" as "/models". */
  function here() {
    const params = new URLSearchParams(window.location.search);
    params.delete(SHELL_PARAM);
    const query = params.toString();
    const sub = ownSub();
    return (sub === "/" ? "/models" : sub) + (query ? "?" + query : "");
  }
  /** A page of ours (views.js runs there), not a registered file or a report it serves as it is. */
  function isPage(url) {
    return (url.pathname === BASE || url.pathname.startsWith(BASE + "/")) && !/\/files\/|\/report$|^\/static\/|^\/api\//.test(url.pathname.slice(BASE.length));
  }
  let syncing = false;
  /** Write this page's location into the UI's address bar: a new history entry after a click here (Back
   *  returns to the page before), else the current entry (a reload, a redirect, Back itself). */
  function syncAddress(push) {
    const r = uiRoute();
    const sub = ownSub();
    if (!r || sub === null) return;
    const params = new URLSearchParams(window.location.search);
    params.delete(SHELL_PARAM);
    const query = params.toString();
    const want = r.prefix + (sub === "/" ? "" : sub) + (query ? "?" + query : "") + window.location.hash;
    const now = ui.location.pathname + ui.location.search + ui.location.hash;
    if (want === now) return;
    const st = ui.history.state || {};
    syncing = true;
    try {
      if (push) {  // the state React Router keeps (its index), one further on
        ui.history.pushState({usr: null, key: Math.random().toString(36).slice(2, 10), idx: typeof st.idx === "number" ? st.idx + 1 : 0}, "", want);
      } else {
        ui.history.replaceState(st, "", want);
      }
    } finally { syncing = false; }
  }
  /** Open a page of ours in this frame without a history entry of the frame's own: the UI's address bar
   *  gets the entry (pushed by the next page), so Back works after a reload too. */
  function go(url, push) {
    busy();
    try { if (push) window.sessionStorage.setItem("fs-push", "1"); } catch (e) { /* storage off */ }
    window.location.replace(url);
  }

  let leaving = false;
  const detach = [];
  function attach() {
    if (!ui) return;
    const onTheme = new MutationObserver(applyTheme);
    onTheme.observe(ui.document.documentElement, {attributes: true, attributeFilter: ["class", "style"]});
    detach.push(() => onTheme.disconnect());
    // the UI's address changed by itself (Back or Forward, its nav entry, a link of its own): follow it
    const follow = (kind) => {
      if (syncing || leaving || kind === "reload") return;
      const r = uiRoute();
      if (!r || here() === (r.sub || "/models") + (r.sub ? ui.location.search : "")) return;
      const url = target(r.sub || "/models", r.sub ? ui.location.search : "", r.sub ? ui.location.hash : "");
      if (url && url.href !== window.location.href) { leaving = true; go(url.href, false); }
    };
    if (ui.navigation) {
      const onEntry = (e) => follow(e.navigationType);
      ui.navigation.addEventListener("currententrychange", onEntry);
      detach.push(() => ui.navigation.removeEventListener("currententrychange", onEntry));
    } else {
      const onPop = () => follow("traverse");
      ui.addEventListener("popstate", onPop);
      detach.push(() => ui.removeEventListener("popstate", onPop));
    }
  }
  window.addEventListener("pagehide", () => { while (detach.length) detach.pop()(); });
  window.addEventListener("pageshow", (e) => { if (e.persisted) { attach(); syncAddress(false); } });

  if (ui) {
    const params = new URLSearchParams(window.location.search);
    if (params.has(SHELL_PARAM)) {  // loaded from the nav entry's href: go where the address bar says
      const r = uiRoute();
      const url = r && r.sub && !same(r.sub, ownSub()) ? target(r.sub, ui.location.search, ui.location.hash) : null;
      if (url) {
        leaving = true;
        root.classList.add("fs-redirect");
        go(url.href, false);
      } else {
        params.delete(SHELL_PARAM);
        const query = params.toString();
        window.history.replaceState(window.history.state, "", window.location.pathname + (query ? "?" + query : "") + window.location.hash);
      }
    }
    if (!leaving) {
      let push = false;
      try { push = window.sessionStorage.getItem("fs-push") === "1"; window.sessionStorage.removeItem("fs-push"); } catch (e) { /* storage off */ }
      syncAddress(push);
      attach();
      window.addEventListener("hashchange", () => syncAddress(false));
    }
  }

  /** Follow a link to Airflow's own UI inside the UI (its router reads the address on popstate). */
  function openInUi(href) {
    const url = new URL(href, window.location.href);
    if (!ui || url.origin !== window.location.origin) return false;
    ui.history.pushState(null, "", url.pathname + url.search + url.hash);
    ui.dispatchEvent(new PopStateEvent("popstate", {state: null}));
    return true;
  }

  // ---------------------------------------------------------------------------------------------- loading
  function busy() { root.classList.add("fs-busy"); }
  window.addEventListener("pageshow", () => { if (!leaving) root.classList.remove("fs-busy", "fs-redirect"); });
  document.addEventListener("click", (e) => {
    const a = e.target.closest && e.target.closest("a[href]");
    if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    if (a.target === "_top" && openInUi(a.href)) { e.preventDefault(); return; }
    if ((a.target && a.target !== "_self") || a.hasAttribute("download")) return;
    const url = new URL(a.href, window.location.href);
    if (url.origin !== window.location.origin) return;
    if (url.pathname === window.location.pathname && url.search === window.location.search && url.hash) return;
    if (!url.pathname.startsWith(BASE + "/") && url.pathname !== BASE) return;
    if (ui && uiRoute() && isPage(url)) { e.preventDefault(); go(url.href, true); return; }
    busy();
  });
  document.addEventListener("submit", (e) => { if (!e.defaultPrevented) busy(); });

  // ----------------------------------------------------------------------------------------------- tables
  const NUMBER = /^[-+]?(\d{1,3}(,\d{3})+|\d*)(\.\d+)?(e[-+]?\d+)?\s*%?$/i;
  function sortKey(cell) {
    const raw = (cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent).trim();
    if (raw && NUMBER.test(raw) && /\d/.test(raw)) return {n: parseFloat(raw.replace(/[,%\s]/g, "")), s: raw};
    return {n: null, s: raw};
  }
  const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
  function compare(a, b) {
    if (!a.s !== !b.s) return a.s ? -1 : 1;  // empty cells last
    if (a.n !== null && b.n !== null) return a.n - b.n;
    return collator.compare(a.s, b.s);
  }
  /** The table's data rows (not its header, nor a "nothing yet" row spanning every column), read afresh:
   *  a page's script may add rows (it then fires "fs:rows-changed" on the table). */
  function dataRows(table) {
    return Array.from(table.rows).slice(1).filter((r) => !(r.cells.length === 1 && r.cells[0].colSpan > 1));
  }
  function enhance(table) {
    if (table.dataset.table === "off" || table.dataset.enhanced) return;
    const header = table.rows[0];
    if (!header || !header.cells.length || Array.from(header.cells).some((c) => c.tagName !== "TH")) return;
    const explicit = table.dataset.table !== undefined;
    const initial = dataRows(table).length;
    if (!explicit && (initial < 2 || table.closest("article"))) return;  // a one-row table, a card's own table
    table.dataset.enhanced = "true";
    table.classList.add("fs-table");
    const state = {col: -1, dir: "ascending", terms: []};
    const tools = document.createElement("div");
    tools.className = "fs-table-tools";
    const box = document.createElement("input");
    box.type = "search";
    box.className = "fs-filter";
    box.setAttribute("aria-label", "Filter the table's rows");
    if (table.id) box.id = table.id + "-filter";
    const count = document.createElement("span");
    count.className = "fs-count";
    tools.append(box, count);
    table.parentNode.insertBefore(tools, table);

    function apply() {
      const rows = dataRows(table);
      const head = table.rows[0];
      if (state.col >= 0 && rows.length) {
        const columns = head.cells.length;
        const keyed = rows.map((r, i) => ({r, i, k: r.cells.length === columns && r.cells[state.col] ? sortKey(r.cells[state.col]) : {n: null, s: ""}}));
        keyed.sort((x, y) => (state.dir === "ascending" ? 1 : -1) * compare(x.k, y.k) || x.i - y.i);
        const parent = rows[0].parentNode;
        for (const {r} of keyed) if (r.parentNode === parent) parent.appendChild(r);
      }
      let shown = 0;
      for (const r of rows) {
        const text = r.textContent.toLowerCase();
        const hit = state.terms.every((t) => text.includes(t));
        r.hidden = !hit;
        shown += hit ? 1 : 0;
      }
      box.placeholder = "Filter " + rows.length + " row" + (rows.length === 1 ? "" : "s") + "…";
      count.textContent = state.terms.length ? shown + " of " + rows.length : rows.length + " row" + (rows.length === 1 ? "" : "s");
      table.classList.toggle("fs-filtered-empty", shown === 0 && rows.length > 0);
    }
    function headers() {  // the header row may be redrawn (a new parameter column): mark it again
      const head = table.rows[0];
      Array.from(head.cells).forEach((th, col) => {
        if (th.colSpan > 1 || th.classList.contains("fs-sortable")) return;
        th.classList.add("fs-sortable");
        th.tabIndex = 0;
        th.title = "Sort by " + th.textContent.trim();
        if (col === state.col) th.setAttribute("aria-sort", state.dir);
      });
    }
    table.addEventListener("click", (e) => {
      const th = e.target.closest && e.target.closest("th.fs-sortable");
      if (!th || th.parentNode !== table.rows[0]) return;
      sortBy(th);
    });
    table.addEventListener("keydown", (e) => {
      const th = e.target.closest && e.target.closest("th.fs-sortable");
      if (th && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); sortBy(th); }
    });
    function sortBy(th) {
      state.dir = state.col === th.cellIndex && state.dir === "ascending" ? "descending" : "ascending";
      state.col = th.cellIndex;
      for (const other of table.rows[0].cells) other.removeAttribute("aria-sort");
      th.setAttribute("aria-sort", state.dir);
      apply();
    }
    box.addEventListener("input", () => {
      state.terms = box.value.toLowerCase().split(/\s+/).filter(Boolean);
      apply();
    });
    table.addEventListener("fs:rows-changed", () => { headers(); apply(); });
    headers();
    apply();
  }

  // ----------------------------------------------------------------------------------------------- Plotly
  /** Colours of a figure's text and grid for the theme (the figures' own background is the page's). */
  function themed(layout) {
    const dark = root.classList.contains("dark");
    const grid = dark ? "rgba(255,255,255,0.12)" : "rgba(0,0,0,0.08)";
    const out = {paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "rgba(0,0,0,0)", "font.color": dark ? "#e4e4e7" : "#27272a"};
    for (const key of Object.keys(layout || {})) {
      if (/^[xy]axis\d*$/.test(key)) { out[key + ".gridcolor"] = grid; out[key + ".zerolinecolor"] = grid; }
    }
    return out;
  }
  function drawFigures() {
    for (const holder of document.querySelectorAll("script.plotly-figure")) {
      const el = document.getElementById(holder.dataset.target);
      if (!el || !window.Plotly) continue;
      const fig = JSON.parse(holder.textContent);
      const layout = JSON.parse(JSON.stringify(fig.layout || {}));
      for (const [key, value] of Object.entries(themed(layout))) {  // "xaxis.gridcolor" -> layout.xaxis.gridcolor
        const path = key.split(".");
        let at = layout;
        for (const part of path.slice(0, -1)) at = at[part] = at[part] || {};
        at[path[path.length - 1]] = value;
      }
      window.Plotly.newPlot(el, fig.data, layout, {responsive: true, displaylogo: false})
        .then(() => el.setAttribute("data-drawn", "true"));
    }
  }
  /** Redraw the drawn figures' colours when the theme changes. */
  function rethemeFigures() {
    if (!window.Plotly) return;
    for (const el of document.querySelectorAll(".js-plotly-plot")) window.Plotly.relayout(el, themed(el.layout));
  }

  document.addEventListener("DOMContentLoaded", () => {
    if (leaving) return;
    document.querySelectorAll("table").forEach(enhance);
    drawFigures();
  });
})();
