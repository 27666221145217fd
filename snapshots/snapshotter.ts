/**
 * The snapshotter contract, as containerd's `snapshots.Snapshotter`: a snapshotter manages
 * filesystem snapshots identified by keys. `prepare` makes an active (writable) snapshot on top
 * of a committed parent, `view` a read-only one, `commit` turns an active snapshot into a
 * committed one under a new name (which can then be a parent), and `mounts` says how to mount
 * an active snapshot or a view.
 *
 * Errors are classified as containerd's: NotFound for an unknown key or parent,
 * AlreadyExists for a key or name in use, FailedPrecondition for removing a snapshot that has
 * children or committing (or mounting) a snapshot of the wrong kind, InvalidArgument for a bad
 * key or a parent that is not committed.
 *
 * @module
 */

import { invalidArgument } from "../plugins/errdefs.ts";
import { validateLabels } from "../plugins/identifiers.ts";
import type { Mount } from "../sys/mount.ts";

export type { Mount } from "../sys/mount.ts";

/** The kind of a snapshot, as containerd's `snapshots.Kind` (`String()` values). */
export type Kind = "active" | "view" | "committed";

/** The metadata of a snapshot, as containerd's `snapshots.Info`. */
export interface Info {
  /** Active (writable), view (read-only) or committed (immutable, may be a parent). */
  kind: Kind;
  /** The key (active, view) or name (committed) of the snapshot. */
  name: string;
  /** The name of the committed parent, or `""` for none. */
  parent: string;
  /** Labels, free-form. */
  labels: Record<string, string>;
  /** When the snapshot was created (for a committed one: when it was committed). */
  created: Date;
  /** When the snapshot was last updated. */
  updated: Date;
}

/** The resources a snapshot takes, as containerd's `snapshots.Usage`. */
export interface Usage {
  /** Bytes on disk (allocated blocks × 512), hard links counted once. */
  size: number;
  /** Number of inodes (files, dirs, links…), hard links counted once. */
  inodes: number;
}

/** Options of {@link Snapshotter.prepare}, {@link Snapshotter.view} and {@link Snapshotter.commit}. */
export interface SnapshotOptions {
  /** Labels of the new snapshot. */
  labels?: Record<string, string>;
}

/** Options of {@link Snapshotter.commit}. */
export interface CommitOptions extends SnapshotOptions {
  /**
   * The committed snapshot to commit onto when it is not the one `key` was prepared on (a
   * "rebase", as containerd 2.1's `snapshots.WithParent` on commit): only an active snapshot
   * prepared without a parent can be rebased, and only by a snapshotter that has the
   * {@link REBASE_CAPABILITY} (overlayfs: an upper dir is self-contained, so only the
   * metadata's parent changes). The same parent as at prepare is accepted by every
   * snapshotter.
   */
  parent?: string;
}

/**
 * The plugin capability of snapshotters that can commit a parentless active snapshot onto a
 * parent ({@link CommitOptions.parent}), as containerd 2.1's `rebase`: image layers can then be
 * unpacked in parallel, each into its own snapshot.
 */
export const REBASE_CAPABILITY = "rebase";

/** The callback of {@link Snapshotter.walk}. */
export type WalkFn = (info: Info) => void | Promise<void>;

/** A snapshotter, as containerd's `snapshots.Snapshotter`. */
export interface Snapshotter {
  /**
   * The metadata of a snapshot by key (active, view) or name (committed).
   *
   * @throws {TainerdError} NotFound
   */
  stat(key: string): Promise<Info>;

  /**
   * Updates the labels of a snapshot. `info.name` names it; `fieldpaths` are `labels` (replace
   * them all) or `labels.<key>` (set or delete one); none means all labels. Any other field
   * path is InvalidArgument.
   *
   * @returns the updated metadata
   * @throws {TainerdError} NotFound, InvalidArgument
   */
  update(info: Pick<Info, "name"> & Partial<Info>, fieldpaths?: readonly string[]): Promise<Info>;

  /**
   * The resources a snapshot takes: measured on disk for an active snapshot, as recorded at
   * commit for a committed one.
   *
   * @throws {TainerdError} NotFound
   */
  usage(key: string): Promise<Usage>;

  /**
   * How to mount an active snapshot or a view (the same as `prepare`/`view` returned).
   *
   * @throws {TainerdError} NotFound; FailedPrecondition for a committed snapshot
   */
  mounts(key: string): Promise<Mount[]>;

  /**
   * Creates an active snapshot `key` on top of the committed `parent` (`""` for none).
   *
   * @returns the mounts of the new snapshot
   * @throws {TainerdError} AlreadyExists for a used key; NotFound for a missing parent;
   *   InvalidArgument for a bad key or a parent that is not committed
   */
  prepare(key: string, parent: string, options?: SnapshotOptions): Promise<Mount[]>;

  /** Like {@link Snapshotter.prepare}, but the snapshot is a read-only view. */
  view(key: string, parent: string, options?: SnapshotOptions): Promise<Mount[]>;

  /**
   * Commits the active snapshot `key` as `name`: `key` goes away, `name` keeps its contents
   * and its place in the chain and can be used as a parent. Labels of the committed snapshot
   * come from `options` only; `options.parent` rebases (see {@link CommitOptions.parent}).
   *
   * @throws {TainerdError} AlreadyExists for a used name; NotFound for a missing key or
   *   parent; FailedPrecondition when `key` is not active; InvalidArgument for a parent that
   *   is not committed or a snapshot that has another parent; NotImplemented for a rebase the
   *   snapshotter cannot do
   */
  commit(name: string, key: string, options?: CommitOptions): Promise<void>;

  /**
   * Removes a snapshot and its data.
   *
   * @throws {TainerdError} NotFound; FailedPrecondition when it has children
   */
  remove(key: string): Promise<void>;

  /**
   * Calls `fn` for every snapshot matching any of `filters` (containerd's filter syntax over
   * `kind`, `name`, `parent`, `labels.<key>`), in key order.
   */
  walk(fn: WalkFn, filters?: readonly string[]): Promise<void>;

  /** Removes data left behind by removed snapshots and interrupted operations. */
  cleanup(): Promise<void>;

  /** Releases the snapshotter's resources; no other method may be called afterwards. */
  close(): Promise<void>;
}

/** Longest key or name accepted, in bytes. */
export const MAX_KEY_BYTES = 4096;

const encoder = new TextEncoder();

/**
 * Checks a snapshot key or name: non-empty, at most {@link MAX_KEY_BYTES} bytes, no NUL.
 * `what` names it in the error ("key", "name", "parent").
 *
 * @throws {TainerdError} InvalidArgument
 */
export function validateKey(key: unknown, what = "key"): asserts key is string {
  if (typeof key !== "string" || key === "") {
    throw invalidArgument(`Invalid snapshot ${what}: it must not be empty`);
  }
  if (key.includes("\0")) {
    throw invalidArgument(`Invalid snapshot ${what} ${JSON.stringify(key)}: it contains NUL`);
  }
  if (encoder.encode(key).length > MAX_KEY_BYTES) {
    throw invalidArgument(
      `Invalid snapshot ${what} ${JSON.stringify(key.slice(0, 64))}…: longer than ` +
        `${MAX_KEY_BYTES} bytes`,
    );
  }
}

/** Checks the labels of {@link SnapshotOptions} and returns a copy (empty when none). */
export function checkedLabels(labels: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  if (labels === undefined || labels === null) return out;
  if (typeof labels !== "object") throw invalidArgument("Invalid snapshot labels: not an object");
  for (const [k, v] of Object.entries(labels)) {
    if (typeof v !== "string") {
      throw invalidArgument(`Invalid snapshot label ${JSON.stringify(k)}: value is not a string`);
    }
    out[k] = v;
  }
  validateLabels(out);
  return out;
}
