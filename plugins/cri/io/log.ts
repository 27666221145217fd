/**
 * The CRI container log, as containerd's `pkg/cri/io/logger.go`: a container's stdout and
 * stderr are copied into one file in the kubelet's format, a record per line:
 *
 * ```text
 * 2026-11-27T04:01:02.123456789Z stdout F a full line
 * 2026-11-27T04:01:02.123457Z stderr P the first maxLineSize bytes of a longer line
 * ```
 *
 * - `F` ends a line; `P` is a piece of one: a line longer than `maxLineSize` is cut into `P`
 *   records of exactly `maxLineSize` bytes and a final `F`, and bytes left without a newline
 *   when a stream ends are written as `P` (as containerd does).
 * - `\r\n` ends a line like `\n` (the `\r` is dropped); a lone `\r` is content.
 * - Timestamps are UTC in Go's RFC3339Nano (trailing zeros of the fraction trimmed), with
 *   nanosecond resolution from the monotonic clock, strictly increasing within the process.
 * - Each record is written whole, and records of both streams go through one queue, so lines
 *   never interleave; {@linkcode CriLogWriter.reopen} joins the same queue, so no record is
 *   lost or written twice when the kubelet rotates the file.
 *
 * @module
 */

import { failedPrecondition, invalidArgument } from "../../errdefs.ts";

/** The stream a record came from. */
export type CriStream = "stdout" | "stderr";

/** containerd's default `max_container_log_line_size`: 16 KiB. */
export const DEFAULT_MAX_LINE_SIZE = 16 * 1024;

/** The tag of a full line. */
export const TAG_FULL = "F";
/** The tag of a partial line. */
export const TAG_PARTIAL = "P";

const NL = 0x0a;
const CR = 0x0d;
const encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------------
// Timestamps

let anchorNs = BigInt(Date.now()) * 1_000_000n;
let anchorMono = performance.now();
let lastNs = 0n;

/**
 * The wall-clock time in nanoseconds since the epoch, interpolated with the monotonic clock
 * (Deno's `Date` has milliseconds) and strictly increasing across calls. It re-anchors on the
 * wall clock when the two drift apart by more than a second (a clock step); after a step
 * back it counts up from the last value until the wall clock catches up.
 */
export function nowNanos(): bigint {
  const mono = performance.now();
  let ns = anchorNs + BigInt(Math.round((mono - anchorMono) * 1e6));
  const wallMs = Date.now();
  if (Math.abs(Number(ns / 1_000_000n) - wallMs) > 1000) {
    anchorNs = BigInt(wallMs) * 1_000_000n;
    anchorMono = mono;
    ns = anchorNs;
  }
  if (ns <= lastNs) ns = lastNs + 1n;
  lastNs = ns;
  return ns;
}

/**
 * Formats nanoseconds since the epoch as Go's `time.RFC3339Nano` does for a UTC time:
 * `2026-11-27T04:01:02.1234Z` (trailing zeros trimmed, no fraction when it is zero).
 */
export function formatTimestamp(ns: bigint): string {
  const sec = ns / 1_000_000_000n;
  const frac = ns % 1_000_000_000n;
  const base = new Date(Number(sec) * 1000).toISOString().slice(0, 19);
  if (frac === 0n) return `${base}Z`;
  return `${base}.${frac.toString().padStart(9, "0").replace(/0+$/, "")}Z`;
}

/**
 * Parses an RFC3339 timestamp with up to nine fraction digits and an offset (`Z` or `±hh:mm`)
 * into nanoseconds since the epoch; undefined when it is not one.
 */
export function parseTimestamp(text: string): bigint | undefined {
  const m = /^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/.exec(
    text,
  );
  if (!m) return undefined;
  const ms = Date.parse(`${m[1]}${m[3]}`);
  if (Number.isNaN(ms)) return undefined;
  return BigInt(ms) * 1_000_000n + BigInt((m[2] ?? "").padEnd(9, "0"));
}

// ---------------------------------------------------------------------------------------------
// Line splitting

/** One log record before it is stamped: a full line or a piece of one, without newline. */
export interface CriLogRecord {
  /** Whether this is a piece (`P`) rather than the end of a line (`F`). */
  partial: boolean;
  /** The bytes, without the line's `\n` (or `\r\n`). */
  content: Uint8Array;
}

function concat(parts: readonly Uint8Array[], length: number): Uint8Array {
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(length);
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.byteLength;
  }
  return out;
}

/**
 * Cuts a byte stream into CRI log records, as containerd's `redirectLogs`: push chunks as
 * they come, then call {@linkcode end} once. At most `maxLineSize` bytes stay buffered beyond
 * the chunk being pushed. `maxLineSize <= 0` means no limit.
 */
export class CriLineSplitter {
  readonly #max: number;
  #parts: Uint8Array[] = [];
  #length = 0;

  /** A splitter cutting lines longer than `maxLineSize` bytes. */
  constructor(maxLineSize: number = DEFAULT_MAX_LINE_SIZE) {
    this.#max = maxLineSize > 0 ? maxLineSize : 0;
  }

  /** Feeds `chunk`; returns the records it completed (the chunk is not kept: it is copied). */
  push(chunk: Uint8Array): CriLogRecord[] {
    const out: CriLogRecord[] = [];
    let start = 0;
    while (start < chunk.byteLength) {
      const nl = chunk.indexOf(NL, start);
      const end = nl === -1 ? chunk.byteLength : nl;
      if (end > start) {
        this.#parts.push(chunk.slice(start, end));
        this.#length += end - start;
        this.#cut(out, false);
      }
      if (nl === -1) break;
      let content = this.#take();
      if (content.byteLength > 0 && content[content.byteLength - 1] === CR) {
        content = content.subarray(0, content.byteLength - 1);
      }
      out.push({ partial: false, content });
      start = nl + 1;
    }
    return out;
  }

  /** Ends the stream: what is left (a line without newline) comes out as partial records. */
  end(): CriLogRecord[] {
    const out: CriLogRecord[] = [];
    this.#cut(out, true);
    if (this.#length > 0) out.push({ partial: true, content: this.#take() });
    return out;
  }

  /**
   * Emits `P` records while the buffered line is longer than the limit. A trailing `\r` is not
   * counted until the next byte shows whether it belongs to a `\r\n`.
   */
  #cut(out: CriLogRecord[], atEnd: boolean): void {
    if (this.#max === 0) return;
    const effective = () => {
      if (atEnd || this.#length === 0) return this.#length;
      const last = this.#parts[this.#parts.length - 1];
      return this.#length - (last[last.byteLength - 1] === CR ? 1 : 0);
    };
    if (effective() <= this.#max) return;
    let all = this.#take();
    this.#parts = [all];
    this.#length = all.byteLength;
    while (effective() > this.#max) {
      out.push({ partial: true, content: all.subarray(0, this.#max) });
      all = all.subarray(this.#max);
      this.#parts = [all];
      this.#length = all.byteLength;
    }
  }

  #take(): Uint8Array {
    const all = concat(this.#parts, this.#length);
    this.#parts = [];
    this.#length = 0;
    return all;
  }
}

/** Encodes records as log lines, each stamped with {@linkcode nowNanos}, into one buffer. */
export function encodeRecords(
  stream: CriStream,
  records: readonly CriLogRecord[],
  now: () => bigint = nowNanos,
): Uint8Array {
  const heads = records.map((r) =>
    encoder.encode(`${formatTimestamp(now())} ${stream} ${r.partial ? TAG_PARTIAL : TAG_FULL} `)
  );
  let size = 0;
  records.forEach((r, i) => size += heads[i].byteLength + r.content.byteLength + 1);
  const out = new Uint8Array(size);
  let off = 0;
  records.forEach((r, i) => {
    out.set(heads[i], off);
    off += heads[i].byteLength;
    out.set(r.content, off);
    off += r.content.byteLength;
    out[off++] = NL;
  });
  return out;
}

// ---------------------------------------------------------------------------------------------
// The writer

/** Options of {@linkcode CriLogWriter.open}. */
export interface CriLogWriterOptions {
  /** Lines longer than this are cut into `P` records (default 16 KiB; `<= 0`: no limit). */
  maxLineSize?: number;
  /**
   * Called when writing the file fails. The copy goes on (the container's output is still
   * drained, what cannot be written is dropped), as containerd does.
   */
  onError?: (err: unknown) => void;
}

async function openLogFile(path: string): Promise<Deno.FsFile> {
  return await Deno.open(path, { write: true, append: true, create: true, mode: 0o640 });
}

/**
 * A container's log file, written from any number of streams. Records are written in the
 * order they were stamped; a record is always written with one `write` call of its own
 * queue turn, so lines from different streams never mix.
 */
export class CriLogWriter {
  /** The log file's path. */
  readonly path: string;
  /** The line size limit in use (0: none). */
  readonly maxLineSize: number;
  readonly #onError?: (err: unknown) => void;
  #file: Deno.FsFile | null;
  #queue: Promise<void> = Promise.resolve();
  readonly #copies = new Set<Promise<void>>();
  readonly #readers = new Set<ReadableStreamDefaultReader<Uint8Array>>();
  #closed = false;

  private constructor(path: string, file: Deno.FsFile, opts: CriLogWriterOptions) {
    this.path = path;
    this.#file = file;
    const max = opts.maxLineSize ?? DEFAULT_MAX_LINE_SIZE;
    this.maxLineSize = max > 0 ? max : 0;
    this.#onError = opts.onError;
  }

  /** Opens (creating, mode 0640, appending) the log file at `path`. */
  static async open(path: string, opts: CriLogWriterOptions = {}): Promise<CriLogWriter> {
    return new CriLogWriter(path, await openLogFile(path), opts);
  }

  #enqueue(task: () => Promise<void>): Promise<void> {
    const next = this.#queue.then(task);
    this.#queue = next.catch(() => {});
    return next;
  }

  /** Stamps `records` now and queues them; resolves once they are written (or dropped). */
  #write(stream: CriStream, records: CriLogRecord[]): Promise<void> {
    if (records.length === 0) return Promise.resolve();
    const data = encodeRecords(stream, records);
    return this.#enqueue(async () => {
      const file = this.#file;
      if (file === null) return;
      try {
        for (let off = 0; off < data.byteLength;) off += await file.write(data.subarray(off));
      } catch (err) {
        this.#onError?.(err);
      }
    });
  }

  /**
   * Copies `readable` into the log as `stream` until it ends (or {@linkcode close} cancels
   * it); resolves when everything it carried is written.
   *
   * @throws {TainerdError} FailedPrecondition when the writer is closed
   */
  copy(stream: CriStream, readable: ReadableStream<Uint8Array>): Promise<void> {
    if (this.#closed) {
      throw failedPrecondition(`Cannot copy ${stream} into log "${this.path}": it is closed`);
    }
    const reader = readable.getReader();
    this.#readers.add(reader);
    const splitter = new CriLineSplitter(this.maxLineSize);
    const done = (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          await this.#write(stream, splitter.push(value));
        }
      } catch (err) {
        // The source failed: keep what came, as at its end.
        this.#onError?.(err);
      } finally {
        this.#readers.delete(reader);
        reader.releaseLock();
      }
      await this.#write(stream, splitter.end());
    })();
    this.#copies.add(done);
    done.finally(() => this.#copies.delete(done));
    return done;
  }

  /** Resolves when every copy started so far has ended and its records are written. */
  async wait(): Promise<void> {
    while (this.#copies.size > 0) await Promise.all([...this.#copies]);
    await this.#enqueue(() => Promise.resolve());
  }

  /**
   * Reopens the file at `path` (after the kubelet renamed it to rotate it): records stamped
   * before are in the old file, records after in the new one, none lost or repeated. When the
   * new file cannot be opened the old one stays in use and the error is thrown.
   *
   * @throws {TainerdError} FailedPrecondition when the writer is closed
   */
  reopen(): Promise<void> {
    if (this.#closed) {
      return Promise.reject(
        failedPrecondition(`Cannot reopen log "${this.path}": it is closed`),
      );
    }
    return this.#enqueue(async () => {
      const next = await openLogFile(this.path);
      const old = this.#file;
      this.#file = next;
      try {
        old?.close();
      } catch { /* closed */ }
    });
  }

  /**
   * Stops the copies (canceling their sources), writes what they buffered, and closes the
   * file. Use {@linkcode wait} first to let the sources end by themselves.
   */
  async close(): Promise<void> {
    if (this.#closed) return await this.#queue;
    this.#closed = true;
    for (const r of this.#readers) r.cancel().catch(() => {});
    await Promise.allSettled([...this.#copies]);
    await this.#enqueue(() => {
      try {
        this.#file?.close();
      } catch { /* closed */ }
      this.#file = null;
      return Promise.resolve();
    });
  }
}

// ---------------------------------------------------------------------------------------------
// Reading

/** One parsed line of a CRI log. */
export interface CriLogEntry {
  /** The timestamp as written. */
  timestamp: string;
  /** The timestamp in nanoseconds since the epoch. */
  timeNs: bigint;
  /** The stream. */
  stream: CriStream;
  /** Whether the line is a piece (`P`) of a longer one. */
  partial: boolean;
  /** The content, without the record's newline. */
  content: string;
}

/**
 * Parses CRI log text, as the kubelet's `parseCRILog`: `<time> <stream> <tags> <content>` per
 * line, where tags are `:`-separated and the first is `F` or `P`. A final line without
 * newline is parsed too.
 *
 * @throws {TainerdError} InvalidArgument for a malformed line (with its number)
 */
export function parseCriLog(text: string): CriLogEntry[] {
  const lines = text.split("\n");
  if (lines[lines.length - 1] === "") lines.pop();
  return lines.map((line, i) => {
    const bad = (why: string) =>
      invalidArgument(`Cannot parse CRI log line ${i + 1}: ${why}: ${JSON.stringify(line)}`);
    const s1 = line.indexOf(" ");
    const s2 = s1 < 0 ? -1 : line.indexOf(" ", s1 + 1);
    if (s2 < 0) throw bad("too few fields");
    const s3 = line.indexOf(" ", s2 + 1);
    const timestamp = line.slice(0, s1);
    const timeNs = parseTimestamp(timestamp);
    if (timeNs === undefined) throw bad("invalid timestamp");
    const stream = line.slice(s1 + 1, s2);
    if (stream !== "stdout" && stream !== "stderr") throw bad("unknown stream");
    const tags = (s3 < 0 ? line.slice(s2 + 1) : line.slice(s2 + 1, s3)).split(":");
    if (tags[0] !== TAG_FULL && tags[0] !== TAG_PARTIAL) throw bad("unknown tag");
    return {
      timestamp,
      timeNs,
      stream,
      partial: tags[0] === TAG_PARTIAL,
      content: s3 < 0 ? "" : line.slice(s3 + 1),
    };
  });
}

/**
 * Joins partial entries with the entry that ends them, per stream, as `kubectl logs` shows
 * them: one string per logical line, in order of each line's first piece.
 */
export function joinPartialLines(
  entries: readonly CriLogEntry[],
): { stream: CriStream; content: string }[] {
  const out: { stream: CriStream; content: string }[] = [];
  const open = new Map<CriStream, { stream: CriStream; content: string }>();
  for (const e of entries) {
    let cur = open.get(e.stream);
    if (!cur) {
      cur = { stream: e.stream, content: "" };
      out.push(cur);
    }
    cur.content += e.content;
    if (e.partial) open.set(e.stream, cur);
    else open.delete(e.stream);
  }
  return out;
}
