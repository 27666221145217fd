import assert from "node:assert/strict";
import { type ErrorKind, notFound, TainerdError } from "../plugins/errdefs.ts";
import {
  Code,
  codeName,
  codeToKind,
  errorToStatus,
  KIND_TO_CODE,
  kindToCode,
  StatusError,
  statusToError,
} from "./codes.ts";

Deno.test("KIND_TO_CODE maps each error kind to its gRPC code and back", () => {
  const expected: Record<ErrorKind, number> = {
    Canceled: 1,
    InvalidArgument: 3,
    DeadlineExceeded: 4,
    NotFound: 5,
    AlreadyExists: 6,
    PermissionDenied: 7,
    ResourceExhausted: 8,
    FailedPrecondition: 9,
    Aborted: 10,
    OutOfRange: 11,
    NotImplemented: 12,
    Internal: 13,
    Unavailable: 14,
  };
  assert.deepEqual({ ...KIND_TO_CODE }, expected);
  for (const [kind, code] of Object.entries(expected)) {
    assert.equal(kindToCode(kind as ErrorKind), code);
    assert.equal(codeToKind(code), kind);
  }
  assert.equal(codeToKind(Code.Unknown), "Internal");
  assert.equal(codeToKind(Code.DataLoss), "Internal");
  assert.equal(codeToKind(Code.Unauthenticated), "PermissionDenied");
  assert.equal(codeToKind(99), "Internal");
});

Deno.test("errorToStatus() keeps kinds and messages; plain errors are Unknown", () => {
  assert.deepEqual(errorToStatus(notFound(`Container "a" not found`)), {
    code: 5,
    message: `Container "a" not found`,
  });
  assert.deepEqual(errorToStatus(new Error("boom")), { code: 2, message: "boom" });
  assert.deepEqual(errorToStatus("str"), { code: 2, message: "str" });
  assert.deepEqual(errorToStatus(new StatusError(Code.DataLoss, "lost")), {
    code: 15,
    message: "lost",
  });
});

Deno.test("statusToError() builds a TainerdError with the kind and verbatim message", () => {
  const err = statusToError({ code: 6, message: `Image "x" already exists` });
  assert.ok(err instanceof TainerdError);
  assert.equal(err.kind, "AlreadyExists");
  assert.equal(err.code, 6);
  assert.equal(err.message, `Image "x" already exists`);
  assert.equal(statusToError({ code: 12, message: "" }).message, "Unimplemented");
  assert.equal(codeName(4), "DeadlineExceeded");
});
