/**
 * The garbage collector of the metadata database, as containerd's `metadata.DB.GarbageCollect`
 * with `gc.Tricolor`: a mark-and-sweep over a graph of resources whose kinds are contributed by
 * the stores that own them.
 *
 * ## The extension point
 *
 * Every store that owns collectable (or rooting) objects registers a {@link GcResourceType}
 * with the one collector of the database, during its plugin's init:
 *
 * ```ts
 * import { collectorFor, GcResource, labelReferences } from "../metadata/gc.ts";
 *
 * const gc = collectorFor(ic.get(metadataPlugin));
 * gc.registerResourceType({
 *   type: GcResource.Image,
 *   // Images are never collected; each one holds its target and what its labels name.
 *   roots(emit) {
 *     for (const img of db.all("SELECT namespace, name, target_digest FROM images")) {
 *       emit({ type: GcResource.Content, namespace: img.namespace, key: img.target_digest });
 *       labelReferences(img.namespace, labelsOf(img), emit);
 *     }
 *   },
 * });
 * ```
 *
 * A collection ({@link GarbageCollector.collect}) runs in two phases:
 *
 * 1. **Metadata**, in one synchronous SQLite transaction (nothing can interleave with it):
 *    every type's {@link GcResourceType.roots} emits the nodes that must live; the collector
 *    follows {@link GcResourceType.references} from them (tri-colour marking); then every
 *    type's {@link GcResourceType.scan} lists its nodes and {@link GcResourceType.remove}
 *    deletes each one not reached.
 * 2. **Backends**, asynchronously, after the transaction committed: the
 *    {@link GcResourceType.cleanup} of every type that had nodes removed or was marked dirty
 *    ({@link GarbageCollector.markDirty}) reclaims storage no record refers to any more (blobs,
 *    ingests, snapshot directories).
 *
 * Nodes are `{ type, namespace, key }`: content is keyed by digest, ingests by ref, leases by
 * id, snapshots by `<snapshotter>/<key>`, images by name, containers by id. A node may be
 * `flat` (reached through a lease labelled `containerd.io/gc.flat`): it is kept, but its
 * provider should not follow its label references (snapshots still keep their parents).
 * Nodes of types nobody registered are kept and not followed.
 *
 * Stores report changes with {@link GarbageCollector.mutated}, which the scheduler
 * (`io.containerd.gc.v1.scheduler`) listens to, to decide when to collect.
 *
 * @module
 */

import { internal } from "../errdefs.ts";
import type { Logger } from "../../log.ts";
import type { MetadataDB } from "./db.ts";

/** Labels the collector understands, as containerd's. */
export const GcLabels = {
  /** On content or a snapshot: the object is a root. */
  Root: "containerd.io/gc.root",
  /** `containerd.io/gc.ref.content` and `containerd.io/gc.ref.content.<name>`: a digest kept alive. */
  ContentRef: "containerd.io/gc.ref.content",
  /** `containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]`: a snapshot key kept alive. */
  SnapshotRef: "containerd.io/gc.ref.snapshot.",
  /** On a lease: RFC 3339 time after which the lease no longer holds anything. */
  Expire: "containerd.io/gc.expire",
  /** On a lease: keep its resources but not what they reference. */
  Flat: "containerd.io/gc.flat",
} as const;

/** The resource types tainerd's stores register (others may add their own). */
export const GcResource = {
  Content: "content",
  Ingest: "ingest",
  Lease: "lease",
  Snapshot: "snapshot",
  Image: "image",
  Container: "container",
} as const;

/** One resource in the reference graph. */
export interface GcNode {
  /** The resource type, e.g. {@link GcResource.Content}. */
  readonly type: string;
  /** The namespace the resource lives in. */
  readonly namespace: string;
  /** The resource's key within its type and namespace (digest, ref, `<snapshotter>/<key>`…). */
  readonly key: string;
  /** Reached only through a flat lease: keep it, but do not follow its label references. */
  readonly flat?: boolean;
}

/** Receives nodes from a provider. */
export type GcEmit = (node: GcNode) => void;

/**
 * What a store tells the collector about one resource type. Every method but
 * {@link GcResourceType.cleanup} runs inside the collector's metadata transaction and must be
 * synchronous; all are optional.
 */
export interface GcResourceType {
  /** The type name, unique per collector: the `type` of the nodes this provider answers for. */
  readonly type: string;
  /**
   * Emits the roots this type contributes, in every namespace: nodes (of any type) that must
   * live whatever refers to them, e.g. content labelled `containerd.io/gc.root`, the
   * resources of unexpired leases, the targets of images.
   */
  roots?(emit: GcEmit): void;
  /**
   * Emits the nodes `node` (of this type) refers to, e.g. content named by its
   * `containerd.io/gc.ref.content*` labels (see {@link labelReferences}). A `flat` node should
   * emit no label references.
   */
  references?(node: GcNode, emit: GcEmit): void;
  /**
   * Emits every existing node of this type: the candidates for sweeping. Without it, objects
   * of this type are never collected.
   */
  scan?(emit: GcEmit): void;
  /** Deletes the record of an unreachable node found by {@link GcResourceType.scan}. */
  remove?(node: GcNode): void;
  /**
   * Runs after the metadata transaction committed, when nodes of this type were removed (they
   * are passed) or the type was marked dirty: reclaims backend storage no record refers to.
   * Failures are logged and retried at the next collection.
   */
  cleanup?(removed: readonly GcNode[]): Promise<void>;
}

/** What one collection did. */
export interface GcStats {
  /** Milliseconds the metadata phase (mark and sweep, in one transaction) took. */
  metadataMs: number;
  /** Milliseconds the backend cleanups took. */
  cleanupMs: number;
  /** How many nodes were reachable. */
  marked: number;
  /** How many nodes were removed, by type. */
  removed: Record<string, number>;
}

/** Called after every committed change; `deletion` when something was deleted. */
export type MutationCallback = (deletion: boolean) => void;

function nodeId(type: string, namespace: string, key: string): string {
  return `${type}\u0000${namespace}\u0000${key}`;
}

/**
 * Emits the references an object's labels make, as containerd's `sendLabelRefs`:
 * `containerd.io/gc.ref.content` and `containerd.io/gc.ref.content.<name>` (or `/<name>`) name
 * content by digest; `containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]` names a snapshot
 * by key in that snapshotter (node key `<snapshotter>/<value>`).
 */
export function labelReferences(
  namespace: string,
  labels: Readonly<Record<string, string>>,
  emit: GcEmit,
): void {
  const contentRef = GcLabels.ContentRef;
  for (const [key, value] of Object.entries(labels)) {
    if (key.startsWith(contentRef)) {
      const sep = key.charAt(contentRef.length);
      if (key.length === contentRef.length || sep === "." || sep === "/") {
        emit({ type: GcResource.Content, namespace, key: value });
      }
    } else if (key.startsWith(GcLabels.SnapshotRef)) {
      let snapshotter = key.slice(GcLabels.SnapshotRef.length);
      const slash = snapshotter.indexOf("/");
      if (slash >= 0) snapshotter = snapshotter.slice(0, slash);
      if (snapshotter !== "") {
        emit({ type: GcResource.Snapshot, namespace, key: `${snapshotter}/${value}` });
      }
    }
  }
}

/**
 * Parses a `containerd.io/gc.expire` value (RFC 3339). Returns undefined when it is not a
 * valid time (containerd then ignores the label).
 */
export function parseExpiry(value: string): Date | undefined {
  if (!/^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/.test(value)) {
    return undefined;
  }
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? undefined : date;
}

/**
 * The collector of one metadata database. Get the shared instance with {@link collectorFor}.
 */
export class GarbageCollector {
  readonly #db: MetadataDB;
  readonly #types = new Map<string, GcResourceType>();
  readonly #dirty = new Set<string>();
  readonly #mutationCallbacks = new Set<MutationCallback>();
  readonly #collectedCallbacks = new Set<(stats: GcStats) => void>();
  #log?: Logger;
  /** The collection running now, if any. */
  #running?: Promise<GcStats>;
  /** The collection queued behind the running one, shared by every caller that waits for it. */
  #queued?: Promise<GcStats>;

  /** Creates a collector for `db`; prefer {@link collectorFor}, which shares one per database. */
  constructor(db: MetadataDB) {
    this.#db = db;
  }

  /** Sets the logger used for cleanup failures and debug lines. */
  setLogger(log: Logger): void {
    this.#log = log;
  }

  /**
   * Registers a resource type; Internal when a type of that name is registered already.
   * Returns a function that unregisters it.
   */
  registerResourceType(type: GcResourceType): () => void {
    if (!type.type) throw internal("A GC resource type must have a name");
    if (this.#types.has(type.type)) {
      throw internal(`The GC resource type "${type.type}" is registered twice`);
    }
    this.#types.set(type.type, type);
    return () => {
      if (this.#types.get(type.type) === type) this.#types.delete(type.type);
    };
  }

  /** The registered type names. */
  get resourceTypes(): string[] {
    return [...this.#types.keys()];
  }

  /**
   * Reports a committed metadata change to the scheduler. `deletion` is true when something
   * was deleted or dereferenced (containerd's "dirty"), which makes a collection due soon.
   */
  mutated(deletion = false): void {
    for (const cb of this.#mutationCallbacks) cb(deletion);
  }

  /**
   * Marks the backend of a resource type as needing cleanup at the next collection (e.g. a
   * content record was deleted, so its blob may now be unreferenced).
   */
  markDirty(type: string): void {
    this.#dirty.add(type);
  }

  /** Registers a callback for {@link GarbageCollector.mutated}; returns its remover. */
  onMutation(cb: MutationCallback): () => void {
    this.#mutationCallbacks.add(cb);
    return () => this.#mutationCallbacks.delete(cb);
  }

  /** Registers a callback run after every successful collection; returns its remover. */
  onCollected(cb: (stats: GcStats) => void): () => void {
    this.#collectedCallbacks.add(cb);
    return () => this.#collectedCallbacks.delete(cb);
  }

  /**
   * Runs a collection that starts after this call: when one is already running, waits for it
   * and runs another (callers that arrive meanwhile share that next one).
   */
  collect(): Promise<GcStats> {
    if (!this.#running) {
      this.#running = this.#run().finally(() => {
        this.#running = undefined;
      });
      return this.#running;
    }
    if (!this.#queued) {
      const after = this.#running.catch(() => undefined);
      this.#queued = after.then(() => {
        this.#queued = undefined;
        return this.collect();
      });
    }
    return this.#queued;
  }

  /** Whether a collection is running. */
  get busy(): boolean {
    return this.#running !== undefined;
  }

  async #run(): Promise<GcStats> {
    const t0 = performance.now();
    const { marked, removed } = this.#db.transaction(() => this.#markAndSweep());
    const t1 = performance.now();
    const dirty = new Set(this.#dirty);
    this.#dirty.clear();
    for (const type of removed.keys()) dirty.add(type);
    const removedCounts: Record<string, number> = {};
    for (const [type, nodes] of removed) removedCounts[type] = nodes.length;
    for (const typeName of dirty) {
      const type = this.#types.get(typeName);
      if (!type?.cleanup) continue;
      try {
        await type.cleanup(removed.get(typeName) ?? []);
      } catch (err) {
        // Try again next time.
        this.#dirty.add(typeName);
        this.#log?.warn(`garbage collection cleanup of ${typeName} failed`, {
          error: err instanceof Error ? err.message : String(err),
        });
      }
    }
    const stats: GcStats = {
      metadataMs: t1 - t0,
      cleanupMs: performance.now() - t1,
      marked,
      removed: removedCounts,
    };
    this.#log?.debug("garbage collected", {
      d: `${stats.metadataMs.toFixed(2)}ms`,
      cleanup: `${stats.cleanupMs.toFixed(2)}ms`,
      removed: JSON.stringify(removedCounts),
    });
    for (const cb of this.#collectedCallbacks) cb(stats);
    return stats;
  }

  /** Marks from the roots and sweeps what was not reached. Runs inside the transaction. */
  #markAndSweep(): { marked: number; removed: Map<string, GcNode[]> } {
    const grays: GcNode[] = [];
    const seen = new Set<string>();
    const reachable = new Set<string>();
    const push = (node: GcNode) => {
      const id = nodeId(node.type, node.namespace, node.key) + (node.flat ? "\u0000flat" : "");
      if (seen.has(id)) return;
      seen.add(id);
      grays.push(node);
    };
    for (const type of this.#types.values()) type.roots?.(push);
    while (grays.length > 0) {
      const node = grays.pop()!;
      reachable.add(nodeId(node.type, node.namespace, node.key));
      this.#types.get(node.type)?.references?.(node, push);
    }
    const removed = new Map<string, GcNode[]>();
    for (const type of this.#types.values()) {
      if (!type.scan || !type.remove) continue;
      const doomed: GcNode[] = [];
      type.scan((node) => {
        if (!reachable.has(nodeId(type.type, node.namespace, node.key))) doomed.push(node);
      });
      for (const node of doomed) type.remove(node);
      if (doomed.length > 0) removed.set(type.type, doomed);
    }
    return { marked: reachable.size, removed };
  }
}

const COLLECTORS = new WeakMap<MetadataDB, GarbageCollector>();

/**
 * The one collector of a metadata database, created on first use. Every store built on the
 * database registers its resource types here, and the GC scheduler drives it.
 */
export function collectorFor(db: MetadataDB): GarbageCollector {
  let gc = COLLECTORS.get(db);
  if (!gc) {
    gc = new GarbageCollector(db);
    COLLECTORS.set(db, gc);
  }
  return gc;
}
