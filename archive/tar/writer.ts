/**
 * Streaming tar writer. Entries are written as ustar headers, preceded by a PAX extended
 * header only when a field does not fit ustar (long or non-ASCII names and link targets, big
 * ids, sizes or times, long or non-ASCII user and group names), when the entry has xattrs or
 * extra PAX records, or when sub-second times are requested. The output is a
 * `ReadableStream` whose consumer paces the writer (backpressure); bodies given as streams
 * pass through without copying.
 *
 * @module
 */

import { canceled, invalidArgument } from "../../plugins/errdefs.ts";
import {
  BLOCK_SIZE,
  encodeUtf8,
  Field,
  type FieldName,
  fitsOctal,
  formatOctal,
  formatPaxRecord,
  formatPaxTime,
  isHeaderOnlyType,
  PAX_LIBARCHIVE_XATTR_PREFIX,
  PAX_XATTR_PREFIX,
  type TarHeader,
  type TarHeaderInit,
  type TarTime,
  TarType,
  writeChecksum,
} from "./header.ts";

/** Options of {@link TarWriter}. */
export interface TarWriterOptions {
  /**
   * Record sub-second mtimes (and atime/ctime) in PAX records. By default times are written
   * in whole seconds (truncated), as containerd does for layers.
   */
  subsecondTimes?: boolean;
  /** Bytes the output stream buffers before the writer waits for its consumer (64 KiB). */
  highWaterMark?: number;
}

/** A body for {@link TarWriter.writeEntry}: bytes, or a stream of exactly `header.size` bytes. */
export type TarBody = ReadableStream<Uint8Array> | Uint8Array;

/** An entry for {@link writeTar}. */
export interface TarWriterEntry {
  /** The entry's header. */
  header: TarHeaderInit;
  /** The entry's body, if it has one. */
  body?: TarBody;
}

/** Bodies up to this size are copied next to their header, to emit fewer, larger chunks. */
const COALESCE_LIMIT = 32 * 1024;

const RESERVED_PAX_KEYS = new Set([
  "path",
  "linkpath",
  "size",
  "uid",
  "gid",
  "uname",
  "gname",
  "mtime",
  "atime",
  "ctime",
  "SCHILY.devmajor",
  "SCHILY.devminor",
]);

const META_TYPES: ReadonlySet<string> = new Set([
  TarType.PaxHeader,
  TarType.PaxGlobalHeader,
  TarType.GnuLongName,
  TarType.GnuLongLink,
]);

function padding(size: number): number {
  return (BLOCK_SIZE - (size % BLOCK_SIZE)) % BLOCK_SIZE;
}

function isAscii(s: string): boolean {
  // deno-lint-ignore no-control-regex
  return /^[\x01-\x7f]*$/.test(s);
}

function toAscii(s: string, max: number): string {
  // deno-lint-ignore no-control-regex
  return s.replace(/[^\x01-\x7f]/g, "").slice(0, max);
}

function putString(block: Uint8Array, name: FieldName, s: string): void {
  const [at, len] = Field[name];
  for (let i = 0; i < s.length && i < len; i++) block[at + i] = s.charCodeAt(i);
}

function putOctal(block: Uint8Array, name: FieldName, x: number): void {
  const [at, len] = Field[name];
  formatOctal(block.subarray(at, at + len), x);
}

/** Splits a long ASCII path into ustar prefix (≤ 155) and name (≤ 100) at a slash, if possible. */
function splitUstarPath(name: string): [string, string] | null {
  let length = name.length;
  if (length <= 100) return null;
  if (length > 156) length = 156;
  else if (name[length - 1] === "/") length--;
  const i = name.lastIndexOf("/", length - 1);
  const nameLen = name.length - i - 1;
  if (i <= 0 || nameLen > 100 || nameLen === 0 || i > 155) return null;
  return [name.slice(0, i), name.slice(i + 1)];
}

function checkTime(t: TarTime | undefined, what: string, name: string): void {
  if (t === undefined) return;
  if (!Number.isSafeInteger(t.sec) || !Number.isInteger(t.nsec) || t.nsec < 0 || t.nsec >= 1e9) {
    throw invalidArgument(`Cannot write tar entry "${name}": invalid ${what} ${JSON.stringify(t)}`);
  }
}

function checkCount(x: number, what: string, name: string): void {
  if (!Number.isSafeInteger(x) || x < 0) {
    throw invalidArgument(`Cannot write tar entry "${name}": invalid ${what} ${x}`);
  }
}

/** Fills in defaults and validates a header to write. */
function normalize(init: TarHeaderInit, bodySize: number | undefined): TarHeader {
  const name = init.name;
  if (typeof name !== "string" || name === "" || name.includes("\0")) {
    throw invalidArgument(`Cannot write tar entry ${JSON.stringify(name)}: invalid name`);
  }
  const type = init.type ?? TarType.Regular;
  if (type.length !== 1 || type === "\0" || META_TYPES.has(type)) {
    throw invalidArgument(
      `Cannot write tar entry "${name}": invalid type ${JSON.stringify(type)}`,
    );
  }
  const defaultMode = type === TarType.Dir ? 0o755 : type === TarType.Symlink ? 0o777 : 0o644;
  const h: TarHeader = {
    name,
    type,
    mode: init.mode ?? defaultMode,
    uid: init.uid ?? 0,
    gid: init.gid ?? 0,
    size: isHeaderOnlyType(type) ? 0 : (init.size ?? bodySize ?? 0),
    mtime: init.mtime ?? { sec: 0, nsec: 0 },
    atime: init.atime,
    ctime: init.ctime,
    linkname: init.linkname ?? "",
    uname: init.uname ?? "",
    gname: init.gname ?? "",
    devmajor: init.devmajor ?? 0,
    devminor: init.devminor ?? 0,
    xattrs: init.xattrs ?? new Map(),
    pax: init.pax ?? new Map(),
  };
  checkCount(h.mode, "mode", name);
  checkCount(h.uid, "uid", name);
  checkCount(h.gid, "gid", name);
  checkCount(h.size, "size", name);
  for (const [what, x] of [["devmajor", h.devmajor], ["devminor", h.devminor]] as const) {
    if (!fitsOctal(8, x)) {
      throw invalidArgument(`Cannot write tar entry "${name}": ${what} ${x} is out of range`);
    }
  }
  checkTime(h.mtime, "mtime", name);
  checkTime(h.atime, "atime", name);
  checkTime(h.ctime, "ctime", name);
  for (const [what, s] of [["linkname", h.linkname], ["uname", h.uname], ["gname", h.gname]]) {
    if (s.includes("\0")) {
      throw invalidArgument(`Cannot write tar entry "${name}": NUL in ${what}`);
    }
  }
  for (const key of h.xattrs.keys()) {
    if (key === "" || key.includes("=") || key.includes("\0")) {
      throw invalidArgument(
        `Cannot write tar entry "${name}": invalid xattr name ${JSON.stringify(key)}`,
      );
    }
  }
  for (const key of h.pax.keys()) {
    if (
      key === "" || key.includes("=") || key.includes("\0") || RESERVED_PAX_KEYS.has(key) ||
      key.startsWith(PAX_XATTR_PREFIX) || key.startsWith(PAX_LIBARCHIVE_XATTR_PREFIX) ||
      key.startsWith("GNU.sparse.")
    ) {
      throw invalidArgument(
        `Cannot write tar entry "${name}": PAX record ${JSON.stringify(key)} is invalid or ` +
          `belongs to a header field`,
      );
    }
  }
  return h;
}

function paxTime(t: TarTime, subsecond: boolean): Uint8Array {
  return encodeUtf8(formatPaxTime(subsecond ? t : { sec: t.sec, nsec: 0 }));
}

function newBlock(): Uint8Array {
  return new Uint8Array(BLOCK_SIZE);
}

/**
 * Encodes the header blocks of an entry (a PAX extended header first, if needed).
 * `h` is normalized.
 */
function encodeHeader(h: TarHeader, subsecond: boolean): Uint8Array {
  const pax = new Map<string, Uint8Array>();
  for (const [k, v] of h.pax) pax.set(k, encodeUtf8(v));
  const block = newBlock();

  // Name: ustar name, ustar prefix + name, or PAX path.
  if (isAscii(h.name) && h.name.length <= 100) {
    putString(block, "name", h.name);
  } else {
    const split = isAscii(h.name) ? splitUstarPath(h.name) : null;
    if (split) {
      putString(block, "prefix", split[0]);
      putString(block, "name", split[1]);
    } else {
      pax.set("path", encodeUtf8(h.name));
      putString(block, "name", toAscii(h.name, 100));
    }
  }
  if (isAscii(h.linkname) && h.linkname.length <= 100) {
    putString(block, "linkname", h.linkname);
  } else {
    pax.set("linkpath", encodeUtf8(h.linkname));
    putString(block, "linkname", toAscii(h.linkname, 100));
  }
  for (const key of ["uname", "gname"] as const) {
    if (isAscii(h[key]) && h[key].length <= 32) {
      putString(block, key, h[key]);
    } else {
      pax.set(key, encodeUtf8(h[key]));
      putString(block, key, toAscii(h[key], 32));
    }
  }
  for (const key of ["uid", "gid", "size"] as const) {
    if (fitsOctal(Field[key][1], h[key])) {
      putOctal(block, key, h[key]);
    } else {
      pax.set(key, encodeUtf8(String(h[key])));
      putOctal(block, key, 0);
    }
  }
  if (fitsOctal(12, h.mtime.sec) && !(subsecond && h.mtime.nsec !== 0)) {
    putOctal(block, "mtime", h.mtime.sec);
  } else {
    pax.set("mtime", paxTime(h.mtime, subsecond));
    putOctal(block, "mtime", fitsOctal(12, h.mtime.sec) ? h.mtime.sec : 0);
  }
  if (h.atime) pax.set("atime", paxTime(h.atime, subsecond));
  if (h.ctime) pax.set("ctime", paxTime(h.ctime, subsecond));
  for (const [k, v] of h.xattrs) pax.set(PAX_XATTR_PREFIX + k, v);

  putOctal(block, "mode", h.mode & 0o7777);
  block[Field.type[0]] = h.type.charCodeAt(0);
  putString(block, "magic", "ustar\0");
  putString(block, "version", "00");
  putOctal(block, "devmajor", h.devmajor);
  putOctal(block, "devminor", h.devminor);
  writeChecksum(block);
  if (pax.size === 0) return block;

  // PAX extended header: sorted records, for reproducible output.
  const records = [...pax.keys()].sort().map((k) => formatPaxRecord(k, pax.get(k)!));
  const dataLen = records.reduce((n, r) => n + r.length, 0);
  const out = new Uint8Array(BLOCK_SIZE + dataLen + padding(dataLen) + BLOCK_SIZE);
  const xh = out.subarray(0, BLOCK_SIZE);
  const base = h.name.replace(/\/+$/, "").split("/").pop() ?? "";
  putString(xh, "name", toAscii(`PaxHeaders.0/${base}`, 100));
  putOctal(xh, "mode", 0o644);
  putOctal(xh, "uid", 0);
  putOctal(xh, "gid", 0);
  putOctal(xh, "size", dataLen);
  putOctal(xh, "mtime", fitsOctal(12, h.mtime.sec) ? h.mtime.sec : 0);
  xh[Field.type[0]] = TarType.PaxHeader.charCodeAt(0);
  putString(xh, "magic", "ustar\0");
  putString(xh, "version", "00");
  putOctal(xh, "devmajor", 0);
  putOctal(xh, "devminor", 0);
  writeChecksum(xh);
  let pos = BLOCK_SIZE;
  for (const r of records) {
    out.set(r, pos);
    pos += r.length;
  }
  out.set(block, out.length - BLOCK_SIZE);
  return out;
}

/**
 * Writes a tar archive to {@link TarWriter.readable}. Calls to `writeEntry` and `close` are
 * queued in order; each resolves once its bytes are handed to the stream, waiting for the
 * consumer when the stream's buffer is full.
 *
 * An error that leaves the archive incomplete (a stream body shorter or longer than
 * `header.size`, a body stream that fails) errors the output stream as well; errors found
 * before anything is written (an invalid header, a byte body of the wrong size) do not.
 */
export class TarWriter {
  /** The archive's bytes. */
  readonly readable: ReadableStream<Uint8Array>;
  readonly #subsecond: boolean;
  #controller!: ReadableStreamDefaultController<Uint8Array>;
  #wake: (() => void) | null = null;
  #queue: Promise<void> = Promise.resolve();
  #error: unknown = null;
  #closing = false;

  /** Creates a writer; read the archive from `readable`. */
  constructor(options: TarWriterOptions = {}) {
    this.#subsecond = options.subsecondTimes ?? false;
    this.readable = new ReadableStream<Uint8Array>({
      start: (controller) => {
        this.#controller = controller;
      },
      pull: () => this.#resume(),
      cancel: (reason) => {
        this.#error ??= canceled(
          `Tar stream was canceled${reason === undefined ? "" : `: ${String(reason)}`}`,
        );
        this.#resume();
      },
    }, {
      highWaterMark: options.highWaterMark ?? 64 * 1024,
      size: (chunk) => chunk.byteLength,
    });
  }

  #resume(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  async #push(chunk: Uint8Array): Promise<void> {
    for (;;) {
      if (this.#error !== null) throw this.#error;
      const desired = this.#controller.desiredSize;
      if (desired === null) throw invalidArgument("Cannot write to an errored tar stream");
      if (desired > 0) break;
      await new Promise<void>((resolve) => this.#wake = resolve);
    }
    if (chunk.length > 0) this.#controller.enqueue(chunk);
  }

  #fail(err: unknown): unknown {
    if (this.#error === null) {
      this.#error = err;
      try {
        this.#controller.error(err);
      } catch {
        // Already closed or errored.
      }
    }
    return this.#error;
  }

  #enqueue(task: () => Promise<void>): Promise<void> {
    const run = this.#queue.then(task);
    this.#queue = run.catch(() => {});
    return run;
  }

  /**
   * Appends an entry. `body` must hold exactly `header.size` bytes (for a byte body, `size`
   * defaults to its length; a stream body needs `size`). Header-only types (links, devices,
   * dirs, fifos) take no body and are written with size 0. Defaults: type regular, mode 0o644
   * (0o755 for dirs, 0o777 for symlinks), ids 0, mtime 0, empty names.
   */
  writeEntry(header: TarHeaderInit, body?: TarBody): Promise<void> {
    if (this.#closing) {
      if (body instanceof ReadableStream) body.cancel().catch(() => {});
      return Promise.reject(
        invalidArgument(`Cannot write tar entry "${header.name}": the writer is closed`),
      );
    }
    return this.#enqueue(async () => {
      try {
        await this.#write(header, body);
      } catch (err) {
        if (body instanceof ReadableStream && !body.locked) body.cancel(err).catch(() => {});
        throw err;
      }
    });
  }

  async #write(init: TarHeaderInit, body: TarBody | undefined): Promise<void> {
    if (this.#error !== null) throw this.#error;
    const bytes = body instanceof Uint8Array ? body : undefined;
    if (
      body instanceof ReadableStream && init.size === undefined &&
      !isHeaderOnlyType(init.type ?? TarType.Regular)
    ) {
      throw invalidArgument(
        `Cannot write tar entry "${init.name}": a stream body needs header.size`,
      );
    }
    const h = normalize(init, bytes?.length);
    if (isHeaderOnlyType(h.type) && bytes?.length) {
      throw invalidArgument(
        `Cannot write tar entry "${h.name}": type ${h.type} entries have no body`,
      );
    }
    if (bytes && bytes.length !== h.size) {
      throw invalidArgument(
        `Cannot write tar entry "${h.name}": body is ${bytes.length} bytes, header says ${h.size}`,
      );
    }
    if (!body && h.size > 0) {
      throw invalidArgument(
        `Cannot write tar entry "${h.name}": header says ${h.size} bytes but there is no body`,
      );
    }
    const head = encodeHeader(h, this.#subsecond);
    const pad = padding(h.size);
    if (!(body instanceof ReadableStream)) {
      const data = bytes ?? new Uint8Array(0);
      if (data.length <= COALESCE_LIMIT) {
        const out = new Uint8Array(head.length + data.length + pad);
        out.set(head, 0);
        out.set(data, head.length);
        await this.#push(out);
      } else {
        await this.#push(head);
        await this.#push(data);
        await this.#push(new Uint8Array(pad));
      }
      return;
    }

    await this.#push(head);
    const reader = body.getReader();
    let written = 0;
    try {
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await reader.read();
        } catch (err) {
          throw this.#fail(err);
        }
        if (r.done) break;
        const chunk = r.value;
        if (!(chunk instanceof Uint8Array)) {
          throw this.#fail(
            invalidArgument(`Cannot write tar entry "${h.name}": body chunks must be Uint8Array`),
          );
        }
        written += chunk.length;
        if (written > h.size) {
          throw this.#fail(
            invalidArgument(
              `Cannot write tar entry "${h.name}": body is longer than the ${h.size} bytes ` +
                `in its header`,
            ),
          );
        }
        await this.#push(chunk);
      }
      if (written !== h.size) {
        throw this.#fail(
          invalidArgument(
            `Cannot write tar entry "${h.name}": body ended after ${written} of ${h.size} bytes`,
          ),
        );
      }
    } catch (err) {
      await reader.cancel(err).catch(() => {});
      throw err;
    } finally {
      reader.releaseLock();
    }
    await this.#push(new Uint8Array(pad));
  }

  /** Writes the end-of-archive marker (two zero blocks) and closes the stream. */
  close(): Promise<void> {
    if (this.#closing) {
      return Promise.reject(invalidArgument("Cannot close the tar writer twice"));
    }
    this.#closing = true;
    return this.#enqueue(async () => {
      if (this.#error !== null) throw this.#error;
      await this.#push(new Uint8Array(2 * BLOCK_SIZE));
      this.#controller.close();
    });
  }

  /** Errors the output stream with `reason`; queued and later writes reject. */
  abort(reason?: unknown): void {
    this.#closing = true;
    this.#fail(reason ?? canceled("Tar writing was aborted"));
    this.#resume();
  }
}

/**
 * Writes entries from an iterable into a tar stream (ended with the end-of-archive marker).
 * A failing entry or iterable errors the stream.
 */
export function writeTar(
  entries: AsyncIterable<TarWriterEntry> | Iterable<TarWriterEntry>,
  options?: TarWriterOptions,
): ReadableStream<Uint8Array> {
  const writer = new TarWriter(options);
  (async () => {
    try {
      for await (const { header, body } of entries) await writer.writeEntry(header, body);
      await writer.close();
    } catch (err) {
      writer.abort(err);
    }
  })();
  return writer.readable;
}
