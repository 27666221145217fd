/**
 * A raw unix-socket layer over libc for passing file descriptors with `SCM_RIGHTS`, and on it
 * the receiving end of runc's `--console-socket`: runc connects, sends the pty master of the
 * container's console (with the pty's name as data), and disconnects.
 *
 * Deno's own unix sockets do not expose their fds, hence the raw layer. Waits run as
 * {@linkcode pollAsync} calls on Deno's FFI thread pool; the accepting and receiving calls
 * themselves are non-blocking and run on the calling thread, so errno is reliable.
 *
 * @module
 */

import { canceled, unavailable } from "../plugins/errdefs.ts";
import {
  addressOf,
  check,
  Errno,
  errno,
  eventfd,
  libc,
  pollAsync,
  POLLIN,
  SysError,
  write,
} from "./libc.ts";

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_DONTWAIT = 0x40;
const MSG_CMSG_CLOEXEC = 0x40000000;
/** The longest socket path: `sun_path` is 108 bytes including the NUL. */
const MAX_PATH = 107;

const encoder = new TextEncoder();

function sockaddrUn(path: string): Uint8Array<ArrayBuffer> {
  const bytes = encoder.encode(path);
  if (bytes.includes(0)) throw new TypeError(`Socket path contains a NUL byte: ${path}`);
  if (bytes.length > MAX_PATH) throw new SysError(Errno.ENAMETOOLONG, "bind", [path]);
  const addr = new Uint8Array(2 + bytes.length + 1);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(bytes, 2);
  return addr;
}

function align8(n: number): number {
  return (n + 7) & ~7;
}

/** What {@linkcode recvmsgFd} received. */
export interface ReceivedFd {
  /** The first file descriptor passed with `SCM_RIGHTS`, or null if none was (others are closed). */
  fd: number | null;
  /** The ordinary bytes received; empty with no `fd` means the peer closed the connection. */
  data: Uint8Array;
}

/**
 * recvmsg(2) on a raw unix socket, taking a file descriptor passed with `SCM_RIGHTS` (marked
 * close-on-exec). Further fds in the same message are closed.
 *
 * @param flags extra `MSG_*` flags, e.g. `MSG_DONTWAIT` (0x40)
 * @throws {SysError} EAGAIN on a non-blocking socket with nothing to read
 */
export function recvmsgFd(sockFd: number, flags = 0): ReceivedFd {
  const data = new Uint8Array(4096);
  const control = new Uint8Array(256);
  const iov = new BigUint64Array([addressOf(data), BigInt(data.length)]);
  const msg = new Uint8Array(56);
  const m = new DataView(msg.buffer);
  m.setBigUint64(16, addressOf(iov), true); // msg_iov
  m.setBigUint64(24, 1n, true); // msg_iovlen
  m.setBigUint64(32, addressOf(control), true); // msg_control
  m.setBigUint64(40, BigInt(control.length), true); // msg_controllen
  const n = check(libc().recvmsg(sockFd, msg, flags | MSG_CMSG_CLOEXEC), "recvmsg", [sockFd]);
  // keep the buffers whose addresses were stored alive until here
  void iov;
  const controlLen = Number(m.getBigUint64(40, true));
  const fds: number[] = [];
  const c = new DataView(control.buffer);
  for (let off = 0; off + 16 <= controlLen;) {
    const len = Number(c.getBigUint64(off, true));
    if (len < 16) break;
    if (c.getInt32(off + 8, true) === SOL_SOCKET && c.getInt32(off + 12, true) === SCM_RIGHTS) {
      for (let p = off + 16; p + 4 <= off + len; p += 4) fds.push(c.getInt32(p, true));
    }
    off += align8(len);
  }
  for (const extra of fds.slice(1)) libc().close(extra);
  return { fd: fds[0] ?? null, data: data.slice(0, n) };
}

/**
 * sendmsg(2) on a raw unix socket: passes `fd` with `SCM_RIGHTS` along with `data` (at least
 * one byte is needed on a stream socket).
 *
 * @returns the count of data bytes sent
 */
export function sendmsgFd(
  sockFd: number,
  fd: number,
  data: Uint8Array = new Uint8Array(1),
): number {
  const payload = data.length === 0 ? new Uint8Array(1) : new Uint8Array(data);
  const control = new Uint8Array(align8(16 + 4));
  const c = new DataView(control.buffer);
  c.setBigUint64(0, 20n, true); // CMSG_LEN(sizeof(int))
  c.setInt32(8, SOL_SOCKET, true);
  c.setInt32(12, SCM_RIGHTS, true);
  c.setInt32(16, fd, true);
  const iov = new BigUint64Array([addressOf(payload), BigInt(payload.length)]);
  const msg = new Uint8Array(56);
  const m = new DataView(msg.buffer);
  m.setBigUint64(16, addressOf(iov), true);
  m.setBigUint64(24, 1n, true);
  m.setBigUint64(32, addressOf(control), true);
  m.setBigUint64(40, BigInt(control.length), true);
  return check(libc().sendmsg(sockFd, msg, 0), "sendmsg", [sockFd, fd]);
}

/**
 * Connects a new raw unix stream socket (close-on-exec, blocking) to `path`; returns its fd,
 * to be closed with `close` from `libc.ts`.
 *
 * @throws {SysError} ENOENT or ECONNREFUSED when nothing listens there
 */
export function unixConnect(path: string): number {
  const addr = sockaddrUn(path);
  const fd = check(libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), "socket");
  const r = libc().connect(fd, addr, addr.length);
  if (r === -1) {
    const e = errno();
    libc().close(fd);
    throw new SysError(e, "connect", [path]);
  }
  return fd;
}

/** The listening end of a console socket, from {@linkcode listenConsoleSocket}. */
export interface ConsoleSocket {
  /** The socket's path, to pass as runc's `--console-socket`. */
  readonly path: string;
  /**
   * Waits for a connection, receives the file descriptor sent over it (runc's pty master,
   * close-on-exec, blocking as runc left it), closes the connection and returns the raw fd.
   * The caller owns the fd.
   *
   * @throws {TainerdError} Canceled when the socket is closed meanwhile; Unavailable when the
   * peer disconnects without sending a descriptor
   */
  accept(): Promise<number>;
  /**
   * Stops listening: pending `accept()` calls reject, the socket file is removed, and the fds
   * are closed once no wait uses them any more (when the returned promise resolves).
   */
  close(): Promise<void>;
  /** Same as {@linkcode ConsoleSocket.close}. */
  [Symbol.asyncDispose](): Promise<void>;
}

class Listener implements ConsoleSocket {
  readonly path: string;
  readonly #fd: number;
  readonly #wake: number;
  readonly #pending = new Set<Promise<unknown>>();
  #closed = false;
  #closing: Promise<void> | null = null;

  constructor(path: string, fd: number, wake: number) {
    this.path = path;
    this.#fd = fd;
    this.#wake = wake;
  }

  accept(): Promise<number> {
    if (this.#closed) return Promise.reject(this.#closedError());
    const p = this.#accept();
    this.#pending.add(p);
    const forget = () => this.#pending.delete(p);
    p.then(forget, forget);
    return p;
  }

  close(): Promise<void> {
    if (this.#closing !== null) return this.#closing;
    this.#closed = true;
    const one = new Uint8Array(new BigUint64Array([1n]).buffer);
    write(this.#wake, one); // wakes every pending poll; never read, so it stays readable
    try {
      Deno.removeSync(this.path);
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    this.#closing = Promise.allSettled([...this.#pending]).then(() => {
      libc().close(this.#fd);
      libc().close(this.#wake);
    });
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  #closedError() {
    return canceled(`Console socket ${JSON.stringify(this.path)} is closed`);
  }

  async #readable(fd: number): Promise<void> {
    const [, woken] = await pollAsync([{ fd, events: POLLIN }, { fd: this.#wake, events: POLLIN }]);
    if (woken !== 0 || this.#closed) throw this.#closedError();
  }

  async #accept(): Promise<number> {
    let conn: number;
    for (;;) {
      await this.#readable(this.#fd);
      conn = libc().accept4(this.#fd, null, null, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (conn !== -1) break;
      const e = errno();
      if (e === Errno.EAGAIN || e === Errno.EINTR || e === Errno.ECONNABORTED) continue;
      throw new SysError(e, "accept4", [this.path]);
    }
    try {
      for (;;) {
        await this.#readable(conn);
        let got: ReceivedFd;
        try {
          got = recvmsgFd(conn, MSG_DONTWAIT);
        } catch (err) {
          if (
            err instanceof SysError && (err.errno === Errno.EAGAIN || err.errno === Errno.EINTR)
          ) {
            continue;
          }
          throw err;
        }
        if (got.fd !== null) return got.fd;
        if (got.data.length === 0) {
          throw unavailable(
            `Console socket ${
              JSON.stringify(this.path)
            }: peer disconnected without sending a file descriptor`,
          );
        }
      }
    } finally {
      libc().close(conn);
    }
  }
}

/**
 * Listens on a new unix socket at `path` for runc's `--console-socket`. The file must not exist;
 * `close()` removes it. Paths are limited to 107 bytes.
 *
 * @example
 * ```ts
 * const sock = listenConsoleSocket(`${dir}/console.sock`);
 * // runc create --console-socket ${sock.path} ...
 * const master = await sock.accept();
 * await sock.close();
 * ```
 */
export function listenConsoleSocket(path: string): ConsoleSocket {
  const addr = sockaddrUn(path);
  const fd = check(
    libc().socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0),
    "socket",
  );
  let wake = -1;
  try {
    check(libc().bind(fd, addr, addr.length), "bind", [path]);
    check(libc().listen(fd, 16), "listen", [path]);
    wake = eventfd();
  } catch (err) {
    libc().close(fd);
    if (!(err instanceof SysError && err.syscall === "bind")) Deno.removeSync(path);
    throw err;
  }
  return new Listener(path, fd, wake);
}
