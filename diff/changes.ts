/**
 * Filesystem changes between two trees, as continuity's `fs.Changes` (the double walk used by
 * containerd's walking differ) and `fs.DiffDirChanges` for overlayfs (walking only the upper
 * dir). Changes come in walk order: names sorted bytewise within each directory, a directory
 * before its contents.
 *
 * @module
 */

import { notImplemented } from "../plugins/errdefs.ts";
import { isErrno, lgetxattr } from "../sys/libc.ts";
import { fileType, lstatxOrNull, type Stat } from "../snapshots/statx.ts";

/** The kind of a change, as continuity's `ChangeKind`. */
export type ChangeKind = "add" | "modify" | "delete" | "unmodified";

/** One change. */
export interface Change {
  /** What happened to the path. */
  kind: ChangeKind;
  /** The path, absolute within the tree (`/etc/passwd`). */
  path: string;
  /** The entry in the upper tree; null for deletions. */
  stat: Stat | null;
  /**
   * For a directory of an overlay upper dir marked opaque that hides a lower directory: the
   * lower contents are gone (written as a `.wh..wh..opq` entry).
   */
  opaque?: boolean;
}

const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;

/**
 * Compares names in the order of their UTF-8 bytes (code point order), as Go's string
 * comparison: JavaScript's `<` compares UTF-16 units, which puts U+E000–U+FFFF after
 * characters beyond U+FFFF.
 */
export function compareNames(a: string, b: string): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    let x = a.charCodeAt(i);
    let y = b.charCodeAt(i);
    if (x === y) continue;
    if (x >= 0xd800 && x <= 0xdfff) x += 0x2000;
    else if (x >= 0xe000) x -= 0x800;
    if (y >= 0xd800 && y <= 0xdfff) y += 0x2000;
    else if (y >= 0xe000) y -= 0x800;
    return x - y;
  }
  return a.length - b.length;
}

/** The names in directory `dir`, sorted; empty when it is missing or not a directory. */
export function sortedNames(dir: string): string[] {
  try {
    const names: string[] = [];
    for (const e of Deno.readDirSync(dir)) names.push(e.name);
    return names.sort(compareNames);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) return [];
    throw err;
  }
}

function join(dir: string, name: string): string {
  return dir === "/" ? `/${name}` : `${dir}/${name}`;
}

function capability(path: string): Uint8Array | null {
  try {
    return lgetxattr(path, "security.capability");
  } catch (err) {
    if (isErrno(err, "EOPNOTSUPP")) return null;
    throw err;
  }
}

function bytesEqual(a: Uint8Array | null, b: Uint8Array | null): boolean {
  if (a === null || b === null) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameContent(a: string, b: string): boolean {
  const fa = Deno.openSync(a);
  const fb = Deno.openSync(b);
  try {
    const ba = new Uint8Array(256 * 1024);
    const bb = new Uint8Array(256 * 1024);
    for (;;) {
      const na = readFull(fa, ba);
      const nb = readFull(fb, bb);
      if (na !== nb) return false;
      if (na === 0) return true;
      for (let i = 0; i < na; i++) if (ba[i] !== bb[i]) return false;
    }
  } finally {
    fa.close();
    fb.close();
  }
}

function readFull(f: Deno.FsFile, buf: Uint8Array): number {
  let n = 0;
  while (n < buf.length) {
    const r = f.readSync(buf.subarray(n));
    if (r === null || r === 0) break;
    n += r;
  }
  return n;
}

/**
 * Whether two entries are the same, as continuity's `sameFile`: same inode; else same mode,
 * owner, device number and `security.capability`, and for non-directories same size and
 * mtime — when both mtimes have no sub-second part (a filesystem or archive may have dropped
 * it), the contents (or symlink targets) are compared instead.
 */
export function sameFile(lowerPath: string, l: Stat, upperPath: string, u: Stat): boolean {
  if (l.dev === u.dev && l.ino === u.ino) return true;
  if (
    l.mode !== u.mode || l.uid !== u.uid || l.gid !== u.gid || l.rdevMajor !== u.rdevMajor ||
    l.rdevMinor !== u.rdevMinor
  ) return false;
  if (!bytesEqual(capability(lowerPath), capability(upperPath))) return false;
  if (fileType(u.mode) === S_IFDIR) return true;
  if (l.size !== u.size) return false;
  if (l.mtime.sec !== u.mtime.sec) return false;
  if (l.mtime.nsec === 0 && u.mtime.nsec === 0) {
    if (fileType(u.mode) === S_IFLNK) {
      return Deno.readLinkSync(lowerPath) === Deno.readLinkSync(upperPath);
    }
    if (u.size === 0) return true;
    if (fileType(u.mode) !== S_IFREG) return true;
    return sameContent(lowerPath, upperPath);
  }
  return l.mtime.nsec === u.mtime.nsec;
}

/** Whether an entry is a hard-linked non-directory, as continuity's `GetLinkInfo`. */
export function isLinked(st: Stat): boolean {
  return fileType(st.mode) !== S_IFDIR && st.nlink > 1;
}

async function* addAll(upper: string, rel: string): AsyncGenerator<Change> {
  for (const name of sortedNames(upper + rel)) {
    const p = join(rel, name);
    const st = lstatxOrNull(upper + p);
    if (st === null) continue;
    yield { kind: "add", path: p, stat: st };
    if (fileType(st.mode) === S_IFDIR) yield* addAll(upper, p);
  }
}

async function* walkBoth(lower: string, upper: string, rel: string): AsyncGenerator<Change> {
  const ln = sortedNames(lower + (rel === "/" ? "" : rel));
  const un = sortedNames(upper + (rel === "/" ? "" : rel));
  let i = 0;
  let j = 0;
  while (i < ln.length || j < un.length) {
    const c = i >= ln.length ? 1 : j >= un.length ? -1 : compareNames(ln[i], un[j]);
    if (c < 0) {
      yield { kind: "delete", path: join(rel, ln[i++]), stat: null };
      continue;
    }
    const p = join(rel, un[j++]);
    const u = lstatxOrNull(upper + p);
    if (c > 0) {
      if (u === null) continue;
      yield { kind: "add", path: p, stat: u };
      if (fileType(u.mode) === S_IFDIR) yield* addAll(upper, p);
      continue;
    }
    i++;
    const l = lstatxOrNull(lower + p);
    if (u === null) {
      if (l !== null) yield { kind: "delete", path: p, stat: null };
      continue;
    }
    if (l === null) {
      yield { kind: "add", path: p, stat: u };
      if (fileType(u.mode) === S_IFDIR) yield* addAll(upper, p);
      continue;
    }
    const same = sameFile(lower + p, l, upper + p, u);
    const lowerDir = fileType(l.mode) === S_IFDIR;
    const upperDir = fileType(u.mode) === S_IFDIR;
    if (!same) yield { kind: "modify", path: p, stat: u };
    else if (isLinked(u)) yield { kind: "unmodified", path: p, stat: u };
    if (upperDir) {
      if (lowerDir) yield* walkBoth(lower, upper, p);
      else yield* addAll(upper, p);
    }
  }
}

/**
 * The changes that turn the tree `lower` into the tree `upper`, as continuity's double walk:
 * `add` for new entries (and everything below a new directory), `delete` for vanished ones
 * (not what was below them), `modify` for entries that are not {@link sameFile}, and
 * `unmodified` for unchanged hard-linked files (so that links to them can be written).
 */
export function doubleWalkChanges(lower: string, upper: string): AsyncGenerator<Change> {
  return walkBoth(lower.replace(/\/+$/, ""), upper.replace(/\/+$/, ""), "/");
}

function isWhiteout(st: Stat): boolean {
  return fileType(st.mode) === S_IFCHR && st.rdevMajor === 0 && st.rdevMinor === 0;
}

function overlayXattr(path: string, name: string): Uint8Array | null {
  try {
    return lgetxattr(path, `trusted.overlay.${name}`);
  } catch (err) {
    if (isErrno(err, "EOPNOTSUPP")) return null;
    throw err;
  }
}

async function* walkUpper(base: string, upper: string, rel: string): AsyncGenerator<Change> {
  for (const name of sortedNames(upper + rel)) {
    const p = join(rel, name);
    const st = lstatxOrNull(upper + p);
    if (st === null) continue;
    const inBase = lstatxOrNull(base + p);
    if (isWhiteout(st)) {
      if (inBase !== null) yield { kind: "delete", path: p, stat: null };
      continue;
    }
    const type = fileType(st.mode);
    if (type === S_IFDIR) {
      if (overlayXattr(upper + p, "redirect") !== null) {
        throw notImplemented(
          `Cannot diff overlay upper dir "${upper}": "${p}" is a renamed directory ` +
            `(redirect_dir), which needs a full comparison`,
        );
      }
      const opaque = inBase !== null && fileType(inBase.mode) === S_IFDIR &&
        bytesEqual(overlayXattr(upper + p, "opaque"), new Uint8Array([0x79]));
      yield { kind: inBase === null ? "add" : "modify", path: p, stat: st, opaque };
      yield* walkUpper(base, upper, p);
      continue;
    }
    if (type === S_IFREG && overlayXattr(upper + p, "metacopy") !== null) {
      throw notImplemented(
        `Cannot diff overlay upper dir "${upper}": "${p}" is a metadata-only copy (metacopy)`,
      );
    }
    yield { kind: inBase === null ? "add" : "modify", path: p, stat: st };
  }
}

/**
 * The changes recorded in an overlayfs upper dir over `base` (the merged lower layers), as
 * continuity's `DiffDirChanges` for overlayfs: every entry of the upper dir is an `add` or a
 * `modify` (whether `base` has it), a whiteout (0:0 char device) a `delete` when `base` has
 * the path, and an opaque directory hiding a lower one carries `opaque`.
 *
 * @throws {TainerdError} NotImplemented when the upper dir uses redirect_dir or metacopy
 */
export function overlayChanges(base: string, upperdir: string): AsyncGenerator<Change> {
  return walkUpper(base.replace(/\/+$/, ""), upperdir.replace(/\/+$/, ""), "");
}

/** Whether a mode is a char or block device. */
export function isDevice(mode: number): boolean {
  const t = fileType(mode);
  return t === S_IFCHR || t === S_IFBLK;
}
