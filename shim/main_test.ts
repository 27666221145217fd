import assert from "node:assert/strict";
import { TainerdError } from "../plugins/errdefs.ts";
import { readAddress, socketAddress, socketPath, writeAddress } from "./address.ts";
import { cleanPath as goClean } from "../diff/root_path.ts";
import { decodeRuncOptions, readBundleOptions, writeBundleOptions } from "./container.ts";
import { parseShimFlags } from "./main.ts";
import { create, toBinary } from "@bufbuild/protobuf";
import { OptionsSchema } from "../api/gen/containerd/runtime/v2/runc/options/oci_pb.ts";

Deno.test("parseShimFlags() reads containerd's shim command line", () => {
  const f = parseShimFlags([
    "-namespace",
    "default",
    "-address",
    "/run/containerd/containerd.sock",
    "-publish-binary",
    "/usr/bin/containerd",
    "-id",
    "redis",
    "-debug",
    "start",
  ]);
  assert.equal(f.namespace, "default");
  assert.equal(f.address, "/run/containerd/containerd.sock");
  assert.equal(f.publishBinary, "/usr/bin/containerd");
  assert.equal(f.id, "redis");
  assert.equal(f.debug, true);
  assert.equal(f.action, "start");

  const g = parseShimFlags([
    "--namespace=k8s.io",
    "-id=x",
    "-bundle",
    "/b",
    "-debug=false",
    "delete",
  ]);
  assert.equal(g.namespace, "k8s.io");
  assert.equal(g.id, "x");
  assert.equal(g.bundle, "/b");
  assert.equal(g.debug, false);
  assert.equal(g.action, "delete");

  assert.equal(parseShimFlags(["-namespace", "n", "-socket", "/s"]).action, "");
  assert.equal(parseShimFlags(["-v"]).version, true);
});

Deno.test("parseShimFlags() rejects unknown flags, missing values and actions", () => {
  for (
    const args of [
      ["-nope"],
      ["-namespace"],
      ["-namespace", "n", "restart"],
      ["-debug=maybe"],
    ]
  ) {
    assert.throws(
      () => parseShimFlags(args),
      (e: unknown) => e instanceof TainerdError && e.kind === "InvalidArgument",
      args.join(" "),
    );
  }
});

Deno.test("socketAddress() hashes address, namespace and id as containerd does", () => {
  assert.equal(
    socketAddress("/run/containerd/containerd.sock", "default", "redis", "/run/containerd"),
    "unix:///run/containerd/s/f6b99128c07bdbd0902363ba979c22f8ef053e683a7ce24dd016a1ab17092c33",
  );
  const a = socketAddress("/run/tainerd/tainerd.sock", "default", "redis", "/run/tainerd/");
  assert.match(a, /^unix:\/\/\/run\/tainerd\/s\/[0-9a-f]{64}$/);
  assert.equal(socketPath(a), a.slice("unix://".length));
  assert.notEqual(a, socketAddress("/run/tainerd/tainerd.sock", "other", "redis", "/run/tainerd"));
  assert.throws(
    () => socketAddress("/a", "b", "c", "/" + "x".repeat(60)),
    (e: unknown) => e instanceof TainerdError && e.kind === "InvalidArgument",
  );
});

Deno.test("The bundle's address and options files round-trip", async () => {
  const dir = await Deno.makeTempDir();
  try {
    assert.equal(await readAddress(dir), null);
    await writeAddress(dir, "unix:///run/tainerd/s/abc");
    assert.equal(await readAddress(dir), "unix:///run/tainerd/s/abc");

    const any = {
      typeUrl: "containerd.runc.v1.Options",
      value: toBinary(
        OptionsSchema,
        create(OptionsSchema, { binaryName: "/usr/sbin/runc", root: "/r", systemdCgroup: true }),
      ),
    };
    const opts = decodeRuncOptions(any);
    assert.equal(opts.binaryName, "/usr/sbin/runc");
    assert.deepEqual(
      decodeRuncOptions({ ...any, typeUrl: "type.googleapis.com/containerd.runc.v1.Options" }),
      opts,
    );
    assert.throws(() => decodeRuncOptions({ typeUrl: "x.Other", value: new Uint8Array() }));
    await writeBundleOptions(dir, opts);
    assert.deepEqual(JSON.parse(await Deno.readTextFile(`${dir}/options.json`)), {
      binary_name: "/usr/sbin/runc",
      root: "/r",
      systemd_cgroup: true,
    });
    assert.equal(await Deno.readTextFile(`${dir}/runtime`), "/usr/sbin/runc");
    assert.deepEqual(await readBundleOptions(dir), opts);
    assert.equal((await readBundleOptions(`${dir}/missing`)).binaryName, "");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the socket address cleans paths as Go's filepath.Clean", () => {
  const cases: [string, string][] = [
    ["", "."],
    ["/", "/"],
    ["abc", "abc"],
    ["abc/def/", "abc/def"],
    ["a//b", "a/b"],
    ["/../a", "/a"],
    ["../../a", "../../a"],
    ["a/../..", ".."],
    ["a/./b/../c", "a/c"],
    ["/run/tainerd//tainerd.sock/default/x/..", "/run/tainerd/tainerd.sock/default"],
  ];
  for (const [input, want] of cases) assert.equal(goClean(input), want, input);
});
