"""Command line: like RecBole's run_recbole.py, with --denoiser and our models.

    python run_recbole_denoise.py --model SASRec --dataset ml-100k --noise_ratio=0.1 --epochs=1

Any other RecBole-style ``--key=value`` is passed through as a config override.
"""
import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", "-m", default="SASRec", help="model name (ours first, then RecBole's)")
    parser.add_argument("--dataset", "-d", default="ml-100k", help="dataset name")
    parser.add_argument("--denoiser", default=None, help="registered denoiser name or package.module.Class")
    parser.add_argument("--config_files", default=None, help="space-separated yaml files")
    args, overrides = parser.parse_known_args(argv)
    from recbole_denoise import run_recbole_denoise
    from recbole_denoise.errors import UserInputError

    files = args.config_files.split() if args.config_files else None
    try:
        result = run_recbole_denoise(args.model, args.dataset, args.denoiser, files, cmd_args=overrides)
    except UserInputError as e:
        parser.exit(2, f"error: {e}\n")
    print({k: result[k] for k in ("model", "dataset", "denoiser", "best_valid_result", "test_result")})


if __name__ == "__main__":
    main()
