// Runs in <head>, before the first paint (a file: the CSP allows no inline script), so a
// chosen theme never flashes the other one. Same localStorage key and values as Django's
// admin (admin/js/theme.js): choosing in either applies to both.
(function () {
  let mode = "auto";
  try { mode = localStorage.getItem("theme") || "auto"; } catch (e) { /* storage off */ }
  document.documentElement.dataset.theme = mode;
})();
