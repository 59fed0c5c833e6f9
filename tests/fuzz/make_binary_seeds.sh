#!/usr/bin/env bash
# Writes the binary seeds of tests/fuzz/corpus/ from the text below (protobuf text format,
# encoded with protoc; safetensors with printf): the seeds are committed, this script is how
# they were made and how to make them again after a .proto change.
#   bash tests/fuzz/make_binary_seeds.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
proto=$here/../../proto
c=$here/corpus

enc() { # TYPE OUT [PREFIX]: text format on stdin -> OUT (PREFIX: one byte before the message)
  local tmp; tmp=$(mktemp)
  protoc -I"$proto" --encode="$1" "$proto/${4:-engine.proto}" > "$tmp"
  { printf '%s' "${3:-}"; cat "$tmp"; } > "$2"
  rm -f "$tmp"
}
frame() { # EngineMessage text on stdin -> stdout: a 4-byte big-endian length + the message
  local tmp; tmp=$(mktemp)
  protoc -I"$proto" --encode=gemmashard.engine.EngineMessage "$proto/engine.proto" > "$tmp"
  local n; n=$(stat -c %s "$tmp")
  printf "\\x$(printf %02x $((n >> 24 & 255)))\\x$(printf %02x $((n >> 16 & 255)))"
  printf "\\x$(printf %02x $((n >> 8 & 255)))\\x$(printf %02x $((n & 255)))"; cat "$tmp"
  rm -f "$tmp"
}

mkdir -p "$c/fuzz_plan" "$c/fuzz_engine_frame" "$c/fuzz_grpc_request" "$c/fuzz_safetensors"

enc gemmashard.engine.StepPlan "$c/fuzz_plan/admit_and_decode" <<'P'
release: [3, 5]
seqs { slot: 0 tokens: [2, 105, 2364, 107] want_logits: true admit: true request_id: 1000 max_positions: 40
       params { temperature: 0.7 top_k: 40 top_p: 0.9 min_p: 0.05 repetition_penalty: 1.1 seed: 42
                max_tokens: 8 stop_ids: [106] top_logprobs: 3 logprobs: true } }
seqs { slot: 1 tokens: [9] want_logits: true }
seqs { slot: 2 tokens: [10, 11, 12] want_logits: false }
P
enc gemmashard.engine.StepPlan "$c/fuzz_plan/stop" <<'P'
stop: true
P

frame > "$c/fuzz_engine_frame/hello" <<'P'
hello { engine_id: "engine-0" model_id: "tiny" tp: 2 cp: 1 kv_block_tokens: 16 kv_blocks_total: 512 max_context: 4096 }
P
frame > "$c/fuzz_engine_frame/submit" <<'P'
submit { request_id: 77 prompt: [2, 105, 2364, 107, 9, 106] params { temperature: 0.7 top_k: 40 max_tokens: 16 stop_ids: [1] } }
P
{ frame <<'P'
events { events { request_id: 77 tokens: [9, 10] logprobs: [-0.5, -1.25] top_ids: [9, 10] top_logprobs: [-0.5, -1.25] prompt_tokens: 6 completion_tokens: 2 }
         events { request_id: 78 finish: FINISH_ERROR error: "engine: out of KV blocks" } }
P
  frame <<'P'
heartbeat { running: 1 waiting: 2 kv_blocks_free: 100 kv_blocks_total: 512 steps: 9 last_step_ms: 3.5 step_seconds_total: 1.25 tokens_generated: 40 }
P
  frame <<'P'
cancel { request_id: 77 }
P
} > "$c/fuzz_engine_frame/events_heartbeat_cancel"

enc gemmashard.v1.GenerateRequest "$c/fuzz_grpc_request/generate_prompt" g gemmashard/v1/inference.proto <<'P'
model: "tiny" prompt: "The patient presented with" max_tokens: 16 temperature: 0.7 top_k: 40 top_p: 0.9 seed: 42
stop: ["\n\n", "END"] logprobs: true top_logprobs: 3
P
enc gemmashard.v1.GenerateRequest "$c/fuzz_grpc_request/generate_messages" g gemmashard/v1/inference.proto <<'P'
messages { messages { role: "system" content: "Be brief." } messages { role: "user" content: "Explain sepsis \303\251" }
           messages { role: "assistant" content: "ok" } messages { role: "user" content: "more" } }
min_p: 0.05 repetition_penalty: 1.1 request_id: "r-1"
P
enc gemmashard.v1.TokenizeRequest "$c/fuzz_grpc_request/tokenize" t gemmashard/v1/inference.proto <<'P'
model: "tiny" text: "<start_of_turn>user\nHello \360\237\230\200<end_of_turn>" add_special_tokens: false
P
enc gemmashard.v1.ModelInfoRequest "$c/fuzz_grpc_request/model_info" m gemmashard/v1/inference.proto <<'P'
model: "tiny"
P
enc grpc.health.v1.HealthCheckRequest "$c/fuzz_grpc_request/health" h grpc/health/v1/health.proto <<'P'
service: "gemmashard.v1.Inference"
P

# safetensors: 8-byte little-endian header length, the JSON header, the data (two bf16
# tensors of 2x2 and one f32 scalar: 8 + 8 + 4 bytes)
st() { # OUT HEADER
  local n=${#2}
  { printf "\\x$(printf %02x $((n & 255)))\\x$(printf %02x $((n >> 8 & 255)))\\x00\\x00\\x00\\x00\\x00\\x00"
    printf '%s' "$2"; printf '\x80\x3f\x00\x40\x40\x40\x80\x40\x00\x00\x80\x3f\x00\x00\x00\x00\x00\x00\x80\x3f'; } > "$1"
}
st "$c/fuzz_safetensors/three_tensors" '{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"BF16","shape":[2,2],"data_offsets":[0,8]},"b.weight":{"dtype":"F16","shape":[2,2],"data_offsets":[8,16]},"c":{"dtype":"F32","shape":[],"data_offsets":[16,20]}}'
st "$c/fuzz_safetensors/no_tensors" '{}'

enc gemmashard.v1.GenerateRequest "$c/fuzz_grpc_request/generate_ids_openai_fields" g gemmashard/v1/inference.proto <<'P'
prompt_ids { ids: [2, 818, 5279, 106] } max_tokens: 4 presence_penalty: 0.5 frequency_penalty: -0.5
logit_bias { token_id: 106 bias: -100 } logit_bias { token_id: 9 bias: 2.5 } stop_token_ids: [1, 107]
min_tokens: 2 ignore_eos: false user: "ward-7"
P
