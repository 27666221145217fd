/**
 * The CRI plugin end to end, driven by the real crictl (built from cri-tools v1.37.0 by
 * scripts/setup.sh): images, pods with CNI networking (Debian's containernetworking-plugins:
 * bridge, host-local, portmap, loopback), containers, logs, exec, stats, a daemon killed
 * with a running pod, and bad input. Every pod gets a private bridge and subnet; addresses
 * stay on this host (the pod's bridge and 127.0.0.1).
 *
 * @module
 */

import assert from "node:assert/strict";
import { withRegistryImage } from "../images/testdata/busybox_image.ts";
import { curlJson, run, waitFor } from "./harness.ts";
import {
  bridgeLinks,
  containerConfig,
  criConfig,
  crictl,
  criMissing,
  mountsUnder,
  ok,
  podConfig,
  withCriDaemon,
  withNet,
  writeJson,
} from "./cri_harness.ts";

const ignore = criMissing !== "";

Deno.test({
  name: "cri: crictl pulls, runs a pod with two containers, logs, exec, stats, and cleans up",
  ignore,
  fn: () =>
    withRegistryImage(({ ref }) =>
      withNet((net, dir) =>
        withCriDaemon(net, async (d) => {
          const version = await ok(d, ["version"]);
          assert.match(version, /RuntimeName:\s+tainerd/);
          assert.match(version, /RuntimeApiVersion:\s+v1/);
          const info = JSON.parse(await ok(d, ["info"]));
          const cond = Object.fromEntries(
            info.status.conditions.map((c: { type: string; status: boolean }) => [
              c.type,
              c.status,
            ]),
          );
          assert.deepEqual(cond, { RuntimeReady: true, NetworkReady: true });

          const pulled = await ok(d, ["pull", ref]);
          assert.match(pulled, /Image is up to date for sha256:[0-9a-f]{64}/);
          assert.match(await ok(d, ["images"]), /test\/busybox\s+1\s+[0-9a-f]{13}/);

          const hostPort = 20000 + Math.floor(Math.random() * 20000);
          const pod = podConfig("web", dir, {
            port_mappings: [{
              protocol: 0,
              container_port: 8080,
              host_port: hostPort,
              host_ip: "127.0.0.1",
            }],
          });
          const podJson = await writeJson(`${dir}/pod.json`, pod);
          const podId = await ok(d, ["runp", podJson]);
          assert.match(podId, /^[0-9a-f]{64}$/);
          const pods = await ok(d, ["pods"]);
          assert.match(pods, new RegExp(`${podId.slice(0, 13)}.*Ready\\s+web\\s+default`));
          const inspectp = JSON.parse(await ok(d, ["inspectp", podId]));
          const ip: string = inspectp.status.network.ip;
          assert.ok(ip.startsWith(`${net.prefix}.`), `pod IP ${ip} in ${net.subnet}`);
          assert.equal(inspectp.info.runtimeSpec.hostname, "web");

          // A web server and a client in the same pod.
          const server = await writeJson(
            `${d.dir}/server.json`,
            containerConfig("server", ref, [
              "sh",
              "-c",
              "echo starting; echo to-stderr >&2; mkdir -p /www && echo pod-ok > /www/index.html && exec /bin/busybox httpd -f -p 8080 -h /www",
            ]),
          );
          const serverId = await ok(d, ["create", podId, server, podJson]);
          await ok(d, ["start", serverId]);
          const client = await writeJson(
            `${d.dir}/client.json`,
            containerConfig("client", ref, ["sleep", "3600"]),
          );
          const clientId = await ok(d, ["create", podId, client, podJson]);
          await ok(d, ["start", clientId]);
          const ps = await ok(d, ["ps"]);
          assert.match(ps, new RegExp(`${serverId.slice(0, 13)}.*Running\\s+server`));
          assert.match(ps, new RegExp(`${clientId.slice(0, 13)}.*Running\\s+client`));

          // Containers of a pod share its network: localhost reaches the neighbour.
          let got = "";
          await waitFor(async () => {
            const r = await crictl(d, [
              "exec",
              "-s",
              clientId,
              "/bin/busybox",
              "wget",
              "-qO-",
              "http://127.0.0.1:8080/",
            ]);
            got = r.stdout;
            return r.code === 0;
          }, "the server to answer on the pod's localhost");
          assert.equal(got.trim(), "pod-ok");
          // The host reaches it on the pod IP, and through the port mapping on 127.0.0.1.
          const direct = await run("/bin/busybox", ["wget", "-qO-", `http://${ip}:8080/`]);
          assert.equal(direct.stdout, "pod-ok\n", direct.stderr);
          const mapped = await run("/bin/busybox", [
            "wget",
            "-qO-",
            `http://127.0.0.1:${hostPort}/`,
          ]);
          assert.equal(mapped.stdout, "pod-ok\n", mapped.stderr);

          // Logs in the CRI format; crictl logs reads them.
          await waitFor(async () => {
            const r = await crictl(d, ["logs", serverId]);
            return r.stdout.includes("starting") && r.stderr.includes("to-stderr");
          }, "the server's log");
          const logFile = await Deno.readTextFile(`${dir}/logs/web/server.log`);
          assert.match(
            logFile,
            /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z stdout F starting$/m,
          );
          assert.match(logFile, /Z stderr F to-stderr$/m);

          // ExecSync: output and exit codes.
          assert.equal(await ok(d, ["exec", "-s", clientId, "hostname"]), "web");
          const failed = await crictl(d, ["exec", "-s", clientId, "sh", "-c", "exit 3"]);
          assert.notEqual(failed.code, 0);
          assert.match(failed.stderr, /exited with 3/);
          // The exit code itself, through Connect JSON (the same socket answers curl).
          const viaCurl = await curlJson(
            d.address,
            "/runtime.v1.RuntimeService/ExecSync",
            JSON.stringify({ containerId: clientId, cmd: ["sh", "-c", "echo out; exit 3"] }),
          );
          const [body, httpCode] = viaCurl.stdout.split("\n").slice(-2);
          assert.equal(httpCode, "200", viaCurl.stdout);
          const execResp = JSON.parse(body);
          assert.equal(execResp.exitCode, 3);
          assert.equal(atob(execResp.stdout), "out\n");
          const slow = await crictl(d, [
            "exec",
            "-s",
            "--timeout",
            "1",
            clientId,
            "sleep",
            "30",
          ]);
          assert.notEqual(slow.code, 0);
          assert.match(slow.stderr, /DeadlineExceeded|timed out|timeout/i);

          // Stats.
          const stats = JSON.parse(await ok(d, ["stats", "-o", "json", clientId]));
          assert.equal(stats.stats[0].attributes.id, clientId);
          assert.ok(Number(stats.stats[0].memory.workingSetBytes.value) > 0);
          const inspect = JSON.parse(await ok(d, ["inspect", serverId]));
          assert.equal(inspect.status.state, "CONTAINER_RUNNING");
          assert.equal(inspect.info.sandboxID, podId);

          // Stop and remove everything.
          await ok(d, ["stop", "--timeout", "2", serverId]);
          const stopped = JSON.parse(await ok(d, ["inspect", serverId]));
          assert.equal(stopped.status.state, "CONTAINER_EXITED");
          await ok(d, ["rm", serverId]);
          await ok(d, ["stopp", podId]);
          assert.match(await ok(d, ["pods"]), /NotReady/);
          assert.equal(await bridgeLinks(net.bridge), "", "no veth left on the bridge");
          await ok(d, ["rmp", podId]);
          assert.equal(await ok(d, ["pods", "-q"]), "");
          assert.equal(await ok(d, ["ps", "-a", "-q"]), "");
          const leases = [...Deno.readDirSync(`${dir}/ipam/tainerd-test`)].map((e) => e.name)
            .filter((n) => /^\d+\.\d+\.\d+\.\d+$/.test(n));
          assert.deepEqual(leases, [], "no IPAM lease left");
          assert.deepEqual(await mountsUnder(d.dir + "/"), [], "no mount left");
          await ok(d, ["rmi", ref]);
          assert.doesNotMatch(await ok(d, ["images"]), /test\/busybox/);
        })
      )
    ),
});

Deno.test({
  name: "cri: a pod survives a daemon SIGKILL: Ready and Running after the restart",
  ignore,
  fn: () =>
    withRegistryImage(({ ref }) =>
      withNet((net, dir) =>
        withCriDaemon(net, async (d) => {
          const config = criConfig(net);
          await ok(d, ["pull", ref]);
          const podJson = await writeJson(`${dir}/pod.json`, podConfig("survivor", dir));
          const podId = await ok(d, ["runp", podJson]);
          const ctrJson = await writeJson(
            `${dir}/ctr.json`,
            containerConfig("ticker", ref, [
              "sh",
              "-c",
              "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
            ]),
          );
          const cid = await ok(d, ["create", podId, ctrJson, podJson]);
          await ok(d, ["start", cid]);
          const before = JSON.parse(await ok(d, ["inspectp", podId]));

          await d.kill();
          await d.start({ config });
          const pods = await ok(d, ["pods"]);
          assert.match(pods, new RegExp(`${podId.slice(0, 13)}.*Ready\\s+survivor`));
          assert.match(await ok(d, ["ps"]), new RegExp(`${cid.slice(0, 13)}.*Running\\s+ticker`));
          const after = JSON.parse(await ok(d, ["inspectp", podId]));
          assert.equal(after.status.network.ip, before.status.network.ip);
          // The log goes on after the restart: the FIFOs were reattached.
          const logPath = `${dir}/logs/survivor/ticker.log`;
          const size = (await Deno.stat(logPath)).size;
          await waitFor(
            async () => (await Deno.stat(logPath)).size > size,
            "the log to grow after the restart",
          );
          assert.equal(await ok(d, ["exec", "-s", cid, "echo", "alive"]), "alive");

          await ok(d, ["stopp", podId]);
          await ok(d, ["rmp", podId]);
          assert.equal(await ok(d, ["pods", "-q"]), "");
          assert.deepEqual(await mountsUnder(d.dir + "/"), []);
        })
      )
    ),
});

Deno.test({
  name: "cri: bad input gets CRI errors with the right codes",
  ignore,
  fn: () =>
    withRegistryImage(({ ref, registry }) =>
      withNet((net, dir) =>
        withCriDaemon(net, async (d) => {
          await ok(d, ["pull", ref]);
          const podJson = await writeJson(`${dir}/pod.json`, podConfig("dup", dir));
          const ctrJson = await writeJson(
            `${dir}/ctr.json`,
            containerConfig("c", ref, ["sleep", "60"]),
          );
          // A container for a pod that does not exist.
          let r = await crictl(d, ["create", "f".repeat(64), ctrJson, podJson]);
          assert.notEqual(r.code, 0);
          assert.match(r.stderr, /code = NotFound/);
          // The same pod name twice.
          const podId = await ok(d, ["runp", podJson]);
          r = await crictl(d, ["runp", podJson]);
          assert.notEqual(r.code, 0);
          assert.match(r.stderr, /code = AlreadyExists/);
          // An image that does not exist, to pull and to run.
          r = await crictl(d, ["pull", `${registry.host}/test/missing:1`]);
          assert.notEqual(r.code, 0);
          assert.match(r.stderr, /code = NotFound/);
          const missing = await writeJson(
            `${dir}/missing.json`,
            containerConfig("m", `${registry.host}/test/missing:1`, ["true"]),
          );
          r = await crictl(d, ["create", podId, missing, podJson]);
          assert.notEqual(r.code, 0);
          assert.match(r.stderr, /code = NotFound/);
          // A seccomp profile file that does not exist.
          const seccomp = await writeJson(`${dir}/seccomp.json`, {
            ...containerConfig("s", ref, ["true"]),
            linux: {
              security_context: {
                seccomp: { profile_type: 2, localhost_ref: `${dir}/no-such-profile.json` },
              },
            },
          });
          r = await crictl(d, ["create", podId, seccomp, podJson]);
          assert.notEqual(r.code, 0);
          assert.match(r.stderr, /code = (NotFound|InvalidArgument)/);
          assert.match(r.stderr, /no-such-profile/);
          // A malformed image reference.
          r = await crictl(d, ["pull", "UPPER/Case:1"]);
          assert.match(r.stderr, /code = InvalidArgument/);
          // Nothing was left half-made: one pod, no containers.
          assert.equal(await ok(d, ["ps", "-a", "-q"]), "");
          assert.equal(await ok(d, ["pods", "-q"]), podId);
          await ok(d, ["rmp", "-f", podId]);
          assert.equal(await ok(d, ["pods", "-q"]), "");
        })
      )
    ),
});
