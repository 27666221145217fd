/**
 * Challenge parsing, and the Bearer/Basic flows of the Authorizer against a small fake registry
 * (Deno.serve) that demands tokens from its own token endpoint, where tokens can be revoked and
 * clocks moved — things a real registry does not let a test do. The real registry's token and
 * htpasswd auth are exercised in registry_auth_test.ts.
 */

import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import { TainerdError } from "../../plugins/errdefs.ts";
import {
  Authorizer,
  basicAuthorization,
  mergeScopes,
  parseChallenges,
  parseUserPass,
  repositoryScope,
  staticCredentials,
} from "./auth.ts";
import { createHttpClient, send } from "./http.ts";

Deno.test("parseChallenges() reads Bearer and Basic challenges, strongest first", () => {
  assert.deepEqual(
    parseChallenges(
      'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull"',
    ),
    [{
      scheme: "bearer",
      params: {
        realm: "https://auth.docker.io/token",
        service: "registry.docker.io",
        scope: "repository:library/busybox:pull",
      },
    }],
  );
  // Two challenges in one value (as Headers.get joins repeated headers), odd spacing, escapes.
  assert.deepEqual(
    parseChallenges(
      'Basic realm="r\\"1" , Bearer realm="https://x/token", service = svc, Foo bar=1',
    ),
    [
      { scheme: "bearer", params: { realm: "https://x/token", service: "svc" } },
      { scheme: "basic", params: { realm: 'r"1' } },
    ],
  );
  assert.deepEqual(parseChallenges(["basic realm=x", "Digest realm=y"]).map((c) => c.scheme), [
    "digest",
    "basic",
  ]);
  assert.deepEqual(parseChallenges(""), []);
  assert.deepEqual(parseChallenges(null), []);
  assert.deepEqual(
    parseChallenges(new Headers({ "www-authenticate": 'Bearer error="invalid_token"' })),
    [
      { scheme: "bearer", params: { error: "invalid_token" } },
    ],
  );
});

Deno.test("credential helpers parse user:password and scope lists", () => {
  assert.deepEqual(parseUserPass("alice:a:b"), { username: "alice", secret: "a:b" });
  assert.throws(
    () => parseUserPass("alice"),
    (e) => e instanceof TainerdError && e.kind === "InvalidArgument",
  );
  const byHost = staticCredentials({ "h:1": { username: "u", secret: "p" } });
  assert.deepEqual(byHost("h:1"), { username: "u", secret: "p" });
  assert.equal(byHost("other"), undefined);
  assert.equal(repositoryScope("a/b"), "repository:a/b:pull");
  assert.equal(repositoryScope("a/b", true), "repository:a/b:pull,push");
  assert.deepEqual(mergeScopes(["b", "a"], ["a", ""], ["c"]), ["a", "b", "c"]);
  assert.equal(basicAuthorization("u", "p"), `Basic ${Buffer.from("u:p").toString("base64")}`);
});

interface FakeRegistry {
  url: string;
  tokenRequests: URLSearchParams[];
  /** Tokens the registry accepts. */
  valid: Set<string>;
  /** Refuse every token from now on. */
  refuseAll: boolean;
  stop(): Promise<void>;
}

/** A registry demanding Bearer tokens from its own /token endpoint. */
function fakeBearerRegistry(): FakeRegistry {
  let counter = 0;
  const state: FakeRegistry = {
    url: "",
    tokenRequests: [],
    valid: new Set(),
    refuseAll: false,
    stop: () => server.shutdown(),
  };
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/token") {
      state.tokenRequests.push(url.searchParams);
      const token = `t${++counter}`;
      state.valid.add(token);
      return Response.json({ token, expires_in: 120 });
    }
    const auth = req.headers.get("authorization") ?? "";
    const token = auth.startsWith("Bearer ") ? auth.slice(7) : "";
    if (!state.refuseAll && state.valid.has(token)) return new Response(`ok ${token}`);
    const error = token ? ',error="invalid_token"' : "";
    return new Response(
      JSON.stringify({ errors: [{ code: "UNAUTHORIZED", message: "authentication required" }] }),
      {
        status: 401,
        headers: {
          "www-authenticate":
            `Bearer realm="${state.url}/token",service="fake",scope="repository:x:pull"${error}`,
        },
      },
    );
  });
  state.url = `http://127.0.0.1:${server.addr.port}`;
  return state;
}

Deno.test("Authorizer fetches an anonymous token on a 401, caches it per scope and refreshes it when refused", async () => {
  const registry = fakeBearerRegistry();
  let now = 1_000_000;
  const authorizer = new Authorizer({ now: () => now });
  const client = createHttpClient();
  const get = async (path = "/v2/x/manifests/a", scopes = ["repository:x:pull"]) => {
    const response = await send({
      client,
      method: "GET",
      url: `${registry.url}${path}`,
      authorizer,
      scopes,
    });
    return { status: response.status, text: await response.text() };
  };
  try {
    assert.deepEqual(await get(), { status: 200, text: "ok t1" });
    assert.equal(registry.tokenRequests.length, 1);
    assert.equal(registry.tokenRequests[0].get("service"), "fake");
    assert.deepEqual(registry.tokenRequests[0].getAll("scope"), ["repository:x:pull"]);

    // Reused for the next requests with the same scopes…
    assert.deepEqual(await get("/v2/x/blobs/b"), { status: 200, text: "ok t1" });
    assert.equal(registry.tokenRequests.length, 1);
    // …but another scope set gets its own token (with the challenge's scope added).
    assert.deepEqual(await get("/v2/x/blobs/b", ["repository:x:pull,push"]), {
      status: 200,
      text: "ok t2",
    });
    assert.deepEqual(registry.tokenRequests[1].getAll("scope"), [
      "repository:x:pull",
      "repository:x:pull,push",
    ]);

    // The registry revokes t1: the cached token is dropped and a fresh one fetched.
    registry.valid.delete("t1");
    assert.deepEqual(await get(), { status: 200, text: "ok t3" });
    assert.equal(registry.tokenRequests.length, 3);

    // Expiry: past 90% of expires_in the token is renewed up front, without a 401.
    now += 110_000;
    assert.deepEqual(await get(), { status: 200, text: "ok t4" });

    // Concurrent requests share one token fetch.
    now += 200_000;
    const results = await Promise.all([1, 2, 3, 4, 5].map(() => get()));
    assert.ok(results.every((r) => r.text === "ok t5"));
    assert.equal(registry.tokenRequests.length, 5);

    // A fresh token refused: no loop, the 401 comes back.
    registry.refuseAll = true;
    const before = registry.tokenRequests.length;
    assert.equal((await get()).status, 401);
    assert.ok(registry.tokenRequests.length - before <= 1);
  } finally {
    client.close();
    await registry.stop();
  }
});

Deno.test("Authorizer uses Basic auth only with credentials, and gives up when they are refused", async () => {
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (req) => {
    const auth = req.headers.get("authorization");
    if (auth === basicAuthorization("bob", "pw")) return new Response("welcome");
    return new Response("no", {
      status: 401,
      headers: { "www-authenticate": 'Basic realm="fake"' },
    });
  });
  const url = `http://127.0.0.1:${server.addr.port}/v2/`;
  const client = createHttpClient();
  try {
    const anonymous = await send({ client, method: "GET", url, authorizer: new Authorizer() });
    assert.equal(anonymous.status, 401);
    await anonymous.body?.cancel();

    const hosts: string[] = [];
    const good = new Authorizer({
      credentials: (host) => {
        hosts.push(host);
        return { username: "bob", secret: "pw" };
      },
    });
    const ok = await send({ client, method: "GET", url, authorizer: good });
    assert.equal(await ok.text(), "welcome");
    assert.deepEqual(hosts, [`127.0.0.1:${server.addr.port}`]);

    const bad = new Authorizer({ credentials: () => ({ username: "bob", secret: "wrong" }) });
    const refused = await send({ client, method: "GET", url, authorizer: bad });
    assert.equal(refused.status, 401);
    await refused.body?.cancel();
  } finally {
    client.close();
    await server.shutdown();
  }
});

Deno.test("Authorizer with a secret uses the OAuth2 POST and reports a refused token request", async () => {
  const posts: URLSearchParams[] = [];
  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname === "/token" && req.method === "POST") {
      const form = new URLSearchParams(await req.text());
      posts.push(form);
      if (form.get("password") !== "pw") {
        return Response.json({ errors: [{ code: "DENIED", message: "bad password" }] }, {
          status: 403,
        });
      }
      return Response.json({ access_token: "oauth-token" });
    }
    if (req.headers.get("authorization") === "Bearer oauth-token") return new Response("in");
    return new Response("", {
      status: 401,
      headers: { "www-authenticate": `Bearer realm="http://${url.host}/token",service="svc"` },
    });
  });
  const url = `http://127.0.0.1:${server.addr.port}/v2/x/manifests/1`;
  const client = createHttpClient();
  try {
    const ok = await send({
      client,
      method: "GET",
      url,
      scopes: ["repository:x:pull"],
      authorizer: new Authorizer({ credentials: () => ({ username: "me", secret: "pw" }) }),
    });
    assert.equal(await ok.text(), "in");
    assert.equal(posts[0].get("grant_type"), "password");
    assert.equal(posts[0].get("username"), "me");
    assert.equal(posts[0].get("scope"), "repository:x:pull");
    assert.equal(posts[0].get("service"), "svc");

    await assert.rejects(
      send({
        client,
        method: "GET",
        url,
        scopes: ["repository:x:pull"],
        authorizer: new Authorizer({ credentials: () => ({ username: "me", secret: "nope" }) }),
      }),
      (err) =>
        err instanceof TainerdError && err.kind === "PermissionDenied" &&
        /Cannot get a token from http:.*\/token for repository:x:pull: the registry answered 403.*denied: bad password/
          .test(err.message),
    );
  } finally {
    client.close();
    await server.shutdown();
  }
});
