/**
 * Golden tests of the differ against GNU tar: layers made by GNU tar in pax, gnu and ustar
 * formats (xattrs where the format has them, devices, a FIFO, hard links, long names and
 * link targets, huge ids where the format encodes them, and whiteouts made by hand as `.wh.`
 * files) applied by {@link applyLayer} give the same tree as GNU tar's own extraction (names,
 * types, modes, owners, mtimes to the second, xattrs, contents, device numbers, link groups);
 * whiteouts delete as OCI says; and the layers {@link diffDirs} makes (all xattrs kept) re-apply
 * to the same tree.
 *
 * The layers are benign and built here; everything happens in temporary directories.
 */

import assert from "node:assert/strict";
import {
  bash,
  collector,
  describeTree,
  sh,
  streamOf,
  withTempDir,
} from "../snapshots/test_helpers.ts";
import { applyLayer } from "./apply.ts";
import { diffDirs, diffMounts } from "./diff.ts";
import { withReadonlyTempMount } from "../sys/mount.ts";

type Format = "pax" | "gnu" | "ustar";

const TAR_FORMAT: Record<Format, string> = { pax: "posix", gnu: "gnu", ustar: "ustar" };

/** A name component of `n` characters. */
const comp = (c: string, n: number) => c.repeat(n);

/**
 * The base tree for `format`: everything the format can carry. ustar has no xattrs, no ids
 * above 2^21-1 and no names beyond 100 (+155 prefix) or link targets beyond 100 characters.
 */
async function makeBase(dir: string, format: Format): Promise<void> {
  const ustarLong = `long/${comp("a", 60)}/${comp("b", 60)}/${comp("c", 20)}`; // + 99: 250
  const longDir = `long/${comp("p", 120)}/${comp("q", 200)}`;
  await bash(`
    cd ${JSON.stringify(dir)}
    mkdir -p d/sub sticky 'sp ace/ünï' deep/a/b/c opq/sub ${ustarLong}
    printf 'hello\\n' > d/file
    printf 'old' > d/empty
    head -c 200000 /dev/urandom > d/big
    printf 'x' > 'sp ace/ünï/fïle'
    printf 'deep' > deep/a/b/c/leaf
    printf 'o1' > opq/old1
    printf 'o2' > opq/sub/x
    printf 'long' > ${ustarLong}/${comp("f", 99)}
    ln d/file d/hard
    ln d/file sticky/hard2
    ln -s ../d/file d/sym
    ln -s /nonexistent/target abs-sym
    mknod chr c 1 3
    mknod blk b 7 0
    mknod bigdev c 240 1048575
    mkfifo fifo
    chmod 0600 fifo
    chown 1000:2000 d/file d/sub
    chown 65534:65534 d/big fifo
    chown -h 123:456 d/sym
    # (after chown, which clears setuid and setgid)
    chmod 4755 d/file
    chmod 2750 d/sub
    chmod 1777 sticky
    chmod 0640 d/empty
    chmod 0600 d/big
    ${
    format === "ustar" ? "" : `
    mkdir -p ${longDir}
    printf 'deeper' > ${longDir}/${comp("r", 250)}
    ln ${longDir}/${comp("r", 250)} hard-to-long
    ln -s ${longDir}/${comp("r", 250)} sym-to-long
    touch big-uid
    chown 4000000000:4000000001 big-uid
    touch -d '2019-05-06 07:08:09' big-uid ${longDir}/${comp("r", 250)}
    touch -h -d '2019-05-06 07:08:09' sym-to-long
    touch -d '2016-01-01 00:00:00' ${longDir} long/${comp("p", 120)}
    `
  }
    ${
    format === "pax"
      ? `
    setfattr -n user.bin -v 0x00ff00ff41 d/file
    setfattr -n user.text -v hello d/sub
    setfattr -n user.empty d/empty
    setfattr -n user.eq -v 0x3d0a3d d/big
    `
      : ""
  }
    touch -d '2021-02-03 04:05:06.75' d/file
    touch -d '2019-05-06 07:08:09' d/big d/empty 'sp ace/ünï/fïle' deep/a/b/c/leaf opq/old1 opq/sub/x ${ustarLong}/${
    comp("f", 99)
  }
    touch -h -d '2020-01-01 00:00:00' d/sym abs-sym
    touch -d '2018-01-01 00:00:00' chr blk bigdev fifo
    touch -d '2017-03-04 05:06:07' d/sub sticky 'sp ace/ünï' 'sp ace' deep/a/b/c deep/a/b deep/a deep opq/sub opq ${ustarLong} long/${
    comp("a", 60)
  }/${comp("b", 60)} long/${comp("a", 60)} long d
  `);
}

/**
 * The second layer, as a directory whose `.wh.` files are OCI whiteouts made by hand: a file
 * (one link of a hard-link group), a whole directory, a missing name, an opaque directory
 * with a new entry, plus an added file and a changed one.
 */
async function makeUpper(dir: string): Promise<void> {
  await bash(`
    cd ${JSON.stringify(dir)}
    mkdir -p d opq
    : > d/.wh.file
    : > .wh.deep
    : > .wh.never-existed
    : > opq/.wh..wh..opq
    printf 'new in opaque' > opq/new
    printf 'added' > d/added
    printf 'changed now' > d/empty
    chown 7:8 d/added
    chmod 0604 d/empty
    touch -d '2022-06-07 08:09:10' d/added d/empty opq/new
    touch -d '2022-06-07 08:09:11' d opq .
  `);
}

async function gnuTar(src: string, out: string, format: Format): Promise<Uint8Array> {
  await sh("tar", [
    ...(format === "pax" ? ["--xattrs", "--xattrs-include=*"] : []),
    `--format=${TAR_FORMAT[format]}`,
    "--numeric-owner",
    "-C",
    src,
    "-cf",
    out,
    ".",
  ]);
  return Deno.readFileSync(out);
}

/** GNU tar's own extraction, as root keeps everything: owners, modes, xattrs. */
async function tarExtract(layer: string, into: string, extra: string[] = []): Promise<void> {
  await sh("tar", [
    "-x",
    "--xattrs",
    "--xattrs-include=*",
    "--same-owner",
    "--numeric-owner",
    "-p",
    ...extra,
    "-C",
    into,
    "-f",
    layer,
  ]);
}

/**
 * The reference for a layer with whiteouts: deletions first (`.wh.X` removes X, an opaque
 * marker empties its directory of what lies below), then GNU tar extracts the rest.
 */
async function referenceApply(layer: string, into: string): Promise<void> {
  const names = (await sh("tar", ["-tf", layer])).split("\n").filter(Boolean);
  for (const name of names) {
    const clean = name.replace(/^\.\//, "");
    const slash = clean.lastIndexOf("/");
    const parent = slash < 0 ? "" : clean.slice(0, slash + 1);
    const base = clean.slice(slash + 1);
    if (base === ".wh..wh..opq") {
      for (const e of [...Deno.readDirSync(`${into}/${parent}`)]) {
        Deno.removeSync(`${into}/${parent}${e.name}`, { recursive: true });
      }
    } else if (base.startsWith(".wh.")) {
      try {
        Deno.removeSync(`${into}/${parent}${base.slice(4)}`, { recursive: true });
      } catch (err) {
        if (!(err instanceof Deno.errors.NotFound)) throw err; // nothing to delete: fine
      }
    }
  }
  await tarExtract(layer, into, ["--exclude=.wh.*"]);
}

/** The tree's description with mtimes cut to seconds (ustar and gnu carry no more). */
async function describe(dir: string): Promise<string[]> {
  return (await describeTree(dir)).map((l) => l.replace(/ mtime=(\d+)\.\d+/, " mtime=$1"));
}

async function apply(layer: Uint8Array, into: string): Promise<void> {
  await applyLayer(streamOf(layer, 65_521), into);
}

function mkdirs(root: string, ...names: string[]): string[] {
  return names.map((n) => {
    Deno.mkdirSync(`${root}/${n}`);
    return `${root}/${n}`;
  });
}

for (const format of ["pax", "gnu", "ustar"] as const) {
  Deno.test(`applyLayer() matches GNU tar's extraction of ${format} layers`, async () => {
    await withTempDir(async (dir) => {
      const [src, upper, ours, ref] = mkdirs(dir, "src", "upper", "ours", "ref");
      await makeBase(src, format);
      await makeUpper(upper);
      const layer1 = await gnuTar(src, `${dir}/layer1.tar`, format);
      const layer2 = await gnuTar(upper, `${dir}/layer2.tar`, format);

      await apply(layer1, ours);
      await tarExtract(`${dir}/layer1.tar`, ref);
      const base = await describe(ref);
      assert.deepEqual(await describe(ours), base);
      // Both are the source tree: nothing was lost on the way.
      assert.deepEqual(await describe(src), base);
      if (format === "pax") assert.ok(base.some((l) => l.includes("user.bin=0x00ff00ff41")));
      if (format !== "ustar") {
        assert.ok(base.some((l) => /^big-uid .* 4000000000:4000000001/.test(l)));
      }
      assert.ok(base.some((l) => l.startsWith("bigdev c 644 0:0") && l.includes("dev=f0:fffff")));
      assert.ok(base.some((l) => l.startsWith("d/file f 4755 1000:2000") && l.includes("links=")));

      await apply(layer2, ours);
      await referenceApply(`${dir}/layer2.tar`, ref);
      const after = await describe(ref);
      assert.deepEqual(await describe(ours), after);
      // The deletion semantics, spelled out.
      const names = after.map((l) => l.split(" ")[0]);
      for (const gone of ["d/file", "deep", "deep/a/b/c/leaf", "opq/old1", "opq/sub"]) {
        assert.ok(!names.includes(gone), gone);
      }
      for (const kept of ["d/hard", "sticky/hard2", "opq", "opq/new", "d/added", "d/big"]) {
        assert.ok(names.includes(kept), kept);
      }
      assert.ok(!names.some((n) => n.includes(".wh.")));
      assert.ok(
        after.some((l) =>
          l.startsWith("d/hard f 4755 1000:2000") && l.includes("links=d/hard,sticky/hard2")
        ),
      );
    });
  });

  Deno.test(`diffDirs() and diffMounts() layers of ${format} trees re-apply to the same tree`, async () => {
    await withTempDir(async (dir) => {
      const [src, upper, empty, lower, top, copy, full] = mkdirs(
        dir,
        "src",
        "upper",
        "empty",
        "lower",
        "top",
        "copy",
        "full",
      );
      await makeBase(src, format);
      await makeUpper(upper);
      const layer1 = await gnuTar(src, `${dir}/layer1.tar`, format);
      const layer2 = await gnuTar(upper, `${dir}/layer2.tar`, format);
      await apply(layer1, lower);
      await apply(layer1, top);
      await apply(layer2, top);

      // The whole tree as one layer, onto nothing.
      let sink = collector();
      // (xattrs "all": containerd's default writes only security.capability.)
      await diffDirs(empty, lower, sink.stream, { compression: "none", xattrs: "all" });
      await apply(sink.bytes(), full);
      assert.deepEqual(await describe(full), await describe(lower));

      // The changes of the second layer, onto a fresh copy of the base.
      sink = collector();
      const r = await diffDirs(lower, top, sink.stream, { compression: "gzip", xattrs: "all" });
      assert.equal(r.compression, "gzip");
      await apply(layer1, copy);
      await apply(sink.bytes(), copy);
      assert.deepEqual(await describe(copy), await describe(top));

      // The same layer applied into an overlay over the base (overlay whiteouts in the upper
      // dir), then diffMounts (the upper-dir fast path), re-applied onto another copy.
      const [u, w, copy2] = mkdirs(dir, "u", "w", "copy2");
      const lowerMounts = [{ type: "bind", source: lower, options: ["rbind", "ro"] }];
      const overlay = [{
        type: "overlay",
        source: "overlay",
        options: [`lowerdir=${lower}`, `upperdir=${u}`, `workdir=${w}`],
      }];
      await applyLayer(streamOf(layer2, 65_521), overlay);
      const viaOverlay = await withReadonlyTempMount(overlay, (root) => describe(root));
      assert.deepEqual(viaOverlay, await describe(top));
      const sink2 = collector();
      await diffMounts(lowerMounts, overlay, sink2.stream, { compression: "zstd", xattrs: "all" });
      await apply(layer1, copy2);
      await apply(sink2.bytes(), copy2);
      assert.deepEqual(await describe(copy2), viaOverlay);
      const mountinfo = Deno.readTextFileSync("/proc/self/mountinfo");
      assert.ok(!mountinfo.includes(dir), "a temporary mount was left behind");

      // And GNU tar reads the diff as a layer with whiteouts.
      Deno.writeFileSync(`${dir}/diff.tgz`, sink.bytes());
      const names = (await sh("tar", ["-tzf", `${dir}/diff.tgz`])).split("\n").filter(Boolean)
        .map((n) => n.replace(/^\.\//, "").replace(/\/$/, ""));
      for (const wh of ["d/.wh.file", ".wh.deep"]) assert.ok(names.includes(wh), wh);
    });
  });
}
