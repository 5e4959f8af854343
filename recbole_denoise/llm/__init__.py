"""The LLM side of LLM-based denoisers, one concept per module.

``loader`` (local HF folders; the packaged SmolLM2 GGUF converted once), ``prompts`` (token-id prompts
shared by training, scoring and suggestion), ``finetune`` (LoRA with per-epoch checkpoints and resume),
``scoring`` (P_noise of every item of a sequence: first token, full title, perplexity), ``grounding``
(greedy suggestions and their mapping to existing items) and ``encoders`` (llm2vec / sentence-transformers
text embeddings with a stale-checked disk cache). Nothing here imports RecBole.
"""
