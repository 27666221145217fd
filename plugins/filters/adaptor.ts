/**
 * Adaptors for the usual shapes of objects: plain string fields plus label maps, as
 * containerd's metadata adaptors (images, containers, leases, snapshots, content).
 *
 * @module
 */

import type { Adaptor, FieldValue } from "./filter.ts";

/** The value of a field the object does not have. */
export const absent: FieldValue = Object.freeze({ value: "", present: false });

/** The value of a field the object has. */
export function present(value: string): FieldValue {
  return { value, present: true };
}

/**
 * Look up a label (or any string map) by the field path after `labels`: the components are
 * joined with ".", so `labels.com.example.key` and `labels."com.example.key"` both name the
 * key `com.example.key`. An empty or missing map has no labels (as containerd's `checkMap`).
 */
export function adaptLabels(
  labels: Readonly<Record<string, string>> | undefined,
  path: readonly string[],
): FieldValue {
  if (labels === undefined) return absent;
  const key = path.join(".");
  return Object.hasOwn(labels, key) ? present(labels[key]) : absent;
}

/** The fields of an object, for {@link objectAdaptor}. */
export interface ObjectFields {
  /**
   * Plain fields by field path joined with "." (`name`, `id`, `target.digest`,
   * `runtime.name`…). `undefined` means absent; so does `""` unless `emptyIsPresent`.
   */
  readonly fields?: Readonly<Record<string, string | undefined>>;
  /** The object's labels, matched by `labels.<key>`. */
  readonly labels?: Readonly<Record<string, string>>;
  /** Other string maps matched like labels, by their first path component (`annotations`). */
  readonly maps?: Readonly<Record<string, Readonly<Record<string, string>> | undefined>>;
  /**
   * Whether an empty string field is present. containerd treats empty fields as absent for
   * images, containers and leases, and as present for snapshots (`name`, `parent`).
   */
  readonly emptyIsPresent?: boolean;
}

/**
 * An adaptor over plain fields and label maps: `labels.<key>` (and each of `maps`) look up
 * the map with the rest of the path joined by "."; any other path is looked up in `fields`
 * by its components joined by ".". Unknown paths are absent.
 */
export function objectAdaptor(object: ObjectFields): Adaptor {
  const { fields = {}, labels, maps = {}, emptyIsPresent = false } = object;
  return (fieldpath) => {
    if (fieldpath.length === 0) return absent;
    const [head, ...rest] = fieldpath;
    if (head === "labels") return adaptLabels(labels, rest);
    if (Object.hasOwn(maps, head)) return adaptLabels(maps[head], rest);
    const key = fieldpath.join(".");
    if (!Object.hasOwn(fields, key)) return absent;
    const value = fields[key];
    if (value === undefined || (value === "" && !emptyIsPresent)) return absent;
    return present(value);
  };
}
