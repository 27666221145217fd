/**
 * The CRI image service against a real daemon and a real loopback registry: pull (three
 * records, unpacked), list grouping, status by every reference form, verbose info, remove
 * (idempotent, content and snapshots collected), errors, htpasswd auth, ImageFsInfo, and the
 * service over gRPC through the API server's edge.
 *
 * @module
 */

import assert from "node:assert/strict";
import { join } from "node:path";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import {
  type AuthConfig,
  AuthConfigSchema,
  ImageFsInfoRequestSchema,
  ImageService,
  ImageStatusRequestSchema,
  ListImagesRequestSchema,
  PullImageRequestSchema,
  RemoveImageRequestSchema,
} from "../../../api/gen/runtime/v1/api_pb.ts";
import { TainerdClient } from "../../../client/client.ts";
import { listImages, tagImage } from "../../../client/images.ts";
import { contentInfo } from "../../../client/images_content.ts";
import { chainId } from "../../../images/image.ts";
import { isUnpacked } from "../../../images/unpack.ts";
import { Snapshots } from "../../../api/gen/containerd/services/snapshots/v1/snapshots_pb.ts";
import {
  buildBusyboxImage,
  canUnpack,
  withRegistryImage,
} from "../../../images/testdata/busybox_image.ts";
import type { Descriptor } from "../../../images/remote/descriptor.ts";
import { Resolver } from "../../../images/remote/resolver.ts";
import { staticCredentials } from "../../../images/remote/auth.ts";
import { startRegistry } from "../../../images/remote/testdata/registry.ts";
import { Logger } from "../../../log.ts";
import { ApiServer } from "../../../server/server.ts";
import { type TestDaemon, waitFor, withDaemon } from "../../../tests/harness.ts";
import { TainerdError } from "../../errdefs.ts";
import { credentialsOf, serverHost } from "./auth.ts";
import { diskUsage } from "./fs_usage.ts";
import { CriImageService, IMAGE_LABEL_KEY, IMAGE_LABEL_MANAGED } from "./service.ts";

const NS = "k8s.io";

function service(d: TestDaemon, client: TainerdClient, pinned: string[] = []) {
  return new CriImageService({
    client,
    snapshotter: "overlayfs",
    registryConfigPath: "",
    snapshotterRoot: join(d.root, "io.containerd.snapshotter.v1.overlayfs"),
    pinned: () => pinned,
  });
}

const pullReq = (image: string, auth?: AuthConfig) =>
  create(PullImageRequestSchema, { image: { image }, auth });
const statusReq = (image: string, verbose = false) =>
  create(ImageStatusRequestSchema, { image: { image }, verbose });
const removeReq = (image: string) => create(RemoveImageRequestSchema, { image: { image } });

function isKind(kind: string, re?: RegExp) {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `not a TainerdError: ${err}`);
    assert.equal(err.kind, kind, err.message);
    if (re) assert.match(err.message, re);
    return true;
  };
}

async function contentGone(client: TainerdClient, digests: string[]) {
  await waitFor(
    async () => {
      for (const d of digests) if (await contentInfo(client, d)) return false;
      return true;
    },
    `content ${digests.join(", ")} to be collected`,
    60_000,
  );
}

/** Runs `fn` with a daemon, its k8s.io client and the service; skips without unpack support. */
function withService(
  fn: (d: TestDaemon, client: TainerdClient) => Promise<void>,
): () => Promise<void> {
  return () =>
    withDaemon(async (d) => {
      const client = d.client(NS);
      try {
        if (!(await canUnpack(client))) {
          console.warn("skipped: the daemon cannot unpack images here");
          return;
        }
        await fn(d, client);
      } finally {
        client.close();
      }
    });
}

Deno.test(
  "CRI images: pull, list, status, remove against a real daemon and registry",
  withService(async (d, client) => {
    await withRegistryImage(async ({ registry, image, ref }) => {
      const repo = `${registry.host}/test/busybox`;
      const svc = service(d, client, [ref]);
      const id = image.config.desc.digest;
      const hex = id.slice("sha256:".length);
      const chain = chainId(image.diffIds);

      // Pull: the answer is the id; three managed records point at the index; unpacked.
      const { imageRef } = await svc.pullImage(pullReq(ref));
      assert.equal(imageRef, id);
      const repoDigest = `${repo}@${image.root.desc.digest}`;
      const records = await listImages(client);
      assert.deepEqual(records.map((r) => r.name).sort(), [ref, repoDigest, id].sort());
      for (const r of records) {
        assert.equal(r.labels[IMAGE_LABEL_KEY], IMAGE_LABEL_MANAGED, r.name);
        assert.equal(r.target.digest, image.root.desc.digest, r.name);
      }
      assert.ok(await isUnpacked(client, records[0].target, { snapshotter: "overlayfs" }));

      // Another tag of the same image: still one image, two tags.
      const other = `${registry.host}/test/other:2`;
      await tagImage(client, ref, other);
      let { images } = await svc.listImages(create(ListImagesRequestSchema, {}));
      assert.equal(images.length, 1);
      const img = images[0];
      assert.equal(img.id, id);
      assert.deepEqual(img.repoTags, [ref, other].sort());
      assert.deepEqual(img.repoDigests, [repoDigest]);
      const expectedSize = image.layers.reduce((n, l) => n + l.desc.size, 0) +
        image.config.desc.size + image.manifest.desc.size + image.root.desc.size;
      assert.equal(img.size, BigInt(expectedSize));
      assert.equal(img.uid, undefined);
      assert.equal(img.username, "");
      assert.equal(img.pinned, true);

      // Filtered listing.
      ({ images } = await svc.listImages(
        create(ListImagesRequestSchema, { filter: { image: { image: other } } }),
      ));
      assert.deepEqual(images.map((i) => i.id), [id]);
      ({ images } = await svc.listImages(
        create(ListImagesRequestSchema, { filter: { image: { image: "nothing/here:1" } } }),
      ));
      assert.equal(images.length, 0);

      // Status by every form of reference.
      for (
        const form of [
          ref,
          other,
          repoDigest,
          id,
          hex,
          hex.slice(0, 12),
          `sha256:${hex.slice(0, 8)}`,
        ]
      ) {
        const st = await svc.imageStatus(statusReq(form));
        assert.equal(st.image?.id, id, form);
        assert.deepEqual(st.info, {}, form);
      }
      for (const missing of [`${registry.host}/test/missing:1`, "busybox", "0123456789ab", ""]) {
        const st = await svc.imageStatus(statusReq(missing));
        assert.equal(st.image, undefined, missing);
      }
      const verbose = await svc.imageStatus(statusReq(ref, true));
      const info = JSON.parse(verbose.info.info);
      assert.equal(info.chainID, chain);
      assert.deepEqual(info.imageSpec.rootfs.diff_ids, image.diffIds);
      assert.deepEqual(info.imageSpec.config.Cmd, ["/bin/sh"]);

      // resolve() and ensure() for the runtime side.
      const resolved = await svc.resolve(hex.slice(0, 10));
      assert.ok(resolved);
      assert.equal(resolved.id, id);
      assert.equal(resolved.chainId, chain);
      assert.equal(resolved.name, ref);
      assert.equal(resolved.target.digest, image.root.desc.digest);
      assert.equal(resolved.manifest.digest, image.manifest.desc.digest);
      assert.deepEqual(resolved.config.rootfs?.diff_ids, image.diffIds);
      assert.equal((await svc.ensure(ref)).id, id);

      // ImageFsInfo: the snapshotter directory holds the unpacked layer.
      const fs = await svc.imageFsInfo(create(ImageFsInfoRequestSchema, {}));
      assert.equal(fs.imageFilesystems.length, 1);
      assert.equal(fs.containerFilesystems.length, 1);
      const usage = fs.imageFilesystems[0];
      assert.equal(usage.fsId?.mountpoint, join(d.root, "io.containerd.snapshotter.v1.overlayfs"));
      assert.ok((usage.usedBytes?.value ?? 0n) > 100_000n, `used ${usage.usedBytes?.value}`);
      assert.ok((usage.inodesUsed?.value ?? 0n) > 10n, `inodes ${usage.inodesUsed?.value}`);
      assert.ok(usage.timestamp > BigInt(Date.now() - 60_000) * 1_000_000n);

      // Remove by short id: every record goes, then content and snapshots.
      await svc.removeImage(removeReq(hex.slice(0, 12)));
      assert.deepEqual(await listImages(client), []);
      assert.equal((await svc.imageStatus(statusReq(ref))).image, undefined);
      await contentGone(
        client,
        [...image.layers, image.config, image.manifest, image.root]
          .map((b) => b.desc.digest),
      );
      // No snapshot of the image is left.
      const sn = client.service(Snapshots);
      await waitFor(
        async () => {
          const keys: string[] = [];
          for await (const r of sn.list({ snapshotter: "overlayfs", filters: [] })) {
            keys.push(...r.info.map((i) => i.name));
          }
          return !keys.includes(chain);
        },
        "the image's snapshots to be removed",
        60_000,
      );
      // Idempotent.
      await svc.removeImage(removeReq(hex.slice(0, 12)));
      await svc.removeImage(removeReq(ref));

      // ensure() pulls a missing image; removal by tag removes it again.
      const ensured = await svc.ensure(ref);
      assert.equal(ensured.id, id);
      assert.equal((await listImages(client)).length, 3);
      await svc.removeImage(removeReq(ref));
      assert.deepEqual(await listImages(client), []);
    });
  }),
);

Deno.test(
  "CRI images: a missing image is NotFound, a malformed reference InvalidArgument",
  withService(async (d, client) => {
    await withRegistryImage(async ({ registry }) => {
      const svc = service(d, client);
      await assert.rejects(
        svc.pullImage(pullReq(`${registry.host}/test/missing:1`)),
        isKind("NotFound", /missing/),
      );
      await assert.rejects(svc.pullImage(pullReq("UPPER/Case:1")), isKind("InvalidArgument"));
      await assert.rejects(svc.pullImage(pullReq("a:b:c")), isKind("InvalidArgument"));
      await assert.rejects(svc.pullImage(pullReq("")), isKind("InvalidArgument"));
      assert.deepEqual(await listImages(client), []);
    }, { single: true });
  }),
);

async function htpasswd(path: string, user: string, password: string): Promise<void> {
  const out = await new Deno.Command("htpasswd", {
    args: ["-Bbn", user, password],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(new TextDecoder().decode(out.stderr));
  await Deno.writeFile(path, out.stdout);
}

function haveHtpasswd(): boolean {
  try {
    return new Deno.Command("htpasswd", { args: ["-h"], stdout: "null", stderr: "null" })
      .outputSync().code !== 127;
  } catch {
    return false;
  }
}

Deno.test({
  name: "CRI images: pulls from an htpasswd registry with AuthConfig credentials",
  ignore: !haveHtpasswd(),
  fn: withService(async (d, client) => {
    const dir = await Deno.makeTempDir({ prefix: "tainerd-cri-auth-" });
    try {
      await htpasswd(join(dir, "htpasswd"), "alice", "s3cret:pass");
      const registry = await startRegistry({ htpasswd: join(dir, "htpasswd") });
      try {
        const image = await buildBusyboxImage({ single: true });
        const ref = `${registry.host}/private/app:v1`;
        const pusher = new Resolver({
          credentials: staticCredentials({ username: "alice", secret: "s3cret:pass" }),
        });
        try {
          const p = await pusher.pusher(ref);
          for (const b of image.blobs) {
            const desc: Descriptor = { ...b.desc };
            await p.push(desc, b.bytes, { tag: b === image.root ? true : undefined });
          }
        } finally {
          pusher.close();
        }
        const svc = service(d, client);
        const id = image.config.desc.digest;

        await assert.rejects(svc.pullImage(pullReq(ref)), isKind("PermissionDenied"));
        await assert.rejects(
          svc.pullImage(
            pullReq(ref, create(AuthConfigSchema, { username: "alice", password: "x" })),
          ),
          isKind("PermissionDenied"),
        );
        // Credentials for another registry are not sent.
        await assert.rejects(
          svc.pullImage(pullReq(
            ref,
            create(AuthConfigSchema, {
              username: "alice",
              password: "s3cret:pass",
              serverAddress: "https://registry.example.com/v1/",
            }),
          )),
          isKind("PermissionDenied"),
        );

        const user = create(AuthConfigSchema, {
          username: "alice",
          password: "s3cret:pass",
          serverAddress: registry.host,
        });
        assert.equal((await svc.pullImage(pullReq(ref, user))).imageRef, id);
        await svc.removeImage(removeReq(id));
        assert.deepEqual(await listImages(client), []);

        const encoded = create(AuthConfigSchema, { auth: btoa("alice:s3cret:pass") });
        assert.equal((await svc.pullImage(pullReq(ref, encoded))).imageRef, id);
        assert.equal((await svc.imageStatus(statusReq(ref))).image?.id, id);
        await svc.removeImage(removeReq(ref));
        assert.deepEqual(await listImages(client), []);
      } finally {
        await registry.stop();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }),
});

Deno.test(
  "CRI images: served over gRPC through the API edge (errors classified, NotFound status empty)",
  withService(async (d, client) => {
    await withRegistryImage(async ({ image, ref }) => {
      const svc = service(d, client);
      const address = join(d.dir, "cri-images.sock");
      const server = await ApiServer.listen({
        address,
        uid: 0,
        gid: 0,
        maxRecvMessageSize: 16 << 20,
        maxSendMessageSize: 16 << 20,
        services: [svc],
        log: new Logger("error"),
      });
      const conn = new TainerdClient({ address });
      try {
        const cri = conn.service(ImageService);
        const { imageRef } = await cri.pullImage({ image: { image: ref } });
        assert.equal(imageRef, image.config.desc.digest);
        const { images } = await cri.listImages({});
        assert.deepEqual(images.map((i) => i.id), [imageRef]);
        const st = await cri.imageStatus({ image: { image: "not/there:1" } });
        assert.equal(st.image, undefined);
        const chunks = [];
        for await (const c of cri.streamImages({})) chunks.push(...c.images.map((i) => i.id));
        assert.deepEqual(chunks, [imageRef]);
        await assert.rejects(
          cri.pullImage({ image: { image: "Bad:Ref:x" } }),
          isKind("InvalidArgument"),
        );
        const fs = await cri.imageFsInfo({});
        assert.ok((fs.imageFilesystems[0].usedBytes?.value ?? 0n) > 0n);
        await cri.removeImage({ image: { image: imageRef } });
        await cri.removeImage({ image: { image: imageRef } });
        assert.deepEqual((await cri.listImages({})).images, []);
      } finally {
        conn.close();
        await server.close();
      }
    });
  }),
);

Deno.test(
  "CRI images: the hosts directory maps a registry name to the loopback registry",
  withService(async (d, client) => {
    await withRegistryImage(async ({ registry, image }) => {
      const hostsDir = join(d.dir, "certs.d");
      await Deno.mkdir(join(hostsDir, "registry.test"), { recursive: true });
      await Deno.writeTextFile(
        join(hostsDir, "registry.test", "hosts.toml"),
        `server = "http://${registry.host}"\n`,
      );
      const svc = new CriImageService({
        client,
        snapshotter: "overlayfs",
        registryConfigPath: hostsDir,
        snapshotterRoot: join(d.root, "io.containerd.snapshotter.v1.overlayfs"),
      });
      const id = image.config.desc.digest;
      assert.equal((await svc.pullImage(pullReq("registry.test/test/busybox:1"))).imageRef, id);
      const st = await svc.imageStatus(statusReq("registry.test/test/busybox:1"));
      assert.deepEqual(st.image?.repoTags, ["registry.test/test/busybox:1"]);
      assert.deepEqual(st.image?.repoDigests, [
        `registry.test/test/busybox@${image.root.desc.digest}`,
      ]);
      await svc.removeImage(removeReq(id));
      assert.deepEqual(await listImages(client), []);
    }, { single: true });
  }),
);

Deno.test("AuthConfig credentials: user/password, identity token, base64 auth", () => {
  const auth = (init: MessageInitShape<typeof AuthConfigSchema>) => create(AuthConfigSchema, init);
  assert.equal(credentialsOf(undefined), undefined);
  assert.equal(credentialsOf(auth({})), undefined);
  assert.deepEqual(credentialsOf(auth({ username: "u", password: "p" })), {
    username: "u",
    secret: "p",
  });
  assert.deepEqual(credentialsOf(auth({ identityToken: "tok" })), { username: "", secret: "tok" });
  assert.deepEqual(credentialsOf(auth({ auth: btoa("u:p:q") })), { username: "u", secret: "p:q" });
  assert.throws(() => credentialsOf(auth({ auth: "%%%" })), isKind("InvalidArgument"));
  assert.throws(() => credentialsOf(auth({ auth: btoa("nocolon") })), isKind("InvalidArgument"));
  assert.throws(() => credentialsOf(auth({ registryToken: "x" })), isKind("InvalidArgument"));
  assert.equal(serverHost("https://index.docker.io/v1/"), "index.docker.io");
  assert.equal(serverHost("127.0.0.1:5000"), "127.0.0.1:5000");
});

Deno.test("diskUsage counts blocks and inodes once per hard link", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-du-" });
  try {
    assert.deepEqual(
      { ...(await diskUsage(join(dir, "missing"))), at: 0 },
      { bytes: 0, inodes: 0, at: 0 },
    );
    await Deno.mkdir(join(dir, "a/b"), { recursive: true });
    await Deno.writeFile(join(dir, "a/b/f"), new Uint8Array(100_000).fill(7));
    await Deno.link(join(dir, "a/b/f"), join(dir, "a/g"));
    await Deno.symlink("b/f", join(dir, "a/s"));
    const u = await diskUsage(dir);
    assert.equal(u.inodes, 5); // dir, a, b, f (= g), s
    assert.ok(u.bytes >= 100_000, String(u.bytes));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
