/**
 * A task process's stdio, as containerd's `pkg/process/io.go` and the console copy of
 * `runtime/v2/runc/platform.go`: the client names FIFOs (or a `file://` URI) in the request and
 * the shim copies between them and the process.
 *
 * - Pipes (no terminal): runc gets pipes as its stdio, which the container process inherits;
 *   the shim copies the stdout/stderr pipes into the FIFOs (or the file) and the stdin FIFO
 *   into the stdin pipe.
 * - Console (terminal): runc sends the pty master over `--console-socket`; the shim copies the
 *   master's output into the stdout FIFO and the stdin FIFO into the master, and resizes it.
 *
 * Output FIFOs are opened read-write so that opening never blocks and writing never fails when
 * the client is not reading yet (containerd holds both ends too); they are written without
 * blocking, so that Delete can abandon output nobody reads. The stdin FIFO is read
 * through a raw non-blocking descriptor polled on Deno's FFI pool, and the shim keeps a write
 * end of it open until `CloseIO`, so stdin ends only when the client closed its end and
 * `CloseIO` was called, as in containerd.
 *
 * @module
 */

import { invalidArgument, notImplemented } from "../plugins/errdefs.ts";
import {
  close,
  eventfd,
  isErrno,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDONLY,
  O_RDWR,
  O_WRONLY,
  open,
  pollAsync,
  POLLIN,
  POLLOUT,
  read,
  setNonblocking,
  SysError,
  write,
} from "../sys/libc.ts";
import type { Logger } from "../log.ts";
import type { RuncStdio } from "./runc.ts";
import { setWinSize } from "./pty.ts";

/** The stdio of a task process as the client asked for it. */
export interface Stdio {
  /** Path of the stdin FIFO, or empty. */
  stdin: string;
  /** Path of the stdout FIFO, a `file://` URI, or empty. */
  stdout: string;
  /** Path of the stderr FIFO, a `file://` URI, or empty. */
  stderr: string;
  /** Whether the process has a terminal (stdout carries both output streams). */
  terminal: boolean;
}

/** Whether no stream is wanted at all. */
export function isNullStdio(s: Stdio): boolean {
  return s.stdin === "" && s.stdout === "" && s.stderr === "";
}

/**
 * A refcounted output destination (shared when stdout and stderr are the same file). A FIFO is
 * written through a raw non-blocking descriptor, so that a write blocked by a client that does
 * not read can be abandoned when the process is deleted; a regular file through Deno.
 */
class Sink {
  readonly path: string;
  readonly #fifo: number;
  readonly #file: Deno.FsFile | null;
  #refs = 1;
  #failed = false;

  constructor(path: string, fifo: number, file: Deno.FsFile | null) {
    this.path = path;
    this.#fifo = fifo;
    this.#file = file;
  }

  ref(): this {
    this.#refs++;
    return this;
  }

  /**
   * Writes all of `data`; false when `wake` was signalled first. After a write error the rest
   * of the output is discarded (and the error logged once).
   */
  async write(data: Uint8Array, wake: number, log: Logger): Promise<boolean> {
    if (this.#failed) return true;
    try {
      if (this.#file === null) return await writeRaw(this.#fifo, wake, data);
      for (let off = 0; off < data.length;) off += await this.#file.write(data.subarray(off));
    } catch (err) {
      this.#failed = true;
      log.warn("cannot write process output; discarding it", { path: this.path, error: `${err}` });
    }
    return true;
  }

  release(): void {
    if (--this.#refs > 0) return;
    try {
      if (this.#file !== null) this.#file.close();
      else close(this.#fifo);
    } catch { /* already closed */ }
  }
}

async function openSink(target: string, what: string): Promise<Sink> {
  if (target.startsWith("file://")) {
    const path = decodeURIComponent(new URL(target).pathname);
    const dir = path.slice(0, path.lastIndexOf("/")) || "/";
    await Deno.mkdir(dir, { recursive: true, mode: 0o755 });
    const file = await Deno.open(path, { append: true, create: true, mode: 0o644 });
    return new Sink(path, -1, file);
  }
  const path = target.startsWith("fifo://") ? target.slice("fifo://".length) : target;
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) {
      throw invalidArgument(`Cannot open the ${what} of the process: "${path}" does not exist`);
    }
    throw err;
  }
  if (info.isFifo) {
    // Read-write: opening never blocks, writing never breaks while the client is away.
    return new Sink(path, open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC), null);
  }
  return new Sink(path, -1, await Deno.open(path, { append: true }));
}

function checkScheme(target: string, what: string): void {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(target);
  if (m === null || m[1] === "file" || m[1] === "fifo") return;
  if (m[1] === "binary") {
    throw notImplemented(
      `Cannot set up the ${what} "${target}": binary:// logging is not supported yet`,
    );
  }
  throw invalidArgument(`Cannot set up the ${what} "${target}": unknown stdio scheme "${m[1]}"`);
}

/** The stdin FIFO: a raw non-blocking reader plus the write end held until `CloseIO`. */
class StdinFifo {
  readonly path: string;
  readonly fd: number;
  #hold: number;

  private constructor(path: string, fd: number, hold: number) {
    this.path = path;
    this.fd = fd;
    this.#hold = hold;
  }

  static async open(path: string): Promise<StdinFifo> {
    let info: Deno.FileInfo;
    try {
      info = await Deno.stat(path);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) {
        throw invalidArgument(`Cannot open the stdin of the process: "${path}" does not exist`);
      }
      throw err;
    }
    if (!info.isFifo) {
      throw invalidArgument(`Cannot open the stdin of the process: "${path}" is not a FIFO`);
    }
    const fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    let hold: number;
    try {
      hold = open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    } catch (err) {
      close(fd);
      throw err;
    }
    return new StdinFifo(path, fd, hold);
  }

  /** Closes the held write end (`CloseIO`): stdin ends once the client closed its end too. */
  closeHold(): void {
    if (this.#hold < 0) return;
    close(this.#hold);
    this.#hold = -1;
  }

  close(): void {
    this.closeHold();
    close(this.fd);
  }
}

const BUFFER_SIZE = 32 * 1024;

/**
 * Copies from the raw non-blocking `fd` to `onData` until end of file (0 or EIO: a pty whose
 * slave side is gone) or until `wake` is signalled.
 */
async function pumpRaw(
  fd: number,
  wake: number,
  onData: (data: Uint8Array) => Promise<boolean>,
): Promise<void> {
  const buf = new Uint8Array(BUFFER_SIZE);
  for (;;) {
    const [, woken] = await pollAsync([{ fd, events: POLLIN }, { fd: wake, events: POLLIN }]);
    if (woken !== 0) return;
    let n: number;
    try {
      n = read(fd, buf);
    } catch (err) {
      if (isErrno(err, "EAGAIN") || isErrno(err, "EINTR")) continue;
      if (isErrno(err, "EIO")) return;
      throw err;
    }
    if (n === 0) return;
    if (!await onData(buf.slice(0, n))) return;
  }
}

/** Writes all of `data` to the raw non-blocking `fd`; false when `wake` was signalled first. */
async function writeRaw(fd: number, wake: number, data: Uint8Array): Promise<boolean> {
  let off = 0;
  while (off < data.length) {
    try {
      off += write(fd, data.slice(off));
      continue;
    } catch (err) {
      if (!isErrno(err, "EAGAIN") && !isErrno(err, "EINTR")) throw err;
    }
    const [, woken] = await pollAsync([{ fd, events: POLLOUT }, { fd: wake, events: POLLIN }]);
    if (woken !== 0) return false;
  }
  return true;
}

/** The stdio plumbing of one process. Open it before runc runs, attach it after. */
export class ProcessIO {
  readonly stdio: Stdio;
  readonly #log: Logger;
  readonly #stdout: Sink | null;
  readonly #stderr: Sink | null;
  readonly #stdin: StdinFifo | null;
  readonly #wake: number;
  readonly #outputs: Promise<void>[] = [];
  readonly #tasks: Promise<void>[] = [];
  readonly #readers: ReadableStreamDefaultReader<Uint8Array>[] = [];
  #master = -1;
  #stopped = false;
  readonly #stop = Promise.withResolvers<void>();
  #closing: Promise<void> | null = null;

  private constructor(
    stdio: Stdio,
    log: Logger,
    stdout: Sink | null,
    stderr: Sink | null,
    stdin: StdinFifo | null,
  ) {
    this.stdio = stdio;
    this.#log = log;
    this.#stdout = stdout;
    this.#stderr = stderr;
    this.#stdin = stdin;
    this.#wake = eventfd();
  }

  /**
   * Opens the destinations named by `stdio`: output FIFOs (read-write), a `file://` URI for
   * both output streams (created, appended to), and the stdin FIFO.
   *
   * @throws {TainerdError} InvalidArgument for a missing path or an unknown scheme;
   * NotImplemented for `binary://`
   */
  static async open(stdio: Stdio, log: Logger): Promise<ProcessIO> {
    checkScheme(stdio.stdout, "stdout");
    checkScheme(stdio.stderr, "stderr");
    let stdout: Sink | null = null;
    let stderr: Sink | null = null;
    let stdin: StdinFifo | null = null;
    try {
      const fileUri = stdio.stdout.startsWith("file://");
      if (stdio.stdout !== "") stdout = await openSink(stdio.stdout, "stdout");
      if (!stdio.terminal) {
        if (fileUri && stdout !== null) stderr = stdio.stderr !== "" ? stdout.ref() : null;
        else if (stdio.stderr !== "" && stdio.stderr === stdio.stdout) stderr = stdout!.ref();
        else if (stdio.stderr !== "") stderr = await openSink(stdio.stderr, "stderr");
      }
      if (stdio.stdin !== "") stdin = await StdinFifo.open(stdio.stdin);
      return new ProcessIO(stdio, log, stdout, stderr, stdin);
    } catch (err) {
      stdout?.release();
      stderr?.release();
      stdin?.close();
      throw err;
    }
  }

  /** Which streams runc gets as pipes (pipe mode). */
  runcStdio(): RuncStdio {
    return {
      stdin: this.#stdin !== null,
      stdout: this.#stdout !== null,
      stderr: this.#stderr !== null,
    };
  }

  /** Pipe mode: starts copying between runc's piped stdio (inherited by the process) and the FIFOs. */
  attachPipes(child: Deno.ChildProcess): void {
    const copyOut = (stream: ReadableStream<Uint8Array>, sink: Sink) => {
      const reader = stream.getReader();
      this.#readers.push(reader);
      this.#outputs.push((async () => {
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            if (!await sink.write(value, this.#wake, this.#log)) break;
          }
        } catch (err) {
          if (!this.#stopped) this.#log.warn("process output copy failed", { error: `${err}` });
        } finally {
          sink.release();
        }
      })());
    };
    if (this.#stdout !== null) copyOut(child.stdout, this.#stdout);
    if (this.#stderr !== null) copyOut(child.stderr, this.#stderr);
    const stdin = this.#stdin;
    if (stdin !== null) {
      const writer = child.stdin.getWriter();
      this.#tasks.push((async () => {
        try {
          // A write the process never reads must not hold up close(): race it with the stop.
          await pumpRaw(stdin.fd, this.#wake, (data) =>
            Promise.race([
              writer.write(data).then(() => true, () => false), // false: the process is gone
              this.#stop.promise.then(() => false),
            ]));
        } catch (err) {
          this.#log.warn("process stdin copy failed", { error: `${err}` });
        }
        if (this.#stopped) writer.abort().catch(() => {});
        else await writer.close().catch(() => {});
      })());
    }
  }

  /** Console mode: takes the pty master from runc and starts copying to and from it. */
  attachConsole(master: number): void {
    this.#master = master;
    setNonblocking(master, true);
    const stdout = this.#stdout;
    this.#outputs.push((async () => {
      try {
        await pumpRaw(
          master,
          this.#wake,
          (data) =>
            stdout === null ? Promise.resolve(true) : stdout.write(data, this.#wake, this.#log),
        );
      } catch (err) {
        if (!this.#stopped) this.#log.warn("console output copy failed", { error: `${err}` });
      } finally {
        stdout?.release();
      }
    })());
    const stdin = this.#stdin;
    if (stdin !== null) {
      this.#tasks.push((async () => {
        try {
          await pumpRaw(stdin.fd, this.#wake, (data) => writeRaw(master, this.#wake, data));
        } catch (err) {
          if (!this.#stopped) this.#log.warn("console input copy failed", { error: `${err}` });
        }
        // As containerd: once stdin is closed, the console is shut down.
        if (!this.#stopped) void this.close();
      })());
    }
  }

  /** `CloseIO`: lets stdin reach end of file once the client has closed its end. */
  closeStdin(): void {
    this.#stdin?.closeHold();
  }

  /** `ResizePty`: sets the console's window size; a no-op without a console. */
  resize(width: number, height: number): void {
    if (this.#master < 0) return;
    setWinSize(this.#master, { width, height });
  }

  /** Resolves when the output has been copied to the end, or after `timeoutMs`. */
  async drain(timeoutMs: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([
      Promise.allSettled(this.#outputs),
      new Promise((resolve) => timer = setTimeout(resolve, timeoutMs)),
    ]);
    clearTimeout(timer);
  }

  /** Stops every copy and closes every descriptor. Idempotent. */
  close(): Promise<void> {
    return this.#closing ??= this.#close();
  }

  async #close(): Promise<void> {
    this.#stopped = true;
    this.#stop.resolve();
    try {
      write(this.#wake, new Uint8Array(new BigUint64Array([1n]).buffer));
    } catch (err) {
      if (!(err instanceof SysError)) throw err;
    }
    for (const reader of this.#readers) reader.cancel().catch(() => {});
    await Promise.allSettled([...this.#outputs, ...this.#tasks]);
    if (this.#outputs.length === 0) {
      // never attached: the sinks are still ours
      this.#stdout?.release();
      this.#stderr?.release();
    }
    this.#stdin?.close();
    if (this.#master >= 0) close(this.#master);
    this.#master = -1;
    close(this.#wake);
  }
}
