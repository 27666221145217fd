/**
 * The CRI streaming server (what kubelet's `k8s.io/kubelet/pkg/cri/streaming` provides and
 * containerd's CRI plugin runs): `Exec`, `Attach` and `PortForward` CRI calls register the
 * request here and return a one-time URL; the client (crictl, kubelet on behalf of kubectl)
 * then connects to that URL and upgrades the HTTP connection to a streaming protocol:
 *
 * - `/exec/{token}`, `/attach/{token}`: SPDY/3.1 remote command (`v4.channel.k8s.io` … `channel.k8s.io`)
 *   or WebSocket channels (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io`,
 *   `base64.channel.k8s.io`, `v4.base64.channel.k8s.io`);
 * - `/portforward/{token}`: SPDY/3.1 `portforward.k8s.io`, SPDY tunneled in WebSocket
 *   (`SPDY/3.1+portforward.k8s.io`), or WebSocket channels (`v4.channel.k8s.io`).
 *
 * Tokens are consumed by their first use and expire after `tokenTtlMs` (unknown → 404).
 * Sessions without stream traffic for `idleTimeoutMs` are closed.
 *
 * @module
 */

import http from "node:http";
import type { Duplex } from "node:stream";
import { Buffer } from "node:buffer";
import { invalidArgument, TainerdError, unavailable } from "../../errdefs.ts";
import { type ByteChannel, SpdySession, type SpdyStream } from "./spdy.ts";
import { acceptWebSocket, isWebSocketRequest, requestedProtocols } from "./websocket.ts";
import {
  type CommandOptions,
  serveSpdyRemoteCommand,
  serveWebSocketRemoteCommand,
  SPDY_REMOTECOMMAND_PROTOCOLS,
  WS_REMOTECOMMAND_PROTOCOLS,
} from "./remotecommand.ts";
import {
  type Forwarder,
  PORTFORWARD_PROTOCOL,
  serveSpdyPortForward,
  serveWebSocketPortForward,
  WS_PORTFORWARD_PROTOCOLS,
} from "./portforward.ts";
import type { StreamingRuntime, StreamIO } from "./types.ts";

export type { StreamingRuntime, StreamIO } from "./types.ts";

/** Default token lifetime, as kubelet's request cache. */
export const DEFAULT_TOKEN_TTL_MS = 60_000;
/** Default idle timeout of a session, as containerd's `stream_idle_timeout` (4h). */
export const DEFAULT_IDLE_TIMEOUT_MS = 4 * 60 * 60 * 1000;
/** At most this many unconsumed tokens, as kubelet's request cache. */
const MAX_IN_FLIGHT = 1000;
const TUNNEL_PROTOCOL = "SPDY/3.1+" + PORTFORWARD_PROTOCOL;

/** An exec request to register. */
export interface ExecRequest {
  containerId: string;
  cmd: string[];
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/** An attach request to register. */
export interface AttachRequest {
  containerId: string;
  tty: boolean;
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
}

/** A port forward request to register. */
export interface PortForwardRequest {
  podSandboxId: string;
  ports: number[];
}

type Cached =
  | { kind: "exec"; req: ExecRequest }
  | { kind: "attach"; req: AttachRequest }
  | { kind: "portforward"; req: PortForwardRequest };

/** Options of {@link StreamingServer}. */
export interface StreamingServerOptions {
  /** Address to listen on (e.g. "127.0.0.1", "::1"). */
  address: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** Executes the requests. */
  runtime: StreamingRuntime;
  /** Closes sessions without stream traffic for this long (default 4h). */
  idleTimeoutMs?: number;
  /** How long a returned URL stays valid (default 60s). */
  tokenTtlMs?: number;
}

/** Closes a session after a period without activity. */
class IdleTimer {
  #ms: number;
  #onIdle: () => void;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #last = Date.now();
  #stopped = false;

  constructor(ms: number, onIdle: () => void) {
    this.#ms = ms;
    this.#onIdle = onIdle;
    this.#arm(ms);
  }

  #arm(delay: number) {
    this.#timer = setTimeout(() => {
      if (this.#stopped) return;
      const idle = Date.now() - this.#last;
      if (idle >= this.#ms) this.#onIdle();
      else this.#arm(this.#ms - idle);
    }, delay);
  }

  touch = (): void => {
    this.#last = Date.now();
  };

  stop(): void {
    this.#stopped = true;
    clearTimeout(this.#timer);
  }
}

/** Wraps an upgraded socket as a byte channel. */
function socketChannel(socket: Duplex, head: Uint8Array): ByteChannel {
  return {
    readable: (async function* () {
      if (head.length) yield new Uint8Array(head);
      try {
        for await (const chunk of socket) yield new Uint8Array(chunk as Buffer);
      } catch { /* socket error ends the input */ }
    })(),
    write: (data) =>
      new Promise<void>((resolve, reject) => {
        if (socket.destroyed) return reject(new Error("socket closed"));
        socket.write(Buffer.from(data), (err) => err ? reject(err) : resolve());
      }),
    close: () => {
      socket.end();
      const t = setTimeout(() => socket.destroy(), 2000);
      socket.once("close", () => clearTimeout(t));
    },
  };
}

/** An async queue of the streams a session opens. */
function streamQueue(): {
  push: (s: SpdyStream) => void;
  end: () => void;
  iter: AsyncIterable<SpdyStream>;
} {
  const items: SpdyStream[] = [];
  let waiter: (() => void) | null = null;
  let ended = false;
  const wake = () => {
    const w = waiter;
    waiter = null;
    w?.();
  };
  return {
    push: (s) => {
      items.push(s);
      wake();
    },
    end: () => {
      ended = true;
      wake();
    },
    iter: {
      async *[Symbol.asyncIterator]() {
        while (true) {
          while (items.length) yield items.shift()!;
          if (ended) return;
          await new Promise<void>((r) => waiter = r);
        }
      },
    },
  };
}

function headerValues(req: http.IncomingMessage, name: string): string[] {
  const raw = req.headers[name.toLowerCase()];
  const joined = Array.isArray(raw) ? raw.join(",") : raw ?? "";
  return joined.split(",").map((v) => v.trim()).filter((v) => v !== "");
}

function rejectSocket(
  socket: Duplex,
  status: number,
  message: string,
  extra: Record<string, string> = {},
): void {
  const body = message + "\n";
  const lines = [
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status] ?? ""}`,
    "Content-Type: text/plain; charset=utf-8",
    `Content-Length: ${Buffer.byteLength(body)}`,
    "Connection: close",
    ...Object.entries(extra).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.end(lines.join("\r\n") + "\r\n\r\n" + body);
}

/** The CRI streaming server. */
export class StreamingServer {
  #opts: Required<StreamingServerOptions>;
  #server: http.Server | null = null;
  #url = "";
  #cache = new Map<string, { entry: Cached; expires: number }>();
  #sockets = new Set<Duplex>();
  #sessions = new Set<Promise<void>>();
  #closing = false;

  constructor(opts: StreamingServerOptions) {
    this.#opts = {
      idleTimeoutMs: DEFAULT_IDLE_TIMEOUT_MS,
      tokenTtlMs: DEFAULT_TOKEN_TTL_MS,
      ...opts,
    };
  }

  /** Starts listening. */
  async start(): Promise<void> {
    if (this.#server) return;
    const server = http.createServer((req, res) => this.#onRequest(req, res));
    server.on("upgrade", (req, socket, head) => this.#onUpgrade(req, socket, head));
    server.on("connection", (socket: Duplex) => {
      this.#sockets.add(socket);
      socket.on("close", () => this.#sockets.delete(socket));
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (e) =>
        reject(unavailable(
          `cannot listen on ${this.#opts.address}:${this.#opts.port}: ${e.message}`,
          { cause: e },
        )));
      server.listen(this.#opts.port, this.#opts.address, () => resolve());
    });
    const addr = server.address();
    if (!addr || typeof addr === "string") throw unavailable("streaming server has no address");
    const host = addr.address.includes(":") ? `[${addr.address}]` : addr.address;
    this.#url = `http://${host}:${addr.port}`;
    this.#server = server;
  }

  /** The base URL, e.g. `http://127.0.0.1:10010`. Empty before {@link start}. */
  get url(): string {
    return this.#url;
  }

  /** Registers an exec request and returns its one-time URL. */
  getExec(req: ExecRequest): string {
    if (!req.containerId) throw invalidArgument("exec: missing required container id");
    if (!req.cmd?.length) throw invalidArgument("exec: cmd must not be empty");
    validateStreams("exec", req);
    return this.#register({
      kind: "exec",
      req: { ...req, cmd: [...req.cmd] },
    }, "exec");
  }

  /** Registers an attach request and returns its one-time URL. */
  getAttach(req: AttachRequest): string {
    if (!req.containerId) throw invalidArgument("attach: missing required container id");
    validateStreams("attach", req);
    return this.#register({ kind: "attach", req: { ...req } }, "attach");
  }

  /** Registers a port forward request and returns its one-time URL. */
  getPortForward(req: PortForwardRequest): string {
    if (!req.podSandboxId) throw invalidArgument("port forward: missing required pod sandbox id");
    for (const p of req.ports ?? []) {
      if (!Number.isInteger(p) || p <= 0 || p > 65535) {
        throw invalidArgument(`port forward: invalid port ${p}`);
      }
    }
    return this.#register({
      kind: "portforward",
      req: { podSandboxId: req.podSandboxId, ports: [...(req.ports ?? [])] },
    }, "portforward");
  }

  #register(entry: Cached, path: string): string {
    if (!this.#server) throw unavailable("streaming server is not started");
    const now = Date.now();
    for (const [k, v] of this.#cache) if (v.expires <= now) this.#cache.delete(k);
    if (this.#cache.size >= MAX_IN_FLIGHT) {
      throw new TainerdError("ResourceExhausted", "too many streaming requests in flight");
    }
    const bytes = crypto.getRandomValues(new Uint8Array(8));
    const token = btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_")
      .replace(/=+$/, "");
    this.#cache.set(token, { entry, expires: now + this.#opts.tokenTtlMs });
    return `${this.#url}/${path}/${token}`;
  }

  #consume(token: string): Cached | null {
    const v = this.#cache.get(token);
    if (!v) return null;
    this.#cache.delete(token);
    if (v.expires <= Date.now()) return null;
    return v.entry;
  }

  /** Parses `/{kind}/{token}`; null when the route does not exist. */
  #route(url: string | undefined): { kind: Cached["kind"]; token: string } | null {
    const path = (url ?? "").split("?")[0];
    const m = /^\/(exec|attach|portforward)\/([A-Za-z0-9_-]+)$/.exec(path);
    return m ? { kind: m[1] as Cached["kind"], token: m[2] } : null;
  }

  #onRequest(req: http.IncomingMessage, res: http.ServerResponse): void {
    const route = this.#route(req.url);
    const send = (status: number, msg: string, headers: Record<string, string> = {}) => {
      res.writeHead(status, { "Content-Type": "text/plain; charset=utf-8", ...headers });
      res.end(msg + "\n");
    };
    if (!route) return send(404, "404 page not found");
    if (req.method !== "GET" && req.method !== "POST") {
      return send(405, "method not allowed", { Allow: "GET, POST" });
    }
    const cached = this.#consume(route.token);
    if (!cached || cached.kind !== route.kind) return send(404, "404 page not found");
    send(400, "unable to upgrade: the request is not a SPDY/3.1 or WebSocket upgrade");
  }

  #onUpgrade(req: http.IncomingMessage, socket: Duplex, head: Uint8Array): void {
    socket.on("error", () => {});
    if (this.#closing) return void socket.destroy();
    const route = this.#route(req.url);
    if (!route) return rejectSocket(socket, 404, "404 page not found");
    if (req.method !== "GET" && req.method !== "POST") {
      return rejectSocket(socket, 405, "method not allowed");
    }
    const cached = this.#consume(route.token);
    if (!cached || cached.kind !== route.kind) {
      return rejectSocket(socket, 404, "404 page not found");
    }
    const job =
      (isWebSocketRequest(req)
        ? this.#serveWebSocket(req, socket, head, cached)
        : this.#serveSpdy(req, socket, head, cached)).catch(() => void socket.destroy());
    this.#sessions.add(job);
    void job.finally(() => this.#sessions.delete(job));
  }

  #runner(cached: Cached): (io: StreamIO) => Promise<{ exitCode: number } | void> {
    const rt = this.#opts.runtime;
    if (cached.kind === "exec") {
      const { containerId, cmd } = cached.req;
      return (io) => rt.exec(containerId, cmd, io);
    }
    if (cached.kind === "attach") {
      const { containerId } = cached.req;
      return (io) => rt.attach(containerId, io);
    }
    throw new Error("not a remote command");
  }

  #forwarder(req: PortForwardRequest): Forwarder {
    return (port, conn) => this.#opts.runtime.portForward(req.podSandboxId, port, conn);
  }

  async #serveSpdy(
    req: http.IncomingMessage,
    socket: Duplex,
    head: Uint8Array,
    cached: Cached,
  ): Promise<void> {
    const upgrade = String(req.headers["upgrade"] ?? "").toLowerCase();
    const connection = String(req.headers["connection"] ?? "").toLowerCase();
    if (!connection.includes("upgrade") || !upgrade.includes("spdy/3.1")) {
      return rejectSocket(socket, 400, "unable to upgrade: missing upgrade headers in request");
    }
    const clientProtocols = headerValues(req, "x-stream-protocol-version");
    if (clientProtocols.length === 0) {
      return rejectSocket(
        socket,
        400,
        "unable to upgrade: header X-Stream-Protocol-Version does not exist or is empty",
      );
    }
    const serverProtocols = cached.kind === "portforward"
      ? [PORTFORWARD_PROTOCOL]
      : SPDY_REMOTECOMMAND_PROTOCOLS;
    const protocol = clientProtocols.find((p) => serverProtocols.includes(p));
    if (!protocol) {
      return rejectSocket(
        socket,
        403,
        `unable to upgrade: unable to negotiate protocol: client supports ${
          JSON.stringify(clientProtocols)
        }, server accepts ${JSON.stringify(serverProtocols)}`,
        { "X-Accepted-Stream-Protocol-Versions": serverProtocols.join(", ") },
      );
    }
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n" +
        `X-Stream-Protocol-Version: ${protocol}\r\n\r\n`,
    );
    (socket as { setNoDelay?: (b: boolean) => void }).setNoDelay?.(true);
    await this.#runSpdy(socketChannel(socket, head), cached, protocol);
  }

  async #runSpdy(channel: ByteChannel, cached: Cached, protocol: string): Promise<void> {
    const queue = streamQueue();
    let idle: IdleTimer | null = null;
    const session = new SpdySession(channel, {
      onStream: queue.push,
      onClose: () => queue.end(),
      onActivity: () => idle?.touch(),
    });
    idle = new IdleTimer(this.#opts.idleTimeoutMs, () => void session.close());
    try {
      if (cached.kind === "portforward") {
        await serveSpdyPortForward(
          session,
          queue.iter,
          cached.req.podSandboxId,
          this.#forwarder(cached.req),
        );
      } else {
        await serveSpdyRemoteCommand(
          session,
          queue.iter,
          protocol,
          commandOptions(cached),
          this.#runner(cached),
        );
      }
    } finally {
      idle.stop();
      await session.close();
    }
  }

  async #serveWebSocket(
    req: http.IncomingMessage,
    socket: Duplex,
    head: Uint8Array,
    cached: Cached,
  ): Promise<void> {
    const requested = requestedProtocols(req);
    let chosen: string | undefined;
    let tunnel = false;
    if (cached.kind === "portforward") {
      if (requested.includes(TUNNEL_PROTOCOL)) {
        chosen = TUNNEL_PROTOCOL;
        tunnel = true;
      } else {
        chosen = requested.length === 0
          ? ""
          : requested.find((p) => WS_PORTFORWARD_PROTOCOLS.includes(p));
      }
    } else {
      chosen = requested.length === 0
        ? ""
        : requested.find((p) => WS_REMOTECOMMAND_PROTOCOLS.includes(p));
    }
    if (chosen === undefined) {
      return rejectSocket(
        socket,
        403,
        `requested protocol(s) are not supported: ${JSON.stringify(requested)}`,
      );
    }
    let ws;
    try {
      ws = acceptWebSocket(req, socket, head, chosen || null);
    } catch (err) {
      return rejectSocket(socket, 400, (err as Error).message);
    }
    (socket as { setNoDelay?: (b: boolean) => void }).setNoDelay?.(true);
    if (tunnel) {
      const messages = ws.messages();
      const channel: ByteChannel = {
        readable: (async function* () {
          for await (const m of messages) if (m.binary) yield m.data;
        })(),
        write: (data) => ws.sendBinary(data),
        close: () => ws.close(1000),
      };
      await this.#runSpdy(channel, cached, PORTFORWARD_PROTOCOL);
      await ws.closedPromise;
      return;
    }
    const idle = new IdleTimer(this.#opts.idleTimeoutMs, () => ws.close(1000));
    try {
      if (cached.kind === "portforward") {
        await serveWebSocketPortForward(
          ws,
          chosen,
          cached.req.ports,
          cached.req.podSandboxId,
          this.#forwarder(cached.req),
          idle.touch,
        );
      } else {
        await serveWebSocketRemoteCommand(
          ws,
          chosen,
          commandOptions(cached),
          this.#runner(cached),
          idle.touch,
        );
      }
    } finally {
      idle.stop();
    }
  }

  /** Stops listening, forgets pending tokens and ends live sessions. */
  async close(): Promise<void> {
    this.#closing = true;
    this.#cache.clear();
    const server = this.#server;
    this.#server = null;
    const closed = server
      ? new Promise<void>((resolve) => server.close(() => resolve()))
      : Promise.resolve();
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
    await closed;
    // Sessions end with their sockets; a runtime call that ignores that is not waited for long.
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled([...this.#sessions]),
      new Promise((r) => timer = setTimeout(r, 1000)),
    ]);
    clearTimeout(timer);
  }
}

function validateStreams(
  what: string,
  req: { tty: boolean; stdin: boolean; stdout: boolean; stderr: boolean },
): void {
  if (req.tty && req.stderr) throw invalidArgument(`${what}: tty and stderr cannot both be true`);
  if (!req.stdin && !req.stdout && !req.stderr) {
    throw invalidArgument(`${what}: one of stdin, stdout, or stderr must be set`);
  }
}

function commandOptions(cached: Cached): CommandOptions {
  if (cached.kind === "portforward") throw new Error("not a remote command");
  const { stdin, stdout, stderr, tty } = cached.req;
  return { stdin, stdout, stderr, tty };
}
