// Stream history charts (plotly.js from the plotly package) and live points.
(function () {
  const data = JSON.parse(document.getElementById("chart-data").textContent);
  const layout = (title) => ({
    title: {text: title, font: {size: 13}}, height: 240, margin: {l: 50, r: 10, t: 30, b: 30},
    paper_bgcolor: "#161d24", plot_bgcolor: "#161d24", font: {color: "#d7dee5"},
    xaxis: {type: "date", gridcolor: "#26313b"}, yaxis: {gridcolor: "#26313b", rangemode: "tozero"},
    legend: {orientation: "h"},
  });
  const cfg = {displayModeBar: false, responsive: true};
  Plotly.newPlot("chart-rate", [{x: data.t, y: data.rate, name: "messages in/s", mode: "lines"}],
                 layout("Message rate"), cfg);
  Plotly.newPlot("chart-pending", [
    {x: data.t, y: data.pending, name: "pending", mode: "lines"},
    {x: data.t, y: data.ack_pending, name: "ack pending", mode: "lines"}], layout("Pending"), cfg);
  if (document.getElementById("history").dataset.live !== "1") return;
  // The websocket swaps #chart-point out of band on every sweep: extend the traces.
  document.body.addEventListener("htmx:oobAfterSwap", (e) => {
    const el = document.getElementById("chart-point");
    if (!el || !el.dataset.t || e.detail.target.id !== "chart-point") return;
    const num = (v) => (v === "" || v === undefined ? null : Number(v));
    Plotly.extendTraces("chart-rate", {x: [[el.dataset.t]], y: [[num(el.dataset.rate)]]}, [0], 2000);
    Plotly.extendTraces("chart-pending", {x: [[el.dataset.t], [el.dataset.t]],
      y: [[num(el.dataset.pending)], [num(el.dataset.ackPending)]]}, [0, 1], 2000);
  });
})();
