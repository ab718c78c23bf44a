// ticketing — the only script: the order page's countdown. Counts down from
// the time left the server computed (so a wrong clock on this device does
// not matter); at zero it says so, disables paying and reloads the page, which
// then shows the order's state (cancelled once the expiration lands).
"use strict";
(function () {
  var clock = document.getElementById("countdown");
  if (!clock) return;
  var status = document.getElementById("countdown-status");
  var left = parseInt(clock.getAttribute("data-ms-left") || "0", 10);
  var start = performance.now();
  function pad(n) { return n < 10 ? "0" + n : String(n); }
  function expired() {
    clock.textContent = "expired";
    clock.removeAttribute("role");
    if (status) status.textContent = "This order has expired.";
    var form = document.getElementById("pay-form");
    if (form) {
      var buttons = form.querySelectorAll("button, input");
      for (var i = 0; i < buttons.length; i++) buttons[i].disabled = true;
    }
    setTimeout(function () { location.reload(); }, 2000);
  }
  function tick() {
    var ms = left - (performance.now() - start);
    if (ms <= 0) { expired(); return; }
    var secs = Math.ceil(ms / 1000);
    clock.textContent = Math.floor(secs / 60) + ":" + pad(secs % 60);
    setTimeout(tick, ms % 1000 || 1000);
  }
  tick();
})();
