/**
 * Tests of pinning network namespaces. The namespaces come from an external `unshare --net`
 * child (never from Deno itself). Needs root.
 *
 * @module
 */

import assert from "node:assert/strict";
import { isKind } from "../../errdefs.ts";
import { isNetns, pinNetns, unpinNetns } from "./netns.ts";
import { mountsUnder, run, spawnNetnsHolder } from "./test_util.ts";

Deno.test("pinNetns() pins a process's netns so that it outlives the process", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tnd-netns-" });
  const holder = await spawnNetnsHolder();
  try {
    const nsLink = await Deno.readLink(`/proc/${holder.pid}/ns/net`);
    const path = await pinNetns(holder.pid, `${tmp}/netns`, "cni-test");
    assert.equal(path, `${tmp}/netns/cni-test`);
    assert.ok(isNetns(path));
    assert.deepEqual(mountsUnder(tmp), [Deno.realPathSync(path)]);
    const seen = await run("nsenter", [`--net=${path}`, "readlink", "/proc/self/ns/net"]);
    assert.equal(seen.trim(), nsLink);

    await holder.stop();
    assert.ok(isNetns(path), "the pinned namespace survives its process");
    const links = await run("nsenter", [`--net=${path}`, "ip", "-o", "link"]);
    assert.match(links, /\blo\b/);
    assert.doesNotMatch(links, /\beth0\b/);

    await unpinNetns(path);
    assert.ok(!isNetns(path));
    await assert.rejects(Deno.stat(path), Deno.errors.NotFound);
    assert.deepEqual(mountsUnder(tmp), []);
    await unpinNetns(path); // already gone: fine
  } finally {
    await holder.stop();
    for (const m of mountsUnder(tmp)) await unpinNetns(m);
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("pinNetns() refuses an existing file and leaves none for a dead pid", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tnd-netns-" });
  const holder = await spawnNetnsHolder();
  try {
    await Deno.writeTextFile(`${tmp}/taken`, "");
    await assert.rejects(
      pinNetns(holder.pid, tmp, "taken"),
      (err) => isKind(err, "AlreadyExists"),
    );
    assert.ok(!isNetns(`${tmp}/taken`));

    const pid = holder.pid;
    await holder.stop();
    await assert.rejects(pinNetns(pid, tmp, "dead"), (err) => {
      assert.ok(isKind(err, "NotFound"), String(err));
      assert.match((err as Error).message, /Cannot pin network namespace of process/);
      return true;
    });
    await assert.rejects(Deno.stat(`${tmp}/dead`), Deno.errors.NotFound);
    await assert.rejects(pinNetns(1, tmp, "../x"), (err) => isKind(err, "InvalidArgument"));
    assert.deepEqual(mountsUnder(tmp), []);
  } finally {
    await holder.stop();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("isNetns() is false for plain files, missing paths and the empty path", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tnd-netns-" });
  try {
    await Deno.writeTextFile(`${tmp}/plain`, "");
    assert.equal(isNetns(`${tmp}/plain`), false);
    assert.equal(isNetns(`${tmp}/missing`), false);
    assert.equal(isNetns(""), false);
    assert.equal(isNetns("/proc/self/ns/net"), true);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});
