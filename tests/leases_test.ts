/**
 * Leases end to end: the real ctr and our client against a real daemon, with the garbage
 * collector releasing what a lease held.
 */

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { RemoteWriter } from "../client/content.ts";
import { TainerdClient } from "../client/client.ts";
import { type ErrorKind, TainerdError } from "../plugins/errdefs.ts";
import { delay, type TestDaemon, withDaemon } from "./harness.ts";

function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

function kind(expected: ErrorKind, message?: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, expected, `wrong kind for: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  };
}

async function waitFor(what: string, check: () => Promise<boolean>, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await delay(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A daemon whose startup garbage collection is done. */
function withGcDaemon(fn: (d: TestDaemon) => Promise<void>): Promise<void> {
  return withDaemon(async (d) => {
    await waitFor(
      "the startup garbage collection",
      async () => (await d.log()).includes("garbage collected"),
    );
    await fn(d);
  });
}

/** Writes `data` through our client, under `lease` when given. */
async function put(d: TestDaemon, data: Uint8Array, lease?: string): Promise<string> {
  const c = new TainerdClient({ address: d.address, namespace: "default", lease });
  try {
    const w = await RemoteWriter.open(c, `ref-${sha256(data)}`, { total: data.byteLength });
    await w.write(data);
    return await w.commit(data.byteLength, sha256(data));
  } finally {
    c.close();
  }
}

async function blobExists(d: TestDaemon, digest: string): Promise<boolean> {
  try {
    await Deno.lstat(
      `${d.root}/io.containerd.content.v1.content/blobs/sha256/${digest.slice("sha256:".length)}`,
    );
    return true;
  } catch {
    return false;
  }
}

Deno.test("ctr leases create, ls and rm round-trip", () =>
  withGcDaemon(async (d) => {
    let r = await d.ctr(["leases", "create", "--id", "mine", "team=a", "tier=b"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "mine");
    r = await d.ctr(["leases", "create", "--expires", "0"]);
    assert.equal(r.code, 0, r.stderr);
    const random = r.stdout.trim();
    assert.match(random, /^\d+-[A-Za-z0-9_-]{4}$/);
    r = await d.ctr(["leases", "ls"]);
    assert.match(r.stdout, /^ID\s+CREATED AT\s+LABELS/);
    assert.match(
      r.stdout,
      /^mine\s+\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)\s+containerd\.io\/gc\.expire=\S+,team=a,tier=b\s*$/m,
    );
    assert.match(r.stdout, new RegExp(`^${random}\\s+\\S+\\s+-\\s*$`, "m"));
    r = await d.ctr(["leases", "ls", "-q", "id==mine"]);
    assert.equal(r.stdout.trim(), "mine");
    r = await d.ctr(["leases", "ls", "-q", "labels.team==a"]);
    assert.equal(r.stdout.trim(), "mine");
    r = await d.ctr(["leases", "create", "--id", "mine"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already exists/);
    r = await d.ctr(["leases", "rm", "mine", random]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split("\n"), ["mine", random]);
    assert.equal((await d.ctr(["leases", "ls", "-q"])).stdout, "");
    r = await d.ctr(["leases", "rm", "mine"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Cannot delete lease "mine" in namespace "default": not found/);
    // Leases are per namespace; the namespace is created on first use.
    r = await d.ctr(["leases", "create", "--id", "x"], { namespace: "elsewhere" });
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await d.ctr(["leases", "ls", "-q"])).stdout, "");
    assert.match((await d.ctr(["namespaces", "ls", "-q"])).stdout, /^elsewhere$/m);
  }));

Deno.test("content written under a lease survives collections; leases rm --sync frees it", () =>
  withGcDaemon(async (d) => {
    let r = await d.ctr(["leases", "create", "--id", "pull"]);
    assert.equal(r.code, 0, r.stderr);
    const held = await put(d, new TextEncoder().encode("held by the lease"), "pull");
    const loose = await put(d, new TextEncoder().encode("held by nothing"));
    const c = d.client();
    try {
      const { resources } = await c.leases.listResources({ id: "pull" });
      assert.deepEqual(resources.map((x) => [x.type, x.id]), [["content", held]]);
      // A deletion makes a collection run: the loose blob goes, the leased one stays.
      r = await d.ctr(["leases", "create", "--id", "tmp"]);
      r = await d.ctr(["leases", "rm", "--sync", "tmp"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(await blobExists(d, loose), false);
      assert.equal(await blobExists(d, held), true);
      assert.equal((await d.ctr(["content", "ls", "-q"])).stdout.trim(), held);
      // Resources can be added and removed by hand.
      await c.leases.addResource({ id: "pull", resource: { type: "ingests", id: "some-ref" } });
      await c.leases.addResource({
        id: "pull",
        resource: { type: "snapshots/overlayfs", id: "layer" },
      });
      assert.deepEqual(
        (await c.leases.listResources({ id: "pull" })).resources.map((x) => x.type),
        ["content", "ingests", "snapshots/overlayfs"],
      );
      await c.leases.deleteResource({ id: "pull", resource: { type: "ingests", id: "some-ref" } });
      await assert.rejects(
        () => c.leases.addResource({ id: "pull", resource: { type: "images", id: "x" } }),
        kind("NotImplemented"),
      );
      await assert.rejects(
        () => c.leases.addResource({ id: "nope", resource: { type: "ingests", id: "x" } }),
        kind("NotFound"),
      );
      // Writing under a lease that does not exist fails and creates nothing.
      await assert.rejects(() => put(d, new Uint8Array(3), "no-such-lease"), kind("NotFound"));
    } finally {
      c.close();
    }
    r = await d.ctr(["leases", "rm", "--sync", "pull"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await blobExists(d, held), false);
    assert.equal((await d.ctr(["content", "ls", "-q"])).stdout, "");
  }));

Deno.test("an expired lease no longer holds its content and is removed", () =>
  withGcDaemon(async (d) => {
    let r = await d.ctr(["leases", "create", "--id", "short", "--expires", "1s"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["leases", "create", "--id", "long", "--expires", "1h"]);
    const gone = await put(d, new TextEncoder().encode("short-lived"), "short");
    const kept = await put(d, new TextEncoder().encode("long-lived"), "long");
    await delay(2100); // The expiry label has a resolution of one second.
    r = await d.ctr(["leases", "create", "--id", "tmp"]);
    r = await d.ctr(["leases", "rm", "--sync", "tmp"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(await blobExists(d, gone), false);
    assert.equal(await blobExists(d, kept), true);
    assert.equal((await d.ctr(["leases", "ls", "-q"])).stdout.trim(), "long");
  }));

Deno.test("a lease labelled containerd.io/gc.flat keeps content but not what it references", () =>
  withGcDaemon(async (d) => {
    const child = await put(d, new TextEncoder().encode("child"));
    let r = await d.ctr(["leases", "create", "--id", "flat", "containerd.io/gc.flat=1"]);
    assert.equal(r.code, 0, r.stderr);
    const parent = await put(d, new TextEncoder().encode("parent"), "flat");
    r = await d.ctr(["content", "label", parent, `containerd.io/gc.ref.content.0=${child}`]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["leases", "create", "--id", "tmp"]);
    r = await d.ctr(["leases", "rm", "--sync", "tmp"]);
    assert.equal(await blobExists(d, parent), true);
    assert.equal(await blobExists(d, child), false);
  }));

Deno.test("our CLI: leases create, ls and rm", () =>
  withGcDaemon(async (d) => {
    let r = await d.cli(["leases", "create", "--id", "cli", "k=v"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "cli");
    r = await d.cli(["leases", "create", "-x", "0s"]);
    const random = r.stdout.trim();
    r = await d.cli(["leases", "ls"]);
    assert.match(r.stdout, /^cli\s+\S+Z\s+containerd\.io\/gc\.expire=\S+,k=v$/m);
    assert.match(r.stdout, new RegExp(`^${random}\\s+\\S+\\s+-$`, "m"));
    r = await d.cli(["leases", "ls", "-q", "id==cli"]);
    assert.equal(r.stdout, "cli\n");
    r = await d.cli(["leases", "rm", "--sync", "cli", random]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal((await d.cli(["leases", "ls", "-q"])).stdout, "");
    r = await d.cli(["leases", "rm", "cli"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);
  }));
