// Draws each page's Plotly figures: a <script type="application/json" class="plotly-figure"> holds the
// figure the server built (freestack.ui.plots), data-target names the element to draw it in.
document.addEventListener("DOMContentLoaded", () => {
  for (const holder of document.querySelectorAll("script.plotly-figure")) {
    const target = document.getElementById(holder.dataset.target);
    if (!target || !window.Plotly) continue;
    const fig = JSON.parse(holder.textContent);
    window.Plotly.newPlot(target, fig.data, fig.layout, {responsive: true, displaylogo: false})
      .then(() => target.setAttribute("data-drawn", "true"));
  }
});
