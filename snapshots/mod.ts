/**
 * Snapshotters, as containerd's `snapshots` packages: the {@link Snapshotter} contract, its
 * SQLite metastore, and the overlayfs and native implementations.
 *
 * ```ts
 * import { OverlaySnapshotter } from "./snapshots/mod.ts";
 *
 * const sn = await OverlaySnapshotter.open("/var/lib/tainerd/io.containerd.snapshotter.v1.overlayfs");
 * const mounts = await sn.prepare("extract-1", "");
 * // … apply a layer onto `mounts` (diff/apply.ts) …
 * await sn.commit("sha256:…", "extract-1");
 * ```
 *
 * @module
 */

export {
  checkedLabels,
  type CommitOptions,
  type Info,
  type Kind,
  MAX_KEY_BYTES,
  type Mount,
  REBASE_CAPABILITY,
  type SnapshotOptions,
  type Snapshotter,
  type Usage,
  validateKey,
  type WalkFn,
} from "./snapshotter.ts";
export { MetaStore, type Snapshot, type SnapshotRecord } from "./storage.ts";
export { DirSnapshotter, type DirSnapshotterOptions } from "./dir_snapshotter.ts";
export {
  checkOverlaySupported,
  OverlaySnapshotter,
  type OverlaySnapshotterOptions,
} from "./overlay.ts";
export { NativeSnapshotter, type NativeSnapshotterOptions } from "./native.ts";
export { copyDir, type CopyDirOptions, copyFileInfo, copyXattrs } from "./copy.ts";
export { diskUsage } from "./usage.ts";
export { fileType, lstatx, lstatxOrNull, type Stat, type StatTime } from "./statx.ts";
