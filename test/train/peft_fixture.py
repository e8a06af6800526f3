"""An independent check of `cloister lora convert`: plain PyTorch, no peft/transformers/safetensors.

Given a tiny llama base in Hugging Face layout (BASE_DIR/config.json and BASE_DIR/model.safetensors,
F32, HF tensor names, q/k rows in HF's rotate-half order), this script
  1. draws random LoRA A/B for the chosen target modules of every layer,
  2. writes OUT_DIR/adapter_model.safetensors and OUT_DIR/adapter_config.json exactly as PEFT's
     save_pretrained lays them out (tensor names base_model.model.<module>.lora_A.weight, config with
     peft_type LORA, r, lora_alpha, target_modules, ...),
  3. computes the Hugging Face llama forward pass (RMSNorm, rotate-half RoPE, grouped-query attention,
     SwiGLU, untied lm_head) of TOKENS in float64, with the adapter applied as PEFT applies it
     (y = W x + scale * B A x, scale = alpha/r or alpha/sqrt(r) with rsLoRA, per-module r and alpha
     from rank_pattern/alpha_pattern), and without it,
  4. writes the next-token log-probabilities to OUT_DIR/logprobs_adapter.f64 and logprobs_base.f64
     (raw little-endian float64, tokens x vocab).

usage: peft_fixture.py BASE_DIR OUT_DIR SPEC_JSON
SPEC_JSON: {"tokens": [...], "seed": 1, "r": 4, "lora_alpha": 8, "use_rslora": false,
            "rank_pattern": {}, "alpha_pattern": {}, "target_modules": ["q_proj", ...], "scale_b": 0.2}
"""
import json
import math
import os
import re
import struct
import sys

import torch

DTYPES = {"F32": (torch.float32, 4)}
MODULE_PATHS = {
    "q_proj": "self_attn.q_proj",
    "k_proj": "self_attn.k_proj",
    "v_proj": "self_attn.v_proj",
    "o_proj": "self_attn.o_proj",
    "gate_proj": "mlp.gate_proj",
    "up_proj": "mlp.up_proj",
    "down_proj": "mlp.down_proj",
}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        dtype, size = DTYPES[entry["dtype"]]
        begin, end = entry["data_offsets"]
        raw = bytearray(data[8 + n + begin : 8 + n + end])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.zeros(0, dtype=dtype)
        out[name] = t.reshape(entry["shape"]).to(torch.float64)
    return out


def write_safetensors(path, tensors):
    """The layout the safetensors library writes: u64 header length, JSON header padded with spaces
    to a multiple of 8, then each tensor's little-endian bytes in header order."""
    header = {"__metadata__": {"format": "pt"}}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        b = t.to(torch.float32).contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header, separators=(",", ":"))
    text += " " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text.encode())
        for b in blobs:
            f.write(b)


def pattern_value(pattern, module, default):
    # PEFT's get_pattern_key: the first key k with re.match(rf"(^|.*\.){k}$", module).
    for k, v in pattern.items():
        if re.match(rf"(^|.*\.){k}$", module):
            return v
    return default


def main():
    base_dir, out_dir, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    with open(os.path.join(base_dir, "config.json")) as f:
        cfg = json.load(f)
    w = read_safetensors(os.path.join(base_dir, "model.safetensors"))
    dim, heads, kv_heads = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    layers, eps, theta = cfg["num_hidden_layers"], cfg["rms_norm_eps"], cfg["rope_theta"]
    hd = dim // heads

    # 1. The adapter: random A and B (PEFT starts B at zero; a trained B is not).
    gen = torch.Generator().manual_seed(spec["seed"])
    r, alpha, rslora = spec["r"], spec["lora_alpha"], spec.get("use_rslora", False)
    rank_pattern, alpha_pattern = spec.get("rank_pattern", {}), spec.get("alpha_pattern", {})
    lora = {}  # module path -> (A, B, scale)
    tensors = {}
    for layer in range(layers):
        for target in spec["target_modules"]:
            module = f"model.layers.{layer}.{MODULE_PATHS[target]}"
            weight = w[f"{module}.weight"]
            out_features, in_features = weight.shape
            rank = pattern_value(rank_pattern, module, r)
            a_alpha = pattern_value(alpha_pattern, module, alpha)
            scale = a_alpha / math.sqrt(rank) if rslora else a_alpha / rank
            A = (torch.rand(rank, in_features, generator=gen, dtype=torch.float64) * 2 - 1) / math.sqrt(in_features)
            B = torch.randn(out_features, rank, generator=gen, dtype=torch.float64) * spec["scale_b"]
            # Stored as F32, as PEFT saves them; the forward pass uses exactly the stored values.
            A, B = A.to(torch.float32).to(torch.float64), B.to(torch.float32).to(torch.float64)
            lora[module] = (A, B, scale)
            tensors[f"base_model.model.{module}.lora_A.weight"] = A
            tensors[f"base_model.model.{module}.lora_B.weight"] = B
    os.makedirs(out_dir, exist_ok=True)
    write_safetensors(os.path.join(out_dir, "adapter_model.safetensors"), tensors)
    config = {
        "alpha_pattern": alpha_pattern,
        "auto_mapping": None,
        "base_model_name_or_path": base_dir,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "layer_replication": None,
        "layers_pattern": None,
        "layers_to_transform": None,
        "loftq_config": {},
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "megatron_config": None,
        "megatron_core": "megatron.core",
        "modules_to_save": None,
        "peft_type": "LORA",
        "r": r,
        "rank_pattern": rank_pattern,
        "revision": None,
        "target_modules": sorted(spec["target_modules"]),
        "task_type": "CAUSAL_LM",
        "use_dora": False,
        "use_rslora": rslora,
    }
    with open(os.path.join(out_dir, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)

    # 2. The Hugging Face llama forward pass.
    tokens = torch.tensor(spec["tokens"], dtype=torch.long)
    T = len(tokens)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rotate_half(x):
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def forward(with_adapter):
        def linear(x, module):
            y = x @ w[f"{module}.weight"].T
            if with_adapter and module in lora:
                A, B, scale = lora[module]
                y = y + scale * ((x @ A.T) @ B.T)
            return y

        h = w["model.embed_tokens.weight"][tokens]
        mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
        for layer in range(layers):
            p = f"model.layers.{layer}"
            x = rms(h, w[f"{p}.input_layernorm.weight"])
            q = linear(x, f"{p}.self_attn.q_proj").view(T, heads, hd)
            k = linear(x, f"{p}.self_attn.k_proj").view(T, kv_heads, hd)
            v = linear(x, f"{p}.self_attn.v_proj").view(T, kv_heads, hd)
            q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
            # HF repeat_kv: query head h reads key/value head h // (heads / kv_heads).
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
            scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd) + mask
            attn = torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, heads * hd)
            h = h + linear(attn, f"{p}.self_attn.o_proj")
            x = rms(h, w[f"{p}.post_attention_layernorm.weight"])
            gate = linear(x, f"{p}.mlp.gate_proj")
            up = linear(x, f"{p}.mlp.up_proj")
            h = h + linear(torch.nn.functional.silu(gate) * up, f"{p}.mlp.down_proj")
        logits = rms(h, w["model.norm.weight"]) @ w["lm_head.weight"].T
        return logits.log_softmax(-1)

    for name, with_adapter in (("logprobs_adapter.f64", True), ("logprobs_base.f64", False)):
        with open(os.path.join(out_dir, name), "wb") as f:
            f.write(forward(with_adapter).contiguous().numpy().astype("<f8").tobytes())


if __name__ == "__main__":
    main()
