// Asks the reference llama.cpp for a prompt's logits with a chosen KV cache type, for
// scripts/make_kv_cache_refs.py (which compiles this file against a llama.cpp build and records
// the logits in tests/data/kv_cache/). Not part of llmcli; not run by the tests.
//
//   harness MODEL TYPE_K TYPE_V FLASH_ATTN IDS OUT
//
// TYPE_K / TYPE_V: f32, f16, q8_0 or q4_0 (llama.cpp's -ctk / -ctv); FLASH_ATTN: on or off (-fa);
// IDS: the prompt's token ids separated by commas, evaluated as one batch (logits of every
// position, 2 threads); OUT: a file of n_ids x n_vocab float32 (little-endian, row-major).

#include "llama.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

static ggml_type kv_type(const char * name) {
    if (!strcmp(name, "f32")) return GGML_TYPE_F32;
    if (!strcmp(name, "f16")) return GGML_TYPE_F16;
    if (!strcmp(name, "q8_0")) return GGML_TYPE_Q8_0;
    if (!strcmp(name, "q4_0")) return GGML_TYPE_Q4_0;
    fprintf(stderr, "unknown KV cache type %s\n", name);
    exit(2);
}

int main(int argc, char ** argv) {
    if (argc != 7) {
        fprintf(stderr, "usage: %s MODEL TYPE_K TYPE_V on|off IDS OUT\n", argv[0]);
        return 2;
    }
    std::vector<llama_token> ids;
    std::stringstream list(argv[5]);
    for (std::string item; std::getline(list, item, ',');) {
        ids.push_back(std::stoi(item));
    }
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    llama_model * model = llama_model_load_from_file(argv[1], mparams);
    if (!model) return 1;
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 512;
    cparams.n_batch = 512;
    cparams.n_ubatch = 512;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    cparams.type_k = kv_type(argv[2]);
    cparams.type_v = kv_type(argv[3]);
    cparams.flash_attn_type = strcmp(argv[4], "on") ? LLAMA_FLASH_ATTN_TYPE_DISABLED : LLAMA_FLASH_ATTN_TYPE_ENABLED;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) return 1;
    llama_batch batch = llama_batch_init((int32_t) ids.size(), 0, 1);
    for (size_t i = 0; i < ids.size(); ++i) {
        batch.token[i] = ids[i];
        batch.pos[i] = (llama_pos) i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = (int32_t) ids.size();
    if (llama_decode(ctx, batch) != 0) return 1;
    const int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    FILE * out = fopen(argv[6], "wb");
    for (size_t i = 0; i < ids.size(); ++i) {
        fwrite(llama_get_logits_ith(ctx, (int32_t) i), sizeof(float), n_vocab, out);
    }
    fclose(out);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
