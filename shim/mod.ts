/**
 * The shim mode of tainerd (containerd's shim v2 contract, io.containerd.runc.v2 semantics):
 * the command line (`main.ts`), socket addresses and the bundle's `address` file
 * (`address.ts`), the Task service (`service.ts`) over containers (`container.ts`) and their
 * processes (`process.ts`), the runc driver (`runc.ts`), stdio (`io.ts`, `pty.ts`), the reaper
 * (`reaper.ts`), the event publisher (`publisher.ts`) and the task metrics: the container's
 * cgroups and their files' parsers (`cgroups.ts`), the statistics messages (`stats.ts`).
 *
 * @module
 */

export {
  ADDRESS_FILE,
  canConnect,
  DEFAULT_STATE_DIR,
  readAddress,
  removeSocket,
  SOCKET_DIR_ENV,
  SOCKET_PATH_LIMIT,
  socketAddress,
  socketDir,
  socketPath,
  STATE_DIR_ENV,
  stateDir,
  TTRPC_ADDRESS_ENV,
  writeAddress,
} from "./address.ts";
export { SHIM_BINARY_NAMES, shimArgs } from "./dispatch.ts";
export {
  deleteShim,
  parseShimFlags,
  runShim,
  selfCommand,
  serveShim,
  type ShimFlags,
  startShim,
} from "./main.ts";
export {
  EventPublisher,
  type PublisherOptions,
  Topics,
  TTRPC_NAMESPACE_HEADER,
} from "./publisher.ts";
export {
  decodeRuncOptions,
  readBundleOptions,
  type RuncOptions,
  writeBundleOptions,
} from "./container.ts";
export { Runc, type RuncConfig, RuncError } from "./runc.ts";
export { TaskService, type TaskServiceOptions } from "./service.ts";
