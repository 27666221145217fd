/**
 * A short critest (cri-tools v1.37.0) smoke run against tainerd's CRI: a few focused specs
 * (pod and container lifecycle, image pull by tag, exec, port mapping) through
 * `bench/critest.ts` — loopback registry of lookalike images, hosts.toml mirrors, a private
 * CNI bridge and subnet, a private daemon. The whole suite is `deno task critest` (results in
 * bench/results/critest.md). Skipped when critest (scripts/setup.sh builds it), the registry,
 * the CNI plugins or root are missing.
 *
 * @module
 */

import assert from "node:assert/strict";
import { have } from "./harness.ts";

const exists = (p: string) => {
  try {
    Deno.statSync(p);
    return true;
  } catch {
    return false;
  }
};

const ignore = !exists("/usr/local/bin/critest") || !exists("/usr/local/bin/crictl") ||
  !exists("/usr/bin/docker-registry") || !exists("/usr/lib/cni/bridge") || !have("iptables") ||
  (!have("go") && !exists("/usr/local/go/bin/go")) || Deno.uid() !== 0;

/** The focused specs: one regexp alternative each. */
const FOCUS = [
  "runtime should support basic operations on container",
  "public image with tag should be pulled and removed",
  "runtime should support execSync",
  "runtime should support port mapping with host port",
  "runtime should support PodPID",
].join("|");

Deno.test({
  name: "critest smoke: focused CRI validation specs pass against tainerd",
  ignore,
  sanitizeResources: false,
  sanitizeOps: false,
  fn: async () => {
    const out = await Deno.makeTempDir({ prefix: "tainerd-critest-smoke-" });
    try {
      const r = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "-A",
          new URL("../bench/critest.ts", import.meta.url).pathname,
          "--only",
          "tainerd",
          "--focus",
          FOCUS,
          "--out",
          out,
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const log = new TextDecoder().decode(r.stderr);
      assert.equal(r.code, 0, log);
      const { runs } = JSON.parse(await Deno.readTextFile(`${out}/critest.json`));
      assert.equal(runs.length, 1);
      const run = runs[0];
      const bad = run.specs.filter((s: { state: string }) =>
        s.state !== "passed" && s.state !== "skipped"
      );
      assert.deepEqual(bad, [], log);
      assert.ok(run.passed >= 5, `only ${run.passed} specs passed:\n${log}`);
    } finally {
      await Deno.remove(out, { recursive: true }).catch(() => {});
    }
  },
});
