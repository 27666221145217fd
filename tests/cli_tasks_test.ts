/**
 * The CLI's container and task commands end to end (`tainerd containers create|label`,
 * `tainerd tasks start|ps|pause|resume|metrics|attach`, `tainerd events`) and the spec
 * options of `tainerd run` (user, mounts, hostname, CPU and memory limits, privileged,
 * read-only rootfs), checked with the real ctr and the host's cgroups.
 */

import assert from "node:assert/strict";
import { canUnpack, withRegistryImage } from "../images/testdata/busybox_image.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { ctrEvents, delay, type TestDaemon, withDaemon } from "./harness.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

async function prepare(d: TestDaemon, ref: string): Promise<boolean> {
  const c = d.client();
  const ok = await canUnpack(c);
  c.close();
  if (!ok) {
    console.warn("SKIPPED: the daemon has no snapshots/diff plugins, so images cannot run");
    return false;
  }
  const r = await d.cli(["images", "pull", "--plain-http", ref]);
  assert.equal(r.code, 0, r.stderr);
  return true;
}

async function cleanup(d: TestDaemon): Promise<void> {
  const ids = (await d.ctr(["containers", "ls", "-q"])).stdout.trim().split("\n").filter((x) => x);
  for (const id of ids) {
    await d.ctr(["tasks", "rm", "-f", id]);
    await d.ctr(["containers", "rm", id]);
  }
}

function withImage(fn: (d: TestDaemon, ref: string) => Promise<void>) {
  return () =>
    withRegistryImage(({ ref }) =>
      withDaemon(async (d) => {
        try {
          if (await prepare(d, ref)) await fn(d, ref);
        } finally {
          await cleanup(d);
        }
      })
    );
}

async function waitFor(what: string, fn: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await fn()) return;
    await delay(100);
  }
  throw new Error(`Timed out waiting for ${what}`);
}

Deno.test(
  "tainerd containers create|label, tasks start|ps|pause|resume|metrics, events",
  withImage(async (d, ref) => {
    const events = new Deno.Command("deno", {
      args: ["run", "-A", MAIN, "-a", d.address, "events"],
      stdout: "piped",
      stderr: "null",
    }).spawn();
    let seen = "";
    const reading = (async () => {
      for await (const chunk of events.stdout.pipeThrough(new TextDecoderStream())) seen += chunk;
    })();
    try {
      await delay(1500); // the subscription is up
      let r = await d.cli(["containers", "create", "--label", "a=1", ref, "c1", "sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["containers", "label", "c1", "b=2", "a="]);
      assert.equal(r.code, 0, r.stderr);
      // As ctr: every label the container has now.
      assert.deepEqual(r.stdout.trim().split(",").sort(), ["b=2", "org.example.test=busybox"]);
      r = await d.ctr(["containers", "info", "c1"]);
      assert.match(r.stdout, /"b": "2"/);
      assert.doesNotMatch(r.stdout, /"a": "1"/);

      r = await d.cli(["tasks", "start", "-d", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.ctr(["tasks", "ls"]);
      assert.match(r.stdout, /^c1\s+\d+\s+RUNNING/m);
      r = await d.ctr(["tasks", "exec", "-d", "--exec-id", "e1", "c1", "sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["tasks", "ps", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^PID\s+INFO\n\d+\s+-\n\d+\s+&ProcessDetails\{ExecID:e1,/);
      assert.equal(r.stdout, (await d.ctr(["tasks", "ps", "c1"])).stdout, "as ctr prints it");

      r = await d.cli(["tasks", "pause", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["tasks", "ls"]);
      assert.match(r.stdout, /^c1\s+\d+\s+PAUSED/m);
      r = await d.cli(["tasks", "resume", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["tasks", "ls"]);
      assert.match(r.stdout, /^c1\s+\d+\s+RUNNING/m);

      r = await d.cli(["tasks", "metrics", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^ID\s+TIMESTAMP\nc1\s+\S+/);
      assert.match(r.stdout, /^METRIC\s+VALUE$/m);
      assert.match(r.stdout, /^pids\.current\s+2$/m);
      r = await d.cli(["tasks", "metrics", "--format", "json", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(JSON.parse(r.stdout).pids.current, 2);

      r = await d.cli(["tasks", "rm", "-f", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["containers", "rm", "c1"]);
      assert.equal(r.code, 0, r.stderr);
      await waitFor("the events", () => Promise.resolve(/\/containers\/delete/.test(seen)));
    } finally {
      events.kill("SIGTERM");
      await events.status;
      await reading.catch(() => {});
    }
    const topics = seen.trim().split("\n").map((l) => l.split(" ")[5]);
    for (
      const t of [
        "/containers/create",
        "/containers/update",
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
        "/containers/delete",
      ]
    ) assert.ok(topics.includes(t), `${t} in\n${seen}`);
    // As ctr: Go's time format, the namespace, the topic, the payload as JSON.
    assert.match(
      seen,
      /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC default \/tasks\/start \{"container_id":"c1","pid":\d+\}$/m,
    );
  }),
);

Deno.test(
  "tainerd tasks start attaches; tasks attach reaches a task ctr run -d started",
  withImage(async (d, ref) => {
    let r = await d.cli(["containers", "create", ref, "c2", "sh", "-c", "echo started; exit 4"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(["tasks", "start", "c2"]);
    assert.equal(r.code, 4, r.stderr);
    assert.equal(r.stdout, "started\n");
    r = await d.ctr(["tasks", "ls", "-q"]);
    assert.equal(r.stdout.trim(), "", "as ctr, the exited task is deleted");

    r = await d.ctr(["run", "-d", ref, "c3", "sh", "-c", "read l; echo got $l; exit 6"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(["tasks", "attach", "c3"], { stdin: "line\n" });
    assert.equal(r.code, 6, r.stderr);
    assert.equal(r.stdout, "got line\n");
  }),
);

Deno.test(
  "tainerd run: --user, --mount, --hostname, --read-only, --cpus, --memory-limit, --privileged",
  withImage(async (d, ref) => {
    let r = await d.cli(["run", "--rm", "--user", "root", ref, "u1", "id"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^uid=0\(root\) gid=0\(root\)/);
    r = await d.cli(["run", "--rm", "--user", "1000:1001", ref, "u2", "id"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^uid=1000 gid=1001/);
    r = await d.cli(["run", "--rm", "--user", "nobody", ref, "u3", "id"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Cannot find user "nobody" in the image's \/etc\/passwd/);
    r = await d.ctr(["containers", "ls", "-q"]);
    assert.equal(r.stdout.trim(), "", "a failed user lookup leaves no container");

    const dir = await Deno.makeTempDir({ prefix: "tainerd-mnt-" });
    try {
      await Deno.writeTextFile(`${dir}/file`, "from the host\n");
      r = await d.cli([
        "run",
        "--rm",
        "--mount",
        `type=bind,src=${dir},dst=/mnt,options=rbind:ro`,
        "--hostname",
        "box",
        ref,
        "m1",
        "sh",
        "-c",
        "cat /mnt/file; hostname; touch /mnt/x || echo ro-mount",
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "from the host\nbox\nro-mount\n");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }

    r = await d.cli(["run", "--rm", "--read-only", ref, "ro1", "sh", "-c", "touch /x || echo ro"]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "ro\n");

    r = await d.cli([
      "run",
      "-d",
      "--cpus",
      "0.5",
      "--memory-limit",
      "16777216",
      ref,
      "lim",
      "sleep",
      "1000",
    ]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["containers", "info", "lim"]);
    const spec = JSON.parse(r.stdout).Spec;
    assert.deepEqual(spec.linux.resources.cpu, { quota: 50000, period: 100000 });
    assert.deepEqual(spec.linux.resources.memory, { limit: 16777216 });
    const v1 = "/sys/fs/cgroup/memory/default/lim/memory.limit_in_bytes";
    const v2 = "/sys/fs/cgroup/default/lim/memory.max";
    const limit = await Deno.readTextFile(v1).catch(() => Deno.readTextFile(v2));
    assert.equal(limit.trim(), "16777216");

    const capEff = async (id: string, extra: string[]) => {
      const res = await d.cli([
        "run",
        "--rm",
        ...extra,
        ref,
        id,
        "grep",
        "CapEff",
        "/proc/self/status",
      ]);
      assert.equal(res.code, 0, res.stderr);
      return BigInt("0x" + res.stdout.trim().split(/\s+/)[1]);
    };
    const plain = await capEff("p0", []);
    const privileged = await capEff("p1", ["--privileged"]);
    const own = /^CapEff:\s*([0-9a-f]+)$/m.exec(await Deno.readTextFile("/proc/self/status"))!;
    assert.equal(privileged, BigInt("0x" + own[1]), "every capability of the creator");
    assert.ok(privileged > plain);
    r = await d.cli(["run", "--rm", "--privileged", ref, "p2", "sh", "-c", "ls /dev | wc -l"]);
    assert.ok(Number(r.stdout.trim()) > 10, "the host's devices");
  }),
);

Deno.test("a container over its memory limit is OOM-killed and ctr events shows /tasks/oom", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-rootfs-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await withDaemon(async (d) => {
      const events = await ctrEvents(d);
      try {
        const r = await d.ctr([
          "run",
          "--rm",
          "--memory-limit",
          "16777216",
          "--rootfs",
          rootfs,
          "oom1",
          "/bin/sh",
          "-c",
          "x=a; while true; do x=$x$x; done",
        ]);
        assert.equal(r.code, 137, r.stderr);
        await events.waitFor(/\/tasks\/oom/, "/tasks/oom");
        assert.match(events.text(), /^.* default \/tasks\/oom \{"container_id":"oom1"\}$/m);
      } finally {
        await events.stop();
        await cleanup(d);
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
