/**
 * Hostile layers, run by `apply_hostile_test.ts` inside a private mount namespace where `/` is
 * read-only and only a tmpfs (`$TMPDIR`) is writable: should containment ever regress, an
 * escaping write fails with EROFS instead of touching the host. Refuses to run elsewhere.
 *
 * @module
 */

import assert from "node:assert/strict";
import { type TarWriterEntry, writeTar } from "../archive/tar/mod.ts";
import { isKind } from "../plugins/errdefs.ts";
import { OverlaySnapshotter } from "../snapshots/overlay.ts";
import { bash, describeTree, readAll, streamOf, withTempDir } from "../snapshots/test_helpers.ts";
import { applyLayer } from "./apply.ts";

const enc = new TextEncoder();

/** Throws unless `/` is read-only here (the sandbox of `apply_hostile_test.ts`). */
function assertSandboxed(): void {
  if (!Deno.env.get("TAINERD_HOSTILE_SANDBOX")) {
    throw new Error("Run hostile layer cases through diff/apply_hostile_test.ts only");
  }
  try {
    Deno.mkdirSync("/.tainerd-sandbox-probe");
  } catch (err) {
    if (/read-only|EROFS/i.test(String(err))) return;
    throw err;
  }
  Deno.removeSync("/.tainerd-sandbox-probe");
  throw new Error("Refusing to run hostile layer cases: / is writable");
}

function file(name: string, data = "pwned"): TarWriterEntry {
  return { header: { name }, body: enc.encode(data) };
}
function dir(name: string): TarWriterEntry {
  return { header: { name, type: "5" } };
}
function symlink(name: string, target: string): TarWriterEntry {
  return { header: { name, type: "2", linkname: target } };
}
function hardlink(name: string, target: string): TarWriterEntry {
  return { header: { name, type: "1", linkname: target } };
}
function whiteout(name: string): TarWriterEntry {
  return { header: { name } };
}

/**
 * Hostile layers; `OUT` stands for the absolute path of the sentinel directory next to the
 * root, `OUTREL` for it relative to the root.
 */
const HOSTILE: [string, TarWriterEntry[]][] = [
  ["../ in names", [file("../evil"), file("../../../../../OUTREL/evil"), file("a/../../evil2")]],
  ["absolute names", [file("/abs"), file("OUT/sentinel"), file("//OUT/new")]],
  ["a -> ../../.. then a/x", [symlink("a", "../../.."), file("a/x"), file("a/OUTREL/sentinel")]],
  ["a -> /etc then a/passwd", [symlink("a", "/etc"), file("a/passwd"), dir("a/cron.d/")]],
  ["a -> OUT then a/sentinel", [symlink("a", "OUT"), file("a/sentinel"), file("a/fresh")]],
  ["relative link to OUT", [symlink("b", "../OUTREL"), file("b/sentinel"), file("b/sub/x")]],
  ["link chain", [symlink("x", "y/../../.."), symlink("y", "OUT"), file("x/OUTREL/sentinel")]],
  ["hardlink to /etc/passwd", [hardlink("h", "/etc/passwd")]],
  ["hardlink through ..", [hardlink("h", "../../../../etc/passwd")]],
  ["hardlink through a symlink", [symlink("s", "OUT"), hardlink("h", "s/sentinel")]],
  ["hardlink to an escaping symlink", [
    symlink("s", "OUT/sentinel"),
    hardlink("h", "s"),
    file("h"),
  ]],
  ["whiteout of ..", [whiteout(".wh..."), whiteout("sub/.wh..")]],
  ["whiteout of .", [whiteout("sub/.wh..")]],
  ["whiteout named ../x", [whiteout("../.wh.sentinel"), whiteout("../../OUTREL/.wh.sentinel")]],
  ["whiteout through a symlink", [symlink("w", "OUT"), whiteout("w/.wh.sentinel")]],
  ["opaque through a symlink", [symlink("o", "OUT"), whiteout("o/.wh..wh..opq")]],
  ["symlink loop", [symlink("l1", "l2"), symlink("l2", "l1"), file("l1/x")]],
  ["dir replaced by a symlink", [dir("d/"), file("d/f"), symlink("d", "OUT"), file("d/g")]],
  ["file then symlink at the same name", [
    file("same"),
    symlink("same", "OUT/sentinel"),
    file("same"),
  ]],
  ["device and fifo outside", [
    { header: { name: "../dev", type: "3", devmajor: 1, devminor: 3 } },
    { header: { name: "/fifo", type: "6" } },
  ]],
];

function substitute(entries: TarWriterEntry[], out: string, outRel: string): TarWriterEntry[] {
  const fix = (s: string | undefined) =>
    s?.replace("OUTREL", outRel).replace(/(^|\/)OUT/, (_m, p) => p + out);
  return entries.map((e) => ({
    header: { ...e.header, name: fix(e.header.name)!, linkname: fix(e.header.linkname) },
    body: e.body,
  }));
}

async function etcSnapshot(): Promise<string> {
  return await bash(`sha256sum /etc/passwd; ls -la --time-style=full-iso /etc | sha256sum`);
}

for (const mode of ["plain", "overlay"] as const) {
  for (const [what, entries] of HOSTILE) {
    Deno.test(`applyLayer() (${mode}) contains a hostile layer: ${what}`, async () => {
      assertSandboxed();
      await withTempDir(async (tmp) => {
        const out = `${tmp}/outside`;
        await bash(
          `
          mkdir -p outside/sub && echo keep > outside/sentinel && echo keep > outside/sub/x
          touch -d @1500000000 outside/sentinel outside/sub/x outside/sub outside
        `,
          tmp,
        );
        const before = await describeTree(out, { root: true });
        const etcBefore = await etcSnapshot();
        const tar = await readAll(writeTar(substitute(entries, out, "../outside")));

        let sn: OverlaySnapshotter | null = null;
        let root: string;
        let target: string | Parameters<typeof applyLayer>[1];
        if (mode === "plain") {
          root = `${tmp}/root`;
          Deno.mkdirSync(root);
          target = root;
        } else {
          sn = await OverlaySnapshotter.open(`${tmp}/sn`);
          const base = await sn.prepare("base", "");
          Deno.writeTextFileSync(`${base[0].source}/lower-file`, "lower");
          await sn.commit("base-c", "base");
          target = await sn.prepare("active", "base-c");
          root = `${tmp}/sn/snapshots/2/fs`;
        }
        try {
          await applyLayer(streamOf(tar), target);
        } catch (err) {
          assert.ok(isKind(err, "InvalidArgument"), `unexpected error: ${err}`);
        } finally {
          await sn?.close();
        }
        // Nothing outside the root changed.
        assert.deepEqual(await describeTree(out, { root: true }), before);
        const beside = [...Deno.readDirSync(tmp)].map((e) => e.name).sort();
        assert.deepEqual(beside, mode === "plain" ? ["outside", "root"] : ["outside", "sn"]);
        for (const p of ["/evil", "/evil2", "/abs", "/x", "/h", "/dev/.wh", "/fifo", "/tmp/evil"]) {
          assert.throws(() => Deno.lstatSync(p), Deno.errors.NotFound, p);
        }
        assert.equal(await etcSnapshot(), etcBefore);
        assert.equal(Deno.readTextFileSync(`${out}/sentinel`), "keep\n");
        // Whatever was written is inside the root.
        const real = Deno.realPathSync(root);
        for (const line of await describeTree(root)) {
          const path = line.split(" ")[0];
          assert.ok(Deno.realPathSync(`${root}/${path}`.replace(/\/[^/]*$/, "")).startsWith(real));
        }
      });
    });
  }
}
