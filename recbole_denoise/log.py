"""Logging for runs: RecBole's ``init_logger`` hard-codes ``./log``; ours writes under ``log_dir``."""
import logging
import os

from recbole.utils.utils import get_local_time


def init_logger(config):
    """Root logger with a file in ``config['log_dir']`` and (``log_console``) the console, at ``config['state']`` level."""
    level = getattr(logging, str(config["state"] or "INFO").upper(), logging.INFO)
    log_dir = config["log_dir"] or "log"
    os.makedirs(log_dir, exist_ok=True)
    path = os.path.join(log_dir, f"{config['model']}-{config['source_dataset']}-{get_local_time()}.log")
    logger = logging.getLogger()
    for handler in list(logger.handlers):
        if getattr(handler, "_recbole_denoise", False):
            logger.removeHandler(handler)
            handler.close()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%a %d %b %Y %H:%M:%S")
    handlers = [logging.FileHandler(path)]
    if config["log_console"] is None or config["log_console"]:
        handlers.append(logging.StreamHandler())
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.setLevel(level)
        handler._recbole_denoise = True
        logger.addHandler(handler)
    logger.setLevel(level)
    return logger
