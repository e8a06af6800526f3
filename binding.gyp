{
  "targets": [
    {
      "target_name": "cloister_aes",
      "sources": ["native/aes_gcm.c"],
      "defines": ["NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000", "OPENSSL_NO_DEPRECATED"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wconversion", "-Wno-sign-conversion", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"],
      "libraries": ["-lcrypto"]
    }
  ]
}
