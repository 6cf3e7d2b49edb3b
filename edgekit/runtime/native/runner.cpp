// Implementation of edgekit::Runner over the ExecuTorch Module API (see edgekit_runner.h).
#include "edgekit_runner.h"

#include "argmax.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <executorch/extension/module/module.h>
#include <executorch/runtime/core/exec_aten/exec_aten.h>
#include <executorch/runtime/platform/platform.h>

// The wheel ships libexecutorch_threadpool.so but not its header; these are the two entry
// points we need, declared with the signatures the library exports
// (_ZN10executorch9extension10threadpool14get_threadpoolEv and friends).
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool

namespace edgekit {
namespace {

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::aten::TensorImpl;
using executorch::extension::module::Module;
using executorch::runtime::Error;
using executorch::runtime::EValue;
using executorch::runtime::Method;
using Clock = std::chrono::steady_clock;


double ms_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

bool g_verbose = false;
std::mutex g_log_mu;
char g_last_error[512] = {0};

void log_sink(et_timestamp_t, et_pal_log_level_t level, const char* filename, const char*,
              size_t line, const char* message, size_t length) {
  if (level == kError || level == kFatal) {
    std::lock_guard<std::mutex> lock(g_log_mu);
    size_t n = std::min(length, sizeof(g_last_error) - 1);
    std::memcpy(g_last_error, message, n);
    g_last_error[n] = 0;
    for (size_t i = 0; i < n; ++i) {
      if (g_last_error[i] == '\n' || g_last_error[i] == '\r') g_last_error[i] = ' ';
    }
  }
  if (g_verbose) {
    const char* base = filename ? std::strrchr(filename, '/') : nullptr;
    std::fprintf(stderr, "[et %c %s:%zu] %.*s\n", static_cast<char>(level),
                 base ? base + 1 : (filename ? filename : "?"), line, static_cast<int>(length),
                 message);
  }
}

std::string error_name(Error e) {
  std::string s = executorch::runtime::to_string(e);
  if (s.rfind("Error::", 0) == 0) s = s.substr(7);
  return s;
}

Status make(Code code, std::string message, std::string hint = "") {
  Status s;
  s.code = code;
  s.message = std::move(message);
  s.hint = std::move(hint);
  return s;
}

// Adds the runtime's own last error line, when there is one, to a failure message.
std::string with_runtime_detail(std::string msg) {
  std::string detail = last_runtime_error();
  if (!detail.empty()) msg += " (runtime: " + detail + ")";
  return msg;
}

}  // namespace

void install_log_sink(bool verbose) {
  g_verbose = verbose;
  executorch::runtime::register_pal(
      executorch::runtime::PalImpl::create(log_sink, __FILE__));
}

std::string last_runtime_error() {
  std::lock_guard<std::mutex> lock(g_log_mu);
  return std::string(g_last_error);
}

double peak_rss_mib() {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return -1.0;
  return static_cast<double>(ru.ru_maxrss) / 1024.0;  // Linux: KiB
}

struct Runner::Impl {
  std::unique_ptr<Module> module;
  Method* forward = nullptr;
  ProgramMeta meta;
  std::string name;  // file name for messages
  int threads = 0;
  double load_ms = 0;
  // Input buffers sized max_chunk at load: the hot path only writes into them.
  std::vector<int64_t> tok_buf, pos_buf;

  Status read_const(const char* method, int64_t* value) {
    auto r = module->execute(method);
    if (!r.ok()) {
      return make(Code::kBadProgram,
                  with_runtime_detail(name + " has no usable constant method " + method + ": " +
                                      error_name(r.error())),
                  "re-export the package with this edgekit version");
    }
    const auto& outs = r.get();
    if (outs.empty() || !outs[0].isInt()) {
      return make(Code::kBadProgram, name + ": " + method + " does not return an int",
                  "re-export the package with this edgekit version");
    }
    *value = outs[0].toInt();
    return Status::Ok();
  }

  // Runs tokens[0..n) at cache slots pos.. and returns the logits row of the last token.
  // `all_rows` (optional) receives the first row: the logits of all n tokens are contiguous.
  Status run_forward(const int64_t* tokens, int64_t n, int64_t pos, const float** last_row,
                     const float** all_rows = nullptr) {
    std::copy(tokens, tokens + n, tok_buf.begin());
    for (int64_t i = 0; i < n; ++i) pos_buf[i] = pos + i;
    TensorImpl::SizesType tok_sizes[2] = {1, static_cast<TensorImpl::SizesType>(n)};
    TensorImpl::DimOrderType tok_order[2] = {0, 1};
    TensorImpl::StridesType tok_strides[2] = {static_cast<TensorImpl::StridesType>(n), 1};
    TensorImpl::SizesType pos_sizes[1] = {static_cast<TensorImpl::SizesType>(n)};
    TensorImpl::DimOrderType pos_order[1] = {0};
    TensorImpl::StridesType pos_strides[1] = {1};
    TensorImpl tok_impl(ScalarType::Long, 2, tok_sizes, tok_buf.data(), tok_order, tok_strides);
    TensorImpl pos_impl(ScalarType::Long, 1, pos_sizes, pos_buf.data(), pos_order, pos_strides);
    Error e = forward->set_input(EValue(Tensor(&tok_impl)), 0);
    if (e == Error::Ok) e = forward->set_input(EValue(Tensor(&pos_impl)), 1);
    if (e != Error::Ok) {
      return make(Code::kRuntime,
                  with_runtime_detail("forward rejected its inputs (T=" + std::to_string(n) +
                                      "): " + error_name(e)),
                  "the package may not follow edgekit ABI 1; re-export it");
    }
    e = forward->execute();
    if (e != Error::Ok) {
      return make(Code::kRuntime, with_runtime_detail("forward failed: " + error_name(e)),
                  "rerun with --verbose for the runtime log");
    }
    const EValue& out = forward->get_output(0);
    if (!out.isTensor()) {
      return make(Code::kBadProgram, name + ": forward output 0 is not a tensor",
                  "re-export the package with this edgekit version");
    }
    Tensor logits = out.toTensor();
    if (logits.scalar_type() != ScalarType::Float || logits.dim() != 3 || logits.size(1) != n ||
        logits.size(2) != meta.vocab_size) {
      return make(Code::kBadProgram,
                  name + ": forward returned logits of unexpected dtype/shape (want float32 [1, " +
                      std::to_string(n) + ", " + std::to_string(meta.vocab_size) + "])",
                  "re-export the package with this edgekit version");
    }
    *last_row = logits.const_data_ptr<float>() + (n - 1) * meta.vocab_size;
    if (all_rows != nullptr) *all_rows = logits.const_data_ptr<float>();
    return Status::Ok();
  }

  // Feeds tokens[0..n) from cache slot pos in chunks of max_chunk; last_row as run_forward.
  Status run_chunked(const int64_t* tokens, int64_t n, int64_t pos, const float** last_row) {
    for (int64_t i = 0; i < n; i += meta.max_chunk) {
      int64_t c = std::min<int64_t>(meta.max_chunk, n - i);
      Status r = run_forward(tokens + i, c, pos + i, last_row);
      if (!r.ok()) return r;
    }
    return Status::Ok();
  }

  int64_t argmax(const float* row) const { return greedy_argmax(row, meta.vocab_size); }
};

Runner::Runner() : impl_(new Impl) {}
Runner::~Runner() = default;

const ProgramMeta& Runner::meta() const { return impl_->meta; }
int Runner::threads() const { return impl_->threads; }
double Runner::load_ms() const { return impl_->load_ms; }

Status Runner::load(const std::string& pte_path, int threads) {
  Impl& s = *impl_;
  auto t0 = Clock::now();
  const char* slash = std::strrchr(pte_path.c_str(), '/');
  s.name = slash ? slash + 1 : pte_path;
  struct stat st;
  if (::stat(pte_path.c_str(), &st) != 0) {
    return make(Code::kNotFound, "model file not found: " + pte_path,
                "pass the .pte inside an exported package (edgekit export ... -o DIR)");
  }
  if (!S_ISREG(st.st_mode)) {
    return make(Code::kNotFound, "not a regular file: " + pte_path, "pass the path of a .pte file");
  }
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (threads > 0 && pool != nullptr) {
    if (!pool->_unsafe_reset_threadpool(static_cast<uint32_t>(threads))) {
      return make(Code::kRuntime, "could not resize the threadpool to " + std::to_string(threads),
                  "try a smaller --threads");
    }
  }
  s.threads = pool ? static_cast<int>(pool->get_thread_count()) : 1;

  s.module = std::make_unique<Module>(pte_path, Module::LoadMode::Mmap);
  Error e = s.module->load();
  if (e != Error::Ok) {
    return make(Code::kBadProgram,
                with_runtime_detail("cannot load " + s.name + " as an ExecuTorch program: " +
                                    error_name(e)),
                "the file is truncated or not a .pte; re-export the package");
  }
  auto names = s.module->method_names();
  if (!names.ok() || names.get().count("get_edgekit_abi") == 0) {
    return make(Code::kBadProgram, s.name + " is not an edgekit program (no get_edgekit_abi)",
                "export it with `edgekit export`");
  }
  Status st2 = s.read_const("get_edgekit_abi", &s.meta.abi);
  if (!st2.ok()) return st2;
  if (s.meta.abi != kEdgekitAbi) {
    return make(Code::kAbiMismatch,
                s.name + " has edgekit ABI " + std::to_string(s.meta.abi) + ", runner supports " +
                    std::to_string(kEdgekitAbi),
                "re-export the package with this edgekit version, or rebuild the runner "
                "(edgekit build-runner --force) from the edgekit that exported it");
  }
  struct {
    const char* method;
    int64_t* value;
  } consts[] = {{"get_max_seq_len", &s.meta.max_seq_len}, {"get_max_chunk", &s.meta.max_chunk},
                {"get_vocab_size", &s.meta.vocab_size},   {"get_n_layers", &s.meta.n_layers},
                {"get_bos_id", &s.meta.bos_id},           {"get_eos_id", &s.meta.eos_id}};
  for (auto& c : consts) {
    Status r = s.read_const(c.method, c.value);
    if (!r.ok()) return r;
  }
  if (s.meta.max_chunk < 1 || s.meta.max_seq_len < 1 || s.meta.vocab_size < 1 ||
      s.meta.max_chunk > s.meta.max_seq_len) {
    return make(Code::kBadProgram,
                s.name + " has inconsistent metadata (max_seq_len " +
                    std::to_string(s.meta.max_seq_len) + ", max_chunk " +
                    std::to_string(s.meta.max_chunk) + ", vocab " +
                    std::to_string(s.meta.vocab_size) + ")",
                "re-export the package");
  }
  e = s.module->load_method("forward");
  if (e != Error::Ok) {
    return make(Code::kBadProgram,
                with_runtime_detail("cannot load method forward of " + s.name + ": " +
                                    error_name(e)),
                "a missing operator or backend means the runner was built without it; rebuild "
                "with `edgekit build-runner --force` or re-export");
  }
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  auto m = s.module->method("forward");
#pragma GCC diagnostic pop
  if (!m.ok()) {
    return make(Code::kBadProgram, "cannot get method forward of " + s.name + ": " +
                                       error_name(m.error()));
  }
  s.forward = m.get();
  if (s.forward->inputs_size() != 2 || s.forward->outputs_size() < 1) {
    return make(Code::kBadProgram,
                s.name + ": forward takes " + std::to_string(s.forward->inputs_size()) +
                    " inputs, edgekit ABI 1 wants 2 (tokens, input_pos)",
                "re-export the package");
  }
  s.tok_buf.assign(static_cast<size_t>(s.meta.max_chunk), 0);
  s.pos_buf.assign(static_cast<size_t>(s.meta.max_chunk), 0);
  s.load_ms = ms_since(t0);
  return Status::Ok();
}

// Arguments both generate paths validate the same way.
static Status check_prompt(const ProgramMeta& m, const std::vector<int64_t>& prompt,
                           int64_t max_new_tokens) {
  if (prompt.empty()) return make(Code::kBadArgs, "empty prompt", "pass at least one token id");
  if (max_new_tokens < 1) {
    return make(Code::kBadArgs, "max_new_tokens must be >= 1", "pass --max-new-tokens 1 or more");
  }
  for (int64_t id : prompt) {
    if (id < 0 || id >= m.vocab_size) {
      return make(Code::kBadArgs,
                  "prompt token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                      std::to_string(m.vocab_size) + ")",
                  "encode the prompt with the package's tokenizer");
    }
  }
  if (static_cast<int64_t>(prompt.size()) > m.max_seq_len) {
    return make(Code::kContext,
                "prompt of " + std::to_string(prompt.size()) + " tokens exceeds max_seq_len " +
                    std::to_string(m.max_seq_len),
                "shorten the prompt or re-export with a larger --max-seq-len");
  }
  return Status::Ok();
}

Status Runner::generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                        const std::vector<int64_t>& stop_ids, bool ignore_stop,
                        std::vector<int64_t>* out, GenerateStats* stats) {
  Impl& s = *impl_;
  if (s.forward == nullptr) return make(Code::kRuntime, "generate() before a successful load()");
  const ProgramMeta& m = s.meta;
  if (Status st = check_prompt(m, prompt, max_new_tokens); !st.ok()) return st;
  out->clear();
  out->reserve(static_cast<size_t>(max_new_tokens));
  *stats = GenerateStats();
  stats->prompt_tokens = static_cast<int64_t>(prompt.size());

  const float* row = nullptr;
  int64_t pos = 0;
  auto t0 = Clock::now();
  for (size_t i = 0; i < prompt.size(); i += static_cast<size_t>(m.max_chunk)) {
    int64_t n = std::min<int64_t>(m.max_chunk, static_cast<int64_t>(prompt.size() - i));
    Status r = s.run_forward(prompt.data() + i, n, pos, &row);
    if (!r.ok()) return r;
    pos += n;
  }
  stats->prefill_ms = ms_since(t0);
  stats->stop_reason = "length";
  Clock::time_point t1;
  bool first = true;
  for (int64_t step = 0; step < max_new_tokens; ++step) {
    int64_t tok = greedy_argmax(row, m.vocab_size);
    if (first) {
      t1 = Clock::now();
      stats->ttft_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
      first = false;
    }
    if (!ignore_stop && std::find(stop_ids.begin(), stop_ids.end(), tok) != stop_ids.end()) {
      stats->stop_reason = "eos";
      break;
    }
    out->push_back(tok);
    if (static_cast<int64_t>(out->size()) == max_new_tokens) break;
    if (pos >= m.max_seq_len) {
      stats->stop_reason = "context";
      break;
    }
    Status r = s.run_forward(&tok, 1, pos, &row);
    if (!r.ok()) return r;
    pos += 1;
  }
  stats->decode_ms = first ? 0.0 : ms_since(t1);
  stats->new_tokens = static_cast<int64_t>(out->size());
  return Status::Ok();
}

Status Runner::generate_spec(Runner* draft, const std::vector<int64_t>& prompt,
                             int64_t max_new_tokens, int64_t draft_k,
                             const std::vector<int64_t>& stop_ids, bool ignore_stop,
                             std::vector<int64_t>* out, GenerateStats* stats) {
  Impl& s = *impl_;
  if (s.forward == nullptr || draft == nullptr || draft->impl_->forward == nullptr) {
    return make(Code::kRuntime, "generate_spec() before a successful load() of target and draft");
  }
  Impl& d = *draft->impl_;
  const ProgramMeta& m = s.meta;
  if (d.meta.vocab_size != m.vocab_size) {
    return make(Code::kBadArgs,
                "draft " + d.name + " has vocabulary " + std::to_string(d.meta.vocab_size) +
                    ", target " + std::to_string(m.vocab_size),
                "use a draft exported from a model with the target's tokenizer");
  }
  if (d.meta.max_seq_len < m.max_seq_len) {
    return make(Code::kBadArgs,
                "draft " + d.name + " holds " + std::to_string(d.meta.max_seq_len) +
                    " cache rows, fewer than the target's " + std::to_string(m.max_seq_len),
                "export the draft with the target's --max-seq-len");
  }
  if (draft_k < 1 || draft_k + 1 > m.max_chunk) {
    return make(Code::kBadArgs,
                "--draft-k " + std::to_string(draft_k) + ": a verification of k + 1 tokens must fit "
                "the target's max_chunk " + std::to_string(m.max_chunk),
                "use --draft-k between 1 and " + std::to_string(m.max_chunk - 1));
  }
  if (Status st = check_prompt(m, prompt, max_new_tokens); !st.ok()) return st;
  out->clear();
  out->reserve(static_cast<size_t>(max_new_tokens));
  *stats = GenerateStats();
  stats->prompt_tokens = static_cast<int64_t>(prompt.size());
  auto is_stop = [&](int64_t t) {
    return !ignore_stop && std::find(stop_ids.begin(), stop_ids.end(), t) != stop_ids.end();
  };

  // ctx: every token of the sequence; the target cache holds rows for ctx[0..pos), the draft
  // cache for ctx[0..draft_fed). ctx.back() is never in the target cache yet.
  std::vector<int64_t> ctx(prompt.begin(), prompt.end());
  ctx.reserve(prompt.size() + static_cast<size_t>(max_new_tokens) + static_cast<size_t>(draft_k) + 1);
  std::vector<int64_t> verify(static_cast<size_t>(draft_k) + 1), drafted, fresh;
  const float* row = nullptr;
  auto t0 = Clock::now();
  Status r = s.run_chunked(prompt.data(), static_cast<int64_t>(prompt.size()), 0, &row);
  if (!r.ok()) return r;
  int64_t pos = static_cast<int64_t>(prompt.size());
  int64_t draft_fed = 0;
  stats->prefill_ms = ms_since(t0);
  stats->stop_reason = "length";
  int64_t first = s.argmax(row);
  auto t1 = Clock::now();
  stats->ttft_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
  if (is_stop(first)) {
    stats->stop_reason = "eos";
    return Status::Ok();
  }
  out->push_back(first);
  ctx.push_back(first);
  bool done = static_cast<int64_t>(out->size()) >= max_new_tokens;
  while (!done) {
    int64_t start = pos;  // == ctx.size() - 1
    int64_t room = m.max_seq_len - start - 1;
    if (room < 2) {
      stats->stop_reason = "context";
      break;
    }
    int64_t k = std::min<int64_t>(draft_k, room - 1);
    // Draft: re-sync (feed what its cache lacks, incl. the last bonus token), then k greedy steps.
    auto td = Clock::now();
    const float* drow = nullptr;
    r = d.run_chunked(ctx.data() + draft_fed, static_cast<int64_t>(ctx.size()) - draft_fed,
                      draft_fed, &drow);
    if (!r.ok()) return r;
    drafted.clear();
    for (int64_t i = 0; i < k; ++i) {
      int64_t t = d.argmax(drow);
      drafted.push_back(t);
      if (i + 1 < k) {
        r = d.run_forward(&t, 1, start + 1 + i, &drow);
        if (!r.ok()) return r;
      }
    }
    stats->draft_ms += ms_since(td);
    // Verify [last, d1..dk] in one target forward.
    auto tv = Clock::now();
    verify[0] = ctx.back();
    std::copy(drafted.begin(), drafted.end(), verify.begin() + 1);
    const float* rows = nullptr;
    r = s.run_forward(verify.data(), k + 1, start, &row, &rows);
    if (!r.ok()) return r;
    fresh.clear();
    int64_t a = 0;
    for (; a < k; ++a) {
      int64_t tgt = s.argmax(rows + a * m.vocab_size);
      fresh.push_back(tgt);
      if (tgt != drafted[static_cast<size_t>(a)]) break;
    }
    if (a == k) fresh.push_back(s.argmax(rows + k * m.vocab_size));  // bonus token
    stats->verify_ms += ms_since(tv);
    stats->steps += 1;
    stats->accepted += static_cast<int64_t>(fresh.size());
    // Rows kept: last + the a accepted drafts; the newest token is fed next step.
    pos = start + static_cast<int64_t>(fresh.size());
    // The draft wrote rows for last, d1..d(k-1) at start..start+k-1; those matching ctx stay.
    draft_fed = start + 1 + std::min<int64_t>(a, k - 1);
    for (int64_t t : fresh) {
      if (is_stop(t)) {
        stats->stop_reason = "eos";
        done = true;
        break;
      }
      out->push_back(t);
      ctx.push_back(t);
      if (static_cast<int64_t>(out->size()) == max_new_tokens) {
        done = true;
        break;
      }
    }
  }
  stats->decode_ms = ms_since(t1);
  stats->new_tokens = static_cast<int64_t>(out->size());
  return Status::Ok();
}

}  // namespace edgekit
