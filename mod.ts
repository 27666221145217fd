/**
 * tainerd's client library: a typed client of containerd's API as tainerd (or containerd)
 * serves it on a unix socket.
 *
 * ```ts
 * import { TainerdClient } from "./mod.ts";
 * const client = new TainerdClient({ address: "/run/tainerd/tainerd.sock", namespace: "default" });
 * const { version } = await client.version.version({});
 * client.close();
 * ```
 *
 * @module
 */

export { type ClientOptions, TainerdClient } from "./client/client.ts";
export { type ErrorKind, isKind, isNotFound, TainerdError } from "./plugins/errdefs.ts";
export { LEASE_HEADER, NAMESPACE_HEADER } from "./server/context.ts";
export { PACKAGE, revisionOf, VERSION } from "./version.ts";
export * from "./images/mod.ts";
export * from "./client/images.ts";
export {
  type ContentInfo,
  contentInfo,
  contentProvider,
  distributionSourceLabel,
  type LeaseOptions,
  openWriter,
  readBlob,
  setContentLabels,
  withLease,
  writeBlob,
} from "./client/images_content.ts";
export { parseReference, Reference } from "./images/reference/mod.ts";
export {
  defaultSpec,
  encodeSpec,
  type ImageConfig,
  type Spec,
  SPEC_TYPE_URL,
  type SpecMount,
  withCpus,
  withEnv,
  withHostname,
  withHostNetwork,
  withImageConfig,
  withMemoryLimit,
  withMounts,
  withPrivileged,
  withReadonlyRootfs,
  withTty,
  withUser,
} from "./oci/spec.ts";
