// Drives tapwire's MCP server with the official client SDK, as an AI
// assistant's host would: over stdio (`tapwire mcp`, spawned) and over
// Streamable HTTP (`tapwire serve`'s POST /mcp). For each transport of the
// plan it lists the tools (checking each has an object inputSchema), calls
// the plan's tools, gets its prompts, pings, and prints everything as one
// JSON object on stdout for tests/integration/test_mcp.py to compare with
// the HTTP API's answers.
//
//   node tests/mcp/client.mjs PLAN.json
//
// PLAN: {"transports": [{"name": "stdio", "command": "tapwire", "args": ["mcp", ...]},
//                       {"name": "http", "url": "http://127.0.0.1:8899/mcp", "headers": {...}}],
//        "calls": [{"name": TOOL, "arguments": {...}, "only": TRANSPORT?}],
//        "prompts": [{"name": PROMPT, "arguments": {...}}]}
import { readFileSync } from 'node:fs';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { AjvJsonSchemaValidator } from '@modelcontextprotocol/sdk/validation/ajv';

const plan = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const out = {};
const problems = [];
// The SDK's JSON Schema validator (Ajv): each inputSchema must compile, and
// the plan's arguments must be valid for it.
const ajv = new AjvJsonSchemaValidator();

for (const t of plan.transports) {
  const client = new Client({ name: 'tapwire-integration-test', version: '1.0.0' });
  const transport = t.url
    ? new StreamableHTTPClientTransport(new URL(t.url), { requestInit: { headers: t.headers ?? {} } })
    : new StdioClientTransport({ command: t.command, args: t.args ?? [], stderr: 'inherit' });
  await client.connect(transport);
  const r = {
    server: client.getServerVersion(),
    capabilities: client.getServerCapabilities(),
    instructions: client.getInstructions(),
    session: t.url ? transport.sessionId ?? null : null,
    protocol_version: t.url ? transport.protocolVersion ?? null : null,
  };
  r.tools = (await client.listTools()).tools;
  const validators = new Map();
  for (const tool of r.tools) {
    const s = tool.inputSchema;
    if (!s || typeof s !== 'object' || Array.isArray(s) || s.type !== 'object' ||
        (s.properties !== undefined && (typeof s.properties !== 'object' || Array.isArray(s.properties))))
      problems.push(`${t.name}: ${tool.name}: inputSchema is not an object schema: ${JSON.stringify(s)}`);
    if (!tool.description) problems.push(`${t.name}: ${tool.name}: no description`);
    try {
      validators.set(tool.name, ajv.getValidator(s));
    } catch (e) {
      problems.push(`${t.name}: ${tool.name}: inputSchema does not compile: ${e.message ?? e}`);
    }
  }
  const offered = new Set(r.tools.map((x) => x.name));
  r.calls = [];
  for (const c of plan.calls) {
    if (c.only && c.only !== t.name) continue;
    const entry = { name: c.name, arguments: c.arguments ?? {} };
    if (!offered.has(c.name)) {
      entry.offered = false;
    } else {
      const check = validators.get(c.name)?.(entry.arguments);
      if (check && !check.valid)
        problems.push(`${t.name}: ${c.name}: arguments ${JSON.stringify(entry.arguments)} not valid: ${check.errorMessage}`);
      try {
        entry.result = await client.callTool({ name: c.name, arguments: entry.arguments });
      } catch (e) {
        entry.error = { code: e.code ?? null, message: String(e.message ?? e) };
      }
    }
    r.calls.push(entry);
  }
  const called = new Set(r.calls.filter((c) => c.offered !== false).map((c) => c.name));
  r.uncalled = [...offered].filter((n) => !called.has(n));
  r.prompts = (await client.listPrompts()).prompts;
  r.prompt_results = [];
  for (const p of plan.prompts ?? []) {
    try {
      r.prompt_results.push({ name: p.name, result: await client.getPrompt({ name: p.name, arguments: p.arguments ?? {} }) });
    } catch (e) {
      r.prompt_results.push({ name: p.name, error: { code: e.code ?? null, message: String(e.message ?? e) } });
    }
  }
  r.ping = await client.ping();
  await client.close();
  out[t.name] = r;
}
out.problems = problems;
// Exit only once the output is written: a pipe takes it asynchronously.
process.stdout.write(JSON.stringify(out) + '\n', () => process.exit(problems.length ? 1 : 0));
