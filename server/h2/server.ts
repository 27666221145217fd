/**
 * A lean HTTP/2 server (RFC 9113, cleartext with prior knowledge, as gRPC on a unix socket
 * is) on `Deno.listen`: framing, HPACK, both directions of flow control, PING, GOAWAY and
 * RST_STREAM, and nothing an API socket does not need (no push, no priorities, no HTTP/1.1
 * upgrade).
 *
 * Why not `node:http2`: the daemon's calls are small and many (`ctr run` makes ~30), and in
 * Deno's node:http2 each one went through the Node stream machinery, a compat request and
 * response, and several socket writes — about 1.8 ms of daemon CPU per call, profiled. Here a
 * call costs one frame parse per frame and one socket write per response (the HEADERS, DATA
 * and trailer frames of everything answered in the same tick go out together).
 *
 * @module
 */

import { type HeaderList, HpackDecoder, hpackEncode, HpackError } from "./hpack.ts";

const PREFACE = new TextEncoder().encode("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");

/** Frame types (RFC 9113 section 6). */
const enum T {
  DATA = 0,
  HEADERS = 1,
  PRIORITY = 2,
  RST_STREAM = 3,
  SETTINGS = 4,
  PUSH_PROMISE = 5,
  PING = 6,
  GOAWAY = 7,
  WINDOW_UPDATE = 8,
  CONTINUATION = 9,
}

const END_STREAM = 0x1;
const ACK = 0x1;
const END_HEADERS = 0x4;
const PADDED = 0x8;
const PRIORITY_FLAG = 0x20;

/** Error codes (RFC 9113 section 7). */
export const H2Code = {
  NO_ERROR: 0,
  PROTOCOL_ERROR: 1,
  INTERNAL_ERROR: 2,
  FLOW_CONTROL_ERROR: 3,
  SETTINGS_TIMEOUT: 4,
  STREAM_CLOSED: 5,
  FRAME_SIZE_ERROR: 6,
  REFUSED_STREAM: 7,
  CANCEL: 8,
  COMPRESSION_ERROR: 9,
  CONNECT_ERROR: 10,
  ENHANCE_YOUR_CALM: 11,
  INADEQUATE_SECURITY: 12,
  HTTP_1_1_REQUIRED: 13,
} as const;

const SETTINGS_ENABLE_PUSH = 2;
const SETTINGS_MAX_CONCURRENT_STREAMS = 3;
const SETTINGS_INITIAL_WINDOW_SIZE = 4;
const SETTINGS_MAX_FRAME_SIZE = 5;
const SETTINGS_MAX_HEADER_LIST_SIZE = 6;

const MAX_WINDOW = 2 ** 31 - 1;
const DEFAULT_WINDOW = 65535;
const DEFAULT_FRAME = 16384;

/** What the server advertises. */
const OUR_MAX_CONCURRENT_STREAMS = 1000;
const OUR_STREAM_WINDOW = 1 << 20;
const OUR_CONN_WINDOW = 16 << 20;
const OUR_MAX_HEADER_LIST = 1 << 20;

/** A connection error: GOAWAY with `code`, then the connection closes. */
class ConnectionError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
  }
}

/** Why a stream ended early: the peer reset it (`code`), or the connection went away. */
export class H2StreamError extends Error {
  constructor(readonly code: number, message: string) {
    super(message);
    this.name = "H2StreamError";
  }
}

function frameHeader(len: number, type: number, flags: number, id: number): Uint8Array {
  const h = new Uint8Array(9 + len);
  h[0] = len >>> 16;
  h[1] = (len >>> 8) & 0xff;
  h[2] = len & 0xff;
  h[3] = type;
  h[4] = flags;
  h[5] = (id >>> 24) & 0x7f;
  h[6] = (id >>> 16) & 0xff;
  h[7] = (id >>> 8) & 0xff;
  h[8] = id & 0xff;
  return h;
}

function u32(b: Uint8Array, o: number): number {
  return ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
}

function put32(b: Uint8Array, o: number, v: number): void {
  b[o] = (v >>> 24) & 0xff;
  b[o + 1] = (v >>> 16) & 0xff;
  b[o + 2] = (v >>> 8) & 0xff;
  b[o + 3] = v & 0xff;
}

/** One request stream, as the handler sees it. */
export class H2Stream {
  readonly id: number;
  readonly method: string;
  /** `:path`, query included. */
  readonly path: string;
  readonly authority: string;
  readonly scheme: string;
  /** The request's regular header fields (no pseudo-headers), lowercase names. */
  readonly headers: HeaderList;
  /** Aborted (with an {@linkcode H2StreamError}) when the peer resets the stream or leaves. */
  readonly signal: AbortSignal;

  readonly #conn: H2Connection;
  readonly #abort = new AbortController();
  #chunks: Uint8Array[] = [];
  #waiter: (() => void) | null = null;
  /** The peer sent END_STREAM. */
  remoteEnded = false;
  /** We sent END_STREAM (or reset the stream). */
  localEnded = false;
  #headersSent = false;
  #error: H2StreamError | null = null;
  /** Bytes we may still receive (our window for the stream). */
  recvWindow = OUR_STREAM_WINDOW;
  /** Bytes consumed by the handler and not yet given back with WINDOW_UPDATE. */
  #unacked = 0;
  /** Bytes received and not yet consumed. */
  #buffered = 0;
  /** Bytes we may still send (the peer's window for the stream). */
  sendWindow: number;

  constructor(
    conn: H2Connection,
    id: number,
    pseudo: Record<string, string>,
    headers: HeaderList,
    sendWindow: number,
  ) {
    this.#conn = conn;
    this.id = id;
    this.method = pseudo[":method"];
    this.path = pseudo[":path"];
    this.authority = pseudo[":authority"] ?? "localhost";
    this.scheme = pseudo[":scheme"] ?? "http";
    this.headers = headers;
    this.signal = this.#abort.signal;
    this.sendWindow = sendWindow;
  }

  /** The request body, chunk by chunk; each chunk read gives the peer its window back. */
  async *body(): AsyncGenerator<Uint8Array> {
    for (;;) {
      if (this.#chunks.length > 0) {
        const chunk = this.#chunks.shift()!;
        this.#buffered -= chunk.length;
        this.#consumed(chunk.length);
        yield chunk;
        continue;
      }
      if (this.#error) throw this.#error;
      if (this.remoteEnded) return;
      await new Promise<void>((resolve) => this.#waiter = resolve);
      this.#waiter = null;
    }
  }

  #wake(): void {
    this.#waiter?.();
  }

  #consumed(n: number): void {
    this.#unacked += n;
    this.#conn.consumed(n);
    if (!this.remoteEnded && this.#unacked >= OUR_STREAM_WINDOW / 2) {
      this.recvWindow += this.#unacked;
      this.#conn.sendWindowUpdate(this.id, this.#unacked);
      this.#unacked = 0;
    }
  }

  /** @internal A DATA payload from the peer. */
  onData(data: Uint8Array, end: boolean): void {
    if (data.length > 0) {
      this.#chunks.push(data);
      this.#buffered += data.length;
    }
    if (end) this.remoteEnded = true;
    this.#wake();
  }

  /** @internal The peer ended its side without data (END_STREAM on HEADERS). */
  onEnd(): void {
    this.remoteEnded = true;
    this.#wake();
  }

  /** @internal The stream ends early: reset by the peer, or the connection is gone. */
  onReset(err: H2StreamError): void {
    if (this.#error) return;
    this.#error = err;
    this.localEnded = true;
    this.dropBuffered();
    this.#abort.abort(err);
    this.#wake();
  }

  /** @internal Gives back to the connection what was received and never read. */
  dropBuffered(): void {
    if (this.#buffered > 0) this.#conn.consumed(this.#buffered);
    this.#buffered = 0;
    this.#chunks = [];
  }

  /** Whether the stream was reset or its connection lost. */
  get errored(): boolean {
    return this.#error !== null;
  }

  /** Whether the response headers went out. */
  get headersSent(): boolean {
    return this.#headersSent;
  }

  /** Sends the response headers; `end` ends the stream with them (a trailers-only answer). */
  respond(status: number, headers: Iterable<readonly [string, string]>, end = false): void {
    if (this.#error) throw this.#error;
    if (this.#headersSent) throw new Error("response headers already sent");
    this.#headersSent = true;
    const list: [string, string][] = [[":status", String(status)]];
    for (const [n, v] of headers) list.push([n, v]);
    this.#conn.sendHeaders(this.id, hpackEncode(list), end);
    if (end) this.#ended();
  }

  /** Sends body bytes, as the peer's flow-control windows allow. */
  async write(data: Uint8Array): Promise<void> {
    if (!this.#headersSent) throw new Error("write before respond");
    await this.#conn.sendData(this, data);
  }

  /**
   * Sends body bytes at once if the flow-control windows allow all of them, returning true;
   * else sends nothing and returns false (then {@linkcode write}). A whole small answer queued
   * without an `await` goes out in one socket write.
   */
  writeNow(data: Uint8Array): boolean {
    if (!this.#headersSent) throw new Error("write before respond");
    return data.length === 0 || this.#conn.trySendData(this, data);
  }

  /** Ends the response, with trailers if given (else an empty DATA frame with END_STREAM). */
  end(trailers?: Iterable<readonly [string, string]>): void {
    if (this.#error) throw this.#error;
    if (this.localEnded) return;
    const list = trailers ? [...trailers] : [];
    if (list.length > 0) this.#conn.sendHeaders(this.id, hpackEncode(list), true);
    else this.#conn.sendRaw(frameHeader(0, T.DATA, END_STREAM, this.id));
    this.#ended();
  }

  #ended(): void {
    this.localEnded = true;
    this.#conn.streamEnded(this);
  }

  /** Resets the stream with `code` (e.g. CANCEL, INTERNAL_ERROR). */
  reset(code: number): void {
    if (this.localEnded && this.remoteEnded) return;
    if (!this.#error) {
      this.#conn.sendRst(this.id, code);
      this.onReset(new H2StreamError(code, `stream reset by the server (code ${code})`));
    }
    this.#conn.streamEnded(this);
  }
}

/** Handles one request stream; errors it throws reset the stream. */
export type H2Handler = (stream: H2Stream) => void;

/** One client connection. */
export class H2Connection {
  readonly #conn: Deno.Conn;
  readonly #handler: H2Handler;
  readonly #decoder = new HpackDecoder(4096, OUR_MAX_HEADER_LIST);
  readonly #streams = new Map<number, H2Stream>();
  #lastStreamId = 0;
  #goingAway = false;
  #closed = false;
  // The peer's settings.
  #peerInitialWindow = DEFAULT_WINDOW;
  #peerMaxFrame = DEFAULT_FRAME;
  /** What we may still send on the connection. */
  #sendWindow = DEFAULT_WINDOW;
  /** What the peer may still send on the connection, and what was read and not given back. */
  #recvWindow = OUR_CONN_WINDOW;
  #unacked = 0;
  /** Writers waiting for window. */
  #windowWaiters: (() => void)[] = [];
  // Output: frames queued this tick go out in one write.
  #out: Uint8Array[] = [];
  #outBytes = 0;
  #writing = false;
  #drainWaiters: (() => void)[] = [];
  // A header block spread over CONTINUATION frames.
  #continuation: { id: number; flags: number; parts: Uint8Array[]; size: number } | null = null;
  readonly closed: Promise<void>;
  #resolveClosed!: () => void;
  /** Called when the connection has no stream left after a shutdown began. */
  onIdle: (() => void) | null = null;

  constructor(conn: Deno.Conn, handler: H2Handler) {
    this.#conn = conn;
    this.#handler = handler;
    this.closed = new Promise((r) => this.#resolveClosed = r);
  }

  /** Streams open now. */
  get streamCount(): number {
    return this.#streams.size;
  }

  /** Reads and answers frames until the connection ends. */
  async serve(): Promise<void> {
    try {
      await this.#serve();
    } catch (err) {
      if (err instanceof ConnectionError) {
        this.#goAway(err.code, err.message);
        await this.#drained();
      }
      // Anything else: the socket failed; nothing to tell the peer.
    } finally {
      this.#teardown();
    }
  }

  async #serve(): Promise<void> {
    let buf = new Uint8Array(64 * 1024);
    let start = 0;
    let end = 0;
    let prefaceSeen = false;
    for (;;) {
      if (buf.length - end < 16 * 1024) {
        // Compact, or grow for a frame larger than the buffer.
        const need = end - start + 64 * 1024;
        const next = need > buf.length ? new Uint8Array(need) : buf;
        next.copyWithin(0, start, end);
        if (next !== buf) next.set(buf.subarray(start, end));
        buf = next;
        end -= start;
        start = 0;
      }
      const n = await this.#conn.read(buf.subarray(end));
      if (n === null) return;
      end += n;
      if (!prefaceSeen) {
        if (end - start < PREFACE.length) {
          if (!PREFACE.subarray(0, end - start).every((b, i) => buf[start + i] === b)) {
            await this.#notHttp2();
            return;
          }
          continue;
        }
        for (let i = 0; i < PREFACE.length; i++) {
          if (buf[start + i] !== PREFACE[i]) {
            await this.#notHttp2();
            return;
          }
        }
        start += PREFACE.length;
        prefaceSeen = true;
        // Our settings and a larger connection window, once the client spoke HTTP/2.
        const settings = new Uint8Array(4 * 6);
        const put = (i: number, id: number, v: number) => {
          settings[i * 6] = id >> 8;
          settings[i * 6 + 1] = id & 0xff;
          put32(settings, i * 6 + 2, v);
        };
        put(0, SETTINGS_MAX_CONCURRENT_STREAMS, OUR_MAX_CONCURRENT_STREAMS);
        put(1, SETTINGS_INITIAL_WINDOW_SIZE, OUR_STREAM_WINDOW);
        put(2, SETTINGS_MAX_HEADER_LIST_SIZE, OUR_MAX_HEADER_LIST);
        put(3, SETTINGS_ENABLE_PUSH, 0);
        const sf = frameHeader(settings.length, T.SETTINGS, 0, 0);
        sf.set(settings, 9);
        this.sendRaw(sf);
        this.sendWindowUpdate(0, OUR_CONN_WINDOW - DEFAULT_WINDOW);
      }
      while (end - start >= 9) {
        const len = (buf[start] << 16) | (buf[start + 1] << 8) | buf[start + 2];
        if (len > DEFAULT_FRAME) {
          throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, `frame of ${len} bytes`);
        }
        if (end - start < 9 + len) break;
        const type = buf[start + 3];
        const flags = buf[start + 4];
        const id = u32(buf, start + 5) & 0x7fffffff;
        const payload = buf.subarray(start + 9, start + 9 + len);
        start += 9 + len;
        this.#frame(type, flags, id, payload);
        if (this.#closed) return;
      }
      if (start === end) start = end = 0;
      if (this.#outBytes > 4 << 20) await this.#drained();
    }
  }

  /** Not HTTP/2 with prior knowledge (an HTTP/1.1 client, say): a plain answer, then close. */
  async #notHttp2(): Promise<void> {
    const body = "this socket speaks HTTP/2 (gRPC, or Connect with --http2-prior-knowledge)\n";
    const msg = `HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-type: text/plain\r\n` +
      `content-length: ${body.length}\r\nconnection: close\r\n\r\n${body}`;
    this.#out = [];
    this.#outBytes = 0;
    try {
      await this.#writeAll(new TextEncoder().encode(msg));
    } catch {
      // The peer left.
    }
  }

  #frame(type: number, flags: number, id: number, payload: Uint8Array): void {
    if (this.#continuation && type !== T.CONTINUATION) {
      throw new ConnectionError(H2Code.PROTOCOL_ERROR, "expected CONTINUATION");
    }
    switch (type) {
      case T.DATA:
        return this.#onData(flags, id, payload);
      case T.HEADERS:
        return this.#onHeaders(flags, id, payload);
      case T.CONTINUATION:
        return this.#onContinuation(flags, id, payload);
      case T.PRIORITY:
        if (id === 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "PRIORITY on stream 0");
        if (payload.length !== 5) {
          throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "PRIORITY size");
        }
        return;
      case T.RST_STREAM:
        return this.#onRst(id, payload);
      case T.SETTINGS:
        return this.#onSettings(flags, id, payload);
      case T.PUSH_PROMISE:
        throw new ConnectionError(H2Code.PROTOCOL_ERROR, "PUSH_PROMISE from a client");
      case T.PING:
        if (id !== 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "PING on a stream");
        if (payload.length !== 8) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "PING size");
        if (!(flags & ACK)) {
          const f = frameHeader(8, T.PING, ACK, 0);
          f.set(payload, 9);
          this.sendRaw(f);
        }
        return;
      case T.GOAWAY:
        if (id !== 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "GOAWAY on a stream");
        // The peer opens no more streams; the open ones finish.
        this.#goingAway = true;
        this.#checkIdle();
        return;
      case T.WINDOW_UPDATE:
        return this.#onWindowUpdate(id, payload);
      default:
        return; // Unknown frame types are ignored.
    }
  }

  #stripPadding(flags: number, payload: Uint8Array): Uint8Array {
    if (!(flags & PADDED)) return payload;
    if (payload.length < 1) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "bad padding");
    const pad = payload[0];
    if (pad >= payload.length) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "bad padding");
    return payload.subarray(1, payload.length - pad);
  }

  #onData(flags: number, id: number, payload: Uint8Array): void {
    if (id === 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "DATA on stream 0");
    const len = payload.length;
    if (len > this.#recvWindow) {
      throw new ConnectionError(H2Code.FLOW_CONTROL_ERROR, "connection window exceeded");
    }
    this.#recvWindow -= len;
    const stream = this.#streams.get(id);
    if (!stream || stream.remoteEnded) {
      // A stream we reset or finished: its data still counted against the connection.
      this.consumed(len);
      if (id > this.#lastStreamId) {
        throw new ConnectionError(H2Code.PROTOCOL_ERROR, "DATA on an idle stream");
      }
      if (stream && !stream.errored) {
        this.sendRst(id, H2Code.STREAM_CLOSED);
      }
      return;
    }
    if (len > stream.recvWindow) {
      this.consumed(len);
      this.sendRst(id, H2Code.FLOW_CONTROL_ERROR);
      stream.onReset(new H2StreamError(H2Code.FLOW_CONTROL_ERROR, "stream window exceeded"));
      this.streamEnded(stream);
      return;
    }
    stream.recvWindow -= len;
    const data = this.#stripPadding(flags, payload);
    // Padding is never handed out: give it back at once.
    if (len > data.length) this.consumed(len - data.length);
    if (stream.errored) {
      this.consumed(data.length);
      return;
    }
    stream.onData(data.slice(), (flags & END_STREAM) !== 0);
    if (stream.remoteEnded) this.#maybeDone(stream);
  }

  #onHeaders(flags: number, id: number, payload: Uint8Array): void {
    if (id === 0 || (id & 1) === 0) {
      throw new ConnectionError(H2Code.PROTOCOL_ERROR, `HEADERS on stream ${id}`);
    }
    let block = this.#stripPadding(flags, payload);
    if (flags & PRIORITY_FLAG) {
      if (block.length < 5) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "short HEADERS");
      block = block.subarray(5);
    }
    if (!(flags & END_HEADERS)) {
      this.#continuation = { id, flags, parts: [block.slice()], size: block.length };
      return;
    }
    this.#headerBlock(id, flags, block);
  }

  #onContinuation(flags: number, id: number, payload: Uint8Array): void {
    const c = this.#continuation;
    if (!c || c.id !== id) {
      throw new ConnectionError(H2Code.PROTOCOL_ERROR, "unexpected CONTINUATION");
    }
    c.parts.push(payload.slice());
    c.size += payload.length;
    if (c.size > OUR_MAX_HEADER_LIST * 2) {
      throw new ConnectionError(H2Code.ENHANCE_YOUR_CALM, "header block too large");
    }
    if (!(flags & END_HEADERS)) return;
    this.#continuation = null;
    const block = new Uint8Array(c.size);
    let o = 0;
    for (const p of c.parts) {
      block.set(p, o);
      o += p.length;
    }
    this.#headerBlock(id, c.flags, block);
  }

  #headerBlock(id: number, flags: number, block: Uint8Array): void {
    let fields: HeaderList;
    try {
      fields = this.#decoder.decode(block);
    } catch (err) {
      if (err instanceof HpackError) {
        throw new ConnectionError(H2Code.COMPRESSION_ERROR, err.message);
      }
      throw err;
    }
    const endStream = (flags & END_STREAM) !== 0;
    const existing = this.#streams.get(id);
    if (existing) {
      // Trailers: they must end the stream; gRPC requests have none worth keeping.
      if (existing.remoteEnded || !endStream) {
        this.sendRst(id, H2Code.PROTOCOL_ERROR);
        existing.onReset(new H2StreamError(H2Code.PROTOCOL_ERROR, "bad trailers"));
        this.streamEnded(existing);
        return;
      }
      existing.onEnd();
      this.#maybeDone(existing);
      return;
    }
    if (id <= this.#lastStreamId) {
      throw new ConnectionError(H2Code.PROTOCOL_ERROR, `stream ${id} reused`);
    }
    this.#lastStreamId = id;
    if (this.#goingAway || this.#streams.size >= OUR_MAX_CONCURRENT_STREAMS) {
      this.sendRst(id, H2Code.REFUSED_STREAM);
      return;
    }
    const pseudo: Record<string, string> = {};
    const headers: HeaderList = [];
    let bad = false;
    for (const f of fields) {
      const name = f[0];
      if (name.charCodeAt(0) === 58 /* : */) {
        if (headers.length > 0 || name in pseudo) bad = true;
        pseudo[name] = f[1];
      } else {
        headers.push(f);
      }
    }
    if (!pseudo[":method"] || !pseudo[":path"] || bad) {
      this.sendRst(id, H2Code.PROTOCOL_ERROR);
      return;
    }
    const stream = new H2Stream(this, id, pseudo, headers, this.#peerInitialWindow);
    this.#streams.set(id, stream);
    if (endStream) stream.onEnd();
    try {
      this.#handler(stream);
    } catch {
      stream.reset(H2Code.INTERNAL_ERROR);
    }
  }

  #onRst(id: number, payload: Uint8Array): void {
    if (id === 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "RST_STREAM on stream 0");
    if (payload.length !== 4) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "RST size");
    const stream = this.#streams.get(id);
    if (!stream) {
      if (id > this.#lastStreamId) {
        throw new ConnectionError(H2Code.PROTOCOL_ERROR, "RST_STREAM on an idle stream");
      }
      return;
    }
    const code = u32(payload, 0);
    stream.onReset(new H2StreamError(code, `stream reset by the client (code ${code})`));
    this.#streams.delete(id);
    this.#wakeWriters();
    this.#checkIdle();
  }

  #onSettings(flags: number, id: number, payload: Uint8Array): void {
    if (id !== 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "SETTINGS on a stream");
    if (flags & ACK) {
      if (payload.length !== 0) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "SETTINGS ack");
      return;
    }
    if (payload.length % 6 !== 0) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "SETTINGS");
    for (let o = 0; o < payload.length; o += 6) {
      const key = (payload[o] << 8) | payload[o + 1];
      const value = u32(payload, o + 2);
      switch (key) {
        case SETTINGS_INITIAL_WINDOW_SIZE: {
          if (value > MAX_WINDOW) {
            throw new ConnectionError(H2Code.FLOW_CONTROL_ERROR, "initial window too large");
          }
          const delta = value - this.#peerInitialWindow;
          this.#peerInitialWindow = value;
          for (const s of this.#streams.values()) s.sendWindow += delta;
          break;
        }
        case SETTINGS_MAX_FRAME_SIZE:
          if (value < DEFAULT_FRAME || value > 16777215) {
            throw new ConnectionError(H2Code.PROTOCOL_ERROR, "bad max frame size");
          }
          this.#peerMaxFrame = value;
          break;
        case SETTINGS_ENABLE_PUSH:
          if (value > 1) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "bad enable push");
          break;
        default:
          // HEADER_TABLE_SIZE (1): our encoder uses no dynamic table, so any size suits it.
          // MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_SIZE, unknown: nothing to do.
          break;
      }
    }
    this.sendRaw(frameHeader(0, T.SETTINGS, ACK, 0));
    this.#wakeWriters();
  }

  #onWindowUpdate(id: number, payload: Uint8Array): void {
    if (payload.length !== 4) throw new ConnectionError(H2Code.FRAME_SIZE_ERROR, "WINDOW_UPDATE");
    const inc = u32(payload, 0) & 0x7fffffff;
    if (id === 0) {
      if (inc === 0) throw new ConnectionError(H2Code.PROTOCOL_ERROR, "zero WINDOW_UPDATE");
      this.#sendWindow += inc;
      if (this.#sendWindow > MAX_WINDOW) {
        throw new ConnectionError(H2Code.FLOW_CONTROL_ERROR, "connection window overflow");
      }
    } else {
      const stream = this.#streams.get(id);
      if (!stream) return;
      if (inc === 0) {
        this.sendRst(id, H2Code.PROTOCOL_ERROR);
        stream.onReset(new H2StreamError(H2Code.PROTOCOL_ERROR, "zero WINDOW_UPDATE"));
        this.streamEnded(stream);
        return;
      }
      stream.sendWindow += inc;
      if (stream.sendWindow > MAX_WINDOW) {
        this.sendRst(id, H2Code.FLOW_CONTROL_ERROR);
        stream.onReset(new H2StreamError(H2Code.FLOW_CONTROL_ERROR, "window overflow"));
        this.streamEnded(stream);
        return;
      }
    }
    this.#wakeWriters();
  }

  #wakeWriters(): void {
    const waiters = this.#windowWaiters;
    this.#windowWaiters = [];
    for (const w of waiters) w();
  }

  /** @internal `n` bytes of received data are done with: give the peer its window back. */
  consumed(n: number): void {
    if (n <= 0 || this.#closed) return;
    this.#unacked += n;
    if (this.#unacked >= OUR_CONN_WINDOW / 4) {
      this.#recvWindow += this.#unacked;
      this.sendWindowUpdate(0, this.#unacked);
      this.#unacked = 0;
    }
  }

  /** @internal */
  sendWindowUpdate(id: number, inc: number): void {
    const f = frameHeader(4, T.WINDOW_UPDATE, 0, id);
    put32(f, 9, inc);
    this.sendRaw(f);
  }

  /** @internal */
  sendRst(id: number, code: number): void {
    const f = frameHeader(4, T.RST_STREAM, 0, id);
    put32(f, 9, code);
    this.sendRaw(f);
  }

  /** @internal A header block, split into HEADERS and CONTINUATION frames as needed. */
  sendHeaders(id: number, block: Uint8Array, end: boolean): void {
    const max = this.#peerMaxFrame;
    let off = 0;
    let first = true;
    do {
      const n = Math.min(max, block.length - off);
      const last = off + n >= block.length;
      const flags = (first && end ? END_STREAM : 0) | (last ? END_HEADERS : 0);
      const f = frameHeader(n, first ? T.HEADERS : T.CONTINUATION, flags, id);
      f.set(block.subarray(off, off + n), 9);
      this.sendRaw(f);
      off += n;
      first = false;
    } while (off < block.length);
  }

  /**
   * @internal DATA frames for all of `data` now, if the flow-control windows allow all of it
   * (and the output queue is not backed up); false, sending nothing, otherwise.
   */
  trySendData(stream: H2Stream, data: Uint8Array): boolean {
    if (stream.errored || this.#closed) {
      throw new H2StreamError(H2Code.CANCEL, "stream closed while writing");
    }
    const n = data.length;
    if (n > this.#sendWindow || n > stream.sendWindow || this.#outBytes > 1 << 20) return false;
    for (let off = 0; off < n; off += this.#peerMaxFrame) {
      this.#dataFrame(stream, data.subarray(off, off + Math.min(this.#peerMaxFrame, n - off)));
    }
    return true;
  }

  /** Queues one DATA frame of `chunk` (within the windows and the frame size), spending window. */
  #dataFrame(stream: H2Stream, chunk: Uint8Array): void {
    const f = frameHeader(chunk.length, T.DATA, 0, stream.id);
    f.set(chunk, 9);
    this.#sendWindow -= chunk.length;
    stream.sendWindow -= chunk.length;
    this.sendRaw(f);
  }

  /** @internal DATA frames for `data`, waiting for window as needed. */
  async sendData(stream: H2Stream, data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) {
      if (stream.errored || this.#closed) {
        throw new H2StreamError(H2Code.CANCEL, "stream closed while writing");
      }
      const n = Math.min(
        data.length - off,
        this.#sendWindow,
        stream.sendWindow,
        this.#peerMaxFrame,
      );
      if (n <= 0) {
        await new Promise<void>((resolve) => this.#windowWaiters.push(resolve));
        continue;
      }
      this.#dataFrame(stream, data.subarray(off, off + n));
      off += n;
      if (this.#outBytes > 1 << 20) await this.#drained();
    }
  }

  /** @internal Queues bytes for the socket; everything queued in one tick goes in one write. */
  sendRaw(frame: Uint8Array): void {
    if (this.#closed) return;
    this.#out.push(frame);
    this.#outBytes += frame.length;
    if (!this.#writing) {
      this.#writing = true;
      queueMicrotask(() => this.#flush());
    }
  }

  async #flush(): Promise<void> {
    try {
      while (this.#out.length > 0 && !this.#closed) {
        const parts = this.#out;
        const size = this.#outBytes;
        this.#out = [];
        this.#outBytes = 0;
        let data: Uint8Array;
        if (parts.length === 1) {
          data = parts[0];
        } else {
          data = new Uint8Array(size);
          let o = 0;
          for (const p of parts) {
            data.set(p, o);
            o += p.length;
          }
        }
        await this.#writeAll(data);
      }
    } catch {
      // The peer is gone: the read side ends too.
      this.#teardown();
    } finally {
      this.#writing = false;
      const waiters = this.#drainWaiters;
      this.#drainWaiters = [];
      for (const w of waiters) w();
    }
  }

  async #writeAll(data: Uint8Array): Promise<void> {
    let off = 0;
    while (off < data.length) off += await this.#conn.write(data.subarray(off));
  }

  #drained(): Promise<void> {
    if (!this.#writing) return Promise.resolve();
    return new Promise((resolve) => this.#drainWaiters.push(resolve));
  }

  /** @internal Our side of `stream` is done. */
  streamEnded(stream: H2Stream): void {
    this.#maybeDone(stream);
  }

  #maybeDone(stream: H2Stream): void {
    if (!stream.localEnded) return;
    if (this.#streams.get(stream.id) !== stream) return;
    if (!stream.remoteEnded && !stream.errored) {
      // We answered before the request ended: tell the client to stop sending.
      this.sendRst(stream.id, H2Code.NO_ERROR);
      stream.onReset(new H2StreamError(H2Code.NO_ERROR, "answered before the request ended"));
    }
    stream.dropBuffered();
    this.#streams.delete(stream.id);
    this.#checkIdle();
  }

  #checkIdle(): void {
    if (this.#goingAway && this.#streams.size === 0) this.onIdle?.();
  }

  #goAway(code: number, message = ""): void {
    const debug = new TextEncoder().encode(message.slice(0, 200));
    const f = frameHeader(8 + debug.length, T.GOAWAY, 0, 0);
    put32(f, 9, this.#lastStreamId);
    put32(f, 13, code);
    f.set(debug, 17);
    this.sendRaw(f);
  }

  /**
   * Graceful: no new streams (REFUSED_STREAM, which gRPC clients may retry elsewhere); the open
   * ones finish; then `onIdle`. No GOAWAY: connect-node (in Deno) throws an uncaught error on a
   * GOAWAY that finds its connection idle, and the socket closing says as much to every client.
   */
  shutdown(): void {
    if (this.#closed || this.#goingAway) return;
    this.#goingAway = true;
    this.#checkIdle();
  }

  /** Closes now: open streams end with an error. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#goingAway = true;
    await this.#drained();
    this.#teardown();
  }

  #teardown(): void {
    if (this.#closed) return;
    this.#closed = true;
    const err = new H2StreamError(H2Code.CANCEL, "connection closed");
    for (const s of this.#streams.values()) s.onReset(err);
    this.#streams.clear();
    this.#wakeWriters();
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
    this.#resolveClosed();
  }
}

/** An HTTP/2 server on a listener (a unix socket here). */
export class H2Server {
  readonly #listener: Deno.Listener;
  readonly #handler: H2Handler;
  readonly #conns = new Set<H2Connection>();
  #accepting: Promise<void>;
  #stopping = false;

  constructor(listener: Deno.Listener, handler: H2Handler) {
    this.#listener = listener;
    this.#handler = handler;
    this.#accepting = this.#accept();
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return; // Listener closed.
      }
      if (this.#stopping) {
        conn.close();
        continue;
      }
      const c = new H2Connection(conn, this.#handler);
      this.#conns.add(c);
      c.serve().finally(() => this.#conns.delete(c));
    }
  }

  /** Open connections. */
  get connections(): number {
    return this.#conns.size;
  }

  /**
   * Stops accepting and refuses new streams, lets open ones finish for up to `graceMs`, then
   * closes every connection (an idle one at once).
   */
  async close(graceMs: number, onForce?: () => void): Promise<void> {
    this.#stopping = true;
    try {
      this.#listener.close();
    } catch {
      // Already closed.
    }
    await this.#accepting;
    // Each connection closes as soon as it has no stream left.
    const idle = [...this.#conns].map((c) =>
      new Promise<void>((resolve) => {
        c.onIdle = () => void c.close().then(resolve);
        c.closed.then(resolve);
        c.shutdown();
      })
    );
    let timer: ReturnType<typeof setTimeout> | undefined;
    const forced = new Promise<"forced">((resolve) => {
      timer = setTimeout(() => resolve("forced"), graceMs);
    });
    const r = await Promise.race([Promise.all(idle), forced]);
    clearTimeout(timer);
    if (r === "forced") onForce?.();
    await Promise.all([...this.#conns].map((c) => c.close()));
  }
}
