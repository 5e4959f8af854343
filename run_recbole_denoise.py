"""Command line, like RecBole's run_recbole.py (the same as the installed ``recbole-denoise`` command);
see ``recbole_denoise/cli.py`` or ``python run_recbole_denoise.py --help``."""
from recbole_denoise.cli import main

if __name__ == "__main__":
    main()
