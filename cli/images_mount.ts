/**
 * `tainerd images mount|unmount`, as ctr's: the image is unpacked if needed, a snapshot keyed
 * by the target path is made on the image's chain ID (a view, or an active snapshot with
 * `--rw`) under a lease with the same id (which keeps it for 24 h), and mounted on the target.
 * `unmount` unmounts everything at the target; with `--rm` it also deletes the lease and the
 * snapshot.
 *
 * @module
 */

import type { Command } from "commander";
import { Snapshots } from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { TainerdClient } from "../client/client.ts";
import { getImage } from "../client/images.ts";
import { Labels } from "../images/image.ts";
import { hostPlatform, parsePlatform } from "../images/platforms.ts";
import { DEFAULT_SNAPSHOTTER, unpack } from "../images/unpack.ts";
import { isAlreadyExists, isNotFound } from "../plugins/errdefs.ts";
import { type Mount, mountAll, unmountAll } from "../sys/mount.ts";

/** Runs `fn` with a client of the daemon the global options name. */
export type WithClient = (fn: (c: TainerdClient) => Promise<void>) => Promise<void>;

const encoder = new TextEncoder();

function out(text: string): void {
  Deno.stdout.writeSync(encoder.encode(text));
}

function defaultSnapshotter(): string {
  return Deno.env.get("CONTAINERD_SNAPSHOTTER") || DEFAULT_SNAPSHOTTER;
}

/** Options of {@link mountImage}. */
export interface MountImageOptions {
  /** A writable (active) snapshot instead of a view. */
  rw?: boolean;
  snapshotter?: string;
  /** Platform to mount, as `os/arch[/variant]` (the host's by default). */
  platform?: string;
}

/**
 * Mounts image `ref` on `target` as ctr's `images mount` does; returns the chain ID.
 * On failure, the snapshot (when made here) and the lease are removed again.
 */
export async function mountImage(
  client: TainerdClient,
  ref: string,
  target: string,
  opts: MountImageOptions = {},
): Promise<string> {
  const snapshotter = opts.snapshotter || defaultSnapshotter();
  let created = false;
  try {
    await client.leases.create({
      id: target,
      labels: {
        [Labels.GcExpire]: new Date(Date.now() + 24 * 3600_000).toISOString().replace(
          /\.\d{3}Z$/,
          "Z",
        ),
        [`${Labels.GcSnapshotRef}${snapshotter}`]: target,
      },
    });
    created = true;
  } catch (err) {
    if (!isAlreadyExists(err)) throw err;
  }
  const leased = new TainerdClient({
    address: client.address,
    namespace: client.namespace,
    lease: target,
  });
  let madeSnapshot = false;
  try {
    const image = await getImage(leased, ref);
    const platform = opts.platform ? parsePlatform(opts.platform) : hostPlatform();
    const { chainId } = await unpack(leased, image, { snapshotter, platform });
    out(`${chainId}\n`);
    const api = leased.service(Snapshots);
    let mounts: Mount[];
    try {
      const req = { snapshotter, key: target, parent: chainId, labels: {} };
      mounts = (opts.rw ? await api.prepare(req) : await api.view(req)).mounts;
      madeSnapshot = true;
    } catch (err) {
      if (!isAlreadyExists(err)) throw err;
      mounts = (await api.mounts({ snapshotter, key: target })).mounts;
    }
    await mountAll(mounts, target);
    return chainId;
  } catch (err) {
    if (madeSnapshot) {
      await leased.service(Snapshots).remove({ snapshotter, key: target }).catch(() => {});
    }
    if (created) await client.leases.delete({ id: target, sync: false }).catch(() => {});
    throw err;
  } finally {
    leased.close();
  }
}

/** Unmounts `target` as ctr's `images unmount`; with `rm`, deletes its lease and snapshot. */
export async function unmountImage(
  client: TainerdClient,
  target: string,
  opts: { rm?: boolean; snapshotter?: string } = {},
): Promise<void> {
  await unmountAll(target, 0);
  if (!opts.rm) return;
  const snapshotter = opts.snapshotter || defaultSnapshotter();
  try {
    await client.leases.delete({ id: target, sync: false });
  } catch (err) {
    if (!isNotFound(err)) {
      throw new Error(`Cannot delete lease ${JSON.stringify(target)}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }
  try {
    await client.service(Snapshots).remove({ snapshotter, key: target });
  } catch (err) {
    if (!isNotFound(err)) {
      throw new Error(
        `Cannot remove snapshot ${JSON.stringify(target)}: ${(err as Error).message}`,
        { cause: err },
      );
    }
  }
}

/** Adds `mount` and `unmount` to the `images` command. */
export function addImageMountCommands(images: Command, withClient: WithClient): void {
  images.command("mount")
    .description("mount an image's root filesystem on a target path (undo with unmount)")
    .argument("<ref>", "image reference")
    .argument("<target>", "directory to mount on")
    .option("--rw", "enable write support on the mount")
    .option("--snapshotter <name>", "snapshotter name (env CONTAINERD_SNAPSHOTTER)")
    .option("--platform <platform>", "mount the image for this platform")
    .action((
      ref: string,
      target: string,
      o: { rw?: boolean; snapshotter?: string; platform?: string },
    ) =>
      withClient(async (c) => {
        await mountImage(c, ref, target, o);
        out(`${target}\n`);
      })
    );

  images.command("unmount")
    .description("unmount an image's root filesystem from a target path")
    .argument("<target>")
    .option("--rm", "remove the snapshot (and its lease) after a successful unmount")
    .option("--snapshotter <name>", "snapshotter name (env CONTAINERD_SNAPSHOTTER)")
    .action((target: string, o: { rm?: boolean; snapshotter?: string }) =>
      withClient(async (c) => {
        await unmountImage(c, target, o);
        out(`${target}\n`);
      })
    );
}
