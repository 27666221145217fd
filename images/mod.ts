/**
 * Images for users, over the API of any daemon (as containerd's client): pull, push, unpack,
 * import and export, with platform matching and the image model they share.
 *
 * ```ts
 * import { TainerdClient } from "../mod.ts";
 * import { pull } from "./mod.ts";
 * const client = new TainerdClient({ address: "/run/tainerd/tainerd.sock", namespace: "default" });
 * await pull(client, "docker.io/library/busybox:latest", { unpack: true });
 * client.close();
 * ```
 *
 * @module
 */

export * from "./archive/mod.ts";
export * from "./image.ts";
export * from "./platforms.ts";
export * from "./pull.ts";
export * from "./push.ts";
export * from "./registry_options.ts";
export * from "./unpack.ts";
