// Parse mermaid blocks with mermaid's own parser (what GitHub renders with).
// stdin: a JSON list of diagram texts; stdout: a JSON list of null (parsed) or the parse error's first lines.
// Run from the directory where `mermaid` and `jsdom` are installed (tests/mermaid_check.py copies it there).
import { JSDOM } from "jsdom";
const dom = new JSDOM("<!DOCTYPE html><body></body>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");
let input = "";
for await (const chunk of process.stdin) input += chunk;
const results = [];
for (const text of JSON.parse(input)) {
  try {
    await mermaid.parse(text);
    results.push(null);
  } catch (error) {
    results.push(String(error).split("\n").slice(0, 4).join("\n"));
  }
}
process.stdout.write(JSON.stringify(results));
