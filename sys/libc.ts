/**
 * The one FFI binding to glibc (`libc.so.6`) for the Linux system calls Deno lacks: mount,
 * umount2, mknod, lchown, the `l*xattr` family, utimensat, prctl, kill, waitpid, setsid, umask,
 * and the few socket calls needed to receive a file descriptor with `SCM_RIGHTS`.
 *
 * The library is opened lazily, once per isolate, on the first call. Every wrapper throws a
 * {@linkcode SysError} (a classified {@linkcode TainerdError}) when the call fails; `errno` is read
 * through `__errno_location()` right after the failing call, on the same thread.
 *
 * Blocking calls have `*Async` variants that hold no thread per wait: `pollAsync` shares one
 * poll(2) on Deno's FFI thread pool (`nonblocking: true`) among all pending waits, and
 * `waitpidAsync` checks with `WNOHANG` on SIGCHLD. errno is thread-local and cannot be read
 * from the pool thread, so when the pooled poll fails it is repeated without blocking on the
 * main thread to learn the error.
 *
 * The constants are those of Linux on x86_64 and aarch64 (generic ABI); the structure layouts
 * assume a 64-bit target.
 *
 * @module
 */

import { type ErrorKind, TainerdError } from "../plugins/errdefs.ts";

/** The bound libc functions and their C signatures (x86_64/aarch64 Linux, glibc). */
export const LIBC_SYMBOLS = {
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
  getpagesize: { parameters: [], result: "i32" },
  mount: { parameters: ["buffer", "buffer", "buffer", "u64", "buffer"], result: "i32" },
  umount2: { parameters: ["buffer", "i32"], result: "i32" },
  mknod: { parameters: ["buffer", "u32", "u64"], result: "i32" },
  lchown: { parameters: ["buffer", "u32", "u32"], result: "i32" },
  lsetxattr: { parameters: ["buffer", "buffer", "buffer", "usize", "i32"], result: "i32" },
  lgetxattr: { parameters: ["buffer", "buffer", "buffer", "usize"], result: "isize" },
  llistxattr: { parameters: ["buffer", "buffer", "usize"], result: "isize" },
  lremovexattr: { parameters: ["buffer", "buffer"], result: "i32" },
  utimensat: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  statfs: { parameters: ["buffer", "buffer"], result: "i32" },
  prctl: { parameters: ["i32", "u64", "u64", "u64", "u64"], result: "i32" },
  getpid: { parameters: [], result: "i32" },
  malloc_trim: { parameters: ["usize"], result: "i32" },
  kill: { parameters: ["i32", "i32"], result: "i32" },
  waitpid: { parameters: ["i32", "buffer", "i32"], result: "i32" },
  setsid: { parameters: [], result: "i32" },
  umask: { parameters: ["u32"], result: "u32" },
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  fcntl: { parameters: ["i32", "i32", "i64"], result: "i32" },
  ioctl: { parameters: ["i32", "u64", "buffer"], result: "i32" },
  statx: { parameters: ["i32", "buffer", "i32", "u32", "buffer"], result: "i32" },
  poll: { parameters: ["buffer", "u64", "i32"], result: "i32" },
  poll_nb: { name: "poll", parameters: ["buffer", "u64", "i32"], result: "i32", nonblocking: true },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  bind: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  listen: { parameters: ["i32", "i32"], result: "i32" },
  connect: { parameters: ["i32", "buffer", "u32"], result: "i32" },
  accept4: { parameters: ["i32", "pointer", "pointer", "i32"], result: "i32" },
  recvmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
  sendmsg: { parameters: ["i32", "buffer", "i32"], result: "isize" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The symbol table of the bound libc functions (raw: they return -1 and set errno). */
export type LibcSymbols = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

let library: Deno.DynamicLibrary<typeof LIBC_SYMBOLS> | null = null;
let errnoView: Deno.UnsafePointerView | null = null;

/**
 * The raw libc symbols, opening `libc.so.6` on first use. For modules of this directory that
 * need a call without a typed wrapper; check results with {@linkcode check}.
 */
export function libc(): LibcSymbols {
  if (library === null) library = Deno.dlopen("libc.so.6", LIBC_SYMBOLS);
  return library.symbols;
}

/** The calling thread's current `errno`. Only meaningful right after a failed synchronous call. */
export function errno(): number {
  if (errnoView === null) {
    const ptr = libc().__errno_location();
    if (ptr === null) throw new Error("Cannot locate errno: __errno_location returned NULL");
    errnoView = new Deno.UnsafePointerView(ptr);
  }
  return errnoView.getInt32();
}

/** Linux errno numbers by name, for comparison with {@linkcode SysError.errno}. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  ENOEXEC: 8,
  EBADF: 9,
  ECHILD: 10,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  ENOTBLK: 15,
  EBUSY: 16,
  EEXIST: 17,
  EXDEV: 18,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOTTY: 25,
  ETXTBSY: 26,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EMLINK: 31,
  EPIPE: 32,
  EDOM: 33,
  ERANGE: 34,
  EDEADLK: 35,
  ENAMETOOLONG: 36,
  ENOLCK: 37,
  ENOSYS: 38,
  ENOTEMPTY: 39,
  ELOOP: 40,
  ENOMSG: 42,
  ENODATA: 61,
  EPROTO: 71,
  EOVERFLOW: 75,
  ENOTSOCK: 88,
  EMSGSIZE: 90,
  EPROTONOSUPPORT: 93,
  EOPNOTSUPP: 95,
  EAFNOSUPPORT: 97,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOBUFS: 105,
  EISCONN: 106,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EALREADY: 114,
  EINPROGRESS: 115,
  ESTALE: 116,
  EDQUOT: 122,
  ECANCELED: 125,
} as const;

const ERRNO_NAMES: ReadonlyMap<number, string> = new Map(
  Object.entries(Errno).map(([name, value]) => [value, name]),
);

/** The symbolic name of an errno value, e.g. `"ENOENT"` for 2, or `"E<n>"` when unknown. */
export function errnoName(errno: number): string {
  return ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

const ERRNO_KINDS: ReadonlyMap<number, ErrorKind> = new Map<number, ErrorKind>([
  [Errno.ENOENT, "NotFound"],
  [Errno.ESRCH, "NotFound"],
  [Errno.ECHILD, "NotFound"],
  [Errno.ENODATA, "NotFound"],
  [Errno.EEXIST, "AlreadyExists"],
  [Errno.EADDRINUSE, "AlreadyExists"],
  [Errno.EINVAL, "InvalidArgument"],
  [Errno.ENAMETOOLONG, "InvalidArgument"],
  [Errno.ENOTDIR, "InvalidArgument"],
  [Errno.EISDIR, "InvalidArgument"],
  [Errno.EBADF, "InvalidArgument"],
  [Errno.ELOOP, "InvalidArgument"],
  [Errno.EPERM, "PermissionDenied"],
  [Errno.EACCES, "PermissionDenied"],
  [Errno.EBUSY, "Unavailable"],
  [Errno.EAGAIN, "Unavailable"],
  [Errno.ECONNREFUSED, "Unavailable"],
  [Errno.ECONNRESET, "Unavailable"],
  [Errno.EPIPE, "Unavailable"],
  [Errno.ENOSYS, "NotImplemented"],
  [Errno.EOPNOTSUPP, "NotImplemented"],
  [Errno.ENODEV, "NotImplemented"],
  [Errno.ENOSPC, "ResourceExhausted"],
  [Errno.EDQUOT, "ResourceExhausted"],
  [Errno.ENOMEM, "ResourceExhausted"],
  [Errno.EMFILE, "ResourceExhausted"],
  [Errno.ENFILE, "ResourceExhausted"],
  [Errno.ENOBUFS, "ResourceExhausted"],
  [Errno.ENOTEMPTY, "FailedPrecondition"],
  [Errno.EROFS, "FailedPrecondition"],
  [Errno.EXDEV, "FailedPrecondition"],
  [Errno.ETXTBSY, "FailedPrecondition"],
  [Errno.ERANGE, "OutOfRange"],
  [Errno.E2BIG, "OutOfRange"],
  [Errno.EOVERFLOW, "OutOfRange"],
  [Errno.ETIMEDOUT, "DeadlineExceeded"],
  [Errno.ECANCELED, "Canceled"],
  [Errno.EINTR, "Aborted"],
]);

/** The text of `strerror(errno)` ("Invalid argument"), from glibc. */
export function strerror(errno: number): string {
  const ptr = libc().strerror(errno);
  return ptr === null ? `Unknown error ${errno}` : Deno.UnsafePointerView.getCString(ptr);
}

/**
 * A failed system call: `errno` and its name, the call, and a message such as
 * `mount("overlay", "/x", "overlay"): EINVAL (Invalid argument)`. Classified (`kind`) from the
 * errno: ENOENT is NotFound, EEXIST AlreadyExists, EINVAL InvalidArgument, EPERM
 * PermissionDenied, EBUSY Unavailable, and so on; anything unlisted is Internal.
 */
export class SysError extends TainerdError {
  /** The errno value, e.g. 22. */
  readonly errno: number;
  /** The errno name, e.g. `"EINVAL"`. */
  readonly code: string;
  /** The name of the failed call, e.g. `"mount"`. */
  readonly syscall: string;

  /**
   * Builds the error for a failed call.
   *
   * @param errno the errno value
   * @param syscall the name of the call
   * @param args arguments shown in the message: strings are quoted, numbers shown as is
   */
  constructor(errno: number, syscall: string, args: readonly (string | number)[] = []) {
    const code = errnoName(errno);
    const shown = args.map((a) => typeof a === "string" ? JSON.stringify(a) : String(a));
    super(
      ERRNO_KINDS.get(errno) ?? "Internal",
      `${syscall}(${shown.join(", ")}): ${code} (${strerror(errno)})`,
    );
    this.name = "SysError";
    this.errno = errno;
    this.code = code;
    this.syscall = syscall;
  }
}

/** Whether `err` is a {@linkcode SysError} with the given errno name (e.g. `"ENOENT"`). */
export function isErrno(err: unknown, code: string): err is SysError {
  return err instanceof SysError && err.code === code;
}

/**
 * Turns a raw libc result into a number, throwing a {@linkcode SysError} built from the
 * current errno when it is -1. Call it immediately after the synchronous call.
 */
export function check(
  result: number | bigint,
  syscall: string,
  args: readonly (string | number)[] = [],
): number {
  const n = Number(result);
  if (n === -1) throw new SysError(errno(), syscall, args);
  return n;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** A NUL-terminated copy of `s` for passing to C. Throws on an embedded NUL. */
export function cstring(s: string): Uint8Array<ArrayBuffer> {
  if (s.includes("\0")) throw new TypeError(`String contains a NUL byte: ${JSON.stringify(s)}`);
  const bytes = encoder.encode(s);
  const out = new Uint8Array(bytes.length + 1);
  out.set(bytes);
  return out;
}

/** The address of `buf`'s first byte, for storing into C structures. */
export function addressOf(buf: BufferSource): bigint {
  return BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(buf)));
}

/** The system page size in bytes (`getpagesize()`), which bounds mount(2)'s data argument. */
export function pageSize(): number {
  return libc().getpagesize();
}

// ---------------------------------------------------------------------------------------------
// mount / umount

/** `MS_RDONLY`: mount read-only. */
export const MS_RDONLY = 0x1;
/** `MS_NOSUID`: ignore set-user-ID and set-group-ID bits. */
export const MS_NOSUID = 0x2;
/** `MS_NODEV`: disallow access to device special files. */
export const MS_NODEV = 0x4;
/** `MS_NOEXEC`: disallow program execution. */
export const MS_NOEXEC = 0x8;
/** `MS_SYNCHRONOUS`: writes are synced at once. */
export const MS_SYNCHRONOUS = 0x10;
/** `MS_REMOUNT`: alter the flags of an existing mount. */
export const MS_REMOUNT = 0x20;
/** `MS_MANDLOCK`: allow mandatory locks. */
export const MS_MANDLOCK = 0x40;
/** `MS_DIRSYNC`: directory modifications are synchronous. */
export const MS_DIRSYNC = 0x80;
/** `MS_NOSYMFOLLOW`: do not follow symlinks. */
export const MS_NOSYMFOLLOW = 0x100;
/** `MS_NOATIME`: do not update access times. */
export const MS_NOATIME = 0x400;
/** `MS_NODIRATIME`: do not update directory access times. */
export const MS_NODIRATIME = 0x800;
/** `MS_BIND`: create a bind mount. */
export const MS_BIND = 0x1000;
/** `MS_MOVE`: atomically move a mount. */
export const MS_MOVE = 0x2000;
/** `MS_REC`: recursive (with `MS_BIND` or a propagation flag). */
export const MS_REC = 0x4000;
/** `MS_SILENT`: suppress some kernel messages. */
export const MS_SILENT = 0x8000;
/** `MS_POSIXACL`: the filesystem supports POSIX ACLs. */
export const MS_POSIXACL = 1 << 16;
/** `MS_UNBINDABLE`: make the mount unbindable. */
export const MS_UNBINDABLE = 1 << 17;
/** `MS_PRIVATE`: make the mount private. */
export const MS_PRIVATE = 1 << 18;
/** `MS_SLAVE`: make the mount a slave. */
export const MS_SLAVE = 1 << 19;
/** `MS_SHARED`: make the mount shared. */
export const MS_SHARED = 1 << 20;
/** `MS_RELATIME`: update access times relative to modification times. */
export const MS_RELATIME = 1 << 21;
/** `MS_I_VERSION`: update inode I_version. */
export const MS_I_VERSION = 1 << 23;
/** `MS_STRICTATIME`: always update access times. */
export const MS_STRICTATIME = 1 << 24;
/** `MS_LAZYTIME`: update times lazily. */
export const MS_LAZYTIME = 1 << 25;

/** `MNT_FORCE` for {@linkcode umount2}: force unmount even if busy (NFS). */
export const MNT_FORCE = 0x1;
/** `MNT_DETACH` for {@linkcode umount2}: lazy unmount. */
export const MNT_DETACH = 0x2;
/** `MNT_EXPIRE` for {@linkcode umount2}: mark for expiry. */
export const MNT_EXPIRE = 0x4;
/** `UMOUNT_NOFOLLOW` for {@linkcode umount2}: do not follow a symlink at `target`. */
export const UMOUNT_NOFOLLOW = 0x8;

/**
 * mount(2). `source` and `fstype` may be empty strings where the kernel ignores them (bind,
 * remount, propagation changes); `data` is the filesystem-specific option string, limited by
 * the kernel to one page. See `parseMountOptions` and `mountAll` in `mount.ts` for
 * containerd-style option lists.
 *
 * @throws {SysError} e.g. `mount("overlay", "/x", "overlay"): EINVAL (Invalid argument)`
 */
export function mount(
  source: string,
  target: string,
  fstype: string,
  flags: number,
  data?: string,
): void {
  const d = data === undefined || data === "" ? null : cstring(data);
  check(
    libc().mount(cstring(source), cstring(target), cstring(fstype), BigInt(flags), d),
    "mount",
    [source, target, fstype],
  );
}

/**
 * umount2(2): unmount the topmost mount at `target`.
 *
 * @param flags `MNT_FORCE`, `MNT_DETACH`, `MNT_EXPIRE`, `UMOUNT_NOFOLLOW`
 * @throws {SysError} EINVAL when `target` is not a mount point, EBUSY when in use
 */
export function umount2(target: string, flags = 0): void {
  check(libc().umount2(cstring(target), flags), "umount2", [target, flags]);
}

// ---------------------------------------------------------------------------------------------
// files

/** File type bits of `st_mode`: socket. */
export const S_IFSOCK = 0o140000;
/** File type bits of `st_mode`: symbolic link. */
export const S_IFLNK = 0o120000;
/** File type bits of `st_mode`: regular file. */
export const S_IFREG = 0o100000;
/** File type bits of `st_mode`: block device. */
export const S_IFBLK = 0o060000;
/** File type bits of `st_mode`: directory. */
export const S_IFDIR = 0o040000;
/** File type bits of `st_mode`: character device. */
export const S_IFCHR = 0o020000;
/** File type bits of `st_mode`: FIFO. */
export const S_IFIFO = 0o010000;

/**
 * A device number from its major and minor parts, encoded as glibc's `makedev` does
 * (12+20 bits of major, 8+24 bits of minor, interleaved into 64 bits).
 */
export function makedev(major: number, minor: number): bigint {
  const ma = BigInt(major >>> 0);
  const mi = BigInt(minor >>> 0);
  return ((ma & 0xfffn) << 8n) | ((ma & 0xfffff000n) << 32n) | (mi & 0xffn) |
    ((mi & 0xffffff00n) << 12n);
}

/** The major part of a device number encoded as by {@linkcode makedev} (e.g. `stat.rdev`). */
export function major(dev: number | bigint): number {
  const d = BigInt(dev);
  return Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & 0xfffff000n));
}

/** The minor part of a device number encoded as by {@linkcode makedev} (e.g. `stat.rdev`). */
export function minor(dev: number | bigint): number {
  const d = BigInt(dev);
  return Number((d & 0xffn) | ((d >> 12n) & 0xffffff00n));
}

/**
 * mknod(2): create a device node, FIFO or socket file. The umask applies to the permissions.
 *
 * @param mode file type (`S_IFCHR`, `S_IFBLK`, `S_IFIFO`, `S_IFREG`, `S_IFSOCK`) | permissions
 * @param dev device number from {@linkcode makedev}; 0 for FIFOs and regular files
 */
export function mknod(path: string, mode: number, dev: number | bigint = 0): void {
  check(libc().mknod(cstring(path), mode, BigInt(dev)), "mknod", [path, mode, String(dev)]);
}

/** lchown(2): change the owner of `path` itself, not of a symlink's target. -1 keeps a value. */
export function lchown(path: string, uid: number, gid: number): void {
  check(libc().lchown(cstring(path), uid >>> 0, gid >>> 0), "lchown", [path, uid, gid]);
}

/** `XATTR_CREATE` for {@linkcode lsetxattr}: fail with EEXIST if the attribute exists. */
export const XATTR_CREATE = 0x1;
/** `XATTR_REPLACE` for {@linkcode lsetxattr}: fail with ENODATA if the attribute is missing. */
export const XATTR_REPLACE = 0x2;

/**
 * lsetxattr(2): set the extended attribute `name` (e.g. `"user.x"`, `"security.capability"`)
 * of `path` itself (a symlink is not followed) to the bytes of `value`.
 */
export function lsetxattr(path: string, name: string, value: Uint8Array, flags = 0): void {
  const v = new Uint8Array(value); // a copy backed by a plain ArrayBuffer
  check(
    libc().lsetxattr(cstring(path), cstring(name), v, BigInt(v.length), flags),
    "lsetxattr",
    [path, name],
  );
}

/**
 * lgetxattr(2): the value of the extended attribute `name` of `path` itself, or null when it
 * has no such attribute (ENODATA).
 */
export function lgetxattr(path: string, name: string): Uint8Array | null {
  const p = cstring(path);
  const n = cstring(name);
  for (;;) {
    const size = Number(libc().lgetxattr(p, n, null, 0n));
    if (size === -1) {
      const e = errno();
      if (e === Errno.ENODATA) return null;
      throw new SysError(e, "lgetxattr", [path, name]);
    }
    const buf = new Uint8Array(size);
    const got = Number(libc().lgetxattr(p, n, buf, BigInt(size)));
    if (got === -1) {
      const e = errno();
      if (e === Errno.ENODATA) return null;
      if (e === Errno.ERANGE) continue; // grew between the two calls
      throw new SysError(e, "lgetxattr", [path, name]);
    }
    return buf.subarray(0, got);
  }
}

/** llistxattr(2): the names of the extended attributes of `path` itself. */
export function llistxattr(path: string): string[] {
  const p = cstring(path);
  for (;;) {
    const size = check(libc().llistxattr(p, null, 0n), "llistxattr", [path]);
    if (size === 0) return [];
    const buf = new Uint8Array(size);
    const got = Number(libc().llistxattr(p, buf, BigInt(size)));
    if (got === -1) {
      const e = errno();
      if (e === Errno.ERANGE) continue;
      throw new SysError(e, "llistxattr", [path]);
    }
    return decoder.decode(buf.subarray(0, got)).split("\0").filter((s) => s !== "");
  }
}

/** lremovexattr(2): remove the extended attribute `name` of `path` itself. */
export function lremovexattr(path: string, name: string): void {
  check(libc().lremovexattr(cstring(path), cstring(name)), "lremovexattr", [path, name]);
}

/** A point in time as `struct timespec`. `nsec` may be {@linkcode UTIME_NOW}/`UTIME_OMIT`. */
export interface Timespec {
  /** Seconds since the epoch. */
  sec: number;
  /** Nanoseconds, 0–999 999 999. */
  nsec: number;
}

/** `AT_FDCWD`: resolve relative paths against the current directory. */
export const AT_FDCWD: number = -100;
/** `AT_SYMLINK_NOFOLLOW`: act on a symlink itself. */
export const AT_SYMLINK_NOFOLLOW = 0x100;
/** `UTIME_NOW` as a `nsec` value: set to the current time. */
export const UTIME_NOW = (1 << 30) - 1;
/** `UTIME_OMIT` as a `nsec` value: leave unchanged. */
export const UTIME_OMIT = (1 << 30) - 2;

/**
 * utimensat(2): set access and modification times with nanosecond precision. With
 * `AT_SYMLINK_NOFOLLOW` a symlink's own times change, not its target's.
 *
 * @param dirfd `AT_FDCWD` (no other directory fds are reachable from Deno)
 */
export function utimensat(
  dirfd: number,
  path: string,
  atime: Timespec,
  mtime: Timespec,
  flags = 0,
): void {
  const times = new BigInt64Array([
    BigInt(Math.trunc(atime.sec)),
    BigInt(Math.trunc(atime.nsec)),
    BigInt(Math.trunc(mtime.sec)),
    BigInt(Math.trunc(mtime.nsec)),
  ]);
  check(libc().utimensat(dirfd, cstring(path), times, flags), "utimensat", [path]);
}

/**
 * The filesystem magic number (`f_type` of statfs(2)) of the filesystem holding `path`, e.g.
 * 0x794c7630 for overlayfs, 0x01021994 for tmpfs, 0x65735546 for FUSE.
 */
export function statfsType(path: string): number {
  const buf = new BigInt64Array(16); // struct statfs is 120 bytes on 64-bit Linux
  check(libc().statfs(cstring(path), buf), "statfs", [path]);
  return Number(buf[0]);
}

// ---------------------------------------------------------------------------------------------
// processes

/** `PR_SET_PDEATHSIG`: signal to receive when the parent dies. */
export const PR_SET_PDEATHSIG = 1;
/** `PR_GET_PDEATHSIG`: read the parent-death signal into `*(int *)arg2`. */
export const PR_GET_PDEATHSIG = 2;
/** `PR_SET_NAME`: set the thread name. */
export const PR_SET_NAME = 15;
/** `PR_SET_CHILD_SUBREAPER`: become (arg2 = 1) or stop being (0) a child subreaper. */
export const PR_SET_CHILD_SUBREAPER = 36;
/** `PR_GET_CHILD_SUBREAPER`: read the subreaper attribute into `*(int *)arg2`. */
export const PR_GET_CHILD_SUBREAPER = 37;
/** `PR_SET_NO_NEW_PRIVS`: set the no_new_privs bit. */
export const PR_SET_NO_NEW_PRIVS = 38;

/**
 * prctl(2). Pointer arguments are passed as addresses (see {@linkcode addressOf}); prefer
 * {@linkcode setChildSubreaper} and friends.
 *
 * @returns the call's non-negative result
 */
export function prctl(
  option: number,
  arg2: number | bigint = 0,
  arg3: number | bigint = 0,
  arg4: number | bigint = 0,
  arg5: number | bigint = 0,
): number {
  return check(
    libc().prctl(option, BigInt(arg2), BigInt(arg3), BigInt(arg4), BigInt(arg5)),
    "prctl",
    [option],
  );
}

/**
 * Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`): orphaned descendants are
 * re-parented to it instead of to init, as a shim needs for runc's container processes.
 */
export function setChildSubreaper(enabled = true): void {
  prctl(PR_SET_CHILD_SUBREAPER, enabled ? 1 : 0);
}

/** Whether this process is a child subreaper (`PR_GET_CHILD_SUBREAPER`). */
export function isChildSubreaper(): boolean {
  const out = new Uint8Array(new ArrayBuffer(4));
  prctl(PR_GET_CHILD_SUBREAPER, addressOf(out));
  return new DataView(out.buffer).getInt32(0, true) !== 0;
}

/** Sets the signal this thread receives when its parent thread dies (`PR_SET_PDEATHSIG`). */
export function setParentDeathSignal(signal: number | Deno.Signal): void {
  prctl(PR_SET_PDEATHSIG, signalNumber(signal));
}

/** Linux signal numbers by name (x86_64/aarch64). */
export const SIGNALS: Readonly<Record<string, number>> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGIOT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGSTKFLT: 16,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
  SIGURG: 23,
  SIGXCPU: 24,
  SIGXFSZ: 25,
  SIGVTALRM: 26,
  SIGPROF: 27,
  SIGWINCH: 28,
  SIGIO: 29,
  SIGPOLL: 29,
  SIGPWR: 30,
  SIGSYS: 31,
};

/** The number of a signal given by number or name (`"SIGTERM"`, `"TERM"`, `15`). */
export function signalNumber(signal: number | string): number {
  if (typeof signal === "number") return signal;
  const name = signal.toUpperCase();
  const n = SIGNALS[name] ?? SIGNALS[`SIG${name}`];
  if (n !== undefined) return n;
  if (/^\d+$/.test(signal)) return Number(signal);
  throw new TypeError(`Unknown signal ${JSON.stringify(signal)}`);
}

/** The name of a signal number (`9` → `"SIGKILL"`), or `"SIG<n>"` when unknown. */
export function signalName(signal: number): string {
  for (const [name, n] of Object.entries(SIGNALS)) if (n === signal) return name;
  return `SIG${signal}`;
}

/** getpid(2). */
export function getpid(): number {
  return libc().getpid();
}

/**
 * kill(2): send `signal` (number or name; 0 only checks that the process exists) to `pid`
 * (negative: a process group).
 *
 * @throws {SysError} ESRCH when there is no such process, EPERM when not allowed
 */
export function kill(pid: number, signal: number | Deno.Signal): void {
  const sig = signalNumber(signal);
  check(libc().kill(pid, sig), "kill", [pid, sig]);
}

/** setsid(2): start a new session; returns its id. EPERM when already a group leader. */
export function setsid(): number {
  return check(libc().setsid(), "setsid");
}

/** umask(2): set the file mode creation mask; returns the previous mask. */
export function umask(mask: number): number {
  return libc().umask(mask);
}

/** `WNOHANG` for {@linkcode waitpid}: return at once if no child changed state. */
export const WNOHANG = 0x1;
/** `WUNTRACED` for {@linkcode waitpid}: also report stopped children. */
export const WUNTRACED = 0x2;
/** `WCONTINUED` for {@linkcode waitpid}: also report continued children. */
export const WCONTINUED = 0x8;
/** `__WALL` for {@linkcode waitpid}: wait for all children regardless of type. */
export const WALL = 0x40000000;

/** A decoded wait status. */
export interface WaitResult {
  /** The pid that changed state; 0 with `WNOHANG` when none did. */
  pid: number;
  /** The raw wait status. */
  status: number;
  /** Whether the child exited normally (`WIFEXITED`). */
  exited: boolean;
  /**
   * The exit code as containerd reports it: `WEXITSTATUS` when the child exited, 128 + signal
   * when a signal killed it, else 0.
   */
  exitCode: number;
  /** Whether a signal killed the child (`WIFSIGNALED`). */
  signaled: boolean;
  /** The signal that killed (`WTERMSIG`) or stopped (`WSTOPSIG`) the child, else 0. */
  signal: number;
  /** Whether the child left a core dump (`WCOREDUMP`). */
  coreDumped: boolean;
  /** Whether the child is stopped (`WIFSTOPPED`, with `WUNTRACED`). */
  stopped: boolean;
}

/** Decodes a raw wait status as the `W*` macros do. */
export function decodeWaitStatus(pid: number, status: number): WaitResult {
  const low = status & 0x7f;
  const exited = pid > 0 && low === 0;
  const stopped = pid > 0 && (status & 0xff) === 0x7f;
  const signaled = pid > 0 && low !== 0 && low !== 0x7f;
  const signal = signaled ? low : stopped ? (status >> 8) & 0xff : 0;
  return {
    pid,
    status,
    exited,
    exitCode: exited ? (status >> 8) & 0xff : signaled ? 128 + signal : 0,
    signaled,
    signal,
    coreDumped: signaled && (status & 0x80) !== 0,
    stopped,
  };
}

/**
 * waitpid(2). Without `WNOHANG` this blocks the whole event loop until the child changes
 * state: use {@linkcode waitpidAsync} for that. Reap only pids you own: `waitpid(-1)` would
 * steal the exit statuses of `Deno.Command` children.
 *
 * @throws {SysError} ECHILD when `pid` is not a child of this process
 */
export function waitpid(pid: number, options = 0): WaitResult {
  const buf = new Int32Array(1);
  const r = check(libc().waitpid(pid, buf, options), "waitpid", [pid, options]);
  return decodeWaitStatus(r, buf[0]);
}

/** Pending {@linkcode waitpidAsync} calls, checked on every SIGCHLD. */
const pidWaiters = new Map<
  number,
  { options: number; resolve: (r: WaitResult) => void; reject: (e: unknown) => void }[]
>();
let pidTimer: ReturnType<typeof setInterval> | undefined;
let sigchldListening = false;

function checkPidWaiters(): void {
  for (const [pid, waiters] of [...pidWaiters]) {
    const still = waiters.filter((w) => {
      try {
        const r = waitpid(pid, w.options | WNOHANG);
        if (r.pid === 0) return true;
        w.resolve(r);
      } catch (err) {
        if (isErrno(err, "EINTR")) return true;
        w.reject(err);
      }
      return false;
    });
    if (still.length === 0) pidWaiters.delete(pid);
    else pidWaiters.set(pid, still);
  }
  if (pidWaiters.size === 0 && pidTimer !== undefined) {
    clearInterval(pidTimer);
    pidTimer = undefined;
  }
}

/**
 * Waits for a child to change state without blocking the event loop or holding a thread:
 * every SIGCHLD (and, as a safety net, every 500 ms) the waited pids are checked with
 * `WNOHANG`. Only the given pid is reaped, never `Deno.Command` children. (A blocking
 * waitpid on Deno's FFI pool would hold one of its 32 threads per process: a shim with many
 * containers ran out of them.)
 *
 * @throws {SysError} ECHILD when `pid` is not a child of this process
 */
export function waitpidAsync(pid: number, options = 0): Promise<WaitResult> {
  let now: WaitResult;
  try {
    now = waitpid(pid, options | WNOHANG); // ECHILD at once
  } catch (err) {
    return Promise.reject(err);
  }
  if (now.pid !== 0 || (options & WNOHANG) !== 0) return Promise.resolve(now);
  if (!sigchldListening) {
    sigchldListening = true;
    Deno.addSignalListener("SIGCHLD", checkPidWaiters);
  }
  return new Promise((resolve, reject) => {
    const list = pidWaiters.get(pid) ?? [];
    list.push({ options, resolve, reject });
    pidWaiters.set(pid, list);
    // The timer also keeps the event loop alive while a wait is pending.
    if (pidTimer === undefined) pidTimer = setInterval(checkPidWaiters, 500);
    // The child may have changed state between the first check and the registration.
    queueMicrotask(checkPidWaiters);
  });
}

// ---------------------------------------------------------------------------------------------
// file descriptors

/** `O_RDONLY` for {@linkcode open}. */
export const O_RDONLY = 0;
/** `O_WRONLY` for {@linkcode open}. */
export const O_WRONLY = 0o1;
/** `O_RDWR` for {@linkcode open}. */
export const O_RDWR = 0o2;
/** `O_NONBLOCK` for {@linkcode open} and {@linkcode setNonblocking}. */
export const O_NONBLOCK = 0o4000;
/** `O_DIRECTORY` for {@linkcode open}. */
export const O_DIRECTORY = 0o200000;
/** `O_NOFOLLOW` for {@linkcode open}. */
export const O_NOFOLLOW = 0o400000;
/** `O_CLOEXEC` for {@linkcode open}. */
export const O_CLOEXEC = 0o2000000;
/** `O_PATH` for {@linkcode open}: a handle usable only as a location. */
export const O_PATH = 0o10000000;

/**
 * open(2), returning a raw file descriptor that Deno's APIs cannot use: read and write it with
 * {@linkcode read} and {@linkcode write}, and {@linkcode close} it. Add `O_CLOEXEC`.
 */
export function open(path: string, flags: number, mode = 0): number {
  return check(libc().open(cstring(path), flags, mode), "open", [path, flags]);
}

/** close(2) a raw file descriptor. */
export function close(fd: number): void {
  check(libc().close(fd), "close", [fd]);
}

/** read(2) into `buf`; returns the byte count, 0 at end of file. */
export function read(fd: number, buf: Uint8Array<ArrayBuffer>): number {
  return check(libc().read(fd, buf, BigInt(buf.length)), "read", [fd]);
}

/** write(2) from `data`; returns the byte count written (possibly short). */
export function write(fd: number, data: Uint8Array<ArrayBuffer>): number {
  return check(libc().write(fd, data, BigInt(data.length)), "write", [fd]);
}

const F_GETFL = 3;
const F_SETFL = 4;

/** Sets or clears `O_NONBLOCK` on a raw file descriptor (fcntl(2) `F_SETFL`). */
export function setNonblocking(fd: number, enabled: boolean): void {
  const flags = check(libc().fcntl(fd, F_GETFL, 0n), "fcntl", [fd, "F_GETFL"]);
  const next = enabled ? flags | O_NONBLOCK : flags & ~O_NONBLOCK;
  if (next !== flags) check(libc().fcntl(fd, F_SETFL, BigInt(next)), "fcntl", [fd, "F_SETFL"]);
}

const F_GETFD = 1;
const F_SETFD = 2;
const FD_CLOEXEC = 1;

/**
 * Marks every open descriptor above stderr close-on-exec, so children (shims, runc) never
 * inherit the daemon's listening or client sockets: some of Deno's node-compat sockets are
 * created without `SOCK_CLOEXEC`, and a shim holding the API socket would keep a dead
 * daemon's address "answering". Returns how many descriptors were changed.
 */
export function cloexecAll(): number {
  let changed = 0;
  for (const e of Deno.readDirSync("/proc/self/fd")) {
    const fd = Number(e.name);
    if (!Number.isInteger(fd) || fd <= 2) continue;
    const flags = libc().fcntl(fd, F_GETFD, 0n);
    if (flags < 0 || (flags & FD_CLOEXEC) !== 0) continue;
    if (libc().fcntl(fd, F_SETFD, BigInt(flags | FD_CLOEXEC)) === 0) changed++;
  }
  return changed;
}

/** `POLLIN` for {@linkcode pollAsync}: data to read. */
export const POLLIN = 0x1;
/** `POLLOUT` for {@linkcode pollAsync}: writing will not block. */
export const POLLOUT = 0x4;
/** `POLLERR` in revents: error condition. */
export const POLLERR = 0x8;
/** `POLLHUP` in revents: hang up. */
export const POLLHUP = 0x10;
/** `POLLNVAL` in revents: the fd is not open. */
export const POLLNVAL = 0x20;

/** One entry of a {@linkcode pollAsync} request. */
export interface PollRequest {
  /** The raw file descriptor. */
  fd: number;
  /** The events of interest (`POLLIN`, `POLLOUT`). */
  events: number;
}

/** A pending {@linkcode pollAsync} wait. */
interface PollWait {
  requests: readonly PollRequest[];
  /** When it times out (`Infinity`: never). */
  deadline: number;
  resolve: (revents: number[]) => void;
  reject: (err: unknown) => void;
}

const pollWaits = new Set<PollWait>();
let pollWake = -1;
let pollRunning = false;

function wakePoller(): void {
  if (pollWake < 0) return;
  try {
    libc().write(pollWake, EVENTFD_ONE, 8n);
  } catch { /* already signalled */ }
}

const EVENTFD_ONE = new Uint8Array(new BigUint64Array([1n]).buffer);
const EVENTFD_BUF = new Uint8Array(8);

/**
 * The one poller of the process: a single poll(2) on Deno's FFI thread pool over every
 * pending wait's fds plus an eventfd that new waits signal, so any number of waits hold one
 * pool thread (the pool has 32; a blocking call per wait exhausted it).
 */
async function runPoller(): Promise<void> {
  if (pollRunning) return;
  pollRunning = true;
  try {
    if (pollWake < 0) pollWake = check(libc().eventfd(0, EFD_FLAGS), "eventfd");
    while (pollWaits.size > 0) {
      const waits = [...pollWaits];
      const n = 1 + waits.reduce((a, w) => a + w.requests.length, 0);
      const buf = new Uint8Array(8 * n);
      const view = new DataView(buf.buffer);
      view.setInt32(0, pollWake, true);
      view.setInt16(4, POLLIN, true);
      let i = 1;
      for (const w of waits) {
        for (const r of w.requests) {
          view.setInt32(i * 8, r.fd, true);
          view.setInt16(i * 8 + 4, r.events, true);
          i++;
        }
      }
      const now = Date.now();
      const next = Math.min(...waits.map((w) => w.deadline));
      const timeout = next === Infinity ? -1 : Math.max(0, Math.min(next - now, 2 ** 31 - 1));
      const r = await libc().poll_nb(buf, BigInt(n), timeout);
      if (r === -1) {
        // errno is lost on the pool thread: learn it here (EINTR: just go round again).
        try {
          check(libc().poll(buf, BigInt(n), 0), "poll");
        } catch (err) {
          if (!isErrno(err, "EINTR")) {
            for (const w of waits) {
              pollWaits.delete(w);
              w.reject(err);
            }
          }
          continue;
        }
      }
      if (view.getUint16(6, true) !== 0) libc().read(pollWake, EVENTFD_BUF, 8n);
      const after = Date.now();
      i = 1;
      for (const w of waits) {
        const revents = w.requests.map((_, k) => view.getUint16((i + k) * 8 + 6, true));
        i += w.requests.length;
        if (revents.some((e) => e !== 0) || after >= w.deadline) {
          pollWaits.delete(w);
          w.resolve(revents);
        }
      }
    }
  } finally {
    pollRunning = false;
  }
  if (pollWaits.size > 0) runPoller();
}

/**
 * poll(2) without blocking the event loop: resolves with the `revents` of each request once
 * any is ready or `timeoutMs` (-1: never) passed. Every pending wait of the process shares
 * one poll on one FFI pool thread (see {@linkcode runPoller}). The fds must stay open until
 * the promise settles; give every wait a way to end (a timeout, or an eventfd to signal).
 */
export function pollAsync(
  requests: readonly PollRequest[],
  timeoutMs = -1,
): Promise<number[]> {
  return new Promise((resolve, reject) => {
    pollWaits.add({
      requests,
      deadline: timeoutMs < 0 ? Infinity : Date.now() + timeoutMs,
      resolve,
      reject,
    });
    if (pollRunning) wakePoller();
    else {runPoller().catch((err) => {
        for (const w of pollWaits) w.reject(err);
        pollWaits.clear();
      });}
  });
}

/** `EFD_NONBLOCK | EFD_CLOEXEC` */
const EFD_FLAGS = 0o4000 | 0o2000000;

/** eventfd(2) with `EFD_NONBLOCK | EFD_CLOEXEC`: a raw fd to wake {@linkcode pollAsync} waits. */
export function eventfd(initial = 0): number {
  return check(libc().eventfd(initial, EFD_FLAGS), "eventfd");
}
