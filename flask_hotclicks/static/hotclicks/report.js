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
  // The email's frame at the message's full height. The frame is sandboxed without scripts (no
  // allow-scripts, by attribute and by its own policy) but keeps this origin, so this script
  // reads its height: nothing of the email runs, and no message passes between the two.
  function fit(frame) {
    var doc = null;
    try { doc = frame.contentDocument; } catch (e) { return; }
    if (!doc || !doc.documentElement || doc.readyState !== "complete") { return; }
    var size = function () {
      // Laid out once at no height (in this task, so never painted), the document's scroll height
      // is the message's own, not the frame's: the frame shrinks as well as grows.
      frame.style.height = "0px";
      var height = Math.max(doc.documentElement.scrollHeight, doc.body ? doc.body.scrollHeight : 0);
      var borders = frame.offsetHeight - frame.clientHeight;  // the frame's height is its border box
      if (height > 0) {
        frame.style.height = (height + borders) + "px";
        frame.classList.add("hc-fitted");
      } else {
        frame.style.height = "";  // nothing laid out yet: the style sheet's height
      }
    };
    size();
    if (window.ResizeObserver && !frame.hcObserved) {  // images shown, fonts, a narrower window
      frame.hcObserved = true;
      new ResizeObserver(size).observe(doc.documentElement);
    }
  }
  function fitFrames() {
    var frames = document.querySelectorAll("iframe[data-hc-fit]");
    for (var i = 0; i < frames.length; i++) {
      var frame = frames[i];
      frame.addEventListener("load", function (event) { event.target.hcObserved = false; fit(event.target); });
      fit(frame);
    }
  }
  function start() {
    localize();
    fitFrames();
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
