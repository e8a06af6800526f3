#!/usr/bin/env python3
"""Independent implementation of the Cloister sealed container format v1, written from
docs/format.md and the vectors alone (no Cloister code was read), to prove the specification is
enough to interoperate. Usage: seal_v1.py docs/vectors/seal.json (exit 0 when every vector passes)."""
import base64, hashlib, hmac, json, struct, sys

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import aes_key_wrap, aes_key_unwrap, InvalidUnwrap
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives import serialization
from cryptography.exceptions import InvalidTag

MAGIC = bytes.fromhex("89434C5345414C0A")
UNDECLARED = 0xFFFFFFFFFFFFFFFF


class SealError(Exception):
    def __init__(self, code, why=""):
        super().__init__(f"{code}: {why}")
        self.code = code


# ---------------------------------------------------------------- HKDF-SHA256
def hkdf_extract(salt, ikm):
    return hmac.new(salt or b"", ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, length):
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def hkdf(ikm, salt, info, length):
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


# ---------------------------------------------------------------- RFC 9180 HPKE
KEM_ID, KDF_ID, AEAD_ID = 0x0020, 0x0001, 0x0002
KEM_SUITE = b"KEM" + struct.pack(">H", KEM_ID)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", KEM_ID, KDF_ID, AEAD_ID)


def labeled_extract(suite, salt, label, ikm):
    return hkdf_extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, length):
    return hkdf_expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def x25519_raw_pub(sk_bytes):
    return X25519PrivateKey.from_private_bytes(sk_bytes).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def derive_key_pair(ikm):
    dkp_prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE, dkp_prk, b"sk", b"", 32)
    return sk, x25519_raw_pub(sk)


def dh(sk, pk):
    return X25519PrivateKey.from_private_bytes(sk).exchange(X25519PublicKey.from_public_bytes(pk))


def extract_and_expand(dh_out, kem_context):
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh_out)
    return labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", kem_context, 32)


def key_schedule_base(shared_secret, info):
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    ctx = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
    key = labeled_expand(HPKE_SUITE, secret, b"key", ctx, 32)
    base_nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", ctx, 12)
    return key, base_nonce


def hpke_seal(pkR, info, aad, pt, ikmE):
    skE, pkE = derive_key_pair(ikmE)
    ss = extract_and_expand(dh(skE, pkR), pkE + pkR)
    key, nonce = key_schedule_base(ss, info)
    return pkE, AESGCM(key).encrypt(nonce, pt, aad)  # seq 0: nonce = base_nonce


def hpke_open(skR, enc, info, aad, ct):
    pkR = x25519_raw_pub(skR)
    ss = extract_and_expand(dh(skR, enc), enc + pkR)
    key, nonce = key_schedule_base(ss, info)
    return AESGCM(key).decrypt(nonce, ct, aad)


# ---------------------------------------------------------------- Cloister v1
HPKE_INFO = b"cloister-seal-v1 data key"


def key_schedule(dk):
    return (hkdf(dk, b"", b"cloister-seal-v1 payload key", 32),
            hkdf(dk, b"", b"cloister-seal-v1 header key", 32))


def hpke_key_id(pub):
    return "hpke:" + base64.urlsafe_b64encode(hashlib.sha256(pub).digest()).rstrip(b"=").decode()


def lp16(b):
    return struct.pack(">H", len(b)) + b


def n_chunks(L, C):
    return max(1, -(-L // C))


def seal(plaintext, C, content_type, name, dk, prefix, kek=None, hpke_pub=None,
         ikmE=None, declare_length=True):
    payload_key, header_key = key_schedule(dk)
    stanzas = []
    if kek is not None:
        stanzas.append(b"\x01" + lp16(kek["uri"].encode()) + lp16(aes_key_wrap(kek["key"], dk)))
    if hpke_pub is not None:
        kid = hpke_key_id(hpke_pub).encode()
        enc, ct = hpke_seal(hpke_pub, HPKE_INFO, kid, dk, ikmE)
        stanzas.append(b"\x02" + lp16(kid) + lp16(enc + ct))
    var = lp16(content_type.encode()) + lp16(name.encode()) + bytes([len(stanzas)]) + b"".join(stanzas)
    H = 36 + len(var) + 32
    L = len(plaintext)
    fixed = MAGIC + struct.pack(">HHIIQ", 1, 1, H, C, L if declare_length else UNDECLARED) + prefix + b"\x00"
    assert len(fixed) == 36
    pre = fixed + var
    header = pre + hmac.new(header_key, pre, hashlib.sha256).digest()
    aad = hashlib.sha256(header).digest()
    g = AESGCM(payload_key)
    n = n_chunks(L, C)
    body = b"".join(
        g.encrypt(prefix + struct.pack(">I", i) + bytes([i == n - 1]), plaintext[i * C:(i + 1) * C], aad)
        for i in range(n))
    return header + body


def parse_header(data):
    if len(data) == 0:
        raise SealError("not-sealed", "empty input")
    if data[:8] != MAGIC[:len(data[:8])]:
        raise SealError("not-sealed", "magic")
    if len(data) < 8:
        raise SealError("truncated", "shorter than magic")
    if len(data) < 10:
        raise SealError("truncated", "no version")
    if struct.unpack(">H", data[8:10])[0] != 1:
        raise SealError("unsupported-version")
    if len(data) < 12:
        raise SealError("truncated", "no suite")
    if struct.unpack(">H", data[10:12])[0] != 1:
        raise SealError("unsupported-suite")
    if len(data) < 36:
        raise SealError("truncated", "fixed part")
    H, C, L = struct.unpack(">IIQ", data[12:28])
    prefix, flags = data[28:35], data[35]
    if not 73 <= H <= 1048576:
        raise SealError("bad-header", "H out of range")
    if not 16 <= C <= 67108864:
        raise SealError("bad-header", "C out of range")
    if L != UNDECLARED and L > 2**53 - 1:
        raise SealError("bad-header", "L out of range")
    if flags != 0:
        raise SealError("bad-header", "flags")
    if len(data) < H:
        raise SealError("truncated", "header")
    hdr = data[:H]
    pos = 36
    end = H - 32

    def take(n):
        nonlocal pos
        if pos + n > end:
            raise SealError("bad-header", "field overruns MAC position")
        b = hdr[pos:pos + n]
        pos += n
        return b

    def utf8(b):
        try:
            return b.decode("utf-8", "strict")
        except UnicodeDecodeError:
            raise SealError("bad-header", "invalid UTF-8")

    ctype = utf8(take(struct.unpack(">H", take(2))[0]))
    name = utf8(take(struct.unpack(">H", take(2))[0]))
    R = take(1)[0]
    if not 1 <= R <= 64:
        raise SealError("bad-header", "recipient count")
    stanzas = []
    for _ in range(R):
        t = take(1)[0]
        kid = utf8(take(struct.unpack(">H", take(2))[0]))
        wk = take(struct.unpack(">H", take(2))[0])
        if t == 1 and len(wk) != 40:
            raise SealError("bad-header", "kbs wrapped key length")
        elif t == 2 and len(wk) != 80:
            raise SealError("bad-header", "hpke wrapped key length")
        elif t not in (1, 2):
            raise SealError("bad-header", "recipient type")
        stanzas.append((t, kid, wk))
    if pos != end:
        raise SealError("bad-header", "bytes left before MAC")
    return dict(H=H, C=C, L=L, prefix=prefix, flags=flags, ctype=ctype, name=name,
                stanzas=stanzas, header=hdr, mac=hdr[end:])


def body_layout(h, size):
    H, C, L = h["H"], h["C"], h["L"]
    if L != UNDECLARED:
        n = n_chunks(L, C)
        expect = H + L + 16 * n
        if size < expect:
            raise SealError("truncated", f"size {size} < {expect}")
        if size > expect:
            raise SealError("trailing-data", f"size {size} > {expect}")
        return L, n
    B = size - H
    q, r = divmod(B, C + 16)
    # Spec 4.2's table: r == 16 is valid only as the whole body (an empty plaintext).
    if 1 <= r <= 15 or (r == 16 and q > 0):
        raise SealError("truncated", "partial chunk")
    if B == 0:
        raise SealError("truncated", "no chunk")
    L = q * C + max(0, r - 16)
    return L, n_chunks(L, C) if r else max(1, q)


def open_sealed(data, kek=None, hpke_priv=None):
    h = parse_header(data)
    L, n = body_layout(h, len(data))
    if n > 2**32:
        raise SealError("bad-header", "too many chunks")
    dk = None
    if kek is not None:
        if len(kek) != 32:
            raise SealError("bad-key", "KEK length")
        for t, kid, wk in h["stanzas"]:
            if t == 1:
                try:
                    dk = aes_key_unwrap(kek, wk)
                    break
                except InvalidUnwrap:
                    pass
    if dk is None and hpke_priv is not None:
        if len(hpke_priv) != 32:
            raise SealError("bad-key", "HPKE private key length")
        my_kid = hpke_key_id(x25519_raw_pub(hpke_priv))
        for t, kid, wk in h["stanzas"]:
            if t == 2 and kid == my_kid:
                try:
                    dk = hpke_open(hpke_priv, wk[:32], HPKE_INFO, kid.encode(), wk[32:])
                    break
                except (InvalidTag, ValueError):
                    pass
    if dk is None or len(dk) != 32:
        raise SealError("no-matching-key")
    payload_key, header_key = key_schedule(dk)
    H = h["H"]
    mac = hmac.new(header_key, h["header"][:H - 32], hashlib.sha256).digest()
    if not hmac.compare_digest(mac, h["mac"]):
        raise SealError("header-tampered")
    aad = hashlib.sha256(h["header"]).digest()
    g = AESGCM(payload_key)
    C = h["C"]
    out = []
    off = H
    for i in range(n):
        clen = (C if i < n - 1 else L - (n - 1) * C) + 16
        nonce = h["prefix"] + struct.pack(">I", i) + bytes([i == n - 1])
        try:
            out.append(g.decrypt(nonce, data[off:off + clen], aad))
        except InvalidTag:
            raise SealError("chunk-tampered", f"chunk {i}")
        off += clen
    return b"".join(out), h


# ---------------------------------------------------------------- vector runner
def main(path):
    d = json.load(open(path))
    ok_all = True
    pos = d["positive"]

    def report(name, ok, why):
        nonlocal ok_all
        ok_all &= ok
        print(f"{'PASS' if ok else 'FAIL'} {name}" + (f": {why}" if why else ""))

    # keys available to negative vectors: first positive vector that has them
    keys = {}
    for v in pos:
        if "kek" in v and "kek" not in keys:
            keys["kek"] = bytes.fromhex(v["kek"]["key"])
        if "hpke" in v and "hpke" not in keys:
            keys["hpke"] = bytes.fromhex(v["hpke"]["privateKey"])

    for v in pos:
        name = "positive/" + v["name"]
        try:
            pt = bytes.fromhex(v["plaintext"])
            kek = {"uri": v["kek"]["uri"], "key": bytes.fromhex(v["kek"]["key"])} if "kek" in v else None
            hp = v.get("hpke")
            if hp:
                pub = bytes.fromhex(hp["publicKey"])
                if x25519_raw_pub(bytes.fromhex(hp["privateKey"])) != pub:
                    report(name, False, "publicKey does not match privateKey")
                    continue
            got = seal(pt, v["chunkSize"], v["contentType"], v["fileName"],
                       bytes.fromhex(v["dataKey"]), bytes.fromhex(v["noncePrefix"]),
                       kek=kek, hpke_pub=bytes.fromhex(hp["publicKey"]) if hp else None,
                       ikmE=bytes.fromhex(hp["ephemeralIkm"]) if hp else None)
            exp = bytes.fromhex(v["sealed"])
            if got != exp:
                i = next((k for k in range(min(len(got), len(exp))) if got[k] != exp[k]), min(len(got), len(exp)))
                report(name, False, f"seal mismatch at byte {i} (got {len(got)} B, expected {len(exp)} B)")
                continue
            why = []
            if kek:
                p, h = open_sealed(exp, kek=kek["key"])
                if p != pt: why.append("open(kek) plaintext mismatch")
                if (h["ctype"], h["name"]) != (v["contentType"], v["fileName"]): why.append("metadata mismatch")
            if hp:
                p, _ = open_sealed(exp, hpke_priv=bytes.fromhex(hp["privateKey"]))
                if p != pt: why.append("open(hpke) plaintext mismatch")
            report(name, not why, "; ".join(why) or "seal byte-exact, open ok with " +
                   "+".join(k for k in ("kek", "hpke") if k in v))
        except SealError as e:
            report(name, False, f"open raised {e}")
        except Exception as e:
            report(name, False, f"exception {type(e).__name__}: {e}")

    for v in d["negative"]:
        name = "negative/" + v["name"]
        try:
            k = keys[v["key"]]
            kw = {"kek": k} if v["key"] == "kek" else {"hpke_priv": k}
            open_sealed(bytes.fromhex(v["sealed"]), **kw)
            report(name, False, f"opened, expected {v['error']}")
        except SealError as e:
            report(name, e.code == v["error"], f"got {e.code}, expected {v['error']}")
        except Exception as e:
            report(name, False, f"exception {type(e).__name__}: {e}")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "seal.json"))
