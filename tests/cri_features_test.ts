/**
 * CRI features beyond the basic pod life cycle, with the real crictl: host-network pods, DNS
 * config and sysctls, resource updates reaching the cgroup, log reopen after rotation, the
 * container event stream, pod statistics and image filesystem info, and cgroups removed with
 * the pod.
 *
 * @module
 */

import assert from "node:assert/strict";
import { withRegistryImage } from "../images/testdata/busybox_image.ts";
import { run, waitFor } from "./harness.ts";
import {
  containerConfig,
  crictlArgs,
  criMissing,
  ok,
  podConfig,
  withCriDaemon,
  withNet,
  writeJson,
} from "./cri_harness.ts";

const ignore = criMissing !== "";

/** The memory cgroup directory of a CRI object (cgroupfs driver, no parent: /k8s.io/<id>). */
function memoryCgroup(id: string): string {
  for (const base of ["/sys/fs/cgroup/memory", "/sys/fs/cgroup"]) {
    try {
      Deno.statSync(`${base}/k8s.io`);
      return `${base}/k8s.io/${id}`;
    } catch { /* next */ }
  }
  return `/sys/fs/cgroup/memory/k8s.io/${id}`;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name: "cri: DNS config, sysctls, resource updates, log reopen, events, pod stats, cgroups",
  ignore,
  fn: () =>
    withRegistryImage(({ ref }) =>
      withNet((net, dir) =>
        withCriDaemon(net, async (d) => {
          await ok(d, ["pull", ref]);
          const events = new Deno.Command("crictl", {
            args: [...crictlArgs(d, "0s"), "events", "-o", "json"],
            stdout: "piped",
            stderr: "null",
          }).spawn();
          let eventText = "";
          const reading = (async () => {
            for await (const c of events.stdout.pipeThrough(new TextDecoderStream())) {
              eventText += c;
            }
          })().catch(() => {});
          try {
            const podJson = await writeJson(
              `${dir}/pod.json`,
              podConfig("feat", dir, {
                dns_config: {
                  servers: ["10.0.0.10"],
                  searches: ["ns.svc.cluster.local", "svc.cluster.local"],
                  options: ["ndots:5"],
                },
                linux: { sysctls: { "net.ipv4.ip_unprivileged_port_start": "80" } },
              }),
            );
            const podId = await ok(d, ["runp", podJson]);
            const ctrJson = await writeJson(
              `${dir}/ctr.json`,
              containerConfig("ticker", ref, [
                "sh",
                "-c",
                "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
              ]),
            );
            const cid = await ok(d, ["create", podId, ctrJson, podJson]);
            await ok(d, ["start", cid]);

            // DNS config and sysctls reach the pod.
            const resolv = await ok(d, ["exec", "-s", cid, "cat", "/etc/resolv.conf"]);
            assert.match(resolv, /^nameserver 10\.0\.0\.10$/m);
            assert.match(resolv, /^search ns\.svc\.cluster\.local svc\.cluster\.local$/m);
            assert.match(resolv, /^options ndots:5$/m);
            assert.equal(
              await ok(d, [
                "exec",
                "-s",
                cid,
                "cat",
                "/proc/sys/net/ipv4/ip_unprivileged_port_start",
              ]),
              "80",
            );

            // A resource update reaches the running container's cgroup and its status.
            await ok(d, ["update", "--memory", "67108864", cid]);
            const limitFile = (await exists(`${memoryCgroup(cid)}/memory.limit_in_bytes`))
              ? `${memoryCgroup(cid)}/memory.limit_in_bytes`
              : `${memoryCgroup(cid)}/memory.max`;
            assert.equal((await Deno.readTextFile(limitFile)).trim(), "67108864");
            const inspect = JSON.parse(await ok(d, ["inspect", cid]));
            assert.equal(inspect.status.resources.linux.memoryLimitInBytes, "67108864");

            // Log rotation: the kubelet renames the file and asks for a reopen.
            const logPath = `${dir}/logs/feat/ticker.log`;
            await waitFor(
              async () => (await Deno.readTextFile(logPath)).includes("tick 3"),
              "ticks",
            );
            await Deno.rename(logPath, `${logPath}.1`);
            await ok(d, ["logs", "--reopen", cid]);
            await waitFor(
              async () => (await exists(logPath)) && (await Deno.readTextFile(logPath)).length > 0,
              "the reopened log to fill",
            );
            const fresh = await Deno.readTextFile(logPath);
            assert.match(fresh, /^\S+ stdout F tick \d+$/m);

            // Pod statistics and image filesystem info.
            const statsp = JSON.parse(await ok(d, ["statsp", "-o", "json", podId]));
            assert.equal(statsp.stats[0].attributes.id, podId);
            assert.ok(Number(statsp.stats[0].linux.memory.workingSetBytes.value) > 0);
            const fsinfo = JSON.parse(await ok(d, ["imagefsinfo", "-o", "json"]));
            assert.ok(Number(fsinfo.status.imageFilesystems[0].usedBytes.value) > 0);

            // The event stream saw the container's life.
            await ok(d, ["stop", "--timeout", "1", cid]);
            await ok(d, ["rm", cid]);
            await waitFor(
              () => Promise.resolve(/CONTAINER_DELETED_EVENT/.test(eventText)),
              "the deleted event",
            );
            for (const t of ["CREATED", "STARTED", "STOPPED", "DELETED"]) {
              assert.match(eventText, new RegExp(`CONTAINER_${t}_EVENT`));
            }
            assert.match(eventText, new RegExp(cid));

            // The pod's cgroups go with it.
            assert.ok(await exists(memoryCgroup(podId)), "the pause cgroup exists while it runs");
            await ok(d, ["stopp", podId]);
            await ok(d, ["rmp", podId]);
            await waitFor(async () => !(await exists(memoryCgroup(podId))), "the pod's cgroup");
            assert.equal(await exists(memoryCgroup(cid)), false, "the container's cgroup is gone");
          } finally {
            events.kill();
            await events.status;
            await reading;
          }
        })
      )
    ),
});

Deno.test({
  name: "cri: a host-network pod sees the host's interfaces and gets no CNI address",
  ignore,
  fn: () =>
    withRegistryImage(({ ref }) =>
      withNet((net, dir) =>
        withCriDaemon(net, async (d) => {
          await ok(d, ["pull", ref]);
          const podJson = await writeJson(
            `${dir}/pod.json`,
            podConfig("hostnet", dir, {
              linux: { security_context: { namespace_options: { network: 2 } } },
            }),
          );
          const podId = await ok(d, ["runp", podJson]);
          const ctrJson = await writeJson(
            `${dir}/ctr.json`,
            containerConfig("c", ref, ["sleep", "3600"]),
          );
          const cid = await ok(d, ["create", podId, ctrJson, podJson]);
          await ok(d, ["start", cid]);
          // The host's network: its loopback listing matches ours, no eth0 from CNI.
          const inside = await ok(d, ["exec", "-s", cid, "cat", "/proc/net/dev"]);
          const hostIfaces = (await run("ls", ["/sys/class/net"])).stdout.trim().split("\n");
          for (const i of hostIfaces) assert.match(inside, new RegExp(`^\\s*${i}:`, "m"));
          const inspectp = JSON.parse(await ok(d, ["inspectp", podId]));
          assert.equal(inspectp.status.network.ip, "");
          assert.equal(inspectp.status.linux.namespaces.options.network, "NODE");
          await ok(d, ["rmp", "-f", podId]);
          assert.equal(await ok(d, ["pods", "-q"]), "");
          assert.equal(net.bridge.length > 0, true);
        })
      )
    ),
});
