/**
 * Tests of the CNI layer against Debian's real plugins (`containernetworking-plugins` in
 * /usr/lib/cni): bridge + host-local + portmap, and the implicit loopback. Each test uses its
 * own bridge (`tnd-test-<random>`), a private /24 of 10.200.0.0–10.255.255.0, temp directories,
 * and a namespace from an external `unshare --net` process; everything is removed afterwards.
 * Needs root and iptables.
 *
 * @module
 */

import assert from "node:assert/strict";
import { isKind, TainerdError } from "../../errdefs.ts";
import { Cni, type CniResult, parseConf, parseConfList, podIPs } from "./cni.ts";
import { pinNetns, unpinNetns } from "./netns.ts";
import { mountsUnder, type NetnsHolder, run, spawnNetnsHolder } from "./test_util.ts";

const BIN_DIR = "/usr/lib/cni";
const HOSTPORT_CHAINS = ["CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"];

function randomHex(bytes: number): string {
  return Array.from(crypto.getRandomValues(new Uint8Array(bytes)))
    .map((b) => b.toString(16).padStart(2, "0")).join("");
}

function randomInt(n: number): number {
  return crypto.getRandomValues(new Uint32Array(1))[0] % n;
}

async function natRules(): Promise<string> {
  return await run("iptables", ["-w", "-t", "nat", "-S"]);
}

/** Whether `ip` (dotted quad) lies in `prefix`.0/24. */
function inSubnet(ip: string, prefix: string): boolean {
  return ip.startsWith(`${prefix}.`) && Number(ip.split(".")[3]) > 0;
}

/** One test's world: temp dirs, a unique bridge and subnet, a pinned namespace. */
interface Fixture {
  tmp: string;
  bridge: string;
  /** The first three octets of the /24, e.g. `"10.213.7"`. */
  prefix: string;
  network: string;
  confDir: string;
  cacheDir: string;
  dataDir: string;
  netnsDir: string;
  id: string;
  cni: Cni;
  holder?: NetnsHolder;
  netns?: string;
  cleanup(): Promise<void>;
}

async function fixture(opts: { ipamSubnet?: string; withPortmap?: boolean } = {}): Promise<
  Fixture
> {
  const tmp = await Deno.makeTempDir({ prefix: "tnd-cni-" });
  const bridge = `tnd-test-${randomHex(3)}`;
  const prefix = `10.${200 + randomInt(56)}.${randomInt(256)}`;
  const network = `tnd-net-${randomHex(3)}`;
  const confDir = `${tmp}/net.d`;
  const cacheDir = `${tmp}/cache`;
  const dataDir = `${tmp}/ipam`;
  const netnsDir = `${tmp}/netns`;
  await Deno.mkdir(confDir);
  const plugins: Record<string, unknown>[] = [{
    type: "bridge",
    bridge,
    isGateway: true,
    ipMasq: false,
    hairpinMode: true,
    ipam: {
      type: "host-local",
      ranges: [[{ subnet: opts.ipamSubnet ?? `${prefix}.0/24` }]],
      routes: [{ dst: "0.0.0.0/0" }],
      dataDir,
    },
  }];
  if (opts.withPortmap ?? true) {
    plugins.push({ type: "portmap", capabilities: { portMappings: true } });
  }
  await Deno.writeTextFile(
    `${confDir}/10-test.conflist`,
    JSON.stringify({ cniVersion: "1.0.0", name: network, plugins }, null, 2),
  );
  const ipForward = (await Deno.readTextFile("/proc/sys/net/ipv4/ip_forward")).trim();
  const hadHostportChains = (await natRules()).includes("-N CNI-HOSTPORT-DNAT");
  const f: Fixture = {
    tmp,
    bridge,
    prefix,
    network,
    confDir,
    cacheDir,
    dataDir,
    netnsDir,
    id: randomHex(32),
    cni: new Cni({ binDirs: [BIN_DIR], confDir, cacheDir, pluginTimeoutMs: 30_000 }),
    async cleanup() {
      const errors: unknown[] = [];
      const step = async (fn: () => Promise<unknown>) => {
        try {
          await fn();
        } catch (err) {
          errors.push(err);
        }
      };
      // A failed test may have left the pod attached: DEL releases veth, lease and chains.
      await f.cni.teardown(f.id, f.netns ?? "").catch(() => {}); // best effort
      if (f.netns) await step(() => unpinNetns(f.netns!));
      await step(async () => await f.holder?.stop());
      await new Deno.Command("ip", { args: ["link", "del", bridge], stderr: "null" }).output();
      // The bridge plugin (isGateway) turns on forwarding; put the host back as it was.
      await step(() => Deno.writeTextFile("/proc/sys/net/ipv4/ip_forward", ipForward));
      if (!hadHostportChains) await step(removeHostportChains);
      await step(() => Promise.resolve().then(() => assert.deepEqual(mountsUnder(tmp), [])));
      await step(() => Deno.remove(tmp, { recursive: true }));
      if (errors.length > 0) throw new AggregateError(errors, "Test cleanup failed");
    },
  };
  return f;
}

/** Removes portmap's shared top-level chains (a DEL keeps them) and the jumps to them. */
async function removeHostportChains(): Promise<void> {
  const rules = (await natRules()).split("\n");
  for (const rule of rules) {
    const m = rule.match(/^-A (PREROUTING|OUTPUT|POSTROUTING) (.*-j CNI-HOSTPORT-\S+.*)$/);
    if (!m) continue;
    const args = ["-w", "-t", "nat", "-D", m[1], ...splitRule(m[2])];
    await run("iptables", args);
  }
  for (const chain of HOSTPORT_CHAINS) {
    if (!rules.includes(`-N ${chain}`)) continue;
    await run("iptables", ["-w", "-t", "nat", "-F", chain]);
  }
  for (const chain of HOSTPORT_CHAINS) {
    if (!rules.includes(`-N ${chain}`)) continue;
    await run("iptables", ["-w", "-t", "nat", "-X", chain]);
  }
}

/** Splits an `iptables -S` rule into arguments, honouring double quotes. */
function splitRule(s: string): string[] {
  const out: string[] = [];
  for (const m of s.matchAll(/"((?:[^"\\]|\\.)*)"|(\S+)/g)) {
    out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2]);
  }
  return out;
}

/** Runs `fn` in a fresh fixture; cleanup errors are reported only when `fn` succeeded. */
async function withFixture(
  opts: Parameters<typeof fixture>[0],
  fn: (f: Fixture) => Promise<void>,
): Promise<void> {
  const f = await fixture(opts);
  let ok = false;
  try {
    await fn(f);
    ok = true;
  } finally {
    await f.cleanup().catch((err) => {
      if (ok) throw err;
      console.error("cleanup after a failure:", err);
    });
  }
}

async function pinFresh(f: Fixture): Promise<string> {
  f.holder = await spawnNetnsHolder();
  f.netns = await pinNetns(f.holder.pid, f.netnsDir, `cni-${f.id.slice(0, 12)}`);
  return f.netns;
}

function hostVeth(result: CniResult): string {
  const veth = Object.values(result.interfaces).find((i) =>
    i.sandbox === undefined && i.name.startsWith("veth")
  );
  assert.ok(veth, `a host-side veth in ${JSON.stringify(result.interfaces)}`);
  return veth.name;
}

async function linkExists(name: string): Promise<boolean> {
  const out = await new Deno.Command("ip", { args: ["link", "show", name], stderr: "null" })
    .output();
  return out.success;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

const k8sArgs = (f: Fixture) => ({
  K8S_POD_NAMESPACE: "default",
  K8S_POD_NAME: "web",
  K8S_POD_INFRA_CONTAINER_ID: f.id,
  K8S_POD_UID: crypto.randomUUID(),
  IgnoreUnknown: "1",
});

Deno.test("Cni.setup() attaches a pod; teardown() removes veth, lease, chains and cache", async () => {
  await withFixture({}, async (f) => {
    const netns = await pinFresh(f);
    const hostPort = 30000 + randomInt(20000);
    const opts = {
      args: k8sArgs(f),
      portMappings: [{ hostPort, containerPort: 8080, protocol: "tcp" as const }],
    };
    await f.cni.status();
    const result = await f.cni.setup(f.id, netns, opts);

    // The result: eth0 with an address of the subnet and the bridge as gateway; lo too.
    const { ip, ipv4, ipv6, additionalIPs } = podIPs(result);
    assert.equal(ip, ipv4);
    assert.equal(ipv6, undefined);
    assert.deepEqual(additionalIPs, []);
    assert.ok(inSubnet(ip, f.prefix), `${ip} in ${f.prefix}.0/24`);
    const eth0 = result.interfaces.eth0;
    assert.equal(eth0.sandbox, netns);
    assert.match(eth0.mac ?? "", /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/);
    assert.deepEqual(eth0.ipConfigs.map((c) => [c.address, c.gateway, c.interface]), [
      [`${ip}/24`, `${f.prefix}.1`, "eth0"],
    ]);
    assert.ok(result.interfaces[f.bridge], "the bridge is reported");
    assert.ok(result.ips.some((c) => c.address === "127.0.0.1/8" && c.interface === "lo"));
    assert.ok(result.routes.some((r) => r.dst === "0.0.0.0/0"));
    assert.deepEqual(result.raw.map((r) => [r.network, r.ifName]), [
      ["cni-loopback", "lo"],
      [f.network, "eth0"],
    ]);
    const veth = hostVeth(result);

    // Inside the namespace: eth0 has the address, lo is up.
    const addrs = await run("nsenter", [`--net=${netns}`, "ip", "-4", "-o", "addr"]);
    assert.match(addrs, new RegExp(`eth0\\s+inet ${ip.replaceAll(".", "\\.")}/24`));
    assert.match(addrs, /\blo\s+inet 127\.0\.0\.1\/8/);
    const lo = await run("nsenter", [`--net=${netns}`, "ip", "-o", "link", "show", "lo"]);
    assert.match(lo, /<LOOPBACK,UP,LOWER_UP>/);

    // The host reaches the pod.
    await run("busybox", ["ping", "-c1", "-W2", ip]);

    // The lease and the cache entry exist.
    assert.equal(
      (await Deno.readTextFile(`${f.dataDir}/${f.network}/${ip}`)).split(/\r?\n/)[0],
      f.id,
    );
    const cachePath = `${f.cacheDir}/results/${f.network}-${f.id}-eth0`;
    const cached = JSON.parse(await Deno.readTextFile(cachePath));
    assert.equal(cached.kind, "cniCacheV1");
    assert.equal(cached.containerId, f.id);
    assert.deepEqual(cached.capabilityArgs, { portMappings: opts.portMappings });
    assert.equal(JSON.parse(atob(cached.config)).name, f.network);

    // portmap: the DNAT chain of this pod maps hostPort to the pod's port.
    const rules = await natRules();
    assert.match(rules, /^-N CNI-HOSTPORT-DNAT$/m);
    const dnChain = rules.split("\n").find((l) =>
      l.startsWith("-A CNI-HOSTPORT-DNAT") && l.includes(f.id)
    )?.match(/-j (CNI-DN-\S+)/)?.[1];
    assert.ok(dnChain, "a CNI-DN- chain for the pod");
    assert.match(
      rules,
      new RegExp(`-A ${dnChain} -p tcp .*--dport ${hostPort} -j DNAT --to-destination ${ip}:8080`),
    );

    // And it carries traffic: 127.0.0.1:hostPort → a one-shot server in the pod on :8080.
    const server = new Deno.Command("nsenter", {
      args: [`--net=${netns}`, "busybox", "nc", "-l", "-p", "8080"],
      stdin: "null",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    const served = server.output();
    try {
      let conn: Deno.TcpConn | undefined;
      for (let i = 0; i < 100 && !conn; i++) {
        conn = await Deno.connect({ hostname: "127.0.0.1", port: hostPort }).catch(() =>
          new Promise<undefined>((r) => setTimeout(() => r(undefined), 50))
        );
      }
      assert.ok(conn, `connected to 127.0.0.1:${hostPort}`);
      await conn.write(new TextEncoder().encode("through portmap\n"));
      conn.close();
      const out = await served;
      assert.equal(new TextDecoder().decode(out.stdout), "through portmap\n");
    } finally {
      try {
        server.kill("SIGKILL");
      } catch {
        // already exited
      }
      await served;
    }

    // DEL: veth, lease, the pod's chain and the cache entry go; the netns keeps only lo.
    await f.cni.teardown(f.id, netns, opts);
    assert.equal(await linkExists(veth), false);
    assert.equal(await exists(`${f.dataDir}/${f.network}/${ip}`), false);
    assert.equal(await exists(cachePath), false);
    const after = await natRules();
    assert.doesNotMatch(after, new RegExp(`-N ${dnChain}$`, "m"));
    assert.ok(!after.includes(f.id), "no rule mentions the pod");
    const links = await run("nsenter", [`--net=${netns}`, "ip", "-o", "link"]);
    assert.doesNotMatch(links, /eth0/);

    // DEL twice is fine.
    await f.cni.teardown(f.id, netns, opts);
  });
});

Deno.test("Cni.check() passes for an attached pod and reports a detached one", async () => {
  // portmap 1.1.1's CHECK fails for IPv4-only pods ("could not check ipv6 dnat"): leave it out.
  await withFixture({ withPortmap: false }, async (f) => {
    const netns = await pinFresh(f);
    await f.cni.setup(f.id, netns, { args: k8sArgs(f) });
    await f.cni.check(f.id, netns);
    await f.cni.teardown(f.id, netns);
    await assert.rejects(f.cni.check(f.id, netns), (err) => isKind(err, "NotFound"));
  });
});

Deno.test("Cni.teardown() frees the lease when the netns is already gone", async () => {
  await withFixture({}, async (f) => {
    const netns = await pinFresh(f);
    const opts = {
      args: k8sArgs(f),
      portMappings: [{
        hostPort: 30000 + randomInt(20000),
        containerPort: 80,
        protocol: "udp" as const,
      }],
    };
    const result = await f.cni.setup(f.id, netns, opts);
    const { ip } = podIPs(result);
    const veth = hostVeth(result);
    assert.ok(await exists(`${f.dataDir}/${f.network}/${ip}`));

    // The sandbox dies and its namespace is unpinned: the kernel removes the veth pair.
    await unpinNetns(netns);
    await f.holder!.stop();
    for (let i = 0; i < 100 && await linkExists(veth); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(await linkExists(veth), false);

    await f.cni.teardown(f.id, netns, opts);
    assert.equal(await exists(`${f.dataDir}/${f.network}/${ip}`), false, "lease released");
    assert.ok(!(await natRules()).includes(f.id), "portmap rules removed");
    await f.cni.teardown(f.id, netns, opts);
    await f.cni.teardown(f.id, "", opts);
  });
});

Deno.test("Cni.setup() surfaces a plugin's error message", async () => {
  await withFixture({ ipamSubnet: "10.250.0.0/33", withPortmap: false }, async (f) => {
    const netns = await pinFresh(f);
    await assert.rejects(f.cni.setup(f.id, netns), (err) => {
      assert.ok(err instanceof TainerdError, String(err));
      assert.match(
        err.message,
        /^plugin type="bridge" name="tnd-net-\w+" failed \(add\): .*invalid CIDR address: 10\.250\.0\.0\/33/,
      );
      return true;
    });
  });
});

Deno.test("Cni.setup() reports a missing plugin binary as FailedPrecondition", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tnd-cni-" });
  try {
    await Deno.writeTextFile(
      `${tmp}/99-x.conf`,
      JSON.stringify({ cniVersion: "1.0.0", name: "x", type: "tnd-no-such-plugin" }),
    );
    const cni = new Cni({
      binDirs: [BIN_DIR, `${tmp}/bin`],
      confDir: tmp,
      cacheDir: `${tmp}/cache`,
      loopback: false,
    });
    await cni.status();
    await assert.rejects(cni.setup("abc", `${tmp}/none`), (err) => {
      assert.ok(isKind(err, "FailedPrecondition"), String(err));
      assert.equal(
        (err as Error).message,
        `failed to find plugin "tnd-no-such-plugin" in path [${BIN_DIR} ${tmp}/bin]`,
      );
      return true;
    });
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("Cni.status() fails with FailedPrecondition until a config appears", async () => {
  const tmp = await Deno.makeTempDir({ prefix: "tnd-cni-" });
  try {
    const missing = new Cni({ binDirs: [BIN_DIR], confDir: `${tmp}/absent` });
    await assert.rejects(missing.status(), (err) => {
      assert.ok(isKind(err, "FailedPrecondition"));
      assert.match((err as Error).message, /^cni plugin not initialized: no network config found/);
      return true;
    });
    await assert.rejects(
      missing.setup("abc", "/nonexistent"),
      (e) => isKind(e, "FailedPrecondition"),
    );
    await assert.rejects(missing.teardown("abc", ""), (e) => isKind(e, "FailedPrecondition"));

    const cni = new Cni({ binDirs: [BIN_DIR], confDir: tmp });
    await assert.rejects(cni.status(), (err) => isKind(err, "FailedPrecondition"));
    await Deno.writeTextFile(`${tmp}/README.txt`, "ignored");
    await assert.rejects(cni.status(), (err) => isKind(err, "FailedPrecondition"));

    // Sorted by name; the first is the default network; a .conf is wrapped into a list.
    await Deno.writeTextFile(
      `${tmp}/20-b.conflist`,
      JSON.stringify({ cniVersion: "1.0.0", name: "b", plugins: [{ type: "bridge" }] }),
    );
    await Deno.writeTextFile(
      `${tmp}/10-a.conf`,
      JSON.stringify({ cniVersion: "0.4.0", name: "a", type: "ptp" }),
    );
    await cni.status();
    let conf = await cni.config();
    assert.deepEqual(conf.networks.map((n) => [n.name, n.ifName, n.cniVersion]), [
      ["cni-loopback", "lo", "0.3.1"],
      ["a", "eth0", "0.4.0"],
    ]);
    assert.deepEqual(conf.networks[1].plugins, [{ cniVersion: "0.4.0", name: "a", type: "ptp" }]);

    const two = new Cni({ binDirs: [BIN_DIR], confDir: tmp, maxConfNum: 2 });
    assert.deepEqual((await two.config()).networks.map((n) => [n.name, n.ifName]), [
      ["cni-loopback", "lo"],
      ["a", "eth0"],
      ["b", "eth1"],
    ]);

    // A broken file makes the configuration unusable, as go-cni's load does.
    await Deno.writeTextFile(`${tmp}/05-broken.conf`, "{ not json");
    await assert.rejects(cni.status(), (err) => {
      assert.ok(isKind(err, "FailedPrecondition"));
      assert.match((err as Error).message, /05-broken\.conf/);
      return true;
    });
    await Deno.remove(`${tmp}/05-broken.conf`);
    await cni.status();

    await Deno.remove(`${tmp}/10-a.conf`);
    conf = await cni.config();
    assert.deepEqual(conf.networks.map((n) => n.name), ["cni-loopback", "b"]);
  } finally {
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("parseConfList() and parseConf() validate like libcni", () => {
  const bad = (text: string, re: RegExp) =>
    assert.throws(() => parseConfList(text), (err) => {
      assert.ok(isKind(err, "InvalidArgument"));
      assert.match((err as Error).message, re);
      return true;
    });
  bad("[]", /not a JSON object/);
  bad(JSON.stringify({ plugins: [{ type: "x" }] }), /no name/);
  bad(JSON.stringify({ name: "-x", plugins: [{ type: "x" }] }), /invalid network name/);
  bad(JSON.stringify({ name: "n" }), /no 'plugins' key/);
  bad(JSON.stringify({ name: "n", plugins: [] }), /no plugins in list/);
  bad(JSON.stringify({ name: "n", plugins: [{}] }), /has no 'type'/);
  bad(JSON.stringify({ name: "n", plugins: [{ type: "../sh" }] }), /invalid type/);
  assert.throws(
    () => parseConf(JSON.stringify({ name: "n", plugins: [{ type: "x" }] })),
    /network type not found/,
  );
  const list = parseConf(JSON.stringify({ cniVersion: "1.0.0", name: "n", type: "bridge" }));
  assert.equal(list.name, "n");
  assert.equal(list.plugins.length, 1);
});
