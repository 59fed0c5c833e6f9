// The official `openai` npm client sending images (data URLs) to gemmashard (driven by test_images.py).
//
//   node openai_images.mjs NODE_MODULES BASE_URL MODEL CASES.json
//
// CASES.json: {"chat": messages, "two": messages, "http_url": messages} (messages with image_url parts).
// Prints one JSON object with what the client saw.
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";

const [nodeModules, baseURL, model, casesPath] = process.argv.slice(2);
const require = createRequire(path.join(path.resolve(nodeModules), "noop.js"));
const OpenAI = require("openai");
const cases = JSON.parse(fs.readFileSync(casesPath, "utf8"));

const client = new OpenAI({ baseURL, apiKey: "none", maxRetries: 0, timeout: 60000 });
const out = {};

async function errorOf(fn) {
  try {
    await fn();
    return { thrown: false };
  } catch (e) {
    return { thrown: true, status: e.status, param: e.param ?? null, message: e.message };
  }
}

const ask = (messages, extra = {}) => client.chat.completions.create({
  model, messages, max_tokens: 8, temperature: 0, ...extra });

const one = await ask(cases.chat);
out.chat = { text: one.choices[0].message.content, finish: one.choices[0].finish_reason, usage: one.usage };

let text = "", usage = null;
for await (const chunk of await ask(cases.chat, { stream: true, stream_options: { include_usage: true } })) {
  if (chunk.usage) usage = chunk.usage;
  text += chunk.choices[0]?.delta?.content ?? "";
}
out.chat_stream = { text, usage };

const two = await ask(cases.two);
out.two = { text: two.choices[0].message.content, usage: two.usage };

out.err_http_url = await errorOf(() => ask(cases.http_url));
out.after_error = (await ask(cases.chat)).choices[0].message.content;

console.log(JSON.stringify(out));
