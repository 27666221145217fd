import assert from "node:assert/strict";
import { Events } from "../api/gen/containerd/services/ttrpc/events/v1/events_pb.ts";
import { TaskExitSchema, TaskStartSchema } from "../api/gen/containerd/events/task_pb.ts";
import { Logger } from "../log.ts";
import { invalidArgument } from "../plugins/errdefs.ts";
import { TtrpcServer } from "../ttrpc/server.ts";
import { EventPublisher, TTRPC_NAMESPACE_HEADER } from "./publisher.ts";
import { FakeDaemon } from "./testdata/helpers.ts";

const quiet = new Logger("error", {}, () => {});

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "pub" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

function publishStart(p: EventPublisher, id: string) {
  p.publish("/tasks/start", TaskStartSchema, { containerId: id, pid: 1 });
}

function publishExit(p: EventPublisher, id: string) {
  p.publish("/tasks/exit", TaskExitSchema, { containerId: id, id, pid: 1, exitStatus: 0 });
}

Deno.test("EventPublisher forwards events in order with the namespace", async () => {
  await withDir(async (dir) => {
    const daemon = new FakeDaemon(`${dir}/d.sock`);
    daemon.start();
    const p = new EventPublisher({
      address: `unix://${daemon.path}`,
      namespace: "ns1",
      log: quiet,
    });
    try {
      for (let i = 0; i < 20; i++) publishStart(p, `c${i}`);
      publishExit(p, "c0");
      assert.equal(await p.flush(5000), true);
      assert.deepEqual(
        daemon.events.map((e) => e.event.containerId),
        [...Array.from({ length: 20 }, (_, i) => `c${i}`), "c0"],
      );
      assert.ok(daemon.events.every((e) => e.namespace === "ns1"));
      assert.equal(daemon.events[20].typeUrl, "containerd.events.TaskExit");
      assert.equal(p.delivered, 21);
    } finally {
      await p.close(1000);
      await daemon.stop();
    }
  });
});

Deno.test("EventPublisher queues while the daemon is down and delivers each event once", async () => {
  await withDir(async (dir) => {
    const daemon = new FakeDaemon(`${dir}/d.sock`);
    const p = new EventPublisher({
      address: daemon.path,
      namespace: "ns",
      log: quiet,
      minBackoffMs: 10,
      maxBackoffMs: 50,
    });
    try {
      publishStart(p, "a");
      publishExit(p, "a");
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(p.pending, 2);
      daemon.start();
      assert.equal(await p.flush(5000), true);
      // the daemon goes away and comes back: the connection is re-established
      await daemon.stop();
      publishStart(p, "b");
      await new Promise((r) => setTimeout(r, 100));
      daemon.start();
      assert.equal(await p.flush(5000), true);
      assert.deepEqual(daemon.topics("a"), ["/tasks/start", "/tasks/exit"]);
      assert.deepEqual(daemon.topics("b"), ["/tasks/start"]);
    } finally {
      await p.close(1000);
      await daemon.stop();
    }
  });
});

Deno.test("EventPublisher bounds its queue, dropping the oldest events that are not exits", async () => {
  await withDir(async (dir) => {
    const daemon = new FakeDaemon(`${dir}/d.sock`);
    const p = new EventPublisher({
      address: daemon.path,
      namespace: "ns",
      log: quiet,
      maxQueue: 3,
      minBackoffMs: 10,
      maxBackoffMs: 20,
    });
    try {
      publishStart(p, "s1"); // head: in flight, kept
      publishExit(p, "x1");
      publishStart(p, "s2");
      publishStart(p, "s3"); // evicts s2, the oldest non-exit after the head
      publishExit(p, "x2"); // evicts s3
      assert.equal(p.pending, 3);
      assert.equal(p.dropped, 2);
      daemon.start();
      assert.equal(await p.flush(5000), true);
      assert.deepEqual(daemon.events.map((e) => e.event.containerId), ["s1", "x1", "x2"]);
    } finally {
      await p.close(1000);
      await daemon.stop();
    }
  });
});

Deno.test("EventPublisher drops an event the daemon keeps refusing, then goes on", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/d.sock`;
    const seen: string[] = [];
    const metadata: string[] = [];
    const server = new TtrpcServer();
    server.register(Events, {
      forward: ({ envelope }, ctx) => {
        seen.push(envelope!.topic);
        metadata.push(String(ctx.metadata[TTRPC_NAMESPACE_HEADER]));
        if (envelope!.topic === "/tasks/start") throw invalidArgument("no thanks");
        return {};
      },
    });
    const serving = server.serve(Deno.listen({ transport: "unix", path }));
    const p = new EventPublisher({
      address: path,
      namespace: "ns",
      log: quiet,
      minBackoffMs: 1,
      maxAttempts: 3,
    });
    try {
      publishStart(p, "a");
      publishExit(p, "a");
      assert.equal(await p.flush(5000), true);
      assert.deepEqual(seen, ["/tasks/start", "/tasks/start", "/tasks/start", "/tasks/exit"]);
      assert.ok(metadata.every((m) => m === "ns"));
      assert.equal(p.dropped, 1);
    } finally {
      await p.close(1000);
      await server.close();
      await serving;
    }
  });
});

Deno.test("EventPublisher without a daemon address drops events at once", async () => {
  const p = new EventPublisher({ address: "", namespace: "ns", log: quiet });
  publishStart(p, "a");
  assert.equal(p.pending, 0);
  assert.equal(p.dropped, 1);
  await p.close();
});
