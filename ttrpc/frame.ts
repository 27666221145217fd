/**
 * ttrpc framing: a 10-byte header (data length u32 BE, stream id u32 BE, message type u8,
 * flags u8) followed by the data. A reader that copes with partial reads and skips frames
 * over the size limit without losing sync, and a writer that serializes concurrent writes.
 *
 * @module
 */

import { TainerdError, unavailable } from "../plugins/errdefs.ts";

/** Size of a frame header in bytes. */
export const HEADER_LENGTH = 10;

/** The largest data length ttrpc accepts (4 MiB), as Go's `messageLengthMax`. */
export const MAX_MESSAGE_LENGTH = 4 << 20;

/** Frame message types. */
export const MessageType = {
  /** Starts a stream; carries a `ttrpc.Request`. */
  Request: 1,
  /** Ends a stream; carries a `ttrpc.Response`. */
  Response: 2,
  /** Stream data (ttrpc ≥ 1.2 streaming). */
  Data: 3,
} as const;

/** Frame flags (meaning depends on the message type). */
export const Flags = {
  /** Non-unary; no more data expected from the sender. */
  RemoteClosed: 0x1,
  /** Non-unary; the sender is still sending data. */
  RemoteOpen: 0x2,
  /** A data frame without data. */
  NoData: 0x4,
} as const;

/** A decoded frame header. */
export interface FrameHeader {
  /** Number of data bytes following the header. */
  length: number;
  /** Stream id: odd for client-initiated streams. */
  streamId: number;
  /** Message type (see {@link MessageType}). */
  type: number;
  /** Flags (see {@link Flags}). */
  flags: number;
}

/** A whole frame: header and data. */
export interface Frame {
  /** Stream id. */
  streamId: number;
  /** Message type (see {@link MessageType}). */
  type: number;
  /** Flags (see {@link Flags}). */
  flags: number;
  /** The data, `length` bytes. */
  data: Uint8Array;
}

/** Writes a frame header into the first 10 bytes of `target` (a new array by default). */
export function encodeHeader(
  header: FrameHeader,
  target: Uint8Array = new Uint8Array(HEADER_LENGTH),
): Uint8Array {
  const view = new DataView(target.buffer, target.byteOffset, HEADER_LENGTH);
  view.setUint32(0, header.length);
  view.setUint32(4, header.streamId);
  view.setUint8(8, header.type);
  view.setUint8(9, header.flags);
  return target;
}

/** Reads a frame header from the first 10 bytes of `bytes`. */
export function decodeHeader(bytes: Uint8Array): FrameHeader {
  if (bytes.length < HEADER_LENGTH) {
    throw new RangeError(`A ttrpc frame header needs ${HEADER_LENGTH} bytes, got ${bytes.length}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_LENGTH);
  return {
    length: view.getUint32(0),
    streamId: view.getUint32(4),
    type: view.getUint8(8),
    flags: view.getUint8(9),
  };
}

/** Encodes a whole frame (header then data) into one buffer, ready for a single write. */
export function encodeFrame(frame: Frame): Uint8Array {
  const out = new Uint8Array(HEADER_LENGTH + frame.data.length);
  encodeHeader({ ...frame, length: frame.data.length }, out);
  out.set(frame.data, HEADER_LENGTH);
  return out;
}

/**
 * Raised by {@link FrameReader.read} for a frame whose data length exceeds the limit. Its data
 * has been skipped, so the reader stays in sync and the connection can answer the stream with
 * `ResourceExhausted` and carry on, as Go's ttrpc does.
 */
export class FrameTooLargeError extends Error {
  /** The header of the rejected frame. */
  readonly header: FrameHeader;
  /** The limit it exceeded. */
  readonly limit: number;

  /**
   * Creates the error for a frame that was skipped.
   *
   * @param header the rejected frame's header
   * @param limit the maximum data length
   */
  constructor(header: FrameHeader, limit: number) {
    super(`Message length ${header.length} exceeds the maximum message size of ${limit}`);
    this.name = "FrameTooLargeError";
    this.header = header;
    this.limit = limit;
  }
}

/** Anything with Deno's `Reader` shape (a `Deno.Conn`, a `Deno.FsFile`…). */
export interface ByteReader {
  /** Reads up to `p.length` bytes into `p`; resolves the count, or null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
}

/** Anything with Deno's `Writer` shape. */
export interface ByteWriter {
  /** Writes some prefix of `p`; resolves the number of bytes written. */
  write(p: Uint8Array): Promise<number>;
}

/** Options for {@link FrameReader}. */
export interface FrameReaderOptions {
  /** Maximum data length; larger frames are skipped and reported. Default 4 MiB. */
  maxMessageLength?: number;
  /** Size of the read buffer. Default 64 KiB. */
  bufferSize?: number;
}

/** Wraps a `ReadableStream` of bytes as a {@link ByteReader}. */
export function readerFromStream(stream: ReadableStream<Uint8Array>): ByteReader {
  const reader = stream.getReader();
  let pending: Uint8Array | null = null;
  return {
    async read(p: Uint8Array): Promise<number | null> {
      while (pending === null || pending.length === 0) {
        const { done, value } = await reader.read();
        if (done) return null;
        pending = value;
      }
      const n = Math.min(p.length, pending.length);
      p.set(pending.subarray(0, n));
      pending = pending.subarray(n);
      return n;
    },
  };
}

/**
 * Reads frames from a byte source. Reads go through a buffer, so a frame may arrive split
 * across any number of reads, and many frames may arrive in one.
 */
export class FrameReader {
  readonly #source: ByteReader;
  readonly #max: number;
  #buf: Uint8Array;
  #start = 0;
  #end = 0;
  #eof = false;

  /**
   * Creates a reader over a byte source.
   *
   * @param source a `Deno.Conn`, any {@link ByteReader}, or a `ReadableStream` of bytes
   * @param options limits
   */
  constructor(
    source: ByteReader | ReadableStream<Uint8Array>,
    options: FrameReaderOptions = {},
  ) {
    this.#source = source instanceof ReadableStream ? readerFromStream(source) : source;
    this.#max = options.maxMessageLength ?? MAX_MESSAGE_LENGTH;
    this.#buf = new Uint8Array(Math.max(HEADER_LENGTH, options.bufferSize ?? 64 * 1024));
  }

  /** Buffered bytes not yet consumed. */
  get #available(): number {
    return this.#end - this.#start;
  }

  /** Reads more bytes into the buffer; false at end of stream. */
  async #fill(): Promise<boolean> {
    if (this.#eof) return false;
    if (this.#end === this.#buf.length) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    const n = await this.#source.read(this.#buf.subarray(this.#end));
    if (n === null) {
      this.#eof = true;
      return false;
    }
    this.#end += n;
    return true;
  }

  /** Makes sure `n` (≤ buffer size) bytes are buffered; false at end of stream. */
  async #ensure(n: number): Promise<boolean> {
    if (this.#start + n > this.#buf.length) {
      this.#buf.copyWithin(0, this.#start, this.#end);
      this.#end -= this.#start;
      this.#start = 0;
    }
    while (this.#available < n) {
      if (!(await this.#fill())) return false;
    }
    return true;
  }

  /** Takes the next `n` bytes as a fresh array; false at end of stream. */
  async #take(n: number): Promise<Uint8Array | null> {
    if (n <= this.#buf.length) {
      if (!(await this.#ensure(n))) return null;
      const out = this.#buf.slice(this.#start, this.#start + n);
      this.#start += n;
      return out;
    }
    // Larger than the buffer: drain what is buffered, then read straight into the result.
    const out = new Uint8Array(n);
    let off = this.#available;
    out.set(this.#buf.subarray(this.#start, this.#end));
    this.#start = this.#end = 0;
    while (off < n) {
      const k = await this.#source.read(out.subarray(off));
      if (k === null) {
        this.#eof = true;
        return null;
      }
      off += k;
    }
    return out;
  }

  /** Discards `n` bytes of the stream, buffered or not. */
  async #skip(n: number): Promise<boolean> {
    while (n > 0) {
      if (this.#available === 0) {
        this.#start = this.#end = 0;
        if (!(await this.#fill())) return false;
      }
      const k = Math.min(n, this.#available);
      this.#start += k;
      n -= k;
    }
    return true;
  }

  /**
   * The next frame, or null at a clean end of stream (between frames).
   *
   * @throws {FrameTooLargeError} for a frame over the limit (already skipped; reading may go on)
   * @throws {TainerdError} `Unavailable` if the stream ends in the middle of a frame
   */
  async read(): Promise<Frame | null> {
    if (!(await this.#ensure(HEADER_LENGTH))) {
      if (this.#available === 0) return null;
      throw unavailable("The ttrpc connection closed in the middle of a frame header");
    }
    const header = decodeHeader(this.#buf.subarray(this.#start, this.#start + HEADER_LENGTH));
    this.#start += HEADER_LENGTH;
    if (header.length > this.#max) {
      if (!(await this.#skip(header.length))) {
        throw unavailable("The ttrpc connection closed in the middle of a frame");
      }
      throw new FrameTooLargeError(header, this.#max);
    }
    const data = await this.#take(header.length);
    if (data === null) throw unavailable("The ttrpc connection closed in the middle of a frame");
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return { streamId: header.streamId, type: header.type, flags: header.flags, data };
  }
}

/**
 * Writes frames to a byte sink one at a time: concurrent callers are queued, so frames never
 * interleave. A failed write fails that frame and every later one.
 */
export class FrameWriter {
  readonly #sink: ByteWriter;
  #tail: Promise<void> = Promise.resolve();
  #error: unknown = undefined;

  /**
   * Creates a writer over a byte sink.
   *
   * @param sink a `Deno.Conn` or any {@link ByteWriter}
   */
  constructor(sink: ByteWriter) {
    this.#sink = sink;
  }

  /** Queues a frame; resolves once all of it has been written. */
  write(frame: Frame): Promise<void> {
    const bytes = encodeFrame(frame);
    const next = this.#tail.then(async () => {
      if (this.#error !== undefined) throw this.#error;
      try {
        let off = 0;
        while (off < bytes.length) off += await this.#sink.write(bytes.subarray(off));
      } catch (err) {
        this.#error = err;
        throw err;
      }
    });
    this.#tail = next.catch(() => {});
    return next;
  }
}

/** Whether an I/O error just means the peer or we closed the socket. */
export function isConnectionGone(err: unknown): boolean {
  return err instanceof Deno.errors.BadResource ||
    err instanceof Deno.errors.ConnectionReset ||
    err instanceof Deno.errors.BrokenPipe ||
    err instanceof Deno.errors.Interrupted ||
    err instanceof Deno.errors.NotConnected ||
    (err instanceof TainerdError && err.kind === "Unavailable");
}
