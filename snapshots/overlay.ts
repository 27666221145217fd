/**
 * The overlayfs snapshotter, as containerd's `snapshots/overlay`: each snapshot is
 * `<root>/snapshots/<id>/fs` (its changes, the overlay upper dir) and, when active,
 * `<root>/snapshots/<id>/work` (overlay's work dir). Mounts are those containerd returns:
 *
 * - no parent: a bind mount of the snapshot's own `fs` (`rw` or `ro`, `rbind`);
 * - a view of a single committed layer: a read-only bind mount of that layer's `fs`;
 * - otherwise an `overlay` mount with `lowerdir=` the parents' `fs` (nearest first) and, for an
 *   active snapshot, `upperdir=`/`workdir=`; `index=off` when the kernel knows the option,
 *   `userxattr` inside a user namespace.
 *
 * @module
 */

import { notImplemented } from "../plugins/errdefs.ts";
import { lchown, statfsType } from "../sys/libc.ts";
import { mountOne, unmountAll } from "../sys/mount.ts";
import { DirSnapshotter, type DirSnapshotterOptions } from "./dir_snapshotter.ts";
import type { Kind, Mount } from "./snapshotter.ts";
import type { Snapshot } from "./storage.ts";
import { lstatx } from "./statx.ts";

/** Options of {@link OverlaySnapshotter.open}. */
export interface OverlaySnapshotterOptions extends DirSnapshotterOptions {
  /** Skip the check that overlayfs can be mounted on the root's filesystem. */
  skipCheck?: boolean;
}

function inUserNamespace(): boolean {
  try {
    const map = Deno.readTextFileSync("/proc/self/uid_map").trim().split(/\s+/);
    return !(map.length === 3 && map[0] === "0" && map[1] === "0" && map[2] === "4294967295");
  } catch {
    return false;
  }
}

const TMPFS_MAGIC = 0x01021994;

/** The file under a snapshotter root recording the boot whose check passed. */
export const OVERLAY_CHECK_STAMP = ".overlay-supported";

function bootId(): string {
  try {
    return Deno.readTextFileSync("/proc/sys/kernel/random/boot_id").trim();
  } catch {
    return "";
  }
}

/**
 * Checks that overlayfs works on the filesystem of `root`, as containerd's
 * `overlayutils.Supported`: mounts an overlay of two lower dirs, an upper and a work dir in a
 * temporary directory under `root`, and unmounts it. A pass is recorded in `root` with the
 * kernel's boot id, and not checked again until the next boot (the mount test was ~10 ms of
 * every daemon restart).
 *
 * @throws {TainerdError} NotImplemented when it cannot be mounted
 */
export async function checkOverlaySupported(root: string): Promise<void> {
  Deno.mkdirSync(root, { recursive: true, mode: 0o700 });
  const boot = bootId();
  const stamp = `${root}/${OVERLAY_CHECK_STAMP}`;
  try {
    if (boot !== "" && Deno.readTextFileSync(stamp).trim() === boot) return;
  } catch {
    // Not checked yet in this boot.
  }
  await mountCheck(root);
  if (boot !== "") Deno.writeTextFileSync(stamp, `${boot}\n`, { mode: 0o600 });
}

async function mountCheck(root: string): Promise<void> {
  const td = await Deno.makeTempDir({ dir: root, prefix: "overlay-check-" });
  try {
    for (const d of ["lower1", "lower2", "upper", "work", "merged"]) Deno.mkdirSync(`${td}/${d}`);
    const merged = `${td}/merged`;
    try {
      await mountOne({
        type: "overlay",
        source: "overlay",
        options: [`lowerdir=${td}/lower2:${td}/lower1,upperdir=${td}/upper,workdir=${td}/work`],
      }, merged);
    } catch (err) {
      throw notImplemented(
        `Overlayfs is not supported on "${root}": ${(err as Error).message}`,
        { cause: err },
      );
    }
    await unmountAll(merged);
  } finally {
    await Deno.remove(td, { recursive: true }).catch(() => {});
  }
}

/** The overlayfs snapshotter. */
export class OverlaySnapshotter extends DirSnapshotter {
  readonly #indexOff: boolean;
  readonly #userxattr: boolean;

  private constructor(root: string, options: OverlaySnapshotterOptions) {
    super(root, options);
    let indexOff = false;
    try {
      Deno.statSync("/sys/module/overlay/parameters/index");
      indexOff = true;
    } catch {
      // The kernel does not know index=off.
    }
    this.#indexOff = indexOff;
    // As containerd on kernels ≥ 5.11: needed in a user namespace, not allowed on tmpfs.
    this.#userxattr = inUserNamespace() && !isTmpfs(root);
  }

  /**
   * Opens (creating if needed) an overlay snapshotter rooted at `root`, after checking that
   * overlayfs works there (unless `skipCheck`).
   *
   * @throws {TainerdError} NotImplemented when overlayfs is not supported
   */
  static async open(
    root: string,
    options: OverlaySnapshotterOptions = {},
  ): Promise<OverlaySnapshotter> {
    if (!options.skipCheck) await checkOverlaySupported(root);
    return new OverlaySnapshotter(root, options);
  }

  /** The upper dir (`fs`) of snapshot `id`. */
  upperPath(id: string): string {
    return `${this.snapshotDir(id)}/fs`;
  }

  /** The work dir of snapshot `id`. */
  workPath(id: string): string {
    return `${this.snapshotDir(id)}/work`;
  }

  /** An upper dir holds only its snapshot's changes: a parentless one can be rebased. */
  override get canRebase(): boolean {
    return true;
  }

  protected override usagePath(id: string): string {
    return this.upperPath(id);
  }

  protected override populate(td: string, kind: Kind, parentID: string | null): Promise<void> {
    Deno.mkdirSync(`${td}/fs`, { mode: 0o755 });
    Deno.chmodSync(`${td}/fs`, 0o755);
    if (kind === "active") {
      Deno.mkdirSync(`${td}/work`, { mode: 0o711 });
      Deno.chmodSync(`${td}/work`, 0o711);
    }
    if (parentID !== null) {
      // As containerd: the new upper dir gets the owner of the parent's.
      const st = lstatx(this.upperPath(parentID));
      lchown(`${td}/fs`, st.uid, st.gid);
    }
    return Promise.resolve();
  }

  protected override mountsOf(s: Snapshot): Mount[] {
    if (s.parentIDs.length === 0) {
      return [{
        type: "bind",
        source: this.upperPath(s.id),
        options: [s.kind === "view" ? "ro" : "rw", "rbind"],
      }];
    }
    const options: string[] = [];
    if (this.#indexOff) options.push("index=off");
    if (this.#userxattr) options.push("userxattr");
    if (s.kind === "active") {
      options.push(`workdir=${this.workPath(s.id)}`, `upperdir=${this.upperPath(s.id)}`);
    } else if (s.parentIDs.length === 1) {
      return [{ type: "bind", source: this.upperPath(s.parentIDs[0]), options: ["ro", "rbind"] }];
    }
    options.push(`lowerdir=${s.parentIDs.map((id) => this.upperPath(id)).join(":")}`);
    return [{ type: "overlay", source: "overlay", options }];
  }
}

function isTmpfs(path: string): boolean {
  try {
    return statfsType(path) === TMPFS_MAGIC;
  } catch {
    return false;
  }
}
