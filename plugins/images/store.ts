/**
 * The image store over the metadata database, with containerd's semantics: an image is a
 * name, labels and a target descriptor; updates follow field masks (`labels`, `labels.<k>`,
 * `target`, `annotations`, `annotations.<k>`).
 *
 * @module
 */

import { alreadyExists, invalidArgument, notFound } from "../errdefs.ts";
import { validateLabels } from "../identifiers.ts";
import { type MetadataDB, nowMs } from "../metadata/db.ts";
import { type GarbageCollector, GcResource, labelReferences } from "../metadata/gc.ts";
import type { NamespaceStore } from "../namespaces/store.ts";
import { validateDigest } from "../content/digest.ts";

/** An OCI descriptor. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations: Record<string, string>;
}

/** An image record. */
export interface Image {
  name: string;
  labels: Record<string, string>;
  target: Descriptor;
  createdAt: Date;
  updatedAt: Date;
}

interface Row {
  name: string;
  labels: string;
  media_type: string;
  digest: string;
  size: number;
  annotations: string;
  created_at: number;
  updated_at: number;
}

function fromRow(r: Row): Image {
  return {
    name: r.name,
    labels: JSON.parse(r.labels),
    target: {
      mediaType: r.media_type,
      digest: r.digest,
      size: Number(r.size),
      annotations: JSON.parse(r.annotations),
    },
    createdAt: new Date(Number(r.created_at)),
    updatedAt: new Date(Number(r.updated_at)),
  };
}

function validate(img: Image): void {
  if (!img.name) throw invalidArgument("The image name must not be empty");
  validateLabels(img.labels);
  try {
    validateDigest(img.target.digest);
  } catch (err) {
    throw invalidArgument(
      `Image "${img.name}": target digest ${JSON.stringify(img.target.digest)} is invalid: ${
        (err as Error).message
      }`,
    );
  }
  if (!(img.target.size > 0)) {
    throw invalidArgument(`Image "${img.name}": target size must be greater than zero`);
  }
  if (!img.target.mediaType) {
    throw invalidArgument(`Image "${img.name}": target media type must be set`);
  }
}

/** Images, per namespace. */
export class ImageStore {
  readonly #db: MetadataDB;
  readonly #namespaces: NamespaceStore;
  #gc?: GarbageCollector;

  constructor(db: MetadataDB, namespaces: NamespaceStore) {
    this.#db = db;
    this.#namespaces = namespaces;
  }

  /**
   * Registers the `image` resource type with the collector, as containerd's GC: every image
   * is a root that holds its target content and what its `containerd.io/gc.ref.*` labels
   * name (the content's own labels carry the rest: children, config, snapshot chains).
   * Changes are reported to the collector from then on.
   */
  registerGc(gc: GarbageCollector): void {
    this.#gc = gc;
    gc.registerResourceType({
      type: GcResource.Image,
      roots: (emit) => {
        for (
          const r of this.#db.all<{ namespace: string; digest: string; labels: string }>(
            "SELECT namespace, digest, labels FROM images",
          )
        ) {
          emit({ type: GcResource.Content, namespace: r.namespace, key: r.digest });
          labelReferences(r.namespace, JSON.parse(r.labels), emit);
        }
      },
    });
  }

  #row(ns: string, name: string): Row | undefined {
    return this.#db.get<Row>("SELECT * FROM images WHERE namespace = ? AND name = ?", ns, name);
  }

  #write(ns: string, img: Image, insert: boolean): void {
    const params = [
      JSON.stringify(img.labels),
      img.target.mediaType,
      img.target.digest,
      img.target.size,
      JSON.stringify(img.target.annotations),
      img.createdAt.getTime(),
      img.updatedAt.getTime(),
      ns,
      img.name,
    ];
    this.#db.run(
      insert
        ? `INSERT INTO images(labels, media_type, digest, size, annotations, created_at,
            updated_at, namespace, name) VALUES (?,?,?,?,?,?,?,?,?)`
        : `UPDATE images SET labels=?, media_type=?, digest=?, size=?, annotations=?,
            created_at=?, updated_at=? WHERE namespace=? AND name=?`,
      ...params,
    );
  }

  /** The image; NotFound if absent. */
  get(ns: string, name: string): Image {
    const r = this.#row(ns, name);
    if (!r) throw notFound(`Image "${name}" in namespace "${ns}" not found`);
    return fromRow(r);
  }

  /** All images of a namespace, by name. */
  list(ns: string): Image[] {
    return this.#db.all<Row>("SELECT * FROM images WHERE namespace = ? ORDER BY name", ns).map(
      fromRow,
    );
  }

  /** Every (namespace, image): GC roots. */
  all(): { namespace: string; image: Image }[] {
    return this.#db.all<Row & { namespace: string }>("SELECT * FROM images").map((r) => ({
      namespace: r.namespace,
      image: fromRow(r),
    }));
  }

  /** Creates an image; AlreadyExists if the name is taken. */
  create(ns: string, img: Omit<Image, "createdAt" | "updatedAt">): Image {
    const now = new Date(nowMs());
    const full: Image = { ...img, createdAt: now, updatedAt: now };
    validate(full);
    this.#db.transaction(() => {
      this.#namespaces.ensure(ns);
      if (this.#row(ns, img.name)) {
        throw alreadyExists(`Image "${img.name}" already exists in namespace "${ns}"`);
      }
      this.#write(ns, full, true);
    });
    this.#gc?.mutated();
    return full;
  }

  /** Updates by field mask; with no paths the image is replaced (created time kept). */
  update(ns: string, img: Image, paths: readonly string[]): Image {
    if (!img.name) throw invalidArgument("An image name is required to update an image");
    const result = this.#db.transaction(() => {
      const r = this.#row(ns, img.name);
      if (!r) throw notFound(`Image "${img.name}" in namespace "${ns}" not found`);
      const cur = fromRow(r);
      let updated: Image;
      if (paths.length === 0) {
        updated = { ...img, labels: { ...img.labels } };
      } else {
        updated = cur;
        for (const path of paths) {
          if (path.startsWith("labels.")) {
            const k = path.slice(7);
            const v = img.labels[k];
            if (v === undefined || v === "") delete updated.labels[k];
            else updated.labels[k] = v;
          } else if (path.startsWith("annotations.")) {
            const k = path.slice(12);
            const v = img.target.annotations[k];
            if (v === undefined || v === "") delete updated.target.annotations[k];
            else updated.target.annotations[k] = v;
          } else if (path === "labels") {
            updated.labels = { ...img.labels };
          } else if (path === "target") {
            updated.target = { ...img.target };
          } else if (path === "annotations") {
            updated.target.annotations = { ...img.target.annotations };
          } else {
            throw invalidArgument(`Cannot update field "${path}" of image "${img.name}"`);
          }
        }
      }
      validate(updated);
      updated.createdAt = cur.createdAt;
      updated.updatedAt = new Date(nowMs());
      this.#write(ns, updated, false);
      return updated;
    });
    // The old target (or labelled references) may now be unreferenced.
    this.#gc?.mutated(true);
    return result;
  }

  /** Deletes an image; NotFound if absent. */
  delete(ns: string, name: string): void {
    const n = this.#db.run("DELETE FROM images WHERE namespace = ? AND name = ?", ns, name);
    if (n === 0) throw notFound(`Image "${name}" in namespace "${ns}" not found`);
    this.#gc?.mutated(true);
  }
}
