import assert from "node:assert/strict";
import { TainerdError } from "../errdefs.ts";
import {
  type Adaptor,
  AllFilter,
  allOf,
  always,
  AnyFilter,
  anyOf,
  type FieldValue,
  parse,
  parseAll,
  Selector,
} from "./filter.ts";

interface Entry {
  name: string;
  other?: string;
  labels?: Record<string, string>;
}

// The corpus of containerd's filters/filter_test.go.
const corpus: Entry[] = [
  { name: "foo", labels: { foo: "true" } },
  { name: "bar" },
  { name: "foo", labels: { foo: "present", "more complex label": "present" } },
  { name: "bar", labels: { bar: "true" } },
  { name: "fooer", labels: { 'more complex label with \\ and "': "present" } },
  { name: "fooer", labels: { 'more complex label with \\ and ".post': "present" } },
  { name: "baz", other: "too complex, yo" },
  { name: "bazo", other: "abc" },
  { name: "compound", labels: { foo: "omg_asdf.asdf-qwer" } },
];

const ABSENT: FieldValue = { value: "", present: false };

function adapt(e: Entry): Adaptor {
  return (path) => {
    switch (path[0]) {
      case "name":
        return { value: e.name, present: e.name.length > 0 };
      case "other":
        return { value: e.other ?? "", present: (e.other ?? "").length > 0 };
      case "labels": {
        const key = path.slice(1).join(".");
        return e.labels && Object.hasOwn(e.labels, key)
          ? { value: e.labels[key], present: true }
          : ABSENT;
      }
    }
    return ABSENT;
  };
}

function select(filters: string[]): number[] {
  const f = parseAll(filters);
  return corpus.flatMap((e, i) => f.match(adapt(e)) ? [i] : []);
}

const all = corpus.map((_, i) => i);

Deno.test("filter: containerd's TestFilters corpus", () => {
  const cases: [string, number[]][] = [
    ["", all],
    ["name", all],
    ["labels.foo", [0, 2, 8]],
    ["labels.foo,name", [0, 2, 8]],
    ["labels.foo==true", [0]],
    ["labels.foo==omg_asdf.asdf-qwer", [8]],
    ["name==bar", [1, 3]],
    ["name!=bar", [0, 2, 4, 5, 6, 7, 8]],
    ["name==bar,labels.bar", [3]],
    ['other=="too complex, yo"', [6]],
    ["other~=[abc]+,name!=foo", [6, 7]],
    ["other~=/[abc]+/,name!=foo", [6, 7]],
    ["other~=/[abc]{1,2}/,name!=foo", [6, 7]],
    ['other~=/[abc]{0,1}"\\//,name!=foo', []],
    ["name==bar,labels.bar==true", [3]],
    ["name==bar,labels.bar==wrong", []],
    ['name==foo,labels."more complex label"', [2]],
    ['labels."more complex label with \\\\ and \\""==present', [4]],
    ['labels."more complex label with \\\\ and \\"".post==present', [5]],
  ];
  for (const [filter, expected] of cases) {
    assert.deepEqual(select([filter]), expected, filter);
  }
});

Deno.test("filter: a list of filters is OR'ed, selectors within one are AND'ed", () => {
  assert.deepEqual(select([]), all);
  assert.deepEqual(select(["name==bar", "labels.foo==true"]), [0, 1, 3]);
  assert.deepEqual(select(["name==bar,labels.bar", "name==baz"]), [3, 6]);
  assert.deepEqual(select(["name==nothing", ""]), all, "an empty filter matches everything");
  assert.deepEqual(select(["name==nothing", "name==none"]), []);
  assert.deepEqual(select(["name~=^ba", "name~=r$"]), [1, 3, 4, 5, 6, 7]);
});

Deno.test("filter: operator semantics follow containerd", () => {
  // != and ~= do not require presence: an absent field is the empty string.
  assert.deepEqual(select(["other!=abc"]), [0, 1, 2, 3, 4, 5, 6, 8]);
  assert.deepEqual(select(['other!=""']), [6, 7]);
  assert.deepEqual(select(["labels.foo~=.*"]), all);
  assert.deepEqual(select(["labels.foo~=."]), [0, 2, 8]);
  // == requires presence, even against an empty value.
  assert.deepEqual(select(['other==""']), []);
  assert.deepEqual(select(["name~=(?i)^FOO$"]), [0, 2]);
});

Deno.test("filter: parse errors are InvalidArgument", () => {
  for (const bad of ["name==", "==foo", 'labels."x', "name~=(", "name~=/x", "a,,b"]) {
    assert.throws(() => parseAll(["name==ok", bad]), (err: unknown) => {
      assert.ok(err instanceof TainerdError);
      assert.equal(err.kind, "InvalidArgument");
      assert.ok(err.message.startsWith(`Invalid filter ${JSON.stringify(bad)}: `), err.message);
      return true;
    });
  }
});

Deno.test("filter: combinators and always", () => {
  const yes: Adaptor = () => ({ value: "x", present: true });
  assert.equal(parse(""), always);
  assert.equal(parseAll([]), always);
  assert.equal(parseAll(["", "name==x"]), always);
  assert.ok(always.match(yes));
  assert.equal(allOf([]), always);
  assert.ok(!anyOf([]).match(yes));
  const p = parse("name");
  assert.equal(anyOf([p]), p);
  assert.ok(parse("a,b") instanceof AllFilter);
  assert.ok(parseAll(["a", "b"]) instanceof AnyFilter);
  assert.ok(parse("a") instanceof Selector);
});

Deno.test("filter: Selector construction and toString", () => {
  const s = new Selector(["labels", "com.example/key"], "~=", "^v1\\.");
  assert.ok(s.match(() => ({ value: "v1.2", present: true })));
  assert.ok(!s.match(() => ({ value: "v10", present: true })));
  assert.throws(() => new Selector(["name"], "~=", "("), (err: unknown) => {
    return err instanceof TainerdError && err.kind === "InvalidArgument";
  });
  assert.equal(String(s), 'labels."com.example/key"~="^v1\\\\."');
  assert.equal(String(parse('name==foo,labels."a b"')), 'name=="foo",labels."a b"');
  // toString output parses back to the same selectors
  for (const f of ['labels."a\\"b"!="x, y"', "name~=/a\\/b/", "x.y_1"]) {
    const once = String(parse(f));
    assert.equal(String(parse(once)), once, f);
  }
  assert.equal(String(parseAll(["a", "b==c"])), '["a","b==\\"c\\""]');
});

Deno.test("filter: the adaptor receives the unquoted field path", () => {
  const seen: string[][] = [];
  parse('labels."com.example.key",a.b."c.d"==x').match((path) => {
    seen.push([...path]);
    return { value: "x", present: true };
  });
  assert.deepEqual(seen, [["labels", "com.example.key"], ["a", "b", "c.d"]]);
});
