/**
 * Disk usage of a directory tree for CRI's `ImageFsInfo`, as containerd's `fs.DiskUsage`:
 * allocated blocks (`st_blocks * 512`) and inodes, each inode counted once (hard links), the
 * walk asynchronous (a few `lstat`s in flight, never a synchronous call) and its result cached
 * for a while, so kubelet's frequent polls cost one walk per interval.
 *
 * ```ts
 * import { DiskUsageCache } from "./fs_usage.ts";
 * const du = new DiskUsageCache("/var/lib/tainerd/io.containerd.snapshotter.v1.overlayfs");
 * const { bytes, inodes } = await du.get();
 * ```
 *
 * @module
 */

import { join } from "node:path";

/** What a walk found. */
export interface DiskUsage {
  /** Bytes allocated on disk. */
  bytes: number;
  /** Inodes (files, directories, links…), hard links counted once. */
  inodes: number;
  /** When the walk finished (milliseconds since the epoch). */
  at: number;
}

/** `lstat`s in flight at once during a walk. */
const WALK_CONCURRENCY = 16;

function isGone(err: unknown): boolean {
  return err instanceof Deno.errors.NotFound;
}

/**
 * Walks `root` and sums its usage. Entries vanishing during the walk (snapshots being removed)
 * are skipped; a missing `root` is empty.
 */
export async function diskUsage(root: string): Promise<DiskUsage> {
  const seen = new Set<string>();
  let bytes = 0;
  const queue: string[] = [root];
  const account = (st: Deno.FileInfo): boolean => {
    const key = `${st.dev}:${st.ino}`;
    if (seen.has(key)) return false;
    seen.add(key);
    bytes += (st.blocks ?? 0) * 512;
    return true;
  };
  const visit = async (path: string): Promise<void> => {
    let st: Deno.FileInfo;
    try {
      st = await Deno.lstat(path);
    } catch (err) {
      if (isGone(err)) return;
      throw err;
    }
    if (!account(st) || !st.isDirectory) return;
    try {
      for await (const entry of Deno.readDir(path)) queue.push(join(path, entry.name));
    } catch (err) {
      if (!isGone(err) && !(err instanceof Deno.errors.NotADirectory)) throw err;
    }
  };
  // Workers share the queue; one finding it empty waits while siblings (which may refill
  // it) are still busy.
  let busy = 0;
  const workers = Array.from({ length: WALK_CONCURRENCY }, async () => {
    for (;;) {
      const next = queue.pop();
      if (next !== undefined) {
        busy++;
        try {
          await visit(next);
        } finally {
          busy--;
        }
        continue;
      }
      if (busy === 0) return;
      await new Promise((r) => setTimeout(r, 1));
    }
  });
  await Promise.all(workers);
  return { bytes, inodes: seen.size, at: Date.now() };
}

/** A cached {@link diskUsage} of one directory. */
export class DiskUsageCache {
  readonly root: string;
  readonly ttlMs: number;
  #last?: DiskUsage;
  #running?: Promise<DiskUsage>;

  /** `ttlMs`: how long a result is served before the next call walks again (default 5 s). */
  constructor(root: string, ttlMs = 5000) {
    this.root = root;
    this.ttlMs = ttlMs;
  }

  /**
   * The usage, at most `ttlMs` old; concurrent callers share one walk. With `fresh` a walk
   * always runs (tests).
   */
  get(opts: { fresh?: boolean } = {}): Promise<DiskUsage> {
    if (!opts.fresh && this.#last && Date.now() - this.#last.at < this.ttlMs) {
      return Promise.resolve(this.#last);
    }
    if (!this.#running) {
      this.#running = diskUsage(this.root).then((u) => {
        this.#last = u;
        return u;
      }).finally(() => {
        this.#running = undefined;
      });
    }
    return this.#running;
  }
}
