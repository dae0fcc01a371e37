// The live indicator: says "live" only while the socket is open AND the figures are fresh.
//   live           socket open, the server's last status said ok, and it spoke recently
//   stale N s      the server says the data is N s old (bus away, collector silent), or it
//                  has said nothing for SILENT_S while the socket looks open
//   reconnecting   the socket closed: left "live" at once, figures aged from the last status
// While not live, <body> has class "stale": the figures are greyed and a banner says how
// old they are. The server's status fragment (#live-status, templates/fragments/
// live_status.html, swapped out of band) carries data-ok and data-age; this file only
// counts on from there.
(function () {
  const main = document.querySelector("main[ws-connect]");
  const banner = document.getElementById("stale-banner");
  if (!main) return;
  const SILENT_S = 8;  // the server sends a status every sweep (1 s) while live
  const CONNECT_S = 3;  // the first connect may take this long before it counts as lost
  const loadedAt = performance.now();
  let socketOpen = false;
  let everOpen = false;
  let socket = null;
  let seen = null;  // the #live-status element last read (an OOB swap replaces it)
  let statusAt = performance.now();
  let ageAt = 0;  // data age (s) when that status arrived
  let serverOk = true;
  let serverError = "";
  const relative = (s) => (window.lucentRelative ? window.lucentRelative(s) : Math.round(s) + " s ago");
  const short = (s) => relative(s).replace(/ ago$/, "").replace("just now", "0 s");

  function readStatus() {
    const el = document.getElementById("live-status");
    if (!el || el === seen) return el;
    seen = el;
    statusAt = performance.now();
    ageAt = parseFloat(el.dataset.age || "0") || 0;
    serverOk = el.dataset.ok === "1";
    serverError = el.dataset.error || "";
    return el;
  }

  function render() {
    const el = readStatus();
    if (!el) return;
    const silentFor = (performance.now() - statusAt) / 1000;
    const age = ageAt + silentFor;
    let state, detail = null, why = "";
    if (!socketOpen && !everOpen && performance.now() - loadedAt < CONNECT_S * 1000) {
      // The first connect (about 50 ms): the page's own figures, as fresh as rendered.
      state = serverOk ? "live" : "stale";
      why = serverError || "no fresh data";
    } else if (!socketOpen) {
      state = "reconnecting";
      why = "connection to the console lost";
    } else if (!serverOk) {
      state = "stale";
      why = serverError || "no fresh data";
    } else if (silentFor > SILENT_S) {
      state = "stale";
      why = "the console has sent nothing for " + short(silentFor);
    } else {
      state = "live";
    }
    el.classList.toggle("ok", state === "live");
    el.classList.toggle("down", state !== "live");
    el.classList.toggle("reconnecting", state === "reconnecting");
    el.classList.toggle("stale", state === "stale");
    const label = el.querySelector(".state");
    if (label) label.textContent = state === "stale" ? "stale " + short(age) : state;
    if (state === "reconnecting") {
      detail = " · figures from " + relative(age);
      const d = el.querySelector(".detail");
      if (d && d.textContent !== detail) d.textContent = detail;
    }
    document.body.classList.toggle("stale", state !== "live");
    if (banner) {
      // Pages that read the bus or the servers on each request (main.reads-directly) are
      // not the collector's figures: the banner says what is old, and they stay ungreyed.
      const subject = main.classList.contains("reads-directly")
        ? "The console's live figures (header, alerts) are " : "Figures below are ";
      const tail = main.classList.contains("reads-directly")
        ? " This page reads the bus directly and says so when a read fails." : "";
      banner.textContent = state === "live" ? "" : subject + short(age) + " old: " + why +
        (state === "reconnecting" ? "; reconnecting…" : ".") + tail;
    }
    document.body.dataset.live = state;  // for tests and for anyone's devtools
  }

  document.body.addEventListener("htmx:wsConnecting", render);
  document.body.addEventListener("htmx:wsOpen", (e) => {
    socketOpen = everOpen = true;
    socket = e.detail.socketWrapper;
    render();
  });
  document.body.addEventListener("htmx:wsClose", (e) => {
    socketOpen = false;
    render();
    // htmx reconnects by itself only after abnormal closes (1006, 1011-1013): a server
    // that went away cleanly (1000, 1001) would leave the page reconnecting for ever.
    const code = e.detail.event && e.detail.event.code;
    if (socket && [1006, 1011, 1012, 1013].indexOf(code) < 0 && !window.__lucentNoReconnect) {
      const wrapper = socket;
      setTimeout(() => { if (!socketOpen) wrapper.reconnect(); }, 2000);
    }
  });
  document.body.addEventListener("htmx:wsError", () => { socketOpen = false; render(); });
  document.body.addEventListener("htmx:oobAfterSwap", (e) => {
    if (e.detail.target && e.detail.target.id === "live-status") render();
  });
  document.body.addEventListener("htmx:wsAfterMessage", render);
  window.addEventListener("pagehide", () => { window.__lucentNoReconnect = true; });
  // Before the socket opens the page's own figures are as old as the server said.
  render();
  setInterval(render, 1000);
})();
