"""The package as a user installs it: a wheel carries properties/ and dataset/ (issue 18 item 2), and the
``recbole-denoise`` command works from any folder without the repository."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what a build reads: the packaging files, the package, and the two top-level folders it bundles
SOURCES = ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "recbole_denoise", "properties", "dataset")


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _files(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def _clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", **extra)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built (offline, with the installed setuptools) from a copy of the checkout, so the build
    writes nothing into the repository."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        path = os.path.join(ROOT, name)
        if os.path.isdir(path):
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_data"))
        elif os.path.isfile(path):
            shutil.copy(path, src / name)
    out = tmp / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(out), str(src)], check=True, cwd=str(tmp), env=_clean_env())
    wheels = list(out.glob("recbole_denoise-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_bundles_every_yaml_the_dataset_compressed_and_the_console_script(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for rel in _files(os.path.join(ROOT, "properties")):  # every property file, byte for byte
            with z.open(f"recbole_denoise/_data/properties/{rel}") as f:
                assert f.read() == open(os.path.join(ROOT, "properties", rel), "rb").read(), rel
        manifest = json.loads(z.read("recbole_denoise/_data/dataset/manifest.json"))
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    shipped = _files(os.path.join(ROOT, "dataset"))
    assert sorted(manifest["files"]) == shipped
    for rel in shipped:  # compressed, and the manifest holds the checksum of the original file
        assert f"recbole_denoise/_data/dataset/{rel}.xz" in names and f"recbole_denoise/_data/dataset/{rel}" not in names
        assert manifest["files"][rel]["sha256"] == _sha256(os.path.join(ROOT, "dataset", rel))
    assert not any(n.startswith(("properties/", "dataset/")) for n in names)  # nothing outside the package
    assert "recbole-denoise = recbole_denoise.cli:" in entry_points
    size = sum(os.path.getsize(os.path.join(ROOT, "dataset", r)) for r in shipped)
    assert os.path.getsize(wheel) < 0.5 * size  # xz keeps the wheel well below the datasets' own size


def test_wheel_in_a_fresh_venv_runs_from_an_unrelated_folder(wheel, tmp_path):
    """No editable install, no repository: the console script finds the yaml defaults (CE loss without
    negatives comes from properties/overall.yaml; without it RecBole's config check fails) and a shipped
    dataset, decompressed once into the cache."""
    venv = tmp_path / "venv"
    # system site-packages give torch and RecBole; pip comes from there too (no ensurepip, no network)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python, command = str(venv / "bin" / "python"), str(venv / "bin" / "recbole-denoise")
    cache, work = tmp_path / "cache", tmp_path / "elsewhere"
    work.mkdir()
    env = _clean_env(RECBOLE_DENOISE_CACHE=str(cache))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--ignore-installed",
                    "--disable-pip-version-check", str(wheel)], check=True, cwd=str(work), env=env)
    assert os.path.isfile(command)

    run = subprocess.run([command, "--model", "GRU4Rec", "--dataset", "amazon-beauty", "--sample_users=20",
                          "--epochs=1", "--MAX_ITEM_LIST_LENGTH=5", "--hidden_size=8", "--embedding_size=8",
                          "--state=WARNING", "--show_progress=False"],
                         cwd=str(work), env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "'dataset': 'amazon-beauty'" in run.stdout and "'test_result': {'hit@5'" in run.stdout

    probe = ("import json, recbole_denoise, recbole_denoise.resources as r, recbole_denoise.config as c;"
             "print(json.dumps([recbole_denoise.__file__, r.properties_dir(), r.dataset_dir(), c.PROPERTIES_DIR]))")
    out = subprocess.run([python, "-c", probe], cwd=str(work), env=env, capture_output=True, text=True, check=True)
    module, properties, data, config_properties = json.loads(out.stdout.strip().splitlines()[-1])
    for path in (module, properties, config_properties):  # the wheel's copy, never the checkout's
        assert os.path.realpath(path).startswith(os.path.realpath(venv) + os.sep), path
    assert os.path.realpath(data).startswith(os.path.realpath(cache) + os.sep), data
    assert os.path.isfile(os.path.join(properties, "model", "IADSR.yaml"))
    shipped = _files(os.path.join(ROOT, "dataset"))
    assert _files(data) == shipped  # decompressed once, identical to the repository's files
    for rel in shipped:
        assert _sha256(os.path.join(data, rel)) == _sha256(os.path.join(ROOT, "dataset", rel)), rel
    assert [p.name for p in cache.iterdir()] == [os.path.basename(data)]  # no temporary folder left behind
    # relative defaults (log/, saved/) stay in the user's working directory, like RecBole's
    assert (work / "log").is_dir() and (work / "saved").is_dir()


def test_console_script_exits_0_after_a_command_that_returns_results(wheel, tmp_path, monkeypatch):
    """The console script calls ``sys.exit(<entry point>())``: ``cli.main`` returns its results to Python
    callers (``--denoise_only``: the dataset and a summary), which as an exit status would print them and
    exit 1. The entry point the wheel declares must exit 0."""
    import importlib

    from tests.conftest import FIXTURES

    with zipfile.ZipFile(wheel) as z:
        text = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    target = next(line.split("=", 1)[1].strip() for line in text.splitlines() if line.startswith("recbole-denoise"))
    module, _, name = target.partition(":")
    entry = getattr(importlib.import_module(module), name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["recbole-denoise", "--denoise_only", "--dataset", "tiny", "--denoiser",
                                      "CoocOutlier", f"--data_path={FIXTURES}", "--state=WARNING",
                                      f"--derived_data_path={tmp_path / 'derived'}", f"--log_dir={tmp_path / 'log'}"])
    with pytest.raises(SystemExit) as exit_:
        sys.exit(entry())  # what the generated script does
    assert exit_.value.code in (None, 0)
    assert any((tmp_path / "derived").glob("tiny-CoocOutlier-*"))


def test_bundled_datasets_unpack_once_atomically_and_checked(tmp_path, monkeypatch):
    """resources.dataset_dir() from a wheel's layout (built by the same bundle() setup.py calls): unpacked
    once into $RECBOLE_DENOISE_CACHE, reused, never half-written; a corrupt file names itself."""
    from recbole_denoise import resources

    checkout = tmp_path / "checkout"
    (checkout / "properties").mkdir(parents=True)
    (checkout / "properties" / "overall.yaml").write_text("epochs: 3\n")
    (checkout / "dataset" / "d").mkdir(parents=True)
    (checkout / "dataset" / "d" / "d.inter").write_text("user_id:token\titem_id:token\n1\t2\n" * 50)
    package = tmp_path / "pkg"
    resources.bundle(str(checkout), str(package))
    monkeypatch.setattr(resources, "BUNDLE_DIR", str(package / "_data"))
    monkeypatch.setenv(resources.CACHE_ENV, str(tmp_path / "cache"))
    assert resources.bundled() and resources.properties_dir() == str(package / "_data" / "properties")

    first = resources.dataset_dir()
    assert open(os.path.join(first, "d", "d.inter")).read() == (checkout / "dataset" / "d" / "d.inter").read_text()
    stamp = os.stat(os.path.join(first, "d", "d.inter")).st_mtime_ns
    assert resources.dataset_dir() == first  # reused, not unpacked again
    assert os.stat(os.path.join(first, "d", "d.inter")).st_mtime_ns == stamp
    assert os.listdir(tmp_path / "cache") == [os.path.basename(first)]

    shutil.rmtree(first)
    with open(package / "_data" / "dataset" / "d" / "d.inter.xz", "r+b") as f:  # damage the payload
        f.seek(60)
        f.write(b"\x00" * 8)
    with pytest.raises(Exception, match="d.inter.xz"):
        resources.dataset_dir()
    assert os.listdir(tmp_path / "cache") == []  # nothing half-written left behind
