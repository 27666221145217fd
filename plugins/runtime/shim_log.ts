/**
 * The shim log FIFO, as containerd's `openShimLog`: `<bundle>/log`, created and held open
 * read-write and non-blocking by the daemon, so that a shim that opens it write-only (as
 * containerd's shims do, without O_CREAT) never blocks; its lines are copied into the daemon's
 * log.
 *
 * @module
 */

import type { Logger } from "../../log.ts";
import {
  close,
  isErrno,
  mknod,
  O_CLOEXEC,
  O_NONBLOCK,
  O_RDWR,
  open,
  read,
  S_IFIFO,
} from "../../sys/libc.ts";

const POLL_MS = 200;

/** An open shim log FIFO being drained into a logger. */
export class ShimLog {
  readonly #fd: number;
  readonly #log: Logger;
  readonly #timer: ReturnType<typeof setInterval>;
  readonly #buf = new Uint8Array(64 * 1024);
  readonly #decoder = new TextDecoder();
  #pending = "";
  #closed = false;

  private constructor(fd: number, log: Logger) {
    this.#fd = fd;
    this.#log = log;
    this.#timer = setInterval(() => this.#drain(), POLL_MS);
    Deno.unrefTimer(this.#timer);
  }

  /** Creates (if missing) and opens `<bundle>/log`; lines go to `log` at debug level. */
  static open(bundle: string, log: Logger): ShimLog {
    const path = `${bundle}/log`;
    try {
      mknod(path, S_IFIFO | 0o700);
    } catch (err) {
      if (!isErrno(err, "EEXIST")) throw err;
    }
    return new ShimLog(open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC), log);
  }

  #drain(): void {
    if (this.#closed) return;
    for (;;) {
      let n: number;
      try {
        n = read(this.#fd, this.#buf);
      } catch {
        break; // EAGAIN: nothing more for now
      }
      if (n <= 0) break;
      this.#pending += this.#decoder.decode(this.#buf.subarray(0, n), { stream: true });
    }
    const lines = this.#pending.split("\n");
    this.#pending = lines.pop() ?? "";
    for (const line of lines) if (line.trim() !== "") this.#log.debug(line.trim());
  }

  /** Drains what is left and closes the FIFO. */
  close(): void {
    if (this.#closed) return;
    this.#drain();
    this.#closed = true;
    clearInterval(this.#timer);
    try {
      close(this.#fd);
    } catch {
      // already closed
    }
  }
}
