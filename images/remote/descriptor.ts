/**
 * Content descriptors, as OCI's `Descriptor`: what a blob is (media type), its digest and
 * size, and optional annotations, alternate URLs and platform.
 *
 * @module
 */

import { invalidArgument } from "../../plugins/errdefs.ts";
import { parseDigest } from "../../plugins/content/digest.ts";
import type { Platform } from "../../plugins/platforms.ts";

/** An OCI content descriptor. */
export interface Descriptor {
  mediaType: string;
  /** `sha256:…` */
  digest: string;
  /** Size in bytes. */
  size: number;
  annotations?: Record<string, string>;
  /** Alternate locations of the content (foreign layers). */
  urls?: string[];
  /** The platform of a manifest inside an index. */
  platform?: Platform & { "os.version"?: string; "os.features"?: string[] };
  artifactType?: string;
}

/**
 * Checks that a descriptor names a valid digest and a non-negative integer size.
 *
 * @throws {TainerdError} InvalidArgument otherwise.
 */
export function validateDescriptor(desc: Descriptor, context = "Invalid descriptor"): Descriptor {
  if (!desc || typeof desc !== "object") throw invalidArgument(`${context}: not an object`);
  try {
    parseDigest(desc.digest);
  } catch (err) {
    throw invalidArgument(`${context}: ${(err as Error).message}`);
  }
  if (!Number.isSafeInteger(desc.size) || desc.size < 0) {
    throw invalidArgument(`${context}: invalid size ${desc.size} for ${desc.digest}`);
  }
  return desc;
}
