// qbd::Status and qbd::Result<T>: the one error convention of qbd's library code.
//
// Library code in src/ does not throw. Every fallible operation returns a Status (or a Result<T>,
// which holds either a value or a non-OK Status). Both are [[nodiscard]]; ignoring one takes an
// explicit `s.IgnoreError();  // why`. When an error came from the OS or libnfs, the errno is kept
// so that the NBD reply can carry it (Errno() defaults to EIO for errors without one).
//
// Thread-safety: values; a Status is safe to copy between threads.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

namespace qbd {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kNotFound,         // a file, volume or export is absent
    kCorruption,       // data read back does not match its checksum or format
    kIOError,          // the OS or the network failed an operation
    kInvalidArgument,  // bad input from a user, a client or a config file
    kNotSupported,     // the operation is not implemented by this backend or layer
    kUnavailable,      // a replica or the write quorum is lost
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status NotFound(std::string msg, int err = ENOENT) {
    return Status(Code::kNotFound, std::move(msg), err);
  }
  static Status Corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg), EIO); }
  static Status IOError(std::string msg, int err = EIO) {
    return Status(Code::kIOError, std::move(msg), err);
  }
  static Status InvalidArgument(std::string msg, int err = EINVAL) {
    return Status(Code::kInvalidArgument, std::move(msg), err);
  }
  static Status NotSupported(std::string msg) {
    return Status(Code::kNotSupported, std::move(msg), EOPNOTSUPP);
  }
  static Status Unavailable(std::string msg, int err = EIO) {
    return Status(Code::kUnavailable, std::move(msg), err);
  }
  // An IOError whose message is `what: strerror(err)`.
  static Status FromErrno(std::string_view what, int err);

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return msg_; }
  // The errno to report to an NBD client: the recorded one, else EIO; 0 when ok().
  int Errno() const { return ok() ? 0 : (errno_ != 0 ? errno_ : EIO); }
  // "Corruption: pread chunk 3 part b: ..."; "OK" when ok().
  std::string ToString() const;
  // Returns a copy whose message is prefixed with `context: `.
  Status WithContext(std::string_view context) const;
  void IgnoreError() const {}

  bool IsNotFound() const { return code_ == Code::kNotFound; }
  bool IsCorruption() const { return code_ == Code::kCorruption; }
  bool IsIOError() const { return code_ == Code::kIOError; }
  bool IsInvalidArgument() const { return code_ == Code::kInvalidArgument; }
  bool IsNotSupported() const { return code_ == Code::kNotSupported; }
  bool IsUnavailable() const { return code_ == Code::kUnavailable; }

 private:
  Status(Code code, std::string msg, int err) : code_(code), errno_(err), msg_(std::move(msg)) {}

  Code code_ = Code::kOk;
  int errno_ = 0;
  std::string msg_;
};

const char* CodeName(Status::Code code);

// A value of type T or a non-OK Status.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    if (std::get<Status>(v_).ok()) v_ = Status::IOError("Result built from an OK status");
  }

  bool ok() const { return std::holds_alternative<T>(v_); }
  // REQUIRES: !ok() for status() to be meaningful; OK otherwise.
  Status status() const { return ok() ? Status::OK() : std::get<Status>(v_); }
  // REQUIRES: ok().
  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  void IgnoreError() const {}

 private:
  std::variant<T, Status> v_;
};

}  // namespace qbd

#define QBD_CONCAT_INNER_(a, b) a##b
#define QBD_CONCAT_(a, b) QBD_CONCAT_INNER_(a, b)

// Returns the Status of `expr` from the enclosing function when it is not OK.
#define QBD_RETURN_IF_ERROR(expr)                \
  do {                                           \
    ::qbd::Status qbd_status_ = (expr);          \
    if (!qbd_status_.ok()) return qbd_status_;   \
  } while (0)

// `QBD_ASSIGN_OR_RETURN(auto x, MakeX());` declares x from a Result or returns its Status.
#define QBD_ASSIGN_OR_RETURN(lhs, expr) \
  QBD_ASSIGN_OR_RETURN_IMPL_(QBD_CONCAT_(qbd_result_, __LINE__), lhs, expr)
#define QBD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                               \
  if (!tmp.ok()) return tmp.status();              \
  lhs = std::move(tmp).value()
