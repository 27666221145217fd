/**
 * systemd integration: contrib/tainerd.service passes `systemd-analyze verify`, and a real
 * daemon speaks the sd_notify protocol (READY=1 once the API answers, STOPPING=1 at shutdown)
 * to a NOTIFY_SOCKET listener of the test's own, path or abstract.
 */

import assert from "node:assert/strict";
import { renderUnit, SYSTEMD_UNIT } from "../cli/install.ts";
import { Notifier, NOTIFY_SOCKET_ENV, sendNotify, sockaddrUn } from "../daemon/notify.ts";
import { check, close, libc, pollAsync, POLLIN, read } from "../sys/libc.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { delay, have, run } from "./harness.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MAIN = `${ROOT}main.ts`;
const UNIT_PATH = `${ROOT}contrib/tainerd.service`;

/** A unix datagram socket bound to `address`: the service manager's end of NOTIFY_SOCKET. */
class NotifyListener implements Disposable {
  readonly address: string;
  #fd: number;

  constructor(address: string) {
    this.address = address;
    const { addr, len } = sockaddrUn(address);
    this.#fd = check(
      libc().socket(1, /* AF_UNIX */ 2 | 0o2000000, /* DGRAM|CLOEXEC */ 0),
      "socket",
    );
    try {
      check(libc().bind(this.#fd, addr, len), "bind", [address]);
    } catch (err) {
      close(this.#fd);
      throw err;
    }
  }

  /** The next datagram, as text; throws after `timeoutMs`. */
  async receive(timeoutMs = 30_000): Promise<string> {
    const [revents] = await pollAsync([{ fd: this.#fd, events: POLLIN }], timeoutMs);
    if ((revents & POLLIN) === 0) throw new Error(`No notification within ${timeoutMs}ms`);
    const buf = new Uint8Array(4096);
    return new TextDecoder().decode(buf.subarray(0, read(this.#fd, buf)));
  }

  [Symbol.dispose](): void {
    close(this.#fd);
  }
}

/** Parses `KEY=VALUE` lines. */
function assignments(text: string): Record<string, string> {
  return Object.fromEntries(
    text.split("\n").filter((l) => l).map((
      l,
    ) => [l.slice(0, l.indexOf("=")), l.slice(l.indexOf("=") + 1)]),
  );
}

Deno.test("contrib/tainerd.service passes systemd-analyze verify", {
  ignore: !have("systemd-analyze"),
}, async () => {
  // verify insists that ExecStart exists: point it at a stand-in, change nothing else.
  const dir = await Deno.makeTempDir({ prefix: "tainerd-unit-" });
  try {
    await Deno.mkdir(`${dir}/bin`);
    await Deno.writeTextFile(`${dir}/bin/tainerd`, "#!/bin/sh\n", { mode: 0o755 });
    const unit = await Deno.readTextFile(UNIT_PATH);
    assert.match(unit, /^ExecStart=\/usr\/local\/bin\/tainerd daemon$/m);
    await Deno.writeTextFile(
      `${dir}/tainerd.service`,
      unit.replace("ExecStart=/usr/local/bin/tainerd", `ExecStart=${dir}/bin/tainerd`),
    );
    const r = await run("systemd-analyze", ["verify", `${dir}/tainerd.service`]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr.trim(), "", "no warning either (unknown keys, bad values)");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

if (!have("systemd-analyze")) {
  console.log(
    "systemd_test: systemd-analyze is missing (Debian package systemd): unit not verified",
  );
}

Deno.test("contrib/tainerd.service is containerd's unit for tainerd", async () => {
  const unit = await Deno.readTextFile(UNIT_PATH);
  assert.equal(unit, SYSTEMD_UNIT, "the unit install writes is the contrib file");
  assert.equal(renderUnit(), unit, "the default paths render the unit unchanged");
  const service = unit.slice(unit.indexOf("[Service]"), unit.indexOf("[Install]"));
  const keys = Object.fromEntries(
    service.split("\n").filter((l) => /^[A-Za-z]+=/.test(l)).map((l) => l.split(/=(.*)/s, 2)),
  );
  assert.deepEqual(
    {
      ExecStartPre: keys.ExecStartPre,
      ExecStart: keys.ExecStart,
      Type: keys.Type,
      Delegate: keys.Delegate,
      KillMode: keys.KillMode,
      Restart: keys.Restart,
      LimitNOFILE: keys.LimitNOFILE,
      LimitNPROC: keys.LimitNPROC,
      LimitCORE: keys.LimitCORE,
      TasksMax: keys.TasksMax,
      OOMScoreAdjust: keys.OOMScoreAdjust,
    },
    {
      ExecStartPre: "-/sbin/modprobe overlay",
      ExecStart: "/usr/local/bin/tainerd daemon",
      Type: "notify",
      Delegate: "yes",
      KillMode: "process",
      Restart: "always",
      LimitNOFILE: "infinity",
      LimitNPROC: "infinity",
      LimitCORE: "infinity",
      TasksMax: "infinity",
      OOMScoreAdjust: "-999",
    },
  );
  assert.match(unit, /^\[Install\]\nWantedBy=multi-user\.target$/m);
  assert.equal(
    renderUnit({ prefix: "/opt/tainerd", configDir: "/etc/t" }).match(/^ExecStart=.*$/m)?.[0],
    "ExecStart=/opt/tainerd/bin/tainerd daemon --config /etc/t/config.toml",
  );
});

Deno.test("sendNotify() reaches path and abstract sockets", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-notify-" });
  try {
    for (const address of [`${dir}/notify`, `@tainerd-test-${crypto.randomUUID()}`]) {
      using listener = new NotifyListener(address);
      sendNotify(address, "READY=1\nSTATUS=hello");
      assert.equal(await listener.receive(5000), "READY=1\nSTATUS=hello", address);
      const n = new Notifier(address);
      n.stopping("bye\nnow");
      assert.equal(await listener.receive(5000), "STOPPING=1\nSTATUS=bye now", address);
    }
    assert.throws(() => sendNotify(`${dir}/nobody`, "READY=1"), /ENOENT|connect/);
    assert.throws(() => sendNotify("relative", "READY=1"), /absolute path/);
    assert.throws(() => sendNotify(`/${"x".repeat(200)}`, "READY=1"), /too long/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("Notifier.fromEnv() takes NOTIFY_SOCKET out of the environment", () => {
  const saved = Deno.env.get(NOTIFY_SOCKET_ENV);
  try {
    Deno.env.set(NOTIFY_SOCKET_ENV, "@x");
    assert.equal(Notifier.fromEnv()?.address, "@x");
    assert.equal(Deno.env.get(NOTIFY_SOCKET_ENV), undefined);
    assert.equal(Notifier.fromEnv(), null);
  } finally {
    if (saved !== undefined) Deno.env.set(NOTIFY_SOCKET_ENV, saved);
  }
});

Deno.test("a daemon notifies READY=1 once serving and STOPPING=1 at shutdown", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-test-" });
  const address = `${dir}/tainerd.sock`;
  using listener = new NotifyListener(`${dir}/notify.sock`);
  await Deno.writeTextFile(`${dir}/config.toml`, "version = 2\n");
  const rootfs = await busyboxRootfs(dir);
  const daemon = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      MAIN,
      "daemon",
      "--config",
      `${dir}/config.toml`,
      "--address",
      address,
      "--root",
      `${dir}/root`,
      "--state",
      `${dir}/state`,
    ],
    cwd: dir,
    env: { [NOTIFY_SOCKET_ENV]: listener.address },
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = daemon.stderr.pipeThrough(new TextDecoderStream()).getReader();
  let log = "";
  const logDone = (async () => {
    for (;;) {
      const { value, done } = await stderr.read();
      if (done) return;
      log += value;
    }
  })();
  const ctr = (...args: string[]) => run("ctr", ["-a", address, ...args]);
  try {
    const ready = assignments(await listener.receive());
    assert.equal(ready.READY, "1");
    assert.equal(ready.STATUS, `serving on ${address}`);
    // Ready means ready: the API answers at once.
    let r = await ctr("version");
    assert.equal(r.code, 0, r.stderr);

    // NOTIFY_SOCKET is the daemon's alone: a shim (and so runc) must not inherit it.
    r = await ctr("run", "-d", "--rootfs", rootfs, "notify-env", "/bin/sleep", "1000");
    assert.equal(r.code, 0, r.stderr);
    const pgrep = await run("pgrep", ["-f", "--", ` shim .*-address ${address} `]);
    const shim = pgrep.stdout.trim().split("\n")[0];
    assert.ok(shim, "a shim runs");
    const environ = await Deno.readTextFile(`/proc/${shim}/environ`);
    assert.ok(!environ.split("\0").some((e) => e.startsWith(`${NOTIFY_SOCKET_ENV}=`)), environ);
    await ctr("tasks", "kill", "-s", "SIGKILL", "notify-env");
    for (let i = 0; i < 50; i++) {
      if ((await ctr("tasks", "rm", "notify-env")).code === 0) break;
      await delay(100);
    }
    r = await ctr("containers", "rm", "notify-env");
    assert.equal(r.code, 0, r.stderr);

    daemon.kill("SIGTERM");
    const stopping = assignments(await listener.receive());
    assert.equal(stopping.STOPPING, "1");
    assert.equal((await daemon.status).code, 0);
  } catch (err) {
    // Leave no container or shim of this test behind.
    await ctr("tasks", "kill", "-s", "SIGKILL", "notify-env").catch(() => {});
    await delay(500);
    await ctr("tasks", "rm", "-f", "notify-env").catch(() => {});
    await ctr("containers", "rm", "notify-env").catch(() => {});
    const shims = await run("pgrep", ["-f", "--", ` shim .*-address ${address} `]);
    for (const pid of shims.stdout.trim().split("\n").filter((p) => p)) {
      try {
        Deno.kill(Number(pid), "SIGKILL");
      } catch {
        // Gone.
      }
    }
    try {
      daemon.kill("SIGKILL");
    } catch {
      // Gone.
    }
    await daemon.status;
    await logDone;
    console.error(`daemon log:\n${log}`);
    throw err;
  } finally {
    await daemon.status;
    await logDone;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});
