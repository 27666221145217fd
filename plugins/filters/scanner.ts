/**
 * The tokenizer of containerd's filter syntax (see `parser.ts` for the grammar).
 *
 * Positions are indexes of Unicode code points in the input (containerd counts bytes; for ASCII
 * input both agree). The scanner never throws: malformed input becomes an `illegal` token that
 * carries a message and the position of the fault, for the parser to report.
 *
 * @module
 */

/** The kinds of token the scanner produces. */
export type TokenKind =
  /** End of input. */
  | "eof"
  /** A quoted literal, delimiters and escapes included (`"a b"`, `/re/`, `|re|`). */
  | "quoted"
  /** An unquoted value: the run of characters after an operator, up to `,` or whitespace. */
  | "value"
  /** An unquoted field name: `[A-Za-z0-9_]+`. */
  | "field"
  /** A separator: `.` between field path components, `,` between selectors. */
  | "separator"
  /** A run of operator characters (`=`, `!`, `~`), not yet validated. */
  | "operator"
  /** Malformed input; see {@link Token.error}. */
  | "illegal"
  /** Any other single character, which no rule of the grammar accepts. */
  | "char";

/** One token of a filter string. */
export interface Token {
  /** What the token is. */
  readonly kind: TokenKind;
  /** Code point index of the token's first character. */
  readonly pos: number;
  /** The source text of the token (empty at end of input). */
  readonly text: string;
  /** For `illegal` tokens: why the input is malformed. */
  readonly error?: string;
  /** For `illegal` tokens: code point index of the fault, when it is not `pos`. */
  readonly errorPos?: number;
}

/** Characters that open a quoted literal, as containerd's scanner (`'` and `` ` `` do not). */
const QUOTES = new Set(['"', "/", "|"]);
const OPERATOR_CHARS = new Set(["=", "!", "~"]);
const SIMPLE_ESCAPES = new Set(["a", "b", "f", "n", "r", "t", "v", "\\"]);
const WHITESPACE = /^\p{White_Space}$/u;
/** Go's `unicode.IsGraphic` minus spaces: letters, marks, numbers, punctuation, symbols. */
const VALUE_CHAR = /^[\p{L}\p{M}\p{N}\p{P}\p{S}]$/u;
const FIELD_CHAR = /^[A-Za-z0-9_]$/;

/** Whether `ch` is insignificant whitespace between tokens (Unicode White_Space, as Go). */
export function isWhitespace(ch: string): boolean {
  return WHITESPACE.test(ch);
}

/** Whether `ch` may appear in an unquoted field name. */
export function isFieldChar(ch: string): boolean {
  return FIELD_CHAR.test(ch);
}

/** Whether `ch` may appear in an unquoted value: any visible character except `,`. */
export function isValueChar(ch: string): boolean {
  return ch !== "," && VALUE_CHAR.test(ch);
}

function digitValue(ch: string | undefined): number {
  if (ch === undefined || ch.length !== 1) return 16;
  const c = ch.charCodeAt(0);
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x61 + 10;
  if (c >= 0x41 && c <= 0x46) return c - 0x41 + 10;
  return 16;
}

/**
 * A tokenizer over one filter string. Whitespace between tokens is skipped. After an operator
 * the scanner reads a value (anything visible up to `,` or whitespace) instead of a field name,
 * so `name==a.b-c` yields the value `a.b-c` and `name~=.*x` the value `.*x`.
 */
export class Scanner {
  readonly #chars: readonly string[];
  #pos = 0;
  #afterOperator = false;

  /** Tokenize `input`. */
  constructor(input: string) {
    this.#chars = Array.from(input);
  }

  /** The length of the input in code points. */
  get length(): number {
    return this.#chars.length;
  }

  /** The source text between two code point indexes. */
  slice(start: number, end: number): string {
    return this.#chars.slice(start, end).join("");
  }

  #skipWhitespace(): void {
    while (this.#pos < this.#chars.length && isWhitespace(this.#chars[this.#pos])) this.#pos++;
  }

  /**
   * The next significant character and its position, without consuming anything;
   * `ch` is undefined at end of input.
   */
  peek(): { ch: string | undefined; pos: number } {
    this.#skipWhitespace();
    return { ch: this.#chars[this.#pos], pos: this.#pos };
  }

  /** Consume and return the next token. */
  scan(): Token {
    this.#skipWhitespace();
    const afterOperator = this.#afterOperator;
    this.#afterOperator = false;
    const start = this.#pos;
    const ch = this.#chars[start];
    if (ch === undefined) return { kind: "eof", pos: start, text: "" };
    if (ch === "\0") {
      this.#pos++;
      return { kind: "illegal", pos: start, text: ch, error: "unexpected null character" };
    }
    if (QUOTES.has(ch)) return this.#scanQuoted(ch);
    // containerd rejects a value that starts with "." (`name~=.*x`); here it is a value.
    if (ch === "," || (ch === "." && !afterOperator)) {
      this.#pos++;
      return { kind: "separator", pos: start, text: ch };
    }
    if (OPERATOR_CHARS.has(ch)) {
      while (OPERATOR_CHARS.has(this.#chars[this.#pos])) this.#pos++;
      this.#afterOperator = true;
      return { kind: "operator", pos: start, text: this.slice(start, this.#pos) };
    }
    if (afterOperator && isValueChar(ch)) {
      while (this.#pos < this.#chars.length && isValueChar(this.#chars[this.#pos])) this.#pos++;
      return { kind: "value", pos: start, text: this.slice(start, this.#pos) };
    }
    if (isFieldChar(ch)) {
      while (this.#pos < this.#chars.length && isFieldChar(this.#chars[this.#pos])) this.#pos++;
      return { kind: "field", pos: start, text: this.slice(start, this.#pos) };
    }
    this.#pos++;
    return { kind: "char", pos: start, text: ch };
  }

  /**
   * Scan a quoted literal opened by `quote` at the current position, checking its escape
   * sequences as Go's string literal syntax (with `quote` as the escapable delimiter). The
   * first fault wins; the literal is still scanned to its end so that scanning can go on.
   */
  #scanQuoted(quote: string): Token {
    const chars = this.#chars;
    const start = this.#pos++;
    let error: string | undefined;
    let errorPos: number | undefined;
    const fault = (message: string, at: number) => {
      if (error === undefined) {
        error = message;
        errorPos = at;
      }
    };
    for (;;) {
      const ch = chars[this.#pos];
      if (ch === undefined || ch === "\n") {
        if (ch === "\n") this.#pos++;
        return {
          kind: "illegal",
          pos: start,
          text: this.slice(start, this.#pos),
          error: `unterminated quoted string (opened with ${quote})`,
        };
      }
      if (ch === "\0") fault("unexpected null character", this.#pos);
      if (ch === quote) {
        this.#pos++;
        break;
      }
      if (ch !== "\\") {
        this.#pos++;
        continue;
      }
      const escPos = this.#pos;
      const next = chars[escPos + 1];
      if (next === undefined || next === "\n") {
        this.#pos++;
        continue; // reported as unterminated on the next turn
      }
      if (SIMPLE_ESCAPES.has(next) || next === quote) {
        this.#pos += 2;
        continue;
      }
      let base = 0;
      let digits = 0;
      let first = escPos + 2;
      if (next >= "0" && next <= "7") {
        [base, digits, first] = [8, 3, escPos + 1];
      } else if (next === "x") [base, digits] = [16, 2];
      else if (next === "u") [base, digits] = [16, 4];
      else if (next === "U") [base, digits] = [16, 8];
      if (base === 0) {
        fault(`illegal escape sequence \\${next}`, escPos);
        this.#pos += 2;
        continue;
      }
      this.#pos = first;
      let n = 0;
      while (n < digits && digitValue(chars[this.#pos]) < base) {
        this.#pos++;
        n++;
      }
      if (n < digits) {
        fault(`illegal numeric escape sequence ${this.slice(escPos, this.#pos)}`, escPos);
      }
    }
    const text = this.slice(start, this.#pos);
    if (error !== undefined) return { kind: "illegal", pos: start, text, error, errorPos };
    return { kind: "quoted", pos: start, text };
  }
}
