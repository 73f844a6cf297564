"""Which word the placeholder starts from, when `concept.initializer_token` names several (or `auto`).

Each candidate's row is put into the placeholder rows and scored by the held-out loss (the evaluator's
fixed draws, the same number the stopping rule watches) before the first step; the lowest starts. A
sweep over initializer words is answered in seconds instead of one run per word. `auto` gets its
candidates from `evaluation.proposals` (the words the evaluation's CLIP finds closest to the images).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def word_rows(tokenizer, embedding, word: str) -> torch.Tensor:
    """The frozen row of `word` (one token, checked before the model loaded) in one text encoder's lookup."""
    (token_id,) = tokenizer.encode(word, add_special_tokens=False)
    return embedding.base.weight[token_id].detach().float()


def start_from(job, embeddings, word: str) -> None:
    """Every placeholder row of every text encoder becomes `word`'s row."""
    with torch.no_grad():
        for tokenizer, embedding in zip(job.parts.tokenizers, embeddings):
            embedding.vectors.copy_(word_rows(tokenizer, embedding, word).to(embedding.vectors).expand_as(
                embedding.vectors))


def score_words(job, embeddings, words: list[str]) -> dict[str, float]:
    """Each word's held-out loss as the placeholder's start (main process; the rows are left as the last word's)."""
    scores = {}
    for word in words:
        start_from(job, embeddings, word)
        scores[word] = job.evaluate.heldout()
    return scores


def choose_initializer(job, models) -> dict:
    """Score every candidate, start from the lowest; what run.json records. With several processes the
    main one scores and every process starts from its choice."""
    accelerator, words = job.accelerator, list(job.initializers)
    embeddings = [accelerator.unwrap_model(m) for m in models]
    scores = score_words(job, embeddings, words) if accelerator.is_main_process else {}
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        scores = broadcast_object_list([scores])[0]
    chosen = min(words, key=lambda w: (scores[w], words.index(w)))
    start_from(job, embeddings, chosen)
    job.evaluate.use_initializer(chosen)
    if accelerator.is_main_process:
        log.info("initializer: %s starts (held-out loss %.4f); %s", chosen, scores[chosen],
                 ", ".join(f"{w} {scores[w]:.4f}" for w in sorted(words, key=scores.get)))
    return {"chosen": chosen, "scores": scores, "by": "heldout_loss before training (lowest starts)"}
