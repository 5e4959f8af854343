"""Where the bundled files are: ``properties/`` (the yaml defaults) and ``dataset/`` (the shipped datasets).

Both live at the repository's top level. How the package finds them:

* **source checkout** (``pip install -e .``, or running from the repository): the repository's own
  ``properties/`` and ``dataset/`` folders, next to the ``recbole_denoise`` package folder.
* **installed wheel**: the build (``setup.py``, which calls :func:`bundle` from this file) copies them into
  the package as ``recbole_denoise/_data/properties/`` (the yaml files as they are) and
  ``recbole_denoise/_data/dataset/`` (each file xz-compressed as ``<file>.xz``, with ``manifest.json``
  listing every file's size and SHA-256). The first use decompresses the datasets once into
  ``$RECBOLE_DENOISE_CACHE/dataset-<hash of the manifest>`` (default ``~/.cache/recbole_denoise``, the
  root of the converted LLMs too: ``llm/loader.py``), built in a temporary folder and renamed into
  place, so concurrent first uses and an interrupted one never leave a half-written folder; a new
  release has a new manifest and so its own folder.

Everything that reads a property file or the shipped datasets goes through :func:`properties_dir` and
:func:`dataset_dir`. Run-time outputs are not bundled files: like RecBole's, ``log_dir`` (``log``),
``checkpoint_dir`` and ``derived_data_path`` (under ``saved``) and benchmark spec paths are relative to
the working directory.

Only the standard library is imported here, so that ``setup.py`` can load this file without installing
the package's dependencies.
"""
import hashlib
import json
import lzma
import os
import shutil
import tempfile

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
CHECKOUT_DIR = os.path.dirname(PACKAGE_DIR)  # the repository, when the package runs from a checkout
BUNDLE_DIR = os.path.join(PACKAGE_DIR, "_data")  # exists only in a built wheel
CACHE_ENV = "RECBOLE_DENOISE_CACHE"
MANIFEST = "manifest.json"
SUFFIX = ".xz"


class ResourceError(RuntimeError):
    """The package's bundled files are missing or cannot be unpacked."""


def bundled():
    """True when running from an installed wheel (bundled ``_data``), False in a source checkout."""
    return os.path.isdir(BUNDLE_DIR)


def properties_dir():
    """The folder holding ``overall.yaml`` and ``model/``, ``dataset/``, ``denoiser/``, ``benchmark/``,
    ``presets/`` (the repository's ``properties/``, or the wheel's copy)."""
    path = os.path.join(BUNDLE_DIR, "properties") if bundled() else os.path.join(CHECKOUT_DIR, "properties")
    if not os.path.isfile(os.path.join(path, "overall.yaml")):
        raise ResourceError(f"recbole_denoise's default yaml files are missing: no {os.path.join(path, 'overall.yaml')}. "
                            f"Install the package from the repository (pip install -e .) or from a wheel built by "
                            f"its setup.py (pip wheel . --no-deps)")
    return path


def cache_dir():
    """Where a wheel's datasets are decompressed: ``$RECBOLE_DENOISE_CACHE``, else
    ``~/.cache/recbole_denoise`` (as for the converted LLMs)."""
    root = os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "recbole_denoise")
    return os.path.abspath(os.path.expanduser(root))


def dataset_dir():
    """The folder holding the shipped datasets (``<dir>/<name>/<name>.inter`` ...): the repository's
    ``dataset/``, or, from a wheel, their decompressed copy in :func:`cache_dir` (unpacked on first use)."""
    if not bundled():
        return os.path.join(CHECKOUT_DIR, "dataset")
    source = os.path.join(BUNDLE_DIR, "dataset")
    with open(os.path.join(source, MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    key = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]
    root = cache_dir()
    target = os.path.join(root, f"dataset-{key}")
    if os.path.isdir(target):
        return target
    try:
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".dataset-", dir=root)
    except OSError as e:
        raise ResourceError(f"cannot write the dataset cache {root} ({e}); set {CACHE_ENV} to a writable "
                            f"folder") from None
    try:
        for rel, info in sorted(manifest["files"].items()):
            _unpack(os.path.join(source, rel + SUFFIX), os.path.join(tmp, rel), info)
        try:
            os.rename(tmp, target)  # atomic; fails when another process got there first
        except OSError:
            if not os.path.isdir(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _unpack(src, dst, info):
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    h = hashlib.sha256()
    try:
        with lzma.open(src, "rb") as fin, open(dst, "wb") as fout:
            for block in iter(lambda: fin.read(1 << 20), b""):
                h.update(block)
                fout.write(block)
    except (lzma.LZMAError, EOFError) as e:
        raise ResourceError(f"{src}: cannot be decompressed ({e}); reinstall recbole-denoise") from None
    if h.hexdigest() != info["sha256"]:
        raise ResourceError(f"{src}: decompressed content does not match its checksum in {MANIFEST}; reinstall "
                            f"recbole-denoise")


# -- build side (setup.py) ------------------------------------------------------------------------------
def bundle(checkout, package_dir, preset=6):
    """Copy ``checkout``'s ``properties/`` and compress its ``dataset/`` into ``package_dir/_data`` (the
    build's copy of the package; never the source tree). Returns the written paths."""
    written = []
    out = os.path.join(package_dir, "_data")
    shutil.rmtree(out, ignore_errors=True)
    for rel in _walk(os.path.join(checkout, "properties")):
        dst = os.path.join(out, "properties", rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(checkout, "properties", rel), dst)
        written.append(dst)
    files = {}
    for rel in _walk(os.path.join(checkout, "dataset")):
        src, dst = os.path.join(checkout, "dataset", rel), os.path.join(out, "dataset", rel + SUFFIX)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src, "rb") as f:
            data = f.read()
        with lzma.open(dst, "wb", preset=preset) as f:
            f.write(data)
        files[rel.replace(os.sep, "/")] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        written.append(dst)
    manifest = os.path.join(out, "dataset", MANIFEST)
    os.makedirs(os.path.dirname(manifest), exist_ok=True)
    with open(manifest, "w", encoding="utf-8") as f:
        json.dump({"compression": "xz", "files": files}, f, indent=1, sort_keys=True)
    return written + [manifest]


def _walk(folder):
    if not os.path.isdir(folder):
        raise ResourceError(f"{folder} is missing: a wheel must be built from the repository (or its sdist)")
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, dirs, fs in os.walk(folder)
                  for f in fs if "__pycache__" not in d and not f.endswith(".pyc"))
