/**
 * The metadata database: one embedded SQLite file (`node:sqlite`, WAL) under the plugin's
 * root, home of every namespaced object. Every change runs in a transaction; the schema
 * version is recorded and migrations are code ({@link MIGRATIONS}).
 *
 * @module
 */

import { DatabaseSync, type SQLInputValue, type StatementSync } from "node:sqlite";
import { failedPrecondition, internal } from "../errdefs.ts";
import { MIGRATIONS } from "./schema.ts";

/** A row returned by a query. */
export type Row = Record<string, SQLInputValue>;

/** The metadata database handle. */
export class MetadataDB {
  readonly path: string;
  readonly #db: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();
  #depth = 0;

  /** Opens (creating if needed) the database at `path` and migrates it to the latest schema. */
  constructor(path: string) {
    this.path = path;
    this.#db = new DatabaseSync(path);
    this.#db.exec("PRAGMA journal_mode = WAL");
    this.#db.exec("PRAGMA synchronous = NORMAL");
    this.#db.exec("PRAGMA foreign_keys = ON");
    this.#db.exec("PRAGMA busy_timeout = 5000");
    this.#migrate();
  }

  /** The schema version in the file. */
  get schemaVersion(): number {
    const row = this.#db.prepare("PRAGMA user_version").get() as { user_version: number };
    return row.user_version;
  }

  #migrate(): void {
    const current = this.schemaVersion;
    if (current > MIGRATIONS.length) {
      throw failedPrecondition(
        `Metadata database "${this.path}" has schema version ${current}, newer than this ` +
          `tainerd supports (${MIGRATIONS.length}); refusing to open it`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.transaction(() => {
        this.#db.exec(MIGRATIONS[v]);
        this.#db.exec(`PRAGMA user_version = ${v + 1}`);
      });
    }
  }

  #stmt(sql: string): StatementSync {
    let s = this.#statements.get(sql);
    if (!s) {
      s = this.#db.prepare(sql);
      this.#statements.set(sql, s);
    }
    return s;
  }

  /** Runs a statement that changes rows; returns the number of rows changed. */
  run(sql: string, ...params: SQLInputValue[]): number {
    return Number(this.#stmt(sql).run(...params).changes);
  }

  /** The first row of a query, or undefined. */
  get<T = Row>(sql: string, ...params: SQLInputValue[]): T | undefined {
    return this.#stmt(sql).get(...params) as T | undefined;
  }

  /** All rows of a query. */
  all<T = Row>(sql: string, ...params: SQLInputValue[]): T[] {
    return this.#stmt(sql).all(...params) as T[];
  }

  /** Whether a table exists. */
  hasTable(name: string): boolean {
    return this.get("SELECT name FROM sqlite_master WHERE type='table' AND name=?", name) !==
      undefined;
  }

  /**
   * Runs `fn` in a transaction (BEGIN IMMEDIATE): committed when it returns, rolled back when
   * it throws. Nested calls join the outer transaction. `fn` must be synchronous: SQLite
   * transactions must not span awaits.
   */
  transaction<T>(fn: () => T): T {
    if (this.#depth > 0) {
      this.#depth++;
      try {
        return fn();
      } finally {
        this.#depth--;
      }
    }
    this.#db.exec("BEGIN IMMEDIATE");
    this.#depth = 1;
    try {
      const out = fn();
      if (out instanceof Promise) {
        throw internal("A metadata transaction must not be asynchronous");
      }
      this.#db.exec("COMMIT");
      return out;
    } catch (err) {
      try {
        this.#db.exec("ROLLBACK");
      } catch {
        // The transaction was already rolled back by SQLite.
      }
      throw err;
    } finally {
      this.#depth = 0;
    }
  }

  /** Closes the database. */
  close(): void {
    this.#statements.clear();
    this.#db.close();
  }
}

/** Milliseconds since the epoch, the unit timestamps are stored in. */
export function nowMs(): number {
  return Date.now();
}
