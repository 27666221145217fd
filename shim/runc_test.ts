/**
 * End-to-end tests of the shim with real runc: shims started through the `start` action like
 * the daemon does, driven over ttrpc, publishing to a fake daemon. Run as root.
 */

import assert from "node:assert/strict";
import { create, fromBinary } from "@bufbuild/protobuf";
import { AnySchema, timestampDate } from "@bufbuild/protobuf/wkt";
import { ProcessDetailsSchema } from "../api/gen/containerd/runtime/v2/runc/options/oci_pb.ts";
import { DeleteResponseSchema } from "../api/gen/containerd/runtime/v2/task/shim_pb.ts";
import { Status } from "../api/gen/containerd/types/task/task_pb.ts";
import { isMountpoint } from "../sys/mountinfo.ts";
import { Code, StatusError } from "../ttrpc/codes.ts";
import { canConnect, readAddress, socketPath } from "./address.ts";
import { mkfifo, NAMESPACE, processSpec, readFifo, ShimEnv } from "./testdata/helpers.ts";

const IS_ROOT = Deno.uid() === 0;
const HAS_RUNC = await new Deno.Command("runc", { args: ["--version"], stdout: "null" })
  .output().then((o) => o.success, () => false);
const ignore = !IS_ROOT || !HAS_RUNC;

function test(name: string, fn: (env: ShimEnv) => Promise<void>): void {
  Deno.test({
    name,
    ignore,
    sanitizeOps: false,
    sanitizeResources: false,
    fn: async () => {
      const env = await ShimEnv.create();
      try {
        await fn(env);
      } finally {
        await env.cleanup();
      }
    },
  });
}

async function rejection(p: Promise<unknown>): Promise<StatusError> {
  const err = await p.then(() => undefined, (e) => e);
  assert.ok(err instanceof StatusError, `expected a StatusError, got ${err}`);
  return err;
}

function specAny(json: Uint8Array) {
  return create(AnySchema, {
    typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/Process",
    value: json,
  });
}

async function processGone(pid: number, timeoutMs = 10_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
      if (stat.slice(stat.lastIndexOf(")") + 2).startsWith("Z")) return true;
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return false;
}

test("Shim runs a task: output, exit status, rootfs mount and events in order", async (env) => {
  const bundle = await env.bundle("hello", ["sh", "-c", "echo hello; exit 3"]);
  const shim = await env.startShim(bundle, "hello");
  assert.equal(await readAddress(bundle), shim.address);
  assert.match(shim.address, /^unix:\/\/.*\/s\/[0-9a-f]{64}$/);

  const stdout = `${env.dir}/hello-stdout`;
  await mkfifo(stdout);
  const output = readFifo(stdout);
  const { pid } = await shim.task.create({
    id: "hello",
    bundle,
    rootfs: env.rootfsMounts(),
    stdout,
  });
  assert.ok(pid > 0);
  assert.ok(isMountpoint(`${bundle}/rootfs`), "the rootfs is mounted");
  const created = await shim.task.state({ id: "hello" });
  assert.equal(created.status, Status.CREATED);
  assert.equal(created.pid, pid);
  assert.equal(created.bundle, bundle);

  const waiting = shim.task.wait({ id: "hello" });
  const started = await shim.task.start({ id: "hello" });
  assert.equal(started.pid, pid);
  const exited = await waiting;
  assert.equal(exited.exitStatus, 3);
  assert.ok(exited.exitedAt !== undefined);
  assert.equal(await output, "hello\n");

  const stopped = await shim.task.state({ id: "hello" });
  assert.equal(stopped.status, Status.STOPPED);
  assert.equal(stopped.exitStatus, 3);

  const deleted = await shim.task.delete({ id: "hello" });
  assert.equal(deleted.exitStatus, 3);
  assert.equal(deleted.pid, pid);
  assert.ok(!isMountpoint(`${bundle}/rootfs`), "Delete unmounts the rootfs");

  await env.daemon.waitFor(() => env.daemon.topics("hello").length >= 4);
  assert.deepEqual(env.daemon.topics("hello"), [
    "/tasks/create",
    "/tasks/start",
    "/tasks/exit",
    "/tasks/delete",
  ]);
  const [createEv, startEv, exitEv, deleteEv] = env.daemon.events.filter((e) =>
    e.event.containerId === "hello"
  );
  assert.equal(createEv.typeUrl, "containerd.events.TaskCreate");
  assert.equal(createEv.namespace, NAMESPACE);
  assert.equal(createEv.event.bundle, bundle);
  assert.equal(createEv.event.pid, pid);
  assert.equal(createEv.event.io.stdout, stdout);
  assert.equal(startEv.event.pid, pid);
  assert.equal(exitEv.typeUrl, "containerd.events.TaskExit");
  assert.equal(exitEv.event.id, "hello");
  assert.equal(exitEv.event.pid, pid);
  assert.equal(exitEv.event.exitStatus, 3);
  assert.equal(deleteEv.event.exitStatus, 3);

  await rejection(shim.task.state({ id: "hello" })).then((e) =>
    assert.equal(e.code, Code.NotFound)
  );
});

test("Shim kills, execs, lists pids, pauses and resumes", async (env) => {
  const bundle = await env.bundle("sleeper", ["sleep", "1000"], { hostPid: true });
  const shim = await env.startShim(bundle, "sleeper");
  const { pid } = await shim.task.create({ id: "sleeper", bundle, rootfs: env.rootfsMounts() });
  await shim.task.start({ id: "sleeper" });
  assert.equal((await shim.task.state({ id: "sleeper" })).status, Status.RUNNING);

  // Exec a short process and read its output.
  const execOut = `${env.dir}/exec-stdout`;
  await mkfifo(execOut);
  await shim.task.exec({
    id: "sleeper",
    execId: "echo",
    stdout: execOut,
    spec: specAny(await processSpec(["echo", "exec"])),
  });
  assert.equal((await shim.task.state({ id: "sleeper", execId: "echo" })).status, Status.CREATED);
  const execOutput = readFifo(execOut);
  const execWait = shim.task.wait({ id: "sleeper", execId: "echo" });
  const execStart = await shim.task.start({ id: "sleeper", execId: "echo" });
  assert.ok(execStart.pid > 0);
  assert.equal((await execWait).exitStatus, 0);
  assert.equal(await execOutput, "exec\n");
  assert.equal((await shim.task.state({ id: "sleeper", execId: "echo" })).status, Status.STOPPED);
  await shim.task.delete({ id: "sleeper", execId: "echo" });
  await rejection(shim.task.state({ id: "sleeper", execId: "echo" })).then((e) =>
    assert.equal(e.code, Code.NotFound)
  );

  // A long exec shows up in Pids with its exec id; killing it directly reports 137.
  await shim.task.exec({
    id: "sleeper",
    execId: "nap",
    spec: specAny(await processSpec(["sleep", "100"])),
  });
  const nap = await shim.task.start({ id: "sleeper", execId: "nap" });
  const { processes } = await shim.task.pids({ id: "sleeper" });
  const byPid = new Map(processes.map((p) => [p.pid, p]));
  assert.ok(byPid.has(pid), `Pids lists the init pid ${pid}: ${[...byPid.keys()]}`);
  const napInfo = byPid.get(nap.pid)?.info;
  assert.ok(napInfo, "Pids lists the exec'd process");
  assert.equal(napInfo.typeUrl, "containerd.runc.v1.ProcessDetails");
  assert.equal(fromBinary(ProcessDetailsSchema, napInfo.value).execId, "nap");
  const napWait = shim.task.wait({ id: "sleeper", execId: "nap" });
  await shim.task.kill({ id: "sleeper", execId: "nap", signal: 9 });
  assert.equal((await napWait).exitStatus, 137);
  await shim.task.delete({ id: "sleeper", execId: "nap" });

  // Pause and resume.
  await shim.task.pause({ id: "sleeper" });
  assert.equal((await shim.task.state({ id: "sleeper" })).status, Status.PAUSED);
  await rejection(shim.task.pause({ id: "sleeper" })).then((e) =>
    assert.equal(e.code, Code.FailedPrecondition)
  );
  await shim.task.resume({ id: "sleeper" });
  assert.equal((await shim.task.state({ id: "sleeper" })).status, Status.RUNNING);

  // Update the resources.
  await shim.task.update({
    id: "sleeper",
    resources: create(AnySchema, {
      typeUrl: "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
      value: new TextEncoder().encode(JSON.stringify({ pids: { limit: 321 } })),
    }),
  });
  const cgroupLine = (await Deno.readTextFile(`/proc/${pid}/cgroup`)).split("\n")
    .find((l) => /^\d+:pids:/.test(l));
  if (cgroupLine) {
    const path = cgroupLine.split(":")[2];
    assert.equal((await Deno.readTextFile(`/sys/fs/cgroup/pids${path}/pids.max`)).trim(), "321");
  }

  // Deleting a running task is refused; SIGTERM kills it (128 + 15).
  await rejection(shim.task.delete({ id: "sleeper" })).then((e) =>
    assert.equal(e.code, Code.FailedPrecondition)
  );
  const waiting = shim.task.wait({ id: "sleeper" });
  await shim.task.kill({ id: "sleeper", signal: 15 });
  assert.equal((await waiting).exitStatus, 143);
  await rejection(shim.task.kill({ id: "sleeper", signal: 15 })).then((e) =>
    assert.equal(e.code, Code.NotFound)
  );
  await shim.task.delete({ id: "sleeper" });

  await env.daemon.waitFor(() => env.daemon.topics("sleeper").includes("/tasks/delete"));
  assert.deepEqual(env.daemon.topics("sleeper"), [
    "/tasks/create",
    "/tasks/start",
    "/tasks/exec-added",
    "/tasks/exec-started",
    "/tasks/exit",
    "/tasks/exec-added",
    "/tasks/exec-started",
    "/tasks/exit",
    "/tasks/paused",
    "/tasks/resumed",
    "/tasks/exit",
    "/tasks/delete",
  ]);
  const exits = env.daemon.events.filter((e) => e.topic === "/tasks/exit");
  assert.deepEqual(exits.map((e) => [e.event.id, e.event.exitStatus]), [
    ["echo", 0],
    ["nap", 137],
    ["sleeper", 143],
  ]);
});

test("Shim gives a terminal task a pty that ResizePty resizes", async (env) => {
  const bundle = await env.bundle(
    "tty",
    ["sh", "-c", 'read line; stty size; echo "got:$line"'],
    { terminal: true },
  );
  const shim = await env.startShim(bundle, "tty");
  const stdin = `${env.dir}/tty-stdin`;
  const stdout = `${env.dir}/tty-stdout`;
  await mkfifo(stdin);
  await mkfifo(stdout);
  await shim.task.create({
    id: "tty",
    bundle,
    rootfs: env.rootfsMounts(),
    terminal: true,
    stdin,
    stdout,
  });
  const output = readFifo(stdout);
  const waiting = shim.task.wait({ id: "tty" });
  await shim.task.start({ id: "tty" });
  await shim.task.resizePty({ id: "tty", width: 123, height: 45 });
  const writer = await Deno.open(stdin, { write: true });
  await writer.write(new TextEncoder().encode("go\n"));
  writer.close();
  assert.equal((await waiting).exitStatus, 0);
  const text = await output;
  assert.match(text, /45 123/);
  assert.match(text, /got:go/);
  assert.equal((await shim.task.state({ id: "tty" })).terminal, true);
  await shim.task.delete({ id: "tty" });
});

test("Shim's CloseIO ends stdin so that cat exits; file:// output", async (env) => {
  const bundle = await env.bundle("cat", ["cat"]);
  const shim = await env.startShim(bundle, "cat");
  const stdin = `${env.dir}/cat-stdin`;
  const stdout = `${env.dir}/cat-stdout`;
  await mkfifo(stdin);
  await mkfifo(stdout);
  await shim.task.create({ id: "cat", bundle, rootfs: env.rootfsMounts(), stdin, stdout });
  const output = readFifo(stdout);
  const waiting = shim.task.wait({ id: "cat" });
  await shim.task.start({ id: "cat" });
  const writer = await Deno.open(stdin, { write: true });
  await writer.write(new TextEncoder().encode("abc\n"));
  writer.close();
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(
    (await shim.task.state({ id: "cat" })).status,
    Status.RUNNING,
    "cat keeps running until CloseIO",
  );
  await shim.task.closeIO({ id: "cat", stdin: true });
  assert.equal((await waiting).exitStatus, 0);
  assert.equal(await output, "abc\n");
  await shim.task.delete({ id: "cat" });

  // file:// sends stdout and stderr to one file
  const bundle2 = await env.bundle("logfile", ["sh", "-c", "echo out; echo err >&2"]);
  const log = `${env.dir}/logs/logfile.log`;
  await shim.task.create({
    id: "logfile",
    bundle: bundle2,
    rootfs: env.rootfsMounts(),
    stdout: `file://${log}`,
    stderr: `file://${log}`,
  });
  const waiting2 = shim.task.wait({ id: "logfile" });
  await shim.task.start({ id: "logfile" });
  assert.equal((await waiting2).exitStatus, 0);
  await shim.task.delete({ id: "logfile" });
  const lines = (await Deno.readTextFile(log)).split("\n").filter((l) => l !== "").sort();
  assert.deepEqual(lines, ["err", "out"]);
});

test("Shim rejects bad input with clear error codes", async (env) => {
  const bundle = await env.bundle("bad", ["sleep", "1000"]);
  const shim = await env.startShim(bundle, "bad");
  const t = shim.task;

  let e = await rejection(t.create({ id: "bad id!", bundle }));
  assert.equal(e.code, Code.InvalidArgument);
  assert.match(e.message, /bad id!/);
  e = await rejection(t.create({ id: "nobundle", bundle: `${env.dir}/missing` }));
  assert.equal(e.code, Code.NotFound);
  assert.match(e.message, /does not exist/);
  await Deno.mkdir(`${env.dir}/empty`);
  e = await rejection(t.create({ id: "empty", bundle: `${env.dir}/empty` }));
  assert.equal(e.code, Code.InvalidArgument);
  assert.match(e.message, /config\.json/);
  e = await rejection(t.create({ id: "rel", bundle: "relative/path" }));
  assert.equal(e.code, Code.InvalidArgument);
  e = await rejection(
    t.create({ id: "bad", bundle, rootfs: env.rootfsMounts(), stdout: "binary:///bin/logger" }),
  );
  assert.equal(e.code, Code.Unimplemented);
  assert.ok(!isMountpoint(`${bundle}/rootfs`), "a failed Create leaves no mount behind");
  e = await rejection(
    t.create({ id: "bad", bundle, rootfs: env.rootfsMounts(), stdout: `${env.dir}/nofifo` }),
  );
  assert.equal(e.code, Code.InvalidArgument);

  for (
    const call of [
      t.state({ id: "nope" }),
      t.start({ id: "nope" }),
      t.kill({ id: "nope", signal: 9 }),
      t.wait({ id: "nope" }),
      t.delete({ id: "nope" }),
      t.pids({ id: "nope" }),
      t.pause({ id: "nope" }),
      t.closeIO({ id: "nope", stdin: true }),
    ]
  ) {
    e = await rejection(call);
    assert.equal(e.code, Code.NotFound, e.message);
  }

  await t.create({ id: "bad", bundle, rootfs: env.rootfsMounts() });
  e = await rejection(t.create({ id: "bad", bundle, rootfs: env.rootfsMounts() }));
  assert.equal(e.code, Code.AlreadyExists);
  e = await rejection(t.state({ id: "bad", execId: "nope" }));
  assert.equal(e.code, Code.NotFound);
  e = await rejection(t.exec({ id: "bad", execId: "x", spec: specAny(new Uint8Array([1, 2])) }));
  assert.equal(e.code, Code.InvalidArgument);
  e = await rejection(t.exec({ id: "bad", execId: "bad exec" }));
  assert.equal(e.code, Code.InvalidArgument);
  await t.exec({ id: "bad", execId: "x", spec: specAny(await processSpec(["true"])) });
  e = await rejection(
    t.exec({ id: "bad", execId: "x", spec: specAny(await processSpec(["true"])) }),
  );
  assert.equal(e.code, Code.AlreadyExists);
  e = await rejection(t.pause({ id: "bad" }));
  assert.equal(e.code, Code.FailedPrecondition);
  e = await rejection(t.checkpoint({ id: "bad", path: "/tmp/x" }));
  assert.equal(e.code, Code.Unimplemented);
  // a created task has its cgroup statistics (io.containerd.cgroups.v1/v2.Metrics)
  const stats = await t.stats({ id: "bad" });
  assert.match(stats.stats?.typeUrl ?? "", /^io\.containerd\.cgroups\.v[12]\.Metrics$/);
  e = await rejection(t.stats({ id: "nope" }));
  assert.equal(e.code, Code.NotFound);

  // Shutdown is ignored while a task remains.
  await t.shutdown({ id: "bad" });
  assert.ok(await canConnect(shim.address), "the shim stays up while it holds a task");
  await t.delete({ id: "bad" });
});

test("Shim exits on Shutdown once no task is left", async (env) => {
  const bundle = await env.bundle("short", ["true"]);
  const shim = await env.startShim(bundle, "short");
  // start again: the live shim's address is reused
  assert.equal(new TextDecoder().decode(await env.action(bundle, "short", "start")), shim.address);
  await shim.task.create({ id: "short", bundle, rootfs: env.rootfsMounts() });
  const waiting = shim.task.wait({ id: "short" });
  await shim.task.start({ id: "short" });
  assert.equal((await waiting).exitStatus, 0);
  await shim.task.delete({ id: "short" });
  await shim.task.shutdown({ id: "short" });
  assert.ok(await processGone(shim.pid), "the shim process exits");
  await assert.rejects(Deno.lstat(socketPath(shim.address)), Deno.errors.NotFound);
});

test("Shim delete action cleans up after a killed shim", async (env) => {
  const bundle = await env.bundle("orphan", ["sleep", "1000"]);
  const shim = await env.startShim(bundle, "orphan");
  const { pid } = await shim.task.create({ id: "orphan", bundle, rootfs: env.rootfsMounts() });
  await shim.task.start({ id: "orphan" });
  await shim.client.close();
  Deno.kill(shim.pid, "SIGKILL");
  assert.ok(await processGone(shim.pid));

  const out = await env.action(bundle, "orphan", "delete");
  const response = fromBinary(DeleteResponseSchema, out);
  assert.equal(response.exitStatus, 137);
  assert.equal(response.pid, pid);
  assert.ok(response.exitedAt !== undefined);
  assert.ok(Math.abs(timestampDate(response.exitedAt).getTime() - Date.now()) < 60_000);
  assert.ok(!isMountpoint(`${bundle}/rootfs`), "the rootfs is unmounted");
  assert.ok(await processGone(pid), "the container's init is gone");
  const state = await new Deno.Command("runc", {
    args: ["--root", `${env.stateDir}/runc/${NAMESPACE}`, "state", "orphan"],
    stdout: "null",
    stderr: "null",
  }).output();
  assert.equal(state.success, false, "runc no longer knows the container");
  await assert.rejects(Deno.lstat(socketPath(shim.address)), Deno.errors.NotFound);
});

test("Shim queues events while the daemon is down and delivers them later", async (env) => {
  const bundle = await env.bundle("queued", ["sh", "-c", "exit 7"]);
  const shim = await env.startShim(bundle, "queued");
  await env.daemon.stop();
  await shim.task.create({ id: "queued", bundle, rootfs: env.rootfsMounts() });
  const waiting = shim.task.wait({ id: "queued" });
  await shim.task.start({ id: "queued" });
  assert.equal((await waiting).exitStatus, 7);
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(env.daemon.events.length, 0);
  env.daemon.start();
  await env.daemon.waitFor(() => env.daemon.topics("queued").length >= 3);
  await new Promise((r) => setTimeout(r, 300));
  assert.deepEqual(env.daemon.topics("queued"), ["/tasks/create", "/tasks/start", "/tasks/exit"]);
  await shim.task.delete({ id: "queued" });
  await env.daemon.waitFor(() => env.daemon.topics("queued").length >= 4);
  assert.equal(env.daemon.topics("queued").filter((t) => t === "/tasks/exit").length, 1);
});

test("Shim kills and reaps what a host-pid task leaves behind when it exits", async (env) => {
  const bundle = await env.bundle("leaver", ["sh", "-c", "sleep 1000 & echo $!"], {
    hostPid: true,
  });
  const shim = await env.startShim(bundle, "leaver");
  const stdout = `${env.dir}/leaver-stdout`;
  await mkfifo(stdout);
  await shim.task.create({ id: "leaver", bundle, rootfs: env.rootfsMounts(), stdout });
  const output = readFifo(stdout);
  const waiting = shim.task.wait({ id: "leaver" });
  await shim.task.start({ id: "leaver" });
  assert.equal((await waiting).exitStatus, 0);
  const orphan = Number((await output).trim());
  assert.ok(orphan > 0, "the task printed the pid of its background process");
  const deadline = Date.now() + 5000;
  let gone = false;
  while (!gone && Date.now() < deadline) {
    gone = await Deno.stat(`/proc/${orphan}`).then(() => false, () => true);
    if (!gone) await new Promise((r) => setTimeout(r, 50));
  }
  assert.ok(gone, `the orphan ${orphan} was killed and reaped (no zombie left)`);
  await shim.task.delete({ id: "leaver" });
});

test("Shim execs a process with a terminal", async (env) => {
  const bundle = await env.bundle("ttyexec", ["sleep", "1000"]);
  const shim = await env.startShim(bundle, "ttyexec");
  await shim.task.create({ id: "ttyexec", bundle, rootfs: env.rootfsMounts() });
  await shim.task.start({ id: "ttyexec" });
  const stdout = `${env.dir}/ttyexec-stdout`;
  await mkfifo(stdout);
  await shim.task.exec({
    id: "ttyexec",
    execId: "tty",
    terminal: true,
    stdout,
    spec: specAny(await processSpec(["sh", "-c", "tty; stty size"], true)),
  });
  const output = readFifo(stdout);
  const waiting = shim.task.wait({ id: "ttyexec", execId: "tty" });
  await shim.task.start({ id: "ttyexec", execId: "tty" });
  assert.equal((await waiting).exitStatus, 0);
  assert.match(await output, /\/dev\/pts\/\d+/);
  await shim.task.delete({ id: "ttyexec", execId: "tty" });
  const waitInit = shim.task.wait({ id: "ttyexec" });
  await shim.task.kill({ id: "ttyexec", signal: 9 });
  assert.equal((await waitInit).exitStatus, 137);
  await shim.task.delete({ id: "ttyexec" });
});

test("Shim deletes a task whose output nobody reads and whose stdin is full", async (env) => {
  const bundle = await env.bundle("stuck", ["sh", "-c", "yes | head -c 2000000; sleep 1000"]);
  const shim = await env.startShim(bundle, "stuck");
  const stdin = `${env.dir}/stuck-stdin`;
  const stdout = `${env.dir}/stuck-stdout`;
  await mkfifo(stdin);
  await mkfifo(stdout);
  await shim.task.create({ id: "stuck", bundle, rootfs: env.rootfsMounts(), stdin, stdout });
  await shim.task.start({ id: "stuck" });
  // fill stdin beyond the pipe buffers: the task never reads it
  const writer = await Deno.open(stdin, { write: true });
  const chunk = new Uint8Array(64 * 1024);
  const filling = (async () => {
    try {
      for (let i = 0; i < 8; i++) await writer.write(chunk);
    } catch { /* closed by the shim */ }
  })();
  await new Promise((r) => setTimeout(r, 300));
  const waiting = shim.task.wait({ id: "stuck" });
  await shim.task.kill({ id: "stuck", signal: 9 });
  assert.equal((await waiting).exitStatus, 137);
  const started = Date.now();
  await shim.task.delete({ id: "stuck" });
  assert.ok(Date.now() - started < 8000, "Delete does not hang on stuck stdio");
  // the shim closed its ends: a reader of stdout sees the end at once
  const reader = await Deno.open(stdout, { read: true, write: true }); // never blocks
  reader.close();
  writer.close();
  await filling;
});
