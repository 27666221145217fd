/**
 * Authentication against a real registry: htpasswd (Basic) and token auth (Bearer, with a test
 * token server issuing RS256 JWTs the registry verifies against its rootcertbundle).
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { TainerdError } from "../../plugins/errdefs.ts";
import { parseUserPass, staticCredentials } from "./auth.ts";
import { Resolver } from "./resolver.ts";
import { makeTestCerts } from "./testdata/certs.ts";
import { buildTestImage, readAll, type TestImage } from "./testdata/image.ts";
import { startRegistry } from "./testdata/registry.ts";
import { startTokenServer, type TokenServerOptions } from "./testdata/token_server.ts";

function isKind(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

const fast = { retry: { attempts: 2, minDelayMs: 10, maxDelayMs: 50 } };

async function pushImage(resolver: Resolver, ref: string, image: TestImage) {
  const pusher = await resolver.pusher(ref);
  for (const b of image.blobs) {
    await pusher.push(b.desc, b.bytes, { tag: b === image.index ? true : undefined });
  }
}

async function htpasswd(path: string, user: string, password: string): Promise<void> {
  const out = await new Deno.Command("htpasswd", {
    args: ["-Bbn", user, password],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  await Deno.writeFile(path, out.stdout);
}

Deno.test("Basic auth (htpasswd) on a real registry: refused without credentials, works with them", async () => {
  const image = await buildTestImage();
  const dir = await Deno.makeTempDir({ prefix: "tainerd-htpasswd-" });
  await htpasswd(join(dir, "htpasswd"), "alice", "s3cret:pass");
  const registry = await startRegistry({ htpasswd: join(dir, "htpasswd") });
  const ref = `${registry.host}/private/app:v1`;
  try {
    const anonymous = new Resolver(fast);
    try {
      await assert.rejects(
        anonymous.resolve(ref),
        isKind("PermissionDenied", /pull access denied.*401 Unauthorized/),
      );
      await assert.rejects(
        (await anonymous.pusher(ref)).push(image.layers[0].desc, image.layers[0].bytes),
        isKind("PermissionDenied", /401/),
      );
    } finally {
      anonymous.close();
    }

    const wrong = new Resolver({
      ...fast,
      credentials: staticCredentials(parseUserPass("alice:nope")),
    });
    try {
      await assert.rejects(wrong.resolve(ref), isKind("PermissionDenied"));
    } finally {
      wrong.close();
    }

    // Credentials per host, as a provider would give them.
    const seen: string[] = [];
    const alice = new Resolver({
      ...fast,
      credentials: (host) => {
        seen.push(host);
        return host === registry.host ? parseUserPass("alice:s3cret:pass") : undefined;
      },
    });
    try {
      await pushImage(alice, ref, image);
      const { descriptor } = await alice.resolve(ref);
      assert.equal(descriptor.digest, image.index.desc.digest);
      const fetcher = await alice.fetcher(ref);
      for (const b of image.layers) {
        assert.deepEqual(await readAll(await fetcher.fetch(b.desc)), b.bytes);
      }
      // The Basic scheme is learnt once per host and then sent up front.
      assert.deepEqual(seen, [registry.host]);
    } finally {
      alice.close();
    }
  } catch (err) {
    console.error(registry.logs());
    throw err;
  } finally {
    await registry.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Token auth on a real registry: OAuth and GET tokens, anonymous pull, refused push, cached tokens", async () => {
  const image = await buildTestImage();
  const certs = await makeTestCerts();
  const tokenOptions: TokenServerOptions = {
    cert: await Deno.readTextFile(certs.tokenCert),
    key: await Deno.readTextFile(certs.tokenKey),
    issuer: "tainerd-test-issuer",
    service: "tainerd-test-registry",
    users: { alice: "wonderland" },
  };
  const tokens = startTokenServer(tokenOptions);
  const registry = await startRegistry({
    token: {
      realm: tokens.realm,
      service: tokenOptions.service,
      issuer: tokenOptions.issuer,
      rootCertBundle: certs.tokenCert,
    },
  });
  const ref = `${registry.host}/team/app:v1`;
  try {
    // alice pushes: the OAuth2 POST (password grant) gets a pull,push token.
    const alice = new Resolver({
      ...fast,
      credentials: staticCredentials({ username: "alice", secret: "wonderland" }),
    });
    try {
      await pushImage(alice, ref, image);
      assert.ok(tokens.requests.length >= 1);
      assert.ok(
        tokens.requests.every((r) => r.method === "POST" && r.user === "alice" && r.granted),
      );
      assert.ok(tokens.requests.some((r) => r.scopes.includes("repository:team/app:pull,push")));
    } finally {
      alice.close();
    }

    // Anonymous pull: GET tokens without credentials, one per scope set, reused for every blob.
    tokens.requests.length = 0;
    const anonymous = new Resolver(fast);
    try {
      const { descriptor } = await anonymous.resolve(ref);
      assert.equal(descriptor.digest, image.index.desc.digest);
      const fetcher = await anonymous.fetcher(ref);
      for (const b of image.blobs) {
        assert.deepEqual(await readAll(await fetcher.fetch(b.desc)), b.bytes);
      }
      assert.deepEqual(tokens.requests, [
        { method: "GET", user: "", scopes: ["repository:team/app:pull"], granted: true },
      ]);
      assert.equal(anonymous.hosts.authorizer.cachedTokens, 1);

      // Anonymous push: the token server grants pull only; the registry refuses.
      const pusher = await anonymous.pusher(`${registry.host}/team/app:v2`);
      await assert.rejects(
        pusher.push(image.index.desc, image.index.bytes, { tag: true, force: true }),
        isKind("PermissionDenied", /401 Unauthorized/),
      );
    } finally {
      anonymous.close();
    }

    // Without the OAuth endpoint, credentials go by basic auth on GET.
    tokens.requests.length = 0;
    tokenOptions.oauth = false;
    const get = new Resolver({
      ...fast,
      credentials: staticCredentials({ username: "alice", secret: "wonderland" }),
    });
    try {
      await (await get.pusher(`${registry.host}/team/other:v1`)).push(
        image.layers[0].desc,
        image.layers[0].bytes,
      );
      assert.deepEqual(tokens.requests.map((r) => [r.method, r.user, r.granted]), [
        ["POST", "", false],
        ["GET", "alice", true],
      ]);
    } finally {
      get.close();
    }

    // Wrong password: the token server refuses, and that is what the caller sees.
    const wrong = new Resolver({
      ...fast,
      credentials: staticCredentials({ username: "alice", secret: "x" }),
    });
    try {
      await assert.rejects(
        wrong.resolve(ref),
        isKind("PermissionDenied", /Cannot get a token from http:\/\/127\.0\.0\.1:\d+\/token.*401/),
      );
    } finally {
      wrong.close();
    }
  } catch (err) {
    console.error(registry.logs());
    throw err;
  } finally {
    await registry.stop();
    await tokens.stop();
    await Deno.remove(certs.dir, { recursive: true });
  }
});
