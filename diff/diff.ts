/**
 * Creating layers from changes, as containerd's walking differ (`diff/walking`) and
 * `archive.ChangeWriter`: the changes between two mounted trees become a tar of the new and
 * modified entries with OCI whiteouts for deletions (and `.wh..wh..opq` for opaque overlay
 * directories), optionally compressed, with both digests computed while streaming.
 *
 * Entries follow the walk order (sorted by name, a directory before its contents); parents of
 * changed entries are included; hard links between written files stay hard links; times are
 * whole seconds; owners are numeric (no user names); of the extended attributes only
 * `security.capability` is written, as containerd does (or all but `trusted.*` with
 * `xattrs: "all"`).
 *
 * @module
 */

import { Digester } from "../plugins/content/digest.ts";
import { isErrno, lgetxattr, llistxattr } from "../sys/libc.ts";
import { type Mount, withReadonlyTempMount } from "../sys/mount.ts";
import { type TarHeaderInit, tarTimeFromDate, TarType, TarWriter } from "../archive/tar/mod.ts";
import { fileType, lstatxOrNull, type Stat } from "../snapshots/statx.ts";
import { type Change, doubleWalkChanges, overlayChanges } from "./changes.ts";
import { type Compression, compressor, ociLayerMediaType } from "./compression.ts";
import { WHITEOUT_OPAQUE, WHITEOUT_PREFIX } from "./apply_tar.ts";

const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;
const S_IFREG = 0o100000;
const S_IFCHR = 0o020000;
const S_IFBLK = 0o060000;
const S_IFIFO = 0o010000;
const S_IFSOCK = 0o140000;

/** Files up to this size are read in one call. */
const SMALL_FILE = 1024 * 1024;

/** Options of {@link writeChanges}. */
export interface WriteChangesOptions {
  /** mtime of whiteout entries (default: now, as containerd). */
  whiteoutTime?: Date;
  /**
   * Extended attributes to write: `"capability"` (default, containerd's choice) writes only
   * `security.capability`; `"all"` every attribute except `trusted.*`.
   */
  xattrs?: "capability" | "all";
}

function parentOf(name: string): string {
  const i = name.lastIndexOf("/");
  return i < 0 ? "" : name.slice(0, i);
}

function readXattrs(path: string, which: "capability" | "all"): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  try {
    const names = which === "all"
      ? llistxattr(path).filter((n) => !n.startsWith("trusted."))
      : ["security.capability"];
    for (const n of names) {
      const v = lgetxattr(path, n);
      if (v !== null && (which === "all" || v.length > 0)) out.set(n, v);
    }
  } catch (err) {
    if (!isErrno(err, "EOPNOTSUPP")) throw err;
  }
  return out;
}

/**
 * Writes `changes` of the tree at `source` as a layer tar, as containerd's `ChangeWriter`.
 * The returned stream errors if a change cannot be written (e.g. a file changed size while
 * being read).
 */
export function writeChanges(
  changes: AsyncIterable<Change>,
  source: string,
  options: WriteChangesOptions = {},
): ReadableStream<Uint8Array> {
  const root = source.replace(/\/+$/, "");
  const writer = new TarWriter({ highWaterMark: 256 * 1024 });
  const whiteoutTime = tarTimeFromDate(options.whiteoutTime ?? new Date());
  whiteoutTime.nsec = 0;
  const xattrs = options.xattrs ?? "capability";
  const inodeSrc = new Map<string, string>();
  const inodeRefs = new Map<string, string[]>();
  const addedDirs = new Set<string>();

  const includeParents = async (name: string, isDir: boolean): Promise<void> => {
    const trimmed = name.replace(/\/+$/, "");
    const parent = parentOf(trimmed);
    if (trimmed !== "" && parent !== "" && !addedDirs.has(parent)) {
      addedDirs.add(parent);
      const st = lstatxOrNull(`${root}/${parent}`);
      if (st !== null) await handle({ kind: "modify", path: `/${parent}`, stat: st });
    }
    if (isDir) addedDirs.add(trimmed);
  };

  const handle = async (c: Change): Promise<void> => {
    const rel = c.path.replace(/^\/+/, "");
    if (c.kind === "delete") {
      const parent = parentOf(rel);
      const base = rel.slice(parent === "" ? 0 : parent.length + 1);
      const name = (parent === "" ? "" : parent + "/") + WHITEOUT_PREFIX + base;
      await includeParents(name, false);
      await writer.writeEntry({ name, type: TarType.Regular, size: 0, mtime: whiteoutTime });
      return;
    }
    const st = c.stat as Stat;
    const type = fileType(st.mode);
    if (type === S_IFSOCK) return; // sockets are not archived
    const path = `${root}/${rel}`;
    const header: TarHeaderInit = {
      name: type === S_IFDIR ? `${rel}/` : rel,
      mode: st.mode & 0o7777,
      uid: st.uid,
      gid: st.gid,
      mtime: { sec: st.mtime.sec, nsec: 0 },
      size: 0,
    };
    switch (type) {
      case S_IFDIR:
        header.type = TarType.Dir;
        break;
      case S_IFREG:
        header.type = TarType.Regular;
        header.size = st.size;
        break;
      case S_IFLNK:
        header.type = TarType.Symlink;
        header.linkname = Deno.readLinkSync(path);
        break;
      case S_IFCHR:
      case S_IFBLK:
        header.type = type === S_IFCHR ? TarType.Char : TarType.Block;
        header.devmajor = st.rdevMajor;
        header.devminor = st.rdevMinor;
        break;
      case S_IFIFO:
        header.type = TarType.Fifo;
        break;
      default:
        return;
    }

    let additionalLinks: string[] | undefined;
    if (type !== S_IFDIR && st.nlink > 1) {
      const inode = `${st.dev}:${st.ino}`;
      const first = inodeSrc.get(inode);
      if (first !== undefined) {
        header.type = TarType.Hardlink;
        header.linkname = first;
        header.size = 0;
      } else {
        if (c.kind === "unmodified") {
          const refs = inodeRefs.get(inode) ?? [];
          refs.push(header.name);
          inodeRefs.set(inode, refs);
          return;
        }
        inodeSrc.set(inode, header.name);
        additionalLinks = inodeRefs.get(inode);
        inodeRefs.delete(inode);
      }
    } else if (c.kind === "unmodified") {
      return;
    }

    const x = readXattrs(path, xattrs);
    if (x.size > 0) header.xattrs = x;
    await includeParents(header.name, type === S_IFDIR);
    if (header.type === TarType.Regular && header.size! > 0) {
      if (header.size! <= SMALL_FILE) {
        await writer.writeEntry(header, Deno.readFileSync(path));
      } else {
        const file = await Deno.open(path);
        await writer.writeEntry(header, file.readable);
      }
    } else {
      await writer.writeEntry(header);
    }
    if (c.opaque) {
      await writer.writeEntry({
        name: `${rel}/${WHITEOUT_OPAQUE}`,
        type: TarType.Regular,
        size: 0,
        mtime: whiteoutTime,
      });
    }
    if (additionalLinks) {
      for (const extra of additionalLinks) {
        const link: TarHeaderInit = {
          ...header,
          name: extra,
          type: TarType.Hardlink,
          linkname: header.name,
          size: 0,
        };
        await includeParents(extra, false);
        await writer.writeEntry(link);
      }
    }
  };

  (async () => {
    try {
      for await (const c of changes) await handle(c);
      await writer.close();
    } catch (err) {
      writer.abort(err);
    }
  })();
  return writer.readable;
}

/** Options of {@link diffMounts} and {@link diffDirs}. */
export interface DiffOptions extends WriteChangesOptions {
  /** Compression of the layer (default gzip, as containerd's default media type). */
  compression?: Compression;
  /** Compression level (see `compressor`). */
  level?: number;
  /**
   * When the upper mounts are an overlay over exactly the lower layers, read the changes from
   * its upper dir instead of comparing both trees (default true).
   */
  overlayFastPath?: boolean;
  /** Stops the diff. */
  signal?: AbortSignal;
}

/** What a diff produced. */
export interface DiffResult {
  /** Digest of the layer as written to the sink (compressed). */
  digest: string;
  /** Bytes written to the sink. */
  size: number;
  /** Digest of the uncompressed tar (the layer's diff ID). */
  diffID: string;
  /** Bytes of the uncompressed tar. */
  uncompressedSize: number;
  /** The OCI media type of the layer. */
  mediaType: string;
  /** Its compression. */
  compression: Compression;
}

function tap(digester: Digester): TransformStream<Uint8Array, Uint8Array> {
  return new TransformStream<Uint8Array, Uint8Array>({
    transform(chunk, controller) {
      digester.update(chunk);
      controller.enqueue(chunk);
    },
  });
}

async function writeLayer(
  tar: ReadableStream<Uint8Array>,
  sink: WritableStream<Uint8Array>,
  options: DiffOptions,
): Promise<DiffResult> {
  const compression = options.compression ?? "gzip";
  const uncompressed = new Digester();
  const compressed = new Digester();
  await tar
    .pipeThrough(tap(uncompressed))
    .pipeThrough(compressor(compression, { level: options.level }))
    .pipeThrough(tap(compressed))
    .pipeTo(sink, { signal: options.signal });
  return {
    digest: compressed.digest(),
    size: compressed.size,
    diffID: uncompressed.digest(),
    uncompressedSize: uncompressed.size,
    mediaType: ociLayerMediaType(compression),
    compression,
  };
}

/**
 * Writes the layer that turns directory `lower` into directory `upper` to `sink` (double walk).
 * The sink is closed at the end (aborted on failure).
 */
export function diffDirs(
  lower: string,
  upper: string,
  sink: WritableStream<Uint8Array>,
  options: DiffOptions = {},
): Promise<DiffResult> {
  return writeLayer(writeChanges(doubleWalkChanges(lower, upper), upper, options), sink, options);
}

function option(m: Mount, key: string): string | undefined {
  const o = (m.options ?? []).find((o) => o.startsWith(key + "="));
  return o?.slice(key.length + 1);
}

/** The lower dirs the lower mounts show, when they are plain layer directories. */
function lowerDirsOf(lower: readonly Mount[]): string[] | null {
  if (lower.length !== 1) return null;
  const m = lower[0];
  if (m.type === "bind") return [m.source];
  if (m.type === "overlay" && option(m, "upperdir") === undefined) {
    return option(m, "lowerdir")?.split(":") ?? null;
  }
  return null;
}

function overlayParametersOn(): boolean {
  for (const p of ["redirect_dir", "metacopy"]) {
    try {
      const v = Deno.readTextFileSync(`/sys/module/overlay/parameters/${p}`).trim();
      if (v !== "N" && v !== "off") return true;
    } catch {
      // Parameter unknown to this kernel: off.
    }
  }
  return false;
}

/**
 * The upper dir of `upper` when it is an overlay directly over what `lower` shows (the
 * parent's view), so that its changes can be read from the upper dir alone.
 */
export function overlayUpperOver(
  lower: readonly Mount[],
  upper: readonly Mount[],
): string | null {
  if (upper.length !== 1 || upper[0].type !== "overlay") return null;
  const u = upper[0];
  const upperdir = option(u, "upperdir");
  const lowerdirs = option(u, "lowerdir")?.split(":");
  if (upperdir === undefined || lowerdirs === undefined) return null;
  if ((u.options ?? []).some((o) => /^(redirect_dir|metacopy)=(on|follow)/.test(o))) return null;
  const expected = lowerDirsOf(lower);
  if (expected === null || expected.join(":") !== lowerdirs.join(":")) return null;
  if (overlayParametersOn()) return null;
  return upperdir;
}

/**
 * Writes the layer of the changes from the `lower` mounts to the `upper` mounts to `sink`, as
 * containerd's walking differ `Compare`: both are mounted on temporary directories (the upper
 * read-only) and compared — or, when the upper is an overlay over exactly the lower layers,
 * its upper dir is read directly. The sink is closed at the end (aborted on failure).
 */
export async function diffMounts(
  lower: readonly Mount[],
  upper: readonly Mount[],
  sink: WritableStream<Uint8Array>,
  options: DiffOptions = {},
): Promise<DiffResult> {
  const upperdir = options.overlayFastPath === false ? null : overlayUpperOver(lower, upper);
  return await withReadonlyTempMount(lower, async (lowerRoot) => {
    if (upperdir !== null) {
      const tar = writeChanges(overlayChanges(lowerRoot, upperdir), upperdir, options);
      return await writeLayer(tar, sink, options);
    }
    return await withReadonlyTempMount(
      upper,
      (upperRoot) => diffDirs(lowerRoot, upperRoot, sink, options),
    );
  });
}
