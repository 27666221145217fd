/**
 * The CRI streaming server end to end, driven by the real crictl (v1.37.0) against tainerd:
 *
 * - `crictl exec` over SPDY and over WebSocket: stdout and stderr arrive apart (also several
 *   MB of them), a failing command makes crictl fail naming its exit code (crictl itself exits
 *   with 1); `exec -i` feeds stdin and ends when it closes; `exec -it` runs a shell on a
 *   terminal (driven through tmux): type, read, resize, exit; killing that crictl ends the shell.
 * - `crictl attach`: to a container with stdin (no terminal) over both transports, two
 *   clients at once, a `stdin_once` container (EOF ends its stdin, the last output still
 *   arrives), and a container with a terminal through tmux.
 * - `crictl port-forward` (SPDY, and SPDY tunneled in WebSocket) to a busybox httpd in the pod,
 *   fetched from the host on 127.0.0.1 (concurrent and large responses); a closed port fails.
 * - The URL of a CRI Exec call (Connect JSON through curl) serves one session (here a
 *   WebSocket `v4.channel.k8s.io` client); its second use is a 404.
 * - After every client leaves, the daemon holds no connection on the streaming port and no
 *   port forwarding helper (nsenter/socat) is left.
 *
 * Every pod has a private bridge and subnet; connections stay on loopback and that bridge.
 * Skipped without crictl, CNI plugins, iptables, socat or tmux.
 *
 * @module
 */

import assert from "node:assert/strict";
import { withRegistryImage } from "../images/testdata/busybox_image.ts";
import { curlJson, delay, have, run, type TestDaemon, waitFor } from "./harness.ts";
import {
  containerConfig,
  crictl,
  crictlArgs,
  criMissing,
  mountsUnder,
  ok,
  podConfig,
  withCriDaemon,
  withNet,
  writeJson,
} from "./cri_harness.ts";

const missing = [criMissing, have("tmux") ? "" : "tmux"].filter((x) => x).join(", ");
if (missing) console.warn(`cri_streaming_test: skipped, missing ${missing}`);
const ignore = missing !== "";
const decoder = new TextDecoder();

/** A long-running crictl (attach, port-forward) whose output is collected as it comes. */
class LiveCrictl {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  readonly #stdin: WritableStreamDefaultWriter<Uint8Array>;
  readonly #done: Promise<unknown>;

  constructor(d: TestDaemon, args: string[]) {
    this.child = new Deno.Command("crictl", {
      args: [...crictlArgs(d), ...args],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.child.stdin.getWriter();
    const collect = async (s: ReadableStream<Uint8Array>, key: "stdout" | "stderr") => {
      for await (const chunk of s) this[key] += decoder.decode(chunk, { stream: true });
    };
    this.#done = Promise.allSettled([
      collect(this.child.stdout, "stdout"),
      collect(this.child.stderr, "stderr"),
      this.child.status,
    ]);
  }

  write(text: string): Promise<void> {
    return this.#stdin.write(new TextEncoder().encode(text));
  }

  /** Waits until stdout matches `re`. */
  async waitOut(re: RegExp, what: string): Promise<void> {
    await waitFor(
      () => Promise.resolve(re.test(this.stdout)),
      `${what} (stdout ${JSON.stringify(this.stdout)}, stderr ${JSON.stringify(this.stderr)})`,
      30_000,
    );
  }

  /** Ends it (SIGTERM, then SIGKILL) and waits for it and its output. */
  async stop(): Promise<void> {
    await this.#stdin.close().catch(() => {});
    for (const sig of ["SIGTERM", "SIGKILL"] as const) {
      try {
        this.child.kill(sig);
      } catch { /* exited */ }
      const done = await Promise.race([this.#done.then(() => true), delay(3000)]);
      if (done) return;
    }
  }
}

/** A detached tmux server of its own (socket name) running one session `s`. */
class Tmux {
  readonly socket = `tainerd-cri-${crypto.randomUUID().slice(0, 8)}`;
  cmd(...args: string[]) {
    return run("tmux", ["-L", this.socket, ...args]);
  }
  /** Starts `command` in an 80x24 window; the pane shows its exit status afterwards. */
  async start(command: string): Promise<void> {
    const r = await this.cmd(
      "new-session",
      "-d",
      "-s",
      "s",
      "-x",
      "80",
      "-y",
      "24",
      `${command}; echo "exited with $?"; sleep 60`,
    );
    assert.equal(r.code, 0, r.stderr);
  }
  async screen(): Promise<string> {
    return (await this.cmd("capture-pane", "-p", "-t", "s")).stdout;
  }
  async keys(...keys: string[]): Promise<void> {
    await this.cmd("send-keys", "-t", "s", ...keys);
  }
  /** Waits until the screen matches `re`; returns the screen. */
  async waitFor(re: RegExp, what: string): Promise<string> {
    let screen = "";
    for (let i = 0; i < 200; i++) {
      screen = await this.screen();
      if (re.test(screen)) return screen;
      await delay(100);
    }
    throw new Error(`tmux: no ${what} on the screen:\n${screen}`);
  }
  async kill(): Promise<void> {
    await this.cmd("kill-server");
  }
}

/** The crictl command line (for tmux) pointing at `d`. */
function crictlLine(d: TestDaemon, args: string[]): string {
  return ["crictl", ...crictlArgs(d), ...args].join(" ");
}

/** A free TCP port on 127.0.0.1 (picked by the kernel, released at once). */
function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** The TCP connections (not listeners) on the daemon's side of port `port`, as `ss` lists them. */
async function connectionsOn(port: number): Promise<string[]> {
  const r = await run("ss", ["-Htn", `sport = :${port}`]);
  return r.stdout.split("\n").filter((l) => l.trim());
}

/** Runs a v4.channel.k8s.io WebSocket session on `url`; returns what arrived per channel. */
async function webSocketSession(url: string): Promise<Map<number, string>> {
  const ws = new WebSocket(url.replace(/^http/, "ws"), ["v4.channel.k8s.io"]);
  ws.binaryType = "arraybuffer";
  const got = new Map<number, string>();
  await new Promise<void>((resolve, reject) => {
    ws.onmessage = (e) => {
      const b = new Uint8Array(e.data as ArrayBuffer);
      if (b.length === 0) return;
      got.set(b[0], (got.get(b[0]) ?? "") + decoder.decode(b.subarray(1)));
    };
    ws.onclose = () => resolve();
    ws.onerror = (e) => reject(new Error(`WebSocket: ${(e as ErrorEvent).message}`));
  });
  return got;
}

Deno.test({
  name: "cri streaming: crictl exec, attach and port-forward over SPDY and WebSocket",
  ignore,
  fn: (t) =>
    withRegistryImage(({ ref }) =>
      withNet((net, dir) =>
        withCriDaemon(net, async (d) => {
          const live = new Set<LiveCrictl>();
          const spawn = (args: string[]) => {
            const c = new LiveCrictl(d, args);
            live.add(c);
            return c;
          };
          const tmuxes = new Set<Tmux>();
          const tmux = () => {
            const x = new Tmux();
            tmuxes.add(x);
            return x;
          };
          let podId = "";
          try {
            await ok(d, ["pull", ref]);
            const podJson = await writeJson(`${dir}/pod.json`, podConfig("streams", dir));
            podId = await ok(d, ["runp", podJson]);
            const start = async (name: string, cfg: Record<string, unknown>) => {
              const path = await writeJson(`${dir}/${name}.json`, cfg);
              const id = await ok(d, ["create", podId, path, podJson]);
              await ok(d, ["start", id]);
              return id;
            };
            const sleeper = await start(
              "sleeper",
              containerConfig("sleeper", ref, ["sleep", "3600"]),
            );
            const reader = await start("reader", {
              ...containerConfig("reader", ref, [
                "sh",
                "-c",
                "while read l; do echo got:$l; done",
              ]),
              stdin: true,
              tty: false,
            });
            const once = await start("once", {
              ...containerConfig("once", ref, [
                "sh",
                "-c",
                "while read l; do echo got:$l; done; echo bye",
              ]),
              stdin: true,
              stdin_once: true,
              tty: false,
            });
            const shell = await start("shell", {
              ...containerConfig("shell", ref, ["sh"]),
              stdin: true,
              tty: true,
            });
            await start(
              "web",
              containerConfig("web", ref, [
                "sh",
                "-c",
                "mkdir -p /www && echo forwarded-ok > /www/index.html && " +
                "(head -c 2000000 /dev/zero | tr '\\0' z; echo) > /www/big && " +
                "exec /bin/busybox httpd -f -p 8080 -h /www",
              ]),
            );

            // The streaming server's port, from a URL (its token just expires unused).
            const probe = await curlJson(
              d.address,
              "/runtime.v1.RuntimeService/Exec",
              JSON.stringify({ containerId: sleeper, cmd: ["true"], stdout: true }),
            );
            const streamPort = Number(
              new URL(JSON.parse(probe.stdout.split("\n").slice(-2)[0]).url).port,
            );
            /** Every session is over: the daemon holds no connection on the streaming port. */
            const noSessions = (what: string) =>
              waitFor(
                async () => (await connectionsOn(streamPort)).length === 0,
                `no connection left on the streaming port after ${what}`,
                15_000,
              ).catch(async (err) => {
                throw new Error(`${err.message}:\n${(await connectionsOn(streamPort)).join("\n")}`);
              });

            for (const transport of ["spdy", "websocket"]) {
              await t.step(`exec (${transport}): stdout, stderr, exit status`, async () => {
                const r = await crictl(d, [
                  "exec",
                  "--transport",
                  transport,
                  sleeper,
                  "sh",
                  "-c",
                  "echo out; echo err >&2; exit 4",
                ]);
                assert.equal(r.stdout, "out\n");
                assert.match(r.stderr, /^err$/m);
                // crictl fails (status 1) naming the command's exit code.
                assert.notEqual(r.code, 0);
                assert.match(r.stderr, /command terminated with exit code 4/);
                const good = await crictl(d, ["exec", "-r", transport, sleeper, "echo", "fine"]);
                assert.equal(good.code, 0, good.stderr);
                assert.equal(good.stdout, "fine\n");
                // Much output, faster than crictl reads it.
                const big = await crictl(d, [
                  "exec",
                  "-r",
                  transport,
                  sleeper,
                  "sh",
                  "-c",
                  "head -c 3000000 /dev/zero | tr '\\0' x; echo; head -c 500000 /dev/zero | tr '\\0' y >&2",
                ]);
                assert.equal(big.code, 0, big.stderr.slice(0, 2000));
                assert.equal(big.stdout, "x".repeat(3_000_000) + "\n");
                assert.ok(big.stderr.includes("y".repeat(500_000)), "all of stderr");
                // A command that does not exist: crictl fails with the runtime's error.
                const none = await crictl(d, ["exec", "-r", transport, sleeper, "/no/such/cmd"]);
                assert.notEqual(none.code, 0);
                assert.match(none.stderr, /no such file|not found/i);
              });

              await t.step(`exec -i (${transport}): stdin echoed by cat`, async () => {
                const input = "line one\nline two\n" + "x".repeat(100_000) + "\n";
                const r = await run("crictl", [
                  ...crictlArgs(d),
                  "exec",
                  "-i",
                  "-r",
                  transport,
                  sleeper,
                  "cat",
                ], { stdin: input });
                assert.equal(r.code, 0, r.stderr);
                assert.equal(r.stdout.length, input.length);
                assert.equal(r.stdout, input);
              });

              await t.step(`attach -i (${transport}): stdin in, output out`, async () => {
                const c = spawn(["attach", "-i", "-r", transport, reader]);
                try {
                  // The attach is up once crictl's stdin reaches the container.
                  await waitFor(
                    async () => {
                      await c.write(`hello-${transport}\n`);
                      await delay(300);
                      return c.stdout.includes(`got:hello-${transport}`);
                    },
                    `got:hello-${transport} (stderr ${JSON.stringify(c.stderr)})`,
                    30_000,
                  );
                  await c.write("again\n");
                  await c.waitOut(/^got:again$/m, "got:again");
                } finally {
                  await c.stop();
                  live.delete(c);
                }
                await noSessions("crictl left");
              });

              await t.step(`port-forward (${transport}): httpd in the pod`, async () => {
                const port = freePort();
                const c = spawn(["port-forward", "-r", transport, podId, `${port}:8080`]);
                try {
                  await c.waitOut(/Forwarding from 127\.0\.0\.1:\d+/, "Forwarding from");
                  const get = (path: string) =>
                    run("/bin/busybox", ["wget", "-qO-", `http://127.0.0.1:${port}${path}`]);
                  for (let i = 0; i < 3; i++) {
                    const r = await get("/");
                    assert.equal(r.stdout, "forwarded-ok\n", `${r.stderr}\n${c.stderr}`);
                  }
                  // Several connections at once, one of them large.
                  const [a, b, large] = await Promise.all([get("/"), get("/"), get("/big")]);
                  assert.equal(a.stdout, "forwarded-ok\n", a.stderr);
                  assert.equal(b.stdout, "forwarded-ok\n", b.stderr);
                  assert.equal(large.stdout.length, 2_000_001, large.stderr);
                  assert.equal(large.stdout, "z".repeat(2_000_000) + "\n");
                } finally {
                  await c.stop();
                  live.delete(c);
                }
                await noSessions("crictl left");
              });

              await t.step(`port-forward (${transport}): a closed port fails`, async () => {
                const port = freePort();
                const c = spawn(["port-forward", "-r", transport, podId, `${port}:8081`]);
                try {
                  await c.waitOut(/Forwarding from 127\.0\.0\.1:\d+/, "Forwarding from");
                  const r = await run("/bin/busybox", [
                    "wget",
                    "-qO-",
                    `http://127.0.0.1:${port}/`,
                  ]);
                  assert.notEqual(r.code, 0);
                  assert.equal(r.stdout, "");
                  await waitFor(
                    () => Promise.resolve(/8081/.test(c.stderr)),
                    `crictl to report the failure (stderr ${JSON.stringify(c.stderr)})`,
                  );
                } finally {
                  await c.stop();
                  live.delete(c);
                }
                await noSessions("crictl left");
              });
            }

            await t.step("attach: two clients at once both get the output", async () => {
              const a = spawn(["attach", "-i", reader]);
              const b = spawn(["attach", "-r", "websocket", reader]);
              try {
                let n = 0;
                await waitFor(
                  async () => {
                    await a.write(`both-${++n}\n`);
                    await delay(300);
                    return /got:both-\d+/.test(a.stdout) && /got:both-\d+/.test(b.stdout);
                  },
                  `both attaches (a ${a.stderr}, b ${b.stderr})`,
                  30_000,
                );
                await a.write("last\n");
                await a.waitOut(/^got:last$/m, "got:last on the first");
                await b.waitOut(/^got:last$/m, "got:last on the second");
              } finally {
                await a.stop();
                await b.stop();
                live.delete(a);
                live.delete(b);
              }
              await noSessions("both clients left");
              // The container lives on after the clients left.
              const s = JSON.parse(await ok(d, ["inspect", reader]));
              assert.equal(s.status.state, "CONTAINER_RUNNING");
            });

            await t.step("attach -i to a stdin_once container: EOF ends it", async () => {
              const r = await run("crictl", [...crictlArgs(d), "attach", "-i", once], {
                stdin: "hello\nworld\n",
              });
              assert.equal(r.code, 0, r.stderr);
              assert.equal(r.stdout, "got:hello\ngot:world\nbye\n");
              await waitFor(async () => {
                const s = JSON.parse(await ok(d, ["inspect", once]));
                return s.status.state === "CONTAINER_EXITED";
              }, "the stdin_once container to exit");
            });

            await t.step("exec -it through tmux: type, read, resize, exit", async () => {
              const x = tmux();
              await x.start(crictlLine(d, ["exec", "-it", sleeper, "sh"]));
              await x.waitFor(/[#$] ?$/m, "prompt");
              await x.keys("echo $((6*7))", "Enter");
              await x.waitFor(/^42\s*$/m, "42");
              await x.keys("clear; stty size", "Enter");
              await x.waitFor(/^24 80\s*$/m, "24 80");
              const r = await x.cmd("resize-window", "-t", "s", "-x", "100", "-y", "30");
              assert.equal(r.code, 0, r.stderr);
              await delay(300);
              await x.keys("clear; stty size", "Enter");
              await x.waitFor(/^30 100\s*$/m, "30 100 after the resize");
              await x.keys("exit 3", "Enter");
              await x.waitFor(/command terminated with exit code 3/, "the shell's exit code");
              await x.waitFor(/^exited with 1$/m, "crictl's exit status");
              await x.kill();
              tmuxes.delete(x);
            });

            await t.step("exec -it: a client that goes away ends the shell", async () => {
              // The pod shares one PID namespace: count the shells running before.
              const shells = async () => {
                const ps = await ok(d, ["exec", sleeper, "ps", "-o", "pid,comm"]);
                return ps.split("\n").filter((l) => / sh$/.test(l)).length;
              };
              const before = await shells();
              const x = tmux();
              await x.start(crictlLine(d, ["exec", "-it", sleeper, "sh"]));
              await x.waitFor(/[#$] ?$/m, "prompt");
              await x.keys("echo marker-$((40+2))", "Enter");
              await x.waitFor(/^marker-42\s*$/m, "marker-42");
              assert.equal(await shells(), before + 1, "the exec'd shell runs");
              await x.kill(); // crictl gets SIGHUP
              tmuxes.delete(x);
              await noSessions("crictl was killed");
              // The shell's terminal was hung up when its input ended: it is gone.
              await waitFor(async () => await shells() === before, "the exec'd shell to end");
            });

            await t.step("attach -it through tmux to a container with a terminal", async () => {
              const x = tmux();
              await x.start(crictlLine(d, ["attach", "-it", shell]));
              // Attach shows output from now on: a new line brings a prompt.
              await waitFor(
                async () => {
                  await x.keys("Enter");
                  await delay(300);
                  return /[#$] ?$/m.test(await x.screen());
                },
                "a prompt",
                30_000,
              );
              await x.keys("echo $((6*7))", "Enter");
              await x.waitFor(/^42\s*$/m, "42");
              await x.cmd("resize-window", "-t", "s", "-x", "100", "-y", "30");
              await delay(300);
              await x.keys("clear; stty size", "Enter");
              await x.waitFor(/^30 100\s*$/m, "30 100 after the resize");
              // Exiting the shell ends the container, and with it the attach.
              await x.keys("exit", "Enter");
              await x.waitFor(/^exited with \d+$/m, "crictl's end");
              await x.kill();
              tmuxes.delete(x);
              await waitFor(async () => {
                const s = JSON.parse(await ok(d, ["inspect", shell]));
                return s.status.state === "CONTAINER_EXITED";
              }, "the shell container to exit");
            });

            await t.step("an exec URL serves one session, then 404", async () => {
              const call = await curlJson(
                d.address,
                "/runtime.v1.RuntimeService/Exec",
                JSON.stringify({
                  containerId: sleeper,
                  cmd: ["sh", "-c", "echo via-url; echo e >&2; exit 2"],
                  stdout: true,
                  stderr: true,
                }),
              );
              const [body, httpCode] = call.stdout.split("\n").slice(-2);
              assert.equal(httpCode, "200", call.stdout);
              const url: string = JSON.parse(body).url;
              assert.match(url, /^http:\/\/127\.0\.0\.1:\d+\/exec\/[A-Za-z0-9_-]+$/);
              const got = await webSocketSession(url);
              assert.equal(got.get(1), "via-url\n");
              assert.equal(got.get(2), "e\n");
              const status = JSON.parse(got.get(3) ?? "{}");
              assert.equal(status.reason, "NonZeroExitCode", got.get(3));
              assert.deepEqual(status.details.causes, [{ reason: "ExitCode", message: "2" }]);
              const again = await run("curl", ["-s", "-i", url]);
              assert.match(again.stdout, /^HTTP\/1\.1 404 /, again.stdout);
              // A fresh URL fetched without an upgrade is spent as well.
              const other = await curlJson(
                d.address,
                "/runtime.v1.RuntimeService/Exec",
                JSON.stringify({ containerId: sleeper, cmd: ["true"], stdout: true }),
              );
              const url2: string = JSON.parse(other.stdout.split("\n").slice(-2)[0]).url;
              const first = await run("curl", ["-s", "-i", url2]);
              assert.match(first.stdout, /^HTTP\/1\.1 400 /, first.stdout);
              const second = await run("curl", ["-s", "-i", url2]);
              assert.match(second.stdout, /^HTTP\/1\.1 404 /, second.stdout);
            });

            await t.step("cleanup: no pod, container or mount left", async () => {
              await noSessions("every test");
              // No port forwarding helper (nsenter running socat) outlived its connection.
              await waitFor(async () => {
                const r = await run("pgrep", ["-P", String(d.pid), "-l"]);
                return !/socat|nsenter/.test(r.stdout);
              }, "the port forwarding helpers to end");
              await ok(d, ["stopp", podId]);
              await ok(d, ["rmp", podId]);
              podId = "";
              assert.equal(await ok(d, ["pods", "-q"]), "");
              assert.equal(await ok(d, ["ps", "-a", "-q"]), "");
              assert.deepEqual(await mountsUnder(d.dir + "/"), [], "no mount left");
            });
          } finally {
            for (const c of live) await c.stop();
            for (const x of tmuxes) await x.kill();
            if (podId) {
              await crictl(d, ["stopp", podId]);
              await crictl(d, ["rmp", "-f", podId]);
            }
          }
        })
      )
    ),
});
