/**
 * Tests of the pause image: a deterministic build, its layer, and — against a real daemon —
 * an import and a run that stops with exit 0 on SIGTERM.
 *
 * @module
 */

import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { readTar } from "../../../archive/tar/mod.ts";
import { canUnpack } from "../../../images/testdata/busybox_image.ts";
import { delay, withDaemon } from "../../../tests/harness.ts";
import { digestOf } from "../../content/digest.ts";
import {
  buildPauseImage,
  DEFAULT_SANDBOX_IMAGE,
  importPauseImage,
  PAUSE_ENTRYPOINT,
  PAUSE_EXECUTABLE_ENTRYPOINT,
  PINNED_LABEL,
} from "./pause.ts";

Deno.test("buildPauseImage() gives the same bytes every time", async () => {
  const a = await buildPauseImage();
  const b = await buildPauseImage();
  assert.equal(a.manifest.desc.digest, b.manifest.desc.digest);
  assert.deepEqual(a.layer.bytes, b.layer.bytes);
  for (const blob of [a.manifest, a.config, a.layer]) {
    assert.equal(blob.desc.digest, digestOf(blob.bytes));
    assert.equal(blob.desc.size, blob.bytes.byteLength);
  }
  const manifest = JSON.parse(new TextDecoder().decode(a.manifest.bytes));
  assert.deepEqual(manifest.config, a.config.desc);
  assert.deepEqual(manifest.layers, [a.layer.desc]);
  const config = JSON.parse(new TextDecoder().decode(a.config.bytes));
  assert.deepEqual(
    config.config.Entrypoint,
    Deno.build.arch === "x86_64" ? PAUSE_EXECUTABLE_ENTRYPOINT : PAUSE_ENTRYPOINT,
  );
  assert.deepEqual(config.rootfs.diff_ids, [a.diffId]);
  assert.equal(config.architecture, a.platform.architecture);
  // gzip header: no mtime.
  assert.deepEqual([...a.layer.bytes.subarray(4, 8)], [0, 0, 0, 0]);
});

Deno.test({
  name: "buildPauseImage() on x86-64: /pause, a static executable that exits 0 on TERM",
  ignore: Deno.build.arch !== "x86_64",
  fn: async () => {
    const img = await buildPauseImage();
    const tar = gunzipSync(img.layer.bytes);
    const seen: string[] = [];
    let pause: Uint8Array | undefined;
    for await (const { header, body } of readTar(ReadableStream.from([new Uint8Array(tar)]))) {
      seen.push(`${header.name} ${header.type} ${header.mode.toString(8)}`);
      if (header.name === "pause") pause = new Uint8Array(await new Response(body).arrayBuffer());
      else await body.cancel();
    }
    assert.deepEqual(seen, [
      "dev/ 5 755",
      "etc/ 5 755",
      "pause 0 755",
      "proc/ 5 555",
      "sys/ 5 555",
    ]);
    assert.ok(pause && pause.byteLength < 1024, "a tiny static executable");
    assert.deepEqual([...pause!.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46]);
    // Run it here: it sleeps, catches INT/TERM/CHLD, and exits 0 on SIGTERM.
    const dir = await Deno.makeTempDir({ prefix: "tainerd-pause-" });
    try {
      await Deno.writeFile(`${dir}/pause`, pause!, { mode: 0o755 });
      const child = new Deno.Command(`${dir}/pause`).spawn();
      let status: Deno.CommandStatus | undefined;
      child.status.then((s) => status = s);
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(status, undefined, "still running");
      const caught = (await Deno.readTextFile(`/proc/${child.pid}/status`))
        .match(/^SigCgt:\s*([0-9a-f]+)/m)?.[1];
      const bits = BigInt(`0x${caught}`);
      for (const sig of [2, 15, 17]) assert.equal((bits >> BigInt(sig - 1)) & 1n, 1n, `sig ${sig}`);
      child.kill("SIGTERM");
      const st = await child.status;
      assert.equal(st.code, 0);
      assert.equal(st.signal, null);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("buildPauseImage() with busybox: /bin/busybox and its sh and sleep links", async () => {
  const img = await buildPauseImage({ busyboxPath: "/bin/busybox" });
  const tar = gunzipSync(img.layer.bytes);
  assert.equal(digestOf(tar), img.diffId);
  const seen: string[] = [];
  const busybox = await Deno.readFile("/bin/busybox");
  for await (const { header, body } of readTar(ReadableStream.from([new Uint8Array(tar)]))) {
    seen.push(`${header.name} ${header.type} ${header.mode.toString(8)} ${header.linkname}`);
    assert.equal(header.mtime.sec, 0);
    assert.equal(header.uid, 0);
    if (header.name === "bin/busybox") {
      const bytes = new Uint8Array(await new Response(body).arrayBuffer());
      assert.ok(bytes.byteLength === busybox.byteLength && digestOf(bytes) === digestOf(busybox));
    } else {
      await body.cancel();
    }
  }
  assert.deepEqual(seen, [
    "bin/ 5 755 ",
    "bin/busybox 0 755 ",
    "bin/sh 2 777 busybox",
    "bin/sleep 2 777 busybox",
    "dev/ 5 755 ",
    "etc/ 5 755 ",
    "proc/ 5 555 ",
    "sys/ 5 555 ",
    "tmp/ 5 1777 ",
  ]);
});

Deno.test("importPauseImage() imports idempotently; the pause container exits 0 on SIGTERM", () =>
  withDaemon(async (d) => {
    const c = d.client();
    try {
      const first = await importPauseImage(c);
      const again = await importPauseImage(c);
      assert.equal(first.name, DEFAULT_SANDBOX_IMAGE);
      assert.deepEqual(again.target, first.target);
      assert.equal(again.labels[PINNED_LABEL], "pinned");
      let r = await d.ctr(["images", "ls", "-q"]);
      assert.equal(r.stdout, `${DEFAULT_SANDBOX_IMAGE}\n`);
      r = await d.ctr(["images", "check"]);
      assert.match(r.stdout, /complete/);
      // Another namespace, by option.
      await importPauseImage(c, { namespace: "k8s.io" });
      r = await d.ctr(["images", "ls", "-q"], { namespace: "k8s.io" });
      assert.equal(r.stdout, `${DEFAULT_SANDBOX_IMAGE}\n`);

      if (!(await canUnpack(c))) {
        console.warn("SKIPPED: the daemon cannot unpack images, so the pause run is skipped");
        return;
      }
      r = await d.cli(["run", "-d", DEFAULT_SANDBOX_IMAGE, "pause1"]);
      assert.equal(r.code, 0, r.stderr);
      const running = async () => (await d.ctr(["tasks", "ls"])).stdout.includes("RUNNING");
      for (let i = 0; i < 50 && !(await running()); i++) await delay(100);
      assert.ok(await running(), "the pause task runs");
      await delay(300); // let sh install its trap
      r = await d.ctr(["tasks", "ps", "pause1"]);
      assert.equal(r.code, 0, r.stderr);

      const killed = Date.now();
      r = await d.ctr(["tasks", "kill", "-s", "SIGTERM", "pause1"]);
      assert.equal(r.code, 0, r.stderr);
      let stopped = false;
      while (!stopped && Date.now() - killed < 2000) {
        stopped = (await d.ctr(["tasks", "ls"])).stdout.includes("STOPPED");
        if (!stopped) await delay(50);
      }
      assert.ok(stopped, "the pause task stopped within 2 s of SIGTERM");
      // ctr exits with the task's exit status.
      r = await d.ctr(["tasks", "delete", "pause1"]);
      assert.equal(r.code, 0, `exit status: ${r.stderr}`);
      r = await d.ctr(["containers", "delete", "pause1"]);
      assert.equal(r.code, 0, r.stderr);
    } finally {
      c.close();
    }
  }));
