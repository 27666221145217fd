/**
 * The metastore of a snapshotter, as containerd's `snapshots/storage`: one SQLite file per
 * snapshotter (`<root>/metadata.db`, `node:sqlite`, WAL) holding every snapshot's numeric id,
 * key, kind, parent, labels, timestamps and (once committed) usage.
 *
 * Semantics follow containerd's bolt store: ids are allocated from a sequence that never goes
 * back (`AUTOINCREMENT`), so a directory named after an id can never be mistaken for a newer
 * snapshot; a parent must be committed; committing keeps the id and moves the snapshot from
 * its key to its name; a snapshot with children cannot be removed.
 *
 * Every method runs inside {@link MetaStore.transaction} (it opens one when called outside),
 * and transactions are synchronous: a snapshotter does its slow filesystem work before or
 * after, and only the quick steps (insert + rename of a prepared directory) inside.
 *
 * @module
 */

import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import {
  alreadyExists,
  failedPrecondition,
  internal,
  invalidArgument,
  notFound,
} from "../plugins/errdefs.ts";
import { objectAdaptor, parseAll } from "../plugins/filters/mod.ts";
import type { Info, Kind, Usage } from "./snapshotter.ts";

/** A snapshot as a snapshotter needs it to compute mounts, as containerd's `storage.Snapshot`. */
export interface Snapshot {
  /** The numeric id, as a decimal string (the name of the snapshot's directory). */
  id: string;
  /** Active or view (committed snapshots are not mounted). */
  kind: Kind;
  /** Ids of the parent chain, nearest first. */
  parentIDs: string[];
}

/** What {@link MetaStore.getInfo} returns. */
export interface SnapshotRecord {
  /** The numeric id, as a decimal string. */
  id: string;
  /** The snapshot's metadata. */
  info: Info;
  /** The usage recorded at commit (zero for active snapshots and views). */
  usage: Usage;
}

interface Row {
  id: number;
  key: string;
  kind: string;
  parent_id: number | null;
  parent_key: string | null;
  labels: string;
  created: number;
  updated: number;
  size: number;
  inodes: number;
}

const SCHEMA_VERSION = 1;

const SCHEMA = `
CREATE TABLE snapshots (
  id        INTEGER PRIMARY KEY AUTOINCREMENT,
  key       TEXT    NOT NULL UNIQUE,
  kind      TEXT    NOT NULL CHECK (kind IN ('active', 'view', 'committed')),
  parent_id INTEGER REFERENCES snapshots (id),
  labels    TEXT    NOT NULL DEFAULT '{}',
  created   INTEGER NOT NULL,
  updated   INTEGER NOT NULL,
  size      INTEGER NOT NULL DEFAULT 0,
  inodes    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX snapshots_parent ON snapshots (parent_id);
`;

const SELECT = `SELECT s.id, s.key, s.kind, s.parent_id, p.key AS parent_key, s.labels,
  s.created, s.updated, s.size, s.inodes
  FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id`;

function toInfo(row: Row): Info {
  return {
    kind: row.kind as Kind,
    name: row.key,
    parent: row.parent_key ?? "",
    labels: JSON.parse(row.labels) as Record<string, string>,
    created: new Date(row.created),
    updated: new Date(row.updated),
  };
}

/** The metastore of one snapshotter. */
export class MetaStore {
  /** Path of the database file. */
  readonly path: string;
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();
  #depth = 0;
  #closed = false;

  /** Opens (creating if needed) the database at `path`. */
  constructor(path: string) {
    this.path = path;
    this.#db = new DatabaseSync(path);
    this.#db.exec("PRAGMA journal_mode = WAL");
    this.#db.exec("PRAGMA synchronous = FULL");
    this.#db.exec("PRAGMA foreign_keys = ON");
    this.#db.exec("PRAGMA busy_timeout = 5000");
    const { user_version: version } = this.#db.prepare("PRAGMA user_version").get() as {
      user_version: number;
    };
    if (version > SCHEMA_VERSION) {
      this.#db.close();
      throw failedPrecondition(
        `Snapshot metadata "${path}" has schema version ${version}, newer than this tainerd ` +
          `supports (${SCHEMA_VERSION}); refusing to open it`,
      );
    }
    if (version < SCHEMA_VERSION) {
      this.transaction(() => {
        this.#db.exec(SCHEMA);
        this.#db.exec(`PRAGMA user_version = ${SCHEMA_VERSION}`);
      }, true);
    }
  }

  #stmt(sql: string): StatementSync {
    if (this.#closed) throw failedPrecondition(`Snapshot metadata "${this.path}" is closed`);
    let s = this.#statements.get(sql);
    if (!s) {
      s = this.#db.prepare(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  #get(sql: string, ...params: SQLInputValue[]): Row | undefined {
    return this.#stmt(sql).get(...params) as Row | undefined;
  }

  #run(sql: string, ...params: SQLInputValue[]): number {
    return Number(this.#stmt(sql).run(...params).changes);
  }

  /**
   * Runs `fn` in a transaction: `write` ones start with `BEGIN IMMEDIATE` (taking the write
   * lock at once, as containerd's writable bolt transactions), others with a deferred
   * `BEGIN`. Committed when `fn` returns, rolled back when it throws. Nested calls join the
   * outer transaction. `fn` must be synchronous.
   */
  transaction<T>(fn: () => T, write = false): T {
    if (this.#closed) throw failedPrecondition(`Snapshot metadata "${this.path}" is closed`);
    if (this.#depth > 0) {
      this.#depth++;
      try {
        return fn();
      } finally {
        this.#depth--;
      }
    }
    this.#db.exec(write ? "BEGIN IMMEDIATE" : "BEGIN");
    this.#depth = 1;
    try {
      const out = fn();
      if (out instanceof Promise) {
        throw internal("A snapshot metadata transaction must not be asynchronous");
      }
      this.#db.exec("COMMIT");
      return out;
    } catch (err) {
      try {
        this.#db.exec("ROLLBACK");
      } catch {
        // Already rolled back by SQLite.
      }
      throw err;
    } finally {
      this.#depth = 0;
    }
  }

  #row(key: string): Row | undefined {
    return this.#get(`${SELECT} WHERE s.key = ?`, key);
  }

  /** Whether a snapshot with this key (or name) exists. */
  exists(key: string): boolean {
    return this.transaction(() => this.#row(key) !== undefined);
  }

  /**
   * The id, metadata and recorded usage of a snapshot, as containerd's `storage.GetInfo`.
   *
   * @throws {TainerdError} NotFound
   */
  getInfo(key: string): SnapshotRecord {
    return this.transaction(() => {
      const row = this.#row(key);
      if (!row) throw notFound(`Snapshot "${key}" does not exist`);
      return {
        id: String(row.id),
        info: toInfo(row),
        usage: { size: row.size, inodes: row.inodes },
      };
    });
  }

  #parentIDs(parentID: number | null): string[] {
    const ids: string[] = [];
    let next = parentID;
    while (next !== null) {
      const row = this.#get("SELECT id, parent_id FROM snapshots WHERE id = ?", next);
      if (!row) throw notFound(`Snapshot parent with id ${next} is missing`);
      ids.push(String(row.id));
      next = row.parent_id;
      if (ids.length > 100_000) throw internal("Snapshot parent chain has a cycle");
    }
    return ids;
  }

  /**
   * The id, kind and parent ids of an active snapshot or view, as containerd's
   * `storage.GetSnapshot`.
   *
   * @throws {TainerdError} NotFound; FailedPrecondition for a committed snapshot
   */
  getSnapshot(key: string): Snapshot {
    return this.transaction(() => {
      const row = this.#row(key);
      if (!row) throw notFound(`Snapshot "${key}" does not exist`);
      if (row.kind !== "active" && row.kind !== "view") {
        throw failedPrecondition(`Snapshot "${key}" is ${row.kind}, not active or a view`);
      }
      return { id: String(row.id), kind: row.kind, parentIDs: this.#parentIDs(row.parent_id) };
    });
  }

  /**
   * Records a new active snapshot or view, as containerd's `storage.CreateSnapshot`.
   *
   * @throws {TainerdError} AlreadyExists for a used key; NotFound for a missing parent;
   *   InvalidArgument for a parent that is not committed, or another kind
   */
  createSnapshot(
    kind: Kind,
    key: string,
    parent: string,
    labels: Record<string, string> = {},
  ): Snapshot {
    if (kind !== "active" && kind !== "view") {
      throw invalidArgument(
        `Cannot create snapshot "${key}" of kind ${kind}: only active snapshots and views can ` +
          `be created`,
      );
    }
    return this.transaction(() => {
      let parentRow: Row | undefined;
      if (parent !== "") {
        parentRow = this.#row(parent);
        if (!parentRow) {
          throw notFound(`Cannot create snapshot "${key}": parent "${parent}" does not exist`);
        }
        if (parentRow.kind !== "committed") {
          throw invalidArgument(
            `Cannot create snapshot "${key}": parent "${parent}" is not a committed snapshot`,
          );
        }
      }
      if (this.#row(key)) throw alreadyExists(`Snapshot "${key}" already exists`);
      const now = Date.now();
      const row = this.#get(
        `INSERT INTO snapshots (key, kind, parent_id, labels, created, updated)
         VALUES (?, ?, ?, ?, ?, ?) RETURNING id`,
        key,
        kind,
        parentRow?.id ?? null,
        JSON.stringify(labels),
        now,
        now,
      )!;
      return {
        id: String(row.id),
        kind,
        parentIDs: parentRow ? this.#parentIDs(parentRow.id) : [],
      };
    }, true);
  }

  /**
   * Updates the labels of a snapshot, as containerd's `storage.UpdateInfo`: field paths
   * `labels` and `labels.<key>` (an empty value or a missing key deletes the label), none for
   * all labels.
   *
   * @throws {TainerdError} NotFound; InvalidArgument for any other field path
   */
  updateInfo(
    info: Pick<Info, "name"> & Partial<Info>,
    fieldpaths: readonly string[] = [],
  ): Info {
    return this.transaction(() => {
      const row = this.#row(info.name);
      if (!row) throw notFound(`Snapshot "${info.name}" does not exist`);
      const current = toInfo(row);
      let labels: Record<string, string> = current.labels;
      const given = info.labels ?? {};
      if (fieldpaths.length === 0) {
        labels = { ...given };
      } else {
        for (const path of fieldpaths) {
          if (path.startsWith("labels.")) {
            const k = path.slice("labels.".length);
            if (Object.hasOwn(given, k) && given[k] !== "") labels[k] = given[k];
            else delete labels[k];
          } else if (path === "labels") {
            labels = { ...given };
          } else {
            throw invalidArgument(
              `Cannot update field ${JSON.stringify(path)} of snapshot "${info.name}"`,
            );
          }
        }
      }
      for (const [k, v] of Object.entries(labels)) if (v === "") delete labels[k];
      const updated = Math.max(Date.now(), current.created.getTime());
      this.#run(
        "UPDATE snapshots SET labels = ?, updated = ? WHERE id = ?",
        JSON.stringify(labels),
        updated,
        row.id,
      );
      return { ...current, labels, updated: new Date(updated) };
    }, true);
  }

  /**
   * Commits the active snapshot `key` as `name`, keeping its id, as containerd's
   * `storage.CommitActive`. The committed snapshot's labels are `labels`; `created` and
   * `updated` become now; `usage` is recorded. A `parent` (committed) becomes its parent: the
   * one it was prepared on, or any when it was prepared without one (a rebase; whether the
   * data allows it is the snapshotter's to decide).
   *
   * @returns the id
   * @throws {TainerdError} AlreadyExists for a used name; NotFound for a missing key or
   *   parent; FailedPrecondition when `key` is not active; InvalidArgument for a parent that is
   *   not committed or when `key` was prepared on another parent
   */
  commitActive(
    key: string,
    name: string,
    usage: Usage,
    labels: Record<string, string> = {},
    parent?: string,
  ): string {
    return this.transaction(() => {
      if (this.#row(name)) throw alreadyExists(`Snapshot "${name}" already exists`);
      const row = this.#row(key);
      if (!row) throw notFound(`Cannot commit snapshot "${key}": it does not exist`);
      if (row.kind !== "active") {
        throw failedPrecondition(
          `Cannot commit snapshot "${key}": it is a ${row.kind}, not active`,
        );
      }
      let parentId = row.parent_id;
      if (parent !== undefined && parent !== "") {
        const p = this.#row(parent);
        if (!p) {
          throw notFound(`Cannot commit snapshot "${key}": parent "${parent}" does not exist`);
        }
        if (p.kind !== "committed") {
          throw invalidArgument(
            `Cannot commit snapshot "${key}": parent "${parent}" is not a committed snapshot`,
          );
        }
        if (row.parent_id !== null && row.parent_id !== p.id) {
          throw invalidArgument(
            `Cannot commit snapshot "${key}" onto "${parent}": it was prepared on another parent`,
          );
        }
        parentId = p.id;
      }
      const now = Date.now();
      this.#run(
        `UPDATE snapshots SET key = ?, kind = 'committed', labels = ?, created = ?, updated = ?,
           size = ?, inodes = ?, parent_id = ? WHERE id = ?`,
        name,
        JSON.stringify(labels),
        now,
        now,
        usage.size,
        usage.inodes,
        parentId,
        row.id,
      );
      return String(row.id);
    }, true);
  }

  /**
   * Removes the record of a snapshot, as containerd's `storage.Remove`.
   *
   * @returns its id and kind
   * @throws {TainerdError} NotFound; FailedPrecondition when it has children
   */
  remove(key: string): { id: string; kind: Kind } {
    return this.transaction(() => {
      const row = this.#row(key);
      if (!row) throw notFound(`Cannot remove snapshot "${key}": it does not exist`);
      const child = this.#get("SELECT id FROM snapshots WHERE parent_id = ? LIMIT 1", row.id);
      if (child) {
        throw failedPrecondition(`Cannot remove snapshot "${key}": it has children`);
      }
      this.#run("DELETE FROM snapshots WHERE id = ?", row.id);
      return { id: String(row.id), kind: row.kind as Kind };
    }, true);
  }

  /**
   * The metadata of every snapshot matching any of `filters` (fields `kind`, `name`,
   * `parent`, `labels.<key>`), in key order, as containerd's `storage.WalkInfo`.
   *
   * @throws {TainerdError} InvalidArgument for a malformed filter
   */
  walkInfo(filters: readonly string[] = []): Info[] {
    const filter = parseAll(filters);
    return this.transaction(() => {
      const rows = this.#stmt(`${SELECT} ORDER BY s.key`).all() as unknown as Row[];
      const out: Info[] = [];
      for (const row of rows) {
        const info = toInfo(row);
        const adaptor = objectAdaptor({
          fields: { kind: info.kind, name: info.name, parent: info.parent },
          labels: info.labels,
          emptyIsPresent: true,
        });
        if (filter.match(adaptor)) out.push(info);
      }
      return out;
    });
  }

  /** Every snapshot's id (decimal string) mapped to its key, as containerd's `storage.IDMap`. */
  idMap(): Map<string, string> {
    return this.transaction(() => {
      const rows = this.#stmt("SELECT id, key FROM snapshots").all() as unknown as Row[];
      return new Map(rows.map((r) => [String(r.id), r.key]));
    });
  }

  /** Closes the database; later calls fail with FailedPrecondition. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#statements.clear();
    this.#db.close();
  }
}
