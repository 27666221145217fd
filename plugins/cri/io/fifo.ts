/**
 * The FIFOs of a CRI container or exec, as containerd's `pkg/cri/io` (`container_io.go`,
 * `exec_io.go`) over `cio.NewFIFOSetInDir`: the daemon creates `<dir>/<id>-stdin`,
 * `-stdout` and `-stderr`, hands their paths to Tasks.Create / Exec, and reads the output
 * into the container log ({@linkcode ContainerIO}) or into buffers ({@linkcode ExecIO}).
 *
 * Nothing here blocks the event loop or hangs on a peer that never comes:
 *
 * - Output FIFOs are opened `O_RDONLY | O_NONBLOCK`, which returns at once, and read after
 *   poll(2) on Deno's FFI pool reports data. Linux reports no hang-up on a FIFO until a writer
 *   has opened it, so the stream waits for the shim and ends when its last writer closes.
 * - The stdin FIFO is opened `O_WRONLY | O_NONBLOCK`, retried on a timer until the shim has
 *   its end open (before that the open fails with ENXIO), so closing it means end of file.
 * - Every wait also polls an eventfd, so {@linkcode ContainerIO.close} ends them promptly.
 *
 * @module
 */

import { join } from "node:path";
import { alreadyExists } from "../../errdefs.ts";
import {
  close as closeFd,
  eventfd,
  isErrno,
  mknod,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDONLY,
  O_WRONLY,
  open,
  pollAsync,
  POLLIN,
  POLLOUT,
  read,
  S_IFIFO,
  write,
} from "../../../sys/libc.ts";
import { CriLogWriter, DEFAULT_MAX_LINE_SIZE } from "./log.ts";

/** The paths handed to Tasks.Create / Exec (empty for a stream that is not wanted). */
export interface ContainerIOPaths {
  /** The stdin FIFO, or empty. */
  stdin: string;
  /** The stdout FIFO (with a terminal it carries both output streams). */
  stdout: string;
  /** The stderr FIFO, or empty with a terminal. */
  stderr: string;
  /** Whether the process has a terminal. */
  terminal: boolean;
}

/** What a container or exec wants: stdin, and a terminal (then stderr is merged). */
export interface StdioOptions {
  /** Whether the process gets a stdin FIFO. */
  stdin?: boolean;
  /** Whether the process has a terminal. */
  tty?: boolean;
}

/** The FIFO paths for `id` under `dir`, as containerd's `NewFIFOSetInDir`. */
export function fifoPaths(dir: string, id: string, opts: StdioOptions = {}): ContainerIOPaths {
  const path = (s: string) => join(dir, `${id}-${s}`);
  return {
    stdin: opts.stdin ? path("stdin") : "",
    stdout: path("stdout"),
    stderr: opts.tty ? "" : path("stderr"),
    terminal: opts.tty ?? false,
  };
}

/**
 * Creates a FIFO (mode 0700 before umask). An existing FIFO is kept (a restarted daemon
 * reattaching to a running container).
 *
 * @throws {TainerdError} AlreadyExists when something else is at `path`
 */
export function makeFifo(path: string): void {
  try {
    mknod(path, S_IFIFO | 0o700);
  } catch (err) {
    if (!isErrno(err, "EEXIST")) throw err;
    if (!Deno.lstatSync(path).isFifo) {
      throw alreadyExists(`Cannot create FIFO "${path}": something else is there`, {
        cause: err,
      });
    }
  }
}

async function removeQuietly(path: string): Promise<void> {
  if (!path) return;
  try {
    await Deno.remove(path);
  } catch { /* gone, or a directory still in use */ }
}

const EVENTFD_ONE = new Uint8Array(new BigUint64Array([1n]).buffer);

/**
 * A wake-up flag for the poll waits of one FIFO set: an eventfd, signalled once (it then
 * stays readable, ending every wait), closed once released and no wait uses it.
 */
export class Wake {
  #fd: number = eventfd();
  #signalled = false;
  #users = 0;
  #released = false;

  /** The eventfd (-1 once closed). */
  get fd(): number {
    return this.#fd;
  }

  /** Whether {@linkcode signal} was called. */
  get signalled(): boolean {
    return this.#signalled;
  }

  /** Ends every wait, now and later. */
  signal(): void {
    if (this.#signalled) return;
    this.#signalled = true;
    try {
      if (this.#fd >= 0) write(this.#fd, EVENTFD_ONE);
    } catch { /* closed */ }
  }

  /** Runs a wait that polls the fd; the fd stays open until every such wait is over. */
  async use<T>(fn: () => Promise<T>): Promise<T> {
    this.#users++;
    try {
      return await fn();
    } finally {
      this.#users--;
      this.#maybeClose();
    }
  }

  /** Closes the fd once no wait uses it. */
  release(): void {
    this.#released = true;
    this.#maybeClose();
  }

  #maybeClose(): void {
    if (!this.#released || this.#users > 0 || this.#fd < 0) return;
    try {
      closeFd(this.#fd);
    } catch { /* closed */ }
    this.#fd = -1;
  }
}

const READ_SIZE = 32 * 1024;

/**
 * Opens the FIFO at `path` for reading without blocking and returns its bytes as a stream,
 * which ends when the last writer closes its end (after one has opened it), when `wake` is
 * signalled, or when it is canceled. The descriptor is closed when the stream is done.
 */
export function openFifoReader(path: string, wake: Wake): ReadableStream<Uint8Array> {
  let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  const buf = new Uint8Array(READ_SIZE);
  const release = () => {
    if (fd < 0) return;
    try {
      closeFd(fd);
    } catch { /* closed */ }
    fd = -1;
  };
  let pulling = false;
  return new ReadableStream<Uint8Array>({
    pull: async (controller) => {
      pulling = true;
      try {
        for (;;) {
          if (fd < 0 || wake.signalled) {
            release();
            controller.close();
            return;
          }
          const [, woken] = await wake.use(() =>
            pollAsync([{ fd, events: POLLIN }, { fd: wake.fd, events: POLLIN }])
          );
          if (woken !== 0 || fd < 0) continue;
          let n: number;
          try {
            n = read(fd, buf);
          } catch (err) {
            if (isErrno(err, "EAGAIN") || isErrno(err, "EINTR")) continue;
            release();
            throw err;
          }
          if (n === 0) {
            release();
            controller.close();
            return;
          }
          controller.enqueue(buf.slice(0, n));
          return;
        }
      } finally {
        pulling = false;
      }
    },
    cancel: () => {
      // A pending pull holds the fd in poll: it closes it when it returns.
      if (pulling) wake.signal();
      else release();
    },
  }, { highWaterMark: 1 });
}

/**
 * The write side of a stdin FIFO. It is opened `O_WRONLY | O_NONBLOCK`, which fails with
 * ENXIO until a reader (the shim, at Create / Exec) has the FIFO open, so the open is retried
 * on a timer (5 ms doubling to 50 ms, no thread held) until then; writes queue meanwhile. Only
 * then can closing this end deliver an end of file rather than drop bytes in a pipe nobody
 * holds.
 */
export class StdinWriter {
  /** The FIFO's path. */
  readonly path: string;
  readonly #wake: Wake;
  readonly #opened: Promise<number>;
  #fd = -1;
  #queue: Promise<unknown> = Promise.resolve();
  #closed = false;

  /** Starts opening the FIFO at `path`; every wait also ends when `wake` is signalled. */
  constructor(path: string, wake: Wake) {
    this.path = path;
    this.#wake = wake;
    this.#opened = this.#open();
    this.#opened.catch(() => {});
  }

  async #open(): Promise<number> {
    for (let delay = 5;; delay = Math.min(delay * 2, 50)) {
      if (this.#wake.signalled || this.#closed) return -1;
      try {
        this.#fd = open(this.path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
        return this.#fd;
      } catch (err) {
        if (!isErrno(err, "ENXIO") && !isErrno(err, "EINTR")) throw err;
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  /** Whether a reader has opened the FIFO and this end is open. */
  get connected(): boolean {
    return this.#fd >= 0;
  }

  /**
   * Writes all of `data` (in order with earlier writes) once a reader is there, waiting while
   * the pipe is full; false when the writer was closed or aborted first, or the reader went
   * away (EPIPE).
   */
  write(data: Uint8Array): Promise<boolean> {
    const copy = data.slice();
    const next = this.#queue.then(() => this.#writeAll(copy));
    this.#queue = next.catch(() => {});
    return next;
  }

  async #writeAll(data: Uint8Array<ArrayBuffer>): Promise<boolean> {
    const fd = await this.#opened;
    let off = 0;
    while (off < data.byteLength) {
      if (fd < 0 || this.#fd !== fd || this.#wake.signalled) return false;
      try {
        off += write(fd, data.subarray(off));
        continue;
      } catch (err) {
        if (isErrno(err, "EPIPE")) return false;
        if (!isErrno(err, "EAGAIN") && !isErrno(err, "EINTR")) throw err;
      }
      await this.#wake.use(() =>
        pollAsync([{ fd, events: POLLOUT }, { fd: this.#wake.fd, events: POLLIN }])
      );
    }
    return true;
  }

  /**
   * Closes this end after the queued writes (waiting for a reader if none came yet). The
   * process sees the end of its stdin once the shim closes its own end too (CloseIO).
   */
  async close(): Promise<void> {
    await this.#queue;
    await this.#opened.catch(() => {});
    this.#closed = true;
    this.#release();
  }

  /** Closes at once, abandoning queued writes and a pending open (signals `wake`). */
  abort(): void {
    this.#closed = true;
    this.#wake.signal();
    this.#queue.finally(() => this.#release());
  }

  #release(): void {
    if (this.#fd < 0) return;
    try {
      closeFd(this.#fd);
    } catch { /* closed */ }
    this.#fd = -1;
  }
}

/** Creates the directory and the FIFOs; returns the paths. Removes what it made on failure. */
async function createFifos(
  dir: string,
  id: string,
  opts: StdioOptions,
): Promise<ContainerIOPaths> {
  await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
  const paths = fifoPaths(dir, id, opts);
  const made: string[] = [];
  try {
    for (const p of [paths.stdin, paths.stdout, paths.stderr]) {
      if (!p) continue;
      makeFifo(p);
      made.push(p);
    }
  } catch (err) {
    for (const p of made) await removeQuietly(p);
    throw err;
  }
  return paths;
}

/**
 * Creates `dir` and the FIFOs for `id` and opens this side of them: the raw streams, for an
 * exec whose output goes to a streaming client rather than a log.
 */
export async function openFifoSet(
  dir: string,
  id: string,
  opts: StdioOptions = {},
): Promise<FifoSet> {
  const paths = await createFifos(dir, id, opts);
  try {
    return new FifoSet(dir, paths);
  } catch (err) {
    for (const p of [paths.stdin, paths.stdout, paths.stderr]) await removeQuietly(p);
    throw err;
  }
}

/** The open ends of a FIFO set: output streams, the stdin writer, their wake flag. */
export class FifoSet {
  readonly paths: ContainerIOPaths;
  readonly dir: string;
  readonly wake: Wake = new Wake();
  readonly stdout: ReadableStream<Uint8Array>;
  readonly stderr: ReadableStream<Uint8Array> | null;
  readonly stdin: StdinWriter | null;

  constructor(dir: string, paths: ContainerIOPaths) {
    this.dir = dir;
    this.paths = paths;
    const opened: ReadableStream<Uint8Array>[] = [];
    try {
      this.stdout = openFifoReader(paths.stdout, this.wake);
      opened.push(this.stdout);
      this.stderr = paths.stderr ? openFifoReader(paths.stderr, this.wake) : null;
      if (this.stderr) opened.push(this.stderr);
      this.stdin = paths.stdin ? new StdinWriter(paths.stdin, this.wake) : null;
    } catch (err) {
      for (const s of opened) s.cancel().catch(() => {});
      this.wake.release();
      throw err;
    }
  }

  /** Ends every wait, closes every descriptor, removes the FIFOs (and `dir` if empty). */
  async close(): Promise<void> {
    this.wake.signal();
    this.stdin?.abort();
    await this.stdin?.close();
    this.wake.release();
    for (const p of [this.paths.stdin, this.paths.stdout, this.paths.stderr]) {
      await removeQuietly(p);
    }
    await removeQuietly(this.dir);
  }
}

/**
 * The stdio of a CRI container: FIFOs under a directory, the output copied into the CRI log
 * (or discarded when the sandbox config names no log path), stdin for attach.
 *
 * ```ts
 * const io = await ContainerIO.create(dir, id, { stdin: false, tty: false });
 * // … Tasks.Create with io.paths …
 * await io.attachLog(logPath, maxLineSize);
 * // … the task exits …
 * await io.wait();
 * await io.close();
 * ```
 */
export class ContainerIO {
  /** The container (or exec) id. */
  readonly id: string;
  /** The FIFO paths for the Task create request. */
  readonly paths: ContainerIOPaths;
  readonly #set: FifoSet;
  #log: CriLogWriter | null = null;
  #copies: Promise<void> | null = null;
  #closing: Promise<void> | null = null;

  private constructor(id: string, set: FifoSet) {
    this.id = id;
    this.#set = set;
    this.paths = set.paths;
  }

  /**
   * Creates `dir` (0700) and the FIFOs `<dir>/<id>-stdin|stdout|stderr` (stdin only when
   * asked; no stderr with a terminal), and opens this side of them without waiting for the
   * shim.
   */
  static async create(dir: string, id: string, opts: StdioOptions = {}): Promise<ContainerIO> {
    const paths = await createFifos(dir, id, opts);
    try {
      return new ContainerIO(id, new FifoSet(dir, paths));
    } catch (err) {
      for (const p of [paths.stdin, paths.stdout, paths.stderr]) await removeQuietly(p);
      throw err;
    }
  }

  /** The stdin FIFO's writer (for attach), or null when the container has no stdin. */
  get stdin(): StdinWriter | null {
    return this.#set.stdin;
  }

  /**
   * Starts copying the output into the CRI log at `logPath` (with a terminal, everything is
   * `stdout`); an empty `logPath` discards the output, as containerd does. Call it once.
   * Returns the log writer (null when discarding).
   */
  async attachLog(
    logPath: string,
    maxLineSize: number = DEFAULT_MAX_LINE_SIZE,
  ): Promise<CriLogWriter | null> {
    if (this.#copies) throw new Error(`The output of "${this.id}" is already attached`);
    const { stdout, stderr } = this.#set;
    if (!logPath) {
      // Not logged, but still seen by attached clients.
      const drain = async (name: "stdout" | "stderr", s: ReadableStream<Uint8Array> | null) => {
        if (s) { for await (const _ of this.#tap(name, s)) { /* discarded */ } }
      };
      this.#copies = Promise.all([drain("stdout", stdout), drain("stderr", stderr)]).then(
        () => {},
      );
      return null;
    }
    const log = await CriLogWriter.open(logPath, { maxLineSize });
    this.#log = log;
    const copies = [log.copy("stdout", this.#tap("stdout", stdout))];
    if (stderr) copies.push(log.copy("stderr", this.#tap("stderr", stderr)));
    this.#copies = Promise.all(copies).then(() => log.wait());
    return log;
  }

  readonly #listeners = new Set<(stream: "stdout" | "stderr", chunk: Uint8Array | null) => void>();

  /** Passes every chunk of `s` on to the attach listeners (`null` at its end). */
  #tap(name: "stdout" | "stderr", s: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
    const listeners = this.#listeners;
    return s.pipeThrough(
      new TransformStream<Uint8Array, Uint8Array>({
        transform(chunk, ctl) {
          for (const l of listeners) l(name, chunk);
          ctl.enqueue(chunk);
        },
        flush() {
          for (const l of listeners) l(name, null);
        },
      }),
    );
  }

  /**
   * Receives the output from now on, as it is logged (an attached client); `chunk` is null
   * when that stream ended. Returns the function that stops it.
   */
  onOutput(fn: (stream: "stdout" | "stderr", chunk: Uint8Array | null) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  /** The log writer, once attached to a log file. */
  get log(): CriLogWriter | null {
    return this.#log;
  }

  /** Reopens the log file (ReopenContainerLog, after the kubelet rotated it). */
  async reopenLog(): Promise<void> {
    if (!this.#log) throw new Error(`The output of "${this.id}" is not written to a log`);
    await this.#log.reopen();
  }

  /**
   * Resolves when the output streams reached their end (the shim closed them after the
   * process exited) and everything is written to the log.
   */
  async wait(): Promise<void> {
    if (!this.#copies) throw new Error(`The output of "${this.id}" is not attached`);
    await this.#copies;
  }

  /**
   * Stops copying, closes the log and every descriptor, and removes the FIFOs (and their
   * directory when it is left empty). Safe to call more than once.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      if (!this.#copies) {
        // Never attached: cancel the readers directly.
        await Promise.allSettled([this.#set.stdout.cancel(), this.#set.stderr?.cancel()]);
      }
      this.#set.wake.signal();
      await this.#log?.close();
      await this.#copies?.catch(() => {});
      await this.#set.close();
    })();
    return this.#closing;
  }
}

/** kubelet's and containerd's cap on each ExecSync output stream: 16 MiB. */
export const MAX_EXEC_OUTPUT = 16 * 1024 * 1024;

/** What an ExecSync process wrote. */
export interface ExecOutput {
  /** Stdout (with a terminal: all output), at most the cap. */
  stdout: Uint8Array;
  /** Stderr, at most the cap (empty with a terminal). */
  stderr: Uint8Array;
  /** Whether stdout went over the cap (the rest was read and dropped). */
  stdoutTruncated: boolean;
  /** Whether stderr went over the cap. */
  stderrTruncated: boolean;
}

/** Options of {@linkcode ExecIO.create}. */
export interface ExecIOOptions {
  /** Bytes fed to the process's stdin (a stdin FIFO is made only with them). */
  stdin?: Uint8Array;
  /** Whether the process has a terminal. */
  tty?: boolean;
  /** The cap of each output stream (default {@linkcode MAX_EXEC_OUTPUT}). */
  maxOutput?: number;
}

async function collect(
  s: ReadableStream<Uint8Array> | null,
  cap: number,
): Promise<{ bytes: Uint8Array; truncated: boolean }> {
  const parts: Uint8Array[] = [];
  let size = 0;
  let truncated = false;
  if (s) {
    for await (const chunk of s) {
      const room = cap - size;
      if (chunk.byteLength > room) truncated = true;
      if (room <= 0) continue;
      const kept = chunk.byteLength > room ? chunk.subarray(0, room) : chunk;
      parts.push(kept);
      size += kept.byteLength;
    }
  }
  const bytes = new Uint8Array(size);
  let off = 0;
  for (const p of parts) {
    bytes.set(p, off);
    off += p.byteLength;
  }
  return { bytes, truncated };
}

/**
 * The stdio of an ExecSync process: FIFOs under a directory, output collected into capped
 * buffers (bytes past the cap are read and dropped, so the process never blocks), optional
 * stdin bytes written as soon as the shim reads them.
 */
export class ExecIO {
  /** The exec id. */
  readonly id: string;
  /** The FIFO paths for the Exec request. */
  readonly paths: ContainerIOPaths;
  /**
   * Resolves once the stdin bytes are all in the pipe and this end is closed (then send
   * CloseIO); at once without stdin. False when closed before.
   */
  readonly stdinWritten: Promise<boolean>;
  readonly #set: FifoSet;
  readonly #output: Promise<ExecOutput>;
  #closing: Promise<void> | null = null;

  private constructor(id: string, set: FifoSet, opts: ExecIOOptions) {
    this.id = id;
    this.#set = set;
    this.paths = set.paths;
    const cap = opts.maxOutput ?? MAX_EXEC_OUTPUT;
    this.#output = Promise.all([collect(set.stdout, cap), collect(set.stderr, cap)]).then((
      [out, err],
    ) => ({
      stdout: out.bytes,
      stderr: err.bytes,
      stdoutTruncated: out.truncated,
      stderrTruncated: err.truncated,
    }));
    this.#output.catch(() => {});
    const stdin = set.stdin;
    this.stdinWritten = stdin
      ? stdin.write(opts.stdin!).then(async (ok) => {
        await stdin.close();
        return ok;
      })
      : Promise.resolve(true);
    this.stdinWritten.catch(() => {});
  }

  /** Creates `dir` and the FIFOs `<dir>/<id>-stdin|stdout|stderr`, and opens this side. */
  static async create(dir: string, id: string, opts: ExecIOOptions = {}): Promise<ExecIO> {
    const paths = await createFifos(dir, id, { stdin: opts.stdin !== undefined, tty: opts.tty });
    try {
      return new ExecIO(id, new FifoSet(dir, paths), opts);
    } catch (err) {
      for (const p of [paths.stdin, paths.stdout, paths.stderr]) await removeQuietly(p);
      throw err;
    }
  }

  /** Resolves with the output once both streams reached their end. */
  wait(): Promise<ExecOutput> {
    return this.#output;
  }

  /**
   * Stops reading (what was read so far stays in {@linkcode wait}'s result), closes every
   * descriptor and removes the FIFOs. Safe to call more than once.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      this.#set.wake.signal();
      await this.#output.catch(() => {});
      await this.stdinWritten.catch(() => {});
      await this.#set.close();
    })();
    return this.#closing;
  }
}
