// The GraphQL Foundation's GraphQL-over-HTTP audit suite against a live gateway (TILLIT_URL).
// Every MUST and every SHOULD passes, except the ones listed below with the reason they are
// deliberate; MAY audits are reported, never required.
import { test } from "node:test";
import assert from "node:assert/strict";
import { auditServer } from "graphql-http";

const INTROSPECTION =
  "it sends `__type(...)`, and introspection is refused outside dev mode (README: Limits)";
const DELIBERATE = {
  "2EA1": INTROSPECTION,
  "28B9": INTROSPECTION,
};

test("the GraphQL-over-HTTP audit suite passes every MUST and SHOULD", async () => {
  const url = `${process.env.TILLIT_URL}/graphql`;
  const results = await auditServer({ url });
  const counts = {};
  const failed = [];
  for (const result of results) {
    const level = result.name.split(" ")[0];
    const outcome = result.status === "ok" ? "pass" : "fail";
    counts[level] ??= { pass: 0, fail: 0 };
    counts[level][outcome] += 1;
    if (result.status !== "ok") {
      const deliberate = DELIBERATE[result.id];
      const line = `${result.id} ${result.name}: ${result.reason}`;
      console.log(deliberate ? `deliberate: ${line} (${deliberate})` : `fails: ${line}`);
      if (level !== "MAY" && !deliberate) failed.push(line);
    }
  }
  for (const [level, { pass, fail }] of Object.entries(counts)) {
    console.log(`audit ${level}: ${pass} pass, ${fail} fail`);
  }
  assert.deepEqual(failed, []);
});
