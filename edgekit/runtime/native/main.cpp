// edgekit_runner: command-line front end of edgekit::Runner.
//
//   edgekit_runner --model model.pte --prompt-ids 1,403,9 [--max-new-tokens 64]
//                  [--stop-ids 2|none] [--threads N] [--bench REPS] [--info] [--verbose]
//                  [--draft draft.pte [--draft-k 4]]
//
// Prints one JSON object on stdout. On failure prints one line
// "error: ... | hint: ..." on stderr and exits with the edgekit::Code value (see
// edgekit_runner.h). --stop-ids defaults to the program's get_eos_id(). --bench REPS runs one
// uncounted warm-up generation then REPS timed ones of exactly --max-new-tokens tokens (stop
// ids ignored) and reports each rep plus median/min/max. --info only loads the program and
// prints its metadata. --draft runs greedy chain speculative decoding with that draft program
// (same tokens as without it) and adds "draft", "draft_k", "steps", "tau", "draft_ms" and
// "verify_ms" to the output.
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "edgekit_runner.h"

namespace {

using edgekit::Code;
using edgekit::Status;

const char* kUsage =
    "usage: edgekit_runner --model PATH.pte --prompt-ids ID,ID,... [--max-new-tokens N] "
    "[--stop-ids ID,...|none] [--threads N] [--bench REPS] [--info] [--verbose] "
    "[--draft DRAFT.pte [--draft-k K]]";

int fail(const Status& s) {
  std::string line = "error: " + s.message;
  if (!s.hint.empty()) line += " | hint: " + s.hint;
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  std::fprintf(stderr, "%s\n", line.c_str());
  return static_cast<int>(s.code);
}

Status bad_args(const std::string& msg) {
  Status s;
  s.code = Code::kBadArgs;
  s.message = msg;
  s.hint = kUsage;
  return s;
}

bool parse_int(const std::string& text, long long lo, long long hi, long long* out) {
  if (text.empty()) return false;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end == nullptr || *end != '\0' || v < lo || v > hi) return false;
  *out = v;
  return true;
}

bool parse_ids(const std::string& text, std::vector<int64_t>* out) {
  out->clear();
  size_t start = 0;
  while (start <= text.size()) {
    size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    long long v = 0;
    if (!parse_int(item, 0, (1LL << 40), &v)) return false;
    out->push_back(static_cast<int64_t>(v));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return !out->empty();
}

std::string num(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%.4f", v);
  return buf;
}

std::string ids_json(const std::vector<int64_t>& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(ids[i]);
  }
  return s + "]";
}

std::string json_str(const std::string& v) {
  std::string s = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') {
      s += '\\';
      s += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      s += buf;
    } else {
      s += c;
    }
  }
  return s + "\"";
}

std::string meta_json(const edgekit::ProgramMeta& m) {
  return "{\"abi\": " + std::to_string(m.abi) + ", \"max_seq_len\": " +
         std::to_string(m.max_seq_len) + ", \"max_chunk\": " + std::to_string(m.max_chunk) +
         ", \"vocab_size\": " + std::to_string(m.vocab_size) + ", \"n_layers\": " +
         std::to_string(m.n_layers) + ", \"bos_id\": " + std::to_string(m.bos_id) +
         ", \"eos_id\": " + std::to_string(m.eos_id) + "}";
}

double rate(double count, double ms) { return ms > 0 && count > 0 ? count * 1000.0 / ms : NAN; }

std::string stats_json(const edgekit::GenerateStats& st) {
  return "\"prompt_tokens\": " + std::to_string(st.prompt_tokens) +
         ", \"new_tokens\": " + std::to_string(st.new_tokens) +
         ", \"prefill_ms\": " + num(st.prefill_ms) + ", \"ttft_ms\": " + num(st.ttft_ms) +
         ", \"decode_ms\": " + num(st.decode_ms) +
         ", \"prefill_tok_s\": " + num(rate(static_cast<double>(st.prompt_tokens), st.prefill_ms)) +
         ", \"decode_tok_s\": " +
         num(rate(static_cast<double>(std::max<int64_t>(st.new_tokens - 1, 0)), st.decode_ms));
}

struct Summary {
  double median, min, max;
};

Summary summarize(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  double med = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return {med, v.front(), v.back()};
}

int run(int argc, char** argv) {
  std::string model;
  std::vector<int64_t> prompt, stop_ids;
  bool stop_given = false, stop_none = false, info = false, verbose = false;
  long long max_new = 64, threads = 0, bench = 0, draft_k = 4;
  std::string draft_path;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](std::string* v) -> bool {
      if (i + 1 >= argc) return false;
      *v = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--help" || a == "-h") {
      std::printf("%s\n", kUsage);
      return 0;
    } else if (a == "--verbose") {
      verbose = true;
    } else if (a == "--info") {
      info = true;
    } else if (a == "--draft") {
      if (!value(&draft_path)) return fail(bad_args("--draft needs a path"));
    } else if (a == "--draft-k") {
      if (!value(&v) || !parse_int(v, 1, 1 << 20, &draft_k))
        return fail(bad_args("--draft-k needs an integer >= 1"));
    } else if (a == "--model") {
      if (!value(&model)) return fail(bad_args("--model needs a path"));
    } else if (a == "--prompt-ids") {
      if (!value(&v) || !parse_ids(v, &prompt))
        return fail(bad_args("--prompt-ids needs comma-separated non-negative integers"));
    } else if (a == "--stop-ids") {
      if (!value(&v)) return fail(bad_args("--stop-ids needs a value"));
      stop_given = true;
      if (v == "none" || v.empty()) {
        stop_none = true;
      } else if (!parse_ids(v, &stop_ids)) {
        return fail(bad_args("--stop-ids needs comma-separated non-negative integers or 'none'"));
      }
    } else if (a == "--max-new-tokens") {
      if (!value(&v) || !parse_int(v, 1, 1 << 24, &max_new))
        return fail(bad_args("--max-new-tokens needs an integer >= 1"));
    } else if (a == "--threads") {
      if (!value(&v) || !parse_int(v, 0, 1024, &threads))
        return fail(bad_args("--threads needs an integer in [0, 1024] (0 = default)"));
    } else if (a == "--bench") {
      if (!value(&v) || !parse_int(v, 1, 100000, &bench))
        return fail(bad_args("--bench needs a repetition count >= 1"));
    } else {
      return fail(bad_args("unknown argument '" + a + "'"));
    }
  }
  if (model.empty()) return fail(bad_args("--model is required"));
  if (prompt.empty() && !info) return fail(bad_args("--prompt-ids is required"));

  edgekit::install_log_sink(verbose);
  edgekit::Runner runner;
  Status s = runner.load(model, static_cast<int>(threads));
  if (!s.ok()) return fail(s);
  const auto& m = runner.meta();
  edgekit::Runner draft;
  if (!draft_path.empty()) {
    s = draft.load(draft_path, static_cast<int>(threads));
    if (!s.ok()) return fail(s);
  }
  auto gen = [&](bool ignore_stop, std::vector<int64_t>* o, edgekit::GenerateStats* g) {
    if (draft_path.empty()) return runner.generate(prompt, max_new, stop_ids, ignore_stop, o, g);
    return runner.generate_spec(&draft, prompt, max_new, draft_k, stop_ids, ignore_stop, o, g);
  };
  auto spec_json = [&](const edgekit::GenerateStats& g) -> std::string {
    if (draft_path.empty()) return "";
    return ", \"draft\": " + json_str(draft_path) + ", \"draft_meta\": " + meta_json(draft.meta()) +
           ", \"draft_k\": " + std::to_string(draft_k) + ", \"steps\": " + std::to_string(g.steps) +
           ", \"tau\": " + num(g.tau()) + ", \"draft_ms\": " + num(g.draft_ms) +
           ", \"verify_ms\": " + num(g.verify_ms);
  };
  std::string head = "{\"runner\": \"edgekit_runner\", \"model\": " + json_str(model) +
                     ", \"meta\": " + meta_json(m) + ", \"threads\": " +
                     std::to_string(runner.threads()) + ", \"load_ms\": " + num(runner.load_ms());
  if (info) {
    std::printf("%s, \"peak_rss_mib\": %s}\n", head.c_str(), num(edgekit::peak_rss_mib()).c_str());
    return 0;
  }
  if (!stop_given) stop_ids = {m.eos_id};
  if (stop_none) stop_ids.clear();

  std::vector<int64_t> out;
  edgekit::GenerateStats st;
  if (bench == 0) {
    s = gen(false, &out, &st);
    if (!s.ok()) return fail(s);
    std::printf("%s, \"mode\": \"generate\", \"prompt_ids\": %s, \"stop_ids\": %s, \"tokens\": %s, "
                "\"stop_reason\": %s, %s%s, \"peak_rss_mib\": %s}\n",
                head.c_str(), ids_json(prompt).c_str(), ids_json(stop_ids).c_str(),
                ids_json(out).c_str(), json_str(st.stop_reason).c_str(), stats_json(st).c_str(),
                spec_json(st).c_str(), num(edgekit::peak_rss_mib()).c_str());
    return 0;
  }

  if (static_cast<long long>(prompt.size()) + max_new > m.max_seq_len) {
    Status c;
    c.code = Code::kContext;
    c.message = "bench needs " + std::to_string(prompt.size()) + " prompt + " +
                std::to_string(max_new) + " new tokens, more than max_seq_len " +
                std::to_string(m.max_seq_len);
    c.hint = "use a shorter prompt or generation length";
    return fail(c);
  }
  // Warm-up: first-touch of weights and planned memory, XNNPACK packing, thread start-up.
  s = gen(true, &out, &st);
  if (!s.ok()) return fail(s);
  std::vector<double> prefill, decode, ttft, prefill_rate, decode_rate;
  std::string runs = "[";
  for (long long r = 0; r < bench; ++r) {
    s = gen(true, &out, &st);
    if (!s.ok()) return fail(s);
    prefill.push_back(st.prefill_ms);
    decode.push_back(st.decode_ms);
    ttft.push_back(st.ttft_ms);
    prefill_rate.push_back(rate(static_cast<double>(st.prompt_tokens), st.prefill_ms));
    decode_rate.push_back(rate(static_cast<double>(std::max<int64_t>(st.new_tokens - 1, 0)), st.decode_ms));
    if (r) runs += ", ";
    runs += "{" + stats_json(st) + spec_json(st) + "}";
  }
  runs += "]";
  auto sum_json = [](const std::vector<double>& v) {
    Summary x = summarize(v);
    return "{\"median\": " + num(x.median) + ", \"min\": " + num(x.min) + ", \"max\": " +
           num(x.max) + "}";
  };
  std::printf("%s, \"mode\": \"bench\", \"reps\": %lld, \"warmup\": 1, \"prompt_tokens\": %zu, "
              "\"gen_tokens\": %lld, \"runs\": %s, \"prefill_ms\": %s, \"decode_ms\": %s, "
              "\"ttft_ms\": %s, \"prefill_tok_s\": %s, \"decode_tok_s\": %s, \"peak_rss_mib\": %s}\n",
              head.c_str(), bench, prompt.size(), max_new, runs.c_str(),
              sum_json(prefill).c_str(), sum_json(decode).c_str(), sum_json(ttft).c_str(),
              sum_json(prefill_rate).c_str(), sum_json(decode_rate).c_str(),
              num(edgekit::peak_rss_mib()).c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Last line of defence: nothing below is expected to throw except allocation failure.
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    Status s;
    s.code = Code::kRuntime;
    s.message = std::string("internal failure: ") + e.what();
    s.hint = "rerun with --verbose and report it";
    return fail(s);
  } catch (...) {
    Status s;
    s.code = Code::kRuntime;
    s.message = "internal failure (unknown exception)";
    s.hint = "rerun with --verbose and report it";
    return fail(s);
  }
}
