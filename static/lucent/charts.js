// History charts (plotly.js from the plotly package) and their live points.
// #chart-data: {"t": [...], "series": {key: [...]}, "charts": [{"id", "title",
// "traces": [[key, label], ...], "bar"?: true, "x"?: key of its own times}]}.
// The websocket swaps #chart-point out of band: data-t and data-values {key: value}.
//
// plotly.min.js is 4.6 MB of JavaScript: compiling it takes ~1.5 s on a small machine the
// first time (later visits use the browser's code cache). Loaded as a parser-blocking
// script it held back the whole page (figures, consumers, forms) and its load event; so
// this file is deferred and fetches plotly (data-plotly, its hashed URL) only once the page
// has loaded: the figures show at once and the charts follow.
(function () {
  const me = document.currentScript;
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  // Colours from console.css's variables: the charts follow the light/dark theme.
  const colours = () => {
    const css = getComputedStyle(document.documentElement);
    const v = (name) => css.getPropertyValue(name).trim();
    return {paper_bgcolor: v("--panel"), plot_bgcolor: v("--panel"), font: {color: v("--text")},
            "xaxis.gridcolor": v("--line"), "yaxis.gridcolor": v("--line")};
  };
  // One colour per series, distinct in both themes (plotly's default cycles from blue
  // and gave a chart's two lines colours hard to tell apart at night).
  const SERIES = ["#58a6ff", "#d29922", "#f85149", "#3fb950", "#bc8cff"];
  // A few samples draw a line that says nothing: say how many there are until then.
  const ENOUGH = 3;
  const note = (n) => n === 0 ? "no samples yet: one every 10 s"
    : `collecting: ${n} sample${n === 1 ? "" : "s"} so far (one every 10 s)`;
  const layout = (title, unit, samples) => {
    const c = colours();
    return {
      title: {text: title, font: {size: 13}, x: 0, xanchor: "left"}, height: 260,
      // Room above the plot for the legend, left of it for the y axis title.
      margin: {l: 64, r: 10, t: 56, b: 40},
      paper_bgcolor: c.paper_bgcolor, plot_bgcolor: c.plot_bgcolor, font: c.font,
      xaxis: {type: "date", gridcolor: c["xaxis.gridcolor"], title: {text: "time", font: {size: 11}},
              // A short history (a few samples) never ticks in milliseconds.
              tickformatstops: [{dtickrange: [null, 1000], value: "%H:%M:%S"}]},
      yaxis: {gridcolor: c["yaxis.gridcolor"], rangemode: "tozero",
              title: {text: unit || "", font: {size: 11}}},
      // Above the plot, clear of both axes (below, it sat on the x axis's dates).
      legend: {orientation: "h", x: 0, xanchor: "left", y: 1.02, yanchor: "bottom"},
      annotations: samples >= ENOUGH ? [] : [{text: note(samples), showarrow: false,
        xref: "paper", yref: "paper", x: 0.5, y: 0.5, font: {color: c.font.color}}],
    };
  };
  let drawn = false;
  const waiting = [];  // live points that came before plotly did

  function extend(point) {
    for (const chart of data.charts) {
      const idx = [], ys = [];
      chart.traces.forEach(([key], i) => {
        if (!chart.x && key in point.values) { idx.push(i); ys.push([point.values[key]]); }
      });
      if (!idx.length) continue;
      Plotly.extendTraces(chart.id, {x: idx.map(() => [point.t]), y: ys}, idx, 2000);
      const el = document.getElementById(chart.id);
      const shown = el.layout;
      if (shown && shown.annotations && shown.annotations.length) {
        const n = (el.data[0] && el.data[0].x) ? el.data[0].x.length : 0;
        Plotly.relayout(chart.id, n >= ENOUGH ? {annotations: []} : {"annotations[0].text": note(n)});
      }
    }
  }

  function draw() {
    const cfg = {displayModeBar: false, responsive: true};
    for (const chart of data.charts) {
      const x = chart.x ? data.series[chart.x] : data.t;
      const el = document.getElementById(chart.id);
      el.classList.remove("loading");
      // The unit is the template's (data-unit): the chart definitions name series only.
      Plotly.newPlot(chart.id, chart.traces.map(([key, name], i) => (
        {x: x, y: data.series[key], name: name, type: chart.bar ? "bar" : "scatter",
         mode: chart.bar ? undefined : "lines", marker: {color: SERIES[i % SERIES.length]},
         line: {color: SERIES[i % SERIES.length], width: 1.6}})),
        layout(chart.title, el.dataset.unit, x ? x.length : 0), cfg);
    }
    const recolour = () => { for (const chart of data.charts) Plotly.relayout(chart.id, colours()); };
    document.addEventListener("lucent:theme", recolour);
    window.matchMedia("(prefers-color-scheme: light)").addEventListener("change", recolour);
    drawn = true;
    waiting.splice(0).forEach(extend);
  }

  if (document.getElementById("history").dataset.live === "1") {
    document.body.addEventListener("htmx:oobAfterSwap", (e) => {
      const el = document.getElementById("chart-point");
      if (!el || !el.dataset.t || e.detail.target.id !== "chart-point") return;
      const point = {t: el.dataset.t, values: JSON.parse(el.dataset.values || "{}")};
      if (drawn) extend(point); else waiting.push(point);
    });
  }

  for (const chart of data.charts) document.getElementById(chart.id).classList.add("loading");
  function load() {
    if (window.Plotly) { draw(); return; }
    const script = document.createElement("script");
    script.src = me.dataset.plotly;
    script.onload = draw;
    script.onerror = () => {
      for (const chart of data.charts) {
        const el = document.getElementById(chart.id);
        el.classList.remove("loading");
        el.textContent = "The charts could not be loaded (plotly.min.js): reload the page.";
      }
    };
    document.head.appendChild(script);
  }
  if (document.readyState === "complete") load(); else window.addEventListener("load", load);
})();
