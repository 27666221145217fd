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
  // 2: content records and ingests per namespace, leases and the resources they hold.
  `
  CREATE TABLE content (
    namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, digest)
  ) WITHOUT ROWID;
  CREATE INDEX content_by_digest ON content(digest);
  CREATE TABLE content_labels (
    namespace TEXT NOT NULL,
    digest TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, digest, key),
    FOREIGN KEY (namespace, digest) REFERENCES content(namespace, digest) ON DELETE CASCADE
  ) WITHOUT ROWID;
  CREATE TABLE ingests (
    namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
    ref TEXT NOT NULL,
    backend_ref TEXT NOT NULL UNIQUE,
    total INTEGER NOT NULL DEFAULT 0,
    expected TEXT NOT NULL DEFAULT '',
    shared INTEGER NOT NULL DEFAULT 0,
    expire_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, ref)
  ) WITHOUT ROWID;
  CREATE TABLE leases (
    namespace TEXT NOT NULL REFERENCES namespaces(name) ON DELETE CASCADE,
    id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
  ) WITHOUT ROWID;
  CREATE TABLE lease_labels (
    namespace TEXT NOT NULL,
    lease TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, key),
    FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
  ) WITHOUT ROWID;
  CREATE TABLE lease_resources (
    namespace TEXT NOT NULL,
    lease TEXT NOT NULL,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    PRIMARY KEY (namespace, lease, type, id),
    FOREIGN KEY (namespace, lease) REFERENCES leases(namespace, id) ON DELETE CASCADE
  ) WITHOUT ROWID;
  `,
  // 3: containers and images.
  `
  CREATE TABLE containers (
    namespace TEXT NOT NULL REFERENCES namespaces(name),
    id TEXT NOT NULL,
    image TEXT NOT NULL,
    runtime_name TEXT NOT NULL,
    runtime_options_type TEXT,
    runtime_options BLOB,
    spec_type TEXT,
    spec BLOB,
    snapshotter TEXT NOT NULL,
    snapshot_key TEXT NOT NULL,
    labels TEXT NOT NULL,
    extensions TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
  ) WITHOUT ROWID;
  CREATE TABLE images (
    namespace TEXT NOT NULL REFERENCES namespaces(name),
    name TEXT NOT NULL,
    labels TEXT NOT NULL,
    media_type TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    annotations TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, name)
  ) WITHOUT ROWID;
  `,
  // 4: snapshots per namespace and snapshotter, mapped to backend keys; their labels; the
  // sequence that makes backend keys unique (kept when a namespace goes, so a recreated
  // namespace never reuses the backend key of a snapshot the collector has not removed yet).
  `
  CREATE TABLE snapshots (
    namespace TEXT NOT NULL REFERENCES namespaces(name),
    snapshotter TEXT NOT NULL,
    key TEXT NOT NULL,
    backend_key TEXT NOT NULL,
    parent TEXT NOT NULL DEFAULT '',
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (namespace, snapshotter, key)
  ) WITHOUT ROWID;
  CREATE INDEX snapshots_by_parent ON snapshots(namespace, snapshotter, parent);
  CREATE INDEX snapshots_by_backend_key ON snapshots(snapshotter, backend_key);
  CREATE TABLE snapshot_labels (
    namespace TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, snapshotter, snapshot, key),
    FOREIGN KEY (namespace, snapshotter, snapshot)
      REFERENCES snapshots(namespace, snapshotter, key) ON DELETE CASCADE
  ) WITHOUT ROWID;
  CREATE INDEX snapshot_labels_by_key ON snapshot_labels(key);
  CREATE TABLE snapshot_sequences (
    namespace TEXT NOT NULL,
    snapshotter TEXT NOT NULL,
    next INTEGER NOT NULL,
    PRIMARY KEY (namespace, snapshotter)
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
