/**
 * The namespace store over the metadata database: create, get, list, update labels and
 * delete — refusing to delete a namespace that still holds objects.
 *
 * @module
 */

import { alreadyExists, failedPrecondition, invalidArgument, notFound } from "../errdefs.ts";
import { validateIdentifier, validateLabels } from "../identifiers.ts";
import { type MetadataDB, nowMs } from "../metadata/db.ts";
import { NAMESPACED_OBJECTS } from "../metadata/schema.ts";

/** A namespace and its labels. */
export interface Namespace {
  name: string;
  labels: Record<string, string>;
}

/** Something told of namespace changes (the event exchange). */
export type NamespaceEventSink = (
  topic: "/namespaces/create" | "/namespaces/update" | "/namespaces/delete",
  ns: Namespace,
) => void;

/** Namespaces, persisted in the metadata database. */
export class NamespaceStore {
  readonly #db: MetadataDB;
  readonly #publish: NamespaceEventSink;

  constructor(db: MetadataDB, publish: NamespaceEventSink = () => {}) {
    this.#db = db;
    this.#publish = publish;
  }

  #labels(name: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (
      const r of this.#db.all<{ key: string; value: string }>(
        "SELECT key, value FROM namespace_labels WHERE namespace = ? ORDER BY key",
        name,
      )
    ) out[r.key] = r.value;
    return out;
  }

  #exists(name: string): boolean {
    return this.#db.get("SELECT 1 AS x FROM namespaces WHERE name = ?", name) !== undefined;
  }

  #setLabels(name: string, labels: Record<string, string>): void {
    this.#db.run("DELETE FROM namespace_labels WHERE namespace = ?", name);
    for (const [k, v] of Object.entries(labels)) {
      this.#db.run(
        "INSERT INTO namespace_labels(namespace, key, value) VALUES (?, ?, ?)",
        name,
        k,
        v,
      );
    }
  }

  /** Creates a namespace; AlreadyExists if it does. */
  create(name: string, labels: Record<string, string> = {}): Namespace {
    validateIdentifier(name, "namespace");
    validateLabels(labels);
    this.#db.transaction(() => {
      if (this.#exists(name)) throw alreadyExists(`Namespace "${name}" already exists`);
      const now = nowMs();
      this.#db.run(
        "INSERT INTO namespaces(name, created_at, updated_at) VALUES (?, ?, ?)",
        name,
        now,
        now,
      );
      this.#setLabels(name, labels);
    });
    const ns = { name, labels: { ...labels } };
    this.#publish("/namespaces/create", ns);
    return ns;
  }

  /** Creates the namespace if it does not exist yet (objects created in it do that). */
  ensure(name: string): void {
    validateIdentifier(name, "namespace");
    if (this.#exists(name)) return;
    const now = nowMs();
    const created = this.#db.run(
      "INSERT OR IGNORE INTO namespaces(name, created_at, updated_at) VALUES (?, ?, ?)",
      name,
      now,
      now,
    );
    if (created) this.#publish("/namespaces/create", { name, labels: {} });
  }

  /** The namespace; NotFound if it does not exist. */
  get(name: string): Namespace {
    validateIdentifier(name, "namespace");
    if (!this.#exists(name)) throw notFound(`Namespace "${name}" not found`);
    return { name, labels: this.#labels(name) };
  }

  /** All namespaces, by name. */
  list(): Namespace[] {
    return this.#db.all<{ name: string }>("SELECT name FROM namespaces ORDER BY name").map((r) => ({
      name: r.name,
      labels: this.#labels(r.name),
    }));
  }

  /**
   * Updates labels. With no paths, the labels are replaced; with paths, `labels` replaces
   * them all and `labels.<key>` sets one (an empty value removes it).
   */
  update(ns: Namespace, paths: readonly string[] = []): Namespace {
    validateIdentifier(ns.name, "namespace");
    const updated = this.#db.transaction(() => {
      if (!this.#exists(ns.name)) throw notFound(`Namespace "${ns.name}" not found`);
      let labels = this.#labels(ns.name);
      if (paths.length === 0) {
        labels = { ...ns.labels };
      } else {
        for (const path of paths) {
          if (path === "labels") {
            labels = { ...ns.labels };
          } else if (path.startsWith("labels.")) {
            const key = path.slice("labels.".length);
            const value = ns.labels[key];
            if (value === undefined || value === "") delete labels[key];
            else labels[key] = value;
          } else {
            throw invalidArgument(`Cannot update field "${path}" of namespace "${ns.name}"`);
          }
        }
      }
      for (const [k, v] of Object.entries(labels)) if (v === "") delete labels[k];
      validateLabels(labels);
      this.#setLabels(ns.name, labels);
      this.#db.run("UPDATE namespaces SET updated_at = ? WHERE name = ?", nowMs(), ns.name);
      return { name: ns.name, labels };
    });
    this.#publish("/namespaces/update", updated);
    return updated;
  }

  /** The kinds of objects the namespace still holds ("images", "blobs"…). */
  holdings(name: string): string[] {
    const kinds: string[] = [];
    for (const { table, kind } of NAMESPACED_OBJECTS) {
      if (!this.#db.hasTable(table)) continue;
      if (this.#db.get(`SELECT 1 AS x FROM ${table} WHERE namespace = ? LIMIT 1`, name)) {
        kinds.push(kind);
      }
    }
    return kinds;
  }

  /** Deletes an empty namespace; FailedPrecondition if it still holds objects. */
  delete(name: string): void {
    validateIdentifier(name, "namespace");
    this.#db.transaction(() => {
      if (!this.#exists(name)) throw notFound(`Namespace "${name}" not found`);
      const kinds = this.holdings(name);
      if (kinds.length > 0) {
        throw failedPrecondition(
          `Namespace "${name}" must be empty, but it still has ${kinds.join(", ")}`,
        );
      }
      this.#db.run("DELETE FROM namespaces WHERE name = ?", name);
    });
    this.#publish("/namespaces/delete", { name, labels: {} });
  }
}
