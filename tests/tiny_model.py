"""A tiny llama model, generated (no download): whatever it is asked, it answers `SENTENCE`.

It is a bigram model in llama's clothes, written with the `gguf` package:

- the vocabulary is SentencePiece-style: ``<unk>``, ``<s>``, ``</s>``, the 256 byte tokens
  (so any prompt tokenizes) and one piece per word of the sentence (each used once);
- the embeddings are one-hot (token ``t`` is the unit vector ``e_t``);
- every attention and feed-forward weight is zero, so each block adds nothing to the
  residual stream, and the final RMS norm turns ``e_t`` into ``sqrt(n_embd) * e_t``;
- so the logits are a column of the output matrix: a next-token table. Every token leads to
  the sentence's first word, each word to the next, the last word to ``</s>``. The prompt's
  last token (from the chat template) is never a word of the sentence, so the answer is the
  sentence, whole, whatever the sampling settings (the chosen logit beats the others by ~200).

About 3 MB of float32, written in well under a second.

Usage: ``python tests/tiny_model.py PATH.gguf`` writes it (for a demo without a network).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Final

SENTENCE: Final = "This repository is summarized by a tiny generated model."
"""What the model answers, every time."""
_PIECES: Final = ["This", *(f"\u2581{word}" for word in SENTENCE.split(" ")[1:])]
"""One SentencePiece piece per word; ``\u2581`` stands for the space before it."""

EMBEDDING: Final = 384
HEADS: Final = 6
FEED_FORWARD: Final = 64
CONTEXT: Final = 4096
CHAT_TEMPLATE: Final = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n"
    "{% endfor %}assistant:\n"
)
"""Ends with a newline, a byte token: never a word of the sentence."""

_UNKNOWN, _CONTROL, _NORMAL, _BYTE = 2, 3, 1, 6  # gguf token types


def write_tiny_model(path: Path) -> Path:
    """Write the model to ``path`` and return it."""
    import gguf
    import numpy as np

    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{byte:02X}>" for byte in range(256)), *_PIECES]
    types = [_UNKNOWN, _CONTROL, _CONTROL, *[_BYTE] * 256, *[_NORMAL] * len(_PIECES)]
    vocab = len(tokens)
    assert vocab <= EMBEDDING, "one embedding dimension per token"
    assert len(set(_PIECES)) == len(_PIECES), "a word used twice would fork the table"
    eos = 2
    first_word = vocab - len(_PIECES)

    following = np.full(vocab, first_word)  # any token leads to the sentence's first word...
    for index in range(first_word, vocab - 1):
        following[index] = index + 1  # ...each word to the next...
    following[vocab - 1] = eos  # ...and the last word to the end
    output = np.zeros((vocab, EMBEDDING), dtype=np.float32)
    output[following, np.arange(vocab)] = 10.0  # row: next token, column: current token
    embeddings = np.zeros((vocab, EMBEDDING), dtype=np.float32)
    embeddings[np.arange(vocab), np.arange(vocab)] = 1.0

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("autonomy-tiny-bigram")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(EMBEDDING)
    writer.add_block_count(1)
    writer.add_feed_forward_length(FEED_FORWARD)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(EMBEDDING // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(eos)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    def zeros(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=np.float32)

    ones = np.ones(EMBEDDING, dtype=np.float32)
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", ones)
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", ones)
    for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
        writer.add_tensor(f"blk.0.{name}.weight", zeros(EMBEDDING, EMBEDDING))
    writer.add_tensor("blk.0.ffn_norm.weight", ones)
    writer.add_tensor("blk.0.ffn_gate.weight", zeros(FEED_FORWARD, EMBEDDING))
    writer.add_tensor("blk.0.ffn_up.weight", zeros(FEED_FORWARD, EMBEDDING))
    writer.add_tensor("blk.0.ffn_down.weight", zeros(EMBEDDING, FEED_FORWARD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/tiny_model.py PATH.gguf")
    write_tiny_model(Path(sys.argv[1]))
