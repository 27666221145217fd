/**
 * Test helper: a docker token server (Deno.serve on 127.0.0.1) issuing RS256 JWTs that a real
 * distribution registry accepts: the signing certificate travels in the `x5c` header and is the
 * registry's `rootcertbundle`. Anonymous clients get `pull` only; users with the right password
 * get what they ask for. Answers `GET /token` (basic auth) and the OAuth2 `POST /token`.
 *
 * @module
 */

import { Buffer } from "node:buffer";
import { createSign, randomUUID } from "node:crypto";

/** Options of {@link startTokenServer}. */
export interface TokenServerOptions {
  /** PEM of the signing certificate and its key. */
  cert: string;
  key: string;
  issuer: string;
  service: string;
  /** user → password. */
  users: Record<string, string>;
  /** Answer the OAuth2 POST (default true); false makes it 404 so clients fall back to GET. */
  oauth?: boolean;
  /** Token lifetime in seconds (default 300). */
  expiresIn?: number;
}

/** A logged token request. */
export interface TokenRequestLog {
  method: string;
  user: string;
  scopes: string[];
  granted: boolean;
}

/** A running token server. */
export interface TokenServer {
  realm: string;
  requests: TokenRequestLog[];
  stop(): Promise<void>;
}

function base64url(data: string | Uint8Array): string {
  return Buffer.from(data).toString("base64url");
}

interface Access {
  type: string;
  name: string;
  actions: string[];
}

function parseScope(scope: string): Access | undefined {
  const first = scope.indexOf(":");
  const last = scope.lastIndexOf(":");
  if (first < 0 || last <= first) return undefined;
  return {
    type: scope.slice(0, first),
    name: scope.slice(first + 1, last),
    actions: scope.slice(last + 1).split(",").filter(Boolean),
  };
}

/** Starts the token server. */
export function startTokenServer(options: TokenServerOptions): TokenServer {
  const der = options.cert.replace(/-----(BEGIN|END) CERTIFICATE-----/g, "").replace(/\s+/g, "");
  const requests: TokenRequestLog[] = [];

  const issue = (user: string, scopes: string[]) => {
    const now = Math.floor(Date.now() / 1000);
    const access: Access[] = [];
    for (const s of scopes) {
      const parsed = parseScope(s);
      if (!parsed) continue;
      if (!user) parsed.actions = parsed.actions.filter((a) => a === "pull");
      access.push(parsed);
    }
    const header = { typ: "JWT", alg: "RS256", x5c: [der] };
    const claims = {
      iss: options.issuer,
      sub: user,
      aud: options.service,
      exp: now + (options.expiresIn ?? 300),
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const input = `${base64url(JSON.stringify(header))}.${base64url(JSON.stringify(claims))}`;
    const signature = createSign("RSA-SHA256").update(input).sign(options.key);
    return `${input}.${base64url(signature)}`;
  };

  const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, async (req) => {
    const url = new URL(req.url);
    if (url.pathname !== "/token") return new Response("not found", { status: 404 });
    let user = "";
    let password = "";
    let scopes: string[] = [];
    if (req.method === "POST") {
      if (options.oauth === false) {
        requests.push({ method: "POST", user: "", scopes: [], granted: false });
        return new Response("not found", { status: 404 });
      }
      const form = new URLSearchParams(await req.text());
      if (form.get("grant_type") !== "password") {
        return Response.json({ error: "unsupported_grant_type" }, { status: 400 });
      }
      user = form.get("username") ?? "";
      password = form.get("password") ?? "";
      scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
    } else {
      const auth = req.headers.get("authorization");
      if (auth?.startsWith("Basic ")) {
        const decoded = Buffer.from(auth.slice(6), "base64").toString("utf8");
        const i = decoded.indexOf(":");
        user = decoded.slice(0, i);
        password = decoded.slice(i + 1);
      }
      scopes = url.searchParams.getAll("scope").flatMap((s) => s.split(" ")).filter(Boolean);
    }
    if (user && options.users[user] !== password) {
      requests.push({ method: req.method, user, scopes, granted: false });
      return Response.json({ errors: [{ code: "UNAUTHORIZED", message: "bad credentials" }] }, {
        status: 401,
      });
    }
    requests.push({ method: req.method, user, scopes, granted: true });
    const token = issue(user, scopes);
    const body = req.method === "POST"
      ? { access_token: token, expires_in: options.expiresIn ?? 300, scope: scopes.join(" ") }
      : { token, expires_in: options.expiresIn ?? 300 };
    return Response.json(body);
  });
  return {
    realm: `http://127.0.0.1:${server.addr.port}/token`,
    requests,
    stop: () => server.shutdown(),
  };
}
