/**
 * `tainerd snapshots …` against a daemon, checked against the real ctr on the same snapshots:
 * the same listing, tree, info, mount commands, usage and labels, on both snapshotters.
 */

import assert from "node:assert/strict";
import { type TestDaemon, withDaemon } from "./harness.ts";

async function ok(r: Promise<{ code: number; stdout: string; stderr: string }>, what: string) {
  const res = await r;
  assert.equal(res.code, 0, `${what}: ${res.stderr}`);
  return res.stdout;
}

/** Table rows with their cells (whitespace-separated). */
function cells(text: string): string[][] {
  return text.trim().split("\n").map((l) => l.trim().split(/\s+/));
}

for (const snapshotter of ["overlayfs", "native"]) {
  Deno.test(`tainerd snapshots matches ctr snapshots on ${snapshotter}`, () =>
    withDaemon(async (d: TestDaemon) => {
      const ours = (args: string[]) =>
        ok(d.cli(["snapshots", "--snapshotter", snapshotter, ...args]), `tainerd ${args}`);
      const ctr = (args: string[]) =>
        ok(d.ctr(["snapshots", "--snapshotter", snapshotter, ...args]), `ctr ${args}`);

      const mountCmd = await ours(["prepare", "--target", "/mnt/x", "base-work"]);
      const source = /^mount -t bind (\S+) \/mnt\/x -o (\S+)$/m.exec(mountCmd)?.[1];
      assert.ok(source, mountCmd);
      assert.equal(await ours(["mounts", "/mnt/x", "base-work"]), mountCmd);
      assert.equal(await ctr(["mounts", "/mnt/x", "base-work"]), mountCmd);
      Deno.writeTextFileSync(`${source}/hello`, "world\n");
      await ours(["commit", "base", "base-work"]);
      await ours(["prepare", "child", "base"]);
      const viewJson = JSON.parse(await ours(["view", "--mounts", "look", "base"]));
      assert.equal(viewJson.length, 1);
      assert.ok(viewJson[0].Options.includes("ro"), JSON.stringify(viewJson));
      await ours(["prepare", "grandchild-work", "base"]);
      // The subcommand's own --snapshotter works too.
      await ok(d.cli(["snapshots", "commit", "--snapshotter", snapshotter, "mid", "child"]), "c");
      await ours(["prepare", "leaf", "mid"]);

      const ourLs = await ours(["ls"]);
      const ctrLs = await ctr(["ls"]);
      // Byte for byte (rows come in the same order from the same List).
      assert.equal(ourLs, ctrLs);
      assert.deepEqual(cells(ourLs).slice(1).sort(), [
        ["base", "Committed"],
        ["grandchild-work", "base", "Active"],
        ["leaf", "mid", "Active"],
        ["look", "base", "View"],
        ["mid", "base", "Committed"],
      ]);
      const tree = await ours(["tree"]);
      assert.equal(tree, await ctr(["tree"]));
      assert.deepEqual(
        tree.split("\n").map((l) => l.trimEnd()).filter(Boolean).sort(),
        [
          "  \\_ mid",
          "    \\_ leaf",
          "  \\_ grandchild-work",
          "  \\_ look",
          " base",
        ].sort(),
      );
      assert.equal(await ours(["info", "mid"]), await ctr(["info", "mid"]));
      const info = JSON.parse(await ours(["info", "mid"]));
      assert.deepEqual(Object.keys(info), [
        "Kind",
        "Name",
        "Parent",
        "Labels",
        "Created",
        "Updated",
      ]);
      assert.equal(info.Kind, "Committed");
      assert.equal(info.Parent, "base");

      let labels = await ours(["label", "mid", "app=web", "tier=db"]);
      assert.deepEqual(labels.trim().split(",").filter((l) => !l.startsWith("containerd")), [
        "app=web",
        "tier=db",
      ]);
      labels = await ours(["label", "mid", "tier="]);
      assert.ok(!labels.includes("tier"), labels);
      assert.ok((await ctr(["label", "mid"])).includes("app=web"));

      assert.equal(await ours(["usage", "base"]), await ctr(["usage", "base"]));
      assert.equal(await ours(["usage", "-b"]), await ctr(["usage", "-b"]));
      assert.match(await ours(["usage", "-b", "base"]), /^base\s+\d+\s+\d+\s*$/m);

      // Errors: clear, non-zero.
      let r = await d.cli(["snapshots", "--snapshotter", snapshotter, "rm", "base"]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /failed to remove "base"/);
      r = await d.cli(["snapshots", "--snapshotter", snapshotter, "info", "nope"]);
      assert.notEqual(r.code, 0);
      assert.match(r.stderr, /snapshot "nope".*does not exist/);

      await ours(["rm", "leaf", "mid", "look", "grandchild-work", "base"]);
      assert.equal(await ours(["ls"]), "KEY PARENT KIND \n");
      assert.equal(await ours(["tree"]), "");
    }, {
      // `snapshots view` adds no gc.root label (as ctr's), so a collection may sweep the view
      // mid-test, as containerd would: keep the scheduler idle during this output comparison.
      config: [
        `[plugins."io.containerd.gc.v1.scheduler"]`,
        `startup_delay = "1h"`,
        `schedule_delay = "1h"`,
        `periodic_interval = "0s"`,
      ].join("\n"),
    }));
}
