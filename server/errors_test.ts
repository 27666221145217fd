import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  alreadyExists,
  type ErrorKind,
  failedPrecondition,
  invalidArgument,
  notFound,
  TainerdError,
  unavailable,
} from "../plugins/errdefs.ts";
import { classify, fromConnectError, KIND_TO_CODE, kindOfCode, toConnectError } from "./errors.ts";

Deno.test("toConnectError() maps each error kind to its gRPC code, keeping the message", () => {
  const cases: [TainerdError, Code][] = [
    [notFound("Cannot get x: not found"), Code.NotFound],
    [alreadyExists("x exists"), Code.AlreadyExists],
    [invalidArgument("bad x"), Code.InvalidArgument],
    [failedPrecondition("x not empty"), Code.FailedPrecondition],
    [unavailable("x locked"), Code.Unavailable],
    [new TainerdError("NotImplemented", "no x"), Code.Unimplemented],
  ];
  for (const [err, code] of cases) {
    const ce = toConnectError(err);
    assert.equal(ce.code, code);
    assert.equal(ce.rawMessage, err.message);
  }
});

Deno.test("KIND_TO_CODE and kindOfCode() are inverse for every kind", () => {
  for (const [kind, code] of Object.entries(KIND_TO_CODE)) {
    assert.equal(kindOfCode(code), kind as ErrorKind);
    assert.equal(typeof Code[code], "string", `${kind} maps to a real Connect code`);
  }
  assert.equal(kindOfCode(Code.Unknown), "Internal");
});

Deno.test("classify() maps Deno's errors and hides nothing but the stack", () => {
  assert.equal(classify(new Deno.errors.NotFound("no file")).kind, "NotFound");
  assert.equal(classify(new Deno.errors.AlreadyExists("exists")).kind, "AlreadyExists");
  assert.equal(classify(new Deno.errors.PermissionDenied("denied")).kind, "PermissionDenied");
  const internal = toConnectError(new TypeError("x is undefined"));
  assert.equal(internal.code, Code.Internal);
  assert.equal(internal.rawMessage, "x is undefined");
  assert.ok(!internal.rawMessage.includes("at "), "no stack trace in the message");
});

Deno.test("fromConnectError() gives clients classified errors back", () => {
  const back = fromConnectError(new ConnectError('Namespace "x" not found', Code.NotFound));
  assert.ok(back instanceof TainerdError);
  assert.equal(back.kind, "NotFound");
  assert.equal(back.message, 'Namespace "x" not found');
});
