/**
 * The namespaced snapshot layer, as containerd's `metadata/snapshot.go`: every backend
 * snapshotter (overlayfs, native…) is shared by all namespaces, and each namespace sees its
 * own snapshots through records in the metadata database.
 *
 * - A namespace's key (or committed name) maps to a backend key `<namespace>/<n>/<key>`, `n`
 *   from a sequence per namespace and snapshotter, so namespaces may use the same keys and a
 *   backend key is never reused. Parents are resolved in the namespace.
 * - Labels live in the record; only the inherited ones (`containerd.io/snapshot/…` and
 *   `containerd.io/snapshot.ref`) are passed to the backend. Created/updated times are the
 *   record's; the kind is the backend's.
 * - Committing the same content in two namespaces makes two backend snapshots. Preparing with
 *   `containerd.io/snapshot.ref=<name>` fails with AlreadyExists when the namespace already
 *   has `<name>` (what ctr's unpacker expects when a chain already exists); a backend that
 *   shares snapshots answers AlreadyExists and the namespace then records the shared target.
 * - Under a `containerd-lease`, new snapshots are added to the lease (`snapshots/<name>`).
 * - Remove deletes the record only; the backend snapshot goes at the next garbage collection
 *   (as containerd), which removes every backend snapshot no namespace records, children
 *   first, then runs the backend's cleanup.
 *
 * The store registers the `snapshot` resource type with the collector: snapshots labelled
 * `containerd.io/gc.root` are roots; a snapshot references its parent and what its
 * `containerd.io/gc.ref.*` labels name.
 *
 * @module
 */

import {
  alreadyExists,
  failedPrecondition,
  internal,
  invalidArgument,
  isAlreadyExists,
  isKind,
  isNotFound,
  notFound,
  TainerdError,
} from "../errdefs.ts";
import { objectAdaptor, parseAll } from "../filters/mod.ts";
import { validateIdentifier, validateLabels } from "../identifiers.ts";
import type {
  CommitOptions,
  Info,
  Mount,
  SnapshotOptions,
  Snapshotter,
  Usage,
} from "../../snapshots/snapshotter.ts";
import { validateKey } from "../../snapshots/snapshotter.ts";
import type { Logger } from "../../log.ts";
import { type MetadataDB, nowMs } from "./db.ts";
import { RwLock } from "./rwlock.ts";
import { type GarbageCollector, GcLabels, type GcNode, GcResource, labelReferences } from "./gc.ts";
import type { LeaseManager, Scope } from "./leases.ts";

/** Labels passed to the backend start with this prefix (or are {@link SNAPSHOT_REF_LABEL}). */
export const INHERITED_LABELS_PREFIX = "containerd.io/snapshot/";
/** Names the committed snapshot a prepare is for: its target (ctr's unpacker sets it). */
export const SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref";

function isInherited(key: string): boolean {
  return key === SNAPSHOT_REF_LABEL || key.startsWith(INHERITED_LABELS_PREFIX);
}

/** The labels a backend snapshotter sees, as containerd's `snapshots.FilterInheritedLabels`. */
export function inheritedLabels(labels: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (isInherited(k)) out[k] = v;
  return out;
}

/** A snapshot event, published by the snapshots service (`/snapshot/…`). */
export type SnapshotEvent =
  | { topic: "/snapshot/prepare"; snapshotter: string; key: string; parent: string }
  | { topic: "/snapshot/commit"; snapshotter: string; key: string; name: string }
  | { topic: "/snapshot/remove"; snapshotter: string; key: string };

/** Options of {@link SnapshotStore}. */
export interface SnapshotStoreOptions {
  /** The collector to register with and to tell of changes. */
  gc: GarbageCollector;
  /** The lease manager, to add new snapshots to the call's lease. */
  leases: LeaseManager;
  /** Creates a namespace on first use (the namespace store's `ensure`). */
  ensureNamespace?: (namespace: string) => void;
  /** Publishes snapshot events (prepare, commit, remove), in the snapshot's namespace. */
  publish?: (namespace: string, event: SnapshotEvent) => void;
  log?: Logger;
}

interface Row {
  key: string;
  backend_key: string;
  parent: string;
  created_at: number;
  updated_at: number;
}

function quote(s: string): string {
  return JSON.stringify(s.length > 160 ? `${s.slice(0, 160)}…` : s);
}

/**
 * Rewrites a backend error so it names the namespace's key, not the backend key
 * (`<namespace>/<n>/<key>`) the backend knows the snapshot by.
 */
function renameKeys(err: unknown, names: ReadonlyMap<string, string>): unknown {
  if (!(err instanceof TainerdError)) return err;
  let message = err.message;
  for (const [backend, key] of names) {
    if (backend !== "") message = message.replaceAll(quote(backend), quote(key));
  }
  return message === err.message ? err : new TainerdError(err.kind, message, { cause: err });
}

function nonEmpty(labels: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels)) if (v !== "") out[k] = v;
  return out;
}

/**
 * Applies update field paths to `current` labels, as containerd: no paths or `labels`
 * replace them all, `labels.<key>` sets (or, empty or missing, removes) one.
 */
function applyLabelPaths(
  current: Record<string, string>,
  given: Readonly<Record<string, string>>,
  paths: readonly string[],
  context: string,
): Record<string, string> {
  let labels = { ...current };
  if (paths.length === 0) return nonEmpty(given);
  for (const path of paths) {
    if (path === "labels") {
      labels = { ...given };
    } else if (path.startsWith("labels.")) {
      const k = path.slice("labels.".length);
      labels[k] = Object.hasOwn(given, k) ? given[k] : "";
    } else {
      throw invalidArgument(`${context}: cannot update field ${quote(path)}`);
    }
  }
  return nonEmpty(labels);
}

/** Checks labels given to a snapshot operation and returns a copy without empty values. */
function checkLabels(labels: Record<string, string> | undefined): Record<string, string> {
  const out = nonEmpty(labels ?? {});
  try {
    validateLabels(out);
  } catch (err) {
    if (err instanceof TainerdError) {
      throw invalidArgument(`Invalid snapshot labels: ${err.message}`, { cause: err });
    }
    throw err;
  }
  return out;
}

/**
 * The snapshots of every namespace, over the backend snapshotters. Get the namespaced view of
 * one backend with {@link SnapshotStore.snapshotter}.
 */
export class SnapshotStore {
  readonly #db: MetadataDB;
  readonly #gc: GarbageCollector;
  readonly #snapshotters = new Map<string, MetadataSnapshotter>();
  /** Snapshotters whose backends may hold snapshots no record refers to any more. */
  readonly #dirty = new Set<string>();
  readonly #log?: Logger;

  /** Creates the store over `backends` (by name) and registers the `snapshot` GC type. */
  constructor(
    db: MetadataDB,
    backends: ReadonlyMap<string, Snapshotter>,
    opts: SnapshotStoreOptions,
  ) {
    this.#db = db;
    this.#gc = opts.gc;
    this.#log = opts.log;
    for (const [name, backend] of backends) {
      this.#snapshotters.set(
        name,
        new MetadataSnapshotter(name, backend, db, opts, () => this.#markDirty(name)),
      );
    }
    this.#registerGc();
    // The first collection prunes what a crash may have left in the backends: snapshots
    // created (or committed) there whose records were never written.
    for (const name of backends.keys()) this.#markDirty(name);
  }

  /** The names of the snapshotters, sorted. */
  get names(): string[] {
    return [...this.#snapshotters.keys()].sort();
  }

  /** Whether a snapshotter of that name is loaded. */
  has(name: string): boolean {
    return this.#snapshotters.has(name);
  }

  /**
   * The namespaced view of a backend snapshotter. InvalidArgument when none of that name is
   * loaded (as containerd's snapshots service).
   */
  snapshotter(name: string): MetadataSnapshotter {
    if (name === "") throw invalidArgument("The snapshotter argument is missing");
    const sn = this.#snapshotters.get(name);
    if (!sn) throw invalidArgument(`Snapshotter ${quote(name)} is not loaded`);
    return sn;
  }

  #markDirty(name: string): void {
    this.#dirty.add(name);
    this.#gc.markDirty(GcResource.Snapshot);
  }

  #registerGc(): void {
    const db = this.#db;
    const split = (node: GcNode): [string, string] | undefined => {
      const slash = node.key.indexOf("/");
      return slash <= 0 ? undefined : [node.key.slice(0, slash), node.key.slice(slash + 1)];
    };
    this.#gc.registerResourceType({
      type: GcResource.Snapshot,
      roots: (emit) => {
        for (
          const r of db.all<{ namespace: string; snapshotter: string; snapshot: string }>(
            "SELECT namespace, snapshotter, snapshot FROM snapshot_labels WHERE key = ?",
            GcLabels.Root,
          )
        ) {
          emit({
            type: GcResource.Snapshot,
            namespace: r.namespace,
            key: `${r.snapshotter}/${r.snapshot}`,
          });
        }
      },
      references: (node, emit) => {
        const parts = split(node);
        if (!parts) return;
        const [snapshotter, key] = parts;
        const row = db.get<{ parent: string }>(
          "SELECT parent FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
          node.namespace,
          snapshotter,
          key,
        );
        if (!row) return; // A dead edge.
        if (row.parent !== "") {
          emit({
            type: GcResource.Snapshot,
            namespace: node.namespace,
            key: `${snapshotter}/${row.parent}`,
            flat: node.flat,
          });
        }
        if (node.flat) return;
        labelReferences(node.namespace, labelsOf(db, node.namespace, snapshotter, key), emit);
      },
      scan: (emit) => {
        for (
          const r of db.all<{ namespace: string; snapshotter: string; key: string }>(
            "SELECT namespace, snapshotter, key FROM snapshots",
          )
        ) {
          emit({
            type: GcResource.Snapshot,
            namespace: r.namespace,
            key: `${r.snapshotter}/${r.key}`,
          });
        }
      },
      remove: (node) => {
        const parts = split(node);
        if (!parts) return;
        db.run(
          "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
          node.namespace,
          parts[0],
          parts[1],
        );
        this.#dirty.add(parts[0]);
      },
      cleanup: (removed) => this.#cleanup(removed),
    });
  }

  /** The backend side of a collection: prunes every dirty snapshotter's backend. */
  async #cleanup(removed: readonly GcNode[]): Promise<void> {
    for (const node of removed) {
      const slash = node.key.indexOf("/");
      if (slash > 0) this.#dirty.add(node.key.slice(0, slash));
    }
    const names = [...this.#dirty];
    this.#dirty.clear();
    let failed: unknown;
    for (const name of names) {
      const sn = this.#snapshotters.get(name);
      if (!sn) continue;
      try {
        await sn.cleanup();
      } catch (err) {
        this.#dirty.add(name);
        failed ??= err;
        this.#log?.warn("snapshot garbage collection failed", {
          snapshotter: name,
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }
    if (failed !== undefined) throw failed;
  }
}

function labelsOf(
  db: MetadataDB,
  namespace: string,
  snapshotter: string,
  key: string,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (
    const r of db.all<{ key: string; value: string }>(
      `SELECT key, value FROM snapshot_labels
        WHERE namespace = ? AND snapshotter = ? AND snapshot = ? ORDER BY key`,
      namespace,
      snapshotter,
      key,
    )
  ) out[r.key] = r.value;
  return out;
}

/** The snapshots of one backend snapshotter, per namespace. Get one from {@link SnapshotStore}. */
export class MetadataSnapshotter {
  /** The snapshotter's name (`overlayfs`, `native`). */
  readonly name: string;
  /** The backend snapshotter, shared by every namespace. */
  readonly backend: Snapshotter;
  readonly #db: MetadataDB;
  readonly #gc: GarbageCollector;
  readonly #leases: LeaseManager;
  readonly #ensureNamespace: (namespace: string) => void;
  readonly #publish: (namespace: string, event: SnapshotEvent) => void;
  readonly #markDirty: () => void;
  readonly #log?: Logger;
  readonly #lock = new RwLock();
  /** `<namespace>\0<key>` of snapshots being created or committed to in this process. */
  readonly #pending = new Set<string>();

  /** Use {@link SnapshotStore.snapshotter}. */
  constructor(
    name: string,
    backend: Snapshotter,
    db: MetadataDB,
    opts: SnapshotStoreOptions,
    markDirty: () => void,
  ) {
    this.name = name;
    this.backend = backend;
    this.#db = db;
    this.#gc = opts.gc;
    this.#leases = opts.leases;
    this.#ensureNamespace = opts.ensureNamespace ?? (() => {});
    this.#publish = opts.publish ?? (() => {});
    this.#markDirty = markDirty;
    this.#log = opts.log;
  }

  get #leaseType(): string {
    return `snapshots/${this.name}`;
  }

  #row(namespace: string, key: string): Row | undefined {
    return this.#db.get<Row>(
      `SELECT key, backend_key, parent, created_at, updated_at FROM snapshots
        WHERE namespace = ? AND snapshotter = ? AND key = ?`,
      namespace,
      this.name,
      key,
    );
  }

  #labels(namespace: string, key: string): Record<string, string> {
    return labelsOf(this.#db, namespace, this.name, key);
  }

  #setLabels(namespace: string, key: string, labels: Record<string, string>): void {
    this.#db.run(
      "DELETE FROM snapshot_labels WHERE namespace = ? AND snapshotter = ? AND snapshot = ?",
      namespace,
      this.name,
      key,
    );
    for (const [k, v] of Object.entries(labels)) {
      this.#db.run(
        `INSERT INTO snapshot_labels(namespace, snapshotter, snapshot, key, value)
          VALUES (?, ?, ?, ?, ?)`,
        namespace,
        this.name,
        key,
        k,
        v,
      );
    }
  }

  /** A fresh backend key for `key` in `namespace` (inside a transaction). */
  #backendKey(namespace: string, key: string): string {
    this.#db.run(
      `INSERT INTO snapshot_sequences(namespace, snapshotter, next) VALUES (?, ?, 1)
        ON CONFLICT(namespace, snapshotter) DO UPDATE SET next = next + 1`,
      namespace,
      this.name,
    );
    const { next } = this.#db.get<{ next: number }>(
      "SELECT next FROM snapshot_sequences WHERE namespace = ? AND snapshotter = ?",
      namespace,
      this.name,
    )!;
    return `${namespace}/${next}/${key}`;
  }

  #context(action: string, key: string, namespace: string): string {
    return `Cannot ${action} snapshot ${quote(key)} in namespace ${quote(namespace)} ` +
      `(snapshotter ${quote(this.name)})`;
  }

  #require(namespace: string, key: string, action: string): Row {
    const row = this.#row(namespace, key);
    if (!row) throw notFound(`${this.#context(action, key, namespace)}: snapshot does not exist`);
    return row;
  }

  #check(namespace: string, key: string, what = "key"): void {
    validateIdentifier(namespace, "namespace");
    validateKey(key, what);
  }

  #requireLease(scope: Scope): void {
    if (scope.lease && !this.#leases.exists(scope.namespace, scope.lease)) {
      throw notFound(
        `Lease ${quote(scope.lease)} does not exist in namespace ${quote(scope.namespace)}`,
      );
    }
  }

  #overlay(backend: Info, row: Row, namespace: string): Info {
    return {
      kind: backend.kind,
      name: row.key,
      parent: row.parent,
      labels: { ...backend.labels, ...this.#labels(namespace, row.key) },
      created: new Date(Number(row.created_at)),
      updated: new Date(Number(row.updated_at)),
    };
  }

  async #backend<T>(op: () => Promise<T>, names: Record<string, string>): Promise<T> {
    try {
      return await op();
    } catch (err) {
      throw renameKeys(err, new Map(Object.entries(names)));
    }
  }

  /** The snapshot's metadata; NotFound when the namespace has no snapshot `key`. */
  async stat(namespace: string, key: string): Promise<Info> {
    this.#check(namespace, key);
    const row = this.#require(namespace, key, "stat");
    const info = await this.#backend(() => this.backend.stat(row.backend_key), {
      [row.backend_key]: key,
    });
    return this.#overlay(info, row, namespace);
  }

  /**
   * Updates the labels of snapshot `info.name`: no paths or `labels` replace them all,
   * `labels.<key>` sets one (an empty or missing value removes it). Inherited labels are
   * updated in the backend too.
   */
  async update(
    namespace: string,
    info: { name: string; labels?: Record<string, string> },
    fieldpaths: readonly string[] = [],
  ): Promise<Info> {
    validateIdentifier(namespace, "namespace");
    if (!info?.name) throw invalidArgument("The name of the snapshot to update is missing");
    validateKey(info.name, "name");
    const given = info.labels ?? {};
    const context = this.#context("update", info.name, namespace);
    return await this.#lock.read(async () => {
      const { row, labels } = this.#db.transaction(() => {
        const row = this.#require(namespace, info.name, "update");
        const labels = applyLabelPaths(
          this.#labels(namespace, info.name),
          given,
          fieldpaths,
          context,
        );
        validateLabels(labels);
        return { row, labels };
      });
      // The backend sees only the inherited labels (and only paths that name them).
      const paths = fieldpaths.filter((p) =>
        p === "labels" ||
        (p.startsWith("labels.") && isInherited(p.slice("labels.".length)))
      );
      const names = { [row.backend_key]: info.name };
      let backendInfo: Info;
      if (fieldpaths.length === 0 || paths.length > 0) {
        backendInfo = await this.#backend(
          () =>
            this.backend.update(
              { name: row.backend_key, labels: inheritedLabels(labels) },
              fieldpaths.length === 0 ? [] : paths,
            ),
          names,
        );
      } else {
        backendInfo = await this.#backend(() => this.backend.stat(row.backend_key), names);
      }
      const updated = this.#db.transaction(() => {
        const current = this.#require(namespace, info.name, "update");
        if (current.backend_key !== row.backend_key) {
          throw notFound(`${context}: the snapshot was replaced during the update`);
        }
        const labels = applyLabelPaths(
          this.#labels(namespace, info.name),
          given,
          fieldpaths,
          context,
        );
        const now = Math.max(nowMs(), Number(current.created_at));
        this.#setLabels(namespace, info.name, labels);
        this.#db.run(
          "UPDATE snapshots SET updated_at = ? WHERE namespace = ? AND snapshotter = ? AND key = ?",
          now,
          namespace,
          this.name,
          info.name,
        );
        return { ...current, updated_at: now };
      });
      this.#gc.mutated();
      return this.#overlay(backendInfo, updated, namespace);
    });
  }

  /** The resources the snapshot takes (see the backend's `usage`). */
  async usage(namespace: string, key: string): Promise<Usage> {
    this.#check(namespace, key);
    const row = this.#require(namespace, key, "get the usage of");
    return await this.#backend(() => this.backend.usage(row.backend_key), {
      [row.backend_key]: key,
    });
  }

  /** How to mount an active snapshot or a view. */
  async mounts(namespace: string, key: string): Promise<Mount[]> {
    this.#check(namespace, key);
    const row = this.#require(namespace, key, "get the mounts of");
    return await this.#backend(() => this.backend.mounts(row.backend_key), {
      [row.backend_key]: key,
    });
  }

  /**
   * Creates the active snapshot `key` over the committed `parent` (`""` for none) and returns
   * its mounts. AlreadyExists when the key is used, or when the `containerd.io/snapshot.ref`
   * label names a snapshot the namespace has.
   */
  async prepare(
    scope: Scope,
    key: string,
    parent: string,
    options: SnapshotOptions = {},
  ): Promise<Mount[]> {
    const mounts = await this.#create(scope, "active", key, parent ?? "", options);
    try {
      this.#publish(scope.namespace, {
        topic: "/snapshot/prepare",
        snapshotter: this.name,
        key,
        parent: parent ?? "",
      });
    } catch (err) {
      this.#log?.warn("cannot publish a snapshot event", { error: String(err) });
    }
    return mounts;
  }

  /** Like {@link MetadataSnapshotter.prepare}, but a read-only view. */
  async view(
    scope: Scope,
    key: string,
    parent: string,
    options: SnapshotOptions = {},
  ): Promise<Mount[]> {
    return await this.#create(scope, "view", key, parent ?? "", options);
  }

  async #create(
    scope: Scope,
    kind: "active" | "view",
    key: string,
    parent: string,
    options: SnapshotOptions,
  ): Promise<Mount[]> {
    const { namespace } = scope;
    this.#check(namespace, key);
    if (parent !== "") validateKey(parent, "parent");
    const labels = checkLabels(options.labels);
    const target = labels[SNAPSHOT_REF_LABEL] ?? "";
    const action = kind === "active" ? "prepare" : "create the view";
    const context = this.#context(action, key, namespace);
    return await this.#lock.read(async () => {
      const pendingId = `${namespace}\u0000${key}`;
      const { bkey, bparent } = this.#db.transaction(() => {
        if (target !== "" && this.#row(namespace, target)) {
          throw alreadyExists(`${context}: target snapshot ${quote(target)} already exists`);
        }
        if (this.#row(namespace, key) || this.#pending.has(pendingId)) {
          throw alreadyExists(`${context}: snapshot already exists`);
        }
        let bparent = "";
        if (parent !== "") {
          const p = this.#row(namespace, parent);
          if (!p) {
            throw notFound(`${context}: parent snapshot ${quote(parent)} does not exist`);
          }
          bparent = p.backend_key;
        }
        this.#requireLease(scope);
        return { bkey: this.#backendKey(namespace, key), bparent };
      });
      this.#pending.add(pendingId);
      let created = "";
      try {
        let mounts: Mount[] = [];
        let recordKey = key;
        let recordBkey = bkey;
        let recordParent = parent;
        let recordLabels = labels;
        let shared: TainerdError | undefined;
        let created_at = nowMs();
        let updated_at = created_at;
        try {
          const opts = { labels: inheritedLabels(labels) };
          mounts = await (kind === "active"
            ? this.backend.prepare(bkey, bparent, opts)
            : this.backend.view(bkey, bparent, opts));
          created = bkey;
        } catch (err) {
          if (!isAlreadyExists(err)) {
            throw renameKeys(err, new Map([[bkey, key], [bparent, parent]]));
          }
          if (target === "") {
            // The key is new and unique: the backend should not know it.
            throw internal(`${context}: unexpected error from the snapshotter: ${String(err)}`);
          }
          // The backend shares a committed snapshot for the target: record it here.
          let found: Info | undefined;
          await this.backend.walk((i) => {
            if (
              !found && i.kind === "committed" && i.labels[SNAPSHOT_REF_LABEL] === target &&
              i.parent === bparent
            ) found = i;
          }, [`labels."${SNAPSHOT_REF_LABEL}"==${JSON.stringify(target)}`]);
          if (!found) {
            throw notFound(`${context}: target snapshot ${quote(target)} not found in backend`);
          }
          const t: Info = found;
          recordKey = target;
          recordBkey = t.name;
          recordParent = parent;
          recordLabels = { ...t.labels, ...labels };
          created_at = t.created.getTime();
          updated_at = t.updated.getTime();
          shared = alreadyExists(
            `${context}: target snapshot ${quote(target)} already exists in the snapshotter`,
          );
        }
        this.#db.transaction(() => {
          if (this.#row(namespace, recordKey)) {
            throw alreadyExists(`${this.#context(action, recordKey, namespace)}: already exists`);
          }
          if (recordParent !== "") {
            const p = this.#row(namespace, recordParent);
            if (!p) {
              throw notFound(`${context}: parent snapshot ${quote(recordParent)} does not exist`);
            }
            if (p.backend_key !== bparent) {
              throw invalidArgument(
                `${context}: parent ${quote(recordParent)} does not match the target's parent`,
              );
            }
          }
          this.#ensureNamespace(namespace);
          this.#db.run(
            `INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent, created_at,
              updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
            namespace,
            this.name,
            recordKey,
            recordBkey,
            recordParent,
            created_at,
            updated_at,
          );
          this.#setLabels(namespace, recordKey, recordLabels);
          if (scope.lease) {
            this.#leases.addToLease(namespace, scope.lease, this.#leaseType, recordKey);
          }
        });
        created = "";
        this.#gc.mutated();
        if (shared) throw shared;
        return mounts;
      } finally {
        this.#pending.delete(pendingId);
        if (created !== "") {
          // The record was not stored: the backend snapshot must go.
          await this.backend.remove(created).catch((err) => {
            this.#markDirty();
            this.#log?.warn("cannot remove an unrecorded snapshot", {
              snapshotter: this.name,
              key: created,
              error: String(err),
            });
          });
        }
      }
    });
  }

  /**
   * Commits the active snapshot `key` as `name` (labels from `options` only); `key` goes
   * away. AlreadyExists when the namespace has `name`. `options.parent` commits a snapshot
   * prepared without a parent onto that (committed) parent, when the snapshotter can rebase
   * (see {@link CommitOptions.parent}).
   */
  async commit(
    scope: Scope,
    name: string,
    key: string,
    options: CommitOptions = {},
  ): Promise<void> {
    const { namespace } = scope;
    this.#check(namespace, key);
    validateKey(name, "name");
    const labels = checkLabels(options.labels);
    const parent = options.parent ?? "";
    if (parent !== "") validateKey(parent, "parent");
    const context = `${this.#context("commit", key, namespace)} as ${quote(name)}`;
    await this.#lock.read(async () => {
      const pendingId = `${namespace}\u0000${name}`;
      const { bkey, nameKey, bparent } = this.#db.transaction(() => {
        if (this.#row(namespace, name) || this.#pending.has(pendingId)) {
          throw alreadyExists(`${context}: snapshot ${quote(name)} already exists`);
        }
        const row = this.#row(namespace, key);
        if (!row) throw notFound(`${context}: snapshot ${quote(key)} does not exist`);
        let bparent: string | undefined;
        if (parent !== "") {
          const p = this.#row(namespace, parent);
          if (!p) throw notFound(`${context}: parent snapshot ${quote(parent)} does not exist`);
          if (row.parent !== "" && row.parent !== parent) {
            throw invalidArgument(
              `${context}: it was prepared on ${quote(row.parent)}, not ${quote(parent)}`,
            );
          }
          bparent = p.backend_key;
        }
        this.#requireLease(scope);
        return { bkey: row.backend_key, nameKey: this.#backendKey(namespace, name), bparent };
      });
      this.#pending.add(pendingId);
      try {
        await this.#backend(
          () =>
            this.backend.commit(nameKey, bkey, {
              labels: inheritedLabels(labels),
              ...(bparent !== undefined ? { parent: bparent } : {}),
            }),
          { [bkey]: key, [nameKey]: name, ...(bparent !== undefined ? { [bparent]: parent } : {}) },
        );
        try {
          this.#db.transaction(() => {
            const row = this.#row(namespace, key);
            if (!row || row.backend_key !== bkey) {
              throw notFound(`${context}: snapshot ${quote(key)} was removed during the commit`);
            }
            if (this.#row(namespace, name)) {
              throw alreadyExists(`${context}: snapshot ${quote(name)} already exists`);
            }
            if (parent !== "" && this.#row(namespace, parent)?.backend_key !== bparent) {
              throw notFound(`${context}: parent ${quote(parent)} was removed during the commit`);
            }
            const now = nowMs();
            this.#db.run(
              `INSERT INTO snapshots(namespace, snapshotter, key, backend_key, parent,
                created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
              namespace,
              this.name,
              name,
              nameKey,
              parent !== "" ? parent : row.parent,
              now,
              now,
            );
            this.#setLabels(namespace, name, labels);
            this.#db.run(
              "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
              namespace,
              this.name,
              key,
            );
            if (scope.lease) {
              this.#leases.addToLease(namespace, scope.lease, this.#leaseType, name);
              this.#leases.removeFromLease(namespace, scope.lease, this.#leaseType, key);
            }
          });
        } catch (err) {
          // The backend committed a snapshot no record refers to: the collector removes it.
          this.#markDirty();
          this.#gc.mutated(true);
          throw err;
        }
      } finally {
        this.#pending.delete(pendingId);
      }
    });
    this.#gc.mutated();
    try {
      this.#publish(namespace, { topic: "/snapshot/commit", snapshotter: this.name, key, name });
    } catch (err) {
      this.#log?.warn("cannot publish a snapshot event", { error: String(err) });
    }
  }

  /**
   * Removes the snapshot from the namespace; FailedPrecondition when it has children. The
   * backend snapshot goes at the next garbage collection.
   */
  remove(scope: Scope, key: string): Promise<void> {
    const { namespace } = scope;
    return Promise.resolve().then(() => {
      this.#check(namespace, key);
      const context = this.#context("remove", key, namespace);
      this.#db.transaction(() => {
        this.#require(namespace, key, "remove");
        const child = this.#db.get<{ key: string }>(
          `SELECT key FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ?
            LIMIT 1`,
          namespace,
          this.name,
          key,
        );
        if (child) {
          throw failedPrecondition(
            `${context}: it has a child snapshot (${quote(child.key)})`,
          );
        }
        this.#db.run(
          "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
          namespace,
          this.name,
          key,
        );
        if (scope.lease) {
          this.#leases.removeFromLease(namespace, scope.lease, this.#leaseType, key);
        }
      });
      this.#markDirty();
      this.#gc.mutated(true);
      try {
        this.#publish(namespace, { topic: "/snapshot/remove", snapshotter: this.name, key });
      } catch (err) {
        this.#log?.warn("cannot publish a snapshot event", { error: String(err) });
      }
    });
  }

  /**
   * Calls `fn` for every snapshot of the namespace matching any of `filters` (fields `kind`,
   * `name`, `parent`, `labels.<key>`), in key order.
   */
  async walk(
    namespace: string,
    fn: (info: Info) => void | Promise<void>,
    filters: readonly string[] = [],
  ): Promise<void> {
    validateIdentifier(namespace, "namespace");
    const filter = parseAll(filters);
    const rows = this.#db.all<Row>(
      `SELECT key, backend_key, parent, created_at, updated_at FROM snapshots
        WHERE namespace = ? AND snapshotter = ? ORDER BY key`,
      namespace,
      this.name,
    );
    if (rows.length === 0) return;
    const backend = new Map<string, Info>();
    await this.backend.walk((i) => {
      backend.set(i.name, i);
    });
    for (const row of rows) {
      const b = backend.get(row.backend_key);
      if (!b) continue;
      const info = this.#overlay(b, row, namespace);
      const adaptor = objectAdaptor({
        fields: { kind: info.kind, name: info.name, parent: info.parent },
        labels: info.labels,
        emptyIsPresent: true,
      });
      if (filter.match(adaptor)) await fn(info);
    }
  }

  /**
   * Removes the backend snapshots no namespace records (children first), then runs the
   * backend's own cleanup, as containerd's snapshot garbage collection. Holds the snapshotter
   * alone: no snapshot is created or committed meanwhile.
   */
  cleanup(): Promise<void> {
    return this.#lock.write(async () => {
      const seen = new Set<string>();
      for (
        const r of this.#db.all<{ backend_key: string }>(
          "SELECT backend_key FROM snapshots WHERE snapshotter = ?",
          this.name,
        )
      ) seen.add(r.backend_key);
      interface TreeNode {
        name: string;
        remove: boolean;
        children: TreeNode[];
      }
      const nodes = new Map<string, TreeNode>();
      const roots: TreeNode[] = [];
      const nodeOf = (name: string): TreeNode => {
        let n = nodes.get(name);
        if (!n) {
          n = { name, remove: false, children: [] };
          nodes.set(name, n);
        }
        return n;
      };
      await this.backend.walk((info) => {
        const node = nodeOf(info.name);
        node.remove = !seen.has(info.name);
        if (info.parent === "") roots.push(node);
        else nodeOf(info.parent).children.push(node);
      });
      const prune = async (node: TreeNode): Promise<void> => {
        for (const child of node.children) await prune(child);
        if (!node.remove) return;
        try {
          await this.backend.remove(node.name);
          this.#log?.debug("removed snapshot", { snapshotter: this.name, key: node.name });
        } catch (err) {
          if (isNotFound(err)) return;
          if (!isKind(err, "FailedPrecondition")) throw err;
          this.#log?.warn("cannot remove snapshot", {
            snapshotter: this.name,
            key: node.name,
            error: String(err),
          });
        }
      };
      for (const root of roots) await prune(root);
      try {
        await this.backend.cleanup();
      } catch (err) {
        if (!isKind(err, "NotImplemented")) throw err;
      }
    });
  }
}
