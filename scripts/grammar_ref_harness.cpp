// Asks the reference llama.cpp what it makes of grammars and JSON schemas, for
// scripts/make_grammar_refs.py (which compiles this file against a llama.cpp build and
// records the answers in tests/data/grammar/). Not part of llmcli; not run by the tests.
//
//   harness schema SCHEMA.json               -> the GBNF llama.cpp writes, or "ERROR <message>"
//   harness match GRAMMAR.gbnf CASES.txt     -> "PARSE_ERROR" (message on stderr), or per case
//                                               line "1"/"0": accepted and complete or not; a case
//                                               line is pieces in hex separated by spaces, each
//                                               piece fed as one token (partial UTF-8 carries on)
//   harness mask MODEL GRAMMAR.gbnf PREFIXES.txt
//                                            -> per prefix line (token ids separated by spaces):
//                                               the ids the grammar allows next, after accepting
//                                               the prefix's tokens, over the whole vocabulary
//   harness steps MODEL GRAMMAR.gbnf PROMPT_IDS FORCED_IDS
//                                            -> per forced token, one line "argmax margin": the
//                                               best token the grammar allows at that step and its
//                                               logit lead over the second best allowed (inf if
//                                               alone), then the forced token is accepted and
//                                               evaluated; one more line after the last

#include "llama.h"
#include "llama-grammar.h"
#include "json.h"
#include "json-schema-to-grammar.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

static std::string read_file(const char * path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

static std::vector<std::string> read_lines(const char * path) {
    std::vector<std::string> lines;
    std::ifstream in(path, std::ios::binary);
    std::string line;
    while (std::getline(in, line)) {
        lines.push_back(line);
    }
    return lines;
}

static std::vector<int> parse_ids(const std::string & text) {
    std::vector<int> ids;
    std::stringstream in(text);
    int id;
    while (in >> id) {
        ids.push_back(id);
    }
    return ids;
}

static std::string unhex(const std::string & hex) {
    std::string out;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
        out.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
    }
    return out;
}

static int cmd_schema(const char * path) {
    try {
        std::string grammar = json_schema_to_grammar(common_json::parse(read_file(path)), true);
        fputs(grammar.c_str(), stdout);
    } catch (const std::exception & e) {
        std::string message = e.what();
        for (auto & c : message) {
            if (c == '\n') {
                c = ' ';
            }
        }
        printf("ERROR %s\n", message.c_str());
    }
    return 0;
}

static bool complete(llama_grammar * grammar) {
    for (const auto & stack : llama_grammar_get_stacks(grammar)) {
        if (stack.empty()) {
            return true;
        }
    }
    return false;
}

static int cmd_match(const char * grammar_path, const char * cases_path) {
    std::string text = read_file(grammar_path);
    llama_grammar * grammar = llama_grammar_init_impl(nullptr, text.c_str(), "root", false, nullptr, 0, nullptr, 0);
    if (grammar == nullptr) {
        printf("PARSE_ERROR\n");
        return 0;
    }
    const llama_grammar_stacks start_stacks = llama_grammar_get_stacks(grammar);
    const llama_partial_utf8 start_partial = grammar->partial_utf8;
    for (const auto & line : read_lines(cases_path)) {
        llama_grammar_get_stacks(grammar) = start_stacks;
        grammar->partial_utf8 = start_partial;
        bool ok = true;
        std::stringstream pieces(line);
        std::string hex;
        while (ok && pieces >> hex) {
            try {
                llama_grammar_accept_token(*grammar, 0, unhex(hex));
            } catch (const std::runtime_error &) {
                ok = false;
            }
            if (llama_grammar_get_stacks(grammar).empty()) {
                ok = false;
            }
        }
        printf("%d\n", ok && complete(grammar) ? 1 : 0);
    }
    llama_grammar_free_impl(grammar);
    return 0;
}

static llama_model * load(const char * path, bool vocab_only) {
    llama_model_params params = llama_model_default_params();
    params.vocab_only = vocab_only;
    params.n_gpu_layers = 0;
    return llama_model_load_from_file(path, params);
}

static std::vector<llama_token_data> all_tokens(const llama_vocab * vocab, const float * logits) {
    const int n_vocab = llama_vocab_n_tokens(vocab);
    std::vector<llama_token_data> data(n_vocab);
    for (int i = 0; i < n_vocab; i++) {
        data[i] = {i, logits ? logits[i] : 0.0f, 0.0f};
    }
    return data;
}

static int cmd_mask(const char * model_path, const char * grammar_path, const char * prefixes_path) {
    llama_model * model = load(model_path, true);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    std::string text = read_file(grammar_path);
    for (const auto & line : read_lines(prefixes_path)) {
        llama_grammar * grammar = llama_grammar_init_impl(vocab, text.c_str(), "root", false, nullptr, 0, nullptr, 0);
        for (int token : parse_ids(line)) {
            llama_grammar_accept_impl(*grammar, token);
        }
        auto data = all_tokens(vocab, nullptr);
        llama_token_data_array cur = {data.data(), data.size(), -1, false};
        llama_grammar_apply_impl(*grammar, &cur);
        bool first = true;
        for (size_t i = 0; i < cur.size; i++) {
            if (cur.data[i].logit != -INFINITY) {
                printf(first ? "%d" : " %d", cur.data[i].id);
                first = false;
            }
        }
        printf("\n");
        llama_grammar_free_impl(grammar);
    }
    llama_model_free(model);
    return 0;
}

static int cmd_steps(const char * model_path, const char * grammar_path, const char * prompt_text, const char * forced_text) {
    llama_model * model = load(model_path, false);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = 1024;
    cparams.n_batch = 512;
    cparams.n_threads = 2;
    cparams.n_threads_batch = 2;
    llama_context * ctx = llama_init_from_model(model, cparams);
    std::string text = read_file(grammar_path);
    llama_grammar * grammar = llama_grammar_init_impl(vocab, text.c_str(), "root", false, nullptr, 0, nullptr, 0);
    std::vector<llama_token> prompt = parse_ids(prompt_text);
    std::vector<int> forced = parse_ids(forced_text);
    if (llama_decode(ctx, llama_batch_get_one(prompt.data(), (int32_t) prompt.size())) != 0) {
        fprintf(stderr, "decode failed\n");
        return 1;
    }
    for (size_t step = 0; step <= forced.size(); step++) {
        auto data = all_tokens(vocab, llama_get_logits_ith(ctx, -1));
        llama_token_data_array cur = {data.data(), data.size(), -1, false};
        llama_grammar_apply_impl(*grammar, &cur);
        int best = -1;
        float top1 = -INFINITY, top2 = -INFINITY;
        for (size_t i = 0; i < cur.size; i++) {
            float logit = cur.data[i].logit;
            if (logit > top1) {
                top2 = top1;
                top1 = logit;
                best = cur.data[i].id;
            } else if (logit > top2) {
                top2 = logit;
            }
        }
        printf("%d %.6f\n", best, top2 == -INFINITY ? INFINITY : top1 - top2);
        if (step == forced.size()) {
            break;
        }
        llama_token token = forced[step];
        llama_grammar_accept_impl(*grammar, token);
        if (llama_decode(ctx, llama_batch_get_one(&token, 1)) != 0) {
            fprintf(stderr, "decode failed\n");
            return 1;
        }
    }
    llama_grammar_free_impl(grammar);
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: see the head of grammar_ref_harness.cpp\n");
        return 2;
    }
    std::string command = argv[1];
    llama_log_set([](ggml_log_level level, const char * text, void *) {
        if (level == GGML_LOG_LEVEL_ERROR) {
            fputs(text, stderr);
        }
    }, nullptr);
    llama_backend_init();
    if (command == "schema") {
        return cmd_schema(argv[2]);
    }
    if (command == "match" && argc == 4) {
        return cmd_match(argv[2], argv[3]);
    }
    if (command == "mask" && argc == 5) {
        return cmd_mask(argv[2], argv[3], argv[4]);
    }
    if (command == "steps" && argc == 6) {
        return cmd_steps(argv[2], argv[3], argv[4], argv[5]);
    }
    fprintf(stderr, "unknown command or wrong arguments\n");
    return 2;
}
