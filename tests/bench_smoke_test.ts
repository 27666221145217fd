/**
 * The benchmark at toy sizes (`bench/run.ts --smoke --no-save`): every figure must still run
 * against both daemons and produce numbers, and everything it started must be gone after. It
 * measures nothing worth reading and asserts no timing (the real run is `deno task bench`).
 * Skipped where containerd, ctr, docker-registry or h2load are missing (scripts/setup.sh
 * installs them).
 *
 * @module
 */

import assert from "node:assert/strict";
import { have } from "./harness.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const needed = ["containerd", "ctr", "docker-registry", "h2load", "runc", "skopeo"];

function tbenchDirs(): string[] {
  return [...Deno.readDirSync("/tmp")].map((e) => e.name).filter((n) => n.startsWith("tbench-"));
}

Deno.test({
  name: "bench --smoke: every figure runs on both daemons and cleans up",
  ignore: Deno.uid() !== 0 || !needed.every(have),
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const before = tbenchDirs();
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", `${ROOT}bench/run.ts`, "--smoke", "--no-save"],
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr.slice(-3000));
    // | # | metric | containerd | tainerd | ratio | notes |
    const rows = stdout.split("\n").filter((l) => /^\| [1-6] \|/.test(l)).map((l) =>
      l.split("|").map((c) => c.trim())
    );
    for (let fig = 1; fig <= 6; fig++) {
      assert.ok(rows.some((r) => r[1] === String(fig)), `figure ${fig} in:\n${stdout}`);
    }
    for (const r of rows) {
      const [, fig, metric, containerd, tainerd, ratio] = r;
      assert.doesNotMatch(`${containerd} ${tainerd}`, /n\/a|failed/i, `figure ${fig}: ${metric}`);
      assert.match(tainerd, /^(\(same\)|[\d.]+)/, `figure ${fig}: ${metric}: ${tainerd}`);
      if (tainerd !== "(same)") assert.match(ratio, /^[\d.]+×$/, `figure ${fig}: ${metric}`);
    }
    assert.deepEqual(tbenchDirs().filter((n) => !before.includes(n)), [], "temp dir removed");
    const mounts = await Deno.readTextFile("/proc/self/mountinfo");
    assert.ok(!mounts.includes("/tmp/tbench-"), "no mount left");
    const ps = new TextDecoder().decode(
      (await new Deno.Command("ps", { args: ["-eo", "args"], stdout: "piped" }).output()).stdout,
    );
    assert.ok(!ps.includes("/tmp/tbench-"), `no process left:\n${ps}`);
  },
});
