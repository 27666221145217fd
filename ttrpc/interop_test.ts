/**
 * Wire compatibility with the real Go implementation (github.com/containerd/ttrpc v1.1.2, as
 * containerd 1.6 ships): a Go client against TtrpcServer and TtrpcClient against a Go server.
 * The Go peer lives in testdata/goclient and is built here; the tests skip (with a message)
 * when `go` is missing or the build fails, e.g. because modules cannot be downloaded.
 */
import assert from "node:assert/strict";
import { Version } from "../api/gen/containerd/services/version/v1/version_pb.ts";
import { Health, HealthCheckResponse_ServingStatus } from "../api/gen/grpc/health/v1/health_pb.ts";
import { TainerdError } from "../plugins/errdefs.ts";
import { createTtrpcClient, TtrpcClient } from "./client.ts";
import { tempSocket, testServer } from "./testdata/services.ts";

const GO = Deno.env.get("GO") ?? "/usr/local/go/bin/go";
const SRC = new URL("./testdata/goclient/", import.meta.url).pathname;

let built: Promise<string | null> | undefined;

/** Builds the Go peer once; resolves its path, or null (after saying why) to skip. */
function goPeer(): Promise<string | null> {
  return built ??= (async () => {
    try {
      await Deno.stat(GO);
    } catch {
      console.warn(`SKIPPED: Go interop tests need ${GO} (set GO=/path/to/go)`);
      return null;
    }
    const dir = await Deno.makeTempDir({ prefix: "ttrpc-goclient-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const bin = `${dir}/goclient`;
    const out = await new Deno.Command(GO, {
      args: ["build", "-o", bin, "."],
      cwd: SRC,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(300_000),
    }).output();
    if (!out.success) {
      console.warn(
        `SKIPPED: cannot build the Go ttrpc peer (modules not downloadable?):\n${
          new TextDecoder().decode(out.stderr)
        }`,
      );
      return null;
    }
    return bin;
  })();
}

Deno.test("Go ttrpc client (containerd/ttrpc v1.1.2) talks to TtrpcServer", async () => {
  const bin = await goPeer();
  if (!bin) return;
  const sock = await tempSocket();
  const { server } = testServer();
  const serving = server.serve(Deno.listen({ transport: "unix", path: sock.path }));
  try {
    const out = await new Deno.Command(bin, {
      args: ["client", sock.path],
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(30_000),
    }).output();
    const stdout = new TextDecoder().decode(out.stdout);
    const stderr = new TextDecoder().decode(out.stderr);
    assert.ok(out.success, `Go client failed: ${stderr}`);
    assert.equal(stdout.trim(), "ok");
  } finally {
    await server.close();
    await serving;
    await sock.cleanup();
  }
});

Deno.test("TtrpcClient talks to a Go ttrpc server (containerd/ttrpc v1.1.2)", async () => {
  const bin = await goPeer();
  if (!bin) return;
  const sock = await tempSocket();
  const child = new Deno.Command(bin, {
    args: ["server", sock.path],
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let client: TtrpcClient | undefined;
  try {
    const { value } = await stdout.read();
    assert.equal(value?.trim(), "ready");
    client = await TtrpcClient.connect(sock.path);
    const version = createTtrpcClient(Version, client);
    const health = createTtrpcClient(Health, client);

    const v = await version.version({}, { metadata: { "x-echo": "from-ts" } });
    assert.equal(v.version, "go-ttrpc");
    assert.equal(v.revision, "from-ts");

    const missing = await health.check({ service: "missing" }).catch((e) => e);
    assert.ok(missing instanceof TainerdError);
    assert.equal(missing.kind, "NotFound");
    assert.equal(missing.message, `Service "missing" not found`);

    const nope = await client.callRaw("grpc.health.v1.Health", "Nope", new Uint8Array()).catch((
      e,
    ) => e);
    assert.ok(nope instanceof TainerdError);
    assert.equal(nope.kind, "NotImplemented");

    const many = await Promise.all(
      Array.from({ length: 100 }, (_, i) => health.check({ service: `svc-${i}` })),
    );
    for (const r of many) assert.equal(r.status, HealthCheckResponse_ServingStatus.SERVING);

    // The Go server's context deadline comes from our timeout_nano.
    const slow = await health.check({ service: "slow" }, { timeoutMs: 150 }).catch((e) => e);
    assert.ok(slow instanceof TainerdError);
    assert.equal(slow.kind, "DeadlineExceeded");
    // And the Go server answered it itself (its handler returned on ctx.Done()): the same
    // connection still works afterwards.
    assert.equal((await version.version({})).version, "go-ttrpc");
  } finally {
    await client?.close();
    await child.stdin.close();
    await stdout.cancel();
    const status = await child.status;
    await sock.cleanup();
    assert.ok(status.success, `Go server exited with ${status.code}`);
  }
});
