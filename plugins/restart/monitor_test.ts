import assert from "node:assert/strict";
import { Status } from "../../api/gen/containerd/types/task/task_pb.ts";
import { Logger } from "../../log.ts";
import { notFound } from "../errdefs.ts";
import type { Container } from "../containers/store.ts";
import {
  COUNT_LABEL,
  logTarget,
  type MonitorBackend,
  parsePolicy,
  RestartMonitor,
  shouldRestart,
  type TaskView,
} from "./monitor.ts";

Deno.test("parsePolicy: containerd's policies, clear errors", () => {
  assert.deepEqual(parsePolicy(""), { name: "always", maxRetries: 0 });
  assert.deepEqual(parsePolicy("always"), { name: "always", maxRetries: 0 });
  assert.deepEqual(parsePolicy("on-failure"), { name: "on-failure", maxRetries: 0 });
  assert.deepEqual(parsePolicy("on-failure:2"), { name: "on-failure", maxRetries: 2 });
  assert.deepEqual(parsePolicy("unless-stopped"), { name: "unless-stopped", maxRetries: 0 });
  assert.throws(() => parsePolicy("sometimes"), /not supported/);
  assert.throws(() => parsePolicy("always:3"), /does not take/);
  assert.throws(() => parsePolicy("on-failure:x"), /Invalid max retry count/);
});

Deno.test("shouldRestart: on-failure counts, unless-stopped honours explicit stops", () => {
  const onFailure2 = parsePolicy("on-failure:2");
  assert.equal(shouldRestart(onFailure2, 3, {}), true);
  assert.equal(shouldRestart(onFailure2, 0, {}), false);
  assert.equal(shouldRestart(onFailure2, 3, { [COUNT_LABEL]: "1" }), true);
  assert.equal(shouldRestart(onFailure2, 3, { [COUNT_LABEL]: "2" }), false);
  assert.equal(shouldRestart(parsePolicy("always"), 0, {}), true);
  const us = parsePolicy("unless-stopped");
  assert.equal(shouldRestart(us, 0, {}), true);
  assert.equal(
    shouldRestart(us, 0, { "containerd.io/restart.explicitly-stopped": "true" }),
    false,
  );
});

Deno.test("logTarget: log path and file:// URIs; binary:// is a clear error", () => {
  assert.equal(logTarget({}), "");
  assert.equal(
    logTarget({ "containerd.io/restart.logpath": "/var/log/a b" }),
    "file:///var/log/a%20b",
  );
  assert.equal(logTarget({ "containerd.io/restart.loguri": "file:///x" }), "file:///x");
  assert.throws(
    () => logTarget({ "containerd.io/restart.loguri": "binary:///bin/logger" }),
    /binary:\/\/ logging is not supported/,
  );
  assert.throws(() => logTarget({ "containerd.io/restart.logpath": "rel" }), /not absolute/);
});

function container(id: string, labels: Record<string, string>, snapshotKey = ""): Container {
  return {
    id,
    labels,
    image: "",
    runtime: { name: "io.containerd.runc.v2" },
    spec: { typeUrl: "x", value: new Uint8Array() },
    snapshotter: "overlayfs",
    snapshotKey,
    createdAt: new Date(0),
    updatedAt: new Date(1),
    extensions: {},
  };
}

class Fake implements MonitorBackend {
  cs = new Map<string, Container>();
  tasks = new Map<string, TaskView>();
  starts: string[] = [];
  kills: string[] = [];
  snapshotGone = false;
  namespaces() {
    return ["default"];
  }
  containers() {
    return [...this.cs.values()];
  }
  setLabels(_ns: string, id: string, labels: Record<string, string>) {
    const c = this.cs.get(id)!;
    this.cs.set(id, {
      ...c,
      labels: { ...c.labels, ...labels },
      updatedAt: new Date(c.updatedAt.getTime() + 1),
    });
  }
  task(_ns: string, id: string) {
    return Promise.resolve(this.tasks.get(id));
  }
  kill(_ns: string, id: string) {
    this.kills.push(id);
    this.tasks.delete(id);
    return Promise.resolve();
  }
  deleteTask(_ns: string, id: string) {
    this.tasks.delete(id);
    return Promise.resolve();
  }
  mounts() {
    if (this.snapshotGone) return Promise.reject(notFound("snapshot gone"));
    return Promise.resolve([]);
  }
  start(_ns: string, c: Container, _r: unknown, stdio: string) {
    this.starts.push(`${c.id}:${stdio}`);
    this.tasks.set(c.id, { status: Status.RUNNING, exitStatus: 0 });
    return Promise.resolve(42);
  }
  exit(id: string, code: number) {
    this.tasks.set(id, { status: Status.STOPPED, exitStatus: code });
  }
}

const quiet = () => new Logger("fatal");

Deno.test("RestartMonitor: restarts, on-failure stops after N, stopped kills", async () => {
  const f = new Fake();
  const m = new RestartMonitor(f, 1000, quiet());
  f.cs.set("a", container("a", { "containerd.io/restart.status": "running" }));
  f.cs.set(
    "b",
    container("b", {
      "containerd.io/restart.status": "running",
      "containerd.io/restart.policy": "on-failure:2",
      "containerd.io/restart.logpath": "/tmp/b.log",
    }),
  );
  f.cs.set("c", container("c", {}));
  f.exit("a", 0);
  f.exit("b", 3);
  await m.reconcile();
  assert.deepEqual(f.starts.sort(), ["a:", "b:file:///tmp/b.log"]);
  for (let i = 0; i < 3; i++) {
    f.exit("b", 3);
    await m.reconcile();
  }
  assert.equal(f.starts.filter((s) => s.startsWith("b:")).length, 2);
  assert.equal(f.cs.get("b")!.labels[COUNT_LABEL], "2");
  f.setLabels("default", "a", { "containerd.io/restart.status": "stopped" });
  await m.reconcile();
  assert.deepEqual(f.kills, ["a"]);
  await m.close();
});

Deno.test("RestartMonitor: a gone snapshot is reported once and not retried", async () => {
  const f = new Fake();
  const lines: string[] = [];
  const m = new RestartMonitor(f, 1000, new Logger("info", {}, (l) => lines.push(l)));
  f.cs.set("s", container("s", { "containerd.io/restart.status": "running" }, "snap"));
  f.snapshotGone = true;
  for (let i = 0; i < 4; i++) await m.reconcile();
  assert.equal(f.starts.length, 0);
  assert.equal(lines.filter((l) => l.includes("gives up")).length, 1, lines.join("\n"));
  // Updating the container (e.g. a new label) clears the trouble.
  f.snapshotGone = false;
  f.setLabels("default", "s", { x: "y" });
  await m.reconcile();
  assert.deepEqual(f.starts, ["s:"]);
  await m.close();
});

Deno.test("RestartMonitor: a bad policy is reported once", async () => {
  const f = new Fake();
  const lines: string[] = [];
  const m = new RestartMonitor(f, 1000, new Logger("info", {}, (l) => lines.push(l)));
  f.cs.set(
    "p",
    container("p", {
      "containerd.io/restart.status": "running",
      "containerd.io/restart.policy": "sometimes",
    }),
  );
  await m.reconcile();
  await m.reconcile();
  assert.equal(f.starts.length, 0);
  assert.equal(lines.filter((l) => l.includes("not supported")).length, 1, lines.join("\n"));
  await m.close();
});

Deno.test("RestartMonitor: a just-created container is left to its client", async () => {
  const f = new Fake();
  const m = new RestartMonitor(f, 1000, quiet());
  f.cs.set("n", {
    ...container("n", { "containerd.io/restart.status": "running" }),
    createdAt: new Date(),
  });
  await m.reconcile();
  assert.deepEqual(f.starts, []);
  m.exited("default", "n", 1); // an exit seen: restart at once
  await m.trigger();
  assert.deepEqual(f.starts, ["n:"]);
  await m.close();
});
