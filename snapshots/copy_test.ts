import assert from "node:assert/strict";
import { copyDir } from "./copy.ts";
import { lstatx } from "./statx.ts";
import { bash, describeTree, makeRichTree, withTempDir } from "./test_helpers.ts";
import { diskUsage } from "./usage.ts";

Deno.test("copyDir() makes an exact copy: owners, modes, xattrs, ns times, devices, links", async () => {
  await withTempDir(async (dir) => {
    Deno.mkdirSync(`${dir}/src`);
    Deno.mkdirSync(`${dir}/dst`);
    await makeRichTree(`${dir}/src`);
    await bash(`chmod 0751 src && chown 12:34 src && touch -d '2016-01-01 00:00:00.1' src`, dir);
    const before = await describeTree(`${dir}/src`, { root: true });
    await copyDir(`${dir}/src`, `${dir}/dst`);
    assert.deepEqual(await describeTree(`${dir}/dst`, { root: true }), before);
    assert.deepEqual(await describeTree(`${dir}/src`, { root: true }), before);
    assert.deepEqual(lstatx(`${dir}/dst/d/file`).mtime, { sec: 1612325106, nsec: 123456789 });
    // Hard links stay links: the copy takes as much space as the original.
    assert.equal((await diskUsage(`${dir}/dst`)).inodes, (await diskUsage(`${dir}/src`)).inodes);
  });
});

Deno.test("copyDir() copies a tree of many files with limited concurrency", async () => {
  await withTempDir(async (dir) => {
    await bash(
      `mkdir -p src dst && cd src && for d in $(seq 20); do mkdir d$d; for f in $(seq 50); do echo $d$f > d$d/f$f; done; done`,
      dir,
    );
    await copyDir(`${dir}/src`, `${dir}/dst`, { concurrency: 3 });
    assert.deepEqual(await describeTree(`${dir}/dst`), await describeTree(`${dir}/src`));
  });
});

Deno.test("diskUsage() counts inodes once and sizes in 512-byte blocks", async () => {
  await withTempDir(async (dir) => {
    await bash(
      `mkdir t && head -c 100000 /dev/urandom > t/a && ln t/a t/b && mkdir t/d && touch t/d/e`,
      dir,
    );
    const u = await diskUsage(`${dir}/t`);
    assert.equal(u.inodes, 4);
    const du = Number((await bash(`du -s --block-size=1 t | cut -f1`, dir)).trim());
    assert.equal(u.size, du);
    await assert.rejects(diskUsage(`${dir}/missing`));
  });
});
