/**
 * Streaming tar reader. Entries come one at a time; each entry's body is a stream over the
 * archive's own bytes (chunks are zero-copy views of the source chunks), pulled from the
 * source only as the consumer reads it. Requesting the next entry skips whatever is left of
 * the current body, so nothing is ever buffered beyond one source chunk.
 *
 * Formats: v7, ustar (with the prefix field), GNU (long names 'L', long links 'K', base-256
 * numbers), star, PAX (extended 'x' and global 'g' headers, fractional times,
 * `SCHILY.xattr.*`).
 *
 * @module
 */

import {
  canceled,
  failedPrecondition,
  invalidArgument,
  notImplemented,
} from "../../plugins/errdefs.ts";
import {
  applyPaxRecords,
  BLOCK_SIZE,
  isHeaderOnlyType,
  isZeroBlock,
  MAX_SPECIAL_FILE_SIZE,
  parseHeaderBlock,
  parsePaxRecords,
  parseString,
  type TarHeader,
  TarType,
} from "./header.ts";

/** One archive entry: its header and a stream over its body (empty for header-only types). */
export interface TarEntry {
  /** The entry's metadata, with PAX and GNU extensions already applied. */
  header: TarHeader;
  /**
   * The entry's data, exactly `header.size` bytes for regular files. Read it (or cancel it)
   * before asking for the next entry; an unread remainder is skipped when the reader moves on,
   * after which the stream errors.
   */
  body: ReadableStream<Uint8Array>;
}

/** Options of {@link readTar}. */
export interface TarReaderOptions {
  /**
   * When the reader stops early (the consumer breaks out of the loop, calls `cancel()`, or the
   * archive is malformed) the source is canceled, unless this is set: then its lock is
   * released and the caller keeps it.
   */
  preventCancel?: boolean;
  /**
   * After the end-of-archive marker the reader reads the source to its end (tar writers pad to
   * a record size; digesters upstream need every byte), unless this is set: then it only
   * releases the source's lock. Bytes already buffered by the reader are not given back.
   */
  preventDrain?: boolean;
}

const EMPTY = new Uint8Array(0);

/** A pull-based view of a byte stream with exact reads, zero-copy partial reads and skips. */
class ByteSource {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  #buf: Uint8Array = EMPTY;
  #eof = false;
  /** Bytes consumed so far: the archive offset of the next byte. */
  position = 0;

  constructor(reader: ReadableStreamDefaultReader<Uint8Array>) {
    this.#reader = reader;
  }

  async #fill(): Promise<boolean> {
    while (this.#buf.length === 0) {
      if (this.#eof) return false;
      const r = await this.#reader.read();
      if (r.done) {
        this.#eof = true;
        return false;
      }
      if (!(r.value instanceof Uint8Array)) {
        throw invalidArgument("Invalid tar stream: chunks must be Uint8Array");
      }
      this.#buf = r.value;
    }
    return true;
  }

  /** Up to `max` bytes as a view of the current source chunk; `null` at the end. */
  async readSome(max: number): Promise<Uint8Array | null> {
    if (this.#buf.length === 0 && !(await this.#fill())) return null;
    const n = Math.min(max, this.#buf.length);
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    this.position += n;
    return out;
  }

  /** `n` contiguous bytes, or fewer when the source ends first. */
  async readFull(n: number): Promise<Uint8Array> {
    if (this.#buf.length >= n) {
      const out = this.#buf.subarray(0, n);
      this.#buf = this.#buf.subarray(n);
      this.position += n;
      return out;
    }
    const out = new Uint8Array(n);
    let got = 0;
    while (got < n) {
      const chunk = await this.readSome(n - got);
      if (chunk === null) return out.subarray(0, got);
      out.set(chunk, got);
      got += chunk.length;
    }
    return out;
  }

  /** Skips `n` bytes; returns how many were skipped (fewer at the end). */
  async skip(n: number): Promise<number> {
    let done = 0;
    while (done < n) {
      const chunk = await this.readSome(n - done);
      if (chunk === null) break;
      done += chunk.length;
    }
    return done;
  }
}

interface EntryState {
  name: string;
  headerOffset: number;
  remaining: number;
  padding: number;
  controller: ReadableStreamDefaultController<Uint8Array> | null;
  /** The body stream is closed, errored or canceled: nothing more is delivered to it. */
  settled: boolean;
}

function padding(size: number): number {
  return (BLOCK_SIZE - (size % BLOCK_SIZE)) % BLOCK_SIZE;
}

function truncated(what: string): Error {
  return invalidArgument(`Invalid tar archive: unexpected end of data ${what}`);
}

/**
 * A streaming tar reader over a byte stream. Iterate it with `for await`, or call
 * {@link TarReader.nextEntry}. Breaking out of the loop cancels the source (see
 * {@link TarReaderOptions.preventCancel}).
 */
export class TarReader implements AsyncIterable<TarEntry> {
  readonly #reader: ReadableStreamDefaultReader<Uint8Array>;
  readonly #src: ByteSource;
  readonly #options: TarReaderOptions;
  readonly #globals = new Map<string, Uint8Array>();
  #current: EntryState | null = null;
  #lock: Promise<unknown> = Promise.resolve();
  #error: unknown = null;
  #done = false;

  /** Takes the lock of `source` until the archive ends, fails or is canceled. */
  constructor(source: ReadableStream<Uint8Array>, options: TarReaderOptions = {}) {
    this.#reader = source.getReader();
    this.#src = new ByteSource(this.#reader);
    this.#options = options;
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn);
    this.#lock = run.catch(() => {});
    return run;
  }

  /**
   * The next entry, or `null` after the end-of-archive marker (two zero blocks, or the end of
   * the stream at a block boundary). Skips the unread remainder of the previous body.
   * Malformed or truncated archives reject with an InvalidArgument error.
   */
  nextEntry(): Promise<TarEntry | null> {
    return this.#exclusive(async () => {
      if (this.#error !== null) throw this.#error;
      if (this.#done) return null;
      try {
        return await this.#next();
      } catch (err) {
        await this.#fail(err);
        throw err;
      }
    });
  }

  /**
   * Stops reading: the current body (if unfinished) errors and the source is canceled (or
   * released, with `preventCancel`). Does nothing after the archive ended.
   */
  async cancel(reason?: unknown): Promise<void> {
    if (this.#done || this.#error !== null) return;
    const err = canceled(
      `Tar reading was canceled${reason === undefined ? "" : `: ${String(reason)}`}`,
    );
    this.#error = err;
    this.#settleCurrent(err);
    await this.#releaseSource(reason ?? err);
  }

  /** Iterates the entries; see {@link TarReader.nextEntry}. */
  [Symbol.asyncIterator](): AsyncIterator<TarEntry, void> {
    return {
      next: async (): Promise<IteratorResult<TarEntry, void>> => {
        const entry = await this.nextEntry();
        return entry === null ? { done: true, value: undefined } : { done: false, value: entry };
      },
      return: async (): Promise<IteratorResult<TarEntry, void>> => {
        await this.cancel();
        return { done: true, value: undefined };
      },
    };
  }

  async #fail(err: unknown): Promise<void> {
    if (this.#error !== null) return;
    this.#error = err;
    this.#settleCurrent(err);
    await this.#releaseSource(err);
  }

  #settleCurrent(err: unknown): void {
    const cur = this.#current;
    if (cur && !cur.settled) {
      cur.settled = true;
      cur.controller?.error(err);
    }
  }

  async #releaseSource(reason: unknown): Promise<void> {
    try {
      if (!this.#options.preventCancel) await this.#reader.cancel(reason);
    } catch {
      // The source already errored; nothing to cancel.
    }
    this.#release();
  }

  #release(): void {
    try {
      this.#reader.releaseLock();
    } catch {
      // Older stream implementations refuse while a read is pending; the lock then stays.
    }
  }

  async #finish(): Promise<null> {
    this.#done = true;
    if (!this.#options.preventDrain) {
      while (await this.#src.readSome(Infinity) !== null) {
        // Discard trailing record padding.
      }
    }
    this.#release();
    return null;
  }

  async #next(): Promise<TarEntry | null> {
    const src = this.#src;
    const cur = this.#current;
    if (cur) {
      this.#current = null;
      if (cur.remaining > 0) {
        const want = cur.remaining;
        const skipped = await src.skip(want);
        cur.remaining -= skipped;
        if (!cur.settled) {
          cur.settled = true;
          cur.controller?.error(
            failedPrecondition(
              `Cannot read the body of tar entry "${cur.name}": the reader moved to the next entry`,
            ),
          );
        }
        if (skipped < want) {
          throw truncated(`in the body of "${cur.name}" (header at offset ${cur.headerOffset})`);
        }
      }
      if (cur.padding > 0) {
        const skipped = await src.skip(cur.padding);
        // Like Go: an archive that ends right after a body, without padding, just ends.
        if (skipped === 0) return this.#finish();
        if (skipped < cur.padding) {
          throw truncated(`in the padding of "${cur.name}" (header at offset ${cur.headerOffset})`);
        }
      }
    }

    let local: Map<string, Uint8Array> | null = null;
    let longName: string | null = null;
    let longLink: string | null = null;
    for (;;) {
      const offset = src.position;
      let block = await src.readFull(BLOCK_SIZE);
      const pendingMeta = local !== null || longName !== null || longLink !== null;
      if (block.length === 0 && !pendingMeta) return this.#finish();
      if (block.length < BLOCK_SIZE) {
        throw truncated(`in the tar header at offset ${offset} (${block.length} of 512 bytes)`);
      }
      if (isZeroBlock(block)) {
        if (pendingMeta) {
          throw invalidArgument(
            `Invalid tar header at offset ${offset}: end of archive after an extended header`,
          );
        }
        block = await src.readFull(BLOCK_SIZE);
        if (block.length === 0 || isZeroBlock(block)) return this.#finish();
        if (block.length < BLOCK_SIZE) {
          throw truncated(`in the tar header at offset ${offset + BLOCK_SIZE}`);
        }
        throw invalidArgument(
          `Invalid tar header at offset ${offset}: a zero block is followed by data`,
        );
      }
      const header = parseHeaderBlock(block, offset);

      switch (header.type) {
        case TarType.PaxHeader:
        case TarType.PaxGlobalHeader: {
          const data = await this.#readSpecial(header, offset);
          const records = parsePaxRecords(data, offset);
          if (header.type === TarType.PaxGlobalHeader) {
            for (const [k, v] of records) {
              if (v.length === 0) this.#globals.delete(k);
              else this.#globals.set(k, v);
            }
          } else {
            local ??= new Map();
            for (const [k, v] of records) local.set(k, v);
          }
          continue;
        }
        case TarType.GnuLongName:
          longName = parseString(await this.#readSpecial(header, offset));
          continue;
        case TarType.GnuLongLink:
          longLink = parseString(await this.#readSpecial(header, offset));
          continue;
        case "S":
          throw notImplemented(
            `Cannot read tar entry at offset ${offset}: GNU sparse files are not supported`,
          );
      }

      if (this.#globals.size > 0 || local !== null) {
        const merged = new Map(this.#globals);
        if (local) {
          for (const [k, v] of local) merged.set(k, v);
        }
        applyPaxRecords(header, merged, offset);
      }
      if (longName !== null) header.name = longName;
      if (longLink !== null) header.linkname = longLink;
      if (header.type === "\0") {
        header.type = header.name.endsWith("/") ? TarType.Dir : TarType.Regular;
      }
      const dataSize = isHeaderOnlyType(header.type) ? 0 : header.size;
      return { header, body: this.#bodyStream(header.name, offset, dataSize) };
    }
  }

  /** Reads the whole (small) body of a PAX or GNU meta entry and its padding. */
  async #readSpecial(header: TarHeader, offset: number): Promise<Uint8Array> {
    if (header.size > MAX_SPECIAL_FILE_SIZE) {
      throw invalidArgument(
        `Invalid tar header at offset ${offset}: extended header of ${header.size} bytes ` +
          `exceeds ${MAX_SPECIAL_FILE_SIZE}`,
      );
    }
    const data = await this.#src.readFull(header.size);
    const pad = padding(header.size);
    if (data.length < header.size || (await this.#src.skip(pad)) < pad) {
      throw truncated(`in the extended header at offset ${offset}`);
    }
    return data;
  }

  #bodyStream(name: string, headerOffset: number, size: number): ReadableStream<Uint8Array> {
    const state: EntryState = {
      name,
      headerOffset,
      remaining: size,
      padding: padding(size),
      controller: null,
      settled: false,
    };
    this.#current = state;
    return new ReadableStream<Uint8Array>({
      start: (controller) => {
        state.controller = controller;
        if (size === 0) {
          state.settled = true;
          controller.close();
        }
      },
      pull: (controller) =>
        this.#exclusive(async () => {
          if (state.settled) return;
          try {
            const chunk = await this.#src.readSome(state.remaining);
            if (chunk === null) {
              throw truncated(`in the body of "${name}" (header at offset ${headerOffset})`);
            }
            state.remaining -= chunk.length;
            controller.enqueue(chunk);
            if (state.remaining === 0) {
              state.settled = true;
              controller.close();
            }
          } catch (err) {
            await this.#fail(err);
          }
        }),
      cancel: () => {
        state.settled = true;
      },
    }, { highWaterMark: 0 });
  }
}

/**
 * Reads a tar archive from a byte stream, one entry at a time:
 *
 * ```ts
 * for await (const { header, body } of readTar(stream)) {
 *   if (header.type === TarType.Regular) await body.pipeTo(file.writable);
 * }
 * ```
 */
export function readTar(
  source: ReadableStream<Uint8Array>,
  options?: TarReaderOptions,
): TarReader {
  return new TarReader(source, options);
}
