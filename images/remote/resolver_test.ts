/**
 * The resolver against fake registries (Deno.serve): schema 1 refusal, GET fallbacks, mirrors
 * tried in order by capability with `?ns=`, host headers, size limits and error classes.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { TainerdError } from "../../plugins/errdefs.ts";
import { digestOf } from "../../plugins/content/digest.ts";
import {
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED,
  MEDIA_TYPE_OCI_INDEX,
  MEDIA_TYPE_OCI_MANIFEST,
} from "./media_types.ts";
import { detectManifestMediaType, Resolver } from "./resolver.ts";
import { blob, readAll } from "./testdata/image.ts";

function isKind(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

const encoder = new TextEncoder();
const MANIFEST = blob(
  MEDIA_TYPE_OCI_MANIFEST,
  encoder.encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: MEDIA_TYPE_OCI_MANIFEST,
      config: {},
      layers: [],
    }),
  ),
);
const fast = { retry: { attempts: 2, minDelayMs: 5, maxDelayMs: 20 } };

interface Seen {
  method: string;
  path: string;
  ns: string | null;
  header: string | null;
}

function fakeRegistry(handler: (req: Request, url: URL) => Response | undefined) {
  const seen: Seen[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const url = new URL(req.url);
    seen.push({
      method: req.method,
      path: url.pathname,
      ns: url.searchParams.get("ns"),
      header: req.headers.get("x-mirror-token"),
    });
    return handler(req, url) ??
      Response.json({ errors: [{ code: "MANIFEST_UNKNOWN", message: "unknown" }] }, {
        status: 404,
      });
  });
  return { host: `127.0.0.1:${server.addr.port}`, seen, stop: () => server.shutdown() };
}

Deno.test("Resolver.resolve() refuses schema 1 manifests with a clear message", async () => {
  const registry = fakeRegistry((req, url) => {
    if (url.pathname === "/v2/old/manifests/v1") {
      return new Response(req.method === "HEAD" ? null : "{}", {
        headers: {
          "content-type": MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED,
          "docker-content-digest": MANIFEST.desc.digest,
        },
      });
    }
    if (url.pathname === "/v2/old/manifests/v2") {
      // An old registry: text/plain, and the body says schemaVersion 1.
      return new Response(
        req.method === "HEAD" ? null : JSON.stringify({ schemaVersion: 1, name: "old" }),
        {
          headers: { "content-type": "text/plain; charset=utf-8" },
        },
      );
    }
  });
  const resolver = new Resolver(fast);
  try {
    for (const tag of ["v1", "v2"]) {
      await assert.rejects(
        resolver.resolve(`${registry.host}/old:${tag}`),
        isKind("NotImplemented", /schema 1 manifests are not supported/),
      );
    }
  } finally {
    resolver.close();
    await registry.stop();
  }
});

Deno.test("Resolver.resolve() falls back to GET when HEAD lacks the digest, or is not allowed", async () => {
  const registry = fakeRegistry((req, url) => {
    if (url.pathname === "/v2/nodigest/manifests/v1") {
      return new Response(
        req.method === "HEAD" ? null : MANIFEST.bytes as Uint8Array<ArrayBuffer>,
        {
          headers: { "content-type": "application/json" },
        },
      );
    }
    if (url.pathname === "/v2/nohead/manifests/v1") {
      if (req.method === "HEAD") return new Response(null, { status: 405 });
      return new Response(MANIFEST.bytes as Uint8Array<ArrayBuffer>, {
        headers: {
          "content-type": MEDIA_TYPE_OCI_MANIFEST,
          "docker-content-digest": MANIFEST.desc.digest,
        },
      });
    }
  });
  const resolver = new Resolver(fast);
  try {
    // No digest header and a generic content type: digest, size and type from the body.
    const a = await resolver.resolve(`${registry.host}/nodigest:v1`);
    assert.deepEqual(a.descriptor, MANIFEST.desc);
    const b = await resolver.resolve(`${registry.host}/nohead:v1`);
    assert.deepEqual(b.descriptor, MANIFEST.desc);
    assert.deepEqual(
      registry.seen.filter((s) => s.path === "/v2/nohead/manifests/v1").map((s) => s.method),
      ["HEAD", "GET"],
    );
  } finally {
    resolver.close();
    await registry.stop();
  }
});

Deno.test("Resolver tries mirrors in order by capability, with ?ns= and the host's headers", async () => {
  const index = blob(
    MEDIA_TYPE_OCI_INDEX,
    encoder.encode(JSON.stringify({ schemaVersion: 2, manifests: [] })),
  );
  const layer = blob("application/octet-stream", encoder.encode("layer bytes"));
  const serveContent = (req: Request, url: URL) => {
    if (
      url.pathname === "/v2/team/app/manifests/v1" ||
      url.pathname === `/v2/team/app/manifests/${index.desc.digest}`
    ) {
      return new Response(req.method === "HEAD" ? null : index.bytes as Uint8Array<ArrayBuffer>, {
        headers: {
          "content-type": MEDIA_TYPE_OCI_INDEX,
          "docker-content-digest": index.desc.digest,
          "content-length": String(index.desc.size),
        },
      });
    }
    if (url.pathname === `/v2/team/app/blobs/${layer.desc.digest}`) {
      return new Response(layer.bytes as Uint8Array<ArrayBuffer>);
    }
  };
  const pullOnly = fakeRegistry((req, url) =>
    url.pathname.includes("/blobs/") ? serveContent(req, url) : undefined
  );
  const resolving = fakeRegistry(() => undefined); // resolves nothing: 404
  const upstream = fakeRegistry(serveContent);
  const hostsDir = await Deno.makeTempDir({ prefix: "tainerd-certs.d-" });
  await Deno.mkdir(join(hostsDir, "registry.example"));
  await Deno.writeTextFile(
    join(hostsDir, "registry.example", "hosts.toml"),
    [
      `server = "http://${upstream.host}"`,
      "",
      `[host."http://${pullOnly.host}"]`,
      `  capabilities = ["pull"]`,
      `  header = { x-mirror-token = "m1" }`,
      "",
      `[host."http://${resolving.host}"]`,
      `  capabilities = ["pull", "resolve"]`,
      "",
    ].join("\n"),
  );
  const resolver = new Resolver({ ...fast, hostDir: hostsDir });
  try {
    const hosts = await resolver.hosts.lookup("registry.example");
    assert.deepEqual(hosts.map((h) => h.host), [pullOnly.host, resolving.host, upstream.host]);

    // By tag: the pull-only mirror is skipped, the resolving mirror says 404, upstream answers.
    const { name, descriptor } = await resolver.resolve("registry.example/team/app:v1");
    assert.equal(name, "registry.example/team/app:v1");
    assert.equal(descriptor.digest, index.desc.digest);
    assert.equal(pullOnly.seen.length, 0);
    assert.deepEqual(resolving.seen.map((s) => [s.method, s.path, s.ns]), [
      ["HEAD", "/v2/team/app/manifests/v1", "registry.example"],
    ]);
    assert.equal(upstream.seen.at(-1)?.ns, "registry.example");

    // By digest, pull capability is enough: the first mirror is asked first (404 for manifests).
    await resolver.resolve(`registry.example/team/app@${index.desc.digest}`);
    assert.equal(pullOnly.seen[0].path, `/v2/team/app/manifests/${index.desc.digest}`);
    assert.equal(pullOnly.seen[0].header, "m1");

    // Blobs come from the first mirror that has them.
    const fetcher = await resolver.fetcher("registry.example/team/app:v1");
    assert.deepEqual(await readAll(await fetcher.fetch(layer.desc)), layer.bytes);
    assert.equal(pullOnly.seen.at(-1)?.path, `/v2/team/app/blobs/${layer.desc.digest}`);
    assert.equal(pullOnly.seen.at(-1)?.ns, "registry.example");

    // Nothing anywhere: NotFound.
    await assert.rejects(
      resolver.resolve("registry.example/team/app:nope"),
      isKind("NotFound", /not found/),
    );
  } finally {
    resolver.close();
    await Promise.all([pullOnly.stop(), resolving.stop(), upstream.stop()]);
    await Deno.remove(hostsDir, { recursive: true });
  }
});

Deno.test("Resolver.resolve() classifies refusals, failures and oversized manifests", async () => {
  let failures = 0;
  const registry = fakeRegistry((req, url) => {
    if (url.pathname.startsWith("/v2/denied/")) {
      return Response.json({
        errors: [{ code: "DENIED", message: "requested access to the resource is denied" }],
      }, {
        status: 403,
      });
    }
    if (url.pathname.startsWith("/v2/broken/")) {
      failures++;
      return new Response("oops", { status: 500 });
    }
    if (url.pathname.startsWith("/v2/huge/")) {
      return new Response(req.method === "HEAD" ? null : "x", {
        headers: {
          "content-type": MEDIA_TYPE_DOCKER_MANIFEST,
          "docker-content-digest": digestOf("x"),
          "content-length": String(5 << 20),
        },
      });
    }
  });
  const resolver = new Resolver(fast);
  try {
    await assert.rejects(
      resolver.resolve(`${registry.host}/denied:v1`),
      isKind(
        "PermissionDenied",
        /pull access denied, repository does not exist or may require authorization: the registry answered 403 Forbidden/,
      ),
    );
    await assert.rejects(
      resolver.resolve(`${registry.host}/broken:v1`),
      isKind("Unavailable", /the registry answered 500 Internal Server Error/),
    );
    assert.equal(failures, 2);
    await assert.rejects(
      resolver.resolve(`${registry.host}/huge:v1`),
      isKind("NotFound", /rejecting a 5242880 byte manifest/),
    );
    await assert.rejects(resolver.resolve("Bad/Ref"), isKind("InvalidArgument", /lowercase/));
  } finally {
    resolver.close();
    await registry.stop();
  }
});

Deno.test("detectManifestMediaType() reads the type from the JSON", () => {
  const detect = (v: unknown) => detectManifestMediaType(encoder.encode(JSON.stringify(v)));
  assert.equal(detect({ schemaVersion: 1 }), MEDIA_TYPE_DOCKER_SCHEMA1_SIGNED);
  assert.equal(
    detect({ schemaVersion: 2, mediaType: MEDIA_TYPE_DOCKER_MANIFEST }),
    MEDIA_TYPE_DOCKER_MANIFEST,
  );
  assert.equal(detect({ schemaVersion: 2, manifests: [] }), MEDIA_TYPE_OCI_INDEX);
  assert.equal(detect({ schemaVersion: 2, config: {}, layers: [] }), MEDIA_TYPE_OCI_MANIFEST);
  assert.equal(detectManifestMediaType(encoder.encode("not json")), undefined);
});
