/**
 * Events end to end: `ctr events` sees what the daemon publishes; filters apply.
 */

import assert from "node:assert/strict";
import { create, toBinary } from "@bufbuild/protobuf";
import { NamespaceCreateSchema } from "../api/gen/containerd/events/namespace_pb.ts";
import { delay, withDaemon } from "./harness.ts";

async function readUntil(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  want: RegExp,
  timeoutMs = 10_000,
): Promise<string> {
  let text = "";
  const dec = new TextDecoder();
  const deadline = Date.now() + timeoutMs;
  while (!want.test(text)) {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out waiting for ${want} in:\n${text}`);
    const r = await Promise.race([reader.read(), delay(left).then(() => null)]);
    if (!r || r.done) throw new Error(`stream ended waiting for ${want} in:\n${text}`);
    text += dec.decode(r.value);
  }
  return text;
}

Deno.test("ctr events shows namespace events as they happen", () =>
  withDaemon(async (d) => {
    const child = new Deno.Command("ctr", {
      args: ["-a", d.address, "events"],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.getReader();
    try {
      // Wait until the subscription is registered before publishing.
      await delay(500);
      const r = await d.ctr(["namespaces", "create", "evented", "k=v"]);
      assert.equal(r.code, 0, r.stderr);
      const text = await readUntil(reader, /evented/);
      assert.match(text, /evented\s+\/namespaces\/create\s+.*"name":"evented"/);
    } finally {
      child.kill();
      reader.releaseLock();
      await child.stdout.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
      await child.status;
    }
  }));

Deno.test("Events.Subscribe filters by topic, namespace and event fields; Publish and Forward deliver", () =>
  withDaemon(async (d) => {
    const c = d.client("pubns");
    const abort = new AbortController();
    const got: string[] = [];
    const sub = (async () => {
      try {
        for await (
          const e of c.events.subscribe({
            filters: [
              'topic=="/custom/ping",namespace==pubns',
              'topic~="^/namespaces/",event.name==wanted',
            ],
          }, { signal: abort.signal })
        ) {
          got.push(`${e.namespace} ${e.topic}`);
        }
      } catch {
        // Aborted.
      }
    })();
    try {
      await delay(300);
      const payload = {
        typeUrl: "containerd.events.NamespaceCreate",
        value: toBinary(NamespaceCreateSchema, create(NamespaceCreateSchema, { name: "x" })),
      };
      await c.events.publish({ topic: "/custom/ping", event: payload });
      await c.events.publish({ topic: "/custom/other", event: payload });
      await c.namespaces.create({ namespace: { name: "ignored", labels: {} } });
      await c.namespaces.create({ namespace: { name: "wanted", labels: {} } });
      await c.events.forward({
        envelope: { namespace: "elsewhere", topic: "/custom/ping", event: payload },
      });
      const deadline = Date.now() + 5000;
      while (got.length < 2 && Date.now() < deadline) await delay(50);
      await delay(200);
      assert.deepEqual(got, ["pubns /custom/ping", "wanted /namespaces/create"]);
      await assert.rejects(
        c.events.publish({ topic: "no-slash", event: payload }),
        /topic "no-slash" is invalid/,
      );
    } finally {
      abort.abort();
      await sub;
      c.close();
    }
  }));

Deno.test("shims' events forwarded over the daemon's ttrpc socket reach subscribers", () =>
  withDaemon(async (d) => {
    const { TtrpcClient, createTtrpcClient } = await import("../ttrpc/mod.ts");
    const { Events: TtrpcEvents } = await import(
      "../api/gen/containerd/services/ttrpc/events/v1/events_pb.ts"
    );
    const c = d.client("default");
    const abort = new AbortController();
    const got: string[] = [];
    const sub = (async () => {
      try {
        for await (
          const e of c.events.subscribe({ filters: ['topic=="/tasks/exit"'] }, {
            signal: abort.signal,
          })
        ) got.push(`${e.namespace} ${e.topic} ${e.event?.typeUrl}`);
      } catch {
        // Aborted.
      }
    })();
    const tc = await TtrpcClient.connect(`${d.address}.ttrpc`);
    try {
      await delay(300);
      const events = createTtrpcClient(TtrpcEvents, tc);
      await events.forward({
        envelope: {
          namespace: "shimns",
          topic: "/tasks/exit",
          event: { typeUrl: "containerd.events.TaskExit", value: new Uint8Array() },
        },
      });
      const deadline = Date.now() + 5000;
      while (got.length < 1 && Date.now() < deadline) await delay(50);
      assert.deepEqual(got, ["shimns /tasks/exit containerd.events.TaskExit"]);
    } finally {
      tc.close();
      abort.abort();
      await sub;
      c.close();
    }
  }));
