// Errors as values for loaders and parsers.
//
// A loader returns Result<T>: either a value or an Error whose message names the file, line or key
// at fault. Callers that cannot recover call value_or_throw(), which raises std::runtime_error
// with the same message.
//
//   Result<ModelConfig> r = load_model_config("model/config.json");
//   if (!r.ok()) { std::cerr << r.error().message << "\n"; return 1; }
//   const ModelConfig& cfg = r.value();
#pragma once

#include <stdexcept>
#include <string>
#include <utility>
#include <variant>

namespace ramstream {

struct Error {
  std::string message;
};

template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : state_(std::move(value)) {}      // NOLINT: implicit on purpose
  Result(Error error) : state_(std::move(error)) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(state_); }
  const T& value() const& { return std::get<T>(state_); }
  T& value() & { return std::get<T>(state_); }
  T value() && { return std::get<T>(std::move(state_)); }  // by value: safe on temporaries
  const Error& error() const { return std::get<Error>(state_); }

  T value_or_throw() && {
    if (!ok()) throw std::runtime_error(error().message);
    return std::get<T>(std::move(state_));
  }

 private:
  std::variant<T, Error> state_;
};

// Result<void> stand-in.
struct Ok {};
using Status = Result<Ok>;

}  // namespace ramstream
