/**
 * The CRI plugin's objects: pod sandboxes and containers, with their metadata (kept in the
 * daemon's container records, extension `io.cri-containerd.*.metadata`, so they survive a
 * restart as containerd's do) and their runtime status (a small JSON file per container,
 * written atomically), plus the name index that makes pod and container names unique.
 *
 * @module
 */

import { alreadyExists, invalidArgument } from "../errdefs.ts";

/** The label that tells CRI objects apart in the container store. */
export const KIND_LABEL = "io.cri-containerd.kind";
/** The extension holding a sandbox's metadata. */
export const SANDBOX_METADATA_EXT = "io.cri-containerd.sandbox.metadata";
/** The extension holding a container's metadata. */
export const CONTAINER_METADATA_EXT = "io.cri-containerd.container.metadata";
/** The type URL of both extensions (JSON bodies). */
export const METADATA_TYPE_URL = "tainerd.io/cri/Metadata+json";

/** What a sandbox is made of; persisted. */
export interface SandboxMeta {
  id: string;
  /** `<name>_<namespace>_<uid>_<attempt>`. */
  name: string;
  /** The PodSandboxConfig, in its proto JSON form. */
  config: unknown;
  runtimeHandler: string;
  /** The runtime (shim) type. */
  runtimeType: string;
  /** The pinned network namespace ("" with host network). */
  netnsPath: string;
  ip: string;
  additionalIps: string[];
  /** Nanoseconds since the epoch, as a decimal string. */
  createdAt: string;
  /** The sandbox image's id. */
  image: string;
  /** The sandbox's directory of generated files (hostname, hosts, resolv.conf). */
  dir: string;
  /** The tmpfs shared as /dev/shm ("" with host IPC). */
  shmPath: string;
  /** The CNI result, for verbose status. */
  cniResult?: unknown;
}

/** What a container is made of; persisted. */
export interface ContainerMeta {
  id: string;
  /** `<name>_<sandbox name>_<sandbox namespace>_<sandbox uid>_<attempt>`. */
  name: string;
  sandboxId: string;
  /** The ContainerConfig, in its proto JSON form. */
  config: unknown;
  /** The image id (`sha256:<config digest>`). */
  imageId: string;
  /** The image name the container was created from (as the request named it). */
  imageName: string;
  /** A repo digest of the image, if any (ContainerStatus.image_ref). */
  imageRef: string;
  /** The absolute log path ("" when none). */
  logPath: string;
  createdAt: string;
  /** The stop signal from the image config ("" for SIGTERM). */
  stopSignal: string;
}

/** A container's runtime state, as CRI reports it. */
export type ContainerRunState = "created" | "running" | "exited" | "unknown";

/** A container's runtime status; persisted beside the container. */
export interface ContainerStatusRecord {
  state: ContainerRunState;
  pid: number;
  /** Nanoseconds since the epoch, as decimal strings ("0" when not yet). */
  startedAt: string;
  finishedAt: string;
  exitCode: number;
  reason: string;
  message: string;
  /** Set while the container is being removed. */
  removing?: boolean;
}

/** The status of a container just created. */
export function createdStatus(): ContainerStatusRecord {
  return {
    state: "created",
    pid: 0,
    startedAt: "0",
    finishedAt: "0",
    exitCode: 0,
    reason: "",
    message: "",
  };
}

/** Nanoseconds since the epoch now, as a decimal string. */
export function nowNs(): string {
  return (BigInt(Date.now()) * 1_000_000n).toString();
}

/** A protobuf Timestamp in nanoseconds since the epoch. */
export function timestampNs(ts: { seconds: bigint; nanos: number }): bigint {
  return ts.seconds * 1_000_000_000n + BigInt(ts.nanos);
}

/** Writes `value` as JSON to `path` atomically (temp file, fsync, rename). */
export async function writeJsonAtomic(path: string, value: unknown): Promise<void> {
  const tmp = `${path}.tmp-${crypto.randomUUID().slice(0, 8)}`;
  const f = await Deno.open(tmp, { write: true, create: true, truncate: true, mode: 0o600 });
  try {
    await f.write(new TextEncoder().encode(JSON.stringify(value)));
    await f.sync();
  } finally {
    f.close();
  }
  await Deno.rename(tmp, path);
}

/** Reads a JSON file, or undefined when it does not exist. */
export async function readJson<T>(path: string): Promise<T | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(path)) as T;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}

/**
 * Reserves names for ids: a second reservation of a name for another id fails with
 * AlreadyExists, as containerd's `registrar`.
 */
export class NameIndex {
  readonly #byName = new Map<string, string>();
  readonly #what: string;

  constructor(what: string) {
    this.#what = what;
  }

  /** Reserves `name` for `id` (again for the same id is fine). */
  reserve(name: string, id: string): void {
    const owner = this.#byName.get(name);
    if (owner !== undefined && owner !== id) {
      throw alreadyExists(
        `The ${this.#what} name "${name}" is reserved for "${owner}"`,
      );
    }
    this.#byName.set(name, id);
  }

  /** Releases `name`. */
  release(name: string): void {
    this.#byName.delete(name);
  }
}

/** A random 64-hex-digit id, as containerd's CRI makes them. */
export function newId(): string {
  const b = crypto.getRandomValues(new Uint8Array(32));
  return [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
}

/**
 * Finds the one id in `ids` equal to `key` or starting with it (a truncated id, as crictl
 * prints them).
 *
 * @returns undefined when none matches.
 * @throws {TainerdError} InvalidArgument when the prefix is ambiguous.
 */
export function matchId(ids: Iterable<string>, key: string): string | undefined {
  if (!key) return undefined;
  let found: string | undefined;
  for (const id of ids) {
    if (id === key) return id;
    if (id.startsWith(key)) {
      if (found !== undefined) return ambiguous(key);
      found = id;
    }
  }
  return found;
}

function ambiguous(key: string): never {
  throw invalidArgument(`The id prefix "${key}" matches more than one object`);
}
