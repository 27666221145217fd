import assert from "node:assert/strict";
import * as http2 from "node:http2";
import * as net from "node:net";
import { HpackDecoder, hpackEncode } from "./hpack.ts";
import { H2Code, H2Server, type H2Stream } from "./server.ts";

/** An echo handler: the request body back, with the byte count in a trailer. */
async function echo(stream: H2Stream): Promise<void> {
  const chunks: Uint8Array[] = [];
  let n = 0;
  for await (const c of stream.body()) {
    chunks.push(c);
    n += c.length;
  }
  stream.respond(200, [["content-type", "application/octet-stream"], ["x-path", stream.path]]);
  for (const c of chunks) await stream.write(c);
  stream.end([["x-bytes", String(n)]]);
}

async function withServer(
  handler: (s: H2Stream) => void,
  fn: (path: string, server: H2Server) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/h2.sock`;
  const server = new H2Server(Deno.listen({ transport: "unix", path }), handler);
  try {
    await fn(path, server);
  } finally {
    await server.close(100);
    await Deno.remove(dir, { recursive: true });
  }
}

function connect(path: string): http2.ClientHttp2Session {
  return http2.connect("http://localhost", { createConnection: () => net.connect(path) });
}

/** One request with node:http2's client; the response body, headers and trailers. */
function request(
  session: http2.ClientHttp2Session,
  path: string,
  body: Uint8Array,
): Promise<
  {
    status: number;
    body: Uint8Array;
    headers: http2.IncomingHttpHeaders;
    trailers: http2.IncomingHttpHeaders;
  }
> {
  return new Promise((resolve, reject) => {
    const req = session.request({ ":method": "POST", ":path": path });
    const chunks: Buffer[] = [];
    let headers: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    req.on("response", (h) => headers = h);
    req.on("trailers", (t) => trailers = t);
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("end", () => {
      const out = new Uint8Array(chunks.reduce((a, c) => a + c.length, 0));
      let o = 0;
      for (const c of chunks) {
        out.set(c, o);
        o += c.length;
      }
      resolve({ status: Number(headers[":status"]), body: out, headers, trailers });
    });
    req.on("error", reject);
    req.end(body);
  });
}

Deno.test("h2 server: node:http2 client, megabytes both ways through flow control", async () => {
  await withServer((s) => void echo(s), async (path) => {
    const session = connect(path);
    try {
      const big = crypto.getRandomValues(new Uint8Array(65536));
      const body = new Uint8Array(5 << 20);
      for (let o = 0; o < body.length; o += big.length) body.set(big, o);
      const res = await request(session, "/echo?x=1", body);
      assert.equal(res.status, 200);
      assert.equal(res.headers["x-path"], "/echo?x=1");
      assert.equal(res.trailers["x-bytes"], String(body.length));
      assert.equal(res.body.length, body.length);
      assert.ok(res.body.every((b, i) => b === body[i]));
      // Many streams at once on the same connection.
      const all = await Promise.all(
        Array.from({ length: 100 }, (_, i) => request(session, `/s${i}`, new Uint8Array(i))),
      );
      all.forEach((r, i) => {
        assert.equal(r.headers["x-path"], `/s${i}`);
        assert.equal(r.body.length, i);
      });
    } finally {
      session.close();
    }
  });
});

Deno.test("h2 server: curl with prior knowledge (Huffman, its own settings)", async () => {
  await withServer((s) => void echo(s), async (path) => {
    const out = await new Deno.Command("curl", {
      args: [
        "-sS",
        "--http2-prior-knowledge",
        "--unix-socket",
        path,
        "-H",
        "content-type: application/json",
        "-H",
        `x-long: ${"v".repeat(5000)}`,
        "--data-binary",
        '{"hello":"world"}',
        "-D",
        "-",
        "http://localhost/containerd.services.version.v1.Version/Version",
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    assert.match(text, /^HTTP\/2 200/);
    assert.match(text, /x-path: \/containerd\.services\.version\.v1\.Version\/Version/);
    assert.ok(text.includes('{"hello":"world"}'), text);
    assert.match(text, /x-bytes: 17/);
  });
});

Deno.test("h2 server: an HTTP/1.1 client gets a 505 that says what the socket speaks", async () => {
  await withServer((s) => void echo(s), async (path) => {
    const out = await new Deno.Command("curl", {
      args: ["-sS", "--unix-socket", path, "-o", "-", "-w", "%{http_code}", "http://localhost/x"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.match(text, /speaks HTTP\/2/);
    assert.ok(text.endsWith("505"), text);
  });
});

/** A raw HTTP/2 peer for protocol-level checks. */
class RawPeer {
  #buf = new Uint8Array(0);
  constructor(readonly conn: Deno.UnixConn) {}

  static async open(path: string): Promise<RawPeer> {
    const conn = await Deno.connect({ transport: "unix", path });
    const p = new RawPeer(conn);
    await p.send(new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
    await p.frame(4, 0, 0, new Uint8Array(0)); // empty SETTINGS
    return p;
  }

  async send(b: Uint8Array): Promise<void> {
    let o = 0;
    while (o < b.length) o += await this.conn.write(b.subarray(o));
  }

  frame(type: number, flags: number, id: number, payload: Uint8Array, len = payload.length) {
    const f = new Uint8Array(9 + payload.length);
    f.set([len >>> 16, (len >>> 8) & 0xff, len & 0xff, type, flags], 0);
    new DataView(f.buffer).setUint32(5, id);
    f.set(payload, 9);
    return this.send(f);
  }

  /** The next frame, or null at EOF. */
  async next(): Promise<{ type: number; flags: number; id: number; payload: Uint8Array } | null> {
    for (;;) {
      if (this.#buf.length >= 9) {
        const len = (this.#buf[0] << 16) | (this.#buf[1] << 8) | this.#buf[2];
        if (this.#buf.length >= 9 + len) {
          const f = {
            type: this.#buf[3],
            flags: this.#buf[4],
            id: new DataView(this.#buf.buffer, this.#buf.byteOffset).getUint32(5) & 0x7fffffff,
            payload: this.#buf.slice(9, 9 + len),
          };
          this.#buf = this.#buf.slice(9 + len);
          return f;
        }
      }
      const chunk = new Uint8Array(65536);
      const n = await this.conn.read(chunk);
      if (n === null) return null;
      const merged = new Uint8Array(this.#buf.length + n);
      merged.set(this.#buf);
      merged.set(chunk.subarray(0, n), this.#buf.length);
      this.#buf = merged;
    }
  }

  /** Frames until one of `type` (skipping others), or null at EOF. */
  async until(type: number) {
    for (;;) {
      const f = await this.next();
      if (f === null || f.type === type) return f;
    }
  }

  close() {
    try {
      this.conn.close();
    } catch {
      // closed
    }
  }
}

const GOAWAY = 7;

Deno.test("h2 server: PING is answered; protocol errors end the connection with GOAWAY", async () => {
  // "/w" never reads its body.
  await withServer((s) => void (s.path === "/w" ? null : echo(s)), async (path) => {
    const p = await RawPeer.open(path);
    try {
      await p.frame(6, 0, 0, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8]));
      const pong = await p.until(6);
      assert.equal(pong?.flags, 1);
      assert.deepEqual([...pong!.payload], [1, 2, 3, 4, 5, 6, 7, 8]);
      // A header block that is not HPACK: COMPRESSION_ERROR.
      await p.frame(1, 0x5, 1, new Uint8Array([0x80]));
      const away = await p.until(GOAWAY);
      assert.equal(new DataView(away!.payload.buffer).getUint32(4), H2Code.COMPRESSION_ERROR);
      assert.equal(await p.until(GOAWAY), null, "the connection closes");
    } finally {
      p.close();
    }
    // A frame over the 16 KiB maximum: FRAME_SIZE_ERROR.
    const q = await RawPeer.open(path);
    try {
      await q.frame(0, 0, 1, new Uint8Array(20000));
      const away = await q.until(GOAWAY);
      assert.equal(new DataView(away!.payload.buffer).getUint32(4), H2Code.FRAME_SIZE_ERROR);
    } finally {
      q.close();
    }
    // DATA beyond the stream's window: the stream is reset, the connection lives on.
    const r = await RawPeer.open(path);
    try {
      const headers = hpackEncode([[":method", "POST"], [":path", "/w"], [":scheme", "http"]]);
      const started = new Promise<void>((resolve) => setTimeout(resolve, 50));
      await r.frame(1, 0x4, 1, headers);
      await started;
      // 1 MiB (our stream window) + 1 byte, in 16 KiB frames.
      for (let sent = 0; sent <= (1 << 20);) {
        const n = Math.min(16384, (1 << 20) + 1 - sent);
        await r.frame(0, 0, 1, new Uint8Array(n));
        sent += n;
      }
      const rst = await r.until(3);
      assert.equal(rst?.id, 1);
      assert.equal(new DataView(rst!.payload.buffer).getUint32(0), H2Code.FLOW_CONTROL_ERROR);
      await r.frame(6, 0, 0, new Uint8Array(8));
      assert.equal((await r.until(6))?.flags, 1, "still answering");
    } finally {
      r.close();
    }
  });
});

Deno.test("h2 server: a client reset aborts the handler's signal", async () => {
  let aborted: (code: number) => void;
  const seen = new Promise<number>((resolve) => aborted = resolve);
  const handler = (s: H2Stream) => {
    s.signal.addEventListener("abort", () => aborted((s.signal.reason as { code: number }).code));
  };
  await withServer(handler, async (path) => {
    const p = await RawPeer.open(path);
    try {
      const headers = hpackEncode([[":method", "POST"], [":path", "/slow"], [":scheme", "http"]]);
      await p.frame(1, 0x4, 1, headers);
      await new Promise((r) => setTimeout(r, 20));
      await p.frame(3, 0, 1, new Uint8Array([0, 0, 0, H2Code.CANCEL]));
      assert.equal(await seen, H2Code.CANCEL);
    } finally {
      p.close();
    }
  });
});

Deno.test("h2 server: close lets open calls finish, refuses new ones, drops idle connections", async () => {
  let release!: () => void;
  const gate = new Promise<void>((r) => release = r);
  const handler = async (s: H2Stream) => {
    if (s.path === "/wait") await gate;
    s.respond(200, []);
    s.end([["x-done", s.path]]);
  };
  await withServer((s) => void handler(s), async (path, server) => {
    const idle = await RawPeer.open(path);
    const busy = await RawPeer.open(path);
    try {
      await busy.frame(1, 0x5, 1, hpackEncode([[":method", "GET"], [":path", "/wait"]]));
      await new Promise((r) => setTimeout(r, 20));
      const closing = server.close(5000);
      // The idle connection closes at once.
      assert.equal(await idle.until(GOAWAY), null);
      // A new stream on the busy one is refused; the open one still completes.
      await busy.frame(1, 0x5, 3, hpackEncode([[":method", "GET"], [":path", "/late"]]));
      const rst = await busy.until(3);
      assert.equal(rst?.id, 3);
      assert.equal(new DataView(rst!.payload.buffer).getUint32(0), H2Code.REFUSED_STREAM);
      release();
      const decoder = new HpackDecoder();
      let trailers: [string, string][] = [];
      for (;;) {
        const f = await busy.next();
        if (f === null) break;
        if (f.type === 1 && f.id === 1) {
          const fields = decoder.decode(f.payload);
          if (f.flags & 1) trailers = fields;
        }
      }
      assert.deepEqual(trailers, [["x-done", "/wait"]]);
      await closing;
    } finally {
      idle.close();
      busy.close();
    }
  });
});
