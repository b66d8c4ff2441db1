// Asks the reference ggml (the static libggml-base of a llama.cpp build) how it dequantizes and
// quantizes the i-quant and ternary block formats, for scripts/make_iquant_refs.py, which compiles
// this file and records the answers in tests/data/iquants/. Not part of llmcli; not run by the tests.
//
//   harness dequantize TYPE NBLOCKS BLOCKS.bin OUT.f32
//       the type traits' to_float on NBLOCKS blocks (raw bytes, back to back) -> float32 values
//   harness quantize TYPE NROWS NCOLS ROWS.f32 WEIGHTS.f32|- OUT.bin
//       ggml_quantize_chunk on NROWS rows of NCOLS float32 values, with per-column importance
//       weights (NCOLS float32) or none ("-") -> the blocks' raw bytes
//
// TYPE is ggml's name for the type (ggml_type_name, any case), e.g. IQ2_XS or TQ1_0.

#include "ggml.h"

#include <cstdio>
#include <cstring>
#include <strings.h>
#include <string>
#include <vector>

static ggml_type type_by_name(const char * name) {
    for (int t = 0; t < GGML_TYPE_COUNT; ++t) {
        const char * known = ggml_type_name((ggml_type) t);
        if (known && strcasecmp(known, name) == 0) {
            return (ggml_type) t;
        }
    }
    fprintf(stderr, "unknown type %s\n", name);
    exit(2);
}

static std::vector<char> read_all(const char * path, size_t expected) {
    std::vector<char> data(expected);
    FILE * f = fopen(path, "rb");
    if (!f || fread(data.data(), 1, expected, f) != expected) {
        fprintf(stderr, "%s: cannot read %zu bytes\n", path, expected);
        exit(1);
    }
    fclose(f);
    return data;
}

static void write_all(const char * path, const void * data, size_t size) {
    FILE * f = fopen(path, "wb");
    if (!f || fwrite(data, 1, size, f) != size) {
        fprintf(stderr, "%s: cannot write\n", path);
        exit(1);
    }
    fclose(f);
}

int main(int argc, char ** argv) {
    if (argc == 6 && strcmp(argv[1], "dequantize") == 0) {
        const ggml_type type = type_by_name(argv[2]);
        const long nblocks = atol(argv[3]);
        const long block_values = ggml_blck_size(type);
        std::vector<char> blocks = read_all(argv[4], nblocks * ggml_type_size(type));
        std::vector<float> values(nblocks * block_values);
        ggml_get_type_traits(type)->to_float(blocks.data(), values.data(), nblocks * block_values);
        write_all(argv[5], values.data(), values.size() * sizeof(float));
        return 0;
    }
    if (argc == 8 && strcmp(argv[1], "quantize") == 0) {
        const ggml_type type = type_by_name(argv[2]);
        const long nrows = atol(argv[3]);
        const long ncols = atol(argv[4]);
        std::vector<char> rows = read_all(argv[5], nrows * ncols * sizeof(float));
        std::vector<char> weights;
        if (strcmp(argv[6], "-") != 0) {
            weights = read_all(argv[6], ncols * sizeof(float));
        }
        std::vector<char> out(nrows * ggml_row_size(type, ncols));
        ggml_quantize_init(type);
        const size_t written = ggml_quantize_chunk(type, (const float *) rows.data(), out.data(), 0, nrows, ncols,
                                                   weights.empty() ? nullptr : (const float *) weights.data());
        write_all(argv[7], out.data(), written);
        return 0;
    }
    fprintf(stderr, "usage: see the head of iquant_ref_harness.cpp\n");
    return 2;
}
