"""A checkpoint's word-level vocabulary, and growing it so a fine-tune can learn new words.

The tiny checkpoints' tokenizer is word-level: a word it has no id for becomes ``<unk>``, which the
policy could read but never write back. A fine-tune on data with new words (a second task's prompt and
subtask labels, `train --paraphrase`'s other phrasings) therefore grows the vocabulary instead of
refusing: each new word gets the next free id (every old id keeps its meaning, so the initial
checkpoint's prompts and labels tokenise exactly as before), and the text embedding of both towers
gains one row per new word, set to the mean of the old rows (what transformers' ``resize_token_embeddings``
does by default): a new token starts as an average token and the LM head, tied to the embedding,
gives it an average logit instead of a random one.
"""

from __future__ import annotations

import json
from typing import Any

import torch


def words_of(texts: list[str]) -> list[str]:
    """The distinct words of `texts` as the tokenizer splits them (lower case, whitespace and punctuation)."""
    from tokenizers import pre_tokenizers

    pre = pre_tokenizers.Whitespace()
    words: list[str] = []
    for text in texts:
        for word, _ in pre.pre_tokenize_str(text.lower()):
            if word not in words:
                words.append(word)
    return words


def missing_words(tokenizer: Any, texts: list[str]) -> list[str]:
    """The words of `texts` that `tokenizer` has no id for (in first-seen order)."""
    vocab = tokenizer.get_vocab(with_added_tokens=True)
    return [w for w in words_of(texts) if w not in vocab]


def extend_tokenizer(tokenizer: Any, words: list[str]) -> Any:
    """A copy of the word-level `tokenizer` that also knows `words`, at ids after every existing one."""
    from tokenizers import Tokenizer

    data = json.loads(tokenizer.to_str())
    if data['model']['type'] != 'WordLevel':
        raise ValueError(f'can only grow a WordLevel tokenizer, not {data["model"]["type"]}')
    vocab = data['model']['vocab']
    next_id = tokenizer.get_vocab_size(with_added_tokens=True)
    # Added tokens (newline, <image>, the end marker) that are not model words get their ids on loading
    # from the model's size, which the new words change: make them model words at their current ids.
    for token in data['added_tokens']:
        vocab.setdefault(token['content'], token['id'])
    for word in words:
        if word in vocab:
            continue
        vocab[word] = next_id
        next_id += 1
    return Tokenizer.from_str(json.dumps(data))


def _grown(embedding: torch.nn.Embedding, rows: int) -> None:
    old = embedding.weight.data
    extra = old.mean(dim=0, keepdim=True).expand(rows - old.shape[0], -1)
    embedding.weight = torch.nn.Parameter(torch.cat([old, extra.clone()]), requires_grad=old.requires_grad)
    embedding.num_embeddings = rows


def grow_text_embeddings(model: Any, vocab_size: int) -> int:
    """Give PI0's text embeddings (the VLM's, tied to its LM head, and the action expert's) `vocab_size`
    rows, the new ones at the mean of the old; update the configs. Returns the number of rows added."""
    text = model.config.vlm_config.text_config
    added = vocab_size - text.vocab_size
    if added < 0:
        raise ValueError(f'cannot shrink the vocabulary from {text.vocab_size} to {vocab_size}')
    if added == 0:
        return 0
    for embedding in (model.model.vlm.get_input_embeddings(), model.model.dit.embed_tokens):
        _grown(embedding, vocab_size)
    text.vocab_size = vocab_size
    model.config.dit_config.vocab_size = vocab_size
    return added
