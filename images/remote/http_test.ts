import assert from "node:assert/strict";
import { TainerdError } from "../../plugins/errdefs.ts";
import {
  type AuthorizationUsed,
  createHttpClient,
  networkError,
  parseRetryAfter,
  type RequestAuthorizer,
  send,
} from "./http.ts";
import { startRawServer } from "./testdata/raw_server.ts";
import { freePort } from "./testdata/registry.ts";

function isKind(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

function serve(handler: (req: Request) => Response | Promise<Response>) {
  return Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, handler);
}

const fast = { minDelayMs: 5, maxDelayMs: 20 };

Deno.test("send() retries 503 and 429, honouring Retry-After", async () => {
  let n = 0;
  const server = serve(() => {
    n++;
    if (n === 1) return new Response("busy", { status: 503, headers: { "retry-after": "0" } });
    if (n === 2) return new Response("slow down", { status: 429 });
    return new Response("ok");
  });
  const client = createHttpClient();
  try {
    const response = await send({
      client,
      method: "GET",
      url: `http://127.0.0.1:${server.addr.port}/x`,
      retry: fast,
    });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), "ok");
    assert.equal(n, 3);
  } finally {
    client.close();
    await server.shutdown();
  }
});

Deno.test("send() stops retrying after the configured attempts and returns the last answer", async () => {
  let n = 0;
  const server = serve(() => {
    n++;
    return new Response("down", { status: 503 });
  });
  const client = createHttpClient();
  try {
    const response = await send({
      client,
      method: "GET",
      url: `http://127.0.0.1:${server.addr.port}/x`,
      retry: { ...fast, attempts: 3 },
    });
    assert.equal(response.status, 503);
    await response.body?.cancel();
    assert.equal(n, 3);
  } finally {
    client.close();
    await server.shutdown();
  }
});

Deno.test("send() retries a dropped connection", async () => {
  let n = 0;
  const server = startRawServer(async (ex) => {
    n++;
    if (n === 1) return; // close without answering
    await ex.respond(200, {}, "second time lucky");
  });
  for (const transport of ["fetch", "node"] as const) {
    const client = createHttpClient({ transport });
    try {
      n = 0;
      const response = await send({ client, method: "GET", url: `${server.url}/x`, retry: fast });
      assert.equal(await response.text(), "second time lucky", transport);
      assert.equal(n, 2);
    } finally {
      client.close();
    }
  }
  await server.stop();
});

Deno.test("send() reports a refused connection as Unavailable", async () => {
  const client = createHttpClient();
  try {
    await assert.rejects(
      send({
        client,
        method: "GET",
        url: `http://127.0.0.1:${freePort()}/v2/`,
        retry: { attempts: 1 },
      }),
      isKind("Unavailable", /Cannot GET http:\/\/127\.0\.0\.1:\d+\/v2\/: connection refused/),
    );
  } finally {
    client.close();
  }
});

Deno.test("send() follows redirects and never forwards credentials to another origin", async () => {
  const seen: Record<string, string | null> = {};
  const storage = serve((req) => {
    seen.storage = req.headers.get("authorization");
    return new Response("blob bytes");
  });
  const registry = serve((req) => {
    const path = new URL(req.url).pathname;
    seen[path] = req.headers.get("authorization");
    if (path === "/v2/x/blobs/a") {
      return new Response(null, { status: 307, headers: { location: "/v2/x/blobs/b" } });
    }
    if (path === "/v2/x/blobs/b") {
      return new Response(null, {
        status: 302,
        headers: { location: `http://127.0.0.1:${storage.addr.port}/bucket/b?sig=1` },
      });
    }
    return new Response("?", { status: 404 });
  });
  const authorizer: RequestAuthorizer = {
    authorize: (): Promise<AuthorizationUsed> =>
      Promise.resolve({ header: "Bearer secret", fresh: false }),
    unauthorized: () => Promise.resolve(false),
  };
  const client = createHttpClient();
  try {
    const response = await send({
      client,
      method: "GET",
      url: `http://127.0.0.1:${registry.addr.port}/v2/x/blobs/a`,
      authorizer,
    });
    assert.equal(await response.text(), "blob bytes");
    assert.equal(seen["/v2/x/blobs/a"], "Bearer secret");
    assert.equal(seen["/v2/x/blobs/b"], "Bearer secret");
    assert.equal(seen.storage, null);
  } finally {
    client.close();
    await registry.shutdown();
    await storage.shutdown();
  }
});

Deno.test("send() limits the wait for headers and for body data", async () => {
  const server = startRawServer(async (ex) => {
    if (ex.request.path === "/silent") {
      await new Promise((r) => setTimeout(r, 600));
      return;
    }
    await ex.write("HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
    await new Promise((r) => setTimeout(r, 600));
  });
  const client = createHttpClient();
  try {
    await assert.rejects(
      send({
        client,
        method: "GET",
        url: `${server.url}/silent`,
        retry: { attempts: 1 },
        timeouts: { headersMs: 200 },
      }),
      isKind("DeadlineExceeded", /no response within 200 ms/),
    );
    const response = await send({
      client,
      method: "GET",
      url: `${server.url}/stall`,
      retry: { attempts: 1 },
      timeouts: { idleMs: 200 },
    });
    const reader = response.body!.getReader();
    assert.equal((await reader.read()).value?.byteLength, 10);
    await assert.rejects(reader.read(), isKind("DeadlineExceeded", /no data received for 200 ms/));
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("send() aborts with Canceled when the caller's signal fires", async () => {
  const server = startRawServer(async () => {
    await new Promise((r) => setTimeout(r, 400));
  });
  const client = createHttpClient();
  try {
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    await assert.rejects(
      send({ client, method: "GET", url: `${server.url}/x`, signal: controller.signal }),
      isKind("Canceled"),
    );
  } finally {
    client.close();
    await server.stop();
  }
});

Deno.test("parseRetryAfter() reads seconds and HTTP dates", () => {
  assert.equal(parseRetryAfter("3"), 3000);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter("soon"), undefined);
  const now = Date.parse("2024-01-01T00:00:00Z");
  assert.equal(parseRetryAfter("Mon, 01 Jan 2024 00:00:05 GMT", now), 5000);
  assert.equal(parseRetryAfter("Mon, 01 Jan 2023 00:00:05 GMT", now), 0);
});

Deno.test("networkError() explains certificate and protocol mix-ups", () => {
  const cert = networkError(
    new TypeError("fetch failed", { cause: new Error("invalid peer certificate: UnknownIssuer") }),
    "GET",
    "https://h/v2/",
  );
  assert.equal(cert.kind, "FailedPrecondition");
  assert.match(
    cert.message,
    /not trusted \(invalid peer certificate: UnknownIssuer\).*skip_verify/,
  );
  const node = networkError(
    Object.assign(new Error("unable to verify the first certificate"), {}),
    "GET",
    "https://h/",
  );
  assert.equal(node.kind, "FailedPrecondition");
  const plain = networkError(
    new Error("received corrupt message of type InvalidContentType"),
    "GET",
    "https://h/",
  );
  assert.match(plain.message, /plain HTTP/);
  assert.equal(networkError(new Error("connection reset"), "GET", "http://h/").kind, "Unavailable");
});
