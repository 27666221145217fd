/**
 * Interactive terminals end to end: `ctr run -t` (and `tainerd run -t`) with a shell driven
 * through tmux: type, read the screen, resize the window, exit.
 */

import assert from "node:assert/strict";
import { canUnpack, withRegistryImage } from "../images/testdata/busybox_image.ts";
import { busyboxRootfs } from "./fixtures.ts";
import { delay, have, run, type TestDaemon, withDaemon } from "./harness.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** A detached tmux server of its own (socket name) running one session. */
class Tmux {
  constructor(readonly socket: string) {}
  cmd(...args: string[]) {
    return run("tmux", ["-L", this.socket, ...args]);
  }
  async screen(): Promise<string> {
    return (await this.cmd("capture-pane", "-p", "-t", "s")).stdout;
  }
  /** Waits until the screen matches `re`; returns the screen. */
  async waitFor(re: RegExp, what: string): Promise<string> {
    let screen = "";
    for (let i = 0; i < 100; i++) {
      screen = await this.screen();
      if (re.test(screen)) return screen;
      await delay(100);
    }
    throw new Error(`tmux: no ${what} on the screen:\n${screen}`);
  }
  async alive(): Promise<boolean> {
    return (await this.cmd("has-session", "-t", "s")).code === 0;
  }
  async kill(): Promise<void> {
    await this.cmd("kill-server");
  }
}

/** Drives an interactive shell started by `command` in an 80x24 tmux session. */
async function driveShell(command: string, name: string): Promise<void> {
  const tmux = new Tmux(`tainerd-test-${name}-${crypto.randomUUID().slice(0, 8)}`);
  // remain-on-exit keeps the pane (and the command's exit status) after the shell exits.
  let r = await tmux.cmd(
    "new-session",
    "-d",
    "-s",
    "s",
    "-x",
    "80",
    "-y",
    "24",
    `${command}; echo "exited with $?"; sleep 30`,
  );
  assert.equal(r.code, 0, r.stderr);
  try {
    await tmux.waitFor(/[#$] ?$/m, "prompt");
    await tmux.cmd("send-keys", "-t", "s", "echo $((6*7))", "Enter");
    await tmux.waitFor(/^42$/m, "42");
    await tmux.cmd("send-keys", "-t", "s", "clear; stty size", "Enter");
    await tmux.waitFor(/^24 80$/m, "24 80");
    r = await tmux.cmd("resize-window", "-t", "s", "-x", "100", "-y", "30");
    assert.equal(r.code, 0, r.stderr);
    await delay(300);
    await tmux.cmd("send-keys", "-t", "s", "clear; stty size", "Enter");
    await tmux.waitFor(/^30 100$/m, "30 100 after the resize");
    await tmux.cmd("send-keys", "-t", "s", "exit 5", "Enter");
    await tmux.waitFor(/^exited with 5$/m, "the exit status");
  } finally {
    await tmux.kill();
  }
}

/** Kills and removes whatever a failed test left running. */
async function cleanup(d: TestDaemon): Promise<void> {
  const ids = (await d.ctr(["containers", "ls", "-q"])).stdout.trim().split("\n").filter((x) => x);
  for (const id of ids) {
    await d.ctr(["tasks", "rm", "-f", id]);
    await d.ctr(["containers", "rm", id]);
  }
}

async function withRootfs(fn: (d: TestDaemon, rootfs: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-rootfs-" });
  try {
    const rootfs = await busyboxRootfs(dir);
    await withDaemon(async (d) => {
      try {
        await fn(d, rootfs);
      } finally {
        await cleanup(d);
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const ok = have("tmux");

Deno.test({
  name: "ctr run -t: an interactive shell through tmux: type, read, resize, exit",
  ignore: !ok,
  fn: () =>
    withRootfs(async (d, rootfs) => {
      await driveShell(`ctr -a ${d.address} run -t --rm --rootfs ${rootfs} tty1 /bin/sh`, "ctr");
      const r = await d.ctr(["containers", "ls", "-q"]);
      assert.equal(r.stdout.trim(), "");
    }),
});

Deno.test({
  name: "ctr task exec -t and tainerd tasks exec -t: a shell in a running task",
  ignore: !ok,
  fn: () =>
    withRootfs(async (d, rootfs) => {
      let r = await d.ctr(["run", "-d", "--rootfs", rootfs, "tty2", "/bin/sleep", "1000"]);
      assert.equal(r.code, 0, r.stderr);
      await driveShell(`ctr -a ${d.address} task exec -t --exec-id e1 tty2 /bin/sh`, "ctrexec");
      await driveShell(
        `deno run -A ${MAIN} -a ${d.address} tasks exec -t --exec-id e2 tty2 /bin/sh`,
        "cliexec",
      );
      r = await d.ctr(["tasks", "rm", "-f", "tty2"]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.ctr(["containers", "rm", "tty2"]);
      assert.equal(r.code, 0, r.stderr);
    }),
});

Deno.test({
  name: "tainerd run -t: an interactive shell from an image through tmux",
  ignore: !ok,
  fn: () =>
    withRegistryImage(({ ref }) =>
      withDaemon(async (d) => {
        try {
          const c = d.client();
          const unpackable = await canUnpack(c);
          c.close();
          if (!unpackable) return;
          const r = await d.cli(["images", "pull", "--plain-http", ref]);
          assert.equal(r.code, 0, r.stderr);
          await driveShell(`deno run -A ${MAIN} -a ${d.address} run -t --rm ${ref} tty3 sh`, "cli");
          const ls = await d.ctr(["containers", "ls", "-q"]);
          assert.equal(ls.stdout.trim(), "");
        } finally {
          await cleanup(d);
        }
      })
    ),
});
