/**
 * `tainerd run` end to end: containers from a pulled image, with stdio, exit codes,
 * terminals, detaching and cleanup, checked with the real ctr.
 */

import assert from "node:assert/strict";
import { canUnpack, withRegistryImage } from "../images/testdata/busybox_image.ts";
import { delay, have, run, type TestDaemon, withDaemon } from "./harness.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** Pulls the image (without unpacking: run unpacks on demand); false when it cannot run. */
async function prepare(d: TestDaemon, ref: string): Promise<boolean> {
  const c = d.client();
  const ok = await canUnpack(c);
  c.close();
  if (!ok) {
    console.warn("SKIPPED: the daemon has no snapshots/diff plugins, so images cannot run");
    return false;
  }
  const r = await d.cli(["images", "pull", "--plain-http", "--no-unpack", ref]);
  assert.equal(r.code, 0, r.stderr);
  return true;
}

async function snapshotKeys(d: TestDaemon): Promise<string[]> {
  const r = await d.ctr(["snapshots", "ls"]);
  return r.stdout.trim().split("\n").slice(1).map((l) => l.split(/\s+/)[0]).filter((k) => k);
}

Deno.test("tainerd run --rm: output, stdin, env, exit codes, and nothing left behind", () =>
  withRegistryImage(({ ref }) =>
    withDaemon(async (d) => {
      if (!(await prepare(d, ref))) return;
      let r = await d.cli(["run", "--rm", ref, "r1", "echo", "hi"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "hi\n");
      const base = await snapshotKeys(d);
      assert.equal(base.length, 1, "run unpacked the image: its one layer");

      r = await d.cli(["run", "--rm", ref, "r2", "sh", "-c", "echo out; echo err >&2; exit 42"]);
      assert.equal(r.code, 42);
      assert.equal(r.stdout, "out\n");
      assert.equal(r.stderr, "err\n");

      r = await d.cli(["run", "--rm", ref, "r3", "cat"], { stdin: "from stdin\n" });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "from stdin\n");

      r = await d.cli([
        "run",
        "--rm",
        "--env",
        "FOO=bar",
        "--cwd",
        "/tmp",
        ref,
        "r4",
        "sh",
        "-c",
        'echo "$FOO $(pwd) $PATH"; ls /data 2>&1 | wc -l',
      ]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^bar \/tmp \/usr\/local\/sbin:/);

      // The image's command runs when none is given: /bin/sh reads stdin.
      r = await d.cli(["run", "--rm", ref, "r5"], { stdin: "echo from-sh; exit 5\n" });
      assert.equal(r.code, 5);
      assert.equal(r.stdout, "from-sh\n");

      r = await d.ctr(["containers", "ls", "-q"]);
      assert.equal(r.stdout, "");
      assert.deepEqual(await snapshotKeys(d), base, "--rm removed the containers' snapshots");
      r = await d.ctr(["tasks", "ls", "-q"]);
      assert.equal(r.stdout, "");

      // Errors: an unknown image; an id in use (its snapshot is not leaked).
      r = await d.cli(["run", "--rm", "example.com/nope:1", "r6", "true"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^tainerd: .*not found/);
      r = await d.cli(["run", "-d", ref, "dup", "sleep", "100"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["run", "--rm", ref, "dup", "true"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /already exists/);
      r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "dup"]);
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < 50; i++) {
        r = await d.ctr(["tasks", "ls"]);
        if (/STOPPED/.test(r.stdout)) break;
        await delay(100);
      }
      r = await d.ctr(["tasks", "rm", "dup"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.ctr(["containers", "rm", "dup"]);
      assert.equal(r.code, 0, r.stderr);
    })
  ));

Deno.test("tainerd run -d detaches; containers keep the image, labels and snapshot", () =>
  withRegistryImage(({ ref }) =>
    withDaemon(async (d) => {
      if (!(await prepare(d, ref))) return;
      let r = await d.cli(["run", "-d", "--label", "team=blue", ref, "bg", "sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "");
      r = await d.ctr(["tasks", "ls"]);
      assert.match(r.stdout, /^bg\s+\d+\s+RUNNING/m);
      r = await d.ctr(["containers", "info", "bg"]);
      assert.equal(r.code, 0, r.stderr);
      const info = JSON.parse(r.stdout);
      assert.equal(info.Image, ref);
      assert.equal(info.Snapshotter, "overlayfs");
      assert.equal(info.SnapshotKey, "bg");
      assert.equal(info.Runtime.Name, "io.containerd.runc.v2");
      assert.equal(info.Labels["team"], "blue");
      assert.equal(info.Labels["org.example.test"], "busybox", "image config labels");
      assert.deepEqual(info.Spec.process.args, ["sleep", "1000"]);
      r = await d.ctr(["tasks", "exec", "--exec-id", "e1", "bg", "cat", "/etc/motd"]);
      assert.equal(r.stdout, "welcome to tainerd\n");
      r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "bg"]);
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < 50; i++) {
        r = await d.ctr(["tasks", "ls"]);
        if (/STOPPED/.test(r.stdout)) break;
        await delay(100);
      }
      r = await d.ctr(["tasks", "rm", "bg"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.ctr(["containers", "rm", "bg"]);
      assert.equal(r.code, 0, r.stderr);

      // Without --rm the container stays after its task ran (the task is deleted).
      r = await d.cli(["run", ref, "kept", "true"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.ctr(["containers", "ls", "-q"]);
      assert.equal(r.stdout, "kept\n");
      r = await d.ctr(["tasks", "ls", "-q"]);
      assert.equal(r.stdout, "");
      assert.ok((await snapshotKeys(d)).includes("kept"));
    })
  ));

Deno.test(
  "tainerd run -t gives the container a terminal",
  { ignore: !have("script") },
  () =>
    withRegistryImage(({ ref }) =>
      withDaemon(async (d) => {
        if (!(await prepare(d, ref))) return;
        const cmd = [
          Deno.execPath(),
          "run",
          "-A",
          MAIN,
          "-a",
          d.address,
          "run",
          "--rm",
          "-t",
          ref,
          "tty1",
          "sh",
          "-c",
          "tty; stty size; exit 3",
        ]
          .map((a) => `'${a}'`).join(" ");
        const r = await run("script", ["-qec", `stty cols 91 rows 17; ${cmd}`, "/dev/null"]);
        assert.equal(r.code, 3, r.stdout + r.stderr);
        assert.match(r.stdout, /\/dev\/pts\/\d+\r*\n/);
        assert.match(r.stdout, /17 91/);
      })
    ),
);

Deno.test("tainerd containers and tasks: ls, info, exec, kill, rm", () =>
  withRegistryImage(({ ref }) =>
    withDaemon(async (d) => {
      if (!(await prepare(d, ref))) return;
      let r = await d.cli(["run", "-d", ref, "svc", "sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["tasks", "ls"]);
      assert.match(r.stdout, /^TASK\s+PID\s+STATUS\n/);
      assert.match(r.stdout, /^svc\s+\d+\s+RUNNING$/m);
      r = await d.cli(["containers", "ls"]);
      assert.match(
        r.stdout,
        new RegExp(`^svc\\s+${ref.replace(/\./g, "\\.")}\\s+io\\.containerd\\.runc\\.v2$`, "m"),
      );
      r = await d.cli(["containers", "info", "svc"]);
      assert.equal(JSON.parse(r.stdout).Image, ref);
      r = await d.cli([
        "tasks",
        "exec",
        "--exec-id",
        "e1",
        "svc",
        "sh",
        "-c",
        "cat /etc/motd; exit 4",
      ]);
      assert.equal(r.code, 4, r.stderr);
      assert.equal(r.stdout, "welcome to tainerd\n");
      r = await d.cli([
        "tasks",
        "exec",
        "--exec-id",
        "e2",
        "--env",
        "X=y",
        "svc",
        "sh",
        "-c",
        "cat; echo $X",
      ], {
        stdin: "piped\n",
      });
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "piped\ny\n");
      r = await d.cli(["containers", "rm", "svc"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /non stopped container: RUNNING/);
      r = await d.cli(["tasks", "rm", "svc"]);
      assert.equal(r.code, 1);
      r = await d.cli(["tasks", "kill", "-s", "SIGKILL", "svc"]);
      assert.equal(r.code, 0, r.stderr);
      for (let i = 0; i < 50; i++) {
        r = await d.cli(["tasks", "ls"]);
        if (/STOPPED/.test(r.stdout)) break;
        await delay(100);
      }
      r = await d.cli(["containers", "rm", "svc"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal((await d.cli(["containers", "ls", "-q"])).stdout, "");
      assert.ok(!(await snapshotKeys(d)).includes("svc"));
      // tasks rm --force kills first.
      r = await d.cli(["run", "-d", ref, "svc2", "sleep", "1000"]);
      r = await d.cli(["tasks", "rm", "-f", "svc2"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "svc2\n");
      r = await d.cli(["containers", "rm", "svc2"]);
      assert.equal(r.code, 0, r.stderr);
    })
  ));
