/**
 * Pinning a sandbox's network namespace to a file, as containerd's `pkg/netns` does: runc
 * creates the namespace for the pause process, and the CRI plugin bind-mounts
 * `/proc/<pid>/ns/net` onto an empty file (e.g. `/run/tainerd/netns/cni-<id>`) so that the
 * namespace outlives the process and can be handed to CNI plugins as `CNI_NETNS`.
 *
 * Namespaces are never created or entered here: Deno's threads share one process, and
 * `unshare`/`setns` would move only one of them. The bind mount goes through `sys/libc.ts`.
 *
 * @module
 */

import { alreadyExists, invalidArgument, TainerdError } from "../../errdefs.ts";
import { isErrno, MNT_DETACH, mount, MS_BIND, statfsType, umount2 } from "../../../sys/libc.ts";

/** `NSFS_MAGIC`: the filesystem type (`statfs.f_type`) of a namespace file. */
export const NSFS_MAGIC = 0x6e736673;

/**
 * Pins the network namespace of process `pid` at `<dir>/<name>`: creates `dir` (mode 0711)
 * and an empty file there, and bind-mounts `/proc/<pid>/ns/net` onto it.
 *
 * @returns the path of the pinned namespace file
 * @throws {TainerdError} AlreadyExists when `<dir>/<name>` exists; NotFound when the process
 *   is gone; the file is removed again when the mount fails
 */
export async function pinNetns(pid: number, dir: string, name: string): Promise<string> {
  if (name === "" || name.includes("/") || name === "." || name === "..") {
    throw invalidArgument(`Cannot pin network namespace as ${JSON.stringify(name)}: bad name`);
  }
  await Deno.mkdir(dir, { recursive: true, mode: 0o711 });
  const path = `${dir.replace(/\/+$/, "")}/${name}`;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(path, { createNew: true, write: true, mode: 0o444 });
  } catch (err) {
    if (err instanceof Deno.errors.AlreadyExists) {
      throw alreadyExists(`Cannot pin network namespace at "${path}": file exists`);
    }
    throw err;
  }
  file.close();
  try {
    mount(`/proc/${pid}/ns/net`, path, "none", MS_BIND);
  } catch (err) {
    await Deno.remove(path).catch(() => {});
    if (!(err instanceof TainerdError)) throw err;
    throw new TainerdError(
      err.kind,
      `Cannot pin network namespace of process ${pid} at "${path}": ${err.message}`,
      { cause: err },
    );
  }
  return path;
}

/**
 * Unpins a network namespace pinned by {@linkcode pinNetns}: detaches the bind mount
 * (`MNT_DETACH`) and removes the file. Tolerates a path that is not mounted or already gone.
 */
export async function unpinNetns(path: string): Promise<void> {
  try {
    umount2(path, MNT_DETACH);
  } catch (err) {
    if (!isErrno(err, "EINVAL") && !isErrno(err, "ENOENT")) throw err;
  }
  await Deno.remove(path).catch((err) => {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  });
}

/**
 * Whether `path` is a live network namespace file (a pinned namespace or `/proc/<pid>/ns/net`):
 * false when it does not exist or is a plain file whose mount is gone, as containerd's
 * `NetNS.Closed()` answers.
 */
export function isNetns(path: string): boolean {
  if (path === "") return false;
  try {
    return statfsType(path) === NSFS_MAGIC;
  } catch {
    return false;
  }
}
