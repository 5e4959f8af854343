"""The LLM side of LLM-based denoisers, one concept per module.

``loader`` (local HF folders; the packaged SmolLM2 GGUF converted once), ``prompts`` (token-id prompts
shared by training, scoring and suggestion), ``finetune`` (LoRA with per-epoch checkpoints and resume),
``scoring`` (P_noise of every item of a sequence: first token, full title, perplexity) and ``grounding``
(greedy suggestions and their mapping to existing items). Nothing here imports RecBole.
"""
