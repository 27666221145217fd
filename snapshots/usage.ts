/**
 * Disk usage of directory trees, as continuity's `fs.DiskUsage`: every inode under the roots
 * (the roots included) counted once — hard links once — and the size as allocated blocks
 * × 512.
 *
 * @module
 */

import type { Usage } from "./snapshotter.ts";

/** How many entries are handled before yielding to the event loop. */
const YIELD_EVERY = 2048;

/**
 * Measures the trees under `roots`. Entries that vanish during the walk are skipped; a missing
 * root is NotFound (`Deno.errors.NotFound`).
 */
export async function diskUsage(...roots: string[]): Promise<Usage> {
  const seen = new Set<string>();
  let size = 0;
  let inodes = 0;
  let sinceYield = 0;
  const count = (info: Deno.FileInfo): void => {
    // Only non-directories with several links can be met twice.
    if (!info.isDirectory && (info.nlink ?? 1) > 1) {
      const id = `${info.dev}:${info.ino}`;
      if (seen.has(id)) return;
      seen.add(id);
    }
    inodes++;
    size += (info.blocks ?? 0) * 512;
  };
  for (const root of roots) {
    count(Deno.lstatSync(root));
    const stack = [root];
    while (stack.length > 0) {
      const dir = stack.pop()!;
      let entries: Deno.DirEntry[];
      try {
        entries = [...Deno.readDirSync(dir)];
      } catch (err) {
        if (err instanceof Deno.errors.NotFound) continue;
        throw err;
      }
      for (const entry of entries) {
        const path = `${dir}/${entry.name}`;
        let info: Deno.FileInfo;
        try {
          info = Deno.lstatSync(path);
        } catch (err) {
          if (err instanceof Deno.errors.NotFound) continue;
          throw err;
        }
        count(info);
        if (info.isDirectory) stack.push(path);
        if (++sinceYield >= YIELD_EVERY) {
          sinceYield = 0;
          await new Promise((resolve) => setTimeout(resolve, 0));
        }
      }
    }
  }
  return { size, inodes };
}
