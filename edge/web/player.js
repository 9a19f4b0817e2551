// The Hearth player: plays a stream from this node with hls.js (served by the node itself, nothing from the
// internet). The page is /watch/NAME/ (or /watch/ with ?stream=NAME); NAME@NODE names a neighbour's stream by
// its publisher. window.hearth exposes its state to tests.
"use strict";
(function () {
  const video = document.getElementById("video");
  const statusEl = document.getElementById("status");
  const levelsEl = document.getElementById("levels");
  const state = { stream: null, hls: null, level: -1, levels: [], errors: [], transport: "http",
                  cids: {}, channel: null,
                  stats: { webrtc: 0, http: 0, verified: 0, mismatches: 0, fallbacks: 0 } };
  window.hearth = state;
  const params = new URLSearchParams(location.search);
  const wantWebRTC = params.get("transport") !== "http" && window.RTCPeerConnection && window.HearthBlocks;

  // Segments by CID over the data channel when it is open, checked block by block; HTTP otherwise, and
  // whenever the channel fails or a block does not match its CID.
  function streamPath(url) {
    const m = new URL(url, location.href).pathname.match(/^\/streams\/[^/]+\/(.+)$/);
    return m ? decodeURIComponent(m[1]) : null;
  }

  function makeLoader(Base) {
    return class HearthLoader {
      constructor(config) { this.http = new Base(config); this.stats = this.http.stats; this.context = null; }
      load(context, config, callbacks) {
        this.context = context;
        const path = streamPath(context.url), cid = path && state.cids[path];
        if (!state.channel || !cid) {
          state.stats.http++;
          return this.http.load(context, config, callbacks);
        }
        const stats = this.stats;
        stats.loading.start = performance.now();
        HearthBlocks.fetchFile(cid, (c) => state.channel.block(c), state.stats).then((bytes) => {
          stats.loading.first = stats.loading.end = performance.now();
          stats.loaded = stats.total = bytes.length;
          state.stats.webrtc++;
          callbacks.onSuccess({ url: context.url, data: bytes.buffer }, stats, context, null);
        }).catch((err) => {
          state.errors.push("webrtc: " + err.message);
          state.stats.fallbacks++;
          state.stats.http++;
          // hls.js's loaders refuse a second load once loading.start is set ("Loader can only be used once"):
          // this load has not begun for it, so it starts from a clean slate
          stats.loading.start = 0;
          this.http.load(context, config, callbacks);
        });
      }
      abort() { this.http.abort(); }
      destroy() { this.http.destroy(); }
      getCacheAge() { return null; }
      getResponseHeader(name) { return this.http.getResponseHeader ? this.http.getResponseHeader(name) : null; }
    };
  }

  function refreshCids(name) {
    return fetch("/streams/" + encodeURIComponent(name) + "/cids.json")
      .then((r) => (r.ok ? r.json() : {})).then((m) => { state.cids = m; }).catch(() => {});
  }

  function openChannel() {
    const ch = new HearthBlocks.Channel();
    return ch.open(4000).then(() => { state.channel = ch; state.transport = "webrtc"; })
      .catch((err) => { state.errors.push("webrtc unavailable, using HTTP: " + err.message); });
  }

  // for tests and tools: the bytes of a stream file by CID over the channel, verified
  state.fetchVerified = (path) => HearthBlocks.fetchFile(state.cids[path], (c) => state.channel.block(c), state.stats)
    .then((bytes) => bytes.length);

  function streamFromLocation() {
    const m = location.pathname.match(/^\/watch\/([^/]+)\/?$/);
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
    document.getElementById("title").textContent = name.split("@")[0];
    const src = "/streams/" + encodeURIComponent(name) + "/master.m3u8";
    let before = Promise.resolve();
    if (wantWebRTC) {
      // give the channel a moment to open before the first segment; after that, HTTP until it does
      const both = Promise.all([refreshCids(name), state.channelReady = openChannel()]);
      before = Promise.race([both, new Promise((r) => setTimeout(r, 1500))]);
    }
    before.then(() => start(name, src));
  }

  function start(name, src) {
    if (window.Hls && Hls.isSupported()) {
      const Loader = makeLoader(Hls.DefaultConfig.loader);
      const hls = new Hls({ lowLatencyMode: false, backBufferLength: 30, fLoader: Loader });
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
      hls.on(Hls.Events.LEVEL_LOADED, (_, data) => {
        if (wantWebRTC && data.details && data.details.live) refreshCids(name);
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
    // this node's streams and its neighbours' (two publishers' streams of one name told apart by publisher)
    for (const s of streams) {
      const a = document.createElement("a");
      const id = s.local ? s.name : s.name + "@" + s.publisher;
      a.href = "/watch/" + encodeURIComponent(id).replace("%40", "@") + "/";
      a.textContent = s.name + (s.kind === "live" ? " (live)" : "") +
        (s.local ? "" : " from " + String(s.publisher).slice(0, 12) + "…");
      a.title = s.publisher ? "published by " + s.publisher : "";
      el.appendChild(a);
    }
    state.streams = streams;
    const first = streams[0] && (streams[0].local ? streams[0].name : streams[0].name + "@" + streams[0].publisher);
    const wanted = streamFromLocation() || first;
    if (wanted) play(wanted);
  }).catch((err) => say("cannot list streams: " + err));
})();
