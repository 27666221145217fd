/**
 * Image references: parsing, validation and normalisation as docker and containerd do them.
 *
 * ```ts
 * import { parseReference } from "./images/reference/mod.ts";
 * parseReference("busybox").toString(); // "docker.io/library/busybox:latest"
 * ```
 *
 * @module
 */

export * from "./reference.ts";
