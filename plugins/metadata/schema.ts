/**
 * The metadata schema as an ordered list of migrations: migration `i` takes the database from
 * version `i` to `i + 1`. Never edit a released migration; append a new one.
 *
 * @module
 */

/** The migrations, oldest first. */
export const MIGRATIONS: readonly string[] = [
  // 1: namespaces and their labels.
  `
  CREATE TABLE namespaces (
    name TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
  ) WITHOUT ROWID;
  CREATE TABLE namespace_labels (
    namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
  ) WITHOUT ROWID;
  `,
];

/**
 * Tables holding namespaced objects, with the name containerd reports for them when a
 * namespace that still holds some is deleted. Later migrations add their tables here.
 */
export const NAMESPACED_OBJECTS: readonly { table: string; kind: string }[] = [
  { table: "images", kind: "images" },
  { table: "content", kind: "blobs" },
  { table: "snapshots", kind: "snapshots" },
  { table: "containers", kind: "containers" },
];
