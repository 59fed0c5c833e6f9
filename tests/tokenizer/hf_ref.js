// Reference outputs from Hugging Face tokenizers (node binding @anush008/tokenizers).
// usage: node hf_ref.js tokenizer.json corpus.jsonl ref.jsonl decode_cases.jsonl decode_ref.jsonl
'use strict';
const fs = require('fs');
const { Tokenizer } = require('@anush008/tokenizers');

function lines(path) {
  const s = fs.readFileSync(path, 'utf8');
  const a = s.split('\n');
  if (a.length && a[a.length - 1] === '') a.pop();
  return a;
}

(async () => {
  const [tokPath, corpus, refOut, cases, decOut] = process.argv.slice(2);
  const tok = Tokenizer.fromFile(tokPath);
  const out = [];
  for (const l of lines(corpus)) {
    const text = JSON.parse(l).text;
    const e = await tok.encode(text, null, { addSpecialTokens: false });
    const eb = await tok.encode(text, null, { addSpecialTokens: true });
    const ids = Array.from(e.getIds());
    const dec = await tok.decode(ids, false);
    out.push(JSON.stringify({ ids, ids_bos: Array.from(eb.getIds()), dec: Buffer.from(dec, 'utf8').toString('hex') }));
  }
  fs.writeFileSync(refOut, out.join('\n') + '\n');
  const dout = [];
  for (const l of lines(cases)) dout.push(JSON.stringify(Buffer.from(await tok.decode(JSON.parse(l), false), 'utf8').toString('hex')));
  fs.writeFileSync(decOut, dout.join('\n') + '\n');
})().catch((e) => { console.error(e); process.exit(1); });
