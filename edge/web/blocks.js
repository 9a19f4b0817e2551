// Verified blocks for the player: CIDs, SHA-256, DAG-PB, and a WebRTC data channel to the node.
// Everything fetched by CID is checked here, in the page, so the page trusts no peer (the node included).
"use strict";
(function () {
  const B32 = "abcdefghijklmnopqrstuvwxyz234567";

  function base32Decode(text) {
    const out = [];
    let bits = 0, value = 0;
    for (const ch of text) {
      const v = B32.indexOf(ch);
      if (v < 0) throw new Error("not base32: " + ch);
      value = (value << 5) | v; bits += 5;
      if (bits >= 8) { out.push((value >>> (bits - 8)) & 255); bits -= 8; }
    }
    return new Uint8Array(out);
  }

  function base32Encode(bytes) {
    let out = "", bits = 0, value = 0;
    for (const b of bytes) {
      value = (value << 8) | b; bits += 8;
      while (bits >= 5) { out += B32[(value >>> (bits - 5)) & 31]; bits -= 5; }
    }
    if (bits > 0) out += B32[(value << (5 - bits)) & 31];
    return out;
  }

  function varint(buf, pos) {
    let x = 0, shift = 0;
    for (;;) {
      if (pos >= buf.length) throw new Error("truncated varint");
      const b = buf[pos++];
      x += (b & 127) * 2 ** shift;
      if (!(b & 128)) return [x, pos];
      shift += 7;
      if (shift > 49) throw new Error("varint too long");
    }
  }

  // A CID (string or bytes) -> {codec, digest (32 bytes of sha2-256), text}
  function parseCid(cid) {
    let bytes = cid;
    if (typeof cid === "string") {
      if (cid[0] !== "b") throw new Error("only base32 CIDv1 text is read here");
      bytes = base32Decode(cid.slice(1));
    }
    let pos = 0, version, codec, hash, len;
    if (bytes[0] === 0x12 && bytes[1] === 0x20) { version = 0; codec = 0x70; pos = 0; }
    else { [version, pos] = varint(bytes, 0); [codec, pos] = varint(bytes, pos); }
    [hash, pos] = varint(bytes, pos); [len, pos] = varint(bytes, pos);
    if (hash !== 0x12 || len !== 32 || pos + 32 !== bytes.length) throw new Error("not a sha2-256 CID");
    const v1 = version === 0 ? concat([new Uint8Array([1, 0x70]), bytes]) : bytes;
    return { codec, digest: bytes.slice(pos), text: "b" + base32Encode(v1) };
  }

  function concat(parts) {
    const n = parts.reduce((a, p) => a + p.length, 0), out = new Uint8Array(n);
    let o = 0;
    for (const p of parts) { out.set(p, o); o += p.length; }
    return out;
  }

  // SHA-256: the browser's own where the page is a secure context, else this one (a LAN page over plain
  // HTTP has no crypto.subtle).
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2]);

  function sha256js(data) {
    const h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
    const n = data.length, total = Math.ceil((n + 9) / 64) * 64;
    const tail = new Uint8Array(total - Math.floor(n / 64) * 64);
    tail.set(data.subarray(Math.floor(n / 64) * 64));
    tail[n % 64] = 0x80;
    const dv = new DataView(tail.buffer);
    dv.setUint32(tail.length - 8, Math.floor(n / 0x20000000));
    dv.setUint32(tail.length - 4, (n * 8) >>> 0);
    const w = new Uint32Array(64);
    const whole = Math.floor(n / 64);
    const src = new DataView(data.buffer, data.byteOffset, data.byteLength);
    for (let blk = 0; blk < total / 64; blk++) {
      const view = blk < whole ? src : dv, base = blk < whole ? blk * 64 : (blk - whole) * 64;
      for (let i = 0; i < 16; i++) w[i] = view.getUint32(base + i * 4);
      for (let i = 16; i < 64; i++) {
        const a = w[i - 15], b = w[i - 2];
        const s0 = ((a >>> 7) | (a << 25)) ^ ((a >>> 18) | (a << 14)) ^ (a >>> 3);
        const s1 = ((b >>> 17) | (b << 15)) ^ ((b >>> 19) | (b << 13)) ^ (b >>> 10);
        w[i] = (w[i - 16] + s0 + w[i - 7] + s1) | 0;
      }
      let [a, b, c, d, e, f, g, hh] = h;
      for (let i = 0; i < 64; i++) {
        const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
        const t1 = (hh + S1 + ((e & f) ^ (~e & g)) + K[i] + w[i]) | 0;
        const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
        const t2 = (S0 + ((a & b) ^ (a & c) ^ (b & c))) | 0;
        hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
      }
      h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
    }
    const out = new Uint8Array(32), odv = new DataView(out.buffer);
    for (let i = 0; i < 8; i++) odv.setUint32(i * 4, h[i]);
    return out;
  }

  async function sha256(data) {
    if (window.crypto && crypto.subtle) return new Uint8Array(await crypto.subtle.digest("SHA-256", data));
    return sha256js(data);
  }

  function equal(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  // DAG-PB node -> {links: [cid bytes], data: UnixFS data bytes or null}
  function parsePb(buf) {
    const links = []; let data = null, pos = 0;
    while (pos < buf.length) {
      let key, len; [key, pos] = varint(buf, pos);
      if ((key & 7) !== 2) throw new Error("unexpected DAG-PB wire type");
      [len, pos] = varint(buf, pos);
      const field = buf.subarray(pos, pos + len); pos += len;
      if (key >> 3 === 2) {
        let p = 0;
        while (p < field.length) {
          let k, l; [k, p] = varint(field, p);
          if ((k & 7) === 2) { [l, p] = varint(field, p); if (k >> 3 === 1) links.push(field.slice(p, p + l)); p += l; }
          else { [l, p] = varint(field, p); }
        }
      } else if (key >> 3 === 1) data = field;
    }
    let inline = null;
    if (data) {          // UnixFS Data: field 2 holds inline file bytes
      let p = 0;
      while (p < data.length) {
        let k, l; [k, p] = varint(data, p);
        if ((k & 7) === 2) { [l, p] = varint(data, p); if (k >> 3 === 2) inline = data.slice(p, p + l); p += l; }
        else if ((k & 7) === 0) { [l, p] = varint(data, p); }
        else throw new Error("unexpected UnixFS wire type");
      }
    }
    return { links, inline };
  }

  // The data channel to the node, signalled by one POST of the offer.
  class Channel {
    constructor() { this.pending = new Map(); this.nextId = 1; this.ready = null; this.pc = null; }

    open(timeoutMs) {
      this.ready = new Promise((resolve, reject) => {
        const pc = new RTCPeerConnection({ iceServers: [] });
        this.pc = pc;
        const dc = pc.createDataChannel("hearth-blocks", { ordered: true });
        dc.binaryType = "arraybuffer";
        this.dc = dc;
        const timer = setTimeout(() => reject(new Error("WebRTC did not connect in " + timeoutMs + " ms")), timeoutMs);
        dc.onopen = () => { clearTimeout(timer); resolve(this); };
        dc.onclose = () => { for (const p of this.pending.values()) p.reject(new Error("channel closed")); };
        dc.onmessage = (e) => this._message(e.data);
        pc.createOffer().then((o) => pc.setLocalDescription(o)).then(() => new Promise((done) => {
          if (pc.iceGatheringState === "complete") return done();
          pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && done());
          setTimeout(done, 2000);     // host candidates come at once on a LAN; do not wait for ever
        })).then(() => fetch("/webrtc", { method: "POST", headers: { "content-type": "application/sdp" },
                                           body: pc.localDescription.sdp }))
          .then((r) => { if (r.status !== 201) throw new Error("signaling: HTTP " + r.status); return r.text(); })
          .then((sdp) => pc.setRemoteDescription({ type: "answer", sdp }))
          .catch((err) => { clearTimeout(timer); reject(err); });
      });
      return this.ready;
    }

    _message(data) {
      if (typeof data === "string") {
        const m = JSON.parse(data), p = this.pending.get(m.id);
        if (!p) return;
        if (m.status !== 200) { this.pending.delete(m.id); p.reject(new Error(m.status + " " + m.error)); return; }
        p.size = m.size; p.parts = []; p.got = 0;
        if (m.size === 0) this._done(m.id, p);
        return;
      }
      const view = new DataView(data), id = view.getUint32(0), p = this.pending.get(id);
      if (!p || p.size === undefined) return;
      const part = new Uint8Array(data, 4);
      p.parts.push(part); p.got += part.length;
      if (p.got >= p.size) this._done(id, p);
    }

    _done(id, p) { this.pending.delete(id); p.resolve(concat(p.parts)); }

    block(cidText) {
      const id = this.nextId++;
      return new Promise((resolve, reject) => {
        this.pending.set(id, { resolve, reject });
        this.dc.send(JSON.stringify({ id, cid: cidText }));
      });
    }
  }

  // The bytes of the UnixFS file at cid, every block checked against its CID. getBlock(cidText) -> bytes.
  async function fetchFile(cid, getBlock, stats) {
    const c = parseCid(cid);
    const block = await getBlock(c.text);
    if (!equal(await sha256(block), c.digest)) {
      stats.mismatches++;
      throw new Error("block " + c.text + " does not match its CID");
    }
    stats.verified++;
    if (c.codec === 0x55) return block;
    if (c.codec !== 0x70) throw new Error("unsupported codec " + c.codec);
    const node = parsePb(block);
    const parts = node.inline ? [node.inline] : [];
    for (const link of node.links) parts.push(await fetchFile(link, getBlock, stats));
    return concat(parts);
  }

  window.HearthBlocks = { Channel, fetchFile, parseCid, sha256, sha256js, base32Encode };
})();
