/**
 * Snapshots and diffs end to end with the real ctr: `ctr snapshots …` round trips on both
 * snapshotters, `ctr snapshots diff` (Diff.Diff), and an OCI image built here, imported with
 * `ctr images import` (Content.Write, Images.Create, Diff.Apply and Snapshots prepare/commit
 * through ctr's own unpacker), run with `ctr run`, and swept by the garbage collector.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { gunzipSync, gzipSync } from "node:zlib";
import { Snapshots } from "../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { ctrEvents, delay, type TestDaemon, withDaemon } from "./harness.ts";

const encoder = new TextEncoder();

function sha256(bytes: Uint8Array | string): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** The chain ID of layers' diff IDs, as the OCI image spec defines it. */
function chainIDs(diffIDs: string[]): string[] {
  const out: string[] = [];
  for (const d of diffIDs) out.push(out.length === 0 ? d : sha256(`${out.at(-1)} ${d}`));
  return out;
}

function tarDir(dir: string, args: string[] = ["."]): Uint8Array {
  const out = new Deno.Command("tar", {
    args: ["--numeric-owner", "--owner=0", "--group=0", "-C", dir, "-cf", "-", ...args],
    stdout: "piped",
  }).outputSync();
  assert.ok(out.success, "tar");
  return out.stdout;
}

/** A built image: the OCI archive and what ctr should see of it. */
interface TestImage {
  archive: string;
  name: string;
  diffIDs: string[];
  chain: string[];
  blobs: string[];
}

/**
 * Builds a two-layer OCI image archive under `dir`: the busybox rootfs, then a layer that adds
 * `/etc/greeting` and deletes `/etc/group` with a whiteout.
 */
async function buildImage(dir: string, name: string): Promise<TestImage> {
  const rootfs = await busyboxRootfs(dir);
  const upper = `${dir}/layer2`;
  Deno.mkdirSync(`${upper}/etc`, { recursive: true });
  Deno.writeTextFileSync(`${upper}/etc/greeting`, "hello from layer 2\n");
  Deno.writeTextFileSync(`${upper}/etc/.wh.group`, "");
  const tars = [tarDir(rootfs), tarDir(upper)];
  const layout = `${dir}/layout`;
  Deno.mkdirSync(`${layout}/blobs/sha256`, { recursive: true });
  const blobs: string[] = [];
  const put = (bytes: Uint8Array) => {
    const d = sha256(bytes);
    Deno.writeFileSync(`${layout}/blobs/sha256/${d.slice(7)}`, bytes);
    blobs.push(d);
    return { digest: d, size: bytes.length };
  };
  const json = (o: unknown) => encoder.encode(JSON.stringify(o));
  const layers = tars.map((t) => ({
    mediaType: "application/vnd.oci.image.layer.v1.tar+gzip",
    ...put(new Uint8Array(gzipSync(t))),
  }));
  const diffIDs = tars.map(sha256);
  const config = put(json({
    architecture: "amd64",
    os: "linux",
    config: { Cmd: ["/bin/sh"], Env: ["PATH=/bin"] },
    rootfs: { type: "layers", diff_ids: diffIDs },
  }));
  const manifest = put(json({
    schemaVersion: 2,
    mediaType: "application/vnd.oci.image.manifest.v1+json",
    config: { mediaType: "application/vnd.oci.image.config.v1+json", ...config },
    layers,
  }));
  const arch = Deno.build.arch === "aarch64" ? "arm64" : "amd64";
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
  // The config's architecture must match the host for ctr's platform matcher.
  if (arch !== "amd64") throw new Error("only amd64 hosts are covered by this test image");
  const archive = `${dir}/image.tar`;
  const out = new Deno.Command("tar", {
    args: ["-C", layout, "-cf", archive, "oci-layout", "index.json", "blobs"],
  }).outputSync();
  assert.ok(out.success);
  return { archive, name, diffIDs, chain: chainIDs(diffIDs), blobs: blobs.sort() };
}

async function withImage(fn: (d: TestDaemon, img: TestImage) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-image-" });
  try {
    const img = await buildImage(dir, "docker.io/library/tainerd-tiny:v1");
    await withDaemon((d) => fn(d, img));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function ok(d: TestDaemon, args: string[], namespace?: string): Promise<string> {
  const r = await d.ctr(args, { namespace });
  assert.equal(r.code, 0, `ctr ${args.join(" ")}: ${r.stderr}`);
  return r.stdout;
}

/** `ctr snapshots ls` as {key: [parent, kind]}. */
async function snapshotsLs(
  d: TestDaemon,
  snapshotter: string,
  namespace?: string,
): Promise<Record<string, [string, string]>> {
  const out = await ok(d, ["snapshots", "--snapshotter", snapshotter, "ls"], namespace);
  const rows: Record<string, [string, string]> = {};
  for (const line of out.trim().split("\n").slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length === 3) rows[cols[0]] = [cols[1], cols[2]];
    else if (cols.length === 2) rows[cols[0]] = ["", cols[1]];
  }
  return rows;
}

/** Waits (up to 10 s) until `check` passes: the collector runs soon after deletions. */
async function eventually(check: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await delay(100);
    }
  }
}

let gcLeases = 0;

/**
 * Runs a garbage collection and waits for it (`ctr leases rm --sync`). Deletions schedule one
 * soon anyway, but the scheduler may let a deletion made while a collection runs wait for the
 * next trigger, so the tests that check what was swept collect explicitly.
 */
async function collectGarbage(d: TestDaemon): Promise<void> {
  const id = `gc-${++gcLeases}`;
  await ok(d, ["leases", "create", "--id", id]);
  await ok(d, ["leases", "rm", "--sync", id]);
}

function dirEntries(path: string): string[] {
  try {
    return [...Deno.readDirSync(path)].map((e) => e.name).sort();
  } catch {
    return [];
  }
}

for (const snapshotter of ["overlayfs", "native"]) {
  Deno.test(`ctr snapshots round trip on ${snapshotter}`, () =>
    withDaemon(async (d) => {
      const sn = ["snapshots", "--snapshotter", snapshotter];
      // The view ctr makes below has no gc.root label and nothing else keeps it: let the
      // startup collection pass first (later ones follow deletions, which come after).
      await eventually(async () => assert.match(await d.log(), /msg="garbage collected"/));
      await ok(d, [...sn, "prepare", "base-work"]);
      // The mount command names the snapshot's directory: write a file into it.
      const mountCmd = await ok(d, [...sn, "mounts", "/mnt/x", "base-work"]);
      const source = /^mount -t bind (\S+) \/mnt\/x -o (rw,rbind|rbind,rw)$/m.exec(mountCmd)?.[1];
      assert.ok(source, mountCmd);
      Deno.writeTextFileSync(`${source}/hello`, "world\n");
      await ok(d, [...sn, "commit", "base", "base-work"]);
      await ok(d, [...sn, "prepare", "child", "base"]);
      await ok(d, [...sn, "view", "look", "base"]);
      assert.deepEqual(await snapshotsLs(d, snapshotter), {
        base: ["", "Committed"],
        child: ["base", "Active"],
        look: ["base", "View"],
      });
      const info = JSON.parse(await ok(d, [...sn, "info", "child"]));
      assert.equal(info.Name, "child");
      assert.equal(info.Parent, "base");
      assert.equal(info.Kind, "Active");
      assert.match(info.Labels["containerd.io/gc.root"], /^\d{4}-/);
      let labels = await ok(d, [...sn, "label", "child", "app=web", "tier=db"]);
      assert.deepEqual(labels.trim().split(",").sort().filter((l) => !l.startsWith("containerd")), [
        "app=web",
        "tier=db",
      ]);
      labels = await ok(d, [...sn, "label", "child", "tier="]);
      assert.ok(!labels.includes("tier"), labels);
      const usage = await ok(d, [...sn, "usage", "base"]);
      assert.match(usage, /^base\s+\d+(\.\d+)? [KMG]?i?B\s+\d+\s*$/m);
      const usageB = await ok(d, [...sn, "usage", "-b"]);
      assert.match(usageB, /^child\s+\d+\s+\d+\s*$/m);
      // Removing a parent with children fails; the views and children go first.
      let r = await d.ctr([...sn, "rm", "base"]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /child.*failed precondition/);
      r = await d.ctr([...sn, "prepare", "child", "base"]);
      assert.match(r.stderr, /already exists/);
      r = await d.ctr([...sn, "info", "nope"]);
      assert.match(r.stderr, /not found/);
      await ok(d, [...sn, "rm", "look", "child"]);
      // The namespace's view: another namespace sees nothing.
      assert.deepEqual(await snapshotsLs(d, snapshotter, "other"), {});
      await ok(d, [...sn, "rm", "base"]);
      assert.deepEqual(await snapshotsLs(d, snapshotter), {});
      // The backend snapshots go at the next collection.
      await collectGarbage(d);
      const dir = `${d.root}/io.containerd.snapshotter.v1.${snapshotter}/snapshots`;
      assert.deepEqual(dirEntries(dir), []);
    }));
}

Deno.test("ctr snapshots diff writes the changes of a snapshot through the Diff service", () =>
  withDaemon(async (d) => {
    await ok(d, ["snapshots", "prepare", "work"]);
    const mountCmd = await ok(d, ["snapshots", "mounts", "/mnt/x", "work"]);
    const source = /^mount -t bind (\S+) /m.exec(mountCmd)?.[1];
    assert.ok(source, mountCmd);
    Deno.mkdirSync(`${source}/dir`);
    Deno.writeTextFileSync(`${source}/dir/file`, "content");
    const out = await new Deno.Command("ctr", {
      args: ["-a", d.address, "snapshots", "diff", "--keep", "--ref", "my-diff", "work"],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const tar = new Uint8Array(gunzipSync(out.stdout));
    const listing = new Deno.Command("tar", { args: ["-tf", "-"], stdin: "piped", stdout: "piped" })
      .spawn();
    const w = listing.stdin.getWriter();
    await w.write(tar);
    await w.close();
    const names = new TextDecoder().decode((await listing.output()).stdout).trim().split("\n");
    assert.deepEqual(names.sort(), ["dir/", "dir/file"]);
    // The layer is in the content store, labelled with its uncompressed digest.
    const content = await ok(d, ["content", "ls"]);
    const row = content.split("\n").find((l) => l.startsWith(sha256(out.stdout)));
    assert.ok(row, content);
    assert.ok(row.includes(`containerd.io/uncompressed=${sha256(tar)}`), row);
    // The parent and upper views ctr made are gone again.
    assert.deepEqual(Object.keys(await snapshotsLs(d, "overlayfs")), ["work"]);
  }));

Deno.test("ctr events shows snapshot prepare, commit and remove", () =>
  withDaemon(async (d) => {
    const events = await ctrEvents(d);
    try {
      await ok(d, ["snapshots", "prepare", "ev-work"]);
      await ok(d, ["snapshots", "commit", "ev-done", "ev-work"]);
      await ok(d, ["snapshots", "rm", "ev-done"]);
      await events.waitFor(/\/snapshot\/remove/, "/snapshot/remove");
      const text = events.text();
      assert.match(text, /default\s+\/snapshot\/prepare\s+.*"key":"ev-work"/);
      assert.match(text, /default\s+\/snapshot\/commit\s+.*"key":"ev-work","name":"ev-done"/);
      assert.match(text, /default\s+\/snapshot\/remove\s+.*"key":"ev-done"/);
    } finally {
      await events.stop();
    }
  }));

Deno.test("the default snapshotter: ctr follows the namespace label, the server too", () =>
  withImage(async (d, img) => {
    // ctr resolves the default itself (for unpack and run) from the namespace label.
    await ok(d, ["namespaces", "create", "nat", "containerd.io/defaults/snapshotter=native"]);
    await ok(
      d,
      ["images", "import", "--base-name", "docker.io/library/tainerd-tiny", img.archive],
      "nat",
    );
    assert.deepEqual(
      Object.keys(await snapshotsLs(d, "native", "nat")).sort(),
      [...img.chain].sort(),
    );
    assert.deepEqual(await snapshotsLs(d, "overlayfs", "nat"), {});
    const r = await d.ctr(["run", "--rm", img.name, "nat1", "cat", "/etc/greeting"], {
      namespace: "nat",
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hello from layer 2\n");
    // A request without a snapshotter: the server resolves the default the same way.
    const c = d.client("nat");
    try {
      const api = c.service(Snapshots);
      // (gc.root: nothing else would keep them from a collection.)
      const labels = { "containerd.io/gc.root": "test" };
      await api.prepare({ snapshotter: "", key: "by-server", parent: "", labels });
      const info = await api.stat({ snapshotter: "native", key: "by-server" });
      assert.equal(info.info?.name, "by-server");
      c.namespace = "default";
      await api.prepare({ snapshotter: "", key: "plain", parent: "", labels });
      assert.equal(
        (await api.stat({ snapshotter: "overlayfs", key: "plain" })).info?.name,
        "plain",
      );
      await assert.rejects(api.stat({ snapshotter: "zfs", key: "plain" }), /not loaded/);
    } finally {
      c.close();
    }
    const bad = await d.ctr(["snapshots", "--snapshotter", "zfs", "ls"]);
    assert.notEqual(bad.code, 0);
    assert.match(bad.stderr, /"zfs" is not loaded: invalid argument/);
  }));

Deno.test("ctr images import unpacks an OCI image; ctr run runs it; GC sweeps it once unused", () =>
  withImage(async (d, img) => {
    const out = await ok(d, [
      "images",
      "import",
      "--base-name",
      "docker.io/library/tainerd-tiny",
      img.archive,
    ]);
    assert.match(
      out,
      /unpacking docker\.io\/library\/tainerd-tiny:v1 \(sha256:[0-9a-f]{64}\)\.\.\.done/,
    );
    assert.match(await ok(d, ["images", "ls", "-q"]), /^docker\.io\/library\/tainerd-tiny:v1$/m);
    // The chain, each link committed on its parent.
    const [l1, l2] = img.chain;
    assert.deepEqual(await snapshotsLs(d, "overlayfs"), {
      [l1]: ["", "Committed"],
      [l2]: [l1, "Committed"],
    });
    // The layers carry their uncompressed digests, the config its snapshot chain.
    const content = await ok(d, ["content", "ls"]);
    for (const diffID of img.diffIDs) {
      assert.ok(content.includes(`containerd.io/uncompressed=${diffID}`), content);
    }
    assert.ok(content.includes(`containerd.io/gc.ref.snapshot.overlayfs=${l2}`), content);

    let r = await d.ctr(["run", "--rm", img.name, "run1", "echo", "hi"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hi\n");
    r = await d.ctr([
      "run",
      "--rm",
      img.name,
      "run2",
      "sh",
      "-c",
      "cat /etc/greeting; ls /etc; echo $PATH",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hello from layer 2\ngreeting\npasswd\n/bin\n");
    // The same image with the native snapshotter: ctr unpacks it there first.
    r = await d.ctr([
      "run",
      "--snapshotter",
      "native",
      "--rm",
      img.name,
      "run3",
      "cat",
      "/etc/greeting",
    ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hello from layer 2\n");
    assert.deepEqual(Object.keys(await snapshotsLs(d, "native")).sort(), [l1, l2].sort());
    assert.deepEqual(await ok(d, ["containers", "ls", "-q"]), "");
    // What the image references survives a collection: its content and both chains.
    await collectGarbage(d);
    assert.deepEqual((await ok(d, ["content", "ls", "-q"])).trim().split("\n").sort(), img.blobs);
    assert.deepEqual(Object.keys(await snapshotsLs(d, "overlayfs")).sort(), [l1, l2].sort());
    assert.deepEqual(Object.keys(await snapshotsLs(d, "native")).sort(), [l1, l2].sort());

    // A container keeps its snapshot (and the chain below it) after the image goes.
    await ok(d, ["containers", "create", img.name, "keeper"]);
    assert.deepEqual((await snapshotsLs(d, "overlayfs"))["keeper"], [l2, "Active"]);
    await ok(d, ["images", "rm", "--sync", img.name]);
    assert.equal(await ok(d, ["images", "ls", "-q"]), "");
    assert.equal((await ok(d, ["content", "ls", "-q"])).trim(), "", "the content is swept");
    assert.deepEqual(
      Object.keys(await snapshotsLs(d, "overlayfs")).sort(),
      [l1, l2, "keeper"].sort(),
    );
    assert.deepEqual(await snapshotsLs(d, "native"), {}, "nothing holds the native chain");
    // Once the container is gone, so is its chain: records, then backend directories.
    await ok(d, ["containers", "rm", "keeper"]);
    await collectGarbage(d);
    assert.deepEqual(await snapshotsLs(d, "overlayfs"), {});
    for (const name of ["overlayfs", "native"]) {
      const dir = `${d.root}/io.containerd.snapshotter.v1.${name}/snapshots`;
      assert.deepEqual(dirEntries(dir), []);
    }
    const blobs = `${d.root}/io.containerd.content.v1.content/blobs/sha256`;
    assert.deepEqual(dirEntries(blobs), []);
  }));

Deno.test("an image imported in two namespaces is unpacked and collected separately", () =>
  withImage(async (d, img) => {
    const args = ["images", "import", "--base-name", "docker.io/library/tainerd-tiny", img.archive];
    await ok(d, args);
    await ok(d, args, "second");
    const [l1, l2] = img.chain;
    assert.deepEqual(
      Object.keys(await snapshotsLs(d, "overlayfs", "second")).sort(),
      [l1, l2].sort(),
    );
    const dir = `${d.root}/io.containerd.snapshotter.v1.overlayfs/snapshots`;
    assert.equal(dirEntries(dir).length, 4, "each namespace has its own chain");
    await ok(d, ["images", "rm", "--sync", img.name]);
    assert.deepEqual(await snapshotsLs(d, "overlayfs"), {});
    assert.equal(dirEntries(dir).length, 2, "--sync collected the backend snapshots too");
    const r = await d.ctr(["run", "--rm", img.name, "still", "cat", "/etc/greeting"], {
      namespace: "second",
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "hello from layer 2\n");
  }));
