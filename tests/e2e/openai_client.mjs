// The official `openai` npm client against gemmashard's HTTP API (driven by test_http.py).
//
//   node openai_client.mjs NODE_MODULES BASE_URL API_KEY MODEL
//
// Prints one JSON object with what the client saw; test_http.py checks it against curl and
// the reference engine. Anything the client throws that the test did not provoke fails it.
import { createRequire } from "node:module";
import path from "node:path";

const [nodeModules, baseURL, apiKey, model] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(nodeModules), "noop.js"));
const OpenAI = require("openai");

const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const messages = [{ role: "user", content: "What is a fever?" }];
const out = {};

async function errorOf(fn) {
  try {
    await fn();
    return { thrown: false };
  } catch (e) {
    return { thrown: true, cls: e.constructor.name, status: e.status, param: e.param ?? null,
             code: e.code ?? null, type: e.type ?? null, message: e.message };
  }
}

out.models = (await client.models.list()).data.map((m) => ({ id: m.id, object: m.object, owned_by: m.owned_by }));
out.model = await client.models.retrieve(model);

const chat = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 });
out.chat = { text: chat.choices[0].message.content, role: chat.choices[0].message.role,
             finish: chat.choices[0].finish_reason, usage: chat.usage, id: chat.id, object: chat.object };

let text = "", role = null, finish = null, usage = null, nChunks = 0;
const stream = await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0,
                                                       stream: true, stream_options: { include_usage: true } });
for await (const chunk of stream) {
  nChunks++;
  if (chunk.usage) usage = chunk.usage;
  const c = chunk.choices[0];
  if (!c) continue;
  if (c.delta.role) role = c.delta.role;
  if (c.delta.content) text += c.delta.content;
  if (c.finish_reason) finish = c.finish_reason;
}
out.chat_stream = { text, role, finish, usage, chunks: nChunks };

const seeded = { model, messages, max_tokens: 16, temperature: 0.9, top_p: 0.95, seed: 1234 };
out.seeded = (await client.chat.completions.create(seeded)).choices[0].message.content;
text = "";
for await (const chunk of await client.chat.completions.create({ ...seeded, stream: true })) {
  text += chunk.choices[0]?.delta?.content ?? "";
}
out.seeded_stream = text;

const cmpl = await client.completions.create({ model, prompt: "The patient presented with", max_tokens: 10,
                                                temperature: 0, logprobs: 2 });
out.completion = { text: cmpl.choices[0].text, finish: cmpl.choices[0].finish_reason, usage: cmpl.usage,
                   logprobs: cmpl.choices[0].logprobs, object: cmpl.object };
text = "";
for await (const chunk of await client.completions.create({ model, prompt: "The patient presented with",
                                                              max_tokens: 10, temperature: 0, stream: true })) {
  text += chunk.choices[0]?.text ?? "";
}
out.completion_stream = text;

const lp = await client.chat.completions.create({ model, messages, max_tokens: 5, temperature: 0, logprobs: true,
                                                   top_logprobs: 2 });
out.chat_logprobs = lp.choices[0].logprobs;

// issue 16: logit_bias (+100 on token 4321: every token is it), the OpenAI penalties, and tools refused
const biased = await client.completions.create({ model, prompt: "The patient presented with", max_tokens: 6,
  temperature: 0.9, seed: 3, logit_bias: { 4321: 100 }, frequency_penalty: 0, presence_penalty: 0, logprobs: 0 });
out.logit_bias = { tokens: biased.choices[0].logprobs.tokens, finish: biased.choices[0].finish_reason };
out.err_tools = await errorOf(() => client.chat.completions.create({ model, messages,
  tools: [{ type: "function", function: { name: "f", parameters: {} } }] }));
// issue 16: structured output -- a JSON Schema the random-weight model's answer must satisfy
const structured = await client.chat.completions.create({ model, messages, max_tokens: 48, temperature: 0,
  response_format: { type: "json_schema", json_schema: { name: "triage", strict: true, schema: {
    type: "object", properties: { diagnosis: { type: "string", maxLength: 12 }, urgent: { type: "boolean" } },
    required: ["diagnosis", "urgent"], additionalProperties: false } } } });
out.structured = { text: structured.choices[0].message.content, finish: structured.choices[0].finish_reason };
out.err_schema = await errorOf(() => client.chat.completions.create({ model, messages, response_format: {
  type: "json_schema", json_schema: { name: "d", schema: { type: "string", format: "date" } } } }));
out.err_top_p = await errorOf(() => client.chat.completions.create({ model, messages, top_p: 1.5 }));
out.err_model = await errorOf(() => client.chat.completions.create({ model: "gpt-5", messages }));
out.err_n = await errorOf(() => client.chat.completions.create({ model, messages, n: 9 }));
// n = 2 (seeds 5 and 6): two choices, index 0 and 1, usage summed; streamed: chunks per index
const n2 = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 1, seed: 5, n: 2,
  logprobs: true });
out.n2 = { choices: n2.choices.map((c) => ({ index: c.index, text: c.message.content, finish: c.finish_reason,
  lps: c.logprobs.content.map((e) => e.logprob) })), usage: n2.usage };
const n2s = await client.chat.completions.create({ model, messages, max_tokens: 8, temperature: 1, seed: 5, n: 2,
  stream: true, stream_options: { include_usage: true } });
out.n2_stream = { text: ["", ""], finish: [null, null], usage: null };
for await (const ch of n2s) {
  if (ch.usage) out.n2_stream.usage = ch.usage;
  for (const c of ch.choices) {
    out.n2_stream.text[c.index] += c.delta.content ?? "";
    if (c.finish_reason) out.n2_stream.finish[c.index] = c.finish_reason;
  }
}
out.err_key = await errorOf(() => new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 }).models.list());
out.after_errors = (await client.chat.completions.create({ model, messages, max_tokens: 12, temperature: 0 }))
  .choices[0].message.content;

console.log(JSON.stringify(out));
