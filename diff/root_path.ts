/**
 * Path resolution scoped to a root directory, as continuity's `fs.RootPath`: a path inside a
 * layer is resolved component by component as if the root were `/` (a chroot): `..` stops at
 * the root, symbolic links are followed but absolute targets start again at the root and
 * relative ones from the link's directory, so the result never leaves the root, whatever
 * hostile symlinks the tree holds. Components that do not exist (or are not directories) are
 * taken literally.
 *
 * @module
 */

import { invalidArgument } from "../plugins/errdefs.ts";
import { fileType, lstatxOrNull } from "../snapshots/statx.ts";

const S_IFDIR = 0o040000;
const S_IFLNK = 0o120000;

/** Symlinks followed in one resolution before giving up, as continuity. */
export const MAX_SYMLINKS = 255;

/**
 * Cleans a slash-separated path lexically as Go's `path.Clean`: no repeated slashes, no `.`,
 * `..` folded where it follows a name (kept at the start of a relative path, dropped after
 * `/`), no trailing slash; `""` becomes `"."`.
 */
export function cleanPath(p: string): string {
  if (p === "") return ".";
  const rooted = p.startsWith("/");
  const out: string[] = [];
  for (const c of p.split("/")) {
    if (c === "" || c === ".") continue;
    if (c === "..") {
      if (out.length > 0 && out[out.length - 1] !== "..") out.pop();
      else if (!rooted) out.push("..");
      continue;
    }
    out.push(c);
  }
  const s = out.join("/");
  return rooted ? "/" + s : s === "" ? "." : s;
}

/**
 * Resolves paths inside one root, remembering directories it found real (no symlink on the
 * way) until told that the tree changed. Not thread-safe with respect to other writers of the
 * tree: the caller owns it while resolving (as when applying a layer).
 */
export class RootResolver {
  /** The root, absolute, without a trailing slash (except `/` itself). */
  readonly root: string;
  readonly #cache = new Map<string, string>();

  /** Creates a resolver for `root` (an absolute directory path). */
  constructor(root: string) {
    this.root = root === "/" ? "/" : root.replace(/\/+$/, "");
  }

  #join(parts: readonly string[]): string {
    if (parts.length === 0) return this.root;
    return (this.root === "/" ? "" : this.root) + "/" + parts.join("/");
  }

  /**
   * The host path of `path` (relative to the root, or absolute meaning relative to it),
   * following symlinks inside the root.
   *
   * @throws {TainerdError} InvalidArgument after more than {@link MAX_SYMLINKS} symlinks
   */
  resolve(path: string): string {
    return this.resolveDir(path).path;
  }

  /**
   * Like {@link RootResolver.resolve}, also telling whether every component turned out to be
   * an existing directory (`real`), i.e. whether the result is an existing directory reached
   * without symlinks in the way.
   */
  resolveDir(path: string): { path: string; real: boolean } {
    const hit = this.#cache.get(path);
    if (hit !== undefined) return { path: hit, real: true };
    const pending = path.split("/").reverse();
    const resolved: string[] = [];
    let links = 0;
    let allReal = true;
    while (pending.length > 0) {
      const c = pending.pop()!;
      if (c === "" || c === ".") continue;
      if (c === "..") {
        resolved.pop();
        continue;
      }
      resolved.push(c);
      const host = this.#join(resolved);
      const st = lstatxOrNull(host);
      const type = st === null ? 0 : fileType(st.mode);
      if (type === S_IFDIR) continue;
      if (type !== S_IFLNK) {
        allReal = false; // missing or not a directory: taken literally
        continue;
      }
      if (++links > MAX_SYMLINKS) {
        throw invalidArgument(
          `Cannot resolve ${JSON.stringify(path)} in ${JSON.stringify(this.root)}: too many ` +
            `levels of symbolic links`,
        );
      }
      resolved.pop();
      const target = Deno.readLinkSync(host);
      if (target.startsWith("/")) resolved.length = 0;
      const parts = target.split("/");
      for (let i = parts.length - 1; i >= 0; i--) pending.push(parts[i]);
    }
    const out = this.#join(resolved);
    if (allReal) this.#cache.set(path, out);
    return { path: out, real: allReal };
  }

  /** Forgets every remembered resolution: call it after removing a directory or symlink. */
  invalidate(): void {
    this.#cache.clear();
  }
}

/**
 * Resolves `path` inside `root` as continuity's `fs.RootPath` (see {@link RootResolver}).
 *
 * @throws {TainerdError} InvalidArgument after too many symlinks
 */
export function rootPath(root: string, path: string): string {
  return new RootResolver(root).resolve(path);
}
