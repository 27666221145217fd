/**
 * The container store over the metadata database, with containerd's semantics: ids are
 * identifiers, runtime name and spec are required, snapshotter and runtime are immutable,
 * updates follow field masks (`labels`, `labels.<k>`, `spec`, `image`, `snapshotkey`,
 * `extensions`, `extensions.<k>`).
 *
 * @module
 */

import { alreadyExists, invalidArgument, notFound } from "../errdefs.ts";
import { validateIdentifier, validateLabels } from "../identifiers.ts";
import { type MetadataDB, nowMs } from "../metadata/db.ts";
import { type GarbageCollector, GcResource, labelReferences } from "../metadata/gc.ts";
import type { NamespaceStore } from "../namespaces/store.ts";

/** A protobuf Any, kept as is. */
export interface AnyValue {
  typeUrl: string;
  value: Uint8Array;
}

/** A container record. */
export interface Container {
  id: string;
  labels: Record<string, string>;
  image: string;
  runtime: { name: string; options?: AnyValue };
  spec?: AnyValue;
  snapshotter: string;
  snapshotKey: string;
  createdAt: Date;
  updatedAt: Date;
  extensions: Record<string, AnyValue>;
}

interface Row {
  id: string;
  image: string;
  runtime_name: string;
  runtime_options_type: string | null;
  runtime_options: Uint8Array | null;
  spec_type: string | null;
  spec: Uint8Array | null;
  snapshotter: string;
  snapshot_key: string;
  labels: string;
  extensions: string;
  created_at: number;
  updated_at: number;
}

function b64(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

function unb64(s: string): Uint8Array {
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

function fromRow(r: Row): Container {
  const ext: Record<string, AnyValue> = {};
  for (
    const [k, v] of Object.entries(JSON.parse(r.extensions) as Record<string, [string, string]>)
  ) {
    ext[k] = { typeUrl: v[0], value: unb64(v[1]) };
  }
  return {
    id: r.id,
    labels: JSON.parse(r.labels),
    image: r.image,
    runtime: {
      name: r.runtime_name,
      options: r.runtime_options_type !== null
        ? { typeUrl: r.runtime_options_type, value: new Uint8Array(r.runtime_options ?? []) }
        : undefined,
    },
    spec: r.spec_type !== null
      ? { typeUrl: r.spec_type, value: new Uint8Array(r.spec ?? []) }
      : undefined,
    snapshotter: r.snapshotter,
    snapshotKey: r.snapshot_key,
    createdAt: new Date(r.created_at),
    updatedAt: new Date(r.updated_at),
    extensions: ext,
  };
}

function validate(c: Container): void {
  validateIdentifier(c.id, "container");
  for (const k of Object.keys(c.extensions)) {
    if (k === "") throw invalidArgument(`Container "${c.id}": extension keys must not be empty`);
  }
  validateLabels(c.labels);
  if (!c.runtime.name) {
    throw invalidArgument(`Container "${c.id}": the runtime name must be set`);
  }
  if (!c.spec) throw invalidArgument(`Container "${c.id}": the spec must be set`);
  if (c.snapshotKey && !c.snapshotter) {
    throw invalidArgument(
      `Container "${c.id}": the snapshotter must be set when a snapshot key is set`,
    );
  }
}

/** Containers, per namespace. */
export class ContainerStore {
  readonly #db: MetadataDB;
  readonly #namespaces: NamespaceStore;
  #gc?: GarbageCollector;

  constructor(db: MetadataDB, namespaces: NamespaceStore) {
    this.#db = db;
    this.#namespaces = namespaces;
  }

  /**
   * Registers the `container` resource type with the collector, as containerd's GC: every
   * container is a root that holds its snapshot (`<snapshotter>/<snapshot key>`) and what its
   * `containerd.io/gc.ref.*` labels name. Changes are reported to the collector from then on.
   */
  registerGc(gc: GarbageCollector): void {
    this.#gc = gc;
    gc.registerResourceType({
      type: GcResource.Container,
      roots: (emit) => {
        for (
          const r of this.#db.all<
            { namespace: string; snapshotter: string; snapshot_key: string; labels: string }
          >("SELECT namespace, snapshotter, snapshot_key, labels FROM containers")
        ) {
          if (r.snapshotter !== "") {
            emit({
              type: GcResource.Snapshot,
              namespace: r.namespace,
              key: `${r.snapshotter}/${r.snapshot_key}`,
            });
          }
          labelReferences(r.namespace, JSON.parse(r.labels), emit);
        }
      },
    });
  }

  #write(ns: string, c: Container, insert: boolean): void {
    const ext: Record<string, [string, string]> = {};
    for (const [k, v] of Object.entries(c.extensions)) ext[k] = [v.typeUrl, b64(v.value)];
    const params = [
      c.image,
      c.runtime.name,
      c.runtime.options?.typeUrl ?? null,
      c.runtime.options?.value ?? null,
      c.spec?.typeUrl ?? null,
      c.spec?.value ?? null,
      c.snapshotter,
      c.snapshotKey,
      JSON.stringify(c.labels),
      JSON.stringify(ext),
      c.createdAt.getTime(),
      c.updatedAt.getTime(),
    ];
    if (insert) {
      this.#db.run(
        `INSERT INTO containers(image, runtime_name, runtime_options_type, runtime_options,
          spec_type, spec, snapshotter, snapshot_key, labels, extensions, created_at, updated_at,
          namespace, id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)`,
        ...params,
        ns,
        c.id,
      );
    } else {
      this.#db.run(
        `UPDATE containers SET image=?, runtime_name=?, runtime_options_type=?, runtime_options=?,
          spec_type=?, spec=?, snapshotter=?, snapshot_key=?, labels=?, extensions=?,
          created_at=?, updated_at=? WHERE namespace=? AND id=?`,
        ...params,
        ns,
        c.id,
      );
    }
  }

  #row(ns: string, id: string): Row | undefined {
    return this.#db.get<Row>("SELECT * FROM containers WHERE namespace = ? AND id = ?", ns, id);
  }

  /** The container; NotFound if absent. */
  get(ns: string, id: string): Container {
    const r = this.#row(ns, id);
    if (!r) throw notFound(`Container "${id}" in namespace "${ns}" not found`);
    return fromRow(r);
  }

  /** All containers of the namespace, by id. */
  list(ns: string): Container[] {
    return this.#db.all<Row>("SELECT * FROM containers WHERE namespace = ? ORDER BY id", ns).map(
      fromRow,
    );
  }

  /** Creates a container; AlreadyExists if the id is taken. */
  create(ns: string, c: Omit<Container, "createdAt" | "updatedAt">): Container {
    const now = new Date(nowMs());
    const full: Container = { ...c, createdAt: now, updatedAt: now };
    validate(full);
    this.#db.transaction(() => {
      this.#namespaces.ensure(ns);
      if (this.#row(ns, c.id)) {
        throw alreadyExists(`Container "${c.id}" already exists in namespace "${ns}"`);
      }
      this.#write(ns, full, true);
    });
    this.#gc?.mutated();
    return full;
  }

  /** Updates fields by mask; with no paths, every mutable field (immutable ones must match). */
  update(ns: string, c: Container, paths: readonly string[]): Container {
    if (!c.id) throw invalidArgument("A container id is required to update a container");
    const result = this.#db.transaction(() => {
      const r = this.#row(ns, c.id);
      if (!r) throw notFound(`Container "${c.id}" in namespace "${ns}" not found`);
      const updated = fromRow(r);
      let fields = paths;
      if (fields.length === 0) {
        fields = ["labels", "spec", "extensions", "image", "snapshotkey"];
        if (updated.snapshotter !== c.snapshotter) {
          throw invalidArgument(`Container "${c.id}": the snapshotter is immutable`);
        }
        if (updated.runtime.name !== c.runtime.name) {
          throw invalidArgument(`Container "${c.id}": the runtime name is immutable`);
        }
      }
      for (const path of fields) {
        if (path.startsWith("labels.")) {
          const key = path.slice("labels.".length);
          const v = c.labels[key];
          if (v === undefined || v === "") delete updated.labels[key];
          else updated.labels[key] = v;
          continue;
        }
        if (path.startsWith("extensions.")) {
          const key = path.slice("extensions.".length);
          const v = c.extensions[key];
          if (v === undefined) delete updated.extensions[key];
          else updated.extensions[key] = v;
          continue;
        }
        switch (path) {
          case "labels":
            updated.labels = { ...c.labels };
            break;
          case "spec":
            updated.spec = c.spec;
            break;
          case "extensions":
            updated.extensions = { ...c.extensions };
            break;
          case "image":
            updated.image = c.image;
            break;
          case "snapshotkey":
            updated.snapshotKey = c.snapshotKey;
            break;
          default:
            throw invalidArgument(`Cannot update field "${path}" of container "${c.id}"`);
        }
      }
      validate(updated);
      updated.updatedAt = new Date(nowMs());
      this.#write(ns, updated, false);
      return updated;
    });
    // The old snapshot (or labelled references) may now be unreferenced.
    this.#gc?.mutated(true);
    return result;
  }

  /** Deletes a container record; NotFound if absent. */
  delete(ns: string, id: string): void {
    validateIdentifier(id, "container");
    const n = this.#db.run("DELETE FROM containers WHERE namespace = ? AND id = ?", ns, id);
    if (n === 0) throw notFound(`Container "${id}" in namespace "${ns}" not found`);
    this.#gc?.mutated(true);
  }

  /** Every (namespace, container) pair: GC roots for snapshots and images. */
  all(): { namespace: string; container: Container }[] {
    return this.#db.all<Row & { namespace: string }>("SELECT * FROM containers").map((r) => ({
      namespace: r.namespace,
      container: fromRow(r),
    }));
  }
}
