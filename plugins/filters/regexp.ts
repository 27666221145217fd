/**
 * Regular expressions for the `~=` operator. containerd compiles them with Go's `regexp`
 * (RE2 syntax); here they run on JavaScript's `RegExp` (with the `u` flag) after a small
 * translation of the RE2 forms that JavaScript spells differently or lacks:
 *
 * - inline flags `(?i)`, `(?ims-s)` anywhere (scoped to the rest of the enclosing group) and
 *   `(?i:…)` groups; the `U` (ungreedy) flag is rejected;
 * - named groups `(?P<name>…)`;
 * - `\A`, `\z`, `\Q…\E`, `\x{10FFFF}`, `\pL`, `\p{Greek}`, `\p{^Greek}`, octal `\0`/`\123`,
 *   `\a`, ASCII-only `\s`/`\S`, escaped punctuation (`\-`, `\"`, …);
 * - POSIX classes `[[:alpha:]]`;
 * - a `{` that does not start a repetition, and stray `}` / `]`, are literal; repeat counts
 *   above 1000 are rejected.
 *
 * JavaScript accepts a few things RE2 rejects (lookaround, backreferences); those are let
 * through. `.` does not match `\r`, U+2028 or U+2029 in JavaScript, where RE2's does.
 *
 * @module
 */

/** A regular expression that cannot be compiled; the message says why (lower case). */
export class RegexpSyntaxError extends Error {
  /** An error with the given reason. */
  constructor(message: string) {
    super(message);
    this.name = "RegexpSyntaxError";
  }
}

/** POSIX classes as RE2 defines them (ASCII only), as JavaScript class ranges. */
const POSIX_CLASSES: Readonly<Record<string, string>> = {
  alnum: "0-9A-Za-z",
  alpha: "A-Za-z",
  ascii: "\\x00-\\x7F",
  blank: "\\t ",
  cntrl: "\\x00-\\x1F\\x7F",
  digit: "0-9",
  graph: "!-~",
  lower: "a-z",
  print: " -~",
  punct: "!-\\/:-@\\[-`\\{-~",
  space: "\\t\\n\\v\\f\\r ",
  upper: "A-Z",
  word: "0-9A-Za-z_",
  xdigit: "0-9A-Fa-f",
};

/** Characters that JavaScript lets (and sometimes requires) a `\` escape in `u` mode. */
const JS_SYNTAX = new Set(Array.from("^$\\.*+?()[]{}|/"));
const OCTAL = /^[0-7]$/;
const MAX_REPEAT = 1000;

/** Whether `c` is ASCII but not a letter or digit: RE2 lets `\\` escape any of those. */
function isAsciiNonWord(c: string): boolean {
  return c.length === 1 && c.charCodeAt(0) < 0x80 && !/^[A-Za-z0-9]$/.test(c);
}

function literal(c: string, inClass: boolean): string {
  return JS_SYNTAX.has(c) || (inClass && c === "-") ? "\\" + c : c;
}

function unicodeClass(name: string, negated: boolean): string {
  if (!/^[A-Za-z_]+$/.test(name)) {
    throw new RegexpSyntaxError(`invalid Unicode class name "${name}"`);
  }
  const p = negated ? "P" : "p";
  for (const candidate of [name, `Script=${name}`]) {
    try {
      new RegExp(`\\p{${candidate}}`, "u");
      return `\\${p}{${candidate}}`;
    } catch {
      // try the next spelling
    }
  }
  throw new RegexpSyntaxError(`unknown Unicode class "${name}"`);
}

function indexOf(cs: readonly string[], from: number, a: string, b?: string): number {
  for (let k = from; k < cs.length; k++) {
    if (cs[k] === a && (b === undefined || cs[k + 1] === b)) return k;
  }
  return -1;
}

/** Translate the escape sequence at `cs[i]` (a backslash); returns the text and next index. */
function escape(cs: readonly string[], i: number, inClass: boolean): [string, number] {
  const e = cs[i + 1];
  if (e === undefined) throw new RegexpSyntaxError("trailing backslash at end of expression");
  switch (e) {
    case "A":
    case "z":
      if (inClass) throw new RegexpSyntaxError(`invalid escape \\${e} in character class`);
      return [e === "A" ? "(?<![\\s\\S])" : "(?![\\s\\S])", i + 2];
    case "Q": {
      if (inClass) break;
      const end = indexOf(cs, i + 2, "\\", "E");
      const stop = end < 0 ? cs.length : end;
      const text = cs.slice(i + 2, stop).map((c) => literal(c, false)).join("");
      return [text, end < 0 ? cs.length : end + 2];
    }
    case "x": {
      if (cs[i + 2] !== "{") break;
      const end = indexOf(cs, i + 3, "}");
      const hex = end < 0 ? "" : cs.slice(i + 3, end).join("");
      if (!/^[0-9A-Fa-f]{1,8}$/.test(hex) || parseInt(hex, 16) > 0x10ffff) {
        throw new RegexpSyntaxError("invalid escape sequence \\x{…}");
      }
      return [`\\u{${hex}}`, end + 1];
    }
    case "p":
    case "P": {
      let name: string;
      let next: number;
      if (cs[i + 2] === "{") {
        const end = indexOf(cs, i + 3, "}");
        if (end < 0) throw new RegexpSyntaxError(`unterminated Unicode class \\${e}{`);
        name = cs.slice(i + 3, end).join("");
        next = end + 1;
      } else {
        name = cs[i + 2] ?? "";
        next = i + 3;
      }
      let negated = e === "P";
      if (name.startsWith("^")) {
        negated = !negated;
        name = name.slice(1);
      }
      return [unicodeClass(name, negated), next];
    }
    case "a":
      return ["\\x07", i + 2];
    case "s":
      return [inClass ? "\\t\\n\\f\\r " : "[\\t\\n\\f\\r ]", i + 2];
    case "S":
      return [inClass ? "\\S" : "[^\\t\\n\\f\\r ]", i + 2];
    case "C":
      throw new RegexpSyntaxError("\\C (any byte) is not supported");
  }
  if (e >= "0" && e <= "9") {
    if (e === "0" || (e <= "7" && OCTAL.test(cs[i + 2] ?? ""))) {
      let v = Number(e);
      let k = i + 2;
      while (k < i + 4 && OCTAL.test(cs[k] ?? "")) v = v * 8 + Number(cs[k++]);
      return [`\\u{${v.toString(16)}}`, k];
    }
    throw new RegexpSyntaxError(
      `invalid escape sequence \\${e} (backreferences are not supported)`,
    );
  }
  if (isAsciiNonWord(e)) return [literal(e, inClass), i + 2];
  return ["\\" + e, i + 2]; // \d \w \b \n …: same in both; JavaScript rejects the unknown ones
}

/** Translate the character class opening at `cs[i]`; returns the text and next index. */
function charClass(cs: readonly string[], i: number): [string, number] {
  let out = "[";
  i++;
  if (cs[i] === "^") {
    out += "^";
    i++;
  }
  if (cs[i] === "]") {
    out += "\\]"; // RE2: a leading ] is literal
    i++;
  }
  for (;;) {
    const c = cs[i];
    if (c === undefined) throw new RegexpSyntaxError("missing closing ] in character class");
    if (c === "]") return [out + "]", i + 1];
    if (c === "\\") {
      const [text, next] = escape(cs, i, true);
      out += text;
      i = next;
      continue;
    }
    if (c === "[" && cs[i + 1] === ":") {
      const end = indexOf(cs, i + 2, ":", "]");
      const name = end < 0 ? "" : cs.slice(i + 2, end).join("");
      if (/^\^?[a-z]+$/.test(name)) {
        const base = name.replace(/^\^/, "");
        if (!Object.hasOwn(POSIX_CLASSES, base)) {
          throw new RegexpSyntaxError(`invalid character class [:${name}:]`);
        }
        if (base !== name) {
          throw new RegexpSyntaxError(`negated POSIX class [:${name}:] is not supported`);
        }
        out += POSIX_CLASSES[base];
        i = end + 2;
        continue;
      }
    }
    out += c === "[" ? "\\[" : c;
    i++;
  }
}

/** Translate an RE2 pattern to the source of an equivalent JavaScript `u`-mode RegExp. */
export function translateRegexp(pattern: string): string {
  const cs = Array.from(pattern);
  // Per open group: the inline flag sets `(?f)` opened in it, each emitted as `(?f:`, which
  // must be closed at every `|` (and reopened after it) and at the end of the group.
  const groups: string[][] = [[]];
  let out = "";
  let i = 0;
  while (i < cs.length) {
    const c = cs[i];
    switch (c) {
      case "\\": {
        const [text, next] = escape(cs, i, false);
        out += text;
        i = next;
        break;
      }
      case "[": {
        const [text, next] = charClass(cs, i);
        out += text;
        i = next;
        break;
      }
      case "(": {
        const head = cs.slice(i, i + 32).join("");
        if (head.startsWith("(?P<")) {
          out += "(?<";
          i += 4;
          groups.push([]);
          break;
        }
        const m = /^\(\?([A-Za-z]*)(?:-([A-Za-z]*))?([:)])/.exec(head);
        if (m && (m[1] !== "" || m[2] !== undefined)) {
          const [whole, on, off, end] = m;
          for (const flag of on + (off ?? "")) {
            if (flag === "U") throw new RegexpSyntaxError("the U (ungreedy) flag is not supported");
            if (!"ims".includes(flag)) throw new RegexpSyntaxError(`invalid flag "${flag}"`);
          }
          if (off === "") throw new RegexpSyntaxError("missing flag after - in group flags");
          const flags = on + (off ? `-${off}` : "");
          out += `(?${flags}:`;
          i += whole.length;
          if (end === ":") groups.push([]);
          else groups[groups.length - 1].push(flags);
          break;
        }
        out += "(";
        i++;
        groups.push([]);
        break;
      }
      case ")": {
        if (groups.length > 1) out += ")".repeat(groups.pop()?.length ?? 0);
        out += ")";
        i++;
        break;
      }
      case "|": {
        const open = groups[groups.length - 1];
        out += ")".repeat(open.length) + "|" + open.map((f) => `(?${f}:`).join("");
        i++;
        break;
      }
      case "{": {
        const m = /^\{(\d+)(?:,(\d*))?\}/.exec(cs.slice(i, i + 24).join(""));
        if (!m) {
          out += "\\{";
          i++;
          break;
        }
        if (Number(m[1]) > MAX_REPEAT || (m[2] !== undefined && Number(m[2]) > MAX_REPEAT)) {
          throw new RegexpSyntaxError(`invalid repeat count ${m[0]} (at most ${MAX_REPEAT})`);
        }
        out += m[0];
        i += m[0].length;
        break;
      }
      case "}":
      case "]":
        out += "\\" + c;
        i++;
        break;
      default:
        out += c;
        i++;
    }
  }
  for (let g = groups.length - 1; g >= 0; g--) out += ")".repeat(groups[g].length);
  return out;
}

/**
 * Compile an RE2-style pattern (see the module documentation) to a RegExp that searches
 * anywhere in a string, like Go's `MatchString`.
 *
 * @throws {RegexpSyntaxError} when the pattern is invalid or uses an unsupported feature.
 */
export function compileRegexp(pattern: string): RegExp {
  const source = translateRegexp(pattern);
  try {
    return new RegExp(source, "u");
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    const reason = message.slice(message.lastIndexOf(": ") + 2);
    throw new RegexpSyntaxError(reason.charAt(0).toLowerCase() + reason.slice(1));
  }
}
