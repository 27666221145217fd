/**
 * The content store end to end: the real ctr (and our client, for what ctr cannot send)
 * against a real daemon.
 */

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { join, relative } from "node:path";
import { readContent, RemoteWriter } from "../client/content.ts";
import { type ErrorKind, TainerdError } from "../plugins/errdefs.ts";
import { curlJson, delay, type TestDaemon, withDaemon } from "./harness.ts";

const CONTENT = "root/io.containerd.content.v1.content";

function sha256(data: Uint8Array): string {
  return `sha256:${createHash("sha256").update(data).digest("hex")}`;
}

function kind(expected: ErrorKind, message?: RegExp): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof TainerdError, `expected a TainerdError, got ${err}`);
    assert.equal(err.kind, expected, `wrong kind for: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  };
}

/** Runs ctr with stdin from a file (seekable, as a shell redirect gives it). */
async function ctrFromFile(d: TestDaemon, args: string[], file: string, namespace = "default") {
  const quoted = ["ctr", "-a", d.address, "-n", namespace, ...args].map((a) =>
    `'${a.replaceAll("'", `'\\''`)}'`
  ).join(" ");
  const out = await new Deno.Command("sh", {
    args: ["-c", `${quoted} < '${file}'`],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs ctr and returns its raw stdout bytes. */
async function ctrBytes(d: TestDaemon, args: string[], namespace = "default") {
  const out = await new Deno.Command("ctr", {
    args: ["-a", d.address, "-n", namespace, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stdout: out.stdout, stderr: new TextDecoder().decode(out.stderr) };
}

/** Every file under `dir`, relative to it. */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function visit(d: string) {
    for await (const e of Deno.readDir(d)) {
      const p = join(d, e.name);
      out.push(relative(dir, p));
      if (e.isDirectory) await visit(p);
    }
  }
  await visit(dir);
  return out.sort();
}

/** Asserts every blob under blobs/ hashes to its name, and returns their digests. */
async function checkBlobs(d: TestDaemon): Promise<string[]> {
  const dir = join(d.dir, CONTENT, "blobs", "sha256");
  const digests: string[] = [];
  try {
    for await (const e of Deno.readDir(dir)) {
      const data = await Deno.readFile(join(dir, e.name));
      assert.equal(sha256(data), `sha256:${e.name}`, `blob ${e.name} does not match its digest`);
      digests.push(`sha256:${e.name}`);
    }
  } catch (err) {
    if (!(err instanceof Deno.errors.NotFound)) throw err;
  }
  return digests.sort();
}

async function waitFor(what: string, check: () => Promise<boolean>, ms = 10_000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await delay(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

/**
 * A daemon whose startup garbage collection is done: content ingested without a lease or a
 * root label is unreferenced and would be swept by it, as containerd does.
 */
function withContentDaemon(fn: (d: TestDaemon) => Promise<void>): Promise<void> {
  return withDaemon(async (d) => {
    await waitFor(
      "the startup garbage collection",
      async () => (await d.log()).includes("garbage collected"),
    );
    await fn(d);
  });
}

async function writeFile(d: TestDaemon, name: string, data: Uint8Array): Promise<string> {
  const path = join(d.dir, name);
  await Deno.writeFile(path, data);
  return path;
}

Deno.test("ctr content ingest with the expected digest, then ctr content get returns the bytes", () =>
  withContentDaemon(async (d) => {
    const data = new Uint8Array(randomBytes(3 * 1024 * 1024 + 17));
    const digest = sha256(data);
    let r = await d.ctr([
      "content",
      "ingest",
      "--expected-digest",
      digest,
      "--expected-size",
      String(data.byteLength),
      "my-ref",
    ], { stdin: data });
    assert.equal(r.code, 0, r.stderr);
    const got = await ctrBytes(d, ["content", "get", digest]);
    assert.equal(got.code, 0, got.stderr);
    assert.equal(got.stdout.byteLength, data.byteLength);
    assert.equal(sha256(got.stdout), digest);
    // Ingesting it again is a no-op (ctr treats AlreadyExists as success, reading nothing).
    const file = await writeFile(d, "blob", data);
    r = await ctrFromFile(d, ["content", "ingest", "--expected-digest", digest, "again"], file);
    assert.equal(r.code, 0, r.stderr);
    // Without any expectation the digest is computed.
    const small = new TextEncoder().encode("hello, content\n");
    r = await d.ctr(["content", "ingest", "plain"], { stdin: small });
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["content", "ls", "-q"]);
    assert.deepEqual(r.stdout.trim().split("\n").sort(), [digest, sha256(small)].sort());
    // Our CLI reads the same bytes.
    const cli = await new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts", "-a", d.address, "content", "get", digest],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(sha256(cli.stdout), digest, new TextDecoder().decode(cli.stderr));
    assert.deepEqual(await checkBlobs(d), [digest, sha256(small)].sort());
  }));

Deno.test("ctr content ls, label and rm; unreferenced blobs are collected", () =>
  withContentDaemon(async (d) => {
    const keep = new TextEncoder().encode("keep me");
    const drop = new TextEncoder().encode("drop me");
    const stray = new TextEncoder().encode("nobody holds me");
    for (const [ref, data] of [["k", keep], ["d", drop], ["s", stray]] as const) {
      const r = await d.ctr(["content", "ingest", ref], { stdin: data });
      assert.equal(r.code, 0, r.stderr);
    }
    let r = await d.ctr(["content", "label", sha256(keep), "containerd.io/gc.root=yes", "a=b"]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(r.stdout.trim().split(",").sort(), ["a=b", "containerd.io/gc.root=yes"]);
    r = await d.ctr(["content", "label", sha256(keep), "a="]);
    assert.equal(r.stdout.trim(), "containerd.io/gc.root=yes");
    r = await d.ctr(["content", "ls"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^DIGEST\s+SIZE\s+AGE\s+LABELS/);
    assert.match(
      r.stdout,
      new RegExp(`${sha256(keep)}\\s+7B\\s+.+\\s+containerd.io/gc.root=yes\\n`),
    );
    assert.match(r.stdout, new RegExp(`${sha256(drop)}\\s+7B\\s+.+\\s+-\\n`));
    r = await d.ctr(["content", "ls", "-q", 'labels."containerd.io/gc.root"==yes']);
    assert.equal(r.stdout.trim(), sha256(keep));

    r = await d.ctr(["content", "rm", sha256(drop), sha256(drop)]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), sha256(drop), "a second delete is quietly skipped");
    // The deletion schedules a collection: the stray blob (no root, no lease) goes too.
    await waitFor("the collection", async () => (await checkBlobs(d)).length === 1);
    assert.deepEqual(await checkBlobs(d), [sha256(keep)]);
    r = await d.ctr(["content", "ls", "-q"]);
    assert.equal(r.stdout.trim(), sha256(keep));
    r = await d.ctr(["content", "get", sha256(drop)]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);
  }));

Deno.test("ctr content active shows a slow ingest while it runs", () =>
  withContentDaemon(async (d) => {
    const data = new Uint8Array(randomBytes(3 * 1024 * 1024));
    const digest = sha256(data);
    const child = new Deno.Command("ctr", {
      args: [
        "-a",
        d.address,
        "-n",
        "default",
        "content",
        "ingest",
        "--expected-digest",
        digest,
        "--expected-size",
        String(data.byteLength),
        "slow-ref",
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = child.stdin.getWriter();
    try {
      // ctr sends data in 1 MiB blocks: give it a bit more than one block, then stall.
      await writer.write(data.subarray(0, 1024 * 1024 + 100));
      let seen = "";
      await waitFor("the ingest to show in ctr content active", async () => {
        const r = await d.ctr(["content", "active"]);
        seen = r.stdout;
        return /^slow-ref\s+1\.049MB\s+/m.test(r.stdout);
      });
      assert.match(seen, /^REF\s+SIZE\s+AGE/);
      const r = await d.ctr(["content", "active", "ref==slow-ref"]);
      assert.match(r.stdout, /^slow-ref\s/m);
      assert.doesNotMatch((await d.ctr(["content", "active", "ref==other"])).stdout, /slow-ref/);
      // Our API sees it too, and the blob is not visible before the commit.
      const c = d.client();
      try {
        const st = await c.content.status({ ref: "slow-ref" });
        assert.equal(st.status?.offset, 1048576n);
        assert.equal(st.status?.total, BigInt(data.byteLength));
        await assert.rejects(() => c.content.info({ digest }), kind("NotFound"));
      } finally {
        c.close();
      }
      await writer.write(data.subarray(1024 * 1024 + 100));
    } finally {
      await writer.close();
    }
    const out = await child.output();
    assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
    assert.match((await d.ctr(["content", "active"])).stdout, /^REF\s+SIZE\s+AGE\s*$/);
    assert.equal(sha256((await ctrBytes(d, ["content", "get", digest])).stdout), digest);
  }));

Deno.test("content is per namespace; another namespace gets a shared blob without sending it", () =>
  withContentDaemon(async (d) => {
    const data = new Uint8Array(randomBytes(256 * 1024));
    const digest = sha256(data);
    const file = await writeFile(d, "blob", data);
    let r = await ctrFromFile(d, ["content", "ingest", "--expected-digest", digest, "a"], file);
    assert.equal(r.code, 0, r.stderr);
    r = await d.ctr(["content", "get", digest], { namespace: "other" });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /not found/);
    assert.equal((await d.ctr(["content", "ls", "-q"], { namespace: "other" })).stdout, "");
    // The namespace "other" commits the blob the store already has: the writer reports the
    // whole size at once (ctr seeks its stdin past it).
    r = await ctrFromFile(
      d,
      ["content", "ingest", "--expected-digest", digest, "b"],
      file,
      "other",
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(
      sha256((await ctrBytes(d, ["content", "get", digest], "other")).stdout),
      digest,
    );
    r = await d.ctr(["namespaces", "ls", "-q"]);
    assert.deepEqual(r.stdout.trim().split("\n"), ["default", "other"]);
    assert.deepEqual(await checkBlobs(d), [digest]);
  }));

Deno.test("bad ingests are refused with clear errors and leave nothing visible", () =>
  withContentDaemon(async (d) => {
    const data = new TextEncoder().encode("twenty bytes of data");
    // Wrong digest.
    let r = await d.ctr(
      ["content", "ingest", "--expected-digest", sha256(new Uint8Array(1)), "wrong-digest"],
      { stdin: data },
    );
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /expected digest sha256:[0-9a-f]+ but got sha256:[0-9a-f]+/);
    assert.match(r.stderr, /"wrong-digest" in namespace "default"/);
    // Wrong size (more data than declared).
    r = await d.ctr(["content", "ingest", "--expected-size", "10", "wrong-size"], {
      stdin: data,
    });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /expected size 10 but got 20/);
    // Unknown algorithm: ctr refuses it itself; through the API it is InvalidArgument.
    r = await d.ctr(["content", "get", "md5:d41d8cd98f00b204e9800998ecf8427e"]);
    assert.notEqual(r.code, 0);
    assert.equal((await d.ctr(["content", "ls", "-q"])).stdout, "");
    assert.deepEqual(await checkBlobs(d), []);

    const c = d.client();
    try {
      await assert.rejects(
        () => c.content.info({ digest: "md5:d41d8cd98f00b204e9800998ecf8427e" }),
        kind("InvalidArgument", /unsupported algorithm "md5"/),
      );
      await assert.rejects(
        () => RemoteWriter.open(c, "r", { expected: "sha384:" + "a".repeat(96) }),
        kind("InvalidArgument"),
      );
      // A write at an offset past the data is OutOfRange; the ingest keeps its data.
      const w = await RemoteWriter.open(c, "offsets");
      await w.write(data);
      await assert.rejects(
        () => w.write(data, 100),
        kind("OutOfRange", /offset 100 .* current offset 20/),
      );
      assert.equal((await c.content.status({ ref: "offsets" })).status?.offset, 20n);
      // A write at offset 0 starts over; at the current offset it appends.
      const w2 = await RemoteWriter.open(c, "offsets");
      assert.equal(w2.offset, 20);
      assert.equal(await w2.write(data.subarray(0, 5), 0), 5);
      assert.equal(await w2.write(data.subarray(5), 5), 20);
      assert.equal(await w2.commit(20, sha256(data)), sha256(data));
      // Commit with the wrong size through the API.
      const w3 = await RemoteWriter.open(c, "short");
      await w3.write(data);
      await assert.rejects(() => w3.commit(21), kind("FailedPrecondition"));
      // No ref.
      await assert.rejects(() => RemoteWriter.open(c, ""), kind("InvalidArgument", /ref/));
      // Read past the end.
      await assert.rejects(
        async () => {
          for await (const _ of readContent(c, sha256(data), { offset: 21 })) { /* none */ }
        },
        kind("OutOfRange"),
      );
      const tail: Uint8Array[] = [];
      for await (const chunk of readContent(c, sha256(data), { offset: 15, size: 3 })) {
        tail.push(chunk);
      }
      assert.equal(new TextDecoder().decode(tail[0]), " da");
    } finally {
      c.close();
    }
    // Connect JSON through curl: a clear code and message for a bad digest.
    const res = await curlJson(
      d.address,
      "/containerd.services.content.v1.Content/Info",
      JSON.stringify({ digest: "sha256:../../../etc/passwd" }),
      { "containerd-namespace": "default" },
    );
    assert.match(res.stdout, /"code":"invalid_argument"/);
    assert.match(res.stdout, /\n400$/);
  }));

Deno.test("path characters in refs and digests never reach outside the store", () =>
  withContentDaemon(async (d) => {
    const before = await tree(d.dir);
    const data = new TextEncoder().encode("path games");
    const evil = ["../../../../../tmp/tainerd-evil", "/etc/passwd", "a/../../b", "..", "x\ny"];
    for (const ref of evil) {
      const r = await d.ctr(["content", "ingest", ref], { stdin: data });
      assert.equal(r.code, 0, `${ref}: ${r.stderr}`);
    }
    const c = d.client();
    try {
      const w = await RemoteWriter.open(c, "../../../../../tmp/tainerd-evil-2");
      await w.write(data);
      w.close();
      for (
        const digest of [
          "sha256:../../../../etc/passwd",
          "sha256:/etc/passwd",
          `sha256:${"0".repeat(60)}/../`,
          "../sha256:00",
        ]
      ) {
        await assert.rejects(() => c.content.info({ digest }), kind("InvalidArgument"), digest);
        await assert.rejects(() => c.content.delete({ digest }), kind("InvalidArgument"), digest);
        await assert.rejects(async () => {
          for await (const _ of readContent(c, digest)) { /* none */ }
        }, kind("InvalidArgument"));
      }
    } finally {
      c.close();
    }
    await assert.rejects(() => Deno.lstat("/tmp/tainerd-evil"), Deno.errors.NotFound);
    await assert.rejects(() => Deno.lstat("/tmp/tainerd-evil-2"), Deno.errors.NotFound);
    const added = (await tree(d.dir)).filter((p) => !before.includes(p));
    for (const p of added) {
      assert.match(
        p,
        new RegExp(
          `^(${CONTENT}/(blobs/sha256(/[0-9a-f]{64})?|ingest/[0-9a-f]{64}(/[a-z]+(\\.tmp)?)?)|` +
            `root/io\\.containerd\\.metadata\\.v1\\.sqlite/.*|daemon\\.log)$`,
        ),
        p,
      );
    }
    assert.deepEqual(await checkBlobs(d), [sha256(data)]);
  }));

Deno.test("ctr content rm of unknown or invalid digests and Delete over the API", () =>
  withContentDaemon(async (d) => {
    const r = await d.ctr(["content", "rm", `sha256:${"1".repeat(64)}`]);
    assert.equal(r.code, 0, "ctr skips NotFound");
    assert.equal(r.stdout, "");
    const c = d.client();
    try {
      await assert.rejects(
        () => c.content.delete({ digest: `sha256:${"1".repeat(64)}` }),
        kind(
          "NotFound",
          /^Cannot delete content "sha256:1{64}" in namespace "default": not found$/,
        ),
      );
      await assert.rejects(
        () => c.content.abort({ ref: "never" }),
        kind("NotFound", /ingest "never" in namespace "default"/),
      );
      // Without a namespace: FailedPrecondition, as containerd.
      c.namespace = "";
      await assert.rejects(() => c.content.listStatuses({}), kind("FailedPrecondition"));
    } finally {
      c.close();
    }
  }));

Deno.test("our CLI: content ingest, ls, label, active, rm", () =>
  withContentDaemon(async (d) => {
    const data = new Uint8Array(randomBytes(2 * 1024 * 1024 + 5));
    const digest = sha256(data);
    let r = await d.cli(
      [
        "content",
        "ingest",
        "--expected-size",
        String(data.byteLength),
        "--expected-digest",
        digest,
        "cli-ref",
      ],
      { stdin: data },
    );
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(["content", "label", digest, "containerd.io/gc.root=1", "x=y"]);
    assert.equal(r.stdout.trim(), "containerd.io/gc.root=1,x=y");
    r = await d.cli(["content", "ls"]);
    assert.match(
      r.stdout,
      new RegExp(`${digest}\\s+2\\.097MB\\s+\\S.*containerd.io/gc.root=1,x=y`),
    );
    r = await d.cli(["content", "ls", "-q", "labels.x==z"]);
    assert.equal(r.stdout, "");
    // Already there: nothing is read from stdin.
    const file = await writeFile(d, "blob", data);
    const again = await new Deno.Command("sh", {
      args: [
        "-c",
        `"${Deno.execPath()}" run -A main.ts -a "${d.address}" content ingest ` +
        `--expected-digest ${digest} again < "${file}"`,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert.equal(again.code, 0, new TextDecoder().decode(again.stderr));
    r = await d.cli(["content", "ingest", "--expected-digest", sha256(new Uint8Array(2)), "bad"], {
      stdin: data,
    });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /expected digest/);
    r = await d.cli(["content", "active"]);
    assert.match(r.stdout, /^bad\s+2\.097MB\s+/m);
    r = await d.cli(["content", "abort", "bad"]);
    assert.equal(r.code, 0, r.stderr);
    r = await d.cli(["content", "rm", digest]);
    assert.equal(r.stdout.trim(), digest);
    r = await d.cli(["content", "rm", "nonsense"]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /Invalid digest "nonsense"/);
  }));
