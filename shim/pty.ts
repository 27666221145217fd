/**
 * Terminal window sizes on a pty master: `ioctl(TIOCSWINSZ)` / `ioctl(TIOCGWINSZ)` through the
 * shared libc binding in `sys/libc.ts`.
 *
 * @module
 */

import { errno, libc, SysError } from "../sys/libc.ts";

/** `TIOCGWINSZ` (x86_64 and aarch64): get the window size. */
export const TIOCGWINSZ = 0x5413;
/** `TIOCSWINSZ` (x86_64 and aarch64): set the window size. */
export const TIOCSWINSZ = 0x5414;

function ioctl(fd: number, request: number, arg: Uint8Array<ArrayBuffer>, name: string): void {
  if (libc().ioctl(fd, BigInt(request), arg) === -1) {
    throw new SysError(errno(), "ioctl", [fd, name]);
  }
}

/** A terminal size in character cells. */
export interface WinSize {
  /** Rows (`ws_row`). */
  height: number;
  /** Columns (`ws_col`). */
  width: number;
}

/** Sets the window size of the terminal `fd` (a pty master), as containerd's `console.Resize`. */
export function setWinSize(fd: number, size: WinSize): void {
  // struct winsize { unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel; }
  const buf = new Uint8Array(8);
  const view = new DataView(buf.buffer);
  view.setUint16(0, size.height, true);
  view.setUint16(2, size.width, true);
  ioctl(fd, TIOCSWINSZ, buf, "TIOCSWINSZ");
}

/** The window size of the terminal `fd`. */
export function getWinSize(fd: number): WinSize {
  const buf = new Uint8Array(8);
  ioctl(fd, TIOCGWINSZ, buf, "TIOCGWINSZ");
  const view = new DataView(buf.buffer);
  return { height: view.getUint16(0, true), width: view.getUint16(2, true) };
}
