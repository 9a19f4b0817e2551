// The Hearth player: plays a stream from this node with hls.js (served by the node itself, nothing from the
// internet). The page is /streams/NAME/ (or / with ?stream=NAME); window.hearth exposes its state to tests.
"use strict";
(function () {
  const video = document.getElementById("video");
  const statusEl = document.getElementById("status");
  const levelsEl = document.getElementById("levels");
  const state = { stream: null, hls: null, level: -1, levels: [], errors: [], transport: "http" };
  window.hearth = state;

  function streamFromLocation() {
    const m = location.pathname.match(/^\/streams\/([^/]+)\/?$/);
    if (m) return decodeURIComponent(m[1]);
    return new URLSearchParams(location.search).get("stream");
  }

  function say(text) { statusEl.textContent = text; }

  function showLevels(levels) {
    levelsEl.innerHTML = '<button data-level="-1" class="on">auto</button>';
    levels.forEach((l, i) => {
      const b = document.createElement("button");
      b.dataset.level = i;
      b.textContent = l.height ? l.height + "p" : Math.round(l.bitrate / 1000) + "k";
      levelsEl.appendChild(b);
    });
  }

  levelsEl.addEventListener("click", (e) => {
    const b = e.target.closest("button");
    if (b) state.setLevel(parseInt(b.dataset.level, 10));
  });

  state.setLevel = function (n) {
    if (!state.hls) return;
    state.hls.currentLevel = n;     // -1: automatic
    state.level = n;
    for (const b of levelsEl.querySelectorAll("button")) b.classList.toggle("on", +b.dataset.level === n);
  };

  function play(name) {
    state.stream = name;
    document.getElementById("title").textContent = name;
    const src = "/streams/" + encodeURIComponent(name) + "/master.m3u8";
    if (window.Hls && Hls.isSupported()) {
      const hls = new Hls({ lowLatencyMode: false, backBufferLength: 30 });
      state.hls = hls;
      hls.on(Hls.Events.MANIFEST_PARSED, (_, data) => {
        state.levels = data.levels.map((l) => ({ width: l.width, height: l.height, bitrate: l.bitrate }));
        showLevels(data.levels);
        video.play().catch((err) => say("press play (" + err.message + ")"));
      });
      hls.on(Hls.Events.LEVEL_SWITCHED, (_, data) => {
        state.playingLevel = data.level;
        const l = state.levels[data.level];
        say("playing " + (l ? l.width + "x" + l.height : "level " + data.level));
      });
      hls.on(Hls.Events.ERROR, (_, data) => {
        state.errors.push(data.type + ": " + data.details);
        if (data.fatal) say("error: " + data.details);
      });
      hls.loadSource(src);
      hls.attachMedia(video);
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = src;           // Safari plays HLS itself
      video.play().catch(() => {});
    } else {
      say("this browser cannot play HLS (no Media Source Extensions)");
    }
  }

  fetch("/api/streams").then((r) => r.json()).then((streams) => {
    const el = document.getElementById("streams");
    el.innerHTML = "";
    if (!streams.length) el.textContent = "none yet: hearth media import FILE";
    for (const s of streams) {
      const a = document.createElement("a");
      a.href = "/streams/" + encodeURIComponent(s.name) + "/";
      a.textContent = s.name + (s.kind === "live" ? " (live)" : "");
      el.appendChild(a);
    }
    const wanted = streamFromLocation() || (streams[0] && streams[0].name);
    if (wanted) play(wanted);
  }).catch((err) => say("cannot list streams: " + err));
})();
