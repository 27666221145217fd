/**
 * HTTPS against a real registry with a certificate from a test CA: untrusted without the CA,
 * trusted with the per-host CA of `hosts.toml`, accepted with `skip_verify`; and client
 * certificates for a registry that requires them.
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { TainerdError } from "../../plugins/errdefs.ts";
import { Resolver } from "./resolver.ts";
import { makeTestCerts, type TestCerts } from "./testdata/certs.ts";
import { buildTestImage, readAll, type TestImage } from "./testdata/image.ts";
import { type RegistryOptions, type RunningRegistry, startRegistry } from "./testdata/registry.ts";

function isKind(kind: string, pattern?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (pattern) assert.match(err.message, pattern);
    return true;
  };
}

const fast = { retry: { attempts: 2, minDelayMs: 10, maxDelayMs: 50 } };

async function withTls(
  extra: (certs: TestCerts) => RegistryOptions["tls"],
  fn: (registry: RunningRegistry, certs: TestCerts, hostsDir: string) => Promise<void>,
): Promise<void> {
  const certs = await makeTestCerts();
  const hostsDir = await Deno.makeTempDir({ prefix: "tainerd-certs.d-" });
  let registry: RunningRegistry | undefined;
  try {
    registry = await startRegistry({ tls: extra(certs) });
    await fn(registry, certs, hostsDir);
  } catch (err) {
    if (registry) console.error(registry.logs());
    throw err;
  } finally {
    await registry?.stop();
    await Deno.remove(certs.dir, { recursive: true });
    await Deno.remove(hostsDir, { recursive: true });
  }
}

async function writeHosts(
  hostsDir: string,
  dirName: string,
  toml: string,
  files: Record<string, string> = {},
) {
  const dir = join(hostsDir, dirName);
  await Deno.mkdir(dir, { recursive: true });
  await Deno.writeTextFile(join(dir, "hosts.toml"), toml);
  for (const [name, from] of Object.entries(files)) await Deno.copyFile(from, join(dir, name));
}

async function pushImage(resolver: Resolver, ref: string, image: TestImage) {
  const pusher = await resolver.pusher(ref);
  for (const b of image.blobs) {
    await pusher.push(b.desc, b.bytes, { tag: b === image.index ? true : undefined });
  }
}

Deno.test("HTTPS registry: untrusted without the CA, trusted with hosts.toml ca, accepted with skip_verify", async () => {
  const image = await buildTestImage();
  await withTls(
    (c) => ({ cert: c.serverCert, key: c.serverKey }),
    async (registry, certs, hostsDir) => {
      const ref = `${registry.host}/secure/app:v1`;

      // Loopback hosts default to plain HTTP, which the TLS server turns away.
      const plain = new Resolver(fast);
      try {
        await assert.rejects(
          plain.resolve(ref),
          isKind("InvalidArgument", /400 Bad Request; is 127.0.0.1:\d+ an HTTPS-only server/),
        );
      } finally {
        plain.close();
      }

      // https without the CA: the certificate is not trusted.
      await writeHosts(hostsDir, registry.host, `server = "https://${registry.host}"\n`);
      const untrusted = new Resolver({ ...fast, hostDir: hostsDir });
      try {
        await assert.rejects(
          untrusted.resolve(ref),
          isKind("FailedPrecondition", /TLS certificate is not trusted.*"ca" in hosts\.toml/),
        );
      } finally {
        untrusted.close();
      }

      // With the CA (a path relative to the host directory; host_port_ is looked up first).
      await writeHosts(
        hostsDir,
        `127.0.0.1_${registry.port}_`,
        `server = "https://${registry.host}"\nca = "ca.pem"\n`,
        { "ca.pem": certs.caCert },
      );
      const trusted = new Resolver({ ...fast, hostDir: hostsDir });
      try {
        const [host] = await trusted.hosts.lookup(registry.host);
        assert.equal(host.scheme, "https");
        assert.equal(host.client.kind, "fetch");
        await pushImage(trusted, ref, image);
        const { descriptor } = await trusted.resolve(ref);
        assert.equal(descriptor.digest, image.index.desc.digest);
        const layer = image.layers[0];
        assert.deepEqual(
          await readAll(await (await trusted.fetcher(ref)).fetch(layer.desc)),
          layer.bytes,
        );
      } finally {
        trusted.close();
      }

      // skip_verify instead of the CA: the node:https transport, no verification.
      await writeHosts(
        hostsDir,
        `127.0.0.1_${registry.port}_`,
        `server = "https://${registry.host}"\nskip_verify = true\n`,
      );
      const insecure = new Resolver({ ...fast, hostDir: hostsDir });
      try {
        const [host] = await insecure.hosts.lookup(registry.host);
        assert.equal(host.client.kind, "node");
        const { descriptor } = await insecure.resolve(ref);
        assert.equal(descriptor.digest, image.index.desc.digest);
        const fetcher = await insecure.fetcher(ref);
        for (const b of image.blobs) {
          assert.deepEqual(
            await readAll(await fetcher.fetch(b.desc)),
            b.bytes,
          );
        }
        // Pushing through the node transport works too (streamed PATCH included).
        const other = await insecure.pusher(`${registry.host}/secure/copy:v1`);
        const layer = image.layers[1];
        assert.equal(
          (await other.push(
            layer.desc,
            () => new Blob([layer.bytes as Uint8Array<ArrayBuffer>]).stream(),
            { monolithicLimit: 1 },
          )).status,
          "pushed",
        );
      } finally {
        insecure.close();
      }

      // ctr's --skip-verify as an option, with no hosts.toml (https forced by the server line is
      // not there, so use a _default dir that only names the scheme).
      await Deno.remove(join(hostsDir, `127.0.0.1_${registry.port}_`), { recursive: true });
      await Deno.remove(join(hostsDir, registry.host), { recursive: true });
      await writeHosts(hostsDir, "_default", `server = "https://${registry.host}"\n`);
      const flag = new Resolver({ ...fast, hostDir: hostsDir, skipVerify: true });
      try {
        assert.equal((await flag.resolve(ref)).descriptor.digest, image.index.desc.digest);
      } finally {
        flag.close();
      }
    },
  );
});

Deno.test("HTTPS registry requiring client certificates: refused without, accepted with hosts.toml client", async () => {
  await withTls(
    (c) => ({ cert: c.serverCert, key: c.serverKey, clientCAs: [c.caCert] }),
    async (registry, certs, hostsDir) => {
      const ref = `${registry.host}/mtls/app:v1`;
      await writeHosts(
        hostsDir,
        registry.host,
        `server = "https://${registry.host}"\nca = "ca.pem"\n`,
        { "ca.pem": certs.caCert },
      );
      const without = new Resolver({ ...fast, hostDir: hostsDir });
      try {
        await assert.rejects(without.resolve(ref), (err) => err instanceof TainerdError);
      } finally {
        without.close();
      }
      await writeHosts(
        hostsDir,
        registry.host,
        `server = "https://${registry.host}"\nca = "ca.pem"\nclient = [["client.pem", "client.key"]]\n`,
        { "ca.pem": certs.caCert, "client.pem": certs.clientCert, "client.key": certs.clientKey },
      );
      const withCert = new Resolver({ ...fast, hostDir: hostsDir });
      try {
        await assert.rejects(withCert.resolve(ref), isKind("NotFound"));
      } finally {
        withCert.close();
      }
    },
  );
});
