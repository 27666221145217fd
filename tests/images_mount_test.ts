/**
 * `images mount|unmount` against tainerd, with the real ctr and with our CLI: the image's
 * files show at the target, the snapshot is keyed by the target on the image's chain ID under
 * a lease of the same id, and unmount (`--rm`) leaves no mount, lease or snapshot behind.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { gzipSync } from "node:zlib";
import { type TestDaemon, withDaemon } from "./harness.ts";

const encoder = new TextEncoder();

function sha256(bytes: Uint8Array | string): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function tarDir(dir: string): Uint8Array {
  const out = new Deno.Command("tar", {
    args: ["--numeric-owner", "--owner=0", "--group=0", "-C", dir, "-cf", "-", "."],
    stdout: "piped",
  }).outputSync();
  assert.ok(out.success, "tar");
  return out.stdout;
}

/** A two-layer OCI archive: files, then a layer that adds one file and whites out another. */
export function buildMountImage(dir: string, name: string): { archive: string; chainId: string } {
  const l1 = `${dir}/l1`;
  const l2 = `${dir}/l2`;
  Deno.mkdirSync(`${l1}/etc`, { recursive: true });
  Deno.mkdirSync(`${l1}/usr/share`, { recursive: true });
  Deno.writeTextFileSync(`${l1}/etc/hostname`, "tainerd\n");
  Deno.writeTextFileSync(`${l1}/etc/old`, "to be deleted\n");
  Deno.writeTextFileSync(`${l1}/usr/share/data`, "x".repeat(10000));
  Deno.symlinkSync("../etc/hostname", `${l1}/usr/hostname`);
  Deno.mkdirSync(`${l2}/etc`, { recursive: true });
  Deno.writeTextFileSync(`${l2}/etc/greeting`, "hello from layer 2\n");
  Deno.writeTextFileSync(`${l2}/etc/.wh.old`, "");
  const tars = [tarDir(l1), tarDir(l2)];
  const layout = `${dir}/layout`;
  Deno.mkdirSync(`${layout}/blobs/sha256`, { recursive: true });
  const put = (bytes: Uint8Array) => {
    const d = sha256(bytes);
    Deno.writeFileSync(`${layout}/blobs/sha256/${d.slice(7)}`, bytes);
    return { digest: d, size: bytes.length };
  };
  const json = (o: unknown) => encoder.encode(JSON.stringify(o));
  const diffIDs = tars.map(sha256);
  const arch = Deno.build.arch === "aarch64" ? "arm64" : "amd64";
  const config = put(json({
    architecture: arch,
    os: "linux",
    config: { Cmd: ["/bin/sh"] },
    rootfs: { type: "layers", diff_ids: diffIDs },
  }));
  const manifest = put(json({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
    layers: tars.map((t) => ({
      mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
      ...put(new Uint8Array(gzipSync(t))),
    })),
  }));
  Deno.writeFileSync(
    `${layout}/index.json`,
    json({
      schemaVersion: 2,
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json",
        ...manifest,
        annotations: { "org.opencontainers.image.ref.name": name },
        platform: { architecture: arch, os: "linux" },
      }],
    }),
  );
  Deno.writeTextFileSync(`${layout}/oci-layout`, '{"imageLayoutVersion":"1.0.0"}');
  const archive = `${dir}/image.tar`;
  const out = new Deno.Command("tar", {
    args: ["-C", layout, "-cf", archive, "oci-layout", "index.json", "blobs"],
  }).outputSync();
  assert.ok(out.success);
  return { archive, chainId: sha256(`${diffIDs[0]} ${diffIDs[1]}`) };
}

const NAME = "docker.io/library/tainerd-mount:v1";

/** Mount points at or under `dir` in this mount namespace. */
function mountsUnder(dir: string): string[] {
  return Deno.readTextFileSync("/proc/self/mountinfo").split("\n")
    .map((l) => l.split(" ")[4])
    .filter((p) => p !== undefined && (p === dir || p.startsWith(dir + "/")));
}

async function ok(r: Promise<{ code: number; stdout: string; stderr: string }>, what: string) {
  const res = await r;
  assert.equal(res.code, 0, `${what}: ${res.stderr}`);
  return res.stdout;
}

function snapshotKeys(ls: string): string[] {
  return ls.trim().split("\n").slice(1).map((l) => l.trim().split(/\s+/)[0]).sort();
}

function withImage(fn: (d: TestDaemon, dir: string, chainId: string) => Promise<void>) {
  return withDaemon(async (d) => {
    const dir = await Deno.makeTempDir({ prefix: "tainerd-mount-" });
    try {
      const { archive, chainId } = buildMountImage(dir, NAME);
      await ok(d.ctr(["images", "import", archive]), "ctr images import");
      await fn(d, dir, chainId);
    } finally {
      // Never leave a mount behind, even when an assertion failed.
      for (const m of mountsUnder(dir).reverse()) {
        await new Deno.Command("umount", { args: ["-l", m] }).output();
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  });
}

function checkImageFiles(target: string): void {
  assert.equal(Deno.readTextFileSync(`${target}/etc/hostname`), "tainerd\n");
  assert.equal(Deno.readTextFileSync(`${target}/etc/greeting`), "hello from layer 2\n");
  assert.equal(Deno.readTextFileSync(`${target}/usr/hostname`), "tainerd\n");
  assert.equal(Deno.readTextFileSync(`${target}/usr/share/data`).length, 10000);
  assert.deepEqual([...Deno.readDirSync(`${target}/etc`)].map((e) => e.name).sort(), [
    "greeting",
    "hostname",
  ]);
}

Deno.test("ctr images mount shows the image's files on tainerd; unmount --rm cleans up", () =>
  withImage(async (d, dir, chainId) => {
    const target = `${dir}/mnt`;
    Deno.mkdirSync(target);
    const out = await ok(d.ctr(["images", "mount", NAME, target]), "ctr images mount");
    assert.equal(out, `${chainId}\n${target}\n`);
    assert.deepEqual(mountsUnder(target), [target]);
    checkImageFiles(target);
    // Read-only: a view.
    assert.throws(() => Deno.writeTextFileSync(`${target}/etc/new`, "x"));
    const info = JSON.parse(await ok(d.ctr(["snapshots", "info", target]), "info"));
    assert.equal(info.Kind, "View");
    assert.equal(info.Parent, chainId);
    const leases = await ok(d.ctr(["leases", "ls"]), "leases ls");
    assert.match(leases, new RegExp(`^${target}\\s`, "m"));
    assert.ok(leases.includes(`containerd.io/gc.ref.snapshot.overlayfs=${target}`), leases);
    // `ctr snapshots tree` draws the chain with the mount's view at the end.
    const tree = await ok(d.ctr(["snapshots", "tree"]), "tree");
    assert.match(tree, new RegExp(`\\n  \\\\_ ${chainId}\\n    \\\\_ ${target}\\n`));

    assert.equal(await ok(d.ctr(["images", "unmount", "--rm", target]), "unmount"), `${target}\n`);
    assert.deepEqual(mountsUnder(target), []);
    assert.deepEqual([...Deno.readDirSync(target)], []);
    assert.ok(!(await ok(d.ctr(["leases", "ls"]), "leases ls")).includes(target));
    assert.ok(!snapshotKeys(await ok(d.ctr(["snapshots", "ls"]), "ls")).includes(target));
  }));

Deno.test("tainerd images mount --rw writes into an active snapshot; ctr unmounts it", () =>
  withImage(async (d, dir, chainId) => {
    const target = `${dir}/rw`;
    Deno.mkdirSync(target);
    const out = await ok(d.cli(["images", "mount", "--rw", NAME, target]), "images mount");
    assert.equal(out, `${chainId}\n${target}\n`);
    assert.deepEqual(mountsUnder(target), [target]);
    checkImageFiles(target);
    Deno.writeTextFileSync(`${target}/etc/new`, "written\n");
    const info = JSON.parse(await ok(d.cli(["snapshots", "info", target]), "info"));
    assert.equal(info.Kind, "Active");
    // The write landed in the snapshot, not in the image's layers.
    const mountCmd = await ok(d.ctr(["snapshots", "mounts", "/x", target]), "mounts");
    const upper = /upperdir=([^,\s]+)/.exec(mountCmd)?.[1];
    assert.ok(upper, mountCmd);
    assert.equal(Deno.readTextFileSync(`${upper}/etc/new`), "written\n");
    // Mounting again reuses the snapshot (ctr does so too).
    const again = `${dir}/again`;
    await ok(d.ctr(["images", "unmount", target]), "ctr images unmount");
    assert.deepEqual(mountsUnder(target), []);
    assert.ok(snapshotKeys(await ok(d.ctr(["snapshots", "ls"]), "ls")).includes(target));
    await ok(d.cli(["images", "mount", "--rw", NAME, target]), "mount again");
    assert.equal(Deno.readTextFileSync(`${target}/etc/new`), "written\n");
    await ok(d.cli(["images", "unmount", "--rm", target]), "unmount --rm");
    assert.deepEqual(mountsUnder(target), []);
    assert.ok(!snapshotKeys(await ok(d.ctr(["snapshots", "ls"]), "ls")).includes(target));
    assert.ok(!(await ok(d.ctr(["leases", "ls"]), "leases ls")).includes(target));
    // A failing mount (a missing target) leaves no snapshot and no lease.
    const r = await d.cli(["images", "mount", NAME, again]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /again/);
    assert.ok(!snapshotKeys(await ok(d.ctr(["snapshots", "ls"]), "ls")).includes(again));
    assert.ok(!(await ok(d.ctr(["leases", "ls"]), "leases ls")).includes(again));
    assert.deepEqual(mountsUnder(dir), []);
  }));
