/**
 * Port forwarding sessions, as kubelet's CRI streaming library serves them:
 *
 * - SPDY (`portforward.k8s.io`), directly after `Upgrade: SPDY/3.1` or tunneled in WebSocket
 *   binary messages (`SPDY/3.1+portforward.k8s.io`, what `crictl port-forward --transport
 *   websocket` and kubectl's tunneling dialer use): every forwarded connection is a pair of
 *   streams, `streamType` `error` and `data`, sharing `port` and `requestID` headers.
 * - WebSocket channels (`v4.channel.k8s.io`, `v4.base64.channel.k8s.io`): two channels per
 *   requested port (data, error); the server first sends the port as uint16 LE on both.
 *
 * @module
 */

import type { SpdySession, SpdyStream } from "./spdy.ts";
import type { WebSocketConn } from "./websocket.ts";
import { STREAM_CREATION_TIMEOUT_MS } from "./remotecommand.ts";

/** The SPDY port forward protocol. */
export const PORTFORWARD_PROTOCOL = "portforward.k8s.io";

/** WebSocket channel protocols served for port forwarding ("" = none requested). */
export const WS_PORTFORWARD_PROTOCOLS: readonly string[] = [
  "v4.channel.k8s.io",
  "v4.base64.channel.k8s.io",
];

/** Forwards one connection to a port of the sandbox. */
export type Forwarder = (
  port: number,
  conn: { readable: ReadableStream<Uint8Array>; writable: WritableStream<Uint8Array> },
) => Promise<void>;

interface Pair {
  data?: SpdyStream;
  error?: SpdyStream;
  timer: ReturnType<typeof setTimeout>;
}

function requestIdOf(stream: SpdyStream, type: string): string {
  const id = stream.header("requestid");
  if (id !== undefined) return id;
  // Clients before requestID headers opened error (n) then data (n+2) streams.
  return String(type === "data" ? stream.id - 2 : stream.id);
}

/**
 * Serves SPDY port forwarding until the session ends: pairs the client's streams and runs
 * the forwarder for each pair.
 */
export async function serveSpdyPortForward(
  session: SpdySession,
  incoming: AsyncIterable<SpdyStream>,
  podSandboxId: string,
  forward: Forwarder,
  creationTimeoutMs = STREAM_CREATION_TIMEOUT_MS,
): Promise<void> {
  const pairs = new Map<string, Pair>();
  const running = new Set<Promise<void>>();
  for await (const s of incoming) {
    const type = s.header("streamtype") ?? "";
    if (type !== "data" && type !== "error") {
      s.reset();
      continue;
    }
    const rid = requestIdOf(s, type);
    let pair = pairs.get(rid);
    if (!pair) {
      const p: Pair = {
        timer: setTimeout(() => {
          pairs.delete(rid);
          void failPair(p, `timed out waiting for streams of request ${rid}`);
        }, creationTimeoutMs),
      };
      pair = p;
      pairs.set(rid, pair);
    }
    if (pair[type]) {
      s.reset();
      continue;
    }
    pair[type] = s;
    if (pair.data && pair.error) {
      clearTimeout(pair.timer);
      pairs.delete(rid);
      const job = runPair(pair.data, pair.error, podSandboxId, forward);
      running.add(job);
      void job.finally(() => running.delete(job));
    }
  }
  for (const p of pairs.values()) clearTimeout(p.timer);
  await session.close();
  await Promise.allSettled([...running]);
}

async function failPair(p: Pair, message: string): Promise<void> {
  if (p.error) {
    await p.error.write(new TextEncoder().encode(message));
    await p.error.closeWrite();
  }
  p.data?.reset();
}

async function runPair(
  data: SpdyStream,
  error: SpdyStream,
  podSandboxId: string,
  forward: Forwarder,
): Promise<void> {
  const portText = data.header("port") ?? "";
  const port = /^\d+$/.test(portText) ? Number(portText) : NaN;
  let message: string | null = null;
  if (!(port > 0 && port < 65536)) {
    message = `invalid port ${JSON.stringify(portText)}`;
  } else {
    const writable = data.writable();
    try {
      await forward(port, { readable: data.readable, writable });
    } catch (err) {
      message = `error forwarding port ${port} to pod ${podSandboxId}: ${
        err instanceof Error ? err.message : String(err)
      }`;
    }
  }
  if (message) await error.write(new TextEncoder().encode(message));
  await error.closeWrite();
  await data.closeWrite();
}

/** Serves WebSocket channel port forwarding for the ports named in the cached request. */
export async function serveWebSocketPortForward(
  ws: WebSocketConn,
  protocol: string,
  ports: number[],
  podSandboxId: string,
  forward: Forwarder,
  onActivity: () => void,
): Promise<void> {
  const base64 = protocol.includes("base64");
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
  const readers = new Map<number, ReadableStreamDefaultController<Uint8Array>>();
  const jobs: Promise<void>[] = [];
  for (let i = 0; i < ports.length; i++) {
    const port = ports[i];
    const dataCh = i * 2, errCh = i * 2 + 1;
    const portBytes = new Uint8Array([port & 0xff, port >> 8]);
    await send(dataCh, portBytes);
    await send(errCh, portBytes);
    const readable = new ReadableStream<Uint8Array>({
      start: (c) => void readers.set(dataCh, c),
      cancel: () => void readers.delete(dataCh),
    });
    let closed = false;
    const writable = new WritableStream<Uint8Array>({
      write: (c) => closed ? undefined : send(dataCh, c),
      close: () => void (closed = true),
      abort: () => void (closed = true),
    });
    jobs.push((async () => {
      try {
        await forward(port, { readable, writable });
      } catch (err) {
        const msg = `error forwarding port ${port} to pod ${podSandboxId}: ${
          err instanceof Error ? err.message : String(err)
        }`;
        await send(errCh, new TextEncoder().encode(msg));
      }
    })());
  }
  const pump = (async () => {
    for await (const msg of ws.messages()) {
      onActivity();
      let data = msg.data;
      if (data.length === 0) continue;
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
    for (const c of readers.values()) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
  })();
  await Promise.race([Promise.all(jobs), pump]);
  ws.close(1000);
  await Promise.allSettled([...jobs, pump]);
}
