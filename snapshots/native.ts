/**
 * The native snapshotter, as containerd's `snapshots/native`: every active snapshot is a full
 * copy of its parent's tree in `<root>/snapshots/<id>` (see {@link copyDir}: owners, modes,
 * xattrs, times, devices and hard links preserved), mounted with a bind mount (`rbind`, `rw`
 * for active snapshots, `ro` for views). A view of a committed parent has no directory of its
 * own: it bind-mounts the parent read-only.
 *
 * @module
 */

import { copyDir } from "./copy.ts";
import { DirSnapshotter, type DirSnapshotterOptions } from "./dir_snapshotter.ts";
import type { Kind, Mount } from "./snapshotter.ts";
import type { Snapshot } from "./storage.ts";

/** Options of {@link NativeSnapshotter.open}. */
export type NativeSnapshotterOptions = DirSnapshotterOptions;

/** The native (copying) snapshotter. */
export class NativeSnapshotter extends DirSnapshotter {
  private constructor(root: string, options: NativeSnapshotterOptions) {
    super(root, options);
  }

  /** Opens (creating if needed) a native snapshotter rooted at `root`. */
  static open(root: string, options: NativeSnapshotterOptions = {}): Promise<NativeSnapshotter> {
    return Promise.resolve().then(() => new NativeSnapshotter(root, options));
  }

  protected override usagePath(id: string): string {
    return this.snapshotDir(id);
  }

  protected override needsDirectory(kind: Kind, parent: string): boolean {
    return kind === "active" || parent === "";
  }

  protected override async populate(
    td: string,
    _kind: Kind,
    parentID: string | null,
  ): Promise<void> {
    Deno.chmodSync(td, 0o755);
    if (parentID !== null) await copyDir(this.snapshotDir(parentID), td);
  }

  protected override mountsOf(s: Snapshot): Mount[] {
    const source = s.parentIDs.length === 0 || s.kind === "active"
      ? this.snapshotDir(s.id)
      : this.snapshotDir(s.parentIDs[0]);
    return [{ type: "bind", source, options: ["rbind", s.kind === "view" ? "ro" : "rw"] }];
  }
}
