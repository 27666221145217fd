/**
 * Applying an (uncompressed) layer tar onto a directory, with containerd's `archive.Apply`
 * semantics:
 *
 * - entry names are cleaned and resolved inside the root ({@link RootResolver}): `../x`, `/x`
 *   and names reached through symlinks (`a -> /etc`, then `a/passwd`) all land inside the root;
 *   the last component is never followed (an existing symlink there is replaced);
 * - an existing path is replaced unless both it and the entry are directories;
 * - regular files, directories, symlinks, hard links (target resolved inside the root), char
 *   and block devices, FIFOs; then owner (lchown), `SCHILY.xattr.*` extended attributes (binary
 *   values; `trusted.*` ones are ignored), permission bits with setuid/setgid/sticky (chmod
 *   after chown, never on symlinks), times to the nanosecond (access time the later of atime
 *   and mtime, symlinks' own times); directories' times again at the end, after their contents;
 * - missing parent directories are created (mode 0755, or copying owner, mode, times and
 *   xattrs from the first of `parents` that has them, for overlay upper dirs);
 * - OCI whiteouts: `.wh.<name>` removes `<name>`, `.wh..wh..opq` empties its directory of
 *   everything this layer did not add; with `whiteouts: "overlay"` they become overlayfs
 *   whiteouts instead (a 0:0 char device; `trusted.overlay.opaque=y`). A whiteout whose name
 *   would leave its directory is InvalidArgument.
 *
 * @module
 */

import { invalidArgument } from "../plugins/errdefs.ts";
import {
  AT_FDCWD,
  AT_SYMLINK_NOFOLLOW,
  isErrno,
  lchown,
  lgetxattr,
  llistxattr,
  lsetxattr,
  makedev,
  mknod,
  S_IFBLK,
  S_IFCHR,
  S_IFIFO,
  utimensat,
  XATTR_CREATE,
} from "../sys/libc.ts";
import { readTar, type TarHeader, type TarTime, TarType } from "../archive/tar/mod.ts";
import { fileType, lstatxOrNull, type Stat } from "../snapshots/statx.ts";
import { cleanPath, RootResolver } from "./root_path.ts";

/** Prefix of whiteout files. */
export const WHITEOUT_PREFIX = ".wh.";
/** Prefix of whiteout metadata files. */
export const WHITEOUT_META_PREFIX = ".wh..wh.";
/** Name of the opaque-directory marker. */
export const WHITEOUT_OPAQUE = ".wh..wh..opq";

/** Options of {@link applyTar}. */
export interface ApplyTarOptions {
  /**
   * How whiteouts are applied: `"delete"` (default) removes what they name; `"overlay"` writes
   * overlayfs whiteouts, for applying straight into an overlay upper dir.
   */
  whiteouts?: "delete" | "overlay";
  /**
   * Directories below the root (overlay lower dirs, nearest first) from which created parent
   * directories take their owner, mode, times and xattrs, as containerd's `WithParents`.
   */
  parents?: readonly string[];
  /** Aborts the application (the tree is left partly applied). */
  signal?: AbortSignal;
}

/** What {@link applyTar} returns. */
export interface ApplyTarResult {
  /** The sum of the entries' sizes (as containerd's `archive.Apply`). */
  size: number;
  /** Number of entries read. */
  entries: number;
}

const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFREG = 0o100000;

/** Largest time a 64-bit timespec in nanoseconds holds, as containerd's `maxTime`. */
const MAX_SEC = 9223372036;

function boundTime(t: TarTime): TarTime {
  if (t.sec < 0 || t.sec > MAX_SEC) return { sec: 0, nsec: 0 };
  return t;
}

function latest(a: TarTime | undefined, b: TarTime): TarTime {
  if (a === undefined) return b;
  return a.sec > b.sec || (a.sec === b.sec && a.nsec > b.nsec) ? a : b;
}

function setTimes(path: string, h: TarHeader): void {
  utimensat(
    AT_FDCWD,
    path,
    boundTime(latest(h.atime, h.mtime)),
    boundTime(h.mtime),
    AT_SYMLINK_NOFOLLOW,
  );
}

function dirname(path: string): string {
  const i = path.lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

function writeAll(file: Deno.FsFile, data: Uint8Array): void {
  let off = 0;
  while (off < data.length) off += file.writeSync(data.subarray(off));
}

/** One layer application: the state containerd's `applyNaive` keeps. */
class Applier {
  readonly root: string;
  readonly resolver: RootResolver;
  readonly overlay: boolean;
  readonly parents: readonly string[];
  /** Paths this layer created (containerd's `unpackedPaths`, plus created parents). */
  readonly created = new Set<string>();
  /** Directories created by this layer: what they hold is exactly what `created` says. */
  readonly fresh = new Set<string>();
  readonly dirs: TarHeader[] = [];

  constructor(root: string, options: ApplyTarOptions) {
    this.resolver = new RootResolver(root);
    this.root = this.resolver.root;
    this.overlay = options.whiteouts === "overlay";
    this.parents = options.parents ?? [];
  }

  /** `lstat` of `path`, skipped when it is known not to exist. */
  lstat(path: string): Stat | null {
    if (this.fresh.has(dirname(path)) && !this.created.has(path)) return null;
    return lstatxOrNull(path);
  }

  /** Removes `path` (recursively) and forgets what it held. */
  removeAll(path: string, st: Stat | null): void {
    if (st === null) return;
    const type = fileType(st.mode);
    try {
      Deno.removeSync(path, { recursive: type === S_IFDIR });
    } catch (err) {
      if (!(err instanceof Deno.errors.NotFound)) throw err;
    }
    this.created.delete(path);
    if (type === S_IFDIR || type === S_IFLNK) {
      this.resolver.invalidate();
      this.fresh.delete(path);
    }
  }

  /** containerd's `mkparent`: creates the missing directories of `path`, outermost first. */
  mkparent(path: string): void {
    const st = lstatxOrNull(path);
    if (st !== null) {
      if (fileType(st.mode) === S_IFDIR) return;
      throw invalidArgument(
        `Cannot apply layer: "${path.slice(this.root.length)}" is needed as a directory but is ` +
          `not one`,
      );
    }
    const parent = dirname(path);
    if (parent.length > this.root.length) this.mkparent(parent);
    try {
      Deno.mkdirSync(path, { mode: 0o755 });
      Deno.chmodSync(path, 0o755);
    } catch (err) {
      const again = lstatxOrNull(path);
      if (again !== null && fileType(again.mode) === S_IFDIR) return;
      throw err;
    }
    this.created.add(path);
    this.fresh.add(path);
    const rel = path.slice(this.root.length);
    for (const p of this.parents) {
      const ppath = new RootResolver(p).resolve(rel);
      const pst = lstatxOrNull(ppath);
      if (pst === null) continue;
      if (fileType(pst.mode) !== S_IFDIR) break;
      lchown(path, pst.uid, pst.gid);
      Deno.chmodSync(path, pst.mode & 0o7777);
      utimensat(AT_FDCWD, path, pst.atime, pst.mtime, AT_SYMLINK_NOFOLLOW);
      copyUpXattrs(path, ppath);
      return;
    }
  }

  /** Handles a whiteout entry at `path` (already checked to stay in its directory). */
  whiteout(h: TarHeader, path: string, base: string): void {
    const dir = dirname(path);
    if (base === WHITEOUT_OPAQUE) {
      if (this.overlay) {
        lsetxattr(dir, "trusted.overlay.opaque", new Uint8Array([0x79]));
      } else {
        this.emptyDir(dir);
      }
      return;
    }
    const original = `${dir}/${base.slice(WHITEOUT_PREFIX.length)}`;
    if (this.overlay) {
      this.removeAll(original, this.lstat(original));
      mknod(original, S_IFCHR, 0);
      lchown(original, h.uid, h.gid);
      this.created.add(original);
    } else {
      this.removeAll(original, this.lstat(original));
    }
  }

  /** Removes what `dir` holds that this layer did not create (an opaque whiteout). */
  emptyDir(dir: string): void {
    for (const entry of [...Deno.readDirSync(dir)]) {
      const p = `${dir}/${entry.name}`;
      const st = lstatxOrNull(p);
      if (st === null) continue;
      if (this.created.has(p)) {
        if (fileType(st.mode) === S_IFDIR) this.emptyDir(p);
        continue;
      }
      this.removeAll(p, st);
    }
  }

  /** Resolves the target of a hard link inside the root, as containerd's `hardlinkRootPath`. */
  linkTarget(linkname: string): string {
    const clean = cleanPath(linkname);
    const i = clean.lastIndexOf("/");
    const base = clean.slice(i + 1);
    if (base === "" || base === "." || base === "..") {
      throw invalidArgument(`Invalid hard link target ${JSON.stringify(linkname)}`);
    }
    const parent = this.resolver.resolve(i < 0 ? "" : clean.slice(0, i));
    return `${parent === "/" ? "" : parent}/${base}`;
  }

  async entry(h: TarHeader, body: ReadableStream<Uint8Array>): Promise<void> {
    const name = cleanPath(h.name);
    const slash = name.lastIndexOf("/");
    const base = name.slice(slash + 1);
    if (base === "" || base === "." || base === "..") return; // the root itself
    const { path: parent, real } = this.resolver.resolveDir(slash < 0 ? "" : name.slice(0, slash));
    const path = `${parent === "/" ? "" : parent}/${base}`;
    if (!real && parent !== this.root) this.mkparent(parent);

    if (base.startsWith(WHITEOUT_PREFIX)) {
      if (base !== WHITEOUT_OPAQUE) {
        const original = base.slice(WHITEOUT_PREFIX.length);
        if (original === "" || original === "." || original === "..") {
          throw invalidArgument(`Invalid whiteout name ${JSON.stringify(h.name)} in layer`);
        }
      }
      this.whiteout(h, path, base);
      return;
    }

    const isDirEntry = h.type === TarType.Dir;
    const existing = this.lstat(path);
    if (existing !== null && !(isDirEntry && fileType(existing.mode) === S_IFDIR)) {
      this.removeAll(path, existing);
    }

    let type: number;
    switch (h.type) {
      case TarType.Dir:
        if (existing === null || fileType(existing.mode) !== S_IFDIR) {
          Deno.mkdirSync(path, { mode: 0o700 });
          this.fresh.add(path);
        }
        type = S_IFDIR;
        break;
      case TarType.Regular:
      case TarType.Contiguous:
        await writeFile(path, body, h.size);
        type = S_IFREG;
        break;
      case TarType.Char:
      case TarType.Block:
      case TarType.Fifo: {
        type = h.type === TarType.Char ? S_IFCHR : h.type === TarType.Block ? S_IFBLK : S_IFIFO;
        mknod(path, type | (h.mode & 0o7777), makedev(h.devmajor, h.devminor));
        break;
      }
      case TarType.Hardlink: {
        const target = this.linkTarget(h.linkname);
        try {
          Deno.linkSync(target, path);
        } catch (err) {
          if (!(err instanceof Deno.errors.NotFound)) throw err;
          throw invalidArgument(
            `Cannot apply layer entry ${JSON.stringify(h.name)}: hard link target ` +
              `${JSON.stringify(h.linkname)} does not exist in the layer`,
            { cause: err },
          );
        }
        type = fileType(lstatxOrNull(path)?.mode ?? S_IFREG);
        break;
      }
      case TarType.Symlink:
        Deno.symlinkSync(h.linkname, path);
        type = S_IFLNK;
        break;
      default:
        throw invalidArgument(
          `Cannot apply layer entry ${JSON.stringify(h.name)}: unhandled tar type ` +
            JSON.stringify(h.type),
        );
    }
    this.created.add(path);

    lchown(path, h.uid, h.gid);
    for (const [key, value] of h.xattrs) {
      if (key.startsWith("trusted.")) continue; // admin attributes are not taken from layers
      try {
        lsetxattr(path, key, value);
      } catch (err) {
        if (isErrno(err, "EOPNOTSUPP")) continue;
        if (
          isErrno(err, "EPERM") && key.startsWith("user.") && type !== S_IFREG &&
          type !== S_IFDIR
        ) continue;
        throw err;
      }
    }
    if (type !== S_IFLNK) Deno.chmodSync(path, h.mode & 0o7777);
    setTimes(path, h);
    if (isDirEntry) this.dirs.push({ ...h, name });
  }

  /** Sets directory times again, now that their contents are in place. */
  finish(): void {
    for (const h of this.dirs) {
      const path = this.resolver.resolve(h.name);
      const st = lstatxOrNull(path);
      // A later entry may have removed or replaced the directory.
      if (st !== null && fileType(st.mode) === S_IFDIR) setTimes(path, h);
    }
  }
}

/** Copies the xattrs of `src` onto `dst` without replacing any, skipping `trusted.*`. */
function copyUpXattrs(dst: string, src: string): void {
  let names: string[];
  try {
    names = llistxattr(src);
  } catch (err) {
    if (isErrno(err, "EOPNOTSUPP")) return;
    throw err;
  }
  for (const name of names) {
    if (name.startsWith("trusted.")) continue;
    const value = lgetxattr(src, name);
    if (value === null) continue;
    try {
      lsetxattr(dst, name, value, XATTR_CREATE);
    } catch (err) {
      if (isErrno(err, "EEXIST") || isErrno(err, "EOPNOTSUPP") || isErrno(err, "ENODATA")) {
        continue;
      }
      throw err;
    }
  }
}

/** Bodies up to this size are gathered and written with one call. */
const SMALL_FILE = 256 * 1024;

/** Writes a regular file's body; the file is created 0600 (the mode comes after chown). */
async function writeFile(
  path: string,
  body: ReadableStream<Uint8Array>,
  size: number,
): Promise<void> {
  // The reader is not released at the end: the body is finished, and releasing costs.
  const reader = body.getReader();
  if (size <= SMALL_FILE) {
    const chunks: Uint8Array[] = [];
    let length = 0;
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      chunks.push(r.value);
      length += r.value.length;
    }
    let data: Uint8Array;
    if (chunks.length === 1) {
      data = chunks[0];
    } else {
      data = new Uint8Array(length);
      let at = 0;
      for (const c of chunks) {
        data.set(c, at);
        at += c.length;
      }
    }
    Deno.writeFileSync(path, data, { mode: 0o600, createNew: true });
    return;
  }
  const file = Deno.openSync(path, { write: true, createNew: true, mode: 0o600 });
  try {
    for (;;) {
      const r = await reader.read();
      if (r.done) break;
      writeAll(file, r.value);
    }
  } finally {
    file.close();
  }
}

/**
 * Applies the layer tar `tar` onto the directory `root` (see the module documentation).
 * The stream is read to its end (so that a digest computed upstream covers every byte).
 *
 * @throws {TainerdError} InvalidArgument for malformed archives and invalid whiteouts;
 *   {@link SysError} for failed system calls
 */
export async function applyTar(
  root: string,
  tar: ReadableStream<Uint8Array>,
  options: ApplyTarOptions = {},
): Promise<ApplyTarResult> {
  const applier = new Applier(root, options);
  const signal = options.signal;
  let size = 0;
  let entries = 0;
  const reader = readTar(tar);
  try {
    for await (const { header, body } of reader) {
      signal?.throwIfAborted();
      size += header.size;
      entries++;
      await applier.entry(header, body);
    }
    signal?.throwIfAborted();
    applier.finish();
  } catch (err) {
    await reader.cancel(err).catch(() => {});
    throw err;
  }
  return { size, entries };
}
