import assert from "node:assert/strict";
import { isKind } from "../plugins/errdefs.ts";
import { MetaStore } from "./storage.ts";
import { withTempDir } from "./test_helpers.ts";

function throwsKind(fn: () => unknown, kind: string): void {
  assert.throws(fn, (err) => isKind(err, kind as never));
}

Deno.test("MetaStore keeps containerd's semantics: ids, parents, commit, remove", async () => {
  await withTempDir((dir) => {
    const ms = new MetaStore(`${dir}/metadata.db`);
    try {
      const a = ms.createSnapshot("active", "a", "", { x: "1" });
      assert.deepEqual(a, { id: "1", kind: "active", parentIDs: [] });
      throwsKind(() => ms.createSnapshot("active", "a", ""), "AlreadyExists");
      throwsKind(() => ms.createSnapshot("active", "b", "a"), "InvalidArgument");
      throwsKind(() => ms.createSnapshot("active", "b", "nope"), "NotFound");
      throwsKind(() => ms.createSnapshot("committed", "b", ""), "InvalidArgument");
      assert.equal(ms.commitActive("a", "c1", { size: 10, inodes: 2 }, { l: "v" }), "1");
      throwsKind(() => ms.getInfo("a"), "NotFound");
      const c1 = ms.getInfo("c1");
      assert.equal(c1.id, "1");
      assert.equal(c1.info.kind, "committed");
      assert.deepEqual(c1.info.labels, { l: "v" });
      assert.deepEqual(c1.usage, { size: 10, inodes: 2 });
      const b = ms.createSnapshot("active", "b", "c1");
      assert.deepEqual(b.parentIDs, ["1"]);
      ms.commitActive("b", "c2", { size: 0, inodes: 0 });
      const v = ms.createSnapshot("view", "v", "c2");
      assert.deepEqual(v.parentIDs, ["2", "1"]);
      assert.deepEqual(ms.getSnapshot("v"), v);
      throwsKind(() => ms.getSnapshot("c2"), "FailedPrecondition");
      throwsKind(() => ms.commitActive("v", "c3", { size: 0, inodes: 0 }), "FailedPrecondition");
      throwsKind(() => ms.commitActive("v", "c1", { size: 0, inodes: 0 }), "AlreadyExists");
      throwsKind(() => ms.remove("c2"), "FailedPrecondition");
      assert.deepEqual(ms.remove("v"), { id: "3", kind: "view" });
      assert.deepEqual(ms.remove("c2"), { id: "2", kind: "committed" });
      // Ids are never reused, even for the highest one.
      assert.equal(ms.createSnapshot("active", "n", "").id, "4");
      assert.deepEqual([...ms.idMap()].sort(), [["1", "c1"], ["4", "n"]]);
      assert.deepEqual(ms.walkInfo(["kind==active"]).map((i) => i.name), ["n"]);
      // A failing transaction changes nothing.
      assert.throws(() =>
        ms.transaction(() => {
          ms.createSnapshot("active", "t", "");
          throw new Error("boom");
        }, true)
      );
      assert.equal(ms.exists("t"), false);
    } finally {
      ms.close();
    }
    throwsKind(() => ms.getInfo("c1"), "FailedPrecondition");
    // Reopening keeps everything.
    const again = new MetaStore(`${dir}/metadata.db`);
    try {
      assert.equal(again.getInfo("c1").info.labels.l, "v");
      // Id 5 was only used by the rolled-back transaction.
      assert.equal(again.createSnapshot("active", "m", "").id, "5");
    } finally {
      again.close();
    }
  });
});
