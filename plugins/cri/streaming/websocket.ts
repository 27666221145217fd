/**
 * A minimal server-side WebSocket (RFC 6455) over a raw socket taken from `node:http`'s
 * `upgrade` event: the opening handshake, frame parsing (masked client frames, fragmentation,
 * ping/pong, close), and unmasked server frames. Enough for Kubernetes' channel protocols
 * (`v5.channel.k8s.io`, `v4.channel.k8s.io`, `channel.k8s.io`, `base64.channel.k8s.io`) and
 * the SPDY-over-WebSocket tunnel (`SPDY/3.1+portforward.k8s.io`).
 *
 * @module
 */

import { createHash } from "node:crypto";
import type { IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";
import { Buffer } from "node:buffer";
import { concat } from "./spdy.ts";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const OP_CONT = 0, OP_TEXT = 1, OP_BINARY = 2, OP_CLOSE = 8, OP_PING = 9, OP_PONG = 10;
/** Largest message accepted from a client (stdin chunks and tunneled SPDY frames are small). */
const MAX_MESSAGE = 32 * 1024 * 1024;

/** One complete data message. */
export interface WsMessage {
  /** True for binary messages, false for text. */
  binary: boolean;
  /** The payload (UTF-8 bytes for text). */
  data: Uint8Array;
}

/** The requested subprotocols of a WebSocket upgrade request, in the client's order. */
export function requestedProtocols(req: IncomingMessage): string[] {
  const raw = req.headers["sec-websocket-protocol"];
  const joined = Array.isArray(raw) ? raw.join(",") : raw ?? "";
  return joined.split(",").map((p) => p.trim()).filter((p) => p !== "");
}

/** True when the request asks for a WebSocket upgrade. */
export function isWebSocketRequest(req: IncomingMessage): boolean {
  const upgrade = String(req.headers["upgrade"] ?? "").toLowerCase();
  const connection = String(req.headers["connection"] ?? "").toLowerCase();
  return upgrade === "websocket" && connection.includes("upgrade");
}

/**
 * Completes the opening handshake (101 with `protocol` as the chosen subprotocol, or none) and
 * returns the connection. Throws if the request lacks a valid `Sec-WebSocket-Key`.
 */
export function acceptWebSocket(
  req: IncomingMessage,
  socket: Duplex,
  head: Uint8Array,
  protocol: string | null,
): WebSocketConn {
  const key = String(req.headers["sec-websocket-key"] ?? "");
  if (!key || req.headers["sec-websocket-version"] !== "13") {
    throw new Error("missing or unsupported Sec-WebSocket-Key/Sec-WebSocket-Version");
  }
  const accept = createHash("sha1").update(key + GUID).digest("base64");
  const lines = [
    "HTTP/1.1 101 Switching Protocols",
    "Upgrade: websocket",
    "Connection: Upgrade",
    `Sec-WebSocket-Accept: ${accept}`,
  ];
  if (protocol) lines.push(`Sec-WebSocket-Protocol: ${protocol}`);
  socket.write(lines.join("\r\n") + "\r\n\r\n");
  return new WebSocketConn(socket, head);
}

/** A server-side WebSocket connection. */
export class WebSocketConn {
  #socket: Duplex;
  #buf: Uint8Array = new Uint8Array(0);
  #fragments: Uint8Array[] = [];
  #fragmentOp = 0;
  #queue: WsMessage[] = [];
  #waiter: (() => void) | null = null;
  #ended = false;
  #closeSent = false;
  #closed = false;
  /** Resolves when the underlying socket has closed. */
  readonly closedPromise: Promise<void>;

  /** @internal */
  constructor(socket: Duplex, head: Uint8Array) {
    this.#socket = socket;
    this.closedPromise = new Promise((resolve) => {
      socket.on("close", () => {
        this.#closed = true;
        this.#end();
        resolve();
      });
    });
    socket.on("error", () => this.#end());
    socket.on("end", () => this.#end());
    socket.on("data", (d: Uint8Array) => this.#onData(d));
    if (head.length) this.#onData(head);
  }

  /** Incoming data messages; ends on a close frame or when the socket ends. */
  async *messages(): AsyncGenerator<WsMessage> {
    while (true) {
      while (this.#queue.length) yield this.#queue.shift()!;
      if (this.#ended) return;
      await new Promise<void>((r) => this.#waiter = r);
    }
  }

  #wake() {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  #end() {
    this.#ended = true;
    this.#wake();
  }

  #onData(d: Uint8Array) {
    this.#buf = this.#buf.length ? concat([this.#buf, d]) : new Uint8Array(d);
    try {
      while (this.#parseFrame()) { /* keep parsing */ }
    } catch {
      this.close(1002);
      this.#end();
    }
  }

  /** Parses one frame from the buffer; false when more bytes are needed. */
  #parseFrame(): boolean {
    const b = this.#buf;
    if (b.length < 2) return false;
    const fin = (b[0] & 0x80) !== 0;
    const op = b[0] & 0x0f;
    const masked = (b[1] & 0x80) !== 0;
    let len = b[1] & 0x7f;
    let off = 2;
    if (len === 126) {
      if (b.length < 4) return false;
      len = (b[2] << 8) | b[3];
      off = 4;
    } else if (len === 127) {
      if (b.length < 10) return false;
      const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
      const big = dv.getBigUint64(2);
      if (big > BigInt(MAX_MESSAGE)) throw new Error("WebSocket frame too large");
      len = Number(big);
      off = 10;
    }
    if (!masked) throw new Error("unmasked client frame");
    if (b.length < off + 4 + len) return false;
    const mask = b.subarray(off, off + 4);
    off += 4;
    const payload = b.slice(off, off + len);
    for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i & 3];
    this.#buf = b.subarray(off + len);
    if (op >= 8) {
      if (op === OP_PING) this.#send(OP_PONG, payload);
      else if (op === OP_CLOSE) {
        this.close(1000);
        this.#end();
      }
      return true;
    }
    if (op !== OP_CONT) {
      this.#fragmentOp = op;
      this.#fragments = [];
    }
    this.#fragments.push(payload);
    if (this.#fragments.reduce((n, f) => n + f.length, 0) > MAX_MESSAGE) {
      throw new Error("WebSocket message too large");
    }
    if (fin) {
      const data = concat(this.#fragments);
      this.#fragments = [];
      if (this.#fragmentOp === OP_TEXT || this.#fragmentOp === OP_BINARY) {
        this.#queue.push({ binary: this.#fragmentOp === OP_BINARY, data });
        this.#wake();
      }
    }
    return true;
  }

  #send(op: number, data: Uint8Array): Promise<void> {
    if (this.#closeSent || this.#closed) return Promise.resolve();
    let head: Uint8Array;
    if (data.length < 126) {
      head = new Uint8Array([0x80 | op, data.length]);
    } else if (data.length < 65536) {
      head = new Uint8Array([0x80 | op, 126, data.length >> 8, data.length & 0xff]);
    } else {
      head = new Uint8Array(10);
      head[0] = 0x80 | op;
      head[1] = 127;
      new DataView(head.buffer).setBigUint64(2, BigInt(data.length));
    }
    return new Promise((resolve) => {
      this.#socket.write(Buffer.from(concat([head, data])), () => resolve());
    });
  }

  /** Sends a binary message; resolves when the socket accepted it. */
  sendBinary(data: Uint8Array): Promise<void> {
    return this.#send(OP_BINARY, data);
  }

  /** Sends a text message. */
  sendText(text: string): Promise<void> {
    return this.#send(OP_TEXT, new TextEncoder().encode(text));
  }

  /**
   * Sends a close frame (once) and half-closes the socket; the socket is destroyed when the
   * peer closes its side or after `graceMs`.
   */
  close(code = 1000, graceMs = 2000): void {
    if (this.#closeSent || this.#closed) return;
    const body = new Uint8Array([code >> 8, code & 0xff]);
    void this.#send(OP_CLOSE, body);
    this.#closeSent = true;
    this.#socket.end();
    const t = setTimeout(() => this.#socket.destroy(), graceMs);
    void this.closedPromise.then(() => clearTimeout(t));
  }

  /** Destroys the socket at once. */
  destroy(): void {
    this.#socket.destroy();
  }
}
