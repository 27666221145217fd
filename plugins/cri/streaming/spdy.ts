/**
 * SPDY/3.1 framing and a server-side session, as far as Kubernetes' streaming protocols use it
 * (the peer is `github.com/moby/spdystream` inside client-go).
 *
 * A session runs over any ordered byte channel: a raw TCP socket after an HTTP `Upgrade:
 * SPDY/3.1`, or the binary messages of a WebSocket that tunnels SPDY (`SPDY/3.1+…`).
 *
 * - Frames: SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS, PING, GOAWAY, HEADERS, WINDOW_UPDATE,
 *   DATA (SPDY/3.1 draft layout).
 * - Header blocks are zlib streams primed with the SPDY/3 dictionary. Incoming blocks are
 *   inflated with `node:zlib` (one stateful inflater per session); outgoing blocks are written
 *   as stored (uncompressed) deflate blocks of one continuing zlib stream, which every inflater
 *   accepts and which needs no compressor state.
 * - Flow control: received data is acknowledged with per-stream WINDOW_UPDATE frames. The send
 *   window is not enforced, because spdystream never sends WINDOW_UPDATE (kubelet's server
 *   behaves the same way).
 *
 * @module
 */

import { createInflate, type Inflate } from "node:zlib";
import { Buffer } from "node:buffer";

const DICTIONARY_WORDS = (
  "options|head|post|put|delete|trace|accept|accept-charset|accept-encoding|" +
  "accept-language|accept-ranges|age|allow|authorization|cache-control|connection|" +
  "content-base|content-encoding|content-language|content-length|content-location|" +
  "content-md5|content-range|content-type|date|etag|expect|expires|from|host|" +
  "if-match|if-modified-since|if-none-match|if-range|if-unmodified-since|" +
  "last-modified|location|max-forwards|pragma|proxy-authenticate|" +
  "proxy-authorization|range|referer|retry-after|server|te|trailer|" +
  "transfer-encoding|upgrade|user-agent|vary|via|warning|www-authenticate|method|" +
  "get|status|200 OK|version|HTTP/1.1|url|public|set-cookie|keep-alive|origin"
).split("|");
const DICTIONARY_TAIL =
  "10010120120220520630030230330430530630740240540640740840941041141241341441541641" +
  "7502504505203 Non-Authoritative Information204 No Content301 Moved Permanently40" +
  "0 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error" +
  "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept O" +
  "ct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,imag" +
  "e/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,text/" +
  "javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1" +
  ",utf-,*,enq=0.";

/** The zlib dictionary of SPDY/3 header compression (1423 bytes). */
export const SPDY3_DICTIONARY: Uint8Array = (() => {
  const enc = new TextEncoder();
  const parts: Uint8Array[] = [];
  for (const w of DICTIONARY_WORDS) {
    const b = enc.encode(w);
    const len = new Uint8Array(4);
    new DataView(len.buffer).setUint32(0, b.length);
    parts.push(len, b);
  }
  parts.push(enc.encode(DICTIONARY_TAIL));
  return concat(parts);
})();

function adler32(data: Uint8Array): number {
  let a = 1, b = 0;
  for (let i = 0; i < data.length; i++) {
    a = (a + data[i]) % 65521;
    b = (b + a) % 65521;
  }
  return ((b << 16) | a) >>> 0;
}

/** Concatenates byte arrays. */
export function concat(parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}

/** An ordered, reliable byte channel a session runs over. */
export interface ByteChannel {
  /** Incoming bytes, in order; ends when the peer closes. */
  readonly readable: AsyncIterable<Uint8Array>;
  /** Queues bytes for sending, in call order; resolves when the channel accepted them. */
  write(data: Uint8Array): Promise<void>;
  /** Closes the channel (gracefully: queued bytes are still delivered). */
  close(): void;
}

const VERSION = 3;
const TYPE_SYN_STREAM = 1;
const TYPE_SYN_REPLY = 2;
const TYPE_RST_STREAM = 3;
const TYPE_SETTINGS = 4;
const TYPE_PING = 6;
const TYPE_GOAWAY = 7;
const TYPE_HEADERS = 8;
const TYPE_WINDOW_UPDATE = 9;
const FLAG_FIN = 0x01;
/** RST_STREAM status codes used here. */
const RST_PROTOCOL_ERROR = 1;
const RST_CANCEL = 5;
const MAX_DATA_CHUNK = 32 * 1024;
/** Receive buffering per stream before the session stops reading (back-pressure). */
const STREAM_BUFFER_HIGH = 4 * 1024 * 1024;

/** Header names (lower case) to values; multi-valued headers are NUL-separated on the wire. */
export type SpdyHeaders = Record<string, string[]>;

/** Buffers incoming bytes and hands out exact-length reads. */
class ByteReader {
  #chunks: Uint8Array[] = [];
  #size = 0;
  #iter: AsyncIterator<Uint8Array>;
  #done = false;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.#iter = source[Symbol.asyncIterator]();
  }

  /** Reads exactly n bytes; null on a clean end of input before the first byte. */
  async read(n: number): Promise<Uint8Array | null> {
    while (this.#size < n) {
      if (this.#done) {
        if (this.#size === 0) return null;
        throw new Error("SPDY connection closed in the middle of a frame");
      }
      const r = await this.#iter.next();
      if (r.done) {
        this.#done = true;
        continue;
      }
      if (r.value.length) {
        this.#chunks.push(r.value);
        this.#size += r.value.length;
      }
    }
    const all = this.#chunks.length === 1 ? this.#chunks[0] : concat(this.#chunks);
    const out = all.slice(0, n);
    const rest = all.subarray(n);
    this.#chunks = rest.length ? [rest] : [];
    this.#size = rest.length;
    return out;
  }
}

/** Inflates the header blocks of one direction of a session (one zlib stream). */
class HeaderInflater {
  #inflate: Inflate;
  #out: Buffer[] = [];
  #error: Error | null = null;

  constructor() {
    this.#inflate = createInflate({ dictionary: Buffer.from(SPDY3_DICTIONARY) });
    this.#inflate.on("data", (b: Buffer) => this.#out.push(b));
    this.#inflate.on("error", (e: Error) => this.#error = e);
  }

  /** Decompresses one sync-flushed header block. */
  inflate(block: Uint8Array): Promise<Uint8Array> {
    return new Promise((resolve, reject) => {
      if (this.#error) return reject(this.#error);
      this.#inflate.write(Buffer.from(block));
      this.#inflate.flush(2, /* Z_SYNC_FLUSH */ () => {
        if (this.#error) return reject(this.#error);
        const out = concat(this.#out);
        this.#out = [];
        resolve(out);
      });
    });
  }

  close(): void {
    this.#inflate.destroy();
  }
}

/** Produces outgoing header blocks as stored deflate blocks of one zlib stream. */
class HeaderDeflater {
  #started = false;

  deflate(raw: Uint8Array): Uint8Array {
    const parts: Uint8Array[] = [];
    if (!this.#started) {
      this.#started = true;
      // CMF 0x78 (deflate, 32K window); FLG with FDICT set and a valid FCHECK; then DICTID.
      const cmf = 0x78;
      let flg = 0x20 | (3 << 6);
      flg += 31 - ((cmf * 256 + flg) % 31);
      const hdr = new Uint8Array(6);
      hdr[0] = cmf;
      hdr[1] = flg;
      new DataView(hdr.buffer).setUint32(2, adler32(SPDY3_DICTIONARY));
      parts.push(hdr);
    }
    for (let off = 0; off < raw.length || off === 0; off += 0xffff) {
      const chunk = raw.subarray(off, off + 0xffff);
      const b = new Uint8Array(5);
      b[0] = 0; // BFINAL=0, BTYPE=00 (stored), padded to the byte boundary
      b[1] = chunk.length & 0xff;
      b[2] = chunk.length >> 8;
      b[3] = ~chunk.length & 0xff;
      b[4] = (~chunk.length >> 8) & 0xff;
      parts.push(b, chunk);
      if (raw.length === 0) break;
    }
    // An empty stored block ends the block like zlib's Z_SYNC_FLUSH: inflaters (Go's
    // compress/flate) only hand out the data of a stored block once the next block starts.
    parts.push(new Uint8Array([0, 0, 0, 0xff, 0xff]));
    return concat(parts);
  }
}

function encodeHeaderBlock(headers: SpdyHeaders): Uint8Array {
  const enc = new TextEncoder();
  const names = Object.keys(headers);
  const parts: Uint8Array[] = [];
  const u32 = (n: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n);
    return b;
  };
  parts.push(u32(names.length));
  for (const name of names) {
    const n = enc.encode(name.toLowerCase());
    const v = enc.encode(headers[name].join("\0"));
    parts.push(u32(n.length), n, u32(v.length), v);
  }
  return concat(parts);
}

function decodeHeaderBlock(raw: Uint8Array): SpdyHeaders {
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const dec = new TextDecoder();
  const out: SpdyHeaders = {};
  let off = 0;
  const need = (n: number) => {
    if (off + n > raw.length) throw new Error("truncated SPDY header block");
  };
  need(4);
  const count = dv.getUint32(off);
  off += 4;
  if (count > 1000) throw new Error("too many SPDY headers");
  for (let i = 0; i < count; i++) {
    need(4);
    const nl = dv.getUint32(off);
    off += 4;
    need(nl);
    const name = dec.decode(raw.subarray(off, off + nl)).toLowerCase();
    off += nl;
    need(4);
    const vl = dv.getUint32(off);
    off += 4;
    need(vl);
    const value = dec.decode(raw.subarray(off, off + vl));
    off += vl;
    (out[name] ??= []).push(...value.split("\0"));
  }
  return out;
}

/** One SPDY stream opened by the peer. */
export class SpdyStream {
  /** The stream id (odd: opened by the client). */
  readonly id: number;
  /** The SYN_STREAM headers. */
  readonly headers: SpdyHeaders;
  /** Data from the peer; closes on the peer's FIN, errors on RST_STREAM. */
  readonly readable: ReadableStream<Uint8Array>;
  #session: SpdySession;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #remoteClosed = false;
  #localClosed = false;
  #reset = false;
  #pullWaiters: (() => void)[] = [];

  /** @internal */
  constructor(session: SpdySession, id: number, headers: SpdyHeaders, fin: boolean) {
    this.#session = session;
    this.id = id;
    this.headers = headers;
    this.readable = new ReadableStream<Uint8Array>({
      start: (c) => {
        this.#controller = c;
      },
      pull: () => {
        const w = this.#pullWaiters;
        this.#pullWaiters = [];
        w.forEach((f) => f());
      },
      cancel: () => {
        this.#remoteClosed = true;
      },
    }, { highWaterMark: STREAM_BUFFER_HIGH, size: (c) => c.byteLength });
    if (fin) this.remoteFinished();
  }

  /** The first value of a header, or undefined. */
  header(name: string): string | undefined {
    return this.headers[name.toLowerCase()]?.[0];
  }

  /** True once the peer half-closed or reset the stream. */
  get remoteClosed(): boolean {
    return this.#remoteClosed;
  }

  /** True once this side half-closed or reset the stream. */
  get localClosed(): boolean {
    return this.#localClosed;
  }

  /** Sends data (split into DATA frames). Writing after close is silently dropped. */
  async write(data: Uint8Array): Promise<void> {
    if (this.#localClosed || this.#session.closed) return;
    for (let off = 0; off < data.length; off += MAX_DATA_CHUNK) {
      await this.#session.sendData(this.id, data.subarray(off, off + MAX_DATA_CHUNK), false);
    }
  }

  /** Half-closes this side (an empty DATA frame with FIN). */
  async closeWrite(): Promise<void> {
    if (this.#localClosed) return;
    this.#localClosed = true;
    if (!this.#session.closed) await this.#session.sendData(this.id, new Uint8Array(0), true);
    this.#session.maybeForget(this);
  }

  /** Aborts the stream with RST_STREAM (CANCEL). */
  reset(): void {
    if (this.#reset) return;
    this.#reset = true;
    this.#localClosed = true;
    if (!this.#session.closed) this.#session.sendRst(this.id, RST_CANCEL);
    this.remoteReset();
  }

  /** A WritableStream view of the sending side; closing it half-closes the stream. */
  writable(): WritableStream<Uint8Array> {
    return new WritableStream<Uint8Array>({
      write: (chunk) => this.write(chunk),
      close: () => this.closeWrite(),
      abort: () => this.reset(),
    });
  }

  /** @internal Delivers peer data; resolves when there is room for more. */
  async deliver(data: Uint8Array): Promise<void> {
    if (this.#remoteClosed) return;
    try {
      this.#controller.enqueue(data);
    } catch {
      return;
    }
    if ((this.#controller.desiredSize ?? 1) <= 0) {
      await new Promise<void>((r) => this.#pullWaiters.push(r));
    }
  }

  /** @internal The peer sent FIN. */
  remoteFinished(): void {
    if (this.#remoteClosed) return;
    this.#remoteClosed = true;
    try {
      this.#controller.close();
    } catch { /* already closed or cancelled */ }
    this.#wake();
    this.#session.maybeForget(this);
  }

  /** @internal The peer reset the stream, or the session died. */
  remoteReset(): void {
    this.#localClosed = true;
    if (!this.#remoteClosed) {
      this.#remoteClosed = true;
      try {
        this.#controller.error(new Error(`SPDY stream ${this.id} was reset`));
      } catch { /* already closed */ }
    }
    this.#wake();
    this.#session.maybeForget(this);
  }

  #wake() {
    const w = this.#pullWaiters;
    this.#pullWaiters = [];
    w.forEach((f) => f());
  }
}

/** Options of a server-side SPDY session. */
export interface SpdySessionOptions {
  /** Called for every stream the peer opens, after SYN_REPLY was queued. */
  onStream: (stream: SpdyStream) => void;
  /** Called once when the session ends (peer EOF, GOAWAY, protocol error, or close()). */
  onClose?: (error?: Error) => void;
  /** Called whenever stream data moves in either direction (for idle timeouts). */
  onActivity?: () => void;
}

/** The server side of a SPDY/3.1 connection. */
export class SpdySession {
  #channel: ByteChannel;
  #opts: SpdySessionOptions;
  #streams = new Map<number, SpdyStream>();
  #inflater = new HeaderInflater();
  #deflater = new HeaderDeflater();
  #closed = false;
  #channelClosed = false;
  #lastStreamId = 0;
  /** Resolves when the read loop has ended. */
  readonly done: Promise<void>;

  constructor(channel: ByteChannel, opts: SpdySessionOptions) {
    this.#channel = channel;
    this.#opts = opts;
    this.done = this.#readLoop();
  }

  /** True once the session has ended. */
  get closed(): boolean {
    return this.#closed;
  }

  async #readLoop(): Promise<void> {
    const reader = new ByteReader(this.#channel.readable);
    let error: Error | undefined;
    try {
      while (!this.#closed) {
        const head = await reader.read(8);
        if (!head) break;
        const dv = new DataView(head.buffer, head.byteOffset, 8);
        const first = dv.getUint32(0);
        const flags = head[4];
        const length = dv.getUint32(4) & 0xffffff;
        const payload = length ? await reader.read(length) : new Uint8Array(0);
        if (!payload) throw new Error("SPDY connection closed in the middle of a frame");
        if (first & 0x80000000) {
          const version = (first >>> 16) & 0x7fff;
          const type = first & 0xffff;
          if (version !== VERSION) throw new Error(`unsupported SPDY version ${version}`);
          const stop = await this.#control(type, flags, payload);
          if (stop) break;
        } else {
          await this.#data(first & 0x7fffffff, flags, payload);
        }
      }
    } catch (e) {
      error = e instanceof Error ? e : new Error(String(e));
    }
    this.#terminate(error);
  }

  async #control(type: number, flags: number, p: Uint8Array): Promise<boolean> {
    const dv = new DataView(p.buffer, p.byteOffset, p.byteLength);
    switch (type) {
      case TYPE_SYN_STREAM: {
        if (p.length < 10) throw new Error("short SYN_STREAM");
        const id = dv.getUint32(0) & 0x7fffffff;
        const headers = decodeHeaderBlock(await this.#inflater.inflate(p.subarray(10)));
        if (id === 0 || id % 2 === 0 || id <= this.#lastStreamId) {
          this.sendRst(id, RST_PROTOCOL_ERROR);
          return false;
        }
        this.#lastStreamId = id;
        const stream = new SpdyStream(this, id, headers, (flags & FLAG_FIN) !== 0);
        this.#streams.set(id, stream);
        this.#sendControl(
          TYPE_SYN_REPLY,
          0,
          concat([u32(id), this.#deflater.deflate(encodeHeaderBlock({}))]),
        );
        this.#opts.onStream(stream);
        return false;
      }
      case TYPE_HEADERS: {
        // Extra headers are not used by the streaming protocols; keep the inflater in step.
        const id = dv.getUint32(0) & 0x7fffffff;
        await this.#inflater.inflate(p.subarray(4));
        if (flags & FLAG_FIN) this.#streams.get(id)?.remoteFinished();
        return false;
      }
      case TYPE_SYN_REPLY: {
        // This side opens no streams; keep the inflater in step and ignore.
        await this.#inflater.inflate(p.subarray(4));
        return false;
      }
      case TYPE_RST_STREAM: {
        const id = dv.getUint32(0) & 0x7fffffff;
        this.#streams.get(id)?.remoteReset();
        return false;
      }
      case TYPE_PING: {
        // Echo the peer's pings (odd ids from the client); this side sends none.
        this.#sendControl(TYPE_PING, 0, p.slice(0, 4));
        return false;
      }
      case TYPE_GOAWAY:
        return true;
      case TYPE_SETTINGS:
      case TYPE_WINDOW_UPDATE:
        return false;
      default:
        return false; // unknown control frames are ignored, as the spec requires
    }
  }

  async #data(id: number, flags: number, p: Uint8Array): Promise<void> {
    const stream = this.#streams.get(id);
    if (!stream) return;
    this.#opts.onActivity?.();
    if (p.length) {
      this.#sendControl(TYPE_WINDOW_UPDATE, 0, concat([u32(id), u32(p.length)]));
      await stream.deliver(p);
    }
    if (flags & FLAG_FIN) stream.remoteFinished();
  }

  #sendControl(type: number, flags: number, payload: Uint8Array): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const frame = new Uint8Array(8 + payload.length);
    const dv = new DataView(frame.buffer);
    dv.setUint32(0, (0x8000 | VERSION) << 16 | type);
    dv.setUint32(4, (flags << 24 | payload.length) >>> 0);
    frame.set(payload, 8);
    return this.#channel.write(frame).catch(() => {});
  }

  /** @internal */
  sendData(id: number, data: Uint8Array, fin: boolean): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#opts.onActivity?.();
    const frame = new Uint8Array(8 + data.length);
    const dv = new DataView(frame.buffer);
    dv.setUint32(0, id & 0x7fffffff);
    dv.setUint32(4, ((fin ? FLAG_FIN : 0) << 24 | data.length) >>> 0);
    frame.set(data, 8);
    return this.#channel.write(frame).catch(() => {});
  }

  /** @internal */
  sendRst(id: number, status: number): void {
    void this.#sendControl(TYPE_RST_STREAM, 0, concat([u32(id), u32(status)]));
  }

  /** @internal Drops a stream closed in both directions from the table. */
  maybeForget(stream: SpdyStream): void {
    if (stream.localClosed && stream.remoteClosed) this.#streams.delete(stream.id);
  }

  #terminate(error?: Error): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const s of this.#streams.values()) s.remoteReset();
    this.#streams.clear();
    this.#inflater.close();
    this.#opts.onClose?.(error);
  }

  /**
   * Sends GOAWAY (unless the session already ended) and closes the channel; live streams are
   * reset locally. Also needed after the peer went away: the channel stays open until then.
   */
  async close(): Promise<void> {
    if (!this.#closed) {
      const p = this.#sendControl(TYPE_GOAWAY, 0, concat([u32(this.#lastStreamId), u32(0)]));
      this.#terminate();
      await p;
    }
    if (this.#channelClosed) return;
    this.#channelClosed = true;
    this.#channel.close();
  }
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n >>> 0);
  return b;
}
