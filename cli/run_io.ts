/**
 * A task's stdio on the client side, as containerd's `cio`: FIFOs in a private temporary
 * directory, opened in the background (an open blocks until the shim opens the other end),
 * copied to and from this process's stdio; a raw local terminal for `-t`.
 *
 * @module
 */

import { mknod, S_IFIFO } from "../sys/libc.ts";

/** The FIFO paths handed to Tasks.Create / Exec (empty for none). */
export interface FifoPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

async function writeAll(w: { write(p: Uint8Array): Promise<number> }, data: Uint8Array) {
  for (let off = 0; off < data.byteLength;) off += await w.write(data.subarray(off));
}

/** A set of FIFOs and the copies between them and this process's stdio. */
export class TaskIO {
  readonly paths: FifoPaths;
  readonly #dir: string;
  #opened: Promise<Deno.FsFile>[] = [];
  #copies: Promise<void>[] = [];
  #stdinFile?: Deno.FsFile;
  #closed = false;
  /** Called when stdin reached its end (to send CloseIO). */
  onStdinEnd?: () => void;

  private constructor(dir: string, paths: FifoPaths) {
    this.#dir = dir;
    this.paths = paths;
  }

  /**
   * Creates the FIFOs (`<id>-stdin`, `-stdout`, and `-stderr` unless `terminal`) and starts
   * opening and copying them.
   */
  static async create(
    id: string,
    opts: { terminal: boolean; stdin: boolean },
  ): Promise<TaskIO> {
    const dir = await Deno.makeTempDir({ prefix: "tainerd-fifo-" });
    await Deno.chmod(dir, 0o700);
    const path = (s: string) => `${dir}/${id}-${s}`;
    const paths: FifoPaths = {
      stdin: opts.stdin ? path("stdin") : "",
      stdout: path("stdout"),
      stderr: opts.terminal ? "" : path("stderr"),
      terminal: opts.terminal,
    };
    for (const p of [paths.stdin, paths.stdout, paths.stderr]) if (p) mknod(p, S_IFIFO | 0o700);
    const io = new TaskIO(dir, paths);
    io.#start();
    return io;
  }

  /**
   * Attaches to FIFOs that already exist (a task created by another client, as `ctr task
   * attach`): they are opened and copied, never created nor removed.
   */
  static attach(paths: FifoPaths): TaskIO {
    const io = new TaskIO("", paths);
    io.#start();
    return io;
  }

  #start(): void {
    const { stdin, stdout, stderr } = this.paths;
    const copyOut = (path: string, target: { write(p: Uint8Array): Promise<number> }) => {
      const opened = Deno.open(path, { read: true });
      this.#opened.push(opened);
      this.#copies.push((async () => {
        const f = await opened;
        const buf = new Uint8Array(64 * 1024);
        try {
          for (;;) {
            const n = await f.read(buf);
            if (n === null) break;
            await writeAll(target, buf.subarray(0, n));
          }
        } catch {
          // The FIFO was torn down: nothing more to copy.
        } finally {
          try {
            f.close();
          } catch { /* closed */ }
        }
      })());
    };
    copyOut(stdout, Deno.stdout);
    if (stderr) copyOut(stderr, Deno.stderr);
    if (stdin) {
      const opened = Deno.open(stdin, { write: true });
      this.#opened.push(opened);
      // Not awaited at the end: stdin may never end (a terminal); the process exits anyway.
      (async () => {
        const f = await opened;
        this.#stdinFile = f;
        const buf = new Uint8Array(64 * 1024);
        try {
          for (;;) {
            const n = await Deno.stdin.read(buf);
            if (n === null || this.#closed) break;
            await writeAll(f, buf.subarray(0, n));
          }
        } catch {
          // The task is gone.
        } finally {
          try {
            f.close();
          } catch { /* closed */ }
          if (!this.#closed) this.onStdinEnd?.();
        }
      })();
    }
  }

  /** Waits until the output FIFOs reached their end (the shim closed them). */
  async wait(): Promise<void> {
    await Promise.all(this.#copies);
  }

  /**
   * Unblocks opens the shim never answered (a failed create) by opening the other ends
   * ourselves, then removes the FIFOs.
   */
  async cancel(): Promise<void> {
    this.#closed = true;
    for (const p of [this.paths.stdin, this.paths.stdout, this.paths.stderr]) {
      if (!p) continue;
      try {
        // O_RDWR never blocks on a FIFO and satisfies a pending open of either end.
        const f = await Deno.open(p, { read: true, write: true });
        f.close();
      } catch { /* gone */ }
    }
    await Promise.allSettled(this.#opened);
    await this.close();
  }

  /** Removes the FIFOs and their directory. */
  async close(): Promise<void> {
    this.#closed = true;
    try {
      this.#stdinFile?.close();
    } catch { /* closed */ }
    if (this.#dir) await Deno.remove(this.#dir, { recursive: true }).catch(() => {});
  }
}

/** Puts the local terminal in raw mode (when stdin is one); returns how to restore it. */
export function rawTerminal(): () => void {
  if (!Deno.stdin.isTerminal()) return () => {};
  Deno.stdin.setRaw(true, { cbreak: false });
  return () => {
    try {
      Deno.stdin.setRaw(false);
    } catch { /* gone */ }
  };
}

/** The local terminal's size, if stdout (or stdin) is one. */
export function consoleSize(): { columns: number; rows: number } | undefined {
  try {
    return Deno.consoleSize();
  } catch {
    return undefined;
  }
}
