import assert from "node:assert/strict";
import { absent, adaptLabels, objectAdaptor, present } from "./adaptor.ts";
import { parseAll } from "./filter.ts";

Deno.test("adaptLabels: joins the path with dots", () => {
  const labels = { "com.example.key": "v", plain: "", "a/b": "c" };
  assert.deepEqual(adaptLabels(labels, ["com", "example", "key"]), present("v"));
  assert.deepEqual(adaptLabels(labels, ["com.example.key"]), present("v"));
  assert.deepEqual(adaptLabels(labels, ["plain"]), present(""), "empty label values are present");
  assert.deepEqual(adaptLabels(labels, ["a/b"]), present("c"));
  assert.equal(adaptLabels(labels, ["missing"]), absent);
  assert.equal(adaptLabels(undefined, ["x"]), absent);
  assert.equal(adaptLabels({}, []), absent);
  assert.equal(adaptLabels(labels, ["constructor"]), absent, "no prototype keys");
  assert.equal(adaptLabels(labels, ["toString"]), absent);
});

Deno.test("objectAdaptor: fields, labels and other maps", () => {
  const image = objectAdaptor({
    fields: {
      name: "docker.io/library/alpine:3",
      "target.digest": "sha256:abc",
      "target.mediatype": "",
      extra: undefined,
    },
    labels: { "io.cri-containerd.image": "managed", "com.example/key": "x" },
    maps: { annotations: { "org.opencontainers.image.ref.name": "3" } },
  });
  assert.deepEqual(image(["name"]), present("docker.io/library/alpine:3"));
  assert.deepEqual(image(["target", "digest"]), present("sha256:abc"));
  assert.equal(image(["target", "mediatype"]), absent, "empty fields are absent by default");
  assert.equal(image(["extra"]), absent);
  assert.equal(image(["nope"]), absent);
  assert.equal(image([]), absent);
  assert.equal(image(["labels"]), absent);
  assert.deepEqual(image(["labels", "io", "cri-containerd", "image"]), present("managed"));
  assert.deepEqual(image(["annotations", "org.opencontainers.image.ref.name"]), present("3"));
  assert.equal(image(["toString"]), absent, "no prototype keys");

  const match = (filters: string[]) => parseAll(filters).match(image);
  assert.ok(match(["name~=^docker\\.io/library/"]));
  assert.ok(match(['labels."io.cri-containerd.image"==managed']));
  assert.ok(match(['labels."com.example/key"']));
  assert.throws(() => match(["labels.io.cri-containerd.image"]), /expected an operator/);
  assert.ok(match(['target.digest=="sha256:abc",name']));
  assert.ok(!match(["target.mediatype"]));
  assert.ok(match(["name==nope", 'annotations."org.opencontainers.image.ref.name"==3']));
});

Deno.test("objectAdaptor: emptyIsPresent (snapshots)", () => {
  const snapshot = objectAdaptor({
    fields: { name: "s1", parent: "", kind: "committed" },
    emptyIsPresent: true,
  });
  assert.deepEqual(snapshot(["parent"]), present(""));
  assert.ok(parseAll(['parent==""']).match(snapshot));
  assert.ok(parseAll(["kind==committed,parent"]).match(snapshot));
  assert.equal(objectAdaptor({})(["labels", "x"]), absent);
});
