/**
 * The local content store, as containerd's `content/local`: content-addressed blobs on the
 * filesystem, written through resumable, verified ingests.
 *
 * Layout under the store's root:
 *
 * ```
 * blobs/<algorithm>/<hex>                 committed, read-only blobs
 * ingest/<sha256(ref) hex>/data           bytes written so far
 * ingest/<sha256(ref) hex>/ref            the ref, verbatim
 * ingest/<sha256(ref) hex>/startedat      RFC 3339 timestamps
 * ingest/<sha256(ref) hex>/updatedat
 * ingest/<sha256(ref) hex>/total          expected size, when known
 * ingest/<sha256(ref) hex>/expected       expected digest, when known (tainerd addition)
 * ```
 *
 * Refs never touch the filesystem raw (only their sha256 does), and digests are validated
 * strictly before any path is built, so nothing is ever read or written outside the root.
 * A blob only appears under `blobs/` by an atomic rename of a fully written, fsynced, verified
 * file. There is no label store here: labels belong to the metadata layer.
 *
 * @module
 */

import { type FileHandle, open as openFileHandle } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import {
  alreadyExists,
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
  outOfRange,
  TainerdError,
  unavailable,
} from "../errdefs.ts";
import {
  CANONICAL_ALGORITHM,
  DIGEST_ALGORITHMS,
  type DigestAlgorithm,
  Digester,
  digestOf,
  isDigestAlgorithm,
  parseDigest,
} from "./digest.ts";

/** The size of the reads the store makes, both when streaming blobs out and when re-hashing. */
export const READ_CHUNK_SIZE: number = 1 << 20;

/** What the store knows about a committed blob. */
export interface Info {
  /** The blob's digest. */
  digest: string;
  /** The blob's size in bytes. */
  size: number;
  /** When the blob was committed (its mtime). */
  createdAt: Date;
  /** When the blob was last updated or read (its atime, as containerd). */
  updatedAt: Date;
  /** Labels; always empty here, the local store keeps none (the metadata layer does). */
  labels: Record<string, string>;
}

/** The state of an ingest (an unfinished write). */
export interface Status {
  /** The ref the ingest was opened with. */
  ref: string;
  /** Bytes written so far. */
  offset: number;
  /** The expected total size, or 0 when unknown. */
  total: number;
  /** The expected digest, or "" when unknown. */
  expected: string;
  /** When the ingest was started. */
  startedAt: Date;
  /** When the ingest was last written to. */
  updatedAt: Date;
}

/** Options of {@link LocalStore.writer}. */
export interface WriterOptions {
  /** The expected size in bytes; 0 or absent when unknown. Checked at commit. */
  total?: number;
  /**
   * The expected digest. When a blob with it already exists, opening fails with AlreadyExists;
   * otherwise it is checked at commit, and its algorithm is the one the writer hashes with.
   */
  expected?: string;
}

/** Options of {@link ContentWriter.commit}. */
export interface CommitOptions {
  /** Labels for the new blob. The local store has no label store and ignores them. */
  labels?: Record<string, string>;
}

/** Options of {@link LocalStore.read}. */
export interface ReadOptions {
  /** Where to start; negative counts as 0. Past the end of the blob is OutOfRange. */
  offset?: number;
  /** How many bytes to read; 0, negative, absent or past the end mean "to the end". */
  size?: number;
}

/** Random access to a committed blob. */
export interface ReaderAt {
  /** The blob's size in bytes. */
  readonly size: number;
  /**
   * Fills `buffer` from `offset` on, as far as the blob goes, and returns the number of bytes
   * read (fewer than `buffer.byteLength` only at the end of the blob; 0 at or past the end).
   * Calls may overlap.
   */
  readAt(buffer: Uint8Array, offset: number): Promise<number>;
  /** Releases the open file. */
  close(): Promise<void>;
}

/**
 * An open ingest: one writer per ref at a time. Operations run one after another in call
 * order, even when their promises are not awaited in between.
 */
export interface ContentWriter {
  /** The ref this writer holds. */
  readonly ref: string;
  /** Appends `chunk` at the current offset and returns the number of bytes written. */
  write(chunk: Uint8Array): Promise<number>;
  /** The digest of the bytes written so far (or of the committed blob, after a commit). */
  digest(): string;
  /** The current state of the ingest. */
  status(): Status;
  /** Cuts the ingest back to `size` bytes (0 to start over), keeping the digest right. */
  truncate(size: number): Promise<void>;
  /**
   * Verifies the data (size when `size` > 0, else the writer's `total` when known; digest when
   * `expected` is given, else the writer's `expected` when known), fsyncs it and renames it
   * atomically into `blobs/`. Returns the blob's digest. The writer is finished afterwards,
   * whatever the outcome: on a size or digest mismatch (FailedPrecondition) no blob is created
   * and the ingest stays, to be resumed or aborted; when the blob exists already
   * (AlreadyExists) the ingest is removed.
   */
  commit(size?: number, expected?: string, options?: CommitOptions): Promise<string>;
  /** Releases the ref's lock and closes the file; the ingest stays and can be resumed. */
  close(): Promise<void>;
}

/** The operations of a content store, as containerd's `content.Store` (without `Update`). */
export interface ContentStore {
  /** Information about a committed blob; NotFound when absent. */
  info(digest: string): Promise<Info>;
  /** Random access to a committed blob; NotFound when absent. */
  readerAt(digest: string): Promise<ReaderAt>;
  /** A byte range of a committed blob as a stream; NotFound, OutOfRange. */
  read(digest: string, options?: ReadOptions): Promise<ReadableStream<Uint8Array>>;
  /** Removes a committed blob; NotFound when absent. */
  delete(digest: string): Promise<void>;
  /** Calls `fn` for every committed blob, one at a time. */
  walk(fn: (info: Info) => void | Promise<void>): Promise<void>;
  /** Opens (or resumes) the ingest `ref` for writing. */
  writer(ref: string, options?: WriterOptions): Promise<ContentWriter>;
  /** The state of the ingest `ref`, read from disk; NotFound when absent. */
  status(ref: string): Promise<Status>;
  /** The states of all ingests, optionally filtered. */
  listStatuses(filter?: (status: Status) => boolean): Promise<Status[]>;
  /** Removes the ingest `ref`; NotFound when absent. */
  abort(ref: string): Promise<void>;
}

const ENTRY_NAME = /^[0-9a-f]{64}$/;

function quote(value: string): string {
  const shown = value.length > 160 ? `${value.slice(0, 160)}…` : value;
  return JSON.stringify(shown);
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Classifies a filesystem error: NotFound and AlreadyExists keep their kind, others are Internal. */
function fsError(context: string, err: unknown): TainerdError {
  if (err instanceof TainerdError) return err;
  if (err instanceof Deno.errors.NotFound) {
    return notFound(`${context}: not found`, { cause: err });
  }
  if (err instanceof Deno.errors.AlreadyExists) {
    return alreadyExists(`${context}: already exists`, { cause: err });
  }
  if (err instanceof Deno.errors.PermissionDenied) {
    return new TainerdError("PermissionDenied", `${context}: ${errorText(err)}`, { cause: err });
  }
  return internal(`${context}: ${errorText(err)}`, { cause: err });
}

/** The offset a read asks for (negative: 0); InvalidArgument unless offset and size are integers. */
function requestedOffset(options: ReadOptions, context: string): number {
  const offset = options.offset ?? 0;
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(options.size ?? 0)) {
    throw invalidArgument(`${context}: offset and size must be integers`);
  }
  return Math.max(offset, 0);
}

/**
 * The bytes a read of `size` from `offset` gets from a blob of `blobSize` (0 or too much: up to
 * the end); OutOfRange when `offset` lies past the end.
 */
function rangeSize(offset: number, size: number, blobSize: number, context: string): number {
  if (offset > blobSize) {
    throw outOfRange(
      `${context}: offset ${offset} is past the end of the blob (${blobSize} bytes)`,
    );
  }
  return size <= 0 || offset + size > blobSize ? blobSize - offset : size;
}

function checkSize(value: number, what: string, context: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalidArgument(`${context}: ${what} must be a non-negative integer, got ${value}`);
  }
}

function parseTimestamp(text: string, path: string): Date {
  const date = new Date(text.trim());
  if (Number.isNaN(date.getTime())) {
    throw internal(`Cannot parse timestamp file ${path}: ${quote(text)}`);
  }
  return date;
}

async function readOptionalText(path: string): Promise<string | undefined> {
  try {
    return await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

/** Writes a small file through a temporary file and a rename, so readers never see half of it. */
async function writeFileAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.tmp`;
  await Deno.writeTextFile(tmp, text, { mode: 0o644 });
  await Deno.rename(tmp, path);
}

async function pathExists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw err;
  }
}

/** Makes a rename in `dir` durable; best effort (some filesystems refuse to fsync a directory). */
async function syncDirectory(dir: string): Promise<void> {
  let handle: Deno.FsFile | undefined;
  try {
    handle = await Deno.open(dir, { read: true });
    await handle.sync();
  } catch {
    // Durability of the rename is a bonus; the blob itself is already synced and verified.
  } finally {
    handle?.close();
  }
}

/**
 * Reads `file` from its current position to the end (or `limit` bytes), feeding the digester,
 * in {@link READ_CHUNK_SIZE} reads through one reused buffer. Returns the bytes read.
 */
async function hashFrom(file: Deno.FsFile, digester: Digester, limit = Infinity): Promise<number> {
  const buffer = new Uint8Array(READ_CHUNK_SIZE);
  let total = 0;
  while (total < limit) {
    const want = Math.min(buffer.byteLength, limit - total);
    const n = await file.read(want === buffer.byteLength ? buffer : buffer.subarray(0, want));
    if (n === null) break;
    digester.update(buffer.subarray(0, n));
    total += n;
  }
  return total;
}

async function hashPath(path: string, algorithm: DigestAlgorithm): Promise<string> {
  const digester = new Digester(algorithm);
  using file = await Deno.open(path, { read: true });
  await hashFrom(file, digester);
  return digester.digest();
}

/** The local, filesystem-backed content store. Create one with {@link LocalStore.open}. */
export class LocalStore implements ContentStore {
  /** The absolute root directory of the store. */
  readonly root: string;
  /** Refs with an open writer (in-process locks: only the daemon touches the store). */
  readonly #locks = new Map<string, { since: Date }>();

  private constructor(root: string) {
    this.root = root;
  }

  /** Opens the store at `root`, creating `root/ingest` (and `root/blobs`) when missing. */
  static async open(root: string): Promise<LocalStore> {
    const absolute = resolve(root);
    try {
      await Deno.mkdir(join(absolute, "ingest"), { recursive: true, mode: 0o755 });
      await Deno.mkdir(join(absolute, "blobs"), { recursive: true, mode: 0o755 });
    } catch (err) {
      throw fsError(`Cannot open the content store at ${absolute}`, err);
    }
    return new LocalStore(absolute);
  }

  /**
   * The path where the blob `digest` lives (whether or not it exists).
   *
   * @throws {TainerdError} InvalidArgument when the digest is malformed.
   */
  blobPath(digest: string): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.root, "blobs", algorithm, hex);
  }

  #ingestRoot(): string {
    return join(this.root, "ingest");
  }

  #ingestDir(ref: string): string {
    return join(this.root, "ingest", digestOf(ref, "sha256").slice("sha256:".length));
  }

  /** Whether an open writer holds `ref` in this store instance. */
  isLocked(ref: string): boolean {
    return this.#locks.has(ref);
  }

  async #statBlob(digest: string, path: string, context: string): Promise<Info> {
    let stat: Deno.FileInfo;
    try {
      stat = await Deno.stat(path);
    } catch (err) {
      throw fsError(context, err);
    }
    return toInfo(digest, stat);
  }

  /** Information about a committed blob; NotFound when absent, InvalidArgument when malformed. */
  async info(digest: string): Promise<Info> {
    const path = this.blobPath(digest);
    return await this.#statBlob(digest, path, `Cannot get content ${digest}`);
  }

  /** Random access to a committed blob; NotFound when absent. Close it when done. */
  async readerAt(digest: string): Promise<ReaderAt> {
    const path = this.blobPath(digest);
    const context = `Cannot read content ${digest}`;
    let handle: FileHandle;
    try {
      handle = await openFileHandle(path, "r");
    } catch (err) {
      throw fsError(context, nodeToDenoError(err));
    }
    let size: number;
    try {
      size = (await handle.stat()).size;
    } catch (err) {
      await handle.close();
      throw fsError(context, nodeToDenoError(err));
    }
    const fh = handle;
    let closed = false;
    return {
      size,
      async readAt(buffer: Uint8Array, offset: number): Promise<number> {
        if (closed) throw failedPrecondition(`${context}: the reader is closed`);
        checkSize(offset, "the offset", context);
        let done = 0;
        while (done < buffer.byteLength && offset + done < size) {
          const { bytesRead } = await fh.read(
            buffer,
            done,
            buffer.byteLength - done,
            offset + done,
          );
          if (bytesRead === 0) break;
          done += bytesRead;
        }
        return done;
      },
      async close(): Promise<void> {
        if (closed) return;
        closed = true;
        await fh.close();
      },
    };
  }

  /**
   * A byte range of a committed blob, streamed in {@link READ_CHUNK_SIZE} chunks (each a fresh
   * array). NotFound when absent; OutOfRange when `offset` lies past the end (an offset equal
   * to the size gives an empty stream). Cancel the stream to release the file early.
   */
  async read(digest: string, options: ReadOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const path = this.blobPath(digest);
    const context = `Cannot read content ${digest}`;
    const offset = requestedOffset(options, context);
    let size: number;
    let file: Deno.FsFile;
    try {
      file = await Deno.open(path, { read: true });
    } catch (err) {
      throw fsError(context, err);
    }
    try {
      size = rangeSize(offset, options.size ?? 0, (await file.stat()).size, context);
      if (offset > 0) await file.seek(offset, Deno.SeekMode.Start);
    } catch (err) {
      file.close();
      throw fsError(context, err);
    }
    let remaining = size;
    let open = true;
    const release = () => {
      if (open) {
        open = false;
        file.close();
      }
    };
    return new ReadableStream<Uint8Array>({
      async pull(controller) {
        try {
          if (remaining === 0) {
            release();
            controller.close();
            return;
          }
          const chunk = new Uint8Array(Math.min(READ_CHUNK_SIZE, remaining));
          let filled = 0;
          while (filled < chunk.byteLength) {
            const n = await file.read(chunk.subarray(filled));
            if (n === null) {
              throw internal(`${context}: the blob ended early, ${remaining - filled} bytes short`);
            }
            filled += n;
          }
          remaining -= filled;
          controller.enqueue(chunk);
          if (remaining === 0) {
            release();
            controller.close();
          }
        } catch (err) {
          release();
          controller.error(fsError(context, err));
        }
      },
      cancel() {
        release();
      },
    }, { highWaterMark: 1 });
  }

  /**
   * A byte range of a committed blob, read at once (synchronously: manifests, configs and
   * indexes are a few KiB in the page cache, and a whole async open/stat/read stream cost
   * ~0.5 ms per API call, profiled); null when the range is larger than `limit`, for
   * {@linkcode read} to stream it. NotFound, OutOfRange as `read`.
   */
  readSmallSync(digest: string, options: ReadOptions, limit: number): Uint8Array | null {
    const path = this.blobPath(digest);
    const context = `Cannot read content ${digest}`;
    const offset = requestedOffset(options, context);
    let file: Deno.FsFile;
    try {
      file = Deno.openSync(path, { read: true });
    } catch (err) {
      throw fsError(context, err);
    }
    try {
      const size = rangeSize(offset, options.size ?? 0, file.statSync().size, context);
      if (size > limit) return null;
      if (offset > 0) file.seekSync(offset, Deno.SeekMode.Start);
      const out = new Uint8Array(size);
      let filled = 0;
      while (filled < size) {
        const n = file.readSync(out.subarray(filled));
        if (n === null) {
          throw internal(`${context}: the blob ended early, ${size - filled} bytes short`);
        }
        filled += n;
      }
      return out;
    } catch (err) {
      throw fsError(context, err);
    } finally {
      file.close();
    }
  }

  /** A whole committed blob in memory (for small blobs such as manifests); NotFound when absent. */
  async readBlob(digest: string): Promise<Uint8Array> {
    const path = this.blobPath(digest);
    try {
      return await Deno.readFile(path);
    } catch (err) {
      throw fsError(`Cannot read content ${digest}`, err);
    }
  }

  /** Removes a committed blob; NotFound when absent. Open readers keep working. */
  async delete(digest: string): Promise<void> {
    const path = this.blobPath(digest);
    try {
      await Deno.remove(path);
    } catch (err) {
      throw fsError(`Cannot delete content ${digest}`, err);
    }
  }

  /**
   * Calls `fn` (awaited) for every committed blob, algorithm by algorithm. Entries that are not
   * valid blobs (unknown algorithms, bad names, non-files) are skipped, as are blobs deleted
   * while walking. An error thrown by `fn` stops the walk and is rethrown.
   */
  async walk(fn: (info: Info) => void | Promise<void>): Promise<void> {
    const blobs = join(this.root, "blobs");
    for (const algorithm of await listDir(blobs)) {
      if (!algorithm.isDirectory || !isDigestAlgorithm(algorithm.name)) continue;
      const hexLength = DIGEST_ALGORITHMS[algorithm.name];
      const dir = join(blobs, algorithm.name);
      const hexName = new RegExp(`^[0-9a-f]{${hexLength}}$`);
      for (const entry of await listDir(dir)) {
        if (!entry.isFile || !hexName.test(entry.name)) continue;
        let stat: Deno.FileInfo;
        try {
          stat = await Deno.stat(join(dir, entry.name));
        } catch (err) {
          if (err instanceof Deno.errors.NotFound) continue;
          throw fsError(`Cannot walk content in ${dir}`, err);
        }
        await fn(toInfo(`${algorithm.name}:${entry.name}`, stat));
      }
    }
  }

  /**
   * Opens the ingest `ref` for writing, resuming it when it exists (its data is re-hashed, so
   * the writer continues at its current offset). Only one writer per ref at a time:
   * Unavailable while another is open in this store. AlreadyExists when `expected` names a blob
   * that is already committed. InvalidArgument for an empty ref or malformed options.
   *
   * An existing ingest is discarded and started afresh when it is unreadable, or when its
   * recorded total or expected digest differs from the one given here.
   */
  async writer(ref: string, options: WriterOptions = {}): Promise<ContentWriter> {
    if (typeof ref !== "string" || ref === "") {
      throw invalidArgument("Cannot open a writer: the ref must not be empty");
    }
    const context = `Cannot open a writer for ref ${quote(ref)}`;
    const total = options.total ?? 0;
    checkSize(total, "the total", context);
    const expected = options.expected ?? "";
    if (expected !== "") parseDigest(expected);

    const held = this.#locks.get(ref);
    if (held) {
      throw unavailable(
        `${context}: ref ${quote(ref)} is locked (since ${held.since.toISOString()})`,
      );
    }
    const token = { since: new Date() };
    this.#locks.set(ref, token);
    const release = () => {
      if (this.#locks.get(ref) === token) this.#locks.delete(ref);
    };
    try {
      return await this.#openWriter(ref, total, expected, release, context);
    } catch (err) {
      release();
      throw fsError(context, err);
    }
  }

  async #openWriter(
    ref: string,
    total: number,
    expected: string,
    release: () => void,
    context: string,
  ): Promise<ContentWriter> {
    if (expected !== "" && await pathExists(this.blobPath(expected))) {
      throw alreadyExists(`${context}: content ${expected} already exists`);
    }
    const dir = this.#ingestDir(ref);
    const dataPath = join(dir, "data");

    let created = false;
    try {
      await Deno.mkdir(dir, { mode: 0o755 });
      created = true;
    } catch (err) {
      if (!(err instanceof Deno.errors.AlreadyExists)) throw err;
    }

    if (!created) {
      const resumed = await this.#tryResume(dir, ref, total, expected);
      if (resumed) {
        return new LocalWriter(this, dir, resumed.status, resumed.file, resumed.digester, release);
      }
      // Unusable or conflicting ingest: start over from an empty directory.
      await Deno.remove(dir, { recursive: true });
      await Deno.mkdir(dir, { mode: 0o755 });
    }

    const now = new Date();
    await writeFileAtomic(join(dir, "ref"), ref);
    await writeFileAtomic(join(dir, "startedat"), now.toISOString());
    await writeFileAtomic(join(dir, "updatedat"), now.toISOString());
    if (total > 0) await writeFileAtomic(join(dir, "total"), String(total));
    if (expected !== "") await writeFileAtomic(join(dir, "expected"), expected);
    const file = await Deno.open(dataPath, {
      read: true,
      write: true,
      create: true,
      truncate: true,
      mode: 0o644,
    });
    const algorithm = expected !== "" ? parseDigest(expected).algorithm : CANONICAL_ALGORITHM;
    const status: Status = { ref, offset: 0, total, expected, startedAt: now, updatedAt: now };
    return new LocalWriter(this, dir, status, file, new Digester(algorithm), release);
  }

  async #tryResume(
    dir: string,
    ref: string,
    total: number,
    expected: string,
  ): Promise<{ status: Status; file: Deno.FsFile; digester: Digester } | undefined> {
    let status: Status;
    try {
      status = await readIngestStatus(dir);
    } catch {
      return undefined;
    }
    if (status.ref !== ref) return undefined;
    if (total > 0 && status.total > 0 && total !== status.total) return undefined;
    if (expected !== "" && status.expected !== "" && expected !== status.expected) {
      return undefined;
    }
    if (total > 0 && status.total === 0) {
      await writeFileAtomic(join(dir, "total"), String(total));
      status.total = total;
    }
    if (expected !== "" && status.expected === "") {
      await writeFileAtomic(join(dir, "expected"), expected);
      status.expected = expected;
    }
    const algorithm = status.expected !== ""
      ? parseDigest(status.expected).algorithm
      : CANONICAL_ALGORITHM;
    const digester = new Digester(algorithm);
    const file = await Deno.open(join(dir, "data"), { read: true, write: true });
    try {
      // Reading to the end leaves the position where the next write belongs.
      status.offset = await hashFrom(file, digester);
    } catch (err) {
      file.close();
      throw err;
    }
    return { status, file, digester };
  }

  /** The state of the ingest `ref`, read from disk; NotFound when there is none. */
  async status(ref: string): Promise<Status> {
    const context = `Cannot get status of ingest ${quote(ref)}`;
    let status: Status;
    try {
      status = await readIngestStatus(this.#ingestDir(ref));
    } catch (err) {
      throw fsError(context, err);
    }
    if (status.ref !== ref) throw notFound(`${context}: not found`);
    return status;
  }

  /**
   * The states of all ingests for which `filter` (when given) returns true. Ingests that are
   * incomplete or unreadable (e.g. cut short by a crash while being created) are skipped.
   */
  async listStatuses(filter?: (status: Status) => boolean): Promise<Status[]> {
    const out: Status[] = [];
    for (const entry of await listDir(this.#ingestRoot())) {
      if (!entry.isDirectory || !ENTRY_NAME.test(entry.name)) continue;
      let status: Status;
      try {
        status = await readIngestStatus(join(this.#ingestRoot(), entry.name));
      } catch {
        continue;
      }
      if (!filter || filter(status)) out.push(status);
    }
    return out;
  }

  /**
   * Removes the ingest `ref` and its data; NotFound when there is none. As containerd, this
   * does not wait for an open writer: such a writer's commit will then fail.
   */
  async abort(ref: string): Promise<void> {
    try {
      await Deno.remove(this.#ingestDir(ref), { recursive: true });
    } catch (err) {
      throw fsError(`Cannot abort ingest ${quote(ref)}`, err);
    }
  }

  /**
   * Garbage-collects stale ingests: removes every ingest not written to since `olderThan` and
   * not held by an open writer, plus unreadable ingest directories last modified before then.
   * Returns the refs of the readable ingests removed.
   */
  async expireIngests(olderThan: Date): Promise<string[]> {
    const removed: string[] = [];
    const cutoff = olderThan.getTime();
    for (const entry of await listDir(this.#ingestRoot())) {
      if (!ENTRY_NAME.test(entry.name)) continue;
      const dir = join(this.#ingestRoot(), entry.name);
      let ref: string | undefined;
      let updated: number;
      try {
        const status = await readIngestStatus(dir);
        ref = status.ref;
        updated = status.updatedAt.getTime();
      } catch {
        try {
          updated = (await Deno.lstat(dir)).mtime?.getTime() ?? 0;
        } catch {
          continue;
        }
      }
      if (updated >= cutoff) continue;
      if (ref !== undefined) {
        // Hold the ref's lock while removing, so no writer can open it in between.
        if (this.#locks.has(ref)) continue;
        const token = { since: new Date() };
        this.#locks.set(ref, token);
        try {
          await Deno.remove(dir, { recursive: true });
          removed.push(ref);
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) {
            throw fsError(`Cannot expire ingest ${quote(ref)}`, err);
          }
        } finally {
          if (this.#locks.get(ref) === token) this.#locks.delete(ref);
        }
      } else {
        try {
          await Deno.remove(dir, { recursive: true });
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) {
            throw fsError(`Cannot expire ingest directory ${dir}`, err);
          }
        }
      }
    }
    return removed;
  }
}

/** The writer of one ingest; see {@link ContentWriter}. */
class LocalWriter implements ContentWriter {
  readonly ref: string;
  readonly #store: LocalStore;
  readonly #dir: string;
  readonly #total: number;
  readonly #expected: string;
  readonly #startedAt: Date;
  readonly #digester: Digester;
  readonly #release: () => void;
  #file: Deno.FsFile | null;
  #offset: number;
  #updatedAt: Date;
  #committed = "";
  #queue: Promise<unknown> = Promise.resolve();

  constructor(
    store: LocalStore,
    dir: string,
    status: Status,
    file: Deno.FsFile,
    digester: Digester,
    release: () => void,
  ) {
    this.#store = store;
    this.#dir = dir;
    this.ref = status.ref;
    this.#total = status.total;
    this.#expected = status.expected;
    this.#startedAt = status.startedAt;
    this.#updatedAt = status.updatedAt;
    this.#offset = status.offset;
    this.#file = file;
    this.#digester = digester;
    this.#release = release;
  }

  /** Runs `op` after every operation queued before it, whatever their outcome. */
  #serial<T>(op: () => Promise<T>): Promise<T> {
    const result = this.#queue.then(op, op);
    this.#queue = result.catch(() => {});
    return result;
  }

  #context(action: string): string {
    return `Cannot ${action} ingest ${quote(this.ref)}`;
  }

  #openFile(action: string): Deno.FsFile {
    if (this.#file === null) {
      throw failedPrecondition(`${this.#context(action)}: the writer is closed`);
    }
    return this.#file;
  }

  write(chunk: Uint8Array): Promise<number> {
    return this.#serial(async () => {
      const file = this.#openFile("write to");
      let done = 0;
      try {
        while (done < chunk.byteLength) {
          const rest = done === 0 ? chunk : chunk.subarray(done);
          const n = await file.write(rest);
          this.#digester.update(rest.subarray(0, n));
          done += n;
          this.#offset += n;
        }
      } catch (err) {
        throw fsError(this.#context("write to"), err);
      } finally {
        if (done > 0) this.#updatedAt = new Date();
      }
      return done;
    });
  }

  digest(): string {
    return this.#committed !== "" ? this.#committed : this.#digester.digest();
  }

  status(): Status {
    return {
      ref: this.ref,
      offset: this.#offset,
      total: this.#total,
      expected: this.#expected,
      startedAt: new Date(this.#startedAt),
      updatedAt: new Date(this.#updatedAt),
    };
  }

  truncate(size: number): Promise<void> {
    return this.#serial(async () => {
      const context = this.#context("truncate");
      checkSize(size, "the size", context);
      const file = this.#openFile("truncate");
      if (size > this.#offset) {
        throw outOfRange(`${context}: cannot grow it from ${this.#offset} to ${size} bytes`);
      }
      try {
        await file.truncate(size);
        this.#digester.reset();
        await file.seek(0, Deno.SeekMode.Start);
        const hashed = await hashFrom(file, this.#digester, size);
        if (hashed !== size) throw internal(`${context}: the data ended at ${hashed} bytes`);
        await file.seek(size, Deno.SeekMode.Start);
      } catch (err) {
        throw fsError(context, err);
      }
      this.#offset = size;
      this.#updatedAt = new Date();
    });
  }

  commit(size = 0, expected = "", _options: CommitOptions = {}): Promise<string> {
    return this.#serial(async () => {
      const context = this.#context("commit");
      checkSize(size, "the size", context);
      if (expected !== "") parseDigest(expected);
      const file = this.#openFile("commit");
      this.#file = null;
      try {
        return await this.#commit(file, context, size, expected);
      } catch (err) {
        throw fsError(context, err);
      } finally {
        this.#release();
      }
    });
  }

  async #commit(
    file: Deno.FsFile,
    context: string,
    size: number,
    expected: string,
  ): Promise<string> {
    let actual: number;
    try {
      await file.syncData();
      actual = (await file.stat()).size;
    } finally {
      file.close();
    }

    const wantSize = size > 0 ? size : this.#total;
    if (wantSize > 0 && wantSize !== actual) {
      throw failedPrecondition(`${context}: expected size ${wantSize} but got ${actual}`);
    }
    const wantDigest = expected !== "" ? expected : this.#expected;
    const algorithm = wantDigest !== ""
      ? parseDigest(wantDigest).algorithm
      : this.#digester.algorithm;
    const dataPath = join(this.#dir, "data");
    // The running hash covers exactly what this writer wrote; re-read only when it cannot serve.
    const digest = algorithm === this.#digester.algorithm && actual === this.#offset
      ? this.#digester.digest()
      : await hashPath(dataPath, algorithm);
    if (wantDigest !== "" && wantDigest !== digest) {
      throw failedPrecondition(`${context}: expected digest ${wantDigest} but got ${digest}`);
    }

    const target = this.#store.blobPath(digest);
    const targetDir = dirname(target);
    await Deno.mkdir(targetDir, { recursive: true, mode: 0o755 });
    if (await pathExists(target)) {
      await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
      throw alreadyExists(`${context}: content ${digest} already exists`);
    }
    const now = new Date();
    await Deno.utime(dataPath, now, now);
    await Deno.rename(dataPath, target);
    this.#committed = digest;
    await syncDirectory(targetDir);
    // Blobs are immutable: read-only, as containerd leaves them.
    await Deno.chmod(target, 0o444).catch(() => {});
    await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
    return digest;
  }

  close(): Promise<void> {
    return this.#serial(async () => {
      const file = this.#file;
      if (file === null) return;
      this.#file = null;
      try {
        await file.syncData().catch(() => {});
        file.close();
        // The ingest may have been aborted meanwhile; its timestamp then has nowhere to go.
        await writeFileAtomic(join(this.#dir, "updatedat"), this.#updatedAt.toISOString())
          .catch(() => {});
      } finally {
        this.#release();
      }
    });
  }
}

function toInfo(digest: string, stat: Deno.FileInfo): Info {
  const createdAt = stat.mtime ?? new Date(0);
  return {
    digest,
    size: stat.size,
    createdAt,
    updatedAt: stat.atime ?? createdAt,
    labels: {},
  };
}

async function listDir(path: string): Promise<Deno.DirEntry[]> {
  const entries: Deno.DirEntry[] = [];
  try {
    for await (const entry of Deno.readDir(path)) entries.push(entry);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw fsError(`Cannot list ${path}`, err);
  }
  entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return entries;
}

/** Reads an ingest's status from its directory; throws Deno NotFound when a part is missing. */
async function readIngestStatus(dir: string): Promise<Status> {
  const dataStat = await Deno.stat(join(dir, "data"));
  const ref = await Deno.readTextFile(join(dir, "ref"));
  const startedPath = join(dir, "startedat");
  const updatedPath = join(dir, "updatedat");
  const startedAt = parseTimestamp(await Deno.readTextFile(startedPath), startedPath);
  let updatedAt = parseTimestamp(await Deno.readTextFile(updatedPath), updatedPath);
  if (dataStat.mtime && dataStat.mtime > updatedAt) updatedAt = dataStat.mtime;
  const totalText = (await readOptionalText(join(dir, "total")))?.trim();
  const totalNumber = totalText ? Number(totalText) : 0;
  const total = Number.isSafeInteger(totalNumber) && totalNumber > 0 ? totalNumber : 0;
  const expectedText = (await readOptionalText(join(dir, "expected")))?.trim() ?? "";
  let expected = "";
  if (expectedText !== "") {
    try {
      parseDigest(expectedText);
    } catch (err) {
      throw internal(`Cannot read ingest ${dir}: bad expected digest`, { cause: err });
    }
    expected = expectedText;
  }
  return { ref, offset: dataStat.size, total, expected, startedAt, updatedAt };
}

/** Turns a `node:fs` error (which carries `code`) into the matching Deno error class. */
function nodeToDenoError(err: unknown): unknown {
  const code = (err as { code?: unknown } | null)?.code;
  const message = errorText(err);
  if (code === "ENOENT") return new Deno.errors.NotFound(message, { cause: err });
  if (code === "EACCES" || code === "EPERM") {
    return new Deno.errors.PermissionDenied(message, { cause: err });
  }
  return err;
}
