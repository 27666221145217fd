import assert from "node:assert/strict";
import { compileRegexp, RegexpSyntaxError, translateRegexp } from "./regexp.ts";

function matches(pattern: string, value: string): boolean {
  return compileRegexp(pattern).test(value);
}

Deno.test("regexp: plain patterns search anywhere, like Go's MatchString", () => {
  assert.ok(matches("[abc]+", "too complex, yo"));
  assert.ok(!matches("^[abc]+$", "too complex, yo"));
  assert.ok(matches("^docker\\.io/library/", "docker.io/library/alpine:3"));
  assert.ok(!matches("^docker\\.io/library/", "ghcr.io/docker.io/library/x"));
  assert.ok(matches("", "anything"));
  assert.ok(matches(".", "😀"));
  assert.ok(matches("^.$", "😀"), "code point semantics");
});

Deno.test("regexp: inline flags", () => {
  assert.ok(matches("(?i)^foo$", "FOO"));
  assert.ok(matches("a(?i)b|c", "aB"));
  assert.ok(matches("a(?i)b|c", "C"), "flag applies to the later alternatives");
  assert.ok(!matches("^(?:a(?i)b|c)$", "ac"), "alternation is not regrouped");
  assert.ok(matches("(?i:b)c", "Bc"));
  assert.ok(!matches("(?i:b)c", "BC"));
  assert.ok(matches("(?s)a.b", "a\nb"));
  assert.ok(!matches("a.b", "a\nb"));
  assert.ok(matches("(?m)^b$", "a\nb\nc"));
  assert.ok(matches("x(?i)(y)z", "xYZ"));
  assert.ok(matches("(?i)(?-i:a)b", "aB"));
  assert.ok(!matches("(?i)(?-i:a)b", "AB"));
  assert.throws(() => compileRegexp("(?U)a+"), RegexpSyntaxError);
  assert.throws(() => compileRegexp("(?x)a"), RegexpSyntaxError);
  assert.throws(() => compileRegexp("(?i-)a"), RegexpSyntaxError);
});

Deno.test("regexp: RE2 spellings", () => {
  assert.equal(translateRegexp("(?P<x>a)"), "(?<x>a)");
  assert.ok(matches("\\Afoo\\z", "foo"));
  assert.ok(!matches("\\Afoo\\z", "foo\n"));
  assert.ok(!matches("(?m)\\Afoo", "x\nfoo"));
  assert.ok(matches("\\Qa.b*\\E$", "xa.b*"));
  assert.ok(!matches("\\Qa.b\\E", "axb"));
  assert.ok(matches("^\\x{1F600}$", "😀"));
  assert.ok(matches("^\\pL+$", "héllo"));
  assert.ok(matches("^\\p{Greek}+$", "αβγ"));
  assert.ok(!matches("^\\p{^Greek}+$", "αβγ"));
  assert.ok(matches("^\\PL$", "1"));
  assert.ok(matches("^\\101\\0$", "A\0"));
  assert.ok(matches("^\\a$", "\x07"));
  assert.ok(matches("^[[:alpha:]]+[[:digit:]]$", "abc1"));
  assert.ok(matches("^[[:punct:]]+$", "!/:@[`{~"));
  assert.ok(matches("^[]a]+$", "]a]"));
  assert.ok(matches('^a\\-b\\"c\\ d$', 'a-b"c d'));
  assert.ok(matches("^[a\\-z]+$", "-az"));
  assert.ok(matches("^a{$", "a{"));
  assert.ok(matches("^a{,2}$", "a{,2}"));
  assert.ok(matches("^a{2}$", "aa"));
  assert.ok(matches("^}]$", "}]"));
  assert.ok(matches("^\\s$", " "));
  assert.ok(!matches("^\\s$", "\u00a0"), "\\s is ASCII only in RE2");
  assert.ok(matches("^\\S$", "\u00a0"));
  assert.ok(matches("^\\d\\w\\b", "1a"));
});

Deno.test("regexp: invalid patterns", () => {
  const bad = [
    "(",
    ")",
    "[a",
    "a**",
    "*",
    "x{2,1}",
    "a{1001}",
    "\\",
    "\\1",
    "\\8",
    "\\C",
    "\\p{Nope}",
    "[[:nope:]]",
    "[[:^alpha:]]",
    "\\x{110000}",
    "\\e",
  ];
  for (const p of bad) assert.throws(() => compileRegexp(p), RegexpSyntaxError, p);
  assert.throws(() => compileRegexp("("), { message: "unterminated group" });
});
