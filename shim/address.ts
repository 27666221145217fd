/**
 * Where a shim listens and how the daemon finds it again, as containerd's
 * `runtime/v2/shim/util*.go`: the socket address is `unix://<state>/s/<sha256(address/ns/id)>`,
 * and the bundle's `address` file holds it so that a restarted daemon can reconnect.
 *
 * @module
 */

import { cleanPath } from "../diff/root_path.ts";
import { invalidArgument } from "../plugins/errdefs.ts";
import { sha256Hex } from "../sys/sha256.ts";

/** The environment variable naming the daemon's state directory (default `/run/tainerd`). */
export const STATE_DIR_ENV = "TAINERD_STATE_DIR";
/** The daemon's default state directory. */
export const DEFAULT_STATE_DIR = "/run/tainerd";
/** containerd's limit on a shim socket path (`sun_path` is 108 bytes with the NUL). */
export const SOCKET_PATH_LIMIT = 106;
/** The environment variable holding the daemon's ttrpc address, for publishing events. */
export const TTRPC_ADDRESS_ENV = "TTRPC_ADDRESS";
/** The name of the file in the bundle holding the shim's address. */
export const ADDRESS_FILE = "address";

/** The state directory: `$TAINERD_STATE_DIR`, else `/run/tainerd`. */
export function stateDir(): string {
  return Deno.env.get(STATE_DIR_ENV) || DEFAULT_STATE_DIR;
}

/** Names the directory shim sockets go in when the state directory's path is too long. */
export const SOCKET_DIR_ENV = "TAINERD_SOCKET_DIR";

/**
 * Where shim sockets go (`<dir>/s/<hash>`): `$TAINERD_SOCKET_DIR`, else the state directory.
 * The daemon sets it to `/run/tainerd` when its own state directory is too long for a unix
 * socket path, while runc's state stays under the daemon's state directory.
 */
export function socketDir(): string {
  return Deno.env.get(SOCKET_DIR_ENV) || stateDir();
}

/** Go's `filepath.Join`: joins the non-empty parts and cleans the result. */
function goJoin(...parts: string[]): string {
  const kept = parts.filter((p) => p !== "");
  return kept.length === 0 ? "" : cleanPath(kept.join("/"));
}

/**
 * The shim socket address for a task, as containerd's `shim.SocketAddress`:
 * `unix://<stateDir>/s/<hex sha256 of join(daemonAddress, namespace, id)>`.
 *
 * @throws {TainerdError} InvalidArgument when the path would exceed {@linkcode SOCKET_PATH_LIMIT}
 */
export function socketAddress(
  daemonAddress: string,
  namespace: string,
  id: string,
  dir: string = socketDir(),
): string {
  const hash = sha256Hex(goJoin(daemonAddress, namespace, id));
  const path = `${dir.replace(/\/+$/, "")}/s/${hash}`;
  const size = new TextEncoder().encode(path).length;
  if (size > SOCKET_PATH_LIMIT) {
    throw invalidArgument(
      `The shim socket path "${path}" is ${size} bytes, longer than the limit of ` +
        `${SOCKET_PATH_LIMIT}: use a shorter state directory than "${dir}"`,
    );
  }
  return `unix://${path}`;
}

/** The filesystem path of a `unix://` address (a bare path is returned as is). */
export function socketPath(address: string): string {
  return address.startsWith("unix://") ? address.slice("unix://".length) : address;
}

/** Whether something accepts connections on the unix socket of `address`. */
export async function canConnect(address: string): Promise<boolean> {
  try {
    const conn = await Deno.connect({ transport: "unix", path: socketPath(address) });
    conn.close();
    return true;
  } catch {
    return false;
  }
}

/** Removes the socket file of `address`, ignoring a missing one. */
export async function removeSocket(address: string): Promise<void> {
  try {
    await Deno.remove(socketPath(address));
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
}

/**
 * Writes `content` to `path` atomically: into `.<name>` beside it, synced, then renamed, as
 * containerd's `WriteAddress`/`WritePidFile`.
 */
export async function writeFileAtomic(path: string, content: string): Promise<void> {
  const slash = path.lastIndexOf("/");
  const temp = `${path.slice(0, slash + 1)}.${path.slice(slash + 1)}`;
  const file = await Deno.open(temp, { write: true, create: true, truncate: true, mode: 0o666 });
  try {
    await file.write(new TextEncoder().encode(content));
    await file.sync();
  } finally {
    file.close();
  }
  await Deno.rename(temp, path);
}

/** Writes the bundle's `address` file. */
export function writeAddress(bundle: string, address: string): Promise<void> {
  return writeFileAtomic(`${bundle}/${ADDRESS_FILE}`, address);
}

/** Reads the bundle's `address` file, or null when it is missing or empty. */
export async function readAddress(bundle: string): Promise<string | null> {
  try {
    const text = (await Deno.readTextFile(`${bundle}/${ADDRESS_FILE}`)).trim();
    return text === "" ? null : text;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return null;
    throw err;
  }
}
