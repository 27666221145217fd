/**
 * The registry options pull and push share (ctr's `RegistryFlags`), and the progress events
 * they report.
 *
 * @module
 */

import type { Logger } from "../log.ts";
import type { Descriptor } from "./image.ts";
import { parseUserPass, staticCredentials } from "./remote/auth.ts";
import { DEFAULT_HOSTS_DIR } from "./remote/hosts.ts";
import { Resolver } from "./remote/resolver.ts";

/** How to reach registries. */
export interface RegistryOptions {
  /** Use plain HTTP for registries without a hosts.toml (ctr's `--plain-http`). */
  plainHttp?: boolean;
  /** Skip TLS verification (ctr's `--skip-verify`). */
  skipVerify?: boolean;
  /** Credentials as `user:password` (ctr's `--user`). */
  user?: string;
  /** The root of per-registry `hosts.toml` directories (default `/etc/tainerd/certs.d`). */
  hostsDir?: string;
  /** Use this resolver instead of building one (the caller closes it). */
  resolver?: Resolver;
  logger?: Logger;
}

/** A resolver for the options, and how to release it. */
export function openResolver(opts: RegistryOptions): { resolver: Resolver; close(): void } {
  if (opts.resolver) return { resolver: opts.resolver, close: () => {} };
  const resolver = new Resolver({
    plainHttp: opts.plainHttp,
    skipVerify: opts.skipVerify,
    hostDir: opts.hostsDir ?? DEFAULT_HOSTS_DIR,
    credentials: opts.user ? staticCredentials(parseUserPass(opts.user)) : undefined,
    logger: opts.logger,
  });
  return { resolver, close: () => resolver.close() };
}

/** What a blob transfer (or an unpack step) is doing. */
export type ProgressStatus =
  | "resolving"
  | "resolved"
  | "waiting"
  | "downloading"
  | "uploading"
  | "done"
  | "exists"
  | "mounted"
  | "unpacking"
  | "unpacked";

/** A progress event of pull, push, import or unpack. */
export interface ProgressEvent {
  /** The job: containerd's ingest ref (`layer-sha256:…`), or the reference while resolving. */
  ref: string;
  status: ProgressStatus;
  /** The blob, when the job is one. */
  desc?: Descriptor;
  /** Bytes done. */
  offset: number;
  /** Bytes in all (0 when unknown). */
  total: number;
}

/** Receives progress events. */
export type ProgressHandler = (event: ProgressEvent) => void;

/** A counting semaphore: at most `n` holders at once. */
export class Semaphore {
  #free: number;
  readonly #waiters: (() => void)[] = [];

  constructor(n: number) {
    this.#free = Math.max(1, Math.floor(n));
  }

  /** Waits for a slot. */
  async acquire(): Promise<void> {
    if (this.#free > 0) {
      this.#free--;
      return;
    }
    await new Promise<void>((resolve) => this.#waiters.push(resolve));
  }

  /** Frees a slot. */
  release(): void {
    const next = this.#waiters.shift();
    if (next) next();
    else this.#free++;
  }

  /** Runs `fn` holding a slot. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    await this.acquire();
    try {
      return await fn();
    } finally {
      this.release();
    }
  }
}
