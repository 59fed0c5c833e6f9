#!/usr/bin/env python3
"""ctest driver: image prompts, ours vs the reference (reference/gemma3.md 4.4, 5.1).

Reference: the verbatim Gemma 3 Jinja template rendered with jinja2, then the processor's
text replacement of "<start_of_image>" (Gemma3Processor.full_image_sequence), then Hugging
Face tokenizers (node binding, hf_ref.js) with add_special_tokens=False. Ours: chat_image_ids
(gs_chat_render + gs_chat_expand_images + gs_tokenizer_encode). Every id must agree, and the
tokens an image adds are counted (259 for N = 256 in the usual places). Exit 77 (skip) without
node, the tokenizers module or jinja2."""
import argparse
import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

TEMPLATE = r"""{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""

IMG = {"type": "image"}


def T(s):
    return {"type": "text", "text": s}


def cases():
    """(messages, n_soft): images first, last, between texts, several, next to newlines,
    in the system-prefixed first turn, in a later turn, back to back."""
    c = [
        [{"role": "user", "content": [IMG, T("What is shown?")]}],
        [{"role": "system", "content": "You are a radiologist."},
         {"role": "user", "content": [IMG, T("Describe this chest X-ray.")]}],
        [{"role": "system", "content": [T("Be brief.")]},
         {"role": "user", "content": [T("Compare"), IMG, T("with"), IMG]}],
        [{"role": "user", "content": [T("  Look:\n\n"), IMG, T("\n and this\n"), IMG, IMG, T(" ok?")]}],
        [{"role": "user", "content": [T("Hi")]}, {"role": "assistant", "content": "Hello."},
         {"role": "user", "content": [IMG, T("Now this one.")]}],
        [{"role": "user", "content": [T("End with an image:"), IMG]}],
        [{"role": "user", "content": [IMG]}],
        [{"role": "user", "content": [T("Text only, as a list."), T("Two parts.")]}],
        [{"role": "user", "content": [T("x"), IMG, T("y")]}],
    ]
    out = [(m, 256) for m in c]
    out += [(c[1], 4), (c[3], 4)]  # the tiny-vision test models' N
    return out


def strip_images(messages):
    return [dict(m, content=[p for p in m["content"] if p["type"] != "image"]) if isinstance(m["content"], list)
            else m for m in messages]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--node-modules", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--workdir", required=True)
    a = ap.parse_args()
    try:
        import jinja2
    except ImportError:
        print("SKIPPED: needs python3-jinja2")
        return 77
    node = shutil.which("node")
    if not node or not os.path.isdir(os.path.join(a.node_modules, "@anush008", "tokenizers")):
        print("SKIPPED: needs node and @anush008/tokenizers under %s (deploy/install-deps.sh)" % a.node_modules)
        return 77
    os.makedirs(a.workdir, exist_ok=True)

    def raise_exception(msg):
        raise RuntimeError(msg)

    tmpl = jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(TEMPLATE)
    all_cases = cases()
    # each case twice: with images, and with the image parts removed (tokens an image adds)
    runs = []
    for m, n_soft in all_cases:
        runs.append((m, n_soft))
        runs.append((strip_images(m), n_soft))
    texts = []
    for m, n_soft in runs:
        text = tmpl.render(messages=m, bos_token="<bos>", add_generation_prompt=True,
                           raise_exception=raise_exception)
        seq = "\n\n<start_of_image>" + "<image_soft_token>" * n_soft + "<end_of_image>\n\n"
        texts.append(text.replace("<start_of_image>", seq))
    p = lambda n: os.path.join(a.workdir, n)
    with open(p("corpus.jsonl"), "w") as f:
        for t in texts:
            f.write(json.dumps({"text": t}) + "\n")
    with open(p("cases.jsonl"), "w") as f:
        for m, n_soft in runs:
            f.write(json.dumps({"messages": m, "n_soft": n_soft}) + "\n")
    open(p("dcases.jsonl"), "w").close()
    env = dict(os.environ, NODE_PATH=a.node_modules)
    subprocess.check_call([node, os.path.join(HERE, "hf_ref.js"), a.tokenizer, p("corpus.jsonl"), p("ref.jsonl"),
                           p("dcases.jsonl"), p("dref.jsonl")], env=env)
    subprocess.check_call([a.driver, a.tokenizer, p("cases.jsonl"), p("ours.jsonl")])
    ref = [json.loads(l)["ids"] for l in open(p("ref.jsonl"))]
    ours = [json.loads(l) for l in open(p("ours.jsonl"))]
    bad = 0
    for k, ((m, n_soft), r, o) in enumerate(zip(runs, ref, ours)):
        if o["ids"] != r:
            i = next((j for j in range(min(len(r), len(o["ids"]))) if r[j] != o["ids"][j]), min(len(r), len(o["ids"])))
            print("FAILED run %d: ids differ at %d: ref %s ours %s" % (k, i, r[i:i + 6], o["ids"][i:i + 6]))
            bad += 1
    if len(ours) != len(runs):
        print("FAILED: %d outputs for %d runs" % (len(ours), len(runs)))
        bad += 1
    for k in range(0, len(runs), 2):
        m, n_soft = runs[k]
        n_img = texts[k].count("<start_of_image>")
        r = ref[k]
        spans = sum(1 for j in range(len(r)) if r[j] == 255999 and r[j + n_soft + 1] == 256000 and
                    all(x == 262144 for x in r[j + 1:j + 1 + n_soft]))
        if spans != n_img or ours[k]["n_images"] != n_img:
            print("FAILED case %d: %d images, %d boi/soft/eoi runs in the reference ids, %d counted by us" %
                  (k // 2, n_img, spans, ours[k]["n_images"]))
            bad += 1
        if n_img:
            added = (len(r) - len(ref[k + 1])) / n_img
            print("case %d: N=%d, %d image(s), %d ids, %.1f tokens per image" % (k // 2, n_soft, n_img, len(r), added))
    if bad:
        return 1
    print("OK: %d image prompts agree with jinja2 + HF tokenizers" % len(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
