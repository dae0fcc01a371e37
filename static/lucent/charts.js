// History charts (plotly.js from the plotly package) and their live points.
// #chart-data: {"t": [...], "series": {key: [...]}, "charts": [{"id", "title",
// "traces": [[key, label], ...], "bar"?: true, "x"?: key of its own times}]}.
// The websocket swaps #chart-point out of band: data-t and data-values {key: value}.
(function () {
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const layout = (title) => ({
    title: {text: title, font: {size: 13}}, height: 240, margin: {l: 50, r: 10, t: 30, b: 30},
    paper_bgcolor: "#161d24", plot_bgcolor: "#161d24", font: {color: "#d7dee5"},
    xaxis: {type: "date", gridcolor: "#26313b"}, yaxis: {gridcolor: "#26313b", rangemode: "tozero"},
    legend: {orientation: "h"},
  });
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
