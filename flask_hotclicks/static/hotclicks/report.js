// HotClicks reports: show every <time datetime> in the viewer's own time zone. No dependency.
(function () {
  "use strict";
  function localize() {
    var format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var when = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(when.getTime())) {
        times[i].title = times[i].textContent;
        times[i].textContent = format.format(when);
      }
    }
    var zone = document.querySelectorAll("[data-hc-tz]");
    for (var j = 0; j < zone.length; j++) {
      zone[j].textContent = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
    }
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", localize);
  } else {
    localize();
  }
})();
