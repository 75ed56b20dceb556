// A JS Error for a failed system call, with Node's `code` (EINVAL…) and negative `errno`.
#pragma once
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace shoal {

inline const char* ErrnoName(int e) {
  switch (e) {
    case EINVAL: return "EINVAL";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case EBADF: return "EBADF";
    case EIO: return "EIO";
    case EMFILE: return "EMFILE";
    case ENFILE: return "ENFILE";
    case EISDIR: return "EISDIR";
    case ENOMEM: return "ENOMEM";
    case EROFS: return "EROFS";
    case ENOTSUP: return "ENOTSUP";
    case ENOSPC: return "ENOSPC";
    case EFBIG: return "EFBIG";
    default: return "EUNKNOWN";
  }
}

inline Napi::Error ErrnoError(Napi::Env env, int err, const std::string& what) {
  auto e = Napi::Error::New(env, what + ": " + std::strerror(err));
  e.Set("code", ErrnoName(err));
  e.Set("errno", Napi::Number::New(env, -err));
  return e;
}

}  // namespace shoal
