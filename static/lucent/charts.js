// History charts (plotly.js from the plotly package) and their live points.
// #chart-data: {"t": [...], "series": {key: [...]}, "charts": [{"id", "title",
// "traces": [[key, label], ...], "bar"?: true, "x"?: key of its own times}]}.
// The websocket swaps #chart-point out of band: data-t and data-values {key: value}.
(function () {
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  // Colours from console.css's variables: the charts follow the light/dark theme.
  const colours = () => {
    const css = getComputedStyle(document.documentElement);
    const v = (name) => css.getPropertyValue(name).trim();
    return {paper_bgcolor: v("--panel"), plot_bgcolor: v("--panel"), font: {color: v("--text")},
            "xaxis.gridcolor": v("--line"), "yaxis.gridcolor": v("--line")};
  };
  const layout = (title) => {
    const c = colours();
    return {
      title: {text: title, font: {size: 13}}, height: 240, margin: {l: 50, r: 10, t: 30, b: 30},
      paper_bgcolor: c.paper_bgcolor, plot_bgcolor: c.plot_bgcolor, font: c.font,
      xaxis: {type: "date", gridcolor: c["xaxis.gridcolor"]},
      yaxis: {gridcolor: c["yaxis.gridcolor"], rangemode: "tozero"},
      legend: {orientation: "h"},
    };
  };
  const recolour = () => { for (const chart of data.charts) Plotly.relayout(chart.id, colours()); };
  document.addEventListener("lucent:theme", recolour);
  window.matchMedia("(prefers-color-scheme: light)").addEventListener("change", recolour);
  const cfg = {displayModeBar: false, responsive: true};
  for (const chart of data.charts) {
    const x = chart.x ? data.series[chart.x] : data.t;
    Plotly.newPlot(chart.id, chart.traces.map(([key, name]) => (
      {x: x, y: data.series[key], name: name, type: chart.bar ? "bar" : "scatter",
       mode: chart.bar ? undefined : "lines"})), layout(chart.title), cfg);
  }
  if (document.getElementById("history").dataset.live !== "1") return;
  document.body.addEventListener("htmx:oobAfterSwap", (e) => {
    const el = document.getElementById("chart-point");
    if (!el || !el.dataset.t || e.detail.target.id !== "chart-point") return;
    const values = JSON.parse(el.dataset.values || "{}");
    for (const chart of data.charts) {
      const idx = [], ys = [];
      chart.traces.forEach(([key], i) => {
        if (!chart.x && key in values) { idx.push(i); ys.push([values[key]]); }
      });
      if (idx.length) Plotly.extendTraces(chart.id, {x: idx.map(() => [el.dataset.t]), y: ys}, idx, 2000);
    }
  });
})();
