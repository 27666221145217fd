import assert from "node:assert/strict";
import { quote, QuoteSyntaxError, unquote } from "./quote.ts";

Deno.test("unquote: double, slash and pipe quoting", () => {
  assert.equal(unquote('""'), "");
  assert.equal(unquote('"a b, c"'), "a b, c");
  assert.equal(unquote('"tab\\there\\n"'), "tab\there\n");
  assert.equal(unquote('"\\a\\b\\f\\r\\v\\\\"'), "\x07\b\f\r\v\\");
  assert.equal(unquote('"say \\"hi\\""'), 'say "hi"');
  assert.equal(unquote("/foo\\/bar/"), "foo/bar");
  assert.equal(unquote("|foo\\|bar|"), "foo|bar");
  assert.equal(unquote("|foo/bar|"), "foo/bar");
  assert.equal(unquote('/[abc]{0,1}"\\//'), '[abc]{0,1}"/');
});

Deno.test("unquote: numeric escapes assemble UTF-8 bytes", () => {
  assert.equal(unquote('"\\x41\\101\\u00e9\\U0001F600"'), "AAé😀");
  assert.equal(unquote('"\\xe7\\x89\\x9b"'), "牛");
  assert.equal(unquote('"\\xff"'), "\ufffd");
  assert.equal(unquote('"\\ud800"'), "\ufffd");
  assert.equal(unquote('"牛"'), "牛");
});

Deno.test("unquote: single quotes and backticks as Go", () => {
  assert.equal(unquote("'a'"), "a");
  assert.equal(unquote("'牛'"), "牛");
  assert.equal(unquote("'\\''"), "'");
  assert.throws(() => unquote("'ab'"), QuoteSyntaxError);
  assert.throws(() => unquote("''"), QuoteSyntaxError);
  assert.equal(unquote("`a\\n\rb`"), "a\\nb");
});

Deno.test("unquote: malformed literals", () => {
  const bad = [
    '"',
    '"abc',
    "abc",
    '"a"b"',
    '"a\nb"',
    '"\\q"',
    '"\\/"',
    '/\\"/',
    '"\\x4"',
    '"\\u12"',
    '"\\400"',
    '"\\12"',
    '"\\U00110000"',
    '"\\"',
    "``x`",
  ];
  for (const literal of bad) {
    assert.throws(() => unquote(literal), QuoteSyntaxError, JSON.stringify(literal));
  }
  assert.throws(
    () => unquote('"ab\\qc"'),
    (e: unknown) => e instanceof QuoteSyntaxError && e.offset === 3,
  );
});

Deno.test("quote: round-trips through unquote", () => {
  const values = ["", "plain", "a b, c", 'q"uo\\te', "line\nbreak\ttab\r", "\x00\x01\x7f", "牛😀"];
  for (const v of values) {
    const q = quote(v);
    assert.ok(q.startsWith('"') && q.endsWith('"'));
    assert.ok(!q.includes("\n") && !q.includes("\x00"));
    assert.equal(unquote(q), v);
  }
});
