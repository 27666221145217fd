/**
 * Bad input end to end with the real ctr: duplicate ids, a task for a missing container,
 * exec id reuse, a kill of an exited task, a spec runc rejects, and a rootfs without a shell.
 * Each gets containerd's error class and a clear message.
 */

import assert from "node:assert/strict";
import { busyboxRootfs } from "./fixtures.ts";
import { type TestDaemon, withDaemon } from "./harness.ts";

async function withRootfs(fn: (d: TestDaemon, rootfs: string, dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-rootfs-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await withDaemon((d) => fn(d, rootfs, dir));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("ctr: a duplicate container id is AlreadyExists; a task for a missing container NotFound", () =>
  withRootfs(async (d, rootfs) => {
    let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "dup", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["run", "-d", "--rootfs", rootfs, "dup", "/bin/sleep", "1000"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already exists/);
    r = await d.ctr(["tasks", "ls"]);
    assert.match(r.stdout, /^dup\s+\d+\s+RUNNING/m, "the first container is untouched");

    r = await d.ctr(["tasks", "start", "missing"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);
    r = await d.ctr(["tasks", "kill", "missing"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);

    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "dup"]);
    assert.equal(r.code, 0, r.stderr);
    await waitStopped(d, "dup");
    r = await d.ctr(["tasks", "rm", "dup"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["containers", "rm", "dup"]);
    assert.equal(r.code, 0, r.stderr);
  }));

async function waitStopped(d: TestDaemon, id: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const r = await d.ctr(["tasks", "ls"]);
    if (new RegExp(`^${id}\\s+\\d+\\s+STOPPED`, "m").test(r.stdout)) return;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error(`${id} did not stop`);
}

Deno.test("ctr: exec id reuse is AlreadyExists; a kill of an exited task is NotFound", () =>
  withRootfs(async (d, rootfs) => {
    let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "ex", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["tasks", "exec", "-d", "--exec-id", "e1", "ex", "/bin/sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["tasks", "exec", "--exec-id", "e1", "ex", "/bin/true"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /already exists/);

    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "ex"]);
    assert.equal(r.code, 0, r.stderr);
    await waitStopped(d, "ex");
    // As containerd's runc shim: signalling a process that finished is NotFound.
    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "ex"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /process already finished: not found/);
    r = await d.ctr(["tasks", "rm", "ex"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["containers", "rm", "ex"]);
    assert.equal(r.code, 0, r.stderr);
  }));

Deno.test("ctr: a binary runc cannot exec fails the run with runc's error, leaving nothing", () =>
  withRootfs(async (d, rootfs) => {
    let r = await d.ctr(["run", "--rm", "--rootfs", rootfs, "nb", "/no/such/binary"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no such file or directory/);
    assert.doesNotMatch(r.stderr, /Unknown desc = .*stack|at .*\.ts:/);
    r = await d.ctr(["containers", "ls", "-q"]);
    assert.equal(r.stdout.trim(), "");
    r = await d.ctr(["tasks", "ls", "-q"]);
    assert.equal(r.stdout.trim(), "");
  }));

Deno.test("ctr: a rootfs without a shell: sh is not found in $PATH, exec too", () =>
  withRootfs(async (d, rootfs) => {
    await Deno.remove(`${rootfs}/bin/sh`);
    // ctr's spec for a bare rootfs has no PATH: give one, as an image config would.
    const path = ["--env", "PATH=/usr/bin:/bin"];
    let r = await d.ctr(["run", "--rm", ...path, "--rootfs", rootfs, "ns", "sh", "-c", "true"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /executable file not found in \$PATH/);
    r = await d.ctr(["run", "-d", ...path, "--rootfs", rootfs, "ns2", "sleep", "1000"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["tasks", "exec", "--exec-id", "x", "ns2", "sh"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /executable file not found in \$PATH/);
    r = await d.ctr(["tasks", "exec", "--exec-id", "x", "ns2", "true"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["tasks", "kill", "-s", "SIGKILL", "ns2"]);
    assert.equal(r.code, 0, r.stderr);
    await waitStopped(d, "ns2");
    r = await d.ctr(["tasks", "rm", "ns2"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["containers", "rm", "ns2"]);
    assert.equal(r.code, 0, r.stderr);
  }));
