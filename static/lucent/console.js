// Small page helpers (deferred, every page): the theme toggle, copy-on-click for whole ids,
// and relative times ("3 min ago") kept current between the server's renders.
(function () {
  // ---- theme: auto (the system's) -> light -> dark -> auto, as the admin's toggle does.
  const root = document.documentElement;
  const label = {auto: "◐", light: "☀", dark: "☾"};
  function showTheme(button) {
    const mode = root.dataset.theme || "auto";
    button.textContent = label[mode] || label.auto;
    button.title = "Theme: " + mode + " (click to change)";
  }
  document.addEventListener("click", (e) => {
    const button = e.target.closest("#theme-toggle");
    if (!button) return;
    const order = ["auto", "light", "dark"];
    const next = order[(order.indexOf(root.dataset.theme || "auto") + 1) % order.length];
    root.dataset.theme = next;
    try { localStorage.setItem("theme", next); } catch (err) { /* storage off: this page only */ }
    showTheme(button);
    document.dispatchEvent(new CustomEvent("lucent:theme"));  // charts.js recolours
  });
  const toggle = document.getElementById("theme-toggle");
  if (toggle) showTheme(toggle);

  // ---- copy: any element with data-copy copies that whole value (ids are cut in tables).
  function fallbackCopy(text) {  // plain http on another host has no navigator.clipboard
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (err) { ok = false; }
    area.remove();
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }
  document.addEventListener("click", (e) => {
    const el = e.target.closest("[data-copy]");
    if (!el) return;
    const sel = window.getSelection();
    if (sel && !sel.isCollapsed && el.contains(sel.anchorNode)) return;  // selecting, not copying
    e.preventDefault();  // an id inside a link: copy, do not follow
    const text = el.dataset.copy;
    const copy = navigator.clipboard && window.isSecureContext
      ? navigator.clipboard.writeText(text).catch(() => fallbackCopy(text)) : fallbackCopy(text);
    copy.then(() => {
      el.classList.add("copied");
      setTimeout(() => el.classList.remove("copied"), 1200);
    }, () => { el.title = text + " (copy refused by the browser: select it)"; });
  });

  // ---- relative times: <time data-rel datetime=...> from the template filter `ago`.
  // The server's clock is the reference (body data-now, its epoch at render time), so a
  // laptop whose clock is off does not make fresh data look old.
  const serverNow = parseFloat(document.body.dataset.now || "0");
  const skewMs = serverNow ? serverNow * 1000 - Date.now() : 0;
  function relative(seconds) {
    const s = Math.abs(seconds);
    let text;
    if (s < 1) return "just now";
    if (s < 60) text = Math.round(s) + " s";
    else if (s < 3600) text = Math.floor(s / 60) + " min";
    else if (s < 86400) {
      const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
      text = h + " h" + (m && h < 10 ? " " + m + " min" : "");
    } else text = Math.floor(s / 86400) + " d";
    return seconds < -1 ? "in " + text : text + " ago";
  }
  function refreshTimes() {
    const now = Date.now() + skewMs;
    for (const el of document.querySelectorAll("time[data-rel]")) {
      const t = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(t)) el.textContent = relative((now - t) / 1000);
    }
  }
  setInterval(refreshTimes, 5000);

  // A refused or bad action answers 4xx with its reason as a fragment (htmx-config in
  // base.html swaps it in). A 5xx or a lost connection swaps nothing: say so where the
  // answer would have gone, never fail silently.
  function failed(e, why) {
    const target = e.detail && e.detail.target;
    if (!target || !target.isConnected) return;
    const p = document.createElement("p");
    p.className = "error request-failed";
    p.textContent = why;
    target.replaceChildren(p);
  }
  document.body.addEventListener("htmx:responseError", (e) => {
    const status = e.detail.xhr ? e.detail.xhr.status : "?";
    failed(e, "The console could not do this (HTTP " + status + "). The audit page says " +
              "whether anything was done; the server log has the cause.");
  });
  document.body.addEventListener("htmx:sendError", (e) => {
    failed(e, "The console did not answer (network or server down): try again.");
  });
  window.lucentRelative = relative;  // live.js says "stale 3 min" the same way
})();
