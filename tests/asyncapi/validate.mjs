// Parses AsyncAPI documents with the official parser and prints their diagnostics.
//   node tests/asyncapi/validate.mjs docs/asyncapi.json            one line per diagnostic
//   node tests/asyncapi/validate.mjs --json a.json b.json          {path: [diagnostic, ...]} (what the tests read)
// Exits 1 when any diagnostic is an error (or a document cannot be parsed at all), else 0.
import { fromFile, Parser, DiagnosticSeverity } from "@asyncapi/parser";

const args = process.argv.slice(2);
const asJson = args[0] === "--json";
const paths = asJson ? args.slice(1) : args;
if (paths.length === 0) {
  console.error("usage: node validate.mjs [--json] <asyncapi document>...");
  process.exit(2);
}

const SEVERITY = Object.fromEntries(Object.entries(DiagnosticSeverity).map(([name, value]) => [value, name.toLowerCase()]));
const parser = new Parser();
const results = {};
let failed = false;
for (const path of paths) {
  const { document, diagnostics } = await fromFile(parser, path).parse();
  results[path] = diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    code: String(d.code),
    path: d.path.join("."),
    message: d.message,
  }));
  failed ||= document === undefined || results[path].some((d) => d.severity === "error");
}
if (asJson) {
  console.log(JSON.stringify(results, null, 2));
} else {
  for (const [path, found] of Object.entries(results)) {
    for (const d of found) console.log(`${path}\t${d.severity}\t${d.code}\t${d.path || "(root)"}\t${d.message}`);
  }
}
process.exit(failed ? 1 : 0);
