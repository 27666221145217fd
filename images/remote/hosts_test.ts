import assert from "node:assert/strict";
import { join } from "node:path";
import { TainerdError } from "../../plugins/errdefs.ts";
import {
  hostDirectory,
  hostPaths,
  isLocalhost,
  isMirror,
  parseHostsToml,
  type RegistryHost,
  RegistryHosts,
} from "./hosts.ts";
import { makeTestCerts } from "./testdata/certs.ts";

function invalidWith(pattern: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, "InvalidArgument");
    assert.match(err.message, pattern);
    return true;
  };
}

const HOSTS_TOML = `
server = "https://registry.example.com"
ca = "upstream-ca.pem"

[host."https://mirror-b.example.com"]
  capabilities = ["pull", "resolve"]
  ca = ["/etc/certs/b1.pem", "b2.pem"]
  client = [["client.cert", "client.key"], "combined.pem"]
  header = { x-token = "abc", x-list = ["1", "2"] }

[host."mirror-a.example.com:5000/custom/path"]
  capabilities = ["Pull"]
  override_path = true
  skip_verify = true

[host."http://plain.example.com/v2/"]
  client = "single.pem"
`;

Deno.test("parseHostsToml() reads mirrors in file order, then the server", () => {
  const hosts = parseHostsToml(HOSTS_TOML, "/etc/tainerd/certs.d/example.com");
  assert.deepEqual(hosts.map((h) => [h.scheme, h.host, h.path]), [
    ["https", "mirror-b.example.com", "/v2"],
    ["https", "mirror-a.example.com:5000", "/custom/path"],
    ["http", "plain.example.com", "/v2"],
    ["https", "registry.example.com", "/v2"],
  ]);
  const [b, a, plain, server] = hosts;
  assert.deepEqual(b.capabilities, ["pull", "resolve"]);
  assert.deepEqual(b.caCerts, ["/etc/certs/b1.pem", "/etc/tainerd/certs.d/example.com/b2.pem"]);
  assert.deepEqual(b.clientPairs, [
    ["/etc/tainerd/certs.d/example.com/client.cert", "/etc/tainerd/certs.d/example.com/client.key"],
    ["/etc/tainerd/certs.d/example.com/combined.pem", ""],
  ]);
  assert.deepEqual(b.header, { "x-token": ["abc"], "x-list": ["1", "2"] });
  assert.equal(b.skipVerify, undefined);
  assert.deepEqual(a.capabilities, ["pull"]);
  assert.equal(a.skipVerify, true);
  assert.deepEqual(plain.clientPairs, [["/etc/tainerd/certs.d/example.com/single.pem", ""]]);
  assert.deepEqual(plain.capabilities, ["pull", "resolve", "push"]);
  assert.deepEqual(server.caCerts, ["/etc/tainerd/certs.d/example.com/upstream-ca.pem"]);
  assert.deepEqual(server.capabilities, ["pull", "resolve", "push"]);
});

Deno.test("parseHostsToml() leaves the default endpoint open without a server line", () => {
  const hosts = parseHostsToml('[host."https://m"]\n', "/d");
  assert.equal(hosts.length, 2);
  assert.equal(hosts[1].host, "");
});

Deno.test("parseHostsToml() rejects malformed files, naming the problem", () => {
  assert.throws(
    () => parseHostsToml("server = [", "/d", "/d/hosts.toml"),
    invalidWith(/Invalid \/d\/hosts\.toml/),
  );
  assert.throws(
    () => parseHostsToml('capabilities = ["pull", "delete"]', "/d"),
    invalidWith(/unknown capability "delete"/),
  );
  assert.throws(
    () => parseHostsToml('skip_verify = "yes"', "/d"),
    invalidWith(/"skip_verify" must be a boolean/),
  );
  assert.throws(() => parseHostsToml("ca = 1", "/d"), invalidWith(/"ca" must be a string/));
  assert.throws(() => parseHostsToml('client = [["a"]]', "/d"), invalidWith(/\[cert, key\] pair/));
  assert.throws(() => parseHostsToml('server = "ftp://x"', "/d"), invalidWith(/not http/));
  assert.throws(() => parseHostsToml("server = 5", "/d"), invalidWith(/"server" must be a string/));
});

Deno.test("RegistryHosts applies containerd's defaults", async () => {
  const hosts = new RegistryHosts();
  const plain = new RegistryHosts({ plainHttp: true });
  try {
    const one = async (h: RegistryHosts, name: string): Promise<RegistryHost> => {
      const list = await h.lookup(name);
      assert.equal(list.length, 1);
      return list[0];
    };
    const docker = await one(hosts, "docker.io");
    assert.deepEqual([docker.scheme, docker.host, docker.path], [
      "https",
      "registry-1.docker.io",
      "/v2",
    ]);
    assert.deepEqual([...docker.capabilities], ["pull", "resolve", "push"]);
    assert.equal(isMirror(docker, "docker.io"), false);
    for (
      const local of ["localhost", "localhost:5000", "127.0.0.1:5000", "127.1.2.3", "[::1]:5000"]
    ) {
      assert.equal((await one(hosts, local)).scheme, "http", local);
    }
    assert.equal((await one(hosts, "registry.example.com:5000")).scheme, "https");
    assert.equal((await one(plain, "registry.example.com")).scheme, "http");
    assert.equal((await one(plain, "docker.io")).scheme, "https");
    // One transport per distinct TLS setting, one authorizer for all hosts.
    assert.equal((await one(hosts, "a.example")).client, (await one(hosts, "b.example")).client);
    assert.equal((await one(hosts, "a.example")).authorizer, hosts.authorizer);
  } finally {
    hosts.close();
    plain.close();
  }
});

Deno.test("RegistryHosts finds host directories as containerd does, and docker's certs.d files", async () => {
  const root = await Deno.makeTempDir({ prefix: "tainerd-certs.d-" });
  const certs = await makeTestCerts();
  try {
    assert.equal(hostDirectory("h:5000"), "h_5000_");
    assert.equal(hostDirectory("h"), "h");
    assert.deepEqual(hostPaths("/r", "h:1"), ["/r/h_1_", "/r/h:1", "/r/_default"]);

    await Deno.mkdir(join(root, "_default"));
    await Deno.writeTextFile(
      join(root, "_default", "hosts.toml"),
      'server = "https://fallback.example"\n',
    );
    await Deno.mkdir(join(root, "h:5000"));
    await Deno.writeTextFile(
      join(root, "h:5000", "hosts.toml"),
      'server = "https://colon.example"\n',
    );
    const hosts = new RegistryHosts({ hostDir: root });
    try {
      assert.equal((await hosts.lookup("h:5000"))[0].host, "colon.example");
      assert.equal((await hosts.lookup("other.example"))[0].host, "fallback.example");
      await Deno.mkdir(join(root, "h_5000_"));
      await Deno.writeTextFile(
        join(root, "h_5000_", "hosts.toml"),
        'server = "https://underscore.example"\n',
      );
      assert.equal((await hosts.lookup("h:5000"))[0].host, "underscore.example");

      // No hosts.toml: *.crt are CAs, *.cert/*.key client pairs, for the default endpoint.
      const dir = join(root, "certs.example");
      await Deno.mkdir(dir);
      await Deno.copyFile(certs.caCert, join(dir, "ca.crt"));
      await Deno.copyFile(certs.clientCert, join(dir, "client.cert"));
      await Deno.copyFile(certs.clientKey, join(dir, "client.key"));
      const [config] = await hosts.configs("certs.example");
      assert.deepEqual([config.scheme, config.host, config.path], [
        "https",
        "certs.example",
        "/v2",
      ]);
      assert.deepEqual(config.caCerts, [join(dir, "ca.crt")]);
      assert.deepEqual(config.clientPairs, [[join(dir, "client.cert"), join(dir, "client.key")]]);
      const [host] = await hosts.lookup("certs.example");
      assert.equal(host.client.kind, "fetch");

      // A bad CA file is a clear error.
      await Deno.writeTextFile(join(dir, "bad.crt"), "not a certificate");
      await assert.rejects(hosts.lookup("certs.example"), invalidWith(/no PEM CA certificate/));
    } finally {
      hosts.close();
    }
  } finally {
    await Deno.remove(root, { recursive: true });
    await Deno.remove(certs.dir, { recursive: true });
  }
});

Deno.test("isLocalhost() recognises loopback names and addresses", () => {
  for (
    const h of [
      "localhost",
      "localhost:5000",
      "127.0.0.1",
      "127.0.0.1:80",
      "127.9.9.9",
      "[::1]",
      "[::1]:5000",
      "::1",
    ]
  ) {
    assert.equal(isLocalhost(h), true, h);
  }
  for (
    const h of ["example.com", "10.0.0.1:5000", "[::2]:5000", "localhost.example.com", "128.0.0.1"]
  ) {
    assert.equal(isLocalhost(h), false, h);
  }
});
