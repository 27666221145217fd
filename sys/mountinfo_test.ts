import assert from "node:assert/strict";
import { mount, umount2 } from "./libc.ts";
import { isMountpoint, lookupMount, mountinfo, parseMountinfo } from "./mountinfo.ts";

Deno.test("parseMountinfo() reads fields, optional fields and escapes", () => {
  const text = [
    "36 35 98:0 /mnt1 /mnt/with\\040space rw,noatime master:1 shared:7 - ext3 /dev/root rw,errors=continue",
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard",
    "",
  ].join("\n");
  const [a, b] = parseMountinfo(text);
  assert.deepEqual(a, {
    id: 36,
    parent: 35,
    major: 98,
    minor: 0,
    root: "/mnt1",
    mountpoint: "/mnt/with space",
    options: "rw,noatime",
    optional: "master:1 shared:7",
    fstype: "ext3",
    source: "/dev/root",
    vfsOptions: "rw,errors=continue",
  });
  assert.equal(b.optional, "");
  assert.equal(b.mountpoint, "/");
  assert.throws(() => parseMountinfo("garbage line\n"));
});

Deno.test("isMountpoint() and lookupMount() see a mount with a space in its path", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tainerd-mountinfo-test" });
  const target = `${dir}/a b`;
  try {
    Deno.mkdirSync(target);
    assert.equal(isMountpoint(target), false);
    assert.equal(isMountpoint("/"), true);
    mount("tmpfs", target, "tmpfs", 0, "size=1m");
    assert.equal(isMountpoint(target), true);
    Deno.mkdirSync(`${target}/sub`);
    const info = lookupMount(`${target}/sub`);
    assert.equal(info.mountpoint, Deno.realPathSync(target));
    assert.equal(info.fstype, "tmpfs");
    assert.equal(
      lookupMount(dir).mountpoint,
      mountinfo().find((m) => m.id === info.parent)!.mountpoint,
    );
    assert.throws(() => isMountpoint(`${dir}/missing`), Deno.errors.NotFound);
  } finally {
    try {
      umount2(target);
    } catch {
      // not mounted
    }
    Deno.removeSync(dir, { recursive: true });
  }
});
