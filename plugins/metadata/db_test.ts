import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import { TainerdError } from "../errdefs.ts";
import { MetadataDB } from "./db.ts";
import { MIGRATIONS } from "./schema.ts";

async function tempDir(): Promise<string> {
  return await Deno.makeTempDir({ prefix: "tainerd-db-" });
}

Deno.test("MetadataDB migrates a new database to the latest schema, in WAL mode", async () => {
  const dir = await tempDir();
  try {
    const db = new MetadataDB(`${dir}/meta.db`);
    assert.equal(db.schemaVersion, MIGRATIONS.length);
    assert.ok(db.hasTable("namespaces"));
    assert.equal(db.get<{ journal_mode: string }>("PRAGMA journal_mode")?.journal_mode, "wal");
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MetadataDB.transaction() rolls back everything when the function throws", async () => {
  const dir = await tempDir();
  try {
    const db = new MetadataDB(`${dir}/meta.db`);
    assert.throws(() =>
      db.transaction(() => {
        db.run("INSERT INTO namespaces(name, created_at, updated_at) VALUES ('a', 1, 1)");
        db.transaction(() => {
          db.run("INSERT INTO namespaces(name, created_at, updated_at) VALUES ('b', 1, 1)");
        });
        throw new Error("crash in the middle");
      }), /crash in the middle/);
    assert.equal(db.all("SELECT name FROM namespaces").length, 0);
    db.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("MetadataDB refuses a database from a newer tainerd", async () => {
  const dir = await tempDir();
  try {
    const raw = new DatabaseSync(`${dir}/meta.db`);
    raw.exec(`PRAGMA user_version = ${MIGRATIONS.length + 1}`);
    raw.close();
    assert.throws(
      () => new MetadataDB(`${dir}/meta.db`),
      (e: unknown) => e instanceof TainerdError && e.kind === "FailedPrecondition",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
