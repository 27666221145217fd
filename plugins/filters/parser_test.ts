import assert from "node:assert/strict";
import { TainerdError } from "../errdefs.ts";
import { parseSelectors, type SelectorSpec } from "./parser.ts";

function specs(filter: string): [string[], string, string][] {
  return parseSelectors(filter).map((s: SelectorSpec) => [[...s.fieldpath], s.operator, s.value]);
}

Deno.test("parser: selector forms", () => {
  const cases: [string, [string[], string, string][]][] = [
    ["", []],
    ["   ", []],
    ["name", [[["name"], "present", ""]]],
    ["name==foo", [[["name"], "==", "foo"]]],
    ["name!=bar", [[["name"], "!=", "bar"]]],
    ["name~=^foo", [[["name"], "~=", "^foo"]]],
    ["labels.foo", [[["labels", "foo"], "present", ""]]],
    ['labels."foo.bar"==baz', [[["labels", "foo.bar"], "==", "baz"]]],
    ['labels."com.example/key"', [[["labels", "com.example/key"], "present", ""]]],
    ['labels."a b".c', [[["labels", "a b", "c"], "present", ""]]],
    ['"leading quote".postquote==value', [[["leading quote", "postquote"], "==", "value"]]],
    ["name==foo,labels.a==b", [[["name"], "==", "foo"], [["labels", "a"], "==", "b"]]],
    ["labels.foo,name", [[["labels", "foo"], "present", ""], [["name"], "present", ""]]],
    ["labels.foo==omg_asdf.asdf-qwer", [[["labels", "foo"], "==", "omg_asdf.asdf-qwer"]]],
    ['other=="too complex, yo"', [[["other"], "==", "too complex, yo"]]],
    ['name=="a\\"b\\\\c\\n"', [[["name"], "==", 'a"b\\c\n']]],
    ['labels."more complex label with \\\\ and \\""==present', [
      [["labels", 'more complex label with \\ and "'], "==", "present"],
    ]],
    ["name~=/foo/", [[["name"], "~=", "foo"]]],
    ["name~=/foo\\/bar/", [[["name"], "~=", "foo/bar"]]],
    ["name~=|foo/bar|", [[["name"], "~=", "foo/bar"]]],
    ["name~=[abc]\\+", [[["name"], "~=", "[abc]\\+"]]],
    ["other~=/[abc]{1,2}/,name!=foo", [[["other"], "~=", "[abc]{1,2}"], [["name"], "!=", "foo"]]],
    ['other~=/[abc]{0,1}"\\//', [[["other"], "~=", '[abc]{0,1}"/']]],
    ["name==牛", [[["name"], "==", "牛"]]],
    ["name=='x'", [[["name"], "==", "'x'"]]],
    ["name==a=b!c", [[["name"], "==", "a=b!c"]]],
    ['name==""', [[["name"], "==", ""]]],
    ["0a_b==1", [[["0a_b"], "==", "1"]]],
  ];
  for (const [filter, expected] of cases) {
    assert.deepEqual(specs(filter), expected, filter);
  }
});

Deno.test("parser: whitespace between tokens is insignificant", () => {
  const expected = [[["name"], "==", "foo"], [["labels", "a"], "present", ""]];
  for (
    const filter of [
      " name==foo,labels.a",
      "name == foo , labels.a ",
      "\tname==foo,\n labels . a",
      "name==foo,labels.a\u3000",
    ]
  ) {
    assert.deepEqual(specs(filter), expected, JSON.stringify(filter));
  }
  assert.deepEqual(specs('name==" padded "'), [[["name"], "==", " padded "]]);
});

Deno.test("parser: regexps are compiled", () => {
  const [s] = parseSelectors("name~=(?i)^FOO");
  assert.ok(s.regexp instanceof RegExp);
  assert.ok(s.regexp.test("foobar"));
  assert.equal(parseSelectors("name==x")[0].regexp, undefined);
});

Deno.test("parser: errors are InvalidArgument with context and position", () => {
  const cases: [string, string][] = [
    ["name==", "expected a value or quoted string but found end of input at position 6"],
    ["==foo", 'expected a field name or quoted string but found "==" at position 0'],
    ["name==foo,", "expected a field name or quoted string but found end of input at position 10"],
    ["labels.", "expected a field name or quoted string but found end of input at position 7"],
    [
      'labels.?"x".post==present',
      'expected a field name or quoted string but found "?" at position 7',
    ],
    ["image~=,id?=?fbaq", 'expected a value or quoted string but found "," at position 7'],
    ["labels.ns/key==value", "unterminated quoted string (opened with /) at position 9"],
    ["labels.key==/value", "unterminated quoted string (opened with /) at position 12"],
    ['labels."abc', 'unterminated quoted string (opened with ") at position 7'],
    ['name=="abc', 'unterminated quoted string (opened with ") at position 6'],
    ['labels."a\nb"==c', 'unterminated quoted string (opened with ") at position 7'],
    [
      "labels.|foo|==x",
      'invalid quote |: |…| quoting is only allowed for "~=" values at position 7',
    ],
    ["name==/foo/", 'invalid quote /: /…/ quoting is only allowed for "~=" values at position 6'],
    ['labels."\\g"', "illegal escape sequence \\g at position 8"],
    ['labels."\\xaz"', "illegal numeric escape sequence \\xa at position 8"],
    ['name=="\\400"', "octal escape sequence is greater than 255 at position 7"],
    ["name=foo", 'unsupported operator "=" (expected "==", "!=" or "~=") at position 4'],
    ["name===foo", 'unsupported operator "===" (expected "==", "!=" or "~=") at position 4'],
    ["name foo", 'expected an operator ("==", "!=" or "~=") but found "foo" at position 5'],
    ["labels.foo-bar", 'expected an operator ("==", "!=" or "~=") but found "-" at position 10'],
    ["name==foo bar", 'unexpected "b" (expected "," or end of input) at position 10'],
    ['name=="a"b', 'unexpected "b" (expected "," or end of input) at position 9'],
    ["name~=(", 'invalid regular expression "(" at position 6: unterminated group'],
    [
      "name~=/[a/",
      'invalid regular expression "[a" at position 6: missing closing ] in character class',
    ],
    [
      "name~=(?U)a",
      'invalid regular expression "(?U)a" at position 6: the U (ungreedy) flag is not supported',
    ],
    ["a\x00b", "unexpected null character at position 1"],
    ["name==牛,=", 'expected a field name or quoted string but found "=" at position 8'],
  ];
  for (const [filter, message] of cases) {
    assert.throws(
      () => parseSelectors(filter),
      (err: unknown) => {
        assert.ok(err instanceof TainerdError, filter);
        assert.equal(err.kind, "InvalidArgument");
        assert.equal(err.message, `Invalid filter ${JSON.stringify(filter)}: ${message}`);
        return true;
      },
    );
  }
});
