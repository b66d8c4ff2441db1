// Asks the reference ggml (the static libggml-base and libggml-cpu of a llama.cpp build) how it
// dequantizes, quantizes and multiplies the i-quant and ternary block formats (and, for llmcli's
// 8-bit kernels, any other type: Q4_1, Q5_1, Q2_K, Q3_K), for scripts/make_iquant_refs.py, which
// compiles this file and records the answers in tests/data/iquants/ and tests/data/kernels/. Not
// part of llmcli; not run by the tests.
//
//   harness dequantize TYPE NBLOCKS BLOCKS.bin OUT.f32
//       the type traits' to_float on NBLOCKS blocks (raw bytes, back to back) -> float32 values
//   harness quantize TYPE NROWS NCOLS ROWS.f32 WEIGHTS.f32|- OUT.bin
//       ggml_quantize_chunk on NROWS rows of NCOLS float32 values, with per-column importance
//       weights (NCOLS float32) or none ("-") -> the blocks' raw bytes
//   harness vec_dot TYPE NROWS NCOLS ROWS.bin NVEC X.f32 OUT.f32 XQ.bin
//       what the CPU backend's mul_mat does for one weight row and one activation column: the
//       activation (NVEC x NCOLS float32) goes through the from_float of the type's vec_dot_type
//       (Q8_K, Q8_0 or Q8_1), then the type's vec_dot with each of the NROWS weight rows (raw blocks)
//       -> NVEC x NROWS float32 dot products, and the quantized activations' raw bytes (XQ.bin);
//       the vec_dot_type's name is printed on stdout
//
// TYPE is ggml's name for the type (ggml_type_name, any case), e.g. IQ2_XS or TQ1_0.

#include "ggml.h"
#include "ggml-cpu.h"

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
    if (argc == 10 && strcmp(argv[1], "vec_dot") == 0) {
        const ggml_type type = type_by_name(argv[2]);
        const long nrows = atol(argv[3]);
        const long ncols = atol(argv[4]);
        const long nvec = atol(argv[6]);
        const size_t row_bytes = ggml_row_size(type, ncols);
        std::vector<char> rows = read_all(argv[5], nrows * row_bytes);
        std::vector<char> x = read_all(argv[7], nvec * ncols * sizeof(float));
        ggml_cpu_init();
        const ggml_type_traits_cpu * traits = ggml_get_type_traits_cpu(type);
        const ggml_type act_type = traits->vec_dot_type;
        const size_t act_bytes = ggml_row_size(act_type, ncols);
        std::vector<char> xq(nvec * act_bytes);
        std::vector<float> dots(nvec * nrows);
        for (long v = 0; v < nvec; ++v) {
            ggml_get_type_traits_cpu(act_type)->from_float((const float *) x.data() + v * ncols,
                                                           xq.data() + v * act_bytes, ncols);
            for (long r = 0; r < nrows; ++r) {
                traits->vec_dot((int) ncols, &dots[v * nrows + r], 0, rows.data() + r * row_bytes, 0,
                                xq.data() + v * act_bytes, 0, 1);
            }
        }
        write_all(argv[8], dots.data(), dots.size() * sizeof(float));
        write_all(argv[9], xq.data(), xq.size());
        printf("%s\n", ggml_type_name(act_type));
        return 0;
    }
    fprintf(stderr, "usage: see the head of iquant_ref_harness.cpp\n");
    return 2;
}
