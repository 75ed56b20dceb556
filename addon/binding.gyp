{
  "targets": [
    {
      "target_name": "shoal",
      "sources": [
        "src/addon.cc",
        "src/fingerprint.cc",
        "src/fingerprint-table.cc",
        "src/chunk-cache.cc",
        "src/file-io.cc",
        "src/upload-digest.cc",
        "src/thread-priority.cc",
        "src/crc32-fold.cc",
        "../node_modules/@c4312/blake3-native/c/blake3.c",
        "../node_modules/@c4312/blake3-native/c/blake3_dispatch.c",
        "../node_modules/@c4312/blake3-native/c/blake3_portable.c",
        "../node_modules/@c4312/blake3-native/c/blake3_sse2_x86-64_unix.S",
        "../node_modules/@c4312/blake3-native/c/blake3_sse41_x86-64_unix.S",
        "../node_modules/@c4312/blake3-native/c/blake3_avx2_x86-64_unix.S",
        "../node_modules/@c4312/blake3-native/c/blake3_avx512_x86-64_unix.S"
      ],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "../node_modules/@c4312/blake3-native/c"
      ],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_CPP_EXCEPTIONS"],
      "cflags": ["-O3"],
      "cflags_cc": ["-O3", "-std=c++17"]
    }
  ]
}
