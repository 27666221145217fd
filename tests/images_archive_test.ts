/**
 * Image archives end to end: export as an OCI layout tarball, import it back (with tainerd and
 * the real ctr, both ways), import `docker save` tarballs and skopeo's OCI archives.
 */

import assert from "node:assert/strict";
import { gunzipSync } from "node:zlib";
import { getImage } from "../client/images.ts";
import { canUnpack, withRegistryImage } from "../images/testdata/busybox_image.ts";
import { have, run, type TestDaemon, waitFor, withDaemon } from "./harness.ts";

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

async function tarList(file: string): Promise<string[]> {
  const r = await run("tar", ["-tf", file]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout.trim().split("\n");
}

async function tarCat(file: string, member: string): Promise<string> {
  const r = await run("tar", ["-xOf", file, member]);
  assert.equal(r.code, 0, r.stderr);
  return r.stdout;
}

Deno.test("images export, rm and import round-trip with identical digests, also through ctr", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      const tmp = await Deno.makeTempDir({ prefix: "tainerd-archive-" });
      try {
        const c = d.client();
        const unpack = await canUnpack(c);
        c.close();
        const noUnpack = unpack ? [] : ["--no-unpack"];
        let r = await d.cli(["images", "pull", "--plain-http", ...noUnpack, ref]);
        assert.equal(r.code, 0, r.stderr);
        const before = await contentDigests(d);

        const out = `${tmp}/image.tar`;
        r = await d.cli(["images", "export", out, ref]);
        assert.equal(r.code, 0, r.stderr);
        const entries = await tarList(out);
        const blobs = before.map((dg) => `blobs/sha256/${dg.slice(7)}`);
        assert.deepEqual(entries, [
          "blobs/",
          "blobs/sha256/",
          ...blobs.sort(),
          "index.json",
          "manifest.json",
          "oci-layout",
        ]);
        const index = JSON.parse(await tarCat(out, "index.json"));
        assert.equal(index.manifests.length, 1);
        assert.equal(index.manifests[0].digest, image.root.desc.digest);
        assert.equal(index.manifests[0].annotations["io.containerd.image.name"], ref);
        assert.equal(index.manifests[0].annotations["org.opencontainers.image.ref.name"], "1");
        const manifestJson = JSON.parse(await tarCat(out, "manifest.json"));
        assert.deepEqual(manifestJson, [{
          Config: `blobs/sha256/${image.config.desc.digest.slice(7)}`,
          RepoTags: [ref],
          Layers: image.layers.map((l) => `blobs/sha256/${l.desc.digest.slice(7)}`),
        }]);
        assert.deepEqual(JSON.parse(await tarCat(out, "oci-layout")), {
          imageLayoutVersion: "1.0.0",
        });

        r = await d.cli(["images", "rm", "--sync", ref]);
        assert.equal(r.code, 0, r.stderr);
        assert.deepEqual(await contentDigests(d), []);

        r = await d.cli(["images", "import", ...noUnpack, out]);
        assert.equal(r.code, 0, r.stderr);
        if (unpack) assert.equal(r.stdout, `unpacking ${ref} (${image.root.desc.digest})...done\n`);
        const c2 = d.client();
        try {
          assert.equal((await getImage(c2, ref)).target.digest, image.root.desc.digest);
        } finally {
          c2.close();
        }
        // The archive's index.json was written under the import's lease and nothing holds it
        // now: as in containerd, it stays until the collector's next run.
        await waitFor(async () => {
          const now = await contentDigests(d);
          return JSON.stringify(now) === JSON.stringify(before);
        }, "the collector to drop the archive's index").catch(async (err) => {
          assert.deepEqual(await contentDigests(d), before);
          throw err;
        });
        if (unpack) {
          r = await d.cli(["run", "--rm", ref, "x", "cat", "/etc/motd"]);
          assert.equal(r.code, 0, r.stderr);
          assert.equal(r.stdout, "welcome to tainerd\n");
        }

        // From stdin, with the whole index named too.
        r = await d.cli([
          "-n",
          "stdin",
          "images",
          "import",
          "--no-unpack",
          "--index-name",
          "whole:1",
          "-",
        ], {
          stdin: await Deno.readFile(out),
        });
        assert.equal(r.code, 0, r.stderr);
        r = await d.cli(["-n", "stdin", "images", "ls", "-q"]);
        assert.deepEqual(r.stdout.trim().split("\n").sort(), [ref, "whole:1"].sort());

        // The real ctr imports tainerd's archive...
        r = await d.ctr(["images", "import", "--no-unpack", out], { namespace: "ctr" });
        assert.equal(r.code, 0, r.stderr);
        r = await d.ctr(["images", "ls"], { namespace: "ctr" });
        assert.match(r.stdout, new RegExp(`${image.root.desc.digest}`));
        // ...and tainerd imports ctr's.
        const ctrOut = `${tmp}/ctr.tar`;
        r = await d.ctr(["images", "export", ctrOut, ref]);
        assert.equal(r.code, 0, r.stderr);
        r = await d.cli(["-n", "fromctr", "images", "import", "--no-unpack", ctrOut]);
        assert.equal(r.code, 0, r.stderr);
        r = await d.cli(["-n", "fromctr", "images", "ls"]);
        assert.match(
          r.stdout,
          new RegExp(`${ref.replace(/\./g, "\\.")}\\s+\\S+\\s+${image.root.desc.digest}`),
        );
        // Byte for byte the same archive as ctr's.
        assert.deepEqual(await Deno.readFile(ctrOut), await Deno.readFile(out));
      } finally {
        await Deno.remove(tmp, { recursive: true });
      }
    })
  ));

async function dockerSaveTarball(
  dir: string,
  config: Uint8Array,
  configDigest: string,
  layers: Uint8Array[],
  tags: string[],
): Promise<string> {
  const root = `${dir}/save`;
  await Deno.mkdir(root, { recursive: true });
  const layerPaths: string[] = [];
  for (const [i, layer] of layers.entries()) {
    const id = `${String(i).padStart(2, "0")}${"ab".repeat(31)}`;
    await Deno.mkdir(`${root}/${id}`);
    await Deno.writeFile(`${root}/${id}/layer.tar`, layer);
    await Deno.writeTextFile(`${root}/${id}/VERSION`, "1.0");
    await Deno.writeTextFile(`${root}/${id}/json`, JSON.stringify({ id }));
    layerPaths.push(`${id}/layer.tar`);
  }
  await Deno.writeFile(`${root}/${configDigest.slice(7)}.json`, config);
  await Deno.writeTextFile(
    `${root}/manifest.json`,
    JSON.stringify([{
      Config: `${configDigest.slice(7)}.json`,
      RepoTags: tags,
      Layers: layerPaths,
    }]),
  );
  await Deno.writeTextFile(`${root}/repositories`, JSON.stringify({ dsave: { "1": "x" } }));
  const file = `${dir}/save.tar`;
  const r = await run("tar", ["-C", root, "-cf", file, "."]);
  assert.equal(r.code, 0, r.stderr);
  return file;
}

Deno.test("docker save tarballs and skopeo OCI archives import", () =>
  withRegistryImage(({ ref, image }) =>
    withDaemon(async (d) => {
      const tmp = await Deno.makeTempDir({ prefix: "tainerd-dsave-" });
      try {
        const c = d.client();
        const unpack = await canUnpack(c);
        c.close();
        const tars = image.layers.map((l) => new Uint8Array(gunzipSync(l.bytes)));
        const file = await dockerSaveTarball(
          tmp,
          image.config.bytes,
          image.config.desc.digest,
          tars,
          ["dsave:1", "example.com/team/dsave:latest"],
        );
        let r = await d.cli(["images", "import", ...(unpack ? [] : ["--no-unpack"]), file]);
        assert.equal(r.code, 0, r.stderr);
        r = await d.cli(["images", "ls"]);
        assert.match(
          r.stdout,
          /docker\.io\/library\/dsave:1\s+application\/vnd\.docker\.distribution\.manifest\.v2\+json\s+sha256:[0-9a-f]{64}\s+\S+ \S+\s+linux\/\w+/,
        );
        assert.match(r.stdout, /example\.com\/team\/dsave:latest\s+/);
        const c2 = d.client();
        try {
          const img = await getImage(c2, "docker.io/library/dsave:1");
          const { readBlob } = await import("../client/images_content.ts");
          const manifest = JSON.parse(new TextDecoder().decode(await readBlob(c2, img.target)));
          assert.equal(manifest.config.digest, image.config.desc.digest);
          assert.equal(
            manifest.layers[0].mediaType,
            "application/vnd.docker.image.rootfs.diff.tar",
          );
          assert.equal(manifest.layers[0].digest, image.diffIds[0]);
        } finally {
          c2.close();
        }
        if (unpack) {
          r = await d.cli(["run", "--rm", "dsave:1", "x", "cat", "/etc/motd"]);
          assert.equal(r.code, 0, r.stderr);
          assert.equal(r.stdout, "welcome to tainerd\n");
        }
        // Not an archive at all.
        await Deno.writeTextFile(`${tmp}/junk.tar`, "");
        r = await d.cli(["images", "import", "--no-unpack", `${tmp}/junk.tar`]);
        assert.equal(r.code, 1);
        assert.match(r.stderr, /unrecognized image format/);

        if (have("skopeo")) {
          const archive = `${tmp}/skopeo.tar`;
          r = await run("skopeo", [
            "copy",
            "--src-tls-verify=false",
            `docker://${ref}`,
            `oci-archive:${archive}:v1`,
          ], { env: { HOME: tmp } });
          assert.equal(r.code, 0, r.stderr);
          r = await d.cli(["-n", "sk", "images", "import", "--no-unpack", archive]);
          assert.equal(r.code, 0, r.stderr);
          r = await d.cli(["-n", "sk", "images", "ls", "-q"]);
          assert.match(r.stdout, /^import-\d{4}-\d{2}-\d{2}:v1\n$/);
          r = await d.cli([
            "-n",
            "sk2",
            "images",
            "import",
            "--no-unpack",
            "--base-name",
            "example.com/bb",
            archive,
          ]);
          assert.equal(r.code, 0, r.stderr);
          r = await d.cli(["-n", "sk2", "images", "ls", "-q"]);
          assert.equal(r.stdout, "example.com/bb:v1\n");
        }
      } finally {
        await Deno.remove(tmp, { recursive: true });
      }
    })
  ));
