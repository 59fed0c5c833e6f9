# gpu_reference_<case>: gemmashard logits --device cuda against the float64 reference (label gpu;
# exit 77, skipped, without a GPU). Shared by tests/reference (the full build) and
# tests/gpu/standalone (the GPU bundle). Windows shorter than the sequence, GQA, MQA, sharded
# files, chunked prefill (paged KV reread), head_dim not a power of two.
#
# Tolerance: DESIGN.md §3 allows 2e-2 on bf16 paths. Ours is tighter, 5e-3: cuBLAS rounds the
# activations to bf16 for 16 rows or more (2^-9, ~1.1e-3 relative per matmul output, the LM
# head's included), a few of which add up to ~2-3e-3 on the logits, while an indexing or layout
# bug gives O(1). The GPU op tests hold each kernel to its own tight tolerance.
set(GS_GPU_REF_TOL 5e-3 CACHE STRING "relative L2 limit of gpu_reference_* (logits vs float64)")

function(gs_add_gpu_reference_tests python gemmashard_bin tokenizer)
  foreach(c window gqa mqa sharded headdim_24 layer_types chunk7 preset_small)
    add_test(NAME gpu_reference_${c}
             COMMAND ${python} ${CMAKE_CURRENT_FUNCTION_LIST_DIR}/check_parity.py
                     --gemmashard ${gemmashard_bin}
                     --tokenizer ${tokenizer}
                     --workdir ${CMAKE_CURRENT_BINARY_DIR}/scratch_gpu_${c}
                     --case ${c} --engine-args "--device cuda" --needs-gpu
                     --rel-l2-max ${GS_GPU_REF_TOL})
    set_tests_properties(gpu_reference_${c} PROPERTIES LABELS gpu TIMEOUT 600 SKIP_RETURN_CODE 77)
  endforeach()
endfunction()
