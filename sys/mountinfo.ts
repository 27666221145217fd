/**
 * The mount table from `/proc/<pid>/mountinfo` (proc(5)): a parser, a filtered reader, and
 * the questions asked of it: is this path a mount point, which mount holds this path.
 *
 * @module
 */

import { notFound } from "../plugins/errdefs.ts";

/** One line of mountinfo, as containerd's `mount.Info`. */
export interface MountInfo {
  /** Unique id of the mount. */
  id: number;
  /** Id of the parent mount (itself for the root of the tree). */
  parent: number;
  /** Major device number of `st_dev` for files on this filesystem. */
  major: number;
  /** Minor device number of `st_dev`. */
  minor: number;
  /** The path within the filesystem that is the root of this mount (e.g. a bind source). */
  root: string;
  /** The mount point, relative to the process's root. */
  mountpoint: string;
  /** Per-mount options (`rw,nosuid,relatime`). */
  options: string;
  /** Optional fields, space-separated (`shared:1 master:2`), or empty. */
  optional: string;
  /** Filesystem type (`ext4`, `overlay`, `fuse.sshfs`). */
  fstype: string;
  /** Filesystem-specific source (`/dev/sda1`, `overlay`, `tmpfs`). */
  source: string;
  /** Per-superblock options (`rw,lowerdir=…`). */
  vfsOptions: string;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** Undoes the kernel's octal escapes (`\040` for space, `\011`, `\012`, `\134`). */
function unescape(field: string): string {
  if (!field.includes("\\")) return field;
  const bytes: number[] = [];
  for (let i = 0; i < field.length;) {
    if (field[i] === "\\" && /^[0-7]{3}$/.test(field.slice(i + 1, i + 4))) {
      bytes.push(parseInt(field.slice(i + 1, i + 4), 8));
      i += 4;
    } else {
      const cp = field.codePointAt(i)!;
      const ch = String.fromCodePoint(cp);
      bytes.push(...encoder.encode(ch));
      i += ch.length;
    }
  }
  return decoder.decode(new Uint8Array(bytes));
}

/**
 * Parses the text of a mountinfo file.
 *
 * @throws {Error} on a line that does not have mountinfo's shape
 */
export function parseMountinfo(text: string): MountInfo[] {
  const out: MountInfo[] = [];
  for (const line of text.split("\n")) {
    if (line === "") continue;
    const fields = line.split(" ");
    const sep = fields.indexOf("-", 6);
    if (fields.length < 10 || sep === -1 || fields.length < sep + 3) {
      throw new Error(`Cannot parse mountinfo line: ${JSON.stringify(line)}`);
    }
    const [major, minor] = fields[2].split(":").map(Number);
    out.push({
      id: Number(fields[0]),
      parent: Number(fields[1]),
      major,
      minor,
      root: unescape(fields[3]),
      mountpoint: unescape(fields[4]),
      options: fields[5],
      optional: fields.slice(6, sep).join(" "),
      fstype: unescape(fields[sep + 1]),
      source: unescape(fields[sep + 2]),
      vfsOptions: unescape(fields.slice(sep + 3).join(" ")),
    });
  }
  return out;
}

/**
 * The mounts of a process (this one by default), in mount order, optionally filtered.
 *
 * @param filter keeps the entries for which it returns true
 * @param pid whose mount namespace to read: `"self"` or a pid
 */
export function mountinfo(
  filter?: (info: MountInfo) => boolean,
  pid: number | "self" = "self",
): MountInfo[] {
  const all = parseMountinfo(Deno.readTextFileSync(`/proc/${pid}/mountinfo`));
  return filter ? all.filter(filter) : all;
}

/** The canonical absolute form of `path` (symlinks resolved), as mountinfo shows it. */
function canonical(path: string): string {
  return Deno.realPathSync(path);
}

/**
 * Whether `path` (after resolving symlinks) is a mount point in this process's mount table.
 *
 * @throws {Deno.errors.NotFound} when `path` does not exist
 */
export function isMountpoint(path: string): boolean {
  const p = canonical(path);
  return mountinfo().some((m) => m.mountpoint === p);
}

function isUnder(path: string, dir: string): boolean {
  return dir === "/" || path === dir || path.startsWith(dir + "/");
}

/**
 * The mount that holds `path` (after resolving symlinks): the one with the longest mount point
 * above it, the topmost when mounts are stacked — as containerd's `mount.Lookup`.
 *
 * @throws {TainerdError} NotFound when no mount holds it (e.g. outside a chroot's view)
 */
export function lookupMount(path: string): MountInfo {
  const p = canonical(path);
  let best: MountInfo | null = null;
  for (const m of mountinfo((m) => isUnder(p, m.mountpoint))) {
    if (best === null || m.mountpoint.length >= best.mountpoint.length) best = m;
  }
  if (best === null) throw notFound(`Cannot find the mount holding ${JSON.stringify(path)}`);
  return best;
}
