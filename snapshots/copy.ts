/**
 * Exact copies of directory trees, as continuity's `fs.CopyDir` (used by the native
 * snapshotter): ownership, permission bits (setuid, setgid, sticky included), extended
 * attributes, access and modification times, device nodes, FIFOs, sockets, symbolic links,
 * and hard links kept as hard links. Directory times are set after their contents, so they
 * survive the copy.
 *
 * File contents are copied several at a time (`copy_file_range` through `Deno.copyFile`,
 * which reflinks where the filesystem can).
 *
 * @module
 */

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
  S_IFDIR,
  S_IFIFO,
  S_IFLNK,
  S_IFREG,
  S_IFSOCK,
  utimensat,
} from "../sys/libc.ts";
import { invalidArgument } from "../plugins/errdefs.ts";
import { fileType, lstatx, type Stat } from "./statx.ts";

/** Options of {@link copyDir}. */
export interface CopyDirOptions {
  /** Contents copied at once (8). */
  concurrency?: number;
  /**
   * Called when an extended attribute cannot be copied (e.g. `security.selinux` refused by
   * the destination); the default ignores the failure, as containerd's native snapshotter.
   * Throw from it to make the copy fail.
   */
  onXattrError?: (dst: string, src: string, name: string, err: unknown) => void;
}

/**
 * Copies the extended attributes of `src` onto `dst` (neither followed if a symlink).
 * Failures go to `onError`.
 */
export function copyXattrs(
  dst: string,
  src: string,
  onError: (dst: string, src: string, name: string, err: unknown) => void = () => {},
): void {
  let names: string[];
  try {
    names = llistxattr(src);
  } catch (err) {
    if (isErrno(err, "EOPNOTSUPP")) return;
    throw err;
  }
  for (const name of names) {
    try {
      const value = lgetxattr(src, name);
      if (value !== null) lsetxattr(dst, name, value);
    } catch (err) {
      onError(dst, src, name, err);
    }
  }
}

/**
 * Sets the owner, permission bits and times of `dst` from `st` (the source's
 * {@link lstatx}): owner first, since chown clears setuid and setgid; permissions except for
 * symlinks (Linux has no lchmod); times to the nanosecond, without following symlinks.
 */
export function copyFileInfo(dst: string, st: Stat): void {
  lchown(dst, st.uid, st.gid);
  if (fileType(st.mode) !== S_IFLNK) Deno.chmodSync(dst, st.mode & 0o7777);
  utimensat(AT_FDCWD, dst, st.atime, st.mtime, AT_SYMLINK_NOFOLLOW);
}

/**
 * Copies the tree at `src` into the existing directory `dst` (whose own owner, mode, xattrs
 * and times become those of `src`). Nothing in `dst` should conflict with `src`'s entries.
 */
export async function copyDir(
  src: string,
  dst: string,
  options: CopyDirOptions = {},
): Promise<void> {
  const concurrency = Math.max(1, options.concurrency ?? 8);
  const onXattrError = options.onXattrError ?? (() => {});
  const rootInfo = lstatx(src);
  if (fileType(rootInfo.mode) !== S_IFDIR) {
    throw invalidArgument(`Cannot copy ${JSON.stringify(src)}: not a directory`);
  }

  /** inode → destination path of its first copy. */
  const inodes = new Map<string, string>();
  const links: [target: string, path: string][] = [];
  /** Directories in pre-order, metadata applied in reverse (children first). */
  const dirs: [dst: string, src: string, info: Stat][] = [[dst, src, rootInfo]];
  const running = new Set<Promise<void>>();
  let failure: unknown = null;

  const schedule = async (task: () => Promise<void>): Promise<void> => {
    while (running.size >= concurrency) await Promise.race(running);
    if (failure !== null) throw failure;
    const p: Promise<void> = task().catch((err) => {
      failure ??= err;
    }).finally(() => running.delete(p));
    running.add(p);
  };

  const stack: [string, string][] = [[src, dst]];
  while (stack.length > 0) {
    const [sdir, ddir] = stack.pop()!;
    for (const entry of Deno.readDirSync(sdir)) {
      const s = `${sdir}/${entry.name}`;
      const d = `${ddir}/${entry.name}`;
      const info = lstatx(s);
      const type = fileType(info.mode);
      if (type === S_IFDIR) {
        Deno.mkdirSync(d, { mode: 0o700 });
        dirs.push([d, s, info]);
        stack.push([s, d]);
        continue;
      }
      if (type !== S_IFLNK && info.nlink > 1) {
        const id = `${info.dev}:${info.ino}`;
        const first = inodes.get(id);
        if (first !== undefined) {
          links.push([first, d]);
          continue;
        }
        inodes.set(id, d);
      }
      if (type === S_IFREG) {
        await schedule(async () => {
          await Deno.copyFile(s, d);
          copyFileInfo(d, info);
          copyXattrs(d, s, onXattrError);
        });
        continue;
      }
      if (type === S_IFLNK) {
        Deno.symlinkSync(Deno.readLinkSync(s), d);
      } else if (type === S_IFCHR || type === S_IFBLK || type === S_IFIFO || type === S_IFSOCK) {
        mknod(d, type | (info.mode & 0o7777), makedev(info.rdevMajor, info.rdevMinor));
      } else {
        continue; // unknown type: skipped, as continuity does
      }
      copyFileInfo(d, info);
      copyXattrs(d, s, onXattrError);
    }
  }
  while (running.size > 0) await Promise.race(running);
  if (failure !== null) throw failure;
  for (const [target, path] of links) Deno.linkSync(target, path);
  for (let i = dirs.length - 1; i >= 0; i--) {
    const [d, s, info] = dirs[i];
    copyXattrs(d, s, onXattrError);
    copyFileInfo(d, info);
  }
}
