/**
 * containerd's `mount` package: a mount as `{type, source, options}`, the fstab-style option
 * parser, mounting a list in order, unmounting (with EBUSY retries), and temporary mounts.
 *
 * ## Overlay lowerdir lists longer than a page
 *
 * mount(2) copies at most one page of `data`, and an overlay with many layers (each lowerdir an
 * absolute path) exceeds it. containerd shortens the paths to be relative to their common
 * parent directory and mounts from a forked child that `fchdir`s there first. Deno cannot fork,
 * and `chdir` is process-wide (other async ops resolve relative paths against it), so here:
 *
 * 1. The common parent directory is opened (`O_PATH`) and every lowerdir is rewritten as
 *    `/proc/self/fd/<fd>/<relative>`; the kernel resolves those magic links in this process,
 *    with no change of directory. This fits about 150 layers of containerd's snapshot layout
 *    (`…/snapshots/<id>/fs`) in a page and costs no process.
 * 2. If even that is too long, the relative form is mounted by util-linux `mount(8)` run with
 *    its working directory set to the common parent (`Deno.Command`'s `cwd`), which is exactly
 *    containerd's arrangement done by a short-lived helper. The flags are passed by name
 *    (`ro,nosuid,…`); propagation changes are still applied here afterwards.
 *
 * Either way `/proc/self/mountinfo` then shows the rewritten lowerdir paths, as it shows
 * containerd's relative ones.
 *
 * @module
 */

import { internal, invalidArgument, notImplemented } from "../plugins/errdefs.ts";
import {
  close,
  isErrno,
  mount,
  MS_BIND,
  MS_DIRSYNC,
  MS_MANDLOCK,
  MS_NOATIME,
  MS_NODEV,
  MS_NODIRATIME,
  MS_NOEXEC,
  MS_NOSUID,
  MS_NOSYMFOLLOW,
  MS_PRIVATE,
  MS_RDONLY,
  MS_REC,
  MS_RELATIME,
  MS_REMOUNT,
  MS_SHARED,
  MS_SILENT,
  MS_SLAVE,
  MS_STRICTATIME,
  MS_SYNCHRONOUS,
  MS_UNBINDABLE,
  O_CLOEXEC,
  O_DIRECTORY,
  O_PATH,
  open,
  pageSize,
  statfsType,
  umount2,
} from "./libc.ts";

/** A mount to perform, as containerd's `mount.Mount` (and the API's `containerd.types.Mount`). */
export interface Mount {
  /** Filesystem type: `overlay`, `bind`, `tmpfs`, `fuse3.<subtype>`, … */
  type: string;
  /** Source: a device, a directory for bind mounts, or a label such as `overlay`. */
  source: string;
  /** fstab-style options: flags (`ro`, `rbind`, `nosuid`) and data (`lowerdir=…`). */
  options?: string[];
}

/** The result of {@linkcode parseMountOptions}. */
export interface ParsedMountOptions {
  /** The `MS_*` flags. */
  flags: number;
  /** The remaining options joined with commas: the filesystem-specific data. */
  data: string;
  /** Whether `loop` was given (the source must be attached to a loop device). */
  losetup: boolean;
}

const PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE;

/** Option name → [clears the flag?, flag]. containerd's table plus propagation options. */
const OPTION_FLAGS: ReadonlyMap<string, readonly [boolean, number]> = new Map<
  string,
  readonly [boolean, number]
>([
  ["async", [true, MS_SYNCHRONOUS]],
  ["atime", [true, MS_NOATIME]],
  ["bind", [false, MS_BIND]],
  ["defaults", [false, 0]],
  ["dev", [true, MS_NODEV]],
  ["diratime", [true, MS_NODIRATIME]],
  ["dirsync", [false, MS_DIRSYNC]],
  ["exec", [true, MS_NOEXEC]],
  ["mand", [false, MS_MANDLOCK]],
  ["noatime", [false, MS_NOATIME]],
  ["nodev", [false, MS_NODEV]],
  ["nodiratime", [false, MS_NODIRATIME]],
  ["noexec", [false, MS_NOEXEC]],
  ["nomand", [true, MS_MANDLOCK]],
  ["norelatime", [true, MS_RELATIME]],
  ["nostrictatime", [true, MS_STRICTATIME]],
  ["nosuid", [false, MS_NOSUID]],
  ["rbind", [false, MS_BIND | MS_REC]],
  ["relatime", [false, MS_RELATIME]],
  ["remount", [false, MS_REMOUNT]],
  ["ro", [false, MS_RDONLY]],
  ["rw", [true, MS_RDONLY]],
  ["strictatime", [false, MS_STRICTATIME]],
  ["suid", [true, MS_NOSUID]],
  ["sync", [false, MS_SYNCHRONOUS]],
  ["private", [false, MS_PRIVATE]],
  ["rprivate", [false, MS_PRIVATE | MS_REC]],
  ["shared", [false, MS_SHARED]],
  ["rshared", [false, MS_SHARED | MS_REC]],
  ["slave", [false, MS_SLAVE]],
  ["rslave", [false, MS_SLAVE | MS_REC]],
  ["unbindable", [false, MS_UNBINDABLE]],
  ["runbindable", [false, MS_UNBINDABLE | MS_REC]],
]);

/**
 * Splits fstab-style options into mount(2) flags and data, as containerd's
 * `parseMountOptions`: options are applied in order (`rw` after `ro` clears `MS_RDONLY`), `loop`
 * sets `losetup`, and anything else — including `defaults`, whose flag is 0 — goes to `data`
 * in its original order. Propagation options (`private`, `rshared`, `rslave`, `unbindable`, …)
 * set their `MS_*` flags as runc's parser does.
 */
export function parseMountOptions(options: readonly string[]): ParsedMountOptions {
  let flags = 0;
  let losetup = false;
  const data: string[] = [];
  for (const o of options) {
    const f = OPTION_FLAGS.get(o);
    if (f !== undefined && f[1] !== 0) {
      flags = f[0] ? flags & ~f[1] : flags | f[1];
    } else if (o === "loop") {
      losetup = true;
    } else {
      data.push(o);
    }
  }
  return { flags, data: data.join(","), losetup };
}

const encoder = new TextEncoder();

function byteLength(s: string): number {
  return encoder.encode(s).length;
}

function optionsSize(options: readonly string[]): number {
  return options.reduce((n, o) => n + byteLength(o), 0);
}

function longestCommonPrefix(strs: readonly string[]): string {
  if (strs.length === 0) return "";
  let min = strs[0];
  let max = strs[0];
  for (const s of strs) {
    if (s < min) min = s;
    if (s > max) max = s;
  }
  let i = 0;
  while (i < min.length && i < max.length && min[i] === max[i]) i++;
  return min.slice(0, i);
}

/** Go's `path.Dir` for absolute paths: what precedes the last slash (`/a/b/` → `/a/b`). */
function dirname(p: string): string {
  const i = p.lastIndexOf("/");
  if (i < 0) return ".";
  return p.slice(0, i).replace(/\/+$/, "") || "/";
}

interface CompactLowerdir {
  /** Index of the `lowerdir=` option. */
  index: number;
  /** The common parent directory, ending in `/`. */
  dir: string;
  /** The lowerdirs relative to `dir`. */
  relative: string[];
}

/** containerd's `compactLowerdirOption`: null when there is nothing to shorten. */
function compactLowerdir(options: readonly string[]): CompactLowerdir | null {
  const index = options.findIndex((o) => o.startsWith("lowerdir="));
  if (index === -1) return null;
  const dirs = options[index].slice("lowerdir=".length).split(":");
  if (dirs.length === 1) return null;
  const common = longestCommonPrefix(dirs);
  if (common === "") return null;
  // The common prefix may end inside a name (snapshots/1 and snapshots/12): use its parent.
  const parent = dirname(common);
  if (parent === "/" || parent === "." || !parent.startsWith("/")) return null;
  const dir = parent + "/";
  return { index, dir, relative: dirs.map((d) => d.slice(dir.length)) };
}

function withLowerdirs(options: readonly string[], index: number, dirs: string[]): string[] {
  const out = [...options];
  out[index] = `lowerdir=${dirs.join(":")}`;
  return out;
}

function tooLong(data: string, page: number): boolean {
  return byteLength(data) + 1 > page; // the kernel copies one page, NUL included
}

/** Applies what follows the initial mount(2), as containerd's `Mount.Mount`. */
function finishMount(target: string, flags: number): void {
  if ((flags & PROPAGATION) !== 0) {
    mount("", target, "", flags & (PROPAGATION | MS_REC | MS_SILENT));
  }
  const oflags = flags & ~PROPAGATION;
  if ((oflags & (MS_BIND | MS_RDONLY)) === (MS_BIND | MS_RDONLY)) {
    // A bind mount ignores MS_RDONLY: remount it read-only.
    mount("", target, "", oflags | MS_REMOUNT);
  }
}

/** The `mount(8)` names of flags, to hand them to the helper. */
const FLAG_NAMES: readonly (readonly [number, string])[] = [
  [MS_RDONLY, "ro"],
  [MS_NOSUID, "nosuid"],
  [MS_NODEV, "nodev"],
  [MS_NOEXEC, "noexec"],
  [MS_SYNCHRONOUS, "sync"],
  [MS_REMOUNT, "remount"],
  [MS_MANDLOCK, "mand"],
  [MS_DIRSYNC, "dirsync"],
  [MS_NOSYMFOLLOW, "nosymfollow"],
  [MS_NOATIME, "noatime"],
  [MS_NODIRATIME, "nodiratime"],
  [MS_RELATIME, "relatime"],
  [MS_STRICTATIME, "strictatime"],
];

async function run(cmd: string, args: string[], cwd?: string): Promise<void> {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    env: { LC_ALL: "C" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    const text = new TextDecoder().decode(out.stderr).trim() ||
      new TextDecoder().decode(out.stdout).trim();
    throw internal(`Cannot run ${cmd} ${args.join(" ")}: exit status ${out.code}: ${text}`);
  }
}

function absolute(path: string): string {
  if (path.startsWith("/")) return path;
  return `${Deno.cwd().replace(/\/$/, "")}/${path}`;
}

async function mountOverlayLong(
  m: Mount,
  options: readonly string[],
  compact: CompactLowerdir,
  target: string,
  page: number,
): Promise<void> {
  // 1. /proc/self/fd/<fd>/<relative> lowerdirs, mounted in-process.
  const fd = open(compact.dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
  try {
    const viaFd = compact.relative.map((r) => `/proc/self/fd/${fd}/${r}`);
    const parsed = parseMountOptions(withLowerdirs(options, compact.index, viaFd));
    if (!tooLong(parsed.data, page)) {
      mount(m.source, target, m.type, parsed.flags & ~PROPAGATION, parsed.data);
      finishMount(target, parsed.flags);
      return;
    }
  } finally {
    close(fd);
  }
  // 2. Relative lowerdirs, mounted by mount(8) running in the common directory.
  const parsed = parseMountOptions(withLowerdirs(options, compact.index, compact.relative));
  if (tooLong(parsed.data, page)) {
    throw invalidArgument(
      `Cannot mount ${m.type} on ${JSON.stringify(target)}: mount options are too long`,
    );
  }
  const oflags = parsed.flags & ~PROPAGATION;
  const names = FLAG_NAMES.filter(([f]) => (oflags & f) !== 0).map(([, n]) => n);
  const opts = [...names, parsed.data].filter((o) => o !== "").join(",");
  await run(
    "mount",
    ["-n", "-i", "-t", m.type, "-o", opts, m.source, absolute(target)],
    compact.dir,
  );
  finishMount(target, parsed.flags);
}

const FUSE_HELPERS = ["mount.fuse", "mount.fuse3"];

/**
 * Mounts `m` on `target`, as containerd's `Mount.Mount`: one mount(2) with the
 * non-propagation flags and the data (skipped for a remount without data), then a propagation
 * change if asked for, then a read-only remount for `bind,ro`. `fuse.`/`fuse3.` types go
 * through the `mount.fuse`/`mount.fuse3` helpers. Overlays whose options approach a page are
 * shortened as described in this module's documentation.
 *
 * @throws {SysError} from mount(2), e.g. ENOENT when `target` does not exist
 * @throws {TainerdError} InvalidArgument when the options are too long; NotImplemented for `loop`
 */
export async function mountOne(m: Mount, target: string): Promise<void> {
  const options = m.options ?? [];
  for (const helper of FUSE_HELPERS) {
    const prefix = helper.slice("mount.".length) + ".";
    if (m.type.startsWith(prefix)) {
      const args = [m.source, target, ...options.flatMap((o) => ["-o", o])];
      await run(helper, [...args, "-t", m.type.slice(prefix.length)]);
      return;
    }
  }
  const page = pageSize();
  if (m.type === "overlay" && optionsSize(options) >= page - 512) {
    const compact = compactLowerdir(options);
    if (compact !== null) return await mountOverlayLong(m, options, compact, target, page);
  }
  const { flags, data, losetup } = parseMountOptions(options);
  if (losetup) {
    throw notImplemented(`Cannot mount ${JSON.stringify(m.source)}: loop mounts are not supported`);
  }
  if (tooLong(data, page)) {
    throw invalidArgument(
      `Cannot mount ${m.type} on ${JSON.stringify(target)}: mount options are too long`,
    );
  }
  if ((flags & MS_REMOUNT) === 0 || data !== "") {
    mount(m.source, target, m.type, flags & ~PROPAGATION, data);
  }
  finishMount(target, flags);
}

/** Mounts each of `mounts` on `target` in order (later ones on top), as containerd's `mount.All`. */
export async function mountAll(mounts: readonly Mount[], target: string): Promise<void> {
  for (const m of mounts) await mountOne(m, target);
}

const FUSE_SUPER_MAGIC = 0x65735546;

function isFuse(path: string): boolean {
  try {
    return statfsType(path) === FUSE_SUPER_MAGIC;
  } catch {
    return false;
  }
}

async function unmountOnce(target: string, flags: number): Promise<void> {
  if (isFuse(target)) {
    for (const helper of ["fusermount3", "fusermount"]) {
      try {
        await run(helper, ["-u", target]);
        return;
      } catch {
        // try the next helper, then umount2
      }
    }
  }
  for (let i = 0; i < 50; i++) {
    try {
      umount2(target, flags);
      return;
    } catch (err) {
      if (!isErrno(err, "EBUSY")) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
  umount2(target, flags);
}

/**
 * Unmounts the topmost mount at `target`, as containerd's `mount.Unmount`: FUSE mounts through
 * `fusermount3`/`fusermount` first, EBUSY retried for 2.5 s, and EINVAL (not a mount point)
 * ignored.
 *
 * @param flags `MNT_DETACH` etc. from `libc.ts`
 */
export async function unmount(target: string, flags = 0): Promise<void> {
  try {
    await unmountOnce(target, flags);
  } catch (err) {
    if (!isErrno(err, "EINVAL")) throw err;
  }
}

/**
 * Unmounts every mount stacked at `target` until none is left, as containerd's
 * `mount.UnmountAll`. Does nothing for an empty or missing `target`.
 */
export async function unmountAll(target: string, flags = 0): Promise<void> {
  if (target === "") return;
  try {
    Deno.statSync(target);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return;
    throw err;
  }
  for (;;) {
    try {
      await unmountOnce(target, flags);
    } catch (err) {
      if (isErrno(err, "EINVAL")) return;
      throw err;
    }
  }
}

/**
 * Read-only variants of `mounts`, as containerd's `readonlyMounts`: an overlay loses its
 * upperdir (which becomes the top lowerdir) and workdir; any other mount gets `ro` instead of
 * `rw`/`ro`. The input is not modified.
 */
export function readonlyMounts(mounts: readonly Mount[]): Mount[] {
  return mounts.map((m) => {
    const options = m.options ?? [];
    if (m.type === "overlay") {
      const upper = options.find((o) => o.startsWith("upperdir="))?.slice("upperdir=".length);
      const out = options.filter((o) => !o.startsWith("upperdir=") && !o.startsWith("workdir="));
      return {
        ...m,
        options: upper === undefined || upper === ""
          ? out
          : out.map((o) =>
            o.startsWith("lowerdir=") ? `lowerdir=${upper}:${o.slice("lowerdir=".length)}` : o
          ),
      };
    }
    return { ...m, options: [...options.filter((o) => o !== "rw" && o !== "ro"), "ro"] };
  });
}

/** Options of {@linkcode withTempMount}. */
export interface TempMountOptions {
  /**
   * Where to create the temporary mount point: default `$XDG_RUNTIME_DIR`, else the system
   * temporary directory.
   */
  tempDir?: string;
}

function defaultTempDir(): string | undefined {
  try {
    return Deno.env.get("XDG_RUNTIME_DIR") || undefined;
  } catch {
    return undefined;
  }
}

/**
 * Mounts `mounts` on a new temporary directory, runs `fn` with it, and always unmounts
 * everything and removes the directory afterwards — also when mounting or `fn` fails — as
 * containerd's `mount.WithTempMount`. `fn`'s error is rethrown as is; if unmounting fails too,
 * an `AggregateError` of both is thrown. The directory is never removed recursively.
 *
 * @returns what `fn` returns
 */
export async function withTempMount<T>(
  mounts: readonly Mount[],
  fn: (root: string) => T | Promise<T>,
  options: TempMountOptions = {},
): Promise<T> {
  const root = await Deno.makeTempDir({
    dir: options.tempDir ?? defaultTempDir(),
    prefix: "tainerd-mount",
  });
  const cleanup = async () => {
    try {
      await unmountAll(root, 0);
    } catch (err) {
      throw internal(`Cannot unmount ${JSON.stringify(root)}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    await Deno.remove(root).catch(() => {});
  };
  let value: T;
  try {
    await mountAll(mounts, root);
    value = await fn(root);
  } catch (err) {
    try {
      await cleanup();
    } catch (cleanupErr) {
      throw new AggregateError([err, cleanupErr], (cleanupErr as Error).message);
    }
    throw err;
  }
  await cleanup();
  return value;
}

/** {@linkcode withTempMount} over {@linkcode readonlyMounts}, as containerd's `WithReadonlyTempMount`. */
export function withReadonlyTempMount<T>(
  mounts: readonly Mount[],
  fn: (root: string) => T | Promise<T>,
  options: TempMountOptions = {},
): Promise<T> {
  return withTempMount(readonlyMounts(mounts), fn, options);
}
