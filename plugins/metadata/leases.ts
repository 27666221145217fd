/**
 * The lease manager over the metadata database, as containerd's `metadata/leases.go`: leases
 * per namespace, with labels and the resources they hold (`content`, `ingests`,
 * `snapshots/<snapshotter>`). An unexpired lease keeps its resources from garbage collection;
 * `containerd.io/gc.expire` (RFC 3339) ends that, `containerd.io/gc.flat` keeps the resources
 * but not what they reference.
 *
 * @module
 */

import { alreadyExists, invalidArgument, notFound, notImplemented } from "../errdefs.ts";
import { objectAdaptor, parseAll } from "../filters/mod.ts";
import { validateIdentifier, validateLabels } from "../identifiers.ts";
import { parseDigest } from "../content/digest.ts";
import { type MetadataDB, nowMs } from "./db.ts";
import {
  type GarbageCollector,
  type GcEmit,
  GcLabels,
  type GcNode,
  GcResource,
  parseExpiry,
} from "./gc.ts";

/** The namespace and lease a call runs in (containerd's context values). */
export interface Scope {
  /** The namespace (required). */
  namespace: string;
  /** The lease the call's new objects are added to, if any (`containerd-lease`). */
  lease?: string;
}

/** A lease. */
export interface Lease {
  id: string;
  createdAt: Date;
  labels: Record<string, string>;
}

/** A resource held by a lease: `type` is `content`, `ingests` or `snapshots/<snapshotter>`. */
export interface LeaseResource {
  id: string;
  type: string;
}

/** Options of {@link LeaseManager.delete}. */
export interface LeaseDeleteOptions {
  /** Run a garbage collection before returning, so unreferenced resources are gone. */
  sync?: boolean;
}

/** The longest lease id accepted. */
const MAX_LEASE_ID = 256;

function validateLeaseId(id: string): void {
  if (id === "") throw invalidArgument("The lease id must not be empty");
  if (id.length > MAX_LEASE_ID) {
    throw invalidArgument(`The lease id is longer than ${MAX_LEASE_ID} characters`);
  }
  // deno-lint-ignore no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(id)) {
    throw invalidArgument(`The lease id ${JSON.stringify(id)} has control characters`);
  }
}

/** Makes a random lease id as containerd's `leases.WithRandomID`: `<nanoseconds>-<base64>`. */
export function randomLeaseId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(3));
  const b64 = btoa(String.fromCharCode(...bytes)).replaceAll("+", "-").replaceAll("/", "_");
  const nanos = Math.floor((performance.timeOrigin + performance.now()) * 1e6) % 1e9;
  return `${nanos}-${b64}`;
}

/** Splits a lease resource into its stored type and id, as containerd's parseLeaseResource. */
function parseResource(r: LeaseResource): { type: string; id: string } {
  const parts = r.type.split("/");
  switch (parts[0]) {
    case "content":
    case "ingests":
      if (parts.length !== 1) {
        throw invalidArgument(`Invalid lease resource type "${r.type}"`);
      }
      if (parts[0] === "content") {
        try {
          parseDigest(r.id);
        } catch (err) {
          throw invalidArgument(
            `Invalid content resource id ${JSON.stringify(r.id)}: ${(err as Error).message}`,
          );
        }
      } else if (r.id === "") {
        throw invalidArgument("The ingest resource id must not be empty");
      }
      return { type: r.type, id: r.id };
    case "snapshots":
      if (parts.length !== 2 || parts[1] === "") {
        throw invalidArgument(`Invalid snapshot resource type "${r.type}"`);
      }
      if (r.id === "") throw invalidArgument("The snapshot resource id must not be empty");
      return { type: r.type, id: r.id };
    default:
      throw notImplemented(`Lease resource type "${r.type}" is not supported`);
  }
}

/** The GC node of a lease resource. */
function resourceNode(namespace: string, type: string, id: string, flat: boolean): GcNode {
  if (type === "content") return { type: GcResource.Content, namespace, key: id, flat };
  if (type === "ingests") return { type: GcResource.Ingest, namespace, key: id };
  const snapshotter = type.slice("snapshots/".length);
  return { type: GcResource.Snapshot, namespace, key: `${snapshotter}/${id}`, flat };
}

/** Leases, persisted in the metadata database. */
export class LeaseManager {
  readonly #db: MetadataDB;
  readonly #gc: GarbageCollector;
  readonly #ensureNamespace: (namespace: string) => void;

  /**
   * Creates the manager and registers the `lease` resource type with the collector.
   * `ensureNamespace` creates a namespace on first use (the namespace store's `ensure`).
   */
  constructor(
    db: MetadataDB,
    gc: GarbageCollector,
    ensureNamespace: (namespace: string) => void = () => {},
  ) {
    this.#db = db;
    this.#gc = gc;
    this.#ensureNamespace = ensureNamespace;
    gc.registerResourceType({
      type: GcResource.Lease,
      roots: (emit) => this.#roots(emit),
      scan: (emit) => {
        for (
          const r of db.all<{ namespace: string; id: string }>("SELECT namespace, id FROM leases")
        ) emit({ type: GcResource.Lease, namespace: r.namespace, key: r.id });
      },
      remove: (node) => {
        db.run("DELETE FROM leases WHERE namespace = ? AND id = ?", node.namespace, node.key);
      },
    });
  }

  /** Unexpired leases and everything they hold. */
  #roots(emit: GcEmit): void {
    const now = Date.now();
    const leases = this.#db.all<{ namespace: string; id: string }>(
      "SELECT namespace, id FROM leases",
    );
    for (const { namespace, id } of leases) {
      const labels = this.#labels(namespace, id);
      const expire = labels[GcLabels.Expire];
      if (expire !== undefined) {
        const at = parseExpiry(expire);
        // An invalid expiry is ignored, as containerd does: the lease holds.
        if (at && at.getTime() < now) continue;
      }
      const flat = labels[GcLabels.Flat] !== undefined;
      emit({ type: GcResource.Lease, namespace, key: id });
      for (
        const r of this.#db.all<{ type: string; id: string }>(
          "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ?",
          namespace,
          id,
        )
      ) emit(resourceNode(namespace, r.type, r.id, flat));
    }
  }

  #labels(namespace: string, id: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (
      const r of this.#db.all<{ key: string; value: string }>(
        "SELECT key, value FROM lease_labels WHERE namespace = ? AND lease = ? ORDER BY key",
        namespace,
        id,
      )
    ) out[r.key] = r.value;
    return out;
  }

  #row(namespace: string, id: string): { created_at: number } | undefined {
    return this.#db.get<{ created_at: number }>(
      "SELECT created_at FROM leases WHERE namespace = ? AND id = ?",
      namespace,
      id,
    );
  }

  #require(namespace: string, id: string, action: string): void {
    if (!this.#row(namespace, id)) {
      throw notFound(`Cannot ${action} lease "${id}" in namespace "${namespace}": not found`);
    }
  }

  /** Whether the lease exists. */
  exists(namespace: string, id: string): boolean {
    return this.#row(namespace, id) !== undefined;
  }

  /** Creates a lease (with a random id when `id` is empty); AlreadyExists when it exists. */
  create(
    namespace: string,
    opts: { id?: string; labels?: Record<string, string> } = {},
  ): Lease {
    validateIdentifier(namespace, "namespace");
    const id = opts.id || randomLeaseId();
    validateLeaseId(id);
    const labels: Record<string, string> = {};
    for (const [k, v] of Object.entries(opts.labels ?? {})) if (v !== "") labels[k] = v;
    validateLabels(labels);
    const createdAt = nowMs();
    this.#db.transaction(() => {
      if (this.#row(namespace, id)) {
        throw alreadyExists(
          `Cannot create lease "${id}" in namespace "${namespace}": already exists`,
        );
      }
      this.#ensureNamespace(namespace);
      this.#db.run(
        "INSERT INTO leases(namespace, id, created_at) VALUES (?, ?, ?)",
        namespace,
        id,
        createdAt,
      );
      for (const [k, v] of Object.entries(labels)) {
        this.#db.run(
          "INSERT INTO lease_labels(namespace, lease, key, value) VALUES (?, ?, ?, ?)",
          namespace,
          id,
          k,
          v,
        );
      }
    });
    this.#gc.mutated();
    return { id, createdAt: new Date(createdAt), labels };
  }

  /**
   * Deletes a lease; NotFound when absent. Its resources are collected by the next garbage
   * collection (before this returns with `sync`).
   */
  async delete(namespace: string, id: string, opts: LeaseDeleteOptions = {}): Promise<void> {
    validateIdentifier(namespace, "namespace");
    this.#db.transaction(() => {
      this.#require(namespace, id, "delete");
      this.#db.run("DELETE FROM leases WHERE namespace = ? AND id = ?", namespace, id);
    });
    this.#gc.mutated(true);
    if (opts.sync) await this.#gc.collect();
  }

  /** The namespace's leases matching any of `filters` (fields `id`, `labels.*`). */
  list(namespace: string, filters: readonly string[] = []): Lease[] {
    validateIdentifier(namespace, "namespace");
    const filter = parseAll(filters);
    return this.#db.all<{ id: string; created_at: number }>(
      "SELECT id, created_at FROM leases WHERE namespace = ? ORDER BY id",
      namespace,
    ).map((r) => ({
      id: r.id,
      createdAt: new Date(r.created_at),
      labels: this.#labels(namespace, r.id),
    })).filter((l) => filter.match(objectAdaptor({ fields: { id: l.id }, labels: l.labels })));
  }

  /** Adds a resource to a lease; NotFound when the lease does not exist. */
  addResource(namespace: string, id: string, resource: LeaseResource): void {
    validateIdentifier(namespace, "namespace");
    const r = parseResource(resource);
    this.#db.transaction(() => {
      this.#require(namespace, id, "add a resource to");
      this.addToLease(namespace, id, r.type, r.id);
    });
    this.#gc.mutated();
  }

  /** Removes a resource from a lease; NotFound when the lease does not exist. */
  deleteResource(namespace: string, id: string, resource: LeaseResource): void {
    validateIdentifier(namespace, "namespace");
    const r = parseResource(resource);
    this.#db.transaction(() => {
      this.#require(namespace, id, "delete a resource from");
      this.#db.run(
        "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
        namespace,
        id,
        r.type,
        r.id,
      );
    });
    this.#gc.mutated(true);
  }

  /** The resources a lease holds: content, then ingests, then snapshots. */
  listResources(namespace: string, id: string): LeaseResource[] {
    validateIdentifier(namespace, "namespace");
    this.#require(namespace, id, "list the resources of");
    const rank = (t: string) => (t === "content" ? 0 : t === "ingests" ? 1 : 2);
    return this.#db.all<{ type: string; id: string }>(
      "SELECT type, id FROM lease_resources WHERE namespace = ? AND lease = ? ORDER BY type, id",
      namespace,
      id,
    ).sort((a, b) => rank(a.type) - rank(b.type)).map((r) => ({ id: r.id, type: r.type }));
  }

  /**
   * Adds a resource to a lease, inside the caller's transaction. NotFound when the lease does
   * not exist (as containerd: "lease does not exist"). For stores that add what they create
   * under the call's lease (`containerd-lease`).
   */
  addToLease(namespace: string, lease: string, type: string, id: string): void {
    if (!this.#row(namespace, lease)) {
      throw notFound(`Lease "${lease}" does not exist in namespace "${namespace}"`);
    }
    this.#db.run(
      "INSERT OR IGNORE INTO lease_resources(namespace, lease, type, id) VALUES (?, ?, ?, ?)",
      namespace,
      lease,
      type,
      id,
    );
  }

  /** Removes a resource from a lease, inside the caller's transaction; absent is fine. */
  removeFromLease(namespace: string, lease: string, type: string, id: string): void {
    this.#db.run(
      "DELETE FROM lease_resources WHERE namespace = ? AND lease = ? AND type = ? AND id = ?",
      namespace,
      lease,
      type,
      id,
    );
  }
}
