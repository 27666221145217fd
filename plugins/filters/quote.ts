/**
 * Quoted literals of the filter syntax: Go string literal rules, as containerd's `quote.go`,
 * extended so that `/` and `|` delimit a literal like `"` does (for regular expressions, where
 * `\/` or `\|` escapes the delimiter).
 *
 * @module
 */

/** A malformed quoted literal. `offset` is the code point index of the fault in the literal. */
export class QuoteSyntaxError extends Error {
  /** Code point index of the fault, counted from the opening delimiter. */
  readonly offset: number;

  /** A fault described by `message` at `offset` in the literal. */
  constructor(message: string, offset: number) {
    super(message);
    this.name = "QuoteSyntaxError";
    this.offset = offset;
  }
}

const SIMPLE: Readonly<Record<string, number>> = {
  a: 0x07,
  b: 0x08,
  f: 0x0c,
  n: 0x0a,
  r: 0x0d,
  t: 0x09,
  v: 0x0b,
  "\\": 0x5c,
};

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8");

function hexValue(ch: string | undefined): number {
  if (ch === undefined) return -1;
  const v = parseInt(ch, 16);
  return ch.length === 1 && !Number.isNaN(v) ? v : -1;
}

/**
 * Decode a quoted literal: `"…"`, `/…/` and `|…|` (Go double-quoted string rules, each
 * delimiter escapable only within its own kind of literal), `'…'` (a single character) and
 * `` `…` `` (raw: no escapes, carriage returns dropped).
 *
 * Escapes: `\a \b \f \n \r \t \v \\`, the delimiter, `\xHH` and `\OOO` (one byte),
 * `\uHHHH` and `\UHHHHHHHH` (a code point). Bytes are assembled and then decoded as UTF-8, so
 * `"\xe7\x89\x9b"` is `牛`; bytes that are not valid UTF-8 become U+FFFD (Go would keep them).
 *
 * @throws {QuoteSyntaxError} when the literal is malformed.
 */
export function unquote(literal: string): string {
  const chars = Array.from(literal);
  const n = chars.length;
  if (n < 2) throw new QuoteSyntaxError("quoted string is too short", 0);
  const quote = chars[0];
  if (chars[n - 1] !== quote) {
    throw new QuoteSyntaxError(`quoted string does not end with ${quote}`, n - 1);
  }
  const body = chars.slice(1, n - 1);
  if (quote === "`") {
    const inner = body.indexOf("`");
    if (inner >= 0) throw new QuoteSyntaxError("unexpected ` in raw string", inner + 1);
    return body.filter((c) => c !== "\r").join("");
  }
  if (quote !== '"' && quote !== "'" && quote !== "/" && quote !== "|") {
    throw new QuoteSyntaxError(`${quote} is not a quote character`, 0);
  }

  const bytes: number[] = [];
  let characters = 0;
  let i = 0;
  while (i < body.length) {
    const at = i + 1; // offset in the literal
    if (quote === "'" && characters === 1) {
      throw new QuoteSyntaxError("single-quoted string must hold exactly one character", at);
    }
    characters++;
    const c = body[i];
    if (c === quote) throw new QuoteSyntaxError(`unescaped ${quote} in quoted string`, at);
    if (c === "\n") throw new QuoteSyntaxError("newline in quoted string", at);
    if (c !== "\\") {
      bytes.push(...encoder.encode(c));
      i++;
      continue;
    }
    const e = body[i + 1];
    if (e === undefined) throw new QuoteSyntaxError("trailing backslash in quoted string", at);
    i += 2;
    if (Object.hasOwn(SIMPLE, e)) {
      bytes.push(SIMPLE[e]);
    } else if (e === "x" || e === "u" || e === "U") {
      const digits = e === "x" ? 2 : e === "u" ? 4 : 8;
      let v = 0;
      for (let j = 0; j < digits; j++) {
        const d = hexValue(body[i + j]);
        if (d < 0) {
          throw new QuoteSyntaxError(
            `illegal escape sequence \\${e}: expects ${digits} hex digits`,
            at,
          );
        }
        v = v * 16 + d;
      }
      i += digits;
      if (e === "x") {
        bytes.push(v);
      } else {
        if (v > 0x10ffff) {
          throw new QuoteSyntaxError(`escape sequence \\${e} is not a valid code point`, at);
        }
        // Go encodes surrogate halves as U+FFFD.
        const cp = v >= 0xd800 && v <= 0xdfff ? 0xfffd : v;
        bytes.push(...encoder.encode(String.fromCodePoint(cp)));
      }
    } else if (e >= "0" && e <= "7") {
      let v = Number(e);
      for (let j = 0; j < 2; j++) {
        const d = body[i + j];
        if (d === undefined || d < "0" || d > "7") {
          throw new QuoteSyntaxError("illegal octal escape sequence: expects 3 octal digits", at);
        }
        v = v * 8 + Number(d);
      }
      i += 2;
      if (v > 255) throw new QuoteSyntaxError("octal escape sequence is greater than 255", at);
      bytes.push(v);
    } else if ((e === "'" || e === '"' || e === "|" || e === "/") && e === quote) {
      bytes.push(e.charCodeAt(0));
    } else {
      throw new QuoteSyntaxError(`illegal escape sequence \\${e} in ${quote}-quoted string`, at);
    }
  }
  if (quote === "'" && characters !== 1) {
    throw new QuoteSyntaxError("single-quoted string must hold exactly one character", 1);
  }
  return decoder.decode(new Uint8Array(bytes));
}

const QUOTE_ESCAPES: Readonly<Record<string, string>> = {
  "\\": "\\\\",
  '"': '\\"',
  "\x07": "\\a",
  "\b": "\\b",
  "\f": "\\f",
  "\n": "\\n",
  "\r": "\\r",
  "\t": "\\t",
  "\v": "\\v",
};

/**
 * Quote `value` as a double-quoted literal that the filter parser reads back as exactly
 * `value`: for building filters from arbitrary label keys and values,
 * e.g. `` `labels.${quote(key)}==${quote(value)}` ``. Lone UTF-16 surrogates cannot be
 * represented and come back as U+FFFD.
 */
export function quote(value: string): string {
  let out = '"';
  for (const c of value) {
    const escaped = QUOTE_ESCAPES[c];
    if (escaped !== undefined) {
      out += escaped;
    } else if (c.length === 1 && (c.charCodeAt(0) < 0x20 || c.charCodeAt(0) === 0x7f)) {
      out += "\\x" + c.charCodeAt(0).toString(16).padStart(2, "0");
    } else {
      out += c;
    }
  }
  return out + '"';
}
