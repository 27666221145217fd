/**
 * What the overlay and native snapshotters share: a metastore (`<root>/metadata.db`) and one
 * directory per snapshot under `<root>/snapshots/<id>`, with containerd's crash-safe ordering:
 *
 * - create: the directory is prepared under a temporary name (`new-…`), then in one
 *   transaction the record is inserted and the directory renamed to its id; a crash leaves
 *   either nothing or a directory without a record;
 * - remove: the record is deleted first, then the directory (renamed `rm-<id>`, then removed);
 * - {@link DirSnapshotter.cleanup} removes every directory that has no record (orphans of
 *   crashes, of interrupted removals, and of asynchronous removal), except directories of
 *   operations still running in this process and directories with something mounted below.
 *
 * @module
 */

import {
  aborted,
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  notFound,
  notImplemented,
} from "../plugins/errdefs.ts";
import { mountinfo } from "../sys/mountinfo.ts";
import {
  checkedLabels,
  type CommitOptions,
  type Info,
  type Kind,
  type Mount,
  type SnapshotOptions,
  type Snapshotter,
  type Usage,
  validateKey,
  type WalkFn,
} from "./snapshotter.ts";
import { MetaStore, type Snapshot } from "./storage.ts";
import { diskUsage } from "./usage.ts";

/** Options shared by the directory-backed snapshotters. */
export interface DirSnapshotterOptions {
  /**
   * Defer removing a snapshot's directory to {@link DirSnapshotter.cleanup}, as containerd's
   * `AsynchronousRemove` (the key is free at once either way).
   */
  asyncRemove?: boolean;
}

/** Removes `path` recursively; missing is fine. */
async function removeAll(path: string): Promise<void> {
  try {
    await Deno.remove(path, { recursive: true });
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}

/** fsync(2)s a directory, so that a rename in it is durable before the record commits. */
function syncDir(path: string): void {
  try {
    const dir = Deno.openSync(path, { read: true });
    try {
      dir.syncSync();
    } finally {
      dir.close();
    }
  } catch {
    // Best effort: some filesystems refuse fsync on directories.
  }
}

/** Whether anything is mounted at or below `path` (which then must not be removed). */
function hasMountsBelow(path: string): boolean {
  let real: string;
  try {
    real = Deno.realPathSync(path);
  } catch {
    return false;
  }
  return mountinfo((m) => m.mountpoint === real || m.mountpoint.startsWith(real + "/")).length >
    0;
}

/** The base of the overlay and native snapshotters. */
export abstract class DirSnapshotter implements Snapshotter {
  /** The snapshotter's root directory. */
  readonly root: string;
  /** The metastore. */
  protected readonly ms: MetaStore;
  /** `<root>/snapshots`. */
  protected readonly snapshotsDir: string;
  readonly #asyncRemove: boolean;
  /** Temporary directories of creations running in this process. */
  readonly #inflight = new Set<string>();
  #closed = false;

  protected constructor(root: string, options: DirSnapshotterOptions = {}) {
    this.root = root;
    Deno.mkdirSync(root, { recursive: true, mode: 0o700 });
    this.snapshotsDir = `${root}/snapshots`;
    Deno.mkdirSync(this.snapshotsDir, { recursive: true, mode: 0o700 });
    this.ms = new MetaStore(`${root}/metadata.db`);
    this.#asyncRemove = options.asyncRemove ?? false;
  }

  /** The directory of snapshot `id`. */
  protected snapshotDir(id: string): string {
    return `${this.snapshotsDir}/${id}`;
  }

  /** The directory whose disk usage is the snapshot's (the upper dir for overlay). */
  protected abstract usagePath(id: string): string;

  /** The mounts of an active snapshot or view. */
  protected abstract mountsOf(s: Snapshot): Mount[];

  /**
   * Whether a parentless active snapshot can be committed onto a parent (its directory holds
   * only its own changes, as an overlay upper dir): see {@link CommitOptions.parent}.
   */
  get canRebase(): boolean {
    return false;
  }

  /** Whether a snapshot of `kind` over `parent` gets a directory of its own. */
  protected needsDirectory(_kind: Kind, _parent: string): boolean {
    return true;
  }

  /**
   * Fills the temporary directory `td` of a new snapshot: `parentID` is the id of the
   * committed parent, or null.
   */
  protected abstract populate(td: string, kind: Kind, parentID: string | null): Promise<void>;

  #check(): void {
    if (this.#closed) throw failedPrecondition(`Snapshotter at "${this.root}" is closed`);
  }

  /** See {@link Snapshotter.stat}. */
  stat(key: string): Promise<Info> {
    return Promise.resolve().then(() => {
      this.#check();
      validateKey(key);
      return this.ms.getInfo(key).info;
    });
  }

  /** See {@link Snapshotter.update}. */
  update(
    info: Pick<Info, "name"> & Partial<Info>,
    fieldpaths: readonly string[] = [],
  ): Promise<Info> {
    return Promise.resolve().then(() => {
      this.#check();
      validateKey(info?.name, "name");
      return this.ms.updateInfo({ ...info, labels: checkedLabels(info.labels) }, fieldpaths);
    });
  }

  /** See {@link Snapshotter.usage}. */
  async usage(key: string): Promise<Usage> {
    this.#check();
    validateKey(key);
    const { id, info, usage } = this.ms.getInfo(key);
    if (info.kind === "active") return await diskUsage(this.usagePath(id));
    return usage;
  }

  /** See {@link Snapshotter.mounts}. */
  mounts(key: string): Promise<Mount[]> {
    return Promise.resolve().then(() => {
      this.#check();
      validateKey(key);
      return this.mountsOf(this.ms.getSnapshot(key));
    });
  }

  /** See {@link Snapshotter.prepare}. */
  prepare(key: string, parent: string, options: SnapshotOptions = {}): Promise<Mount[]> {
    return this.#create("active", key, parent, options);
  }

  /** See {@link Snapshotter.view}. */
  view(key: string, parent: string, options: SnapshotOptions = {}): Promise<Mount[]> {
    return this.#create("view", key, parent, options);
  }

  async #create(
    kind: Kind,
    key: string,
    parent: string,
    options: SnapshotOptions,
  ): Promise<Mount[]> {
    this.#check();
    validateKey(key);
    parent ??= "";
    if (parent !== "") validateKey(parent, "parent");
    const labels = checkedLabels(options.labels);

    // Fail early (before any copying) on a used key or a bad parent; the insert below checks
    // again, atomically.
    let parentID: string | null = null;
    this.ms.transaction(() => {
      if (parent !== "") {
        if (!this.ms.exists(parent)) {
          throw notFound(`Cannot create snapshot "${key}": parent "${parent}" does not exist`);
        }
        const p = this.ms.getInfo(parent);
        if (p.info.kind !== "committed") {
          throw invalidArgument(
            `Cannot create snapshot "${key}": parent "${parent}" is not a committed snapshot`,
          );
        }
        parentID = p.id;
      }
      if (this.ms.exists(key)) throw alreadyExists(`Snapshot "${key}" already exists`);
    });

    let td: string | null = null;
    if (this.needsDirectory(kind, parent)) {
      td = await Deno.makeTempDir({ dir: this.snapshotsDir, prefix: "new-" });
      this.#inflight.add(td);
    }
    try {
      if (td !== null) await this.populate(td, kind, parentID);
      this.#check();
      const s = this.ms.transaction(() => {
        const s = this.ms.createSnapshot(kind, key, parent, labels);
        if ((s.parentIDs[0] ?? null) !== parentID) {
          throw aborted(
            `Cannot create snapshot "${key}": parent "${parent}" changed during the operation`,
          );
        }
        if (td !== null) {
          const path = this.snapshotDir(s.id);
          // A directory without a record (left by a crash) can be in the way.
          try {
            Deno.removeSync(path, { recursive: true });
          } catch (err) {
            if (!(err instanceof Deno.errors.NotFound)) throw err;
          }
          Deno.renameSync(td, path);
          syncDir(this.snapshotsDir);
        }
        return s;
      }, true);
      if (td !== null) this.#inflight.delete(td);
      td = null;
      return this.mountsOf(s);
    } finally {
      if (td !== null) {
        this.#inflight.delete(td);
        await removeAll(td).catch(() => {});
      }
    }
  }

  /** See {@link Snapshotter.commit}. */
  async commit(name: string, key: string, options: CommitOptions = {}): Promise<void> {
    this.#check();
    validateKey(name, "name");
    validateKey(key);
    const labels = checkedLabels(options.labels);
    const parent = options.parent ?? "";
    if (parent !== "") validateKey(parent, "parent");
    const { id, info } = this.ms.getInfo(key);
    if (parent !== "" && info.parent !== parent && !this.canRebase) {
      throw notImplemented(
        `Cannot commit snapshot "${key}" onto "${parent}": this snapshotter cannot rebase ` +
          `snapshots`,
      );
    }
    let usage: Usage = { size: 0, inodes: 0 };
    if (info.kind === "active") usage = await diskUsage(this.usagePath(id));
    this.#check();
    this.ms.transaction(() => {
      const current = this.ms.getInfo(key);
      if (current.id !== id) {
        throw aborted(`Cannot commit snapshot "${key}": it was replaced during the commit`);
      }
      this.ms.commitActive(key, name, usage, labels, parent);
    }, true);
  }

  /** See {@link Snapshotter.remove}. */
  async remove(key: string): Promise<void> {
    this.#check();
    validateKey(key);
    const { id } = this.ms.remove(key);
    if (this.#asyncRemove) return;
    const path = this.snapshotDir(id);
    if (hasMountsBelow(path)) return; // left to cleanup(), once unmounted
    const renamed = `${this.snapshotsDir}/rm-${id}`;
    try {
      Deno.renameSync(path, renamed);
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) return;
      throw err;
    }
    // The record is gone: a failure here only leaves an orphan for cleanup().
    await removeAll(renamed).catch(() => {});
  }

  /** See {@link Snapshotter.walk}. */
  async walk(fn: WalkFn, filters: readonly string[] = []): Promise<void> {
    this.#check();
    for (const info of this.ms.walkInfo(filters)) await fn(info);
  }

  /** The directories under `<root>/snapshots` that no record or running operation owns. */
  protected orphans(): string[] {
    return this.ms.transaction(() => {
      const ids = this.ms.idMap();
      const out: string[] = [];
      for (const entry of Deno.readDirSync(this.snapshotsDir)) {
        const path = `${this.snapshotsDir}/${entry.name}`;
        if (ids.has(entry.name) || this.#inflight.has(path)) continue;
        out.push(path);
      }
      return out;
    }, true);
  }

  /** See {@link Snapshotter.cleanup}. */
  async cleanup(): Promise<void> {
    this.#check();
    for (const path of this.orphans()) {
      if (hasMountsBelow(path)) continue;
      await removeAll(path);
    }
  }

  /** See {@link Snapshotter.close}. */
  close(): Promise<void> {
    if (!this.#closed) {
      this.#closed = true;
      this.ms.close();
    }
    return Promise.resolve();
  }
}
