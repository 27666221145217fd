/**
 * The registry side of image pull and push, as containerd's `remotes/docker`: host
 * configuration (`hosts.toml`), authentication, a resolver, a verifying resumable fetcher and
 * a pusher.
 *
 * ```ts
 * import { Resolver } from "./images/remote/mod.ts";
 * const resolver = new Resolver({ hostDir: "/etc/tainerd/certs.d" });
 * const { name, descriptor } = await resolver.resolve("busybox");
 * const fetcher = await resolver.fetcher(name);
 * const stream = await fetcher.fetch(descriptor); // verified against size and digest
 * resolver.close();
 * ```
 *
 * @module
 */

export * from "./auth.ts";
export * from "./descriptor.ts";
export * from "./errors.ts";
export * from "./fetcher.ts";
export * from "./hosts.ts";
export * from "./http.ts";
export * from "./media_types.ts";
export * from "./pusher.ts";
export * from "./repository.ts";
export * from "./resolver.ts";
