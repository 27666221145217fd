/**
 * The parser of containerd's filter syntax. A filter is a comma separated list of selectors,
 * all of which must match:
 *
 * ```
 * selectors := selector ("," selector)*
 * selector  := fieldpath (operator value)?
 * fieldpath := field ("." field)*
 * field     := '"'-quoted | [A-Za-z0-9_]+
 * operator  := "==" | "!=" | "~="
 * value     := quoted | [^\s,]+
 * quoted    := Go string literal in "…"; after "~=" also /…/ or |…| (for regexps)
 * ```
 *
 * A selector without operator tests that the field is present. Whitespace between tokens is
 * insignificant; quote a value to keep spaces or commas in it (`name=="a, b"`).
 *
 * @module
 */

import { invalidArgument, type TainerdError } from "../errdefs.ts";
import { QuoteSyntaxError, unquote } from "./quote.ts";
import { compileRegexp, RegexpSyntaxError } from "./regexp.ts";
import { Scanner, type Token } from "./scanner.ts";

/** The selector operators; `present` is a field path without operator. */
export type Operator = "present" | "==" | "!=" | "~=";

/** One parsed selector: `<fieldpath><operator><value>`. */
export interface SelectorSpec {
  /** The field path, quotes removed: `labels."a.b"` is `["labels", "a.b"]`. */
  readonly fieldpath: readonly string[];
  /** The operator. */
  readonly operator: Operator;
  /** The value, unquoted; empty for `present`. */
  readonly value: string;
  /** For `~=`: the compiled regular expression. */
  readonly regexp?: RegExp;
}

function describe(token: Token): string {
  return token.kind === "eof" ? "end of input" : JSON.stringify(token.text);
}

class Parser {
  readonly #input: string;
  readonly #scanner: Scanner;

  constructor(input: string) {
    this.#input = input;
    this.#scanner = new Scanner(input);
  }

  #fail(pos: number, message: string, detail?: string): TainerdError {
    const filter = JSON.stringify(this.#input);
    const suffix = detail === undefined ? "" : `: ${detail}`;
    return invalidArgument(`Invalid filter ${filter}: ${message} at position ${pos}${suffix}`);
  }

  #illegal(token: Token): TainerdError {
    return this.#fail(token.errorPos ?? token.pos, token.error ?? "malformed input");
  }

  parse(): SelectorSpec[] {
    if (this.#scanner.peek().ch === undefined) return [];
    const selectors = [this.#selector()];
    for (;;) {
      const { ch, pos } = this.#scanner.peek();
      if (ch === undefined) return selectors;
      if (ch !== ",") {
        throw this.#fail(pos, `unexpected ${JSON.stringify(ch)} (expected "," or end of input)`);
      }
      this.#scanner.scan();
      selectors.push(this.#selector());
    }
  }

  #selector(): SelectorSpec {
    const fieldpath = this.#fieldpath();
    const { ch } = this.#scanner.peek();
    if (ch === undefined || ch === ",") return { fieldpath, operator: "present", value: "" };
    const operator = this.#operator();
    const token = this.#scanner.scan();
    const value = this.#value(token, operator === "~=");
    if (operator !== "~=") return { fieldpath, operator, value };
    try {
      return { fieldpath, operator, value, regexp: compileRegexp(value) };
    } catch (err) {
      if (!(err instanceof RegexpSyntaxError)) throw err;
      throw this.#fail(
        token.pos,
        `invalid regular expression ${JSON.stringify(value)}`,
        err.message,
      );
    }
  }

  #fieldpath(): string[] {
    const fields = [this.#field()];
    while (this.#scanner.peek().ch === ".") {
      this.#scanner.scan();
      fields.push(this.#field());
    }
    return fields;
  }

  #field(): string {
    const token = this.#scanner.scan();
    switch (token.kind) {
      case "field":
        return token.text;
      case "quoted":
        return this.#unquote(token, false);
      case "illegal":
        throw this.#illegal(token);
    }
    throw this.#fail(
      token.pos,
      `expected a field name or quoted string but found ${describe(token)}`,
    );
  }

  #operator(): Exclude<Operator, "present"> {
    const token = this.#scanner.scan();
    if (token.kind === "operator") {
      switch (token.text) {
        case "==":
        case "!=":
        case "~=":
          return token.text;
      }
      throw this.#fail(
        token.pos,
        `unsupported operator ${JSON.stringify(token.text)} (expected "==", "!=" or "~=")`,
      );
    }
    if (token.kind === "illegal") throw this.#illegal(token);
    throw this.#fail(
      token.pos,
      `expected an operator ("==", "!=" or "~=") but found ${describe(token)}`,
    );
  }

  #value(token: Token, regexp: boolean): string {
    switch (token.kind) {
      case "value":
      case "field":
        return token.text;
      case "quoted":
        return this.#unquote(token, regexp);
      case "illegal":
        throw this.#illegal(token);
    }
    throw this.#fail(token.pos, `expected a value or quoted string but found ${describe(token)}`);
  }

  #unquote(token: Token, regexp: boolean): string {
    const quote = token.text.charAt(0);
    if (!regexp && quote !== '"') {
      throw this.#fail(
        token.pos,
        `invalid quote ${quote}: ${quote}…${quote} quoting is only allowed for "~=" values`,
      );
    }
    try {
      return unquote(token.text);
    } catch (err) {
      if (!(err instanceof QuoteSyntaxError)) throw err;
      throw this.#fail(token.pos + err.offset, err.message);
    }
  }
}

/**
 * Parse one filter string into its selectors (an empty or blank string gives none), compiling
 * the regular expressions of `~=` selectors.
 *
 * @throws {TainerdError} of kind InvalidArgument, whose message quotes the filter and gives
 * the code point position of the fault.
 */
export function parseSelectors(filter: string): SelectorSpec[] {
  return new Parser(filter).parse();
}
