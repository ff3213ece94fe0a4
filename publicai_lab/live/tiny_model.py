"""A tiny random-weight Llama that a real vLLM server can load, built offline in a second.

Nothing can be downloaded from a model hub on our test machines, yet the live stack must be
exercised against a real vLLM server. So we build the smallest model vLLM's CPU backend accepts:
a ``LlamaForCausalLM`` with hidden size 128, 2 attention heads of 64 (head_dim 16 crashes the CPU
attention kernel), one KV head, 2 layers, and a byte-level BPE tokenizer of 512 entries trained here
with ``tokenizers`` on a generated corpus, with a Llama-3-style chat template. Its output is
gibberish; its *serving* path (tokenize, schedule, attend, sample, stream) is vLLM's real one.

A second size, ``size="small"`` (hidden 768, 12 heads of 64, 4 KV heads, 4 layers, 25M
parameters, 50 MB in bfloat16), is for timing. The tiny model's step is all Python (scheduler,
input preparation, sampling), the kind of work whose speed this shared host moves most: its
inter-token latency in 4-second windows varies by 15 % (sd/mean) and by 8 % between 30-second
windows. The small model's weights outgrow the core's caches, so its step is mostly matrix
arithmetic and memory traffic: 6.5 % and 4.3 % (docs/fidelity.md §7). Same tokenizer, same chat
template; served as ``publicai-lab/small-llama``.

Weights are drawn from a ``numpy.random.Generator`` seeded by ``seed`` (not torch's global RNG),
and the tokenizer's corpus from the same seed, so a given seed gives byte-identical files.

    >>> from publicai_lab.live.tiny_model import build_tiny_model
    >>> path = build_tiny_model(".cache/tiny-model")     # doctest: +SKIP

Needs ``torch``, ``transformers``, ``tokenizers`` and ``safetensors`` (all come with vLLM).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from publicai_lab.errors import PublicAILabError

if TYPE_CHECKING:
    from publicai_lab.live.backends import VLLMServer

__all__ = ["build_tiny_model", "is_complete", "TINY_GEOMETRY", "SMALL_GEOMETRY", "GEOMETRIES", "CHAT_TEMPLATE",
           "SERVED_MODEL_NAME", "SERVED_MODEL_NAMES", "TOY_VLLM_ARGS", "timing_server", "add_cli"]

#: the name the tiny model is served under (the model of scenarios/toy.yaml)
SERVED_MODEL_NAME = "publicai-lab/tiny-llama"
#: vLLM arguments matching toy.yaml's engine: max_num_seqs 32, max_num_batched_tokens 2048,
#: kv_cache_tokens 16384. vLLM's CPU backend uses blocks of 128 tokens (block size 16 fails to
#: start), so 16384 tokens = 128 blocks; ``--enforce-eager`` skips torch.compile's warm-up.
TOY_VLLM_ARGS: tuple[str, ...] = ("--enforce-eager", "--max-num-seqs", "32", "--max-num-batched-tokens", "2048",
                                  "--num-gpu-blocks-override", "128")

#: bump when the recipe changes, so cached directories built by an older recipe are rebuilt
RECIPE_VERSION = 1
MARKER = "publicai_tiny_model.json"

TINY_GEOMETRY: dict[str, int] = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 256,
    "vocab_size": 512,
    "max_position_embeddings": 2048,
}
#: the timing model: 25M parameters (50 MB in bf16, beyond the 32 MB L3 the core shares), about
#: 11 ms a decode step for 8 sequences and 0.33 ms a prompt token on one core of the CI machine
SMALL_GEOMETRY: dict[str, int] = {**TINY_GEOMETRY, "hidden_size": 768, "num_attention_heads": 12,
                                  "num_key_value_heads": 4, "num_hidden_layers": 4, "intermediate_size": 2048}
GEOMETRIES: dict[str, dict[str, int]] = {"tiny": TINY_GEOMETRY, "small": SMALL_GEOMETRY}
SERVED_MODEL_NAMES: dict[str, str] = {"tiny": SERVED_MODEL_NAME, "small": "publicai-lab/small-llama"}

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
EOT = "<|eot_id|>"
HEADER_START = "<|start_header_id|>"
HEADER_END = "<|end_header_id|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [BOS, EOS, EOT, HEADER_START, HEADER_END, PAD]

#: Llama-3 style: bos, then per message a role header and the content closed by <|eot_id|>.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)

_WORDS = (
    "the of and to in is that it for on was with as be by at this from or an are not have but "
    "which one all were can their there been if more when will would who so no out up into than "
    "them only other new some could time these two may first then do any like my now over such "
    "our man me even most made after also did many before must through back years where much your "
    "way well down should because each just those people how too little state good very make world "
    "still own see men work long get here between both life being under never day same another know "
    "while last might us great old year off come since against go came right used take three "
    "federated inference model token request server gateway route policy latency queue cache "
    "public compute partner cluster backend replica prompt answer question user assistant system "
    "hello please thank you what why where who tell explain write story poem code data science"
).split()
_PUNCT = [".", ",", "?", "!", ":", ";"]


def _corpus(rng: np.random.Generator, sentences: int = 3000) -> list[str]:
    """Generated text covering common words, numbers, punctuation, case and newlines — enough for
    512 BPE merges to form real subwords; byte-level fallback covers everything else."""
    out: list[str] = []
    for _ in range(sentences):
        n = int(rng.integers(4, 16))
        words = [str(_WORDS[int(i)]) for i in rng.integers(0, len(_WORDS), size=n)]
        if rng.random() < 0.3:
            words.insert(int(rng.integers(0, n)), str(int(rng.integers(0, 10_000))))
        text = " ".join(words)
        if rng.random() < 0.5:
            text = text[0].upper() + text[1:]
        text += str(_PUNCT[int(rng.integers(0, len(_PUNCT)))])
        out.append(text + ("\n" if rng.random() < 0.2 else ""))
    return out


def _train_tokenizer(rng: np.random.Generator, vocab_size: int):  # -> tokenizers.Tokenizer
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(rng), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # A plain completion prompt gets <|begin_of_text|> like Llama 3; chat prompts carry it in the
    # template and vLLM tokenizes them without special tokens, so it is never doubled.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)])
    return tok


def _random_state_dict(rng: np.random.Generator, config) -> dict:  # -> dict[str, torch.Tensor]
    """Every parameter of the model drawn from ``rng``: N(0, 0.02) matrices, unit norm weights."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in LlamaForCausalLM(config).state_dict().items()}
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        if name.endswith("norm.weight"):
            arr = np.ones(shape, dtype=np.float32)
        else:
            arr = rng.normal(0.0, 0.02, size=shape).astype(np.float32)
        state[name] = torch.from_numpy(arr).to(torch.bfloat16)
    return state


def is_complete(path: str | os.PathLike[str], *, seed: int | None = None, size: str = "tiny") -> bool:
    """True if ``path`` holds a model of ``size`` built by this recipe version (and ``seed``, if given)."""
    marker = Path(path) / MARKER
    try:
        meta = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if meta.get("recipe_version") != RECIPE_VERSION:
        return False
    if seed is not None and meta.get("seed") != seed:
        return False
    if meta.get("geometry") != GEOMETRIES[size]:
        return False
    return all((Path(path) / f).is_file() for f in meta.get("files", []))


def _build_into(tmp: Path, seed: int, geometry: dict[str, int]) -> None:
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

    seq = np.random.SeedSequence(seed)
    rng_tok, rng_weights = (np.random.default_rng(s) for s in seq.spawn(2))

    raw = _train_tokenizer(rng_tok, geometry["vocab_size"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=BOS, eos_token=EOT, pad_token=PAD,
        model_max_length=geometry["max_position_embeddings"], clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(tmp)

    bos_id, eos_id, eot_id = (raw.token_to_id(t) for t in (BOS, EOS, EOT))
    pad_id = raw.token_to_id(PAD)
    config = LlamaConfig(
        **geometry,
        hidden_act="silu",
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=[eot_id, eos_id],
        pad_token_id=pad_id,
        torch_dtype="bfloat16",
    )
    config.architectures = ["LlamaForCausalLM"]
    config.save_pretrained(tmp)
    state = _random_state_dict(rng_weights, config)
    state.pop("lm_head.weight", None)  # tied to the embeddings
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    GenerationConfig(bos_token_id=bos_id, eos_token_id=[eot_id, eos_id],
                     pad_token_id=pad_id).save_pretrained(tmp)

    files = sorted(p.name for p in tmp.iterdir() if p.is_file())
    (tmp / MARKER).write_text(json.dumps(
        {"recipe_version": RECIPE_VERSION, "seed": seed, "files": files,
         "geometry": geometry}, indent=2) + "\n")


def build_tiny_model(out_dir: str | os.PathLike[str], *, seed: int = 0, size: str = "tiny") -> Path:
    """Build the model of ``size`` ("tiny" or "small") into ``out_dir``; return its absolute path
    (what ``--model`` takes).

    A directory already holding this recipe's model of that size and ``seed`` is reused as is. The model is
    built in a sibling temporary directory and renamed into place, so a reader never sees half a
    model and two processes building at once (pytest-xdist workers) both end with a whole one.
    A directory holding anything else is never overwritten.
    """
    if size not in GEOMETRIES:
        raise PublicAILabError(f"model size {size!r}: unknown; choose one of {', '.join(GEOMETRIES)}")
    out = Path(out_dir).expanduser().resolve()
    if is_complete(out, seed=seed, size=size):
        return out
    if out.exists():
        ours = (out / MARKER).exists() or (out.is_dir() and not any(out.iterdir()))
        if not ours:
            raise PublicAILabError(f"{out}: exists and is not a tiny model built by publicai_lab; "
                                   "choose another directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        _build_into(tmp, seed, GEOMETRIES[size])
        if is_complete(out, seed=seed, size=size):  # another process finished first
            return out
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model is meant to be shared
        for f in tmp.iterdir():
            os.chmod(f, 0o644)
        if out.exists():
            shutil.rmtree(out)  # ours (checked above): an older recipe, another seed, or empty
        try:
            os.replace(tmp, out)
        except OSError:
            if not is_complete(out, seed=seed, size=size):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def timing_server(size: str, cache_dir: str | os.PathLike[str], *, cpus: str, api_cpus: str,
                  log_path: str | os.PathLike[str], extra_args: tuple[str, ...] = TOY_VLLM_ARGS,
                  startup_timeout_s: float = 300.0) -> VLLMServer:
    """A (not yet started) vLLM server of the locally built model ``size`` — built into
    ``cache_dir``/``{size}-model`` if it is not there — served under its name, with toy.yaml's
    engine limits, its engine core and worker on ``cpus`` and its API server on ``api_cpus``: the
    timing set-up of the fidelity runs (docs/fidelity.md)."""
    from publicai_lab.live.backends import VLLMServer

    model_dir = build_tiny_model(Path(cache_dir) / f"{size}-model", size=size)
    return VLLMServer(model_dir, served_model_name=SERVED_MODEL_NAMES[size], cpus=cpus, api_cpus=api_cpus,
                      extra_args=extra_args, log_path=log_path, startup_timeout_s=startup_timeout_s)


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    path = build_tiny_model(args.dir, seed=args.seed, size=args.size)
    size_kib = sum(p.stat().st_size for p in path.iterdir() if p.is_file()) / 1024
    print(f"{args.size} model: {path} ({size_kib:,.0f} KiB; serve it with "
          f"`publicai-lab backend --model {path} --served-model-name {SERVED_MODEL_NAMES[args.size]}`)")
    return 0


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """Register ``tiny-model DIR [--seed N] [--size tiny|small]``."""
    p = subparsers.add_parser(
        "tiny-model", help="build a tiny random-weight Llama for offline vLLM tests",
        description="Build a random-weight LlamaForCausalLM (hidden 128, 2 layers, vocab 512) with a "
                    "locally trained byte-level BPE tokenizer and a chat template into DIR. Needs "
                    "torch and transformers (installed with vLLM). An existing complete DIR is reused.")
    p.add_argument("dir", help="output directory")
    p.add_argument("--seed", type=int, default=0, help="random seed for weights and tokenizer (default 0)")
    p.add_argument("--size", choices=sorted(GEOMETRIES), default="tiny",
                   help="tiny (hidden 128, 2 layers; for tests) or small (hidden 768, 4 layers, 25M parameters; "
                        "its step is arithmetic, not Python, so its timings repeat better: for fidelity runs)")
    p.set_defaults(func=_cmd_tiny_model)
