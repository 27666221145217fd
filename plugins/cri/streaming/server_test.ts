/**
 * Tests of the CRI streaming server against real clients: a small Go program
 * (`testdata/client`) built on client-go's remotecommand executors (SPDY, WebSocket,
 * fallback) and port forwarder (SPDY, SPDY over WebSocket) — the code crictl and kubectl use.
 * The runtime runs commands as host processes and forwards to a TCP server on 127.0.0.1.
 *
 * @module
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { type StreamingRuntime, StreamingServer, type StreamIO } from "./server.ts";
import { isKind } from "../../errdefs.ts";

const assertEquals = <T>(a: T, b: T, msg?: string) => assert.deepStrictEqual(a, b, msg);
const assertMatch = (s: string, re: RegExp, msg?: string) => assert.match(s, re, msg);
function assertThrows(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  throw new Error("expected an exception");
}

const GO = "/usr/local/go/bin/go";
const CLIENT_DIR = new URL("./testdata/client/", import.meta.url).pathname;

/** Builds the Go client once per content hash; null (test skipped) when Go is missing. */
async function buildClient(): Promise<string | null> {
  try {
    await Deno.stat(GO);
  } catch {
    console.warn(`SKIP: Go toolchain not found at ${GO}; real-client tests skipped`);
    return null;
  }
  const h = createHash("sha256");
  for (const f of ["main.go", "go.mod", "go.sum"]) h.update(await Deno.readFile(CLIENT_DIR + f));
  const dir = `${Deno.env.get("TMPDIR") ?? "/tmp"}/tainerd-streaming-client-${
    h.digest("hex").slice(0, 16)
  }`;
  const bin = `${dir}/client`;
  try {
    await Deno.stat(bin);
    return bin;
  } catch { /* build it */ }
  await Deno.mkdir(dir, { recursive: true });
  const out = await new Deno.Command(GO, {
    args: ["build", "-o", bin + ".tmp", "."],
    cwd: CLIENT_DIR,
    env: { GOFLAGS: "-mod=mod", PATH: `/usr/local/go/bin:${Deno.env.get("PATH") ?? ""}` },
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error("go build failed: " + new TextDecoder().decode(out.stderr));
  await Deno.rename(bin + ".tmp", bin);
  return bin;
}

const clientBin = await buildClient();

/** A runtime that runs commands on the host and forwards to 127.0.0.1. */
class HostRuntime implements StreamingRuntime {
  resizes: { width: number; height: number }[] = [];
  execs: { containerId: string; cmd: string[] }[] = [];

  pending = new Set<Promise<unknown>>();

  exec(containerId: string, cmd: string[], io: StreamIO): Promise<{ exitCode: number }> {
    const p = this.#exec(containerId, cmd, io);
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p)).catch(() => {});
    return p;
  }

  async #exec(containerId: string, cmd: string[], io: StreamIO): Promise<{ exitCode: number }> {
    this.execs.push({ containerId, cmd });
    const env: Record<string, string> = {};
    if (io.tty && io.resize) {
      // Wait (briefly) for the client's first terminal size and hand it to the command.
      const it = io.resize[Symbol.asyncIterator]();
      const first = await Promise.race([
        it.next(),
        new Promise<null>((r) => setTimeout(() => r(null), 5000)),
      ]);
      if (first && !first.done) {
        this.resizes.push(first.value);
        env.COLUMNS = String(first.value.width);
        env.LINES = String(first.value.height);
      }
      void (async () => {
        for (let r = await it.next(); !r.done; r = await it.next()) this.resizes.push(r.value);
      })();
    }
    const child = new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      env,
      stdin: io.stdin ? "piped" : "null",
      stdout: io.stdout ? "piped" : "null",
      stderr: io.stderr ? "piped" : "null",
    }).spawn();
    const jobs: Promise<unknown>[] = [];
    if (io.stdin) void io.stdin.pipeTo(child.stdin).catch(() => {});
    if (io.stdout) jobs.push(child.stdout.pipeTo(io.stdout).catch(() => {}));
    if (io.stderr) jobs.push(child.stderr.pipeTo(io.stderr).catch(() => {}));
    const status = await child.status;
    await Promise.all(jobs);
    return { exitCode: status.code };
  }

  attach(_containerId: string, io: StreamIO): Promise<void> {
    // Attach to an "echo" main process: stdin comes back on stdout.
    if (io.stdin && io.stdout) return io.stdin.pipeTo(io.stdout);
    return Promise.resolve();
  }

  async portForward(
    _podSandboxId: string,
    port: number,
    conn: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> },
  ): Promise<void> {
    const tcp = await Deno.connect({ hostname: "127.0.0.1", port });
    const up = (async () => {
      try {
        for await (const chunk of conn.readable) await tcp.write(chunk);
        await tcp.closeWrite();
      } catch { /* client went away */ }
    })();
    const writer = conn.writable.getWriter();
    const buf = new Uint8Array(64 * 1024);
    try {
      while (true) {
        const n = await tcp.read(buf);
        if (n === null) break;
        await writer.write(buf.slice(0, n));
      }
      await writer.close();
    } finally {
      tcp.close();
      await Promise.race([up, new Promise((r) => setTimeout(r, 100))]);
    }
  }
}

/**
 * A TCP server on 127.0.0.1 that answers each connection with "echo:" + what it read (after
 * EOF), or, `immediate`, echoes every chunk as it arrives.
 */
function echoServer(immediate = false): { port: number; close: () => Promise<void> } {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conns = new Set<Deno.Conn>();
  const loop = (async () => {
    for await (const c of listener) {
      conns.add(c);
      void (async () => {
        try {
          const chunks: Uint8Array[] = [];
          const buf = new Uint8Array(64 * 1024);
          for (let n = await c.read(buf); n !== null; n = await c.read(buf)) {
            if (immediate) await c.write(buf.slice(0, n));
            else chunks.push(buf.slice(0, n));
          }
          if (immediate) return;
          const w = new TextEncoder().encode("echo:");
          const all = new Uint8Array(w.length + chunks.reduce((n, x) => n + x.length, 0));
          all.set(w);
          let off = w.length;
          for (const ch of chunks) all.set(ch, (off += ch.length) - ch.length);
          let sent = 0;
          while (sent < all.length) sent += await c.write(all.subarray(sent));
        } catch {
          /* ignore */
        } finally {
          conns.delete(c);
          try {
            c.close();
          } catch { /* closed */ }
        }
      })();
    }
  })();
  return {
    port: (listener.addr as Deno.NetAddr).port,
    close: async () => {
      listener.close();
      for (const c of conns) {
        try {
          c.close();
        } catch { /* closed */ }
      }
      await loop.catch(() => {});
    },
  };
}

async function withServer(
  fn: (s: StreamingServer, rt: HostRuntime) => Promise<void>,
  opts: { tokenTtlMs?: number; idleTimeoutMs?: number } = {},
): Promise<void> {
  const rt = new HostRuntime();
  const server = new StreamingServer({ address: "127.0.0.1", port: 0, runtime: rt, ...opts });
  await server.start();
  try {
    await fn(server, rt);
  } finally {
    await server.close();
  }
}

async function runClient(
  args: string[],
  stdin = "",
): Promise<{ code: number; stdout: string; stderr: string }> {
  const child = new Deno.Command(clientBin!, {
    args,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const w = child.stdin.getWriter();
  await w.write(new TextEncoder().encode(stdin));
  await w.close();
  const out = await child.output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

const skip = clientBin === null;
const transports = ["spdy", "websocket", "fallback"] as const;

for (const transport of transports) {
  Deno.test({
    name: `exec over ${transport}: stdin, stdout, stderr, exit code 0`,
    ignore: skip,
    fn: () =>
      withServer(async (server, rt) => {
        const url = server.getExec({
          containerId: "c1",
          cmd: ["sh", "-c", "tr a-z A-Z; echo to-stderr >&2"],
          tty: false,
          stdin: true,
          stdout: true,
          stderr: true,
        });
        assertMatch(url, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]+$/);
        const r = await runClient(
          ["exec", "-transport", transport, "-url", url, "-stdin"],
          "hello\n",
        );
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout, "HELLO\n");
        assertEquals(r.stderr, "to-stderr\n");
        assertEquals(rt.execs, [{
          containerId: "c1",
          cmd: ["sh", "-c", "tr a-z A-Z; echo to-stderr >&2"],
        }]);
      }),
  });

  Deno.test({
    name: `exec over ${transport}: non-zero exit code reaches the client`,
    ignore: skip,
    fn: () =>
      withServer(async (server) => {
        const url = server.getExec({
          containerId: "c1",
          cmd: ["sh", "-c", "echo out; exit 7"],
          tty: false,
          stdin: false,
          stdout: true,
          stderr: true,
        });
        const r = await runClient(["exec", "-transport", transport, "-url", url]);
        assertEquals(r.stdout, "out\n");
        assertEquals(r.code, 7, r.stderr);
        assertMatch(r.stderr, /exit code 7/);
      }),
  });

  Deno.test({
    name: `exec over ${transport}: tty with a resize`,
    ignore: skip,
    fn: () =>
      withServer(async (server, rt) => {
        const url = server.getExec({
          containerId: "c1",
          cmd: ["sh", "-c", 'echo "size=${COLUMNS}x${LINES}"; cat'],
          tty: true,
          stdin: true,
          stdout: true,
          stderr: false,
        });
        const r = await runClient(
          ["exec", "-transport", transport, "-url", url, "-stdin", "-tty", "-resize", "100x40"],
          "typed\n",
        );
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout, "size=100x40\ntyped\n");
        assertEquals(rt.resizes[0], { width: 100, height: 40 });
      }),
  });
}

Deno.test({
  name: "exec over spdy: large output and input",
  ignore: skip,
  fn: () =>
    withServer(async (server) => {
      const url = server.getExec({
        containerId: "c1",
        cmd: ["cat"],
        tty: false,
        stdin: true,
        stdout: true,
        stderr: false,
      });
      const big = "0123456789abcdef".repeat(64 * 1024); // 1 MiB, beyond the 64 KiB window
      const r = await runClient(["exec", "-transport", "spdy", "-url", url, "-stdin"], big);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout.length, big.length);
      assert(r.stdout === big);
    }),
});

Deno.test({
  name: "attach over spdy and websocket",
  ignore: skip,
  fn: () =>
    withServer(async (server) => {
      for (const transport of ["spdy", "websocket"]) {
        const url = server.getAttach({
          containerId: "c1",
          tty: false,
          stdin: true,
          stdout: true,
          stderr: false,
        });
        assertMatch(url, /\/attach\//);
        const r = await runClient(
          ["exec", "-transport", transport, "-url", url, "-stdin"],
          "ping\n",
        );
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stdout, "ping\n");
      }
    }),
});

for (const transport of ["spdy", "websocket"]) {
  Deno.test({
    name: `port-forward over ${transport}: bytes both ways`,
    ignore: skip,
    fn: async () => {
      const echo = echoServer();
      try {
        await withServer(async (server) => {
          const url = server.getPortForward({ podSandboxId: "p1", ports: [] });
          assertMatch(url, /\/portforward\//);
          const payload = "x".repeat(200_000) + "end";
          const r = await runClient(
            ["portforward", "-transport", transport, "-url", url, "-port", String(echo.port)],
            payload,
          );
          assertEquals(r.code, 0, r.stderr);
          assertEquals(r.stdout.length, payload.length + 5);
          assert(r.stdout === "echo:" + payload);
        });
      } finally {
        await echo.close();
      }
    },
  });
}

Deno.test({
  name: "tokens are one-time: a reused URL is refused with 404",
  ignore: skip,
  fn: () =>
    withServer(async (server) => {
      const url = server.getExec({
        containerId: "c1",
        cmd: ["true"],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
      });
      const first = await runClient(["exec", "-transport", "spdy", "-url", url]);
      assertEquals(first.code, 0, first.stderr);
      const again = await runClient(["exec", "-transport", "spdy", "-url", url]);
      assertEquals(again.code, 101);
      assertMatch(again.stderr, /404|not found/i);
    }),
});

Deno.test("expired and unknown tokens, bad routes and plain requests are rejected", async () => {
  await withServer(async (server) => {
    const url = server.getExec({
      containerId: "c1",
      cmd: ["true"],
      tty: false,
      stdin: false,
      stdout: true,
      stderr: false,
    });
    await new Promise((r) => setTimeout(r, 80));
    let res = await fetch(url, { method: "POST" });
    assertEquals(res.status, 404, "expired token");
    await res.body?.cancel();
    res = await fetch(`${server.url}/exec/doesnotexist`, { method: "POST" });
    assertEquals(res.status, 404);
    await res.body?.cancel();
    res = await fetch(`${server.url}/nothing/here`);
    assertEquals(res.status, 404);
    await res.body?.cancel();
  }, { tokenTtlMs: 50 });
  await withServer(async (server) => {
    const mk = () =>
      server.getExec({
        containerId: "c1",
        cmd: ["true"],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
      });
    // Not an upgrade: 400.
    let res = await fetch(mk(), { method: "POST" });
    assertEquals(res.status, 400);
    await res.body?.cancel();
    // Wrong method.
    res = await fetch(mk(), { method: "PUT" });
    assertEquals(res.status, 405);
    await res.body?.cancel();
    // A port-forward token used on the exec route.
    const pf = server.getPortForward({ podSandboxId: "p", ports: [80] });
    res = await fetch(pf.replace("/portforward/", "/exec/"), { method: "POST" });
    assertEquals(res.status, 404);
    await res.body?.cancel();
    // SPDY upgrade with no acceptable protocol: 403 with the accepted list.
    const u = new URL(mk());
    const conn = await Deno.connect({ hostname: u.hostname, port: Number(u.port) });
    await conn.write(new TextEncoder().encode(
      `POST ${u.pathname} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n` +
        `X-Stream-Protocol-Version: v9.channel.k8s.io\r\nContent-Length: 0\r\n\r\n`,
    ));
    const text = new TextDecoder().decode(
      await new Response(conn.readable).arrayBuffer(),
    );
    assertMatch(text, /^HTTP\/1\.1 403/);
    assertMatch(text, /X-Accepted-Stream-Protocol-Versions: v4\.channel\.k8s\.io/);
  });
});

Deno.test("request validation", async () => {
  await withServer((server) => {
    const base = { containerId: "c", tty: false, stdin: false, stdout: true, stderr: false };
    const inv = (f: () => unknown) => {
      const e = assertThrows(f);
      assert(isKind(e, "InvalidArgument"), String(e));
    };
    inv(() => server.getExec({ ...base, cmd: [] }));
    inv(() => server.getExec({ ...base, cmd: ["x"], tty: true, stderr: true }));
    inv(() => server.getExec({ ...base, cmd: ["x"], stdout: false }));
    inv(() => server.getExec({ ...base, containerId: "", cmd: ["x"] }));
    inv(() => server.getAttach({ ...base, tty: true, stderr: true }));
    inv(() => server.getPortForward({ podSandboxId: "", ports: [] }));
    inv(() => server.getPortForward({ podSandboxId: "p", ports: [70000] }));
    assertMatch(server.getAttach(base), /\/attach\//);
    return Promise.resolve();
  });
});

Deno.test("close() ends live sessions", {
  ignore: skip,
}, async () => {
  const rt = new HostRuntime();
  const server = new StreamingServer({ address: "127.0.0.1", port: 0, runtime: rt });
  await server.start();
  const url = server.getExec({
    containerId: "c1",
    cmd: ["sleep", "2"],
    tty: false,
    stdin: false,
    stdout: true,
    stderr: false,
  });
  const started = Date.now();
  const client = runClient(["exec", "-transport", "spdy", "-url", url]);
  await new Promise((r) => setTimeout(r, 500));
  await server.close();
  await client;
  // client-go treats a dropped connection without a status as the end of the command; what
  // matters is that it ended with the server, not with the 2s command.
  assert(Date.now() - started < 1900, "the client sees the session end");
  await Promise.all(rt.pending);
});

/** Opens a WebSocket with the given subprotocol and collects its messages. */
function openWs(url: string, protocol: string) {
  const ws = new WebSocket(url.replace(/^http/, "ws"), [protocol]);
  ws.binaryType = "arraybuffer";
  const messages: (Uint8Array | string)[] = [];
  let notify = () => {};
  ws.onmessage = (e) => {
    messages.push(typeof e.data === "string" ? e.data : new Uint8Array(e.data));
    notify();
  };
  const closed = new Promise<void>((r) => ws.onclose = () => r());
  const opened = new Promise<void>((resolve, reject) => {
    ws.onopen = () => resolve();
    ws.onerror = () => reject(new Error("websocket failed"));
  });
  const until = async (pred: () => boolean) => {
    const deadline = Date.now() + 10_000;
    while (!pred()) {
      if (Date.now() > deadline) throw new Error("timed out waiting for messages");
      await new Promise<void>((r) => {
        notify = r;
        setTimeout(r, 100);
      });
    }
  };
  return { ws, messages, closed, opened, until };
}

Deno.test("port-forward over websocket channels (v4.channel.k8s.io)", async () => {
  const echo = echoServer(true);
  try {
    await withServer(async (server) => {
      const url = server.getPortForward({ podSandboxId: "p1", ports: [echo.port] });
      const c = openWs(url, "v4.channel.k8s.io");
      await c.opened;
      assertEquals(c.ws.protocol, "v4.channel.k8s.io");
      const lo = echo.port & 0xff, hi = echo.port >> 8;
      await c.until(() => c.messages.length >= 2);
      assertEquals(c.messages.slice(0, 2), [
        new Uint8Array([0, lo, hi]),
        new Uint8Array([1, lo, hi]),
      ]);
      c.ws.send(new Uint8Array([0, ...new TextEncoder().encode("ping")]));
      await c.until(() => c.messages.length >= 3);
      assertEquals(c.messages[2], new Uint8Array([0, ...new TextEncoder().encode("ping")]));
      c.ws.close();
      await c.closed;
    });
  } finally {
    await echo.close();
  }
});

Deno.test("exec over websocket base64.channel.k8s.io reports the failure as text", async () => {
  await withServer(async (server) => {
    const url = server.getExec({
      containerId: "c1",
      cmd: ["sh", "-c", "echo hi; exit 3"],
      tty: false,
      stdin: false,
      stdout: true,
      stderr: true,
    });
    const c = openWs(url, "base64.channel.k8s.io");
    await c.opened;
    assertEquals(c.ws.protocol, "base64.channel.k8s.io");
    await c.closed;
    const text = c.messages.map((m) => typeof m === "string" ? m : "?");
    assertEquals(text[0], "1"); // the empty "connected" message on stdout
    assert(text.includes("1" + btoa("hi\n")), JSON.stringify(text));
    const status = text.find((m) => m.startsWith("3"));
    assertEquals(
      atob(status!.slice(1)),
      "command terminated with non-zero exit code: exit status 3",
    );
  });
});

Deno.test("websocket upgrade with an unsupported subprotocol is refused", async () => {
  await withServer(async (server) => {
    const url = server.getExec({
      containerId: "c1",
      cmd: ["true"],
      tty: false,
      stdin: false,
      stdout: true,
      stderr: false,
    });
    const c = openWs(url, "v9.channel.k8s.io");
    await c.opened.then(() => assert.fail("should not open"), () => {});
    await c.closed;
  });
});

Deno.test({
  name: "idle sessions are closed after idleTimeoutMs",
  ignore: skip,
  fn: async () => {
    const rt = new HostRuntime();
    const server = new StreamingServer({
      address: "127.0.0.1",
      port: 0,
      runtime: rt,
      idleTimeoutMs: 300,
    });
    await server.start();
    try {
      const url = server.getExec({
        containerId: "c1",
        cmd: ["sleep", "3"],
        tty: false,
        stdin: false,
        stdout: true,
        stderr: false,
      });
      const started = Date.now();
      await runClient(["exec", "-transport", "spdy", "-url", url]);
      assert(Date.now() - started < 2500, "the idle session was closed before the command ended");
    } finally {
      await server.close();
      await Promise.all(rt.pending);
    }
  },
});

Deno.test("attach: clientGone resolves when the client drops the connection", async () => {
  const gone = Promise.withResolvers<void>();
  const attached = Promise.withResolvers<void>();
  const rt = new HostRuntime();
  // An attach with output only, that ends only when the client is gone.
  rt.attach = async (_id, io) => {
    assert(io.clientGone, "the server tells when the client is gone");
    attached.resolve();
    await io.clientGone;
    gone.resolve();
  };
  const server = new StreamingServer({ address: "127.0.0.1", port: 0, runtime: rt });
  await server.start();
  try {
    const url = server.getAttach({
      containerId: "c1",
      tty: false,
      stdin: false,
      stdout: true,
      stderr: false,
    });
    const c = openWs(url, "v4.channel.k8s.io");
    await c.opened;
    await attached.promise;
    c.ws.close();
    await c.closed;
    await gone.promise;
  } finally {
    await server.close();
  }
});
