// edgekit native runner: loads an edgekit .pte (ExecuTorch program), checks its ABI, runs
// chunked prefill and greedy decode.
//
// Program contract (edgekit ABI 1), shared with edgekit/export:
//   forward(tokens int64 [1, T], input_pos int64 [T]) -> logits float32 [1, T, V],
//     1 <= T <= get_max_chunk(); the KV cache is mutable buffers inside the program, so a
//     call writes cache slots input_pos and a smaller next position rolls back.
//   constant methods returning one int: get_max_seq_len, get_max_chunk, get_vocab_size,
//     get_n_layers, get_edgekit_abi (== kEdgekitAbi), get_bos_id, get_eos_id.
//
// No exception crosses this API: every call returns a Status (code + one-line message).
// The hot path (prefill/decode) does not allocate: input tensors are views over buffers
// sized once at load time.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace edgekit {

// The program ABI this runner understands.
constexpr int64_t kEdgekitAbi = 1;

// Status codes; also the process exit codes of edgekit_runner.
enum class Code : int {
  kOk = 0,
  kRuntime = 1,       // ExecuTorch failed while executing (bug or corrupt weights)
  kBadArgs = 2,       // bad command line / arguments (e.g. token id out of range)
  kNotFound = 3,      // model file missing or unreadable
  kBadProgram = 4,    // not a loadable ExecuTorch program or not an edgekit program
  kAbiMismatch = 5,   // get_edgekit_abi() != kEdgekitAbi
  kContext = 6,       // prompt (+ generation in bench mode) does not fit max_seq_len
};

struct Status {
  Code code = Code::kOk;
  std::string message;  // one line, no trailing newline; empty when ok
  std::string hint;     // how to fix it, may be empty
  bool ok() const { return code == Code::kOk; }
  static Status Ok() { return {}; }
};

// Values read from the program's constant methods.
struct ProgramMeta {
  int64_t abi = 0;
  int64_t max_seq_len = 0;
  int64_t max_chunk = 0;
  int64_t vocab_size = 0;
  int64_t n_layers = 0;
  int64_t bos_id = -1;
  int64_t eos_id = -1;
};

// Timings of one generation, in milliseconds.
struct GenerateStats {
  int64_t prompt_tokens = 0;
  int64_t new_tokens = 0;
  double prefill_ms = 0;  // all prefill chunks (prompt in -> last prompt logits)
  double ttft_ms = 0;     // prompt in -> first new token chosen
  double decode_ms = 0;   // after the first token until the last one
  std::string stop_reason;  // "eos" | "length" | "context"
  // Speculative decoding only (generate_spec): target verification forwards, tokens they
  // yielded (accepted drafts + the bonus token, before stop/length truncation), and the time
  // spent in draft forwards (incl. re-syncing its cache) and in verification forwards.
  int64_t steps = 0;
  int64_t accepted = 0;
  double draft_ms = 0;
  double verify_ms = 0;
  double tau() const { return steps > 0 ? static_cast<double>(accepted) / steps : 0.0; }
};

class Runner {
 public:
  Runner();
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Load `pte_path` and read its metadata; `threads` > 0 resizes the shared ExecuTorch
  // threadpool (used by XNNPACK and the CPU kernels) before the program is loaded.
  Status load(const std::string& pte_path, int threads);

  const ProgramMeta& meta() const;
  // Threads in the ExecuTorch threadpool after load().
  int threads() const;
  double load_ms() const;

  // Greedy generation after `prompt` (written at cache slot 0 onwards). Stops at a token in
  // `stop_ids` (not emitted), after `max_new_tokens`, or when the cache is full. With
  // `ignore_stop` the stop ids are not checked (benchmarks). `out` receives the new tokens.
  Status generate(const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                  const std::vector<int64_t>& stop_ids, bool ignore_stop,
                  std::vector<int64_t>* out, GenerateStats* stats);

  // Greedy chain speculative decoding with `draft` (another loaded edgekit program with the
  // same vocabulary, e.g. an early-exit draft_ee{K}.pte or a quantized copy): per step the
  // draft proposes `draft_k` tokens greedily from its own cache (re-synced by position: rows
  // past the accepted prefix are stale and overwritten, the bonus token is fed next), the
  // target verifies [last, d1..dk] in one forward (k + 1 <= max_chunk), the longest prefix
  // where the target's argmax equals the draft token is accepted plus the target's next token,
  // and decoding continues at start + accepted + 1 (rollback = position). Output tokens equal
  // generate()'s. Fills stats->steps/accepted/draft_ms/verify_ms.
  Status generate_spec(Runner* draft, const std::vector<int64_t>& prompt, int64_t max_new_tokens,
                       int64_t draft_k, const std::vector<int64_t>& stop_ids, bool ignore_stop,
                       std::vector<int64_t>* out, GenerateStats* stats);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Peak resident set size of this process in MiB (getrusage).
double peak_rss_mib();

// The most recent error-level log line of the ExecuTorch runtime (empty if none); used to
// make a failure message specific. Requires install_log_sink() to have been called.
std::string last_runtime_error();
// Route ExecuTorch logs through edgekit: shown on stderr only when `verbose`.
void install_log_sink(bool verbose);

}  // namespace edgekit
