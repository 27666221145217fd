import assert from "node:assert/strict";
import { Scanner, type TokenKind } from "./scanner.ts";

type Expected = [pos: number, kind: TokenKind, text: string, error?: string];

function tokens(input: string): Expected[] {
  const scanner = new Scanner(input);
  const out: Expected[] = [];
  for (let i = 0; i < 100; i++) {
    const t = scanner.scan();
    out.push(t.error === undefined ? [t.pos, t.kind, t.text] : [t.pos, t.kind, t.text, t.error]);
    if (t.kind === "eof") {
      assert.equal(scanner.scan().kind, "eof", "eof is sticky");
      return out;
    }
  }
  throw new Error("scanner does not terminate");
}

const cases: Record<string, [string, Expected[]]> = {
  field: ["name", [[0, "field", "name"], [4, "eof", ""]]],
  selectorsWithOperators: ["name==value,foo!=bar", [
    [0, "field", "name"],
    [4, "operator", "=="],
    [6, "value", "value"],
    [11, "separator", ","],
    [12, "field", "foo"],
    [15, "operator", "!="],
    [17, "value", "bar"],
    [20, "eof", ""],
  ]],
  selectorsWithFieldPaths: ["name==value,labels.foo=value,other.bar~=match", [
    [0, "field", "name"],
    [4, "operator", "=="],
    [6, "value", "value"],
    [11, "separator", ","],
    [12, "field", "labels"],
    [18, "separator", "."],
    [19, "field", "foo"],
    [22, "operator", "="],
    [23, "value", "value"],
    [28, "separator", ","],
    [29, "field", "other"],
    [34, "separator", "."],
    [35, "field", "bar"],
    [38, "operator", "~="],
    [40, "value", "match"],
    [45, "eof", ""],
  ]],
  regexpValue: ["name~=[abc]+,foo=test", [
    [0, "field", "name"],
    [4, "operator", "~="],
    [6, "value", "[abc]+"],
    [12, "separator", ","],
    [13, "field", "foo"],
    [16, "operator", "="],
    [17, "value", "test"],
    [21, "eof", ""],
  ]],
  regexpEscapedValue: ["name~=[abc]\\+,foo=test", [
    [0, "field", "name"],
    [4, "operator", "~="],
    [6, "value", "[abc]\\+"],
    [13, "separator", ","],
    [14, "field", "foo"],
    [17, "operator", "="],
    [18, "value", "test"],
    [22, "eof", ""],
  ]],
  regexpQuotedValue: ["name~=/[abc]{0,2}/,foo=test", [
    [0, "field", "name"],
    [4, "operator", "~="],
    [6, "quoted", "/[abc]{0,2}/"],
    [18, "separator", ","],
    [19, "field", "foo"],
    [22, "operator", "="],
    [23, "value", "test"],
    [27, "eof", ""],
  ]],
  cowsay: ["name~=牛,labels.moo=true", [
    [0, "field", "name"],
    [4, "operator", "~="],
    [6, "value", "牛"],
    [7, "separator", ","],
    [8, "field", "labels"],
    [14, "separator", "."],
    [15, "field", "moo"],
    [18, "operator", "="],
    [19, "value", "true"],
    [23, "eof", ""],
  ]],
  cowsayRegexpQuoted: ["name~=|牛|,labels.moo=true", [
    [0, "field", "name"],
    [4, "operator", "~="],
    [6, "quoted", "|牛|"],
    [9, "separator", ","],
    [10, "field", "labels"],
    [16, "separator", "."],
    [17, "field", "moo"],
    [20, "operator", "="],
    [21, "value", "true"],
    [25, "eof", ""],
  ]],
  escapes: ['name~="asdf\\n\\tfooo"', [
    [0, "field", "name"],
    [4, "operator", "~="],
    [6, "quoted", '"asdf\\n\\tfooo"'],
    [20, "eof", ""],
  ]],
  nullInput: ["foo\x00bar", [
    [0, "field", "foo"],
    [3, "illegal", "\x00", "unexpected null character"],
    [4, "field", "bar"],
    [7, "eof", ""],
  ]],
  spacesChomped: ["foo = bar    ", [
    [0, "field", "foo"],
    [4, "operator", "="],
    [6, "value", "bar"],
    [13, "eof", ""],
  ]],
  valuesPunctuated: ["compound.labels==punctuated_value.foo-bar", [
    [0, "field", "compound"],
    [8, "separator", "."],
    [9, "field", "labels"],
    [15, "operator", "=="],
    [17, "value", "punctuated_value.foo-bar"],
    [41, "eof", ""],
  ]],
  partialInput: ["interrupted=", [
    [0, "field", "interrupted"],
    [11, "operator", "="],
    [12, "eof", ""],
  ]],
  doubleValue: ["doublevalue=value value", [
    [0, "field", "doublevalue"],
    [11, "operator", "="],
    [12, "value", "value"],
    [18, "field", "value"],
    [23, "eof", ""],
  ]],
  leadingWithQuoted: ['"leading quote".postquote==value', [
    [0, "quoted", '"leading quote"'],
    [15, "separator", "."],
    [16, "field", "postquote"],
    [25, "operator", "=="],
    [27, "value", "value"],
    [32, "eof", ""],
  ]],
  missingValue: ["input==,id!=ff", [
    [0, "field", "input"],
    [5, "operator", "=="],
    [7, "separator", ","],
    [8, "field", "id"],
    [10, "operator", "!="],
    [12, "value", "ff"],
    [14, "eof", ""],
  ]],
  quotedRegexp: ["input~=/foo\\/bar/,id!=ff", [
    [0, "field", "input"],
    [5, "operator", "~="],
    [7, "quoted", "/foo\\/bar/"],
    [17, "separator", ","],
    [18, "field", "id"],
    [20, "operator", "!="],
    [22, "value", "ff"],
    [24, "eof", ""],
  ]],
  quotedRegexpAlt: ["input~=|foo/bar|,id!=ff", [
    [0, "field", "input"],
    [5, "operator", "~="],
    [7, "quoted", "|foo/bar|"],
    [16, "separator", ","],
    [17, "field", "id"],
    [19, "operator", "!="],
    [21, "value", "ff"],
    [23, "eof", ""],
  ]],
  illegalQuoted: ["labels.containerd.io/key==value", [
    [0, "field", "labels"],
    [6, "separator", "."],
    [7, "field", "containerd"],
    [17, "separator", "."],
    [18, "field", "io"],
    [20, "illegal", "/key==value", "unterminated quoted string (opened with /)"],
    [31, "eof", ""],
  ]],
  illegalQuotedWithNewLine: ['labels."containerd.io\nkey"==value', [
    [0, "field", "labels"],
    [6, "separator", "."],
    [7, "illegal", '"containerd.io\n', 'unterminated quoted string (opened with ")'],
    [22, "field", "key"],
    [25, "illegal", '"==value', 'unterminated quoted string (opened with ")'],
    [33, "eof", ""],
  ]],
  illegalEscapeSequence: ['labels."\\g"', [
    [0, "field", "labels"],
    [6, "separator", "."],
    [7, "illegal", '"\\g"', "illegal escape sequence \\g"],
    [11, "eof", ""],
  ]],
  illegalNumericEscapeSequence: ['labels."\\xaz"', [
    [0, "field", "labels"],
    [6, "separator", "."],
    [7, "illegal", '"\\xaz"', "illegal numeric escape sequence \\xa"],
    [13, "eof", ""],
  ]],
  escapedDelimiterOnlyInItsOwnQuote: ['a~="\\/"', [
    [0, "field", "a"],
    [1, "operator", "~="],
    [3, "illegal", '"\\/"', "illegal escape sequence \\/"],
    [7, "eof", ""],
  ]],
  valueMayStartWithDot: ["a~=.*x,b==.c", [
    [0, "field", "a"],
    [1, "operator", "~="],
    [3, "value", ".*x"],
    [6, "separator", ","],
    [7, "field", "b"],
    [8, "operator", "=="],
    [10, "value", ".c"],
    [12, "eof", ""],
  ]],
  unicodeEscapes: ['"\\u00e9\\U0001F600\\101\\x41"', [
    [0, "quoted", '"\\u00e9\\U0001F600\\101\\x41"'],
    [26, "eof", ""],
  ]],
  singleQuoteAndBacktickAreNotQuotes: ["a=='x',`", [
    [0, "field", "a"],
    [1, "operator", "=="],
    [3, "value", "'x'"],
    [6, "separator", ","],
    [7, "char", "`"],
    [8, "eof", ""],
  ]],
};

for (const [name, [input, expected]] of Object.entries(cases)) {
  Deno.test(`scanner: ${name}`, () => {
    assert.deepEqual(tokens(input), expected);
  });
}

Deno.test("scanner: illegal tokens carry the fault position", () => {
  const s = new Scanner('"ab\\qc"');
  const t = s.scan();
  assert.equal(t.kind, "illegal");
  assert.equal(t.pos, 0);
  assert.equal(t.errorPos, 3);
});
