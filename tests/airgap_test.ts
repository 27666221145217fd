/**
 * The airgapped path with networking really off: a bundle built by `scripts/build.ts bundle` and
 * an image archive made by `scripts/busybox_image.ts` are carried into an empty network
 * namespace (only `lo`, brought up there; no route out), where the daemon is started from the
 * bundle, the image imported and a container run — the CLI, the daemon, its shims and Deno all
 * inside the namespace, with an empty `DENO_DIR` (no cache to lean on, npm included).
 */

import assert from "node:assert/strict";
import { delay, have, run, type RunResult } from "./harness.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const IMAGE = "docker.io/tainerd/airgap:latest";

const ignore = Deno.uid() !== 0 || !have("ip") || !have("nsenter") || !have("runc");
if (ignore) console.log("airgap_test: needs root, ip (iproute2), nsenter and runc; skipped");

Deno.test({
  name: "airgapped: bundle daemon, images import and run inside an empty network namespace",
  ignore,
  async fn(t) {
    const dir = await Deno.makeTempDir({ prefix: "tainerd-airgap-netns-" });
    const ns = `tainerd-airgap-${crypto.randomUUID().slice(0, 8)}`;
    const host = `${dir}/host`;
    const address = `${host}/tainerd.sock`;
    const denoDir = `${dir}/deno-dir`;
    const env = { DENO_DIR: denoDir };
    // Entered with nsenter, the network namespace only: `ip netns exec` would also give the
    // command a mount namespace with a fresh /sys, without the cgroup mount runc needs.
    const enter = ["--net=/run/netns/" + ns, "--"];
    /** Runs a command inside the namespace. */
    const inNs = (cmd: string, args: string[]): Promise<RunResult> =>
      run("nsenter", [...enter, cmd, ...args], { cwd: host, env });
    const tainerd = (...args: string[]) => inNs(`${dir}/dist/tainerd`, ["-a", address, ...args]);
    let daemon: Deno.ChildProcess | undefined;
    let log = "";
    let logDone: Promise<void> | undefined;
    let created = false;
    try {
      // On the connected side: the bundle and the image archive.
      let r = await run(
        Deno.execPath(),
        ["run", "-A", `${ROOT}/scripts/build.ts`, "bundle", "--out-dir", `${dir}/dist`],
        { cwd: ROOT },
      );
      assert.equal(r.code, 0, r.stderr);
      r = await run(
        Deno.execPath(),
        ["run", "-A", `${ROOT}/scripts/busybox_image.ts`, `${dir}/image.tar`, IMAGE],
        { cwd: ROOT },
      );
      assert.equal(r.code, 0, r.stderr);
      await Deno.mkdir(host);
      await Deno.mkdir(denoDir);
      await Deno.writeTextFile(`${host}/config.toml`, "version = 2\n");

      // The offline host: a fresh network namespace.
      r = await run("ip", ["netns", "add", ns]);
      assert.equal(r.code, 0, r.stderr);
      created = true;
      await t.step("the namespace has only lo and no route out", async () => {
        r = await inNs("ip", ["-o", "link", "show"]);
        assert.equal(r.code, 0, r.stderr);
        const links = r.stdout.trim().split("\n").map((l) => l.split(":")[1].trim());
        assert.deepEqual(links, ["lo"]);
        assert.match(r.stdout, /state DOWN/, "lo starts down");
        r = await inNs("ip", ["link", "set", "lo", "up"]);
        assert.equal(r.code, 0, r.stderr);
        for (const family of ["-4", "-6"]) {
          r = await inNs("ip", [family, "route", "show"]);
          assert.equal(r.code, 0, r.stderr);
          const out = r.stdout.trim().split("\n").filter((l) => l && !/ dev lo( |$)/.test(l));
          assert.deepEqual(out, [], `no ${family} route but lo's own`);
        }
        // A route lookup only: nothing is sent.
        r = await inNs("ip", ["route", "get", "1.1.1.1"]);
        assert.notEqual(r.code, 0);
        assert.match(r.stderr, /Network is unreachable/);
      });

      await t.step("the daemon starts from the bundle", async () => {
        const child = new Deno.Command("nsenter", {
          args: [
            ...enter,
            `${dir}/dist/tainerd`,
            "daemon",
            "--config",
            `${host}/config.toml`,
            "--address",
            address,
            "--root",
            `${host}/root`,
            "--state",
            `${host}/state`,
          ],
          cwd: host,
          env,
          stdin: "null",
          stdout: "null",
          stderr: "piped",
        }).spawn();
        daemon = child;
        logDone = (async () => {
          for await (const s of child.stderr.pipeThrough(new TextDecoderStream())) log += s;
        })();
        const deadline = Date.now() + 30_000;
        for (;;) {
          if ((await tainerd("version")).code === 0) break;
          const exited = await Promise.race([child.status, delay(200).then(() => null)]);
          if (exited) throw new Error(`daemon exited with ${exited.code}`);
          if (Date.now() > deadline) throw new Error("daemon did not answer within 30s");
        }
        // nsenter execs the wrapper, which execs deno: the daemon is the child, in the namespace.
        const netns = (path: string) => Deno.statSync(path).ino;
        assert.equal(netns(`/proc/${child.pid}/ns/net`), netns(`/run/netns/${ns}`));
        assert.notEqual(netns(`/proc/${child.pid}/ns/net`), netns("/proc/self/ns/net"));
      });

      await t.step("tainerd images import, then run --rm prints hi", async () => {
        r = await tainerd("images", "import", `${dir}/image.tar`);
        assert.equal(r.code, 0, r.stderr);
        r = await tainerd("images", "ls", "-q");
        assert.equal(r.stdout.trim(), IMAGE);
        r = await tainerd("run", "--rm", IMAGE, "airgap-netns-echo", "echo", "hi");
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, "hi\n");
        r = await tainerd("containers", "ls", "-q");
        assert.equal(r.stdout.trim(), "", "--rm removed the container");
      });

      await t.step("Deno fetched nothing: the empty DENO_DIR holds no package", () => {
        const npm = `${denoDir}/npm`;
        const fetched = [
          ...(() => {
            try {
              return [...Deno.readDirSync(npm)].map((e) => `npm/${e.name}`);
            } catch {
              return [];
            }
          })(),
          ...[...Deno.readDirSync(denoDir)].filter((e) => ["remote", "deps"].includes(e.name))
            .map((e) => e.name),
        ];
        assert.deepEqual(fetched, []);
      });
    } catch (err) {
      console.error(`daemon log:\n${log}`);
      throw err;
    } finally {
      if (daemon) {
        try {
          daemon.kill("SIGTERM");
        } catch {
          // Exited.
        }
        await daemon.status;
        await logDone;
      }
      if (created) await run("ip", ["netns", "delete", ns]);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
