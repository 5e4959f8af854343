"""Token lengths of a dataset's item titles with the default LLM's tokenizer (run by hand; seconds).

What whole titles (``llm_title_max_tokens: 0``, the default) cost against a cut, and the suggestion
budget they imply (``PromptBuilder.suggestion_budget``: the longest title + the closing quote + 2):

    python benchmarks/llm4dsr_title_tokens.py [--item-file dataset/amazon-toy/amazon-toy.item] [--cut 24]

Prints one line; docs/fidelity/llm4dsr_prompts_finetune.md quotes it.
"""
import argparse

import numpy as np

from recbole_denoise.data.atomic import read_atomic
from recbole_denoise.llm.loader import packaged_tokenizer
from recbole_denoise.llm.prompts import PromptBuilder


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--item-file", default="dataset/amazon-toy/amazon-toy.item")
    ap.add_argument("--field", default="title")
    ap.add_argument("--cut", type=int, default=24, help="the cut to compare with (the old default: 24)")
    args = ap.parse_args()
    titles = [str(t) for t in read_atomic(args.item_file)[args.field]]
    builder = PromptBuilder(packaged_tokenizer())  # whole titles, the paper's templates
    n = np.array([len(builder.title_ids(t)) for t in titles])
    print(f"{args.item_file}: {len(n)} titles; tokens mean {n.mean():.1f}, median {np.median(n):.0f}, "
          f"p95 {np.percentile(n, 95):.0f}, max {n.max()}; longer than {args.cut}: {(n > args.cut).mean():.1%}; "
          f"tokens a cut at {args.cut} drops: {np.maximum(n - args.cut, 0).sum() / n.sum():.1%}; "
          f"suggestion budget with whole titles: {builder.suggestion_budget(titles)} tokens")


if __name__ == "__main__":
    main()
