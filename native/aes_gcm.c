/*
 * Cloister native AES-256-GCM for the STREAM chunk layout (see src/seal/aead.ts).
 *
 * Why this exists: Node's cipher API allocates, zero-fills and copies a fresh buffer for every
 * update() and pays a cipher lookup per createCipheriv(); at 1 MiB chunks that overhead costs more
 * than the encryption itself (docs/performance.md). This addon encrypts or decrypts a whole batch
 * of chunks in one call, straight into the caller's buffer, with one EVP context and one key
 * schedule per batch.
 *
 * Everything that crosses from JavaScript is checked here before a pointer is used: types, key and
 * nonce-prefix lengths, chunk size, index range, exact output length, no overlap of input and output
 * (one chunk may be processed in place).
 * A violation throws TypeError/RangeError; nothing is read or written out of bounds.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <node_api.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#if OPENSSL_VERSION_MAJOR < 3
#error "OpenSSL 3 or later is required (EVP_CIPHER_fetch, EVP_CipherInit_ex2)"
#endif

#define KEY_BYTES 32
#define PREFIX_BYTES 7
#define TAG_BYTES 16
/* EVP takes int lengths; 1 GiB chunks leave ample headroom below INT_MAX. */
#define MAX_CHUNK (1u << 30)

enum { RUN_OK = -1, RUN_INTERNAL = -2 };

typedef struct {
  uint8_t *p;
  size_t n;
} bytes;

typedef struct {
  bytes key, prefix, aad, input, output;
  uint32_t first;
  size_t chunk;
  int final;
  size_t count;
  /* Opening only: the last piece is shorter than a tag, so the batch fails at its last chunk. */
  int truncated;
} batch;

/* Returns 0 and leaves a pending exception when the value is not a Uint8Array. */
static int get_bytes(napi_env env, napi_value v, const char *what, bytes *out) {
  bool is_ta = false;
  napi_typedarray_type type;
  size_t len = 0;
  void *data = NULL;
  char msg[96];
  if (napi_is_typedarray(env, v, &is_ta) != napi_ok || !is_ta ||
      napi_get_typedarray_info(env, v, &type, &len, &data, NULL, NULL) != napi_ok ||
      type != napi_uint8_array) {
    snprintf(msg, sizeof msg, "%s must be a Uint8Array", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  out->p = data;
  out->n = len;
  return 1;
}

/* An integer in [lo, hi]; JS numbers beyond 2^53 or fractional are refused rather than rounded. */
static int get_uint(napi_env env, napi_value v, const char *what, double lo, double hi, double *out) {
  napi_valuetype t;
  double d = 0;
  char msg[96];
  if (napi_typeof(env, v, &t) != napi_ok || t != napi_number || napi_get_value_double(env, v, &d) != napi_ok) {
    snprintf(msg, sizeof msg, "%s must be a number", what);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", msg);
    return 0;
  }
  if (!(d >= lo && d <= hi) || d != (double)(uint64_t)d) {
    snprintf(msg, sizeof msg, "%s must be an integer in [%.0f, %.0f]", what, lo, hi);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", msg);
    return 0;
  }
  *out = d;
  return 1;
}

static int overlaps(const bytes *a, const bytes *b) {
  uintptr_t a0 = (uintptr_t)a->p, b0 = (uintptr_t)b->p;
  return a->n > 0 && b->n > 0 && a0 < b0 + b->n && b0 < a0 + a->n;
}

/* Parses (key, noncePrefix, aad, first, chunkSize, final, input, output) and checks every length. */
static int parse_batch(napi_env env, napi_callback_info info, int sealing, batch *b) {
  size_t argc = 8;
  napi_value argv[8];
  double first = 0, chunk = 0;
  bool final = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return 0;
  if (argc != 8) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "expected 8 arguments");
    return 0;
  }
  if (!get_bytes(env, argv[0], "key", &b->key) || !get_bytes(env, argv[1], "noncePrefix", &b->prefix) ||
      !get_bytes(env, argv[2], "aad", &b->aad) || !get_uint(env, argv[3], "first", 0, UINT32_MAX, &first) ||
      !get_uint(env, argv[4], "chunkSize", 1, MAX_CHUNK, &chunk) ||
      !get_bytes(env, argv[6], "input", &b->input) || !get_bytes(env, argv[7], "output", &b->output))
    return 0;
  if (napi_get_value_bool(env, argv[5], &final) != napi_ok) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "final must be a boolean");
    return 0;
  }
  b->first = (uint32_t)first;
  b->chunk = (size_t)chunk;
  b->final = final;
  if (b->key.n != KEY_BYTES) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "key must be 32 bytes");
    return 0;
  }
  if (b->prefix.n != PREFIX_BYTES) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "noncePrefix must be 7 bytes");
    return 0;
  }
  if (b->aad.n > INT_MAX) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "aad is too long");
    return 0;
  }
  size_t stride = sealing ? b->chunk : b->chunk + TAG_BYTES;
  size_t n = b->input.n;
  b->count = n == 0 ? 1 : n / stride + (n % stride != 0);
  /* Chunk indices go into a 32-bit nonce field: wrapping would reuse nonces under the same key. */
  if (b->count - 1 > (size_t)(UINT32_MAX - b->first)) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "chunk index would exceed 2^32-1");
    return 0;
  }
  size_t tags = b->count * TAG_BYTES; /* count <= n + 1 and n fits in memory, so this cannot wrap */
  size_t want;
  if (sealing) {
    if (n > SIZE_MAX - tags) {
      napi_throw_type_error(env, "ERR_INVALID_ARG", "input is too long");
      return 0;
    }
    want = n + tags;
  } else {
    if (n < tags) {
      napi_throw_type_error(env, "ERR_INVALID_ARG", "input is shorter than its tags");
      return 0;
    }
    want = n - tags;
  }
  if (b->output.n != want) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "output length does not match the batch");
    return 0;
  }
  /* Every chunk but the last is a full stride, so only the last piece can be shorter than a tag;
     then `want` no longer matches the layout and nothing may be decrypted into `output`. */
  b->truncated = !sealing && n - (b->count - 1) * stride < TAG_BYTES;
  /* One chunk may be processed in place (output starting exactly at input): GCM reads each block
     before writing it, and the tag lies outside the text. Any other overlap would corrupt data. */
  if (overlaps(&b->input, &b->output) && !(b->input.p == b->output.p && b->count == 1)) {
    napi_throw_type_error(env, "ERR_INVALID_ARG", "output must not overlap input (except one chunk in place)");
    return 0;
  }
  return 1;
}

/* Returns RUN_OK, RUN_INTERNAL, or the batch-relative index of the chunk that failed authentication. */
static long run(const EVP_CIPHER *gcm, const batch *b, int sealing) {
  EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
  long result = RUN_OK;
  if (ctx == NULL || !EVP_CipherInit_ex2(ctx, gcm, b->key.p, NULL, sealing, NULL)) {
    EVP_CIPHER_CTX_free(ctx);
    return RUN_INTERNAL;
  }
  uint8_t nonce[12];
  memcpy(nonce, b->prefix.p, PREFIX_BYTES);
  const size_t in_stride = sealing ? b->chunk : b->chunk + TAG_BYTES;
  const size_t out_stride = sealing ? b->chunk + TAG_BYTES : b->chunk;
  for (size_t i = 0; i < b->count && result == RUN_OK; i++) {
    const uint32_t index = b->first + (uint32_t)i;
    const uint8_t *in = b->input.p + i * in_stride;
    uint8_t *out = b->output.p + i * out_stride;
    size_t piece = b->input.n - i * in_stride;
    if (piece > in_stride) piece = in_stride;
    nonce[7] = (uint8_t)(index >> 24);
    nonce[8] = (uint8_t)(index >> 16);
    nonce[9] = (uint8_t)(index >> 8);
    nonce[10] = (uint8_t)index;
    nonce[11] = b->final && i == b->count - 1;
    /* Redundant with parse_batch (`truncated`, exact output length), kept so that no slip in the
       layout arithmetic can ever read or write past a buffer. */
    if (!sealing && piece < TAG_BYTES) {
      result = RUN_INTERNAL;
      break;
    }
    const size_t text_len = sealing ? piece : piece - TAG_BYTES;
    if (i * out_stride + text_len + (sealing ? TAG_BYTES : 0) > b->output.n) {
      result = RUN_INTERNAL;
      break;
    }
    const int text = (int)text_len;
    int len = 0;
    if (!EVP_CipherInit_ex2(ctx, NULL, NULL, nonce, sealing, NULL) ||
        (b->aad.n > 0 && !EVP_CipherUpdate(ctx, NULL, &len, b->aad.p, (int)b->aad.n))) {
      result = RUN_INTERNAL;
      break;
    }
    if (!sealing) {
      uint8_t tag[TAG_BYTES];
      memcpy(tag, in + text, TAG_BYTES);
      if (!EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TAG_BYTES, tag)) {
        result = RUN_INTERNAL;
        break;
      }
    }
    if (text > 0 && (!EVP_CipherUpdate(ctx, out, &len, in, text) || len != text)) {
      result = RUN_INTERNAL;
      break;
    }
    if (!EVP_CipherFinal_ex(ctx, out + text, &len)) {
      result = sealing ? RUN_INTERNAL : (long)i;
      break;
    }
    if (sealing && !EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TAG_BYTES, out + text)) result = RUN_INTERNAL;
  }
  /* Freeing resets the context, and the GCM provider clears its key schedule as it frees it. */
  EVP_CIPHER_CTX_free(ctx);
  return result;
}

static napi_value call(napi_env env, napi_callback_info info, int sealing) {
  const EVP_CIPHER *gcm = NULL;
  batch b;
  napi_value ret;
  if (napi_get_instance_data(env, (void **)&gcm) != napi_ok || gcm == NULL) {
    napi_throw_error(env, NULL, "cloister_aes: not initialised");
    return NULL;
  }
  memset(&b, 0, sizeof b);
  if (!parse_batch(env, info, sealing, &b)) return NULL;
  long r = b.truncated ? (long)(b.count - 1) : run(gcm, &b, sealing);
  if (r != RUN_OK) {
    /* Leave no plaintext (or half-sealed output) behind for the caller to misuse. */
    if (b.output.n > 0) OPENSSL_cleanse(b.output.p, b.output.n);
    if (r == RUN_INTERNAL) {
      napi_throw_error(env, NULL, "cloister_aes: OpenSSL AES-256-GCM call failed");
      return NULL;
    }
  }
  napi_create_int64(env, r == RUN_OK ? -1 : (int64_t)r, &ret);
  return ret;
}

static napi_value seal(napi_env env, napi_callback_info info) { return call(env, info, 1); }
static napi_value open_(napi_env env, napi_callback_info info) { return call(env, info, 0); }

static napi_value version(napi_env env, napi_callback_info info) {
  napi_value s;
  (void)info;
  napi_create_string_utf8(env, OpenSSL_version(OPENSSL_VERSION), NAPI_AUTO_LENGTH, &s);
  return s;
}

static void free_cipher(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  EVP_CIPHER_free(data);
}

NAPI_MODULE_INIT() {
  /* Fetch once per environment: an implicit fetch on every init costs a locked provider lookup. */
  EVP_CIPHER *gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
  napi_property_descriptor props[] = {
      {"seal", NULL, seal, NULL, NULL, NULL, napi_enumerable, NULL},
      {"open", NULL, open_, NULL, NULL, NULL, napi_enumerable, NULL},
      {"opensslVersion", NULL, version, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  if (gcm == NULL) {
    napi_throw_error(env, NULL, "cloister_aes: AES-256-GCM is not available from libcrypto");
    return NULL;
  }
  if (napi_set_instance_data(env, gcm, free_cipher, NULL) != napi_ok ||
      napi_define_properties(env, exports, sizeof props / sizeof props[0], props) != napi_ok) {
    return NULL;
  }
  return exports;
}
