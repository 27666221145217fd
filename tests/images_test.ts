/**
 * Images end to end: pull, list, tag, remove and push against a real registry
 * (Debian's docker-registry on 127.0.0.1) and a real daemon, with tainerd's CLI, the client
 * library and the real ctr.
 */

import assert from "node:assert/strict";
import { digestOf } from "../plugins/content/digest.ts";
import { contentInfo } from "../client/images_content.ts";
import { getImage, listImages } from "../client/images.ts";
import { pull } from "../images/pull.ts";
import type { ProgressEvent } from "../images/registry_options.ts";
import { blobDataPath } from "../images/remote/testdata/registry.ts";
import {
  buildBusyboxImage,
  canUnpack,
  pushBuiltImage,
  startCuttingProxy,
  withRegistryImage,
} from "../images/testdata/busybox_image.ts";
import { have, run, type TestDaemon, withDaemon } from "./harness.ts";
import { isKind } from "../plugins/errdefs.ts";
import { hostPlatform } from "../images/platforms.ts";

async function contentDigests(d: TestDaemon, namespace = "default"): Promise<string[]> {
  const c = d.client(namespace);
  try {
    const out: string[] = [];
    for await (const resp of c.content.list({ filters: [] })) {
      for (const i of resp.info) out.push(i.digest);
    }
    return out.sort();
  } finally {
    c.close();
  }
}

/** Runs a garbage collection now (a lease deleted with sync collects). */
async function collectGarbage(d: TestDaemon, namespace = "default"): Promise<void> {
  const c = d.client(namespace);
  try {
    await c.leases.create({ id: "gc-now" });
    await c.leases.delete({ id: "gc-now", sync: true });
  } finally {
    c.close();
  }
}

Deno.test("tainerd images pull fetches the host platform, labels it for GC and unpacks it", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      const c = d.client();
      try {
        const unpack = await canUnpack(c);
        if (!unpack) console.warn("snapshots/diff plugins absent: pulling without unpacking");
        let r = await d.cli([
          "images",
          "pull",
          "--plain-http",
          ...(unpack ? [] : ["--no-unpack"]),
          ref,
        ]);
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /resolved/);
        assert.match(r.stdout, new RegExp(`layer-${image.layers[0].desc.digest}:\\s+done`));
        if (unpack) {
          assert.match(r.stdout, /unpacking linux\/\w+ sha256:[0-9a-f]{64}\.\.\.\ndone: /);
        }

        const img = await getImage(c, ref);
        assert.equal(img.target.digest, image.root.desc.digest);
        assert.equal(img.target.mediaType, image.root.desc.mediaType);

        // Children labels on the index (both manifests) and the manifest (config, layers).
        const idx = await contentInfo(c, image.root.desc.digest);
        assert.ok(idx, "the index is stored");
        assert.equal(idx.labels["containerd.io/gc.ref.content.m.0"], image.manifest.desc.digest);
        assert.ok(idx.labels["containerd.io/gc.ref.content.m.1"]);
        const host = ref.split("/")[0];
        assert.equal(idx.labels[`containerd.io/distribution.source.${host}`], "test/busybox");
        const man = await contentInfo(c, image.manifest.desc.digest);
        assert.equal(man?.labels["containerd.io/gc.ref.content.config"], image.config.desc.digest);
        assert.equal(man?.labels["containerd.io/gc.ref.content.l.0"], image.layers[0].desc.digest);
        // Only the host platform's blobs were fetched.
        const stored = await contentDigests(d);
        assert.deepEqual(
          stored,
          [image.root, image.manifest, image.config, ...image.layers].map((b) => b.desc.digest)
            .sort(),
        );
        if (unpack) {
          const layer = await contentInfo(c, image.layers[0].desc.digest);
          assert.equal(layer?.labels["containerd.io/uncompressed"], image.diffIds[0]);
          const config = await contentInfo(c, image.config.desc.digest);
          assert.equal(config?.labels["containerd.io/gc.ref.snapshot.overlayfs"], image.diffIds[0]);
        }
        // The pull's lease is gone.
        assert.deepEqual((await c.leases.list({ filters: [] })).leases, []);

        r = await d.cli(["images", "ls"]);
        assert.equal(r.code, 0, r.stderr);
        const lines = r.stdout.trim().split("\n");
        assert.match(lines[0], /^REF\s+TYPE\s+DIGEST\s+SIZE\s+PLATFORMS\s+LABELS/);
        assert.match(
          lines[1],
          new RegExp(
            `^${
              ref.replace(/[.]/g, "\\.")
            }\\s+application/vnd\\.oci\\.image\\.index\\.v1\\+json\\s+${image.root.desc.digest}\\s+1\\.\\d+ MiB\\s+linux/amd64,linux/arm64/v8\\s+-`,
          ),
        );
        r = await d.cli(["images", "ls", "-q"]);
        assert.equal(r.stdout, `${ref}\n`);
        // The real ctr sees the same image.
        r = await d.ctr(["images", "ls", "-q"]);
        assert.equal(r.stdout, `${ref}\n`);
        r = await d.ctr(["images", "check"]);
        assert.match(r.stdout, /complete \(\d+\/\d+\)/);

        // Pulling again skips everything it has.
        const events: ProgressEvent[] = [];
        const again = await pull(c, ref, { plainHttp: true, onProgress: (e) => events.push(e) });
        assert.equal(again.downloaded, 0);
        assert.ok(events.some((e) => e.status === "exists"));
      } finally {
        c.close();
      }
    })
  ));

Deno.test("the real ctr pulls into tainerd and runs the image; tainerd run does too", () =>
  withRegistryImage(({ ref }) =>
    withDaemon(async (d) => {
      const c = d.client();
      const unpack = await canUnpack(c);
      c.close();
      if (!unpack) {
        console.warn("SKIPPED: the daemon has no snapshots/diff plugins, so ctr cannot unpack");
        return;
      }
      let r = await d.ctr(["images", "pull", "--plain-http", ref]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /unpacking linux\/\w+ sha256:/);
      r = await d.ctr(["run", "--rm", ref, "c1", "echo", "hi"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "hi\n");
      r = await d.cli(["run", "--rm", ref, "t1", "echo", "hi"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "hi\n");
      r = await d.ctr(["containers", "ls", "-q"]);
      assert.equal(r.stdout, "");
    })
  ));

Deno.test("pull --all-platforms fetches every manifest; --platform picks another one", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      const c = d.client();
      try {
        const other = image.platforms[1];
        const res = await pull(c, ref, {
          plainHttp: true,
          platform: `${other.os}/${other.architecture}`,
        });
        assert.equal(res.manifests.length, 1);
        assert.notEqual(res.manifests[0].digest, image.manifest.desc.digest);
        assert.equal((await contentDigests(d)).length, 4);
        const all = await pull(c, ref, { plainHttp: true, allPlatforms: true, name: "all:1" });
        assert.equal(all.manifests.length, 2);
        assert.deepEqual(await contentDigests(d), image.blobs.map((b) => b.desc.digest).sort());
        const names = (await listImages(c)).map((i) => i.name).sort();
        assert.deepEqual(names, ["all:1", ref].sort());
        // A platform the image lacks is a clear NotFound.
        await assert.rejects(
          pull(c, ref, { plainHttp: true, platform: "linux/s390x" }),
          (err: Error) =>
            isKind(err, "NotFound") && /No manifest for platform linux\/s390x/.test(err.message),
        );
      } finally {
        c.close();
      }
    })
  ));

Deno.test("a pull of a corrupt blob fails, leaves no image, and GC removes what it wrote", () =>
  withRegistryImage(async ({ ref, image, registry }) => {
    // Same size, other bytes: the registry serves content that fails verification.
    const path = blobDataPath(registry, image.layers[0].desc.digest);
    const data = await Deno.readFile(path);
    data[data.length - 10] ^= 0xff;
    await Deno.writeFile(path, data);
    await withDaemon(async (d) => {
      const r = await d.cli(["images", "pull", "--plain-http", "--no-unpack", ref]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /^tainerd: .*digest/m);
      assert.equal((await d.cli(["images", "ls", "-q"])).stdout, "");
      const c = d.client();
      try {
        assert.deepEqual((await c.leases.list({ filters: [] })).leases, [], "the lease is gone");
      } finally {
        c.close();
      }
      await collectGarbage(d);
      assert.deepEqual(await contentDigests(d), [], "GC removed the partial pull");
      const active = await d.ctr(["content", "active"]);
      assert.equal(active.stdout.trim().split("\n").length, 1, active.stdout);
    });
  }));

Deno.test("a dropped connection is resumed; a registry dying mid-pull leaves nothing; a ~20 MB pull is timed", () =>
  withRegistryImage(async ({ ref, image, registry }) => {
    await withDaemon(async (d) => {
      const c = d.client();
      try {
        // Timing of a full pull of the image (busybox + 20 MiB of incompressible data).
        const t0 = performance.now();
        const res = await pull(c, ref, { plainHttp: true, name: "timed:1" });
        const ms = performance.now() - t0;
        console.log(
          `pull of ${(res.downloaded / 1e6).toFixed(1)} MB (host platform) took ${
            ms.toFixed(0)
          } ms`,
        );
        assert.ok(res.downloaded > 20e6, `${res.downloaded}`);
        assert.equal(res.image.target.digest, image.root.desc.digest);
      } finally {
        c.close();
      }
      // Another image (content no namespace has yet) for the failure tests.
      const other = await buildBusyboxImage({ extraBytes: 20 << 20, seed: 7, motd: "other\n" });
      await pushBuiltImage(other, `${registry.host}/test/other:1`);
      // The registry dies while the big layer streams: the pull fails and leaves nothing.
      const dying = startCuttingProxy(registry.host, { cutAfter: 8 << 20, die: true });
      const c3 = d.client("other");
      try {
        await assert.rejects(pull(c3, `${dying.host}/test/other:1`, { plainHttp: true }));
        assert.ok(dying.cut());
        assert.deepEqual((await listImages(c3)).map((i) => i.name), []);
        assert.deepEqual((await c3.leases.list({ filters: [] })).leases, []);
        await collectGarbage(d, "other");
        assert.deepEqual(await contentDigests(d, "other"), []);
        const active = await d.ctr(["content", "active"], { namespace: "other" });
        assert.equal(active.stdout.trim().split("\n").length, 1, active.stdout);
      } finally {
        c3.close();
        await dying.close();
      }
      // A connection dropped mid-layer is resumed (a Range request) and the pull succeeds.
      const flaky = startCuttingProxy(registry.host, { cutAfter: 8 << 20 });
      const c2 = d.client("resume");
      try {
        const res = await pull(c2, `${flaky.host}/test/other:1`, { plainHttp: true });
        assert.ok(flaky.cut(), "the proxy dropped the connection");
        assert.equal(res.image.target.digest, other.root.desc.digest);
        assert.ok(flaky.sent() < other.blobs.reduce((n, b) => n + b.desc.size, 0) + (1 << 20));
      } finally {
        c2.close();
        await flaky.close();
      }
    });
  }, { extraBytes: 20 << 20 }));

Deno.test("images tag and rm manage names; rm of an unknown image warns", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      let r = await d.cli(["images", "pull", "--plain-http", "--no-unpack", ref]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["images", "tag", ref, "example.com/copy:1", "example.com/copy:2"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "example.com/copy:1\nexample.com/copy:2\n");
      r = await d.cli(["images", "tag", ref, "example.com/copy:1"]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /already exists/);
      r = await d.ctr(["images", "ls"]);
      assert.equal((r.stdout.match(new RegExp(image.root.desc.digest, "g")) ?? []).length, 3);
      r = await d.cli(["images", "rm", "example.com/copy:1", "nope:1", "example.com/copy:2"]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, "example.com/copy:1\nexample.com/copy:2\n");
      assert.match(r.stderr, /nope:1: image not found/);
      r = await d.cli(["images", "rm", "--sync", ref]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(await contentDigests(d), [], "rm --sync collected the content");
    })
  ));

Deno.test("images push uploads to the registry; skopeo and a pull back see the same digest", () =>
  withRegistryImage(({ ref, image, registry }) =>
    withDaemon(async (d) => {
      let r = await d.cli([
        "images",
        "pull",
        "--plain-http",
        "--no-unpack",
        "--all-platforms",
        ref,
      ]);
      assert.equal(r.code, 0, r.stderr);
      const copy = `${registry.host}/test/copy:2`;
      r = await d.cli(["images", "push", "--plain-http", copy, ref]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /index-sha256:[0-9a-f]{64}:\s+done/);
      if (have("skopeo")) {
        const raw = await run("skopeo", [
          "inspect",
          "--raw",
          "--tls-verify=false",
          `docker://${copy}`,
        ], { env: { HOME: "/tmp" } });
        assert.equal(raw.code, 0, raw.stderr);
        assert.equal(digestOf(new TextEncoder().encode(raw.stdout)), image.root.desc.digest);
      }
      // Pull it back into another namespace.
      r = await d.cli(["-n", "back", "images", "pull", "--plain-http", "--no-unpack", copy]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["-n", "back", "images", "ls"]);
      assert.match(r.stdout, new RegExp(`test/copy:2\\s+\\S+\\s+${image.root.desc.digest}`));
      // The blobs were mounted from the source repository, not uploaded again.
      const c = d.client();
      try {
        const info = await contentInfo(c, image.layers[0].desc.digest);
        assert.equal(
          info?.labels[`containerd.io/distribution.source.${registry.host}`],
          "test/busybox",
        );
      } finally {
        c.close();
      }
      // A partial image (one platform) cannot be pushed whole.
      r = await d.cli(["-n", "back", "images", "rm", copy]);
      r = await d.cli(["-n", "part", "images", "pull", "--plain-http", "--no-unpack", ref]);
      r = await d.cli([
        "-n",
        "part",
        "images",
        "push",
        "--plain-http",
        `${registry.host}/test/part:1`,
        ref,
      ]);
      assert.equal(r.code, 1);
      assert.match(r.stderr, /is missing/);
    })
  ));

Deno.test("Docker schema 2 images pull and list", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      const r = await d.cli(["images", "pull", "--plain-http", "--no-unpack", ref]);
      assert.equal(r.code, 0, r.stderr);
      const ls = await d.cli(["images", "ls"]);
      assert.match(
        ls.stdout,
        new RegExp(
          `application/vnd\\.docker\\.distribution\\.manifest\\.list\\.v2\\+json\\s+${image.root.desc.digest}`,
        ),
      );
    }), { docker: true, repo: "test/docker" }));

Deno.test("a lone manifest (no index) pulls, lists its config's platform and runs", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      const c = d.client();
      const unpack = await canUnpack(c);
      c.close();
      let r = await d.cli([
        "images",
        "pull",
        "--plain-http",
        ...(unpack ? [] : ["--no-unpack"]),
        ref,
      ]);
      assert.equal(r.code, 0, r.stderr);
      r = await d.cli(["images", "ls"]);
      assert.match(
        r.stdout,
        new RegExp(
          `application/vnd\\.docker\\.distribution\\.manifest\\.v2\\+json\\s+${image.root.desc.digest}\\s+\\S+ \\S+\\s+linux/${hostPlatform().architecture}\\s`,
        ),
      );
      if (unpack) {
        r = await d.cli(["run", "--rm", ref, "lone", "sh", "-c", "echo $PATH"]);
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n");
      }
    }), { single: true, docker: true, repo: "test/lone" }));
