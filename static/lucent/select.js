// Row selection on the dead-letter list (a static file: the CSP forbids inline scripts).
//
// The chosen ids live here, not in the checkboxes: the rows are replaced live (websocket
// swaps of #dl-body) and after a job, and a selection must survive that. The bulk bar's
// form carries them as hidden `ids` fields, so what is posted is exactly what the count
// in the bar says.
(function () {
  "use strict";

  var picked = new Set();

  function boxes() {
    return document.querySelectorAll("input.dl-pick");
  }

  function render() {
    var n = picked.size;
    document.querySelectorAll("[data-selected-count]").forEach(function (el) {
      el.textContent = String(n);
    });
    document.querySelectorAll("[data-needs-selection]").forEach(function (b) {
      b.disabled = n === 0;
    });
    var holder = document.getElementById("dl-picked-ids");
    if (holder) {
      holder.replaceChildren();
      picked.forEach(function (id) {
        var input = document.createElement("input");
        input.type = "hidden";
        input.name = "ids";
        input.value = id;
        holder.appendChild(input);
      });
    }
    var shown = Array.prototype.slice.call(boxes());
    var all = document.getElementById("dl-pick-all");
    if (all) {
      all.checked = shown.length > 0 && shown.every(function (b) { return b.checked; });
    }
    // The header's count is kept current by the websocket; the bar's "all that match"
    // buttons repeat it, so they never name a stale number.
    var total = document.getElementById("dl-count");
    if (total) {
      document.querySelectorAll("[data-total-count]").forEach(function (el) {
        el.textContent = total.textContent.trim();
      });
    }
  }

  function sync() {
    boxes().forEach(function (b) { b.checked = picked.has(b.value); });
    render();
  }

  document.addEventListener("change", function (e) {
    var t = e.target;
    if (t.classList && t.classList.contains("dl-pick")) {
      if (t.checked) { picked.add(t.value); } else { picked.delete(t.value); }
      render();
    } else if (t.id === "dl-pick-all") {
      boxes().forEach(function (b) {
        b.checked = t.checked;
        if (t.checked) { picked.add(b.value); } else { picked.delete(b.value); }
      });
      render();
    }
  });

  // Rows swapped in (live or after a job) show the selection again.
  document.addEventListener("htmx:afterSettle", sync);
  document.addEventListener("htmx:oobAfterSwap", sync);
  // A job ended: the selected letters were handled, so the selection starts afresh.
  document.addEventListener("dl-changed", function () {
    picked.clear();
    sync();
  });

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", sync);
  } else {
    sync();
  }
})();
