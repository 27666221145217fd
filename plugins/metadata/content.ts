/**
 * The namespaced content store, as containerd's `metadata/content.go`: one shared
 * {@link LocalStore} of blobs, seen per namespace through records in the metadata database.
 *
 * - A blob is visible in a namespace only once committed there. Committing a blob the shared
 *   store already holds (another namespace has it) is instant: the writer is opened with the
 *   expected digest and the blob is just recorded ("shared" content policy).
 * - Records carry the size, labels and timestamps; Update changes labels (field masks
 *   `labels` and `labels.<key>`). Delete removes the record; the blob goes at the next
 *   garbage collection once no namespace records it.
 * - Ingests are namespaced: each `(namespace, ref)` maps to a backend ref
 *   `<namespace>/<random>/<ref>` (hashed again by the local store), so namespaces may use the
 *   same ref. An ingest outside a lease expires 24 hours after it was last opened.
 * - With a lease (`containerd-lease`), new ingests and committed content are added to it.
 *
 * The store registers the `content` and `ingest` resource types with the collector
 * ({@link GarbageCollector}): content labelled `containerd.io/gc.root` and unexpired unleased
 * ingests are roots; content follows its `containerd.io/gc.ref.content*` and
 * `containerd.io/gc.ref.snapshot.*` labels; the backend cleanup removes blobs no namespace
 * records and backend ingests no namespace knows.
 *
 * @module
 */

import {
  alreadyExists,
  failedPrecondition,
  invalidArgument,
  isAlreadyExists,
  isNotFound,
  notFound,
  TainerdError,
} from "../errdefs.ts";
import { objectAdaptor, parseAll } from "../filters/mod.ts";
import { validateIdentifier, validateLabels } from "../identifiers.ts";
import { parseDigest } from "../content/digest.ts";
import type {
  ContentWriter,
  LocalStore,
  ReaderAt,
  ReadOptions,
  Status,
} from "../content/local_store.ts";
import type { Logger } from "../../log.ts";
import { type MetadataDB, nowMs } from "./db.ts";
import { RwLock } from "./rwlock.ts";
import { type GarbageCollector, GcLabels, type GcNode, GcResource, labelReferences } from "./gc.ts";
import type { LeaseManager, Scope } from "./leases.ts";

/** What a namespace knows about a committed blob. */
export interface ContentInfo {
  digest: string;
  size: number;
  createdAt: Date;
  updatedAt: Date;
  labels: Record<string, string>;
}

/** The state of an ingest, with the ref the namespace knows it by. */
export type IngestStatus = Status;

/** Options of {@link MetadataContentStore.writer}. */
export interface ContentWriterOptions {
  /** Expected size in bytes, 0 when unknown. */
  total?: number;
  /** Expected digest, "" when unknown. AlreadyExists when the namespace has the blob. */
  expected?: string;
}

/** Options of {@link NamespacedWriter.commit}. */
export interface ContentCommitOptions {
  /** Labels of the new content record. */
  labels?: Record<string, string>;
}

/** How long an ingest outside a lease lives after it was last opened (as containerd). */
export const INGEST_EXPIRY_MS = 24 * 60 * 60 * 1000;

/** Dependencies of the {@link MetadataContentStore}. */
export interface MetadataContentStoreOptions {
  /** The collector to register with and to tell of changes. */
  gc: GarbageCollector;
  /** The lease manager, to add new objects to the call's lease. */
  leases: LeaseManager;
  /** Creates a namespace on first use (the namespace store's `ensure`). */
  ensureNamespace?: (namespace: string) => void;
  /** Publishes `/content/delete` for a digest removed from a namespace. */
  publishDelete?: (namespace: string, digest: string) => void;
  log?: Logger;
}

interface IngestRow {
  namespace: string;
  ref: string;
  backend_ref: string;
  total: number;
  expected: string;
  shared: number;
  expire_at: number | null;
}

interface ContentRow {
  digest: string;
  size: number;
  created_at: number;
  updated_at: number;
}

function quote(value: string): string {
  const shown = value.length > 160 ? `${value.slice(0, 160)}…` : value;
  return JSON.stringify(shown);
}

function checkDigest(digest: string, context: string): void {
  try {
    parseDigest(digest);
  } catch (err) {
    throw invalidArgument(`${context}: ${(err as Error).message}`, { cause: err });
  }
}

function checkRef(ref: string, context: string): void {
  if (typeof ref !== "string" || ref === "") {
    throw invalidArgument(`${context}: the ref must not be empty`);
  }
}

function checkSize(value: number, what: string, context: string): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw invalidArgument(`${context}: ${what} must be a non-negative integer, got ${value}`);
  }
}

function nonEmpty(labels: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels ?? {})) if (v !== "") out[k] = v;
  return out;
}

/**
 * Rewrites a backend error so it names the namespace's ref, not the backend ref
 * (`<namespace>/<tag>/<ref>`) the local store knows the ingest by.
 */
export function renameRef(
  err: unknown,
  backendRef: string,
  ref: string,
  namespace: string,
): unknown {
  if (!(err instanceof TainerdError)) return err;
  const from = quote(backendRef);
  if (!err.message.includes(from)) return err;
  const to = `${quote(ref)} in namespace ${quote(namespace)}`;
  return new TainerdError(err.kind, err.message.replaceAll(from, to), { cause: err });
}

async function renamed<T>(
  op: () => Promise<T>,
  backendRef: string,
  ref: string,
  namespace: string,
): Promise<T> {
  try {
    return await op();
  } catch (err) {
    throw renameRef(err, backendRef, ref, namespace);
  }
}

function randomTag(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Content per namespace over one shared local store. */
export class MetadataContentStore {
  /** The shared blob store. */
  readonly backend: LocalStore;
  readonly #db: MetadataDB;
  readonly #gc: GarbageCollector;
  readonly #leases: LeaseManager;
  readonly #ensureNamespace: (namespace: string) => void;
  readonly #publishDelete: (namespace: string, digest: string) => void;
  readonly #log?: Logger;
  readonly #lock = new RwLock();

  /** Creates the store and registers the `content` and `ingest` resource types. */
  constructor(db: MetadataDB, backend: LocalStore, opts: MetadataContentStoreOptions) {
    this.#db = db;
    this.backend = backend;
    this.#gc = opts.gc;
    this.#leases = opts.leases;
    this.#ensureNamespace = opts.ensureNamespace ?? (() => {});
    this.#publishDelete = opts.publishDelete ?? (() => {});
    this.#log = opts.log;
    this.#registerGc();
  }

  #registerGc(): void {
    const db = this.#db;
    this.#gc.registerResourceType({
      type: GcResource.Content,
      roots: (emit) => {
        for (
          const r of db.all<{ namespace: string; digest: string }>(
            "SELECT namespace, digest FROM content_labels WHERE key = ?",
            GcLabels.Root,
          )
        ) emit({ type: GcResource.Content, namespace: r.namespace, key: r.digest });
      },
      references: (node, emit) => {
        if (node.flat) return;
        labelReferences(node.namespace, this.#labels(node.namespace, node.key), emit);
      },
      scan: (emit) => {
        for (
          const r of db.all<{ namespace: string; digest: string }>(
            "SELECT namespace, digest FROM content",
          )
        ) emit({ type: GcResource.Content, namespace: r.namespace, key: r.digest });
      },
      remove: (node) => {
        db.run(
          "DELETE FROM content WHERE namespace = ? AND digest = ?",
          node.namespace,
          node.key,
        );
      },
      cleanup: (removed) => this.#cleanup(removed),
    });
    this.#gc.registerResourceType({
      type: GcResource.Ingest,
      roots: (emit) => {
        for (
          const r of db.all<{ namespace: string; ref: string }>(
            "SELECT namespace, ref FROM ingests WHERE expire_at IS NOT NULL AND expire_at > ?",
            Date.now(),
          )
        ) emit({ type: GcResource.Ingest, namespace: r.namespace, key: r.ref });
      },
      references: (node, emit) => {
        const row = db.get<{ expected: string }>(
          "SELECT expected FROM ingests WHERE namespace = ? AND ref = ? AND shared = 1",
          node.namespace,
          node.key,
        );
        if (row && row.expected !== "") {
          emit({ type: GcResource.Content, namespace: node.namespace, key: row.expected });
        }
      },
      scan: (emit) => {
        for (
          const r of db.all<{ namespace: string; ref: string }>(
            "SELECT namespace, ref FROM ingests",
          )
        ) emit({ type: GcResource.Ingest, namespace: r.namespace, key: r.ref });
      },
      remove: (node) => {
        db.run("DELETE FROM ingests WHERE namespace = ? AND ref = ?", node.namespace, node.key);
        // The backend ingest is now unknown to every namespace: the content cleanup aborts it.
        this.#gc.markDirty(GcResource.Content);
      },
    });
  }

  /**
   * The backend side of a collection: publishes `/content/delete` for removed records, then,
   * holding the store's lock alone, deletes blobs no namespace records (nor a shared ingest
   * expects) and aborts backend ingests no namespace knows.
   */
  async #cleanup(removed: readonly GcNode[]): Promise<void> {
    for (const node of removed) {
      try {
        this.#publishDelete(node.namespace, node.key);
      } catch (err) {
        this.#log?.warn("cannot publish a content delete event", { error: String(err) });
      }
    }
    await this.#lock.write(async () => {
      const seen = new Set<string>();
      for (const r of this.#db.all<{ digest: string }>("SELECT DISTINCT digest FROM content")) {
        seen.add(r.digest);
      }
      const ingests = new Set<string>();
      for (
        const r of this.#db.all<{ backend_ref: string; expected: string; shared: number }>(
          "SELECT backend_ref, expected, shared FROM ingests",
        )
      ) {
        ingests.add(r.backend_ref);
        if (r.shared && r.expected !== "") seen.add(r.expected);
      }
      const doomed: string[] = [];
      await this.backend.walk((info) => {
        if (!seen.has(info.digest)) doomed.push(info.digest);
      });
      for (const digest of doomed) {
        try {
          await this.backend.delete(digest);
          this.#log?.debug("removed content", { digest });
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
      for (const status of await this.backend.listStatuses()) {
        if (ingests.has(status.ref) || this.backend.isLocked(status.ref)) continue;
        try {
          await this.backend.abort(status.ref);
          this.#log?.debug("cleanup aborting ingest", { ref: status.ref });
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
    });
  }

  #labels(namespace: string, digest: string): Record<string, string> {
    const out: Record<string, string> = {};
    for (
      const r of this.#db.all<{ key: string; value: string }>(
        "SELECT key, value FROM content_labels WHERE namespace = ? AND digest = ? ORDER BY key",
        namespace,
        digest,
      )
    ) out[r.key] = r.value;
    return out;
  }

  #row(namespace: string, digest: string): ContentRow | undefined {
    return this.#db.get<ContentRow>(
      "SELECT digest, size, created_at, updated_at FROM content WHERE namespace = ? AND digest = ?",
      namespace,
      digest,
    );
  }

  #toInfo(namespace: string, row: ContentRow, labels?: Record<string, string>): ContentInfo {
    return {
      digest: row.digest,
      size: row.size,
      createdAt: new Date(row.created_at),
      updatedAt: new Date(row.updated_at),
      labels: labels ?? this.#labels(namespace, row.digest),
    };
  }

  #setLabels(namespace: string, digest: string, labels: Record<string, string>): void {
    this.#db.run(
      "DELETE FROM content_labels WHERE namespace = ? AND digest = ?",
      namespace,
      digest,
    );
    for (const [k, v] of Object.entries(labels)) {
      this.#db.run(
        "INSERT INTO content_labels(namespace, digest, key, value) VALUES (?, ?, ?, ?)",
        namespace,
        digest,
        k,
        v,
      );
    }
  }

  #ingest(namespace: string, ref: string): IngestRow | undefined {
    return this.#db.get<IngestRow>(
      "SELECT namespace, ref, backend_ref, total, expected, shared, expire_at FROM ingests " +
        "WHERE namespace = ? AND ref = ?",
      namespace,
      ref,
    );
  }

  /** Whether the namespace has the blob. */
  has(namespace: string, digest: string): boolean {
    return this.#row(namespace, digest) !== undefined;
  }

  /** The namespace's record of a blob; NotFound when the namespace does not have it. */
  info(namespace: string, digest: string): ContentInfo {
    const context = `Cannot get content ${quote(digest)} in namespace ${quote(namespace)}`;
    validateIdentifier(namespace, "namespace");
    checkDigest(digest, context);
    const row = this.#row(namespace, digest);
    if (!row) throw notFound(`${context}: not found`);
    return this.#toInfo(namespace, row);
  }

  /**
   * Changes a blob's labels, as containerd: with no paths the labels are replaced; `labels`
   * replaces them all, `labels.<key>` sets one key (an empty or missing value removes it).
   * Any other path is InvalidArgument.
   */
  update(
    namespace: string,
    info: { digest: string; labels?: Record<string, string> },
    paths: readonly string[] = [],
  ): ContentInfo {
    const context = `Cannot update content ${quote(info.digest)} in namespace ${quote(namespace)}`;
    validateIdentifier(namespace, "namespace");
    checkDigest(info.digest, context);
    const given = info.labels ?? {};
    const updated = this.#db.transaction(() => {
      const row = this.#row(namespace, info.digest);
      if (!row) throw notFound(`${context}: not found`);
      let labels = this.#labels(namespace, info.digest);
      if (paths.length === 0) {
        labels = { ...given };
      } else {
        for (const path of paths) {
          if (path === "labels") {
            labels = { ...given };
          } else if (path.startsWith("labels.")) {
            const key = path.slice("labels.".length);
            labels[key] = given[key] ?? "";
          } else {
            throw invalidArgument(`${context}: cannot update field ${quote(path)}`);
          }
        }
      }
      labels = nonEmpty(labels);
      validateLabels(labels);
      const now = nowMs();
      this.#setLabels(namespace, info.digest, labels);
      this.#db.run(
        "UPDATE content SET updated_at = ? WHERE namespace = ? AND digest = ?",
        now,
        namespace,
        info.digest,
      );
      return this.#toInfo(namespace, { ...row, updated_at: now }, labels);
    });
    this.#gc.mutated();
    return updated;
  }

  /**
   * The namespace's blobs matching any of `filters` (fields `digest` and `labels.<key>`, as
   * containerd's content adaptor), by digest.
   */
  list(namespace: string, filters: readonly string[] = []): ContentInfo[] {
    validateIdentifier(namespace, "namespace");
    const filter = parseAll(filters);
    const labels = new Map<string, Record<string, string>>();
    for (
      const r of this.#db.all<{ digest: string; key: string; value: string }>(
        "SELECT digest, key, value FROM content_labels WHERE namespace = ? ORDER BY digest, key",
        namespace,
      )
    ) {
      let m = labels.get(r.digest);
      if (!m) labels.set(r.digest, m = {});
      m[r.key] = r.value;
    }
    const out: ContentInfo[] = [];
    for (
      const row of this.#db.all<ContentRow>(
        "SELECT digest, size, created_at, updated_at FROM content WHERE namespace = ? " +
          "ORDER BY digest",
        namespace,
      )
    ) {
      const info = this.#toInfo(namespace, row, labels.get(row.digest) ?? {});
      if (filter.match(objectAdaptor({ fields: { digest: info.digest }, labels: info.labels }))) {
        out.push(info);
      }
    }
    return out;
  }

  /**
   * Removes the blob from the namespace (and from the call's lease); NotFound when the
   * namespace does not have it. The blob itself goes at the next collection if no other
   * namespace has it.
   */
  delete(scope: Scope, digest: string): void {
    const { namespace, lease } = scope;
    const context = `Cannot delete content ${quote(digest)} in namespace ${quote(namespace)}`;
    validateIdentifier(namespace, "namespace");
    checkDigest(digest, context);
    this.#db.transaction(() => {
      if (!this.#row(namespace, digest)) throw notFound(`${context}: not found`);
      this.#db.run("DELETE FROM content WHERE namespace = ? AND digest = ?", namespace, digest);
      if (lease) this.#leases.removeFromLease(namespace, lease, "content", digest);
    });
    this.#gc.markDirty(GcResource.Content);
    this.#gc.mutated(true);
    try {
      this.#publishDelete(namespace, digest);
    } catch (err) {
      this.#log?.warn("cannot publish a content delete event", { error: String(err) });
    }
  }

  /** Random access to a blob of the namespace; NotFound when the namespace does not have it. */
  async readerAt(namespace: string, digest: string): Promise<ReaderAt> {
    this.#checkAccess(namespace, digest, "read");
    return await this.backend.readerAt(digest);
  }

  /**
   * A byte range of a blob of the namespace, streamed in 1 MiB chunks; NotFound when the
   * namespace does not have it, OutOfRange when `offset` is past its end.
   */
  async read(
    namespace: string,
    digest: string,
    options: ReadOptions = {},
  ): Promise<ReadableStream<Uint8Array>> {
    this.#checkAccess(namespace, digest, "read");
    return await this.backend.read(digest, options);
  }

  /** A small byte range at once, or null when larger than `limit` (see LocalStore). */
  readSmallSync(
    namespace: string,
    digest: string,
    options: ReadOptions,
    limit: number,
  ): Uint8Array | null {
    this.#checkAccess(namespace, digest, "read");
    return this.backend.readSmallSync(digest, options, limit);
  }

  #checkAccess(namespace: string, digest: string, action: string): void {
    const context = `Cannot ${action} content ${quote(digest)} in namespace ${quote(namespace)}`;
    validateIdentifier(namespace, "namespace");
    checkDigest(digest, context);
    if (!this.#row(namespace, digest)) throw notFound(`${context}: not found`);
  }

  async #backendStatus(row: IngestRow): Promise<IngestStatus> {
    const st = await renamed(
      () => this.backend.status(row.backend_ref),
      row.backend_ref,
      row.ref,
      row.namespace,
    );
    return {
      ...st,
      ref: row.ref,
      total: st.total || row.total,
      expected: st.expected || row.expected,
    };
  }

  /** The state of the namespace's ingest `ref`; NotFound when there is none. */
  async status(namespace: string, ref: string): Promise<IngestStatus> {
    const context = `Cannot get status of ingest ${quote(ref)} in namespace ${quote(namespace)}`;
    validateIdentifier(namespace, "namespace");
    checkRef(ref, context);
    const row = this.#ingest(namespace, ref);
    if (!row) throw notFound(`${context}: not found`);
    try {
      return await this.#backendStatus(row);
    } catch (err) {
      if (isNotFound(err)) throw notFound(`${context}: not found`, { cause: err });
      throw err;
    }
  }

  /** The namespace's ingests matching any of `filters` (field `ref`), by ref. */
  async listStatuses(namespace: string, filters: readonly string[] = []): Promise<IngestStatus[]> {
    validateIdentifier(namespace, "namespace");
    const filter = parseAll(filters);
    const rows = this.#db.all<IngestRow>(
      "SELECT namespace, ref, backend_ref, total, expected, shared, expire_at FROM ingests " +
        "WHERE namespace = ? ORDER BY ref",
      namespace,
    );
    const out: IngestStatus[] = [];
    for (const row of rows) {
      let st: IngestStatus;
      try {
        st = await this.#backendStatus(row);
      } catch (err) {
        if (isNotFound(err)) continue;
        throw err;
      }
      if (filter.match(objectAdaptor({ fields: { ref: st.ref }, emptyIsPresent: true }))) {
        out.push(st);
      }
    }
    return out;
  }

  /** Drops the namespace's ingest `ref` and its data; NotFound when there is none. */
  async abort(scope: Scope, ref: string): Promise<void> {
    const { namespace, lease } = scope;
    const context = `Cannot abort ingest ${quote(ref)} in namespace ${quote(namespace)}`;
    validateIdentifier(namespace, "namespace");
    checkRef(ref, context);
    const row = this.#db.transaction(() => {
      const row = this.#ingest(namespace, ref);
      if (!row) throw notFound(`${context}: not found`);
      this.#db.run("DELETE FROM ingests WHERE namespace = ? AND ref = ?", namespace, ref);
      if (lease) this.#leases.removeFromLease(namespace, lease, "ingests", ref);
      return row;
    });
    this.#gc.mutated();
    try {
      await this.backend.abort(row.backend_ref);
    } catch (err) {
      // Nothing was written yet (a shared ingest); or the collector will get it.
      if (!isNotFound(err)) {
        this.#log?.warn("cannot abort a backend ingest", { ref, error: String(err) });
      }
    }
  }

  /**
   * Opens (or resumes) the namespace's ingest `ref`. AlreadyExists when `expected` names a
   * blob the namespace has (the blob is then added to the call's lease). When the shared
   * store already has the expected blob, nothing needs writing: the writer's status shows the
   * whole size written and a commit just records it. Unavailable while another writer holds
   * the ref.
   */
  async writer(
    scope: Scope,
    ref: string,
    opts: ContentWriterOptions = {},
  ): Promise<NamespacedWriter> {
    const { namespace, lease } = scope;
    const context = `Cannot open a writer for ref ${quote(ref)} in namespace ${quote(namespace)}`;
    validateIdentifier(namespace, "namespace");
    checkRef(ref, context);
    let total = opts.total ?? 0;
    checkSize(total, "the total", context);
    const expected = opts.expected ?? "";
    if (expected !== "") checkDigest(expected, context);

    return await this.#lock.read(async () => {
      if (expected !== "" && this.#row(namespace, expected)) {
        this.#db.transaction(() => {
          if (lease) this.#leases.addToLease(namespace, lease, "content", expected);
        });
        throw alreadyExists(`${context}: content ${expected} already exists`);
      }
      let shared = false;
      if (expected !== "") {
        try {
          const info = await this.backend.info(expected);
          if (total === 0 || total === info.size) {
            shared = true;
            total = info.size;
          }
        } catch (err) {
          if (!isNotFound(err)) throw err;
        }
      }
      const now = nowMs();
      const row = this.#db.transaction(() => {
        if (expected !== "" && this.#row(namespace, expected)) {
          if (lease) this.#leases.addToLease(namespace, lease, "content", expected);
          return undefined;
        }
        // The lease first: when it is missing, nothing (not even the namespace) is created.
        if (lease) this.#leases.addToLease(namespace, lease, "ingests", ref);
        this.#ensureNamespace(namespace);
        const existing = this.#ingest(namespace, ref);
        const expireAt = lease ? null : now + INGEST_EXPIRY_MS;
        if (existing) {
          this.#db.run(
            "UPDATE ingests SET total = ?, expected = ?, shared = ?, expire_at = ?, " +
              "updated_at = ? WHERE namespace = ? AND ref = ?",
            total || existing.total,
            expected || existing.expected,
            shared ? 1 : 0,
            expireAt,
            now,
            namespace,
            ref,
          );
          return { ...existing, shared: shared ? 1 : 0 };
        }
        const backendRef = `${namespace}/${randomTag()}/${ref}`;
        this.#db.run(
          "INSERT INTO ingests(namespace, ref, backend_ref, total, expected, shared, expire_at, " +
            "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
          namespace,
          ref,
          backendRef,
          total,
          expected,
          shared ? 1 : 0,
          expireAt,
          now,
          now,
        );
        return this.#ingest(namespace, ref)!;
      });
      if (!row) throw alreadyExists(`${context}: content ${expected} already exists`);
      this.#gc.mutated();
      let backend: ContentWriter | null = null;
      if (!shared) {
        // The expected digest is checked at commit, not here: the shared store may gain the
        // blob meanwhile, which must not make this namespace's write fail.
        backend = await renamed(
          () => this.backend.writer(row.backend_ref, { total }),
          row.backend_ref,
          ref,
          namespace,
        );
      }
      return new NamespacedWriter(this, {
        scope: { namespace, lease },
        ref,
        backendRef: row.backend_ref,
        writer: backend,
        total,
        expected,
        started: new Date(now),
      });
    });
  }

  /** Opens a backend writer on a shared ingest and copies `size` bytes of the shared blob. */
  async createAndCopy(
    backendRef: string,
    total: number,
    source: string,
    size: number,
  ): Promise<ContentWriter> {
    const w = await this.backend.writer(backendRef, { total });
    try {
      if (w.status().offset !== 0) await w.truncate(0);
      if (size > 0) {
        const stream = await this.backend.read(source, { offset: 0, size });
        for await (const chunk of stream) await w.write(chunk);
      }
    } catch (err) {
      await w.close();
      throw err;
    }
    return w;
  }

  /** Commits a writer: the backend commit, then the record, in one transaction. */
  async commitWriter(
    w: NamespacedWriter,
    backend: ContentWriter | null,
    size: number,
    expected: string,
    labels: Record<string, string>,
  ): Promise<string> {
    const { namespace, lease } = w.scope;
    const context = `Cannot commit ingest ${quote(w.ref)} in namespace ${quote(namespace)}`;
    checkSize(size, "the size", context);
    if (expected !== "") checkDigest(expected, context);
    const recorded = nonEmpty(labels);
    validateLabels(recorded);
    return await this.#lock.read(async () => {
      let actual: string;
      if (backend === null) {
        const desc = w.sharedDescriptor;
        if (size !== 0 && size !== desc.size) {
          throw failedPrecondition(`${context}: expected size ${size} but got ${desc.size}`);
        }
        if (expected !== "" && expected !== desc.digest) {
          throw failedPrecondition(
            `${context}: expected digest ${expected} but got ${desc.digest}`,
          );
        }
        size = desc.size;
        actual = desc.digest;
      } else {
        const offset = backend.status().offset;
        if (size !== 0 && size !== offset) {
          await backend.close();
          throw failedPrecondition(`${context}: expected size ${size} but got ${offset}`);
        }
        size = offset;
        try {
          actual = await backend.commit(size, expected);
        } catch (err) {
          if (!isAlreadyExists(err)) throw renameRef(err, backend.ref, w.ref, namespace);
          // The shared store had it: the data was verified against `expected` first.
          actual = expected !== "" ? expected : backend.digest();
        }
      }
      const existed = this.#db.transaction(() => {
        if (lease) {
          this.#leases.removeFromLease(namespace, lease, "ingests", w.ref);
          this.#leases.addToLease(namespace, lease, "content", actual);
        }
        this.#ensureNamespace(namespace);
        const existed = this.#row(namespace, actual) !== undefined;
        if (!existed) {
          const now = nowMs();
          this.#db.run(
            "INSERT INTO content(namespace, digest, size, created_at, updated_at) " +
              "VALUES (?, ?, ?, ?, ?)",
            namespace,
            actual,
            size,
            now,
            now,
          );
          this.#setLabels(namespace, actual, recorded);
        }
        this.#db.run("DELETE FROM ingests WHERE namespace = ? AND ref = ?", namespace, w.ref);
        return existed;
      });
      this.#gc.mutated();
      if (existed) {
        throw alreadyExists(`${context}: content ${actual} already exists`);
      }
      return actual;
    });
  }
}

/** What {@link NamespacedWriter} is built from. */
interface WriterInit {
  scope: Scope;
  ref: string;
  backendRef: string;
  writer: ContentWriter | null;
  total: number;
  expected: string;
  started: Date;
}

/**
 * A writer of one namespaced ingest. On a shared ingest (the shared store already has the
 * expected blob) there is no backend writer until data is written or the ingest truncated:
 * then the blob's bytes are copied into a fresh backend ingest first, as containerd does.
 * Operations run one after another in call order.
 */
export class NamespacedWriter {
  /** The ref in the namespace. */
  readonly ref: string;
  /** The namespace and lease the writer was opened in. */
  readonly scope: Scope;
  readonly #store: MetadataContentStore;
  readonly #backendRef: string;
  readonly #total: number;
  readonly #expected: string;
  readonly #started: Date;
  #w: ContentWriter | null;
  #finished = false;
  #queue: Promise<unknown> = Promise.resolve();

  /** Use {@link MetadataContentStore.writer}. */
  constructor(store: MetadataContentStore, init: WriterInit) {
    this.#store = store;
    this.scope = init.scope;
    this.ref = init.ref;
    this.#backendRef = init.backendRef;
    this.#w = init.writer;
    this.#total = init.total;
    this.#expected = init.expected;
    this.#started = init.started;
  }

  /** The blob a shared ingest stands for. */
  get sharedDescriptor(): { size: number; digest: string } {
    return { size: this.#total, digest: this.#expected };
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const op = () => renamed(fn, this.#backendRef, this.ref, this.scope.namespace);
    const result = this.#queue.then(op, op);
    this.#queue = result.catch(() => {});
    return result;
  }

  #check(action: string): void {
    if (this.#finished) {
      throw failedPrecondition(
        `Cannot ${action} ingest ${quote(this.ref)} in namespace ${
          quote(this.scope.namespace)
        }: the writer is finished`,
      );
    }
  }

  /** Appends `chunk` at the current offset; returns the bytes written. */
  write(chunk: Uint8Array): Promise<number> {
    return this.#serial(async () => {
      this.#check("write to");
      if (this.#w === null) {
        if (chunk.byteLength === 0) return 0;
        this.#w = await this.#store.createAndCopy(
          this.#backendRef,
          this.#total,
          this.#expected,
          this.#total,
        );
      }
      return await this.#w.write(chunk);
    });
  }

  /** The digest of the bytes written so far (or the expected one, on a shared ingest). */
  digest(): string {
    return this.#w !== null ? this.#w.digest() : this.#expected;
  }

  /** The ingest's state, with the namespace's ref. */
  status(): IngestStatus {
    if (this.#w !== null) {
      const st = this.#w.status();
      return {
        ...st,
        ref: this.ref,
        total: st.total || this.#total,
        expected: st.expected || this.#expected,
      };
    }
    return {
      ref: this.ref,
      offset: this.#total,
      total: this.#total,
      expected: this.#expected,
      startedAt: new Date(this.#started),
      updatedAt: new Date(this.#started),
    };
  }

  /** Cuts the ingest back to `size` bytes. */
  truncate(size: number): Promise<void> {
    return this.#serial(async () => {
      this.#check("truncate");
      if (this.#w !== null) {
        await this.#w.truncate(size);
        return;
      }
      if (size > this.#total) {
        throw invalidArgument(
          `Cannot truncate ingest ${quote(this.ref)} to ${size} bytes: it has ${this.#total}`,
        );
      }
      this.#w = await this.#store.createAndCopy(
        this.#backendRef,
        this.#total,
        this.#expected,
        size,
      );
    });
  }

  /**
   * Verifies and commits the ingest, recording the blob in the namespace with `labels`.
   * `size` and `expected` default to what the writer was opened with. Returns the digest.
   * AlreadyExists when the namespace had the blob already (the ingest is gone all the same).
   * The writer is finished afterwards.
   */
  commit(size = 0, expected = "", options: ContentCommitOptions = {}): Promise<string> {
    return this.#serial(async () => {
      this.#check("commit");
      this.#finished = true;
      return await this.#store.commitWriter(
        this,
        this.#w,
        size || this.#total,
        expected || this.#expected,
        options.labels ?? {},
      );
    });
  }

  /** Releases the ingest (it stays, to be resumed). */
  close(): Promise<void> {
    return this.#serial(async () => {
      this.#finished = true;
      await this.#w?.close();
    });
  }
}
