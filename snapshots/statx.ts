/**
 * `lstat` with nanosecond times, through statx(2). Deno's `Deno.lstat` and `node:fs` stats
 * round times to milliseconds; exact copies (native snapshotter) and containerd's change
 * detection (which compares nanoseconds) need the real values.
 *
 * The `statx` symbol is bound in `sys/libc.ts`, the one FFI module; this file decodes its result.
 *
 * @module
 */

import { AT_FDCWD, AT_SYMLINK_NOFOLLOW, cstring, errno, libc, SysError } from "../sys/libc.ts";

/** `STATX_BASIC_STATS`: every field of stat(2). */
const STATX_BASIC_STATS = 0x7ff;

/** File type bits of a mode. */
export const S_IFMT = 0o170000;

/** A time with nanosecond precision. */
export interface StatTime {
  /** Seconds since the epoch. */
  sec: number;
  /** Nanoseconds, 0 ≤ nsec < 1e9. */
  nsec: number;
}

/** The result of {@link lstatx}. */
export interface Stat {
  /** `st_mode`: type bits and permission bits. */
  mode: number;
  /** Owner. */
  uid: number;
  /** Group. */
  gid: number;
  /** Link count. */
  nlink: number;
  /** Inode number (as a number: exact below 2^53). */
  ino: number;
  /** Device of the filesystem, `major:minor`. */
  dev: string;
  /** Major number of the device a device node stands for. */
  rdevMajor: number;
  /** Minor number of the device a device node stands for. */
  rdevMinor: number;
  /** Size in bytes. */
  size: number;
  /** Allocated 512-byte blocks. */
  blocks: number;
  /** Access time. */
  atime: StatTime;
  /** Modification time. */
  mtime: StatTime;
  /** Status change time. */
  ctime: StatTime;
}

const buf = new Uint8Array(256);
const view = new DataView(buf.buffer);

function time(at: number): StatTime {
  return { sec: Number(view.getBigInt64(at, true)), nsec: view.getUint32(at + 8, true) };
}

function parse(): Stat {
  return {
    mode: view.getUint16(28, true),
    uid: view.getUint32(20, true),
    gid: view.getUint32(24, true),
    nlink: view.getUint32(16, true),
    ino: Number(view.getBigUint64(32, true)),
    dev: `${view.getUint32(136, true)}:${view.getUint32(140, true)}`,
    rdevMajor: view.getUint32(128, true),
    rdevMinor: view.getUint32(132, true),
    size: Number(view.getBigUint64(40, true)),
    blocks: Number(view.getBigUint64(48, true)),
    atime: time(64),
    mtime: time(112),
    ctime: time(96),
  };
}

function call(path: string): number {
  const r = libc().statx(AT_FDCWD, cstring(path), AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, buf);
  return r === -1 ? errno() : 0;
}

/**
 * lstat(2) with nanosecond times: `path` itself, not a symlink's target.
 *
 * @throws {SysError} e.g. ENOENT (NotFound)
 */
export function lstatx(path: string): Stat {
  const e = call(path);
  if (e !== 0) throw new SysError(e, "statx", [path]);
  return parse();
}

/** Like {@link lstatx}, but `null` when `path` does not exist (ENOENT or ENOTDIR). */
export function lstatxOrNull(path: string): Stat | null {
  const e = call(path);
  if (e === 2 || e === 20) return null;
  if (e !== 0) throw new SysError(e, "statx", [path]);
  return parse();
}

/** The type bits of a mode: `S_IFREG`, `S_IFDIR`… */
export function fileType(mode: number): number {
  return mode & S_IFMT;
}
