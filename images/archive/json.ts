/**
 * JSON forms of descriptors and platforms with the field order Go's `encoding/json` gives
 * the OCI structs, so that documents tainerd writes match containerd's byte for byte.
 *
 * @module
 */

import type { Descriptor } from "../image.ts";

/** A platform in Go's field order (architecture, os, os.version, os.features, variant). */
export function platformJson(p: NonNullable<Descriptor["platform"]>): Record<string, unknown> {
  const out: Record<string, unknown> = { architecture: p.architecture, os: p.os };
  if (p["os.version"]) out["os.version"] = p["os.version"];
  if (p["os.features"]?.length) out["os.features"] = p["os.features"];
  if (p.variant) out.variant = p.variant;
  return out;
}

/** A descriptor in Go's field order, empty fields omitted. */
export function descriptorJson(d: Descriptor): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  if (d.mediaType) out.mediaType = d.mediaType;
  out.digest = d.digest;
  out.size = d.size;
  if (d.urls?.length) out.urls = d.urls;
  if (d.annotations && Object.keys(d.annotations).length > 0) out.annotations = d.annotations;
  if (d.platform) out.platform = platformJson(d.platform);
  return out;
}
