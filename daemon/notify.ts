/**
 * systemd's readiness protocol (`sd_notify(3)`): newline-separated `KEY=VALUE` assignments
 * (`READY=1`, `STOPPING=1`, `STATUS=…`) sent as one datagram to the `AF_UNIX` socket named by
 * `$NOTIFY_SOCKET`, a path or, with a leading `@`, an abstract socket.
 *
 * Deno has no unix datagram sockets, so the datagram goes out through the project's FFI
 * binding to libc (`socket`, `connect`, `write`).
 *
 * @module
 */

import { check, close, libc, write } from "../sys/libc.ts";

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
/** `sizeof(struct sockaddr_un)`: a 2-byte family and a 108-byte path. */
const SOCKADDR_UN_SIZE = 110;
const SUN_PATH_OFFSET = 2;

/** The environment variable systemd sets for `Type=notify` services. */
export const NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET";

/**
 * A `struct sockaddr_un` for `address` and its length: a filesystem path (NUL-terminated) or,
 * for `@name`, the abstract name (a leading NUL byte, no terminator).
 *
 * @throws {TypeError} when the address is empty, relative or too long
 */
export function sockaddrUn(address: string): { addr: Uint8Array<ArrayBuffer>; len: number } {
  const abstract = address.startsWith("@");
  if (!abstract && !address.startsWith("/")) {
    throw new TypeError(
      `Unsupported notify socket "${address}": expected an absolute path or @abstract name`,
    );
  }
  const name = new TextEncoder().encode(abstract ? address.slice(1) : address);
  // A path needs its NUL terminator; an abstract name needs its leading NUL.
  const used = name.length + 1;
  if (used > SOCKADDR_UN_SIZE - SUN_PATH_OFFSET || (abstract && name.length === 0)) {
    throw new TypeError(`Notify socket address "${address}" is empty or too long`);
  }
  const addr = new Uint8Array(SOCKADDR_UN_SIZE);
  new DataView(addr.buffer).setUint16(0, AF_UNIX, true);
  addr.set(name, SUN_PATH_OFFSET + (abstract ? 1 : 0));
  return { addr, len: SUN_PATH_OFFSET + used };
}

/**
 * Sends `state` (e.g. `"READY=1\nSTATUS=serving"`) as one datagram to the notify socket
 * `address`.
 *
 * @throws {SysError} when the socket cannot be reached (e.g. ECONNREFUSED, ENOENT)
 */
export function sendNotify(address: string, state: string): void {
  const { addr, len } = sockaddrUn(address);
  const data = new TextEncoder().encode(state);
  const fd = check(libc().socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket");
  try {
    check(libc().connect(fd, addr, len), "connect", [address]);
    const n = write(fd, data);
    if (n !== data.length) throw new Error(`Short write to notify socket "${address}"`);
  } finally {
    close(fd);
  }
}

/**
 * The service manager's notify socket, if the process was started with one. The daemon keeps
 * it for itself: no child (shim, runc) may inherit `NOTIFY_SOCKET`, or runc would relay the
 * container's readiness to systemd instead of starting it (go-runc filters it out the same
 * way).
 */
export class Notifier {
  /** The socket address (a path, or `@name` for an abstract socket). */
  readonly address: string;

  constructor(address: string) {
    this.address = address;
  }

  /**
   * The notifier for `$NOTIFY_SOCKET`, which is removed from the environment; null when the
   * variable is unset or empty (not started by systemd as `Type=notify`).
   */
  static fromEnv(): Notifier | null {
    const address = Deno.env.get(NOTIFY_SOCKET_ENV) ?? "";
    Deno.env.delete(NOTIFY_SOCKET_ENV);
    return address === "" ? null : new Notifier(address);
  }

  /** Sends raw assignments, one per line. */
  notify(...assignments: string[]): void {
    sendNotify(this.address, assignments.join("\n"));
  }

  /** `READY=1`: start-up finished, the API answers. */
  ready(status?: string): void {
    this.notify("READY=1", ...statusLine(status));
  }

  /** `STOPPING=1`: shutdown began. */
  stopping(status?: string): void {
    this.notify("STOPPING=1", ...statusLine(status));
  }

  /** `STATUS=…`: a free-form status line that `systemctl status` shows. */
  status(status: string): void {
    this.notify(...statusLine(status));
  }
}

function statusLine(status: string | undefined): string[] {
  return status === undefined ? [] : [`STATUS=${status.replaceAll("\n", " ")}`];
}
