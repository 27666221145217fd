/**
 * Layers and filesystems, as containerd's `diff` and `archive` packages: applying layer blobs
 * onto directories and snapshot mounts ({@link applyLayer}), and creating layers from the
 * changes between two mounts ({@link diffMounts}).
 *
 * ```ts
 * import { applyLayer, diffMounts } from "./diff/mod.ts";
 *
 * const { diffID } = await applyLayer(blob, mounts, { mediaType });
 * const layer = await diffMounts(parentMounts, mounts, contentWriter, { compression: "gzip" });
 * ```
 *
 * @module
 */

export {
  applyLayer,
  applyLayerFile,
  applyLayerInWorker,
  type ApplyLayerOptions,
  type ApplyLayerResult,
  type ApplyTargetOptions,
  applyTarToMounts,
  directTarget,
  OVERLAY_UPPER_PAYLOAD,
  WORKER_MIN_BYTES,
} from "./apply.ts";
export {
  applyTar,
  type ApplyTarOptions,
  type ApplyTarResult,
  WHITEOUT_META_PREFIX,
  WHITEOUT_OPAQUE,
  WHITEOUT_PREFIX,
} from "./apply_tar.ts";
export {
  type Change,
  type ChangeKind,
  compareNames,
  doubleWalkChanges,
  overlayChanges,
  sameFile,
} from "./changes.ts";
export {
  type Compression,
  compressionOfMediaType,
  type CompressOptions,
  compressor,
  type Decompressed,
  decompressor,
  decompressStream,
  detectCompression,
  type DetectedCompression,
  MediaType,
  ociLayerMediaType,
} from "./compression.ts";
export {
  diffDirs,
  diffMounts,
  type DiffOptions,
  type DiffResult,
  overlayUpperOver,
  writeChanges,
  type WriteChangesOptions,
} from "./diff.ts";
export { cleanPath, MAX_SYMLINKS, rootPath, RootResolver } from "./root_path.ts";
