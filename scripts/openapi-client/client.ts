// A client generated from the server's own /openapi.json (openapi-typescript + openapi-fetch):
// it must type-check with strict TypeScript and work against a running `axoiso serve`.
import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";

type Tier = components["schemas"]["Tier"];

const client = createClient<paths>({ baseUrl: process.argv[2] });

function check(ok: boolean, what: string): void {
  if (!ok) {
    console.error("openapi client: " + what);
    process.exit(1);
  }
}

const tools = await client.GET("/v1/tools");
check(tools.data !== undefined, "GET /v1/tools failed");
const names: string[] = tools.data!.tools.map((t) => t.name);
check(names.includes("echo"), "no echo tool in " + names.join(","));
const one = await client.GET("/v1/tools/{name}", { params: { path: { name: "echo" } } });
const schema = one.data?.input_schema;
check(schema !== undefined, "GET /v1/tools/echo has no input_schema");
// A schema is an open object: with {type: object} alone it was Record<string, never>, to which
// no schema can be assigned.
const probe: NonNullable<components["schemas"]["Tool"]["input_schema"]> = { type: "object", properties: {} };
check(typeof probe === "object", "probe");

const call = await client.POST("/v1/tools/{name}/call", { params: { path: { name: "echo" } }, body: { x: 1 } });
check(call.data !== undefined, "POST /call failed");
const tier: Tier = call.data!.tier;
const stdout: string = call.data!.stdout;
const timeoutMs: number = call.data!.limits!.timeout_ms;
check(JSON.stringify(call.data!.output) === '{"x":1}' && tier === "None" && typeof stdout === "string" && timeoutMs > 0, "envelope " + JSON.stringify(call.data));

const exec = await client.POST("/v1/tools/{name}/execute", { params: { path: { name: "echo" } }, body: { y: [2] } });
const output: unknown = exec.data;
check(JSON.stringify(output) === '{"y":[2]}', "execute returned " + JSON.stringify(output));

const missing = await client.POST("/v1/tools/{name}/execute", { params: { path: { name: "no-such-tool" } }, body: {} });
check(missing.response.status === 404 && missing.error?.error.kind === "tool_not_found", "unknown tool: " + JSON.stringify(missing.error));

console.log(`openapi client: ok (${names.length} tools, tier ${tier})`);
