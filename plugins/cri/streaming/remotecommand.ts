/**
 * Remote command (exec and attach) sessions, as kubelet's CRI streaming library serves them:
 * over SPDY (`v4.channel.k8s.io`, `v3…`, `v2…`, `channel.k8s.io`; one SPDY stream per
 * `streamType`) and over WebSocket (`v5.channel.k8s.io`, `v4.channel.k8s.io`,
 * `channel.k8s.io`, `base64.channel.k8s.io`, `v4.base64.channel.k8s.io`; one channel byte per
 * message). The v4+ error stream carries a JSON `metav1.Status`; older versions a plain message.
 *
 * @module
 */

import type { SpdySession, SpdyStream } from "./spdy.ts";
import type { WebSocketConn } from "./websocket.ts";
import type { StreamIO } from "./types.ts";

/** SPDY remote command protocols kubelet serves, in preference order. */
export const SPDY_REMOTECOMMAND_PROTOCOLS: readonly string[] = [
  "v4.channel.k8s.io",
  "v3.channel.k8s.io",
  "v2.channel.k8s.io",
  "channel.k8s.io",
];

/** WebSocket remote command protocols served ("" = no subprotocol: binary, v1 status). */
export const WS_REMOTECOMMAND_PROTOCOLS: readonly string[] = [
  "v5.channel.k8s.io",
  "v4.channel.k8s.io",
  "v4.base64.channel.k8s.io",
  "channel.k8s.io",
  "base64.channel.k8s.io",
];

/** How long the client has to open all its streams (kubelet's default). */
export const STREAM_CREATION_TIMEOUT_MS = 30_000;

/** The streams the cached request asked for. */
export interface CommandOptions {
  stdin: boolean;
  stdout: boolean;
  stderr: boolean;
  tty: boolean;
}

/** Runs the command against the prepared streams; resolves with the exit code for exec. */
export type CommandRunner = (io: StreamIO) => Promise<{ exitCode: number } | void>;

/** A subset of `metav1.Status`, serialised as kubelet does. */
interface Status {
  metadata: Record<string, never>;
  status: "Success" | "Failure";
  message?: string;
  reason?: string;
  details?: { causes: { reason?: string; message: string }[] };
  code?: number;
}

function successStatus(): Status {
  return { metadata: {}, status: "Success" };
}

function exitCodeStatus(code: number): Status {
  return {
    metadata: {},
    status: "Failure",
    message: `command terminated with non-zero exit code: exit status ${code}`,
    reason: "NonZeroExitCode",
    details: { causes: [{ reason: "ExitCode", message: String(code) }] },
  };
}

function internalErrorStatus(err: unknown): Status {
  const msg = `error executing command in container: ${
    err instanceof Error ? err.message : String(err)
  }`;
  return {
    metadata: {},
    status: "Failure",
    message: `Internal error occurred: ${msg}`,
    reason: "InternalError",
    details: { causes: [{ message: msg }] },
    code: 500,
  };
}

/** The encoding of the status on the error stream: JSON (v4+) or a bare message (v1–v3). */
function encodeStatus(status: Status, json: boolean): Uint8Array | null {
  if (json) return new TextEncoder().encode(JSON.stringify(status));
  if (status.status === "Success") return null;
  return new TextEncoder().encode(status.message ?? "error");
}

/** An output sink with serialised writes, closable directly whatever the runtime holds. */
class Sink {
  #write: (b: Uint8Array) => Promise<void>;
  #close: () => Promise<void>;
  #chain: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(write: (b: Uint8Array) => Promise<void>, close: () => Promise<void>) {
    this.#write = write;
    this.#close = close;
  }

  write(b: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const copy = b.slice();
    this.#chain = this.#chain.then(() => this.#write(copy)).catch(() => {});
    return this.#chain;
  }

  close(): Promise<void> {
    if (this.#closed) return this.#chain;
    this.#closed = true;
    this.#chain = this.#chain.then(() => this.#close()).catch(() => {});
    return this.#chain;
  }

  writable(): WritableStream<Uint8Array> {
    return new WritableStream<Uint8Array>({
      write: (c) => this.write(c),
      close: () => this.close(),
      abort: () => this.close(),
    });
  }
}

/** Parses a stream of concatenated JSON `{"Width":…,"Height":…}` objects. */
export async function* parseResizes(
  source: AsyncIterable<Uint8Array>,
): AsyncGenerator<{ width: number; height: number }> {
  const dec = new TextDecoder();
  let buf = "";
  for await (const chunk of source) {
    buf += dec.decode(chunk, { stream: true });
    while (true) {
      const start = buf.indexOf("{");
      if (start < 0) {
        buf = "";
        break;
      }
      let depth = 0, end = -1, inStr = false;
      for (let i = start; i < buf.length; i++) {
        const c = buf[i];
        if (inStr) {
          if (c === "\\") i++;
          else if (c === '"') inStr = false;
        } else if (c === '"') inStr = true;
        else if (c === "{") depth++;
        else if (c === "}" && --depth === 0) {
          end = i;
          break;
        }
      }
      if (end < 0) {
        buf = buf.slice(start);
        break;
      }
      const text = buf.slice(start, end + 1);
      buf = buf.slice(end + 1);
      try {
        const v = JSON.parse(text) as { Width?: unknown; Height?: unknown };
        const width = Number(v.Width ?? 0), height = Number(v.Height ?? 0);
        if (Number.isFinite(width) && Number.isFinite(height)) yield { width, height };
      } catch { /* a malformed message is dropped, as kubelet logs and skips it */ }
    }
  }
}

async function* iterate(stream: ReadableStream<Uint8Array>): AsyncGenerator<Uint8Array> {
  const reader = stream.getReader();
  try {
    while (true) {
      const r = await reader.read().catch(() => ({ done: true as const, value: undefined }));
      if (r.done) return;
      yield r.value;
    }
  } finally {
    reader.releaseLock();
  }
}

/** Runs the command with the sinks and writes the final status. */
async function runAndReport(
  run: CommandRunner,
  io: StreamIO,
  sinks: (Sink | null)[],
  writeStatus: (s: Status) => Promise<void>,
): Promise<void> {
  let status: Status;
  try {
    const result = await run(io);
    const code = result ? result.exitCode : 0;
    status = code === 0 ? successStatus() : exitCodeStatus(code);
  } catch (err) {
    status = internalErrorStatus(err);
  }
  await Promise.all(sinks.map((s) => s?.close()));
  await writeStatus(status);
}

/**
 * Serves one remote command over an upgraded SPDY session: waits for the client's streams
 * (by `streamType`), runs the command, reports the status and closes the session.
 */
export async function serveSpdyRemoteCommand(
  session: SpdySession,
  incoming: AsyncIterable<SpdyStream>,
  protocol: string,
  opts: CommandOptions,
  run: CommandRunner,
  creationTimeoutMs = STREAM_CREATION_TIMEOUT_MS,
): Promise<void> {
  const version = protocol === "channel.k8s.io" ? 1 : Number(protocol[1]);
  const expected = new Set<string>(["error"]);
  if (opts.stdin) expected.add("stdin");
  if (opts.stdout) expected.add("stdout");
  if (opts.stderr && !opts.tty) expected.add("stderr");
  if (opts.tty && version >= 3) expected.add("resize");
  const streams = new Map<string, SpdyStream>();
  // One iterator for the whole session: it ends when the session does (the client is gone).
  const it = incoming[Symbol.asyncIterator]();
  const collected = (async () => {
    for (let r = await it.next(); !r.done; r = await it.next()) {
      const s = r.value;
      const type = s.header("streamtype") ?? "";
      if (!expected.has(type) || streams.has(type)) {
        s.reset();
        continue;
      }
      streams.set(type, s);
      if (streams.size === expected.size) return true;
    }
    return false;
  })();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<false>((r) => timer = setTimeout(() => r(false), creationTimeoutMs));
  const ok = await Promise.race([collected, timeout]);
  clearTimeout(timer);
  if (!ok) {
    await session.close();
    return;
  }
  const sinkFor = (s: SpdyStream | undefined) =>
    s ? new Sink((b) => s.write(b), () => s.closeWrite()) : null;
  const stdout = sinkFor(streams.get("stdout"));
  const stderr = sinkFor(streams.get("stderr"));
  const resize = streams.get("resize");
  // Streams opened after the expected ones are refused; the end of them is the session's.
  const clientGone = (async () => {
    for (let r = await it.next(); !r.done; r = await it.next()) r.value.reset();
  })();
  const io: StreamIO = {
    stdin: streams.get("stdin")?.readable ?? null,
    stdout: stdout?.writable() ?? null,
    stderr: stderr?.writable() ?? null,
    tty: opts.tty,
    resize: resize ? parseResizes(iterate(resize.readable)) : null,
    clientGone,
  };
  const errorStream = streams.get("error")!;
  await runAndReport(run, io, [stdout, stderr], async (status) => {
    const bytes = encodeStatus(status, version >= 4);
    if (bytes) await errorStream.write(bytes);
    await errorStream.closeWrite();
  });
  await session.close();
}

/** Serves one remote command over an accepted WebSocket with a channel protocol. */
export async function serveWebSocketRemoteCommand(
  ws: WebSocketConn,
  protocol: string,
  opts: CommandOptions,
  run: CommandRunner,
  onActivity: () => void,
): Promise<void> {
  const base64 = protocol.includes("base64");
  const jsonStatus = protocol.startsWith("v4.") || protocol.startsWith("v5.");
  const supportsClose = protocol === "v5.channel.k8s.io";
  const send = (channel: number, data: Uint8Array): Promise<void> => {
    onActivity();
    if (base64) {
      let bin = "";
      for (const b of data) bin += String.fromCharCode(b);
      return ws.sendText(String.fromCharCode(48 + channel) + btoa(bin));
    }
    const frame = new Uint8Array(data.length + 1);
    frame[0] = channel;
    frame.set(data, 1);
    return ws.sendBinary(frame);
  };
  // Readable channels: 0 stdin (when requested), 4 resize.
  const readers = new Map<number, ReadableStreamDefaultController<Uint8Array>>();
  const readable = (ch: number) =>
    new ReadableStream<Uint8Array>({
      start: (c) => void readers.set(ch, c),
      cancel: () => void readers.delete(ch),
    });
  const stdinStream = opts.stdin ? readable(0) : null;
  const resizeStream = readable(4);
  const closeReader = (ch: number) => {
    const c = readers.get(ch);
    readers.delete(ch);
    try {
      c?.close();
    } catch { /* already closed */ }
  };
  const pump = (async () => {
    for await (const msg of ws.messages()) {
      onActivity();
      let data = msg.data;
      if (data.length === 0) continue;
      if (supportsClose && data[0] === 255) {
        if (data.length === 2) closeReader(data[1]);
        continue;
      }
      let ch = data[0];
      if (base64) {
        ch -= 48;
        const bin = atob(new TextDecoder().decode(data.subarray(1)));
        data = Uint8Array.from(bin, (c) => c.charCodeAt(0));
      } else {
        data = data.slice(1);
      }
      const c = readers.get(ch);
      if (c && data.length) {
        try {
          c.enqueue(data);
        } catch { /* reader gone */ }
      }
    }
    for (const ch of [...readers.keys()]) closeReader(ch);
  })();
  const stdout = opts.stdout ? new Sink((b) => send(1, b), () => Promise.resolve()) : null;
  const stderr = opts.stderr && !opts.tty
    ? new Sink((b) => send(2, b), () => Promise.resolve())
    : null;
  // Tell the client the connection is established: an empty message on the lowest writable
  // channel, as kubelet does.
  await send(opts.stdout ? 1 : opts.stderr ? 2 : 3, new Uint8Array(0));
  const io: StreamIO = {
    stdin: stdinStream,
    stdout: stdout?.writable() ?? null,
    stderr: stderr?.writable() ?? null,
    tty: opts.tty,
    resize: opts.tty ? parseResizes(iterate(resizeStream)) : null,
    clientGone: pump,
  };
  await runAndReport(run, io, [stdout, stderr], async (status) => {
    const bytes = encodeStatus(status, jsonStatus);
    if (bytes) await send(3, bytes);
  });
  ws.close(1000);
  await Promise.race([pump, ws.closedPromise]);
}
