import assert from "node:assert/strict";
import { create, type DescService, toBinary } from "@bufbuild/protobuf";
import { EmptySchema } from "@bufbuild/protobuf/wkt";
import { Version } from "../api/gen/containerd/services/version/v1/version_pb.ts";
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus,
} from "../api/gen/grpc/health/v1/health_pb.ts";
import { type ErrorKind, TainerdError } from "../plugins/errdefs.ts";
import { createTtrpcClient, TtrpcClient, type TtrpcServiceClient } from "./client.ts";
import { Code, KIND_TO_CODE, StatusError } from "./codes.ts";
import { encodeHeader, FrameReader, FrameWriter, MessageType } from "./frame.ts";
import { decodeResponse, encodeRequest } from "./messages.ts";
import { type ServiceImpl, TtrpcServer } from "./server.ts";
import { tempSocket, testServer } from "./testdata/services.ts";

/** Starts the test server on a temp socket; `stop` closes everything it opened. */
async function setup(options: { serverOpts?: ConstructorParameters<typeof TtrpcServer>[0] } = {}) {
  const sock = await tempSocket();
  const { server, observed } = testServer(options.serverOpts);
  const listener = Deno.listen({ transport: "unix", path: sock.path });
  const serving = server.serve(listener);
  const clients: TtrpcClient[] = [];
  return {
    path: sock.path,
    server,
    observed,
    serving,
    async client(opts?: ConstructorParameters<typeof TtrpcClient>[1]) {
      const c = await TtrpcClient.connect(sock.path, opts);
      clients.push(c);
      return c;
    },
    async stop() {
      await Promise.all(clients.map((c) => c.close()));
      await server.close();
      await serving;
      await sock.cleanup();
    },
  };
}

async function rejection(p: Promise<unknown>): Promise<TainerdError> {
  const err = await p.then(() => undefined, (e) => e);
  assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
  return err;
}

Deno.test("TtrpcClient calls the Version and Health services over a unix socket", async () => {
  const t = await setup();
  try {
    const client = await t.client({ metadata: { "x-echo": "default" } });
    const version = createTtrpcClient(Version, client);
    const health = createTtrpcClient(Health, client);
    const v = await version.version({});
    assert.equal(v.version, "tainerd-test");
    assert.equal(v.revision, "default");
    const v2 = await version.version({}, { metadata: { "x-echo": ["a", "b"] } });
    assert.equal(v2.revision, "a,b");
    const h = await health.check({ service: "containerd" });
    assert.equal(h.status, HealthCheckResponse_ServingStatus.SERVING);
    // The untyped entry point.
    const v3 = await client.call(Version, "version");
    assert.equal(v3.version, "tainerd-test");
    // Raw bytes.
    const raw = await client.callRaw(
      "containerd.services.version.v1.Version",
      "Version",
      toBinary(EmptySchema, create(EmptySchema)),
    );
    assert.deepEqual([...raw.subarray(0, 2)], [0x0a, 12]);
  } finally {
    await t.stop();
  }
});

Deno.test("createTtrpcClient() and ServiceImpl are typed from the GenService", () => {
  // Compile-time checks only.
  const client = (h: TtrpcServiceClient<typeof Health>) => {
    // @ts-expect-error streaming RPCs are not callable
    h.watch({});
    // @ts-expect-error unknown request fields are refused
    h.check({ nope: 1 });
    return h.check({ service: "x" }).then((r) => r.status satisfies number);
  };
  const impl: ServiceImpl<typeof Version> = {
    // @ts-expect-error the response must be a VersionResponse
    version: () => ({ bogus: true }),
  };
  void client;
  void impl;
});

Deno.test("TtrpcClient multiplexes 100 concurrent calls on one connection", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const version = createTtrpcClient(Version, client);
    // Later calls sleep less, so responses come back out of order.
    const results = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        version.version({}, {
          metadata: { "x-echo": String(i), "x-sleep": String(100 - i) },
        })),
    );
    assert.deepEqual(results.map((r) => r.revision), Array.from({ length: 100 }, (_, i) => `${i}`));
    assert.equal(client.pendingCalls, 0);
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcServer maps handler errors to codes and the client maps them back", async () => {
  const sock = await tempSocket();
  const server = new TtrpcServer();
  server.registerRaw("test.Errors", "Throw", (payload) => {
    const kind = new TextDecoder().decode(payload) as ErrorKind;
    throw new TainerdError(kind, `Thrown as ${kind}`);
  });
  const listener = Deno.listen({ transport: "unix", path: sock.path });
  const serving = server.serve(listener);
  const client = await TtrpcClient.connect(sock.path);
  try {
    for (const [kind, code] of Object.entries(KIND_TO_CODE)) {
      const err = await rejection(
        client.callRaw("test.Errors", "Throw", new TextEncoder().encode(kind)),
      );
      assert.equal(err.kind, kind);
      assert.equal(err.message, `Thrown as ${kind}`);
      assert.ok(err instanceof StatusError);
      assert.equal(err.code, code);
    }
  } finally {
    await client.close();
    await server.close();
    await serving;
    await sock.cleanup();
  }
});

Deno.test("TtrpcClient rejects with NotFound and the server's message", async () => {
  const t = await setup();
  try {
    const health = createTtrpcClient(Health, await t.client());
    const err = await rejection(health.check({ service: "missing" }));
    assert.equal(err.kind, "NotFound");
    assert.equal(err.message, `Service "missing" not found`);
    const boom = await rejection(health.check({ service: "boom" }));
    assert.ok(boom instanceof StatusError);
    assert.equal(boom.code, Code.Unknown);
    assert.equal(boom.message, "boom");
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcServer answers unknown services, methods and streaming calls Unimplemented", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const empty = new Uint8Array();
    const noMethod = await rejection(client.callRaw("grpc.health.v1.Health", "Nope", empty));
    assert.equal(noMethod.kind, "NotImplemented");
    assert.match(noMethod.message, /grpc\.health\.v1\.Health\/Nope/);
    const noService = await rejection(client.callRaw("x.Y", "Z", empty));
    assert.equal(noService.kind, "NotImplemented");
    // Watch is server-streaming: never registered.
    const watch = await rejection(client.callRaw("grpc.health.v1.Health", "Watch", empty));
    assert.equal(watch.kind, "NotImplemented");
    // The typed client refuses it locally.
    const local = await rejection(client.call(Health, "watch", {}));
    assert.equal(local.kind, "NotImplemented");
    // The connection is still fine.
    assert.equal((await client.call(Version, "version")).version, "tainerd-test");
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcServer rejects a bad request payload as InvalidArgument", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const err = await rejection(
      client.callRaw("grpc.health.v1.Health", "Check", new Uint8Array([0x0a, 50, 1])),
    );
    assert.equal(err.kind, "InvalidArgument");
    assert.match(err.message, /grpc\.health\.v1\.HealthCheckRequest/);
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcServer.register() refuses methods the service lacks", () => {
  const server = new TtrpcServer();
  const bogus = { nope: () => ({}) } as unknown as ServiceImpl<typeof Version>;
  assert.throws(() => server.register(Version, bogus), TypeError);
  const streaming = { watch: () => ({}) } as unknown as ServiceImpl<typeof Health>;
  assert.throws(() => server.register(Health, streaming), /server_streaming/);
});

Deno.test("TtrpcServer and TtrpcClient accept untyped DescService descriptors", async () => {
  const t = await setup();
  try {
    const untyped: DescService = Version;
    const server = new TtrpcServer();
    server.register(untyped, { version: () => ({ version: "untyped" }) });
    const client = createTtrpcClient(untyped, await t.client());
    const v = await client.version({});
    assert.equal(v.$typeName, "containerd.services.version.v1.VersionResponse");
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcClient rejects pending calls with Unavailable when the server closes", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const health = createTtrpcClient(Health, client);
    const pending = Array.from({ length: 5 }, () => rejection(health.check({ service: "slow" })));
    while (client.pendingCalls < 5) await new Promise((r) => setTimeout(r, 1));
    await new Promise((r) => setTimeout(r, 20));
    await t.server.close();
    for (const p of pending) assert.equal((await p).kind, "Unavailable");
    await client.done;
    assert.ok(client.closed);
    assert.equal((await rejection(health.check({}))).kind, "Unavailable");
    // Handlers were aborted with Canceled.
    assert.equal(t.observed.aborts.length, 5);
    for (const r of t.observed.aborts) assert.equal((r as TainerdError).kind, "Canceled");
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcClient.close() rejects pending calls with Unavailable", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const p = rejection(client.call(Health, "check", { service: "slow" }));
    await new Promise((r) => setTimeout(r, 20));
    await client.close();
    assert.equal((await p).kind, "Unavailable");
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcClient honours timeoutMs and the server aborts the handler", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const started = Date.now();
    const err = await rejection(
      client.call(Health, "check", { service: "slow" }, { timeoutMs: 100 }),
    );
    const elapsed = Date.now() - started;
    assert.equal(err.kind, "DeadlineExceeded");
    assert.ok(elapsed >= 95 && elapsed < 1000, `took ${elapsed}ms`);
    // The server saw the deadline and aborted its handler.
    for (let i = 0; i < 100 && t.observed.aborts.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal((t.observed.aborts[0] as TainerdError).kind, "DeadlineExceeded");
    // A fast call with a deadline succeeds and the handler sees the deadline.
    const v = await client.call(Version, "version", {}, { timeoutMs: 5000 });
    assert.equal(v.version, "tainerd-test");
    const deadline = t.observed.deadlines.at(-1);
    assert.ok(deadline !== undefined && Math.abs(deadline - (Date.now() + 5000)) < 1000);
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcClient honours an AbortSignal with Canceled", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const ac = new AbortController();
    const p = client.call(Health, "check", { service: "slow" }, { signal: ac.signal });
    setTimeout(() => ac.abort(), 10);
    assert.equal((await rejection(p)).kind, "Canceled");
    assert.equal(client.pendingCalls, 0);
  } finally {
    await t.stop();
  }
});

Deno.test("TtrpcClient.connect() to a missing socket fails NotFound", async () => {
  const sock = await tempSocket();
  try {
    const err = await rejection(TtrpcClient.connect(sock.path));
    assert.equal(err.kind, "NotFound");
    assert.match(err.message, /Cannot connect to ttrpc server at/);
  } finally {
    await sock.cleanup();
  }
});

Deno.test("TtrpcServer speaks raw frames: deadlines, bad stream ids, oversize frames", async () => {
  const t = await setup({ serverOpts: { maxMessageLength: 1024 } });
  const conn = await Deno.connect({ transport: "unix", path: t.path });
  try {
    const writer = new FrameWriter(conn);
    const reader = new FrameReader(conn);
    const request = (id: number, timeoutNano = 0n) => ({
      streamId: id,
      type: MessageType.Request,
      flags: 0,
      data: encodeRequest({
        service: "grpc.health.v1.Health",
        method: "Check",
        payload: toBinary(
          HealthCheckRequestSchema,
          create(HealthCheckRequestSchema, {
            service: "slow",
          }),
        ),
        timeoutNano,
        metadata: [],
      }),
    });
    const next = async () => {
      const f = await reader.read();
      assert.ok(f);
      assert.equal(f.type, MessageType.Response);
      return { id: f.streamId, status: decodeResponse(f.data).status };
    };
    // The server answers DeadlineExceeded itself once timeout_nano passes.
    await writer.write(request(1, 50_000_000n));
    let r = await next();
    assert.equal(r.id, 1);
    assert.equal(r.status?.code, Code.DeadlineExceeded);
    assert.match(r.status?.message ?? "", /exceeded its deadline of 50ms/);
    // Even stream ids are refused.
    await writer.write(request(2));
    r = await next();
    assert.deepEqual([r.id, r.status?.code], [2, Code.InvalidArgument]);
    // Stream ids must increase.
    await writer.write(request(1));
    r = await next();
    assert.deepEqual([r.id, r.status?.code], [1, Code.InvalidArgument]);
    // An oversize frame is refused ResourceExhausted; the connection goes on.
    const big = new Uint8Array(10 + 2000);
    encodeHeader({ length: 2000, streamId: 5, type: MessageType.Request, flags: 0 }, big);
    await conn.write(big);
    r = await next();
    assert.deepEqual([r.id, r.status?.code], [5, Code.ResourceExhausted]);
    await writer.write(request(7, 1_000_000n));
    r = await next();
    assert.deepEqual([r.id, r.status?.code], [7, Code.DeadlineExceeded]);
  } finally {
    conn.close();
    await t.stop();
  }
});

Deno.test("TtrpcServer.shutdown() lets in-flight calls finish, then closes", async () => {
  const t = await setup();
  try {
    const client = await t.client();
    const call = client.call(Version, "version", {}, {
      metadata: { "x-sleep": "150", "x-echo": "done" },
    });
    await new Promise((r) => setTimeout(r, 30));
    const started = Date.now();
    await t.server.shutdown();
    assert.ok(Date.now() - started >= 90, "shutdown waited for the call");
    assert.equal((await call).revision, "done");
    await t.serving;
    await client.done;
    assert.ok(client.closed);
    // The listener is gone (Deno removes the socket file when a unix listener closes).
    const kind = (await rejection(TtrpcClient.connect(t.path))).kind;
    assert.ok(kind === "NotFound" || kind === "Unavailable", kind);
  } finally {
    await t.stop();
  }
});
