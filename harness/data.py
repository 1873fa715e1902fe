"""Data: locate and verify the raw files, decode, tokenize, cache, preprocess per task.

Raw files come from ``--data-dir`` / ``FWBENCH_DATA_DIR`` (a folder laid out like
``mnist/<idx files>`` and ``imdb/aclImdb_v1_labeled.csv.gz`` or ``imdb/aclImdb_v1.tar.gz``),
otherwise they are downloaded once from the official sources by pooch into the user cache,
with pinned checksums. The ``smoke`` profile uses the sample shipped in ``harness/sample``.
Every file is checked against its sha256 before use; nothing falls back silently.

Decoded data sets (uint8 MNIST images, int32 IMDB token ids) are cached as ``.npz`` keyed
by the checksums of their inputs, so a second run does not re-tokenize. The cheap per-task
preprocessing (scaling, padding) is done by the worker, inside its timed data phase.

Both are registries: ``DATASETS`` (name -> ``DataSet``: files, where they are found, how they
decode) and ``PREPROCESS`` (name -> function) hold the built-ins; ``catalog.tasks.dataset``
and ``catalog.tasks.preprocessing`` find them by name, and those a plugin registered too.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import re
import struct
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from fwbench.harness import spec
from fwbench.harness.errors import DataError

PREP_VERSION = "1"  # bump when decoding or tokenization changes: invalidates the cache
SAMPLE_DIR = Path(__file__).parent / "sample"


@dataclass(frozen=True)
class RawFile:
    path: str  # relative to the data folder
    sha256: str
    urls: tuple[str, ...] = ()


Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class DataSet:
    """A data set: its raw files, where they are found, and how they decode into arrays.

    ``files`` are alternative sets of files (role -> file), in order of preference: with a data
    folder (``--data-dir``) the first set whose files are all there is used, without one the
    first set whose files all have URLs is downloaded (pooch, checked against the sha256).
    ``folder``: the files ship inside a package (paths relative to it) and are used for every
    profile, never downloaded. ``sample``: a small copy (paths relative to ``sample_folder``)
    that the ``smoke`` profile and ``fwbench check`` use; without one they use the full files.
    ``decode`` gets role -> verified path and returns at least ``x_train``, ``y_train``,
    ``x_test``, ``y_test`` (labels int32), cached as one ``.npz`` keyed by the checksums.
    """

    name: str
    files: tuple[dict[str, RawFile], ...]
    decode: Callable[[dict[str, Path]], Arrays]
    folder: Path | None = None
    sample: dict[str, RawFile] | None = None
    sample_folder: Path | None = None
    description: str = ""
    source: str = "built-in"  # set by discovery for a plugin's data set

    def __post_init__(self) -> None:
        if not self.files or not all(self.files):
            raise ValueError(f"data set {self.name!r}: files needs at least one non-empty set")
        if self.sample and self.sample_folder is None:
            raise ValueError(f"data set {self.name!r}: a sample needs its sample_folder")


@dataclass(frozen=True)
class Preprocessing:
    """A named per-task preprocessing (``spec.Task.preprocessing``): decoded ``x`` -> the
    inputs of the task's first layer, one example shaped ``task.input_shape``. Run by the
    worker in its timed data phase, on the training and the test inputs separately."""

    name: str
    function: Callable[[np.ndarray], np.ndarray]
    description: str = ""
    source: str = "built-in"


MNIST_FILES = {
    "train_images": RawFile("mnist/train-images-idx3-ubyte.gz",
                            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "train_labels": RawFile("mnist/train-labels-idx1-ubyte.gz",
                            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "test_images": RawFile("mnist/t10k-images-idx3-ubyte.gz",
                           "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "test_labels": RawFile("mnist/t10k-labels-idx1-ubyte.gz",
                           "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",  # the mirror torchvision uses
    "http://yann.lecun.com/exdb/mnist/",  # the official page (often unavailable)
)
MNIST_FILES = {
    k: RawFile(f.path, f.sha256, tuple(m + Path(f.path).name for m in MNIST_MIRRORS))
    for k, f in MNIST_FILES.items()
}
IMDB_CSV = RawFile("imdb/aclImdb_v1_labeled.csv.gz",
                   "04ca896b016b45f1a4bb8d42186e3056086a48909c6865a0b93dafe3bffb6046")
IMDB_TAR = RawFile("imdb/aclImdb_v1.tar.gz",
                   "c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",
                   ("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",))


def _sample_manifest() -> dict[str, str]:
    """relative path -> sha256 of the shipped sample (harness/sample/SHA256SUMS)."""
    out: dict[str, str] = {}
    sums = SAMPLE_DIR / "SHA256SUMS"
    for line in (sums.read_text() if sums.is_file() else "").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            out[name.strip()] = digest
    return out


# ---------------------------------------------------------------------- locating


def cache_dir() -> Path:
    env = os.environ.get("FWBENCH_CACHE_DIR")
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("fwbench"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected: str) -> str:
    got = sha256_file(path)
    if got != expected:
        raise DataError(
            f"{path}: checksum mismatch (sha256 {got[:12]}..., expected {expected[:12]}...): "
            "the file is corrupted or truncated; replace it with a good copy"
        )
    return got


def _download(raw: RawFile) -> Path:
    import pooch

    target = cache_dir() / "downloads"
    errors = []
    for url in raw.urls:
        try:
            return Path(pooch.retrieve(url, known_hash=f"sha256:{raw.sha256}",
                                       fname=Path(raw.path).name, path=target, progressbar=False))
        except Exception as exc:  # network errors, HTTP errors, hash mismatch
            errors.append(f"{url}: {type(exc).__name__}")
    raise DataError(
        f"cannot download {Path(raw.path).name} ({'; '.join(errors)}); offline? point "
        "--data-dir (or FWBENCH_DATA_DIR) at a folder holding " + raw.path
    )


def data_dir_from_env(data_dir: str | os.PathLike | None) -> Path | None:
    value = data_dir or os.environ.get("FWBENCH_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist (from --data-dir / FWBENCH_DATA_DIR)")
    return path


def locate(ds: DataSet, profile: str, data_dir: Path | None) -> dict[str, tuple[Path, str]]:
    """role -> (verified path, sha256) of the raw files of ``ds`` for ``profile``."""
    if spec.PROFILE_INFO[profile].sample_data and ds.sample:
        return {role: _shipped(raw, ds.sample_folder, ds)  # type: ignore[arg-type]
                for role, raw in ds.sample.items()}
    if ds.folder is not None:
        return {role: _shipped(raw, ds.folder, ds) for role, raw in ds.files[0].items()}
    if data_dir is not None:
        for files in ds.files:
            if all((data_dir / raw.path).is_file() for raw in files.values()):
                return {role: _fetch(raw, data_dir) for role, raw in files.items()}
        if len(ds.files) == 1:
            missing = next(raw for raw in ds.files[0].values() if not (data_dir / raw.path).is_file())
            raise DataError(f"{data_dir / missing.path} not found: put the file there or drop "
                            "--data-dir to download it")
        firsts = [next(raw for raw in files.values() if not (data_dir / raw.path).is_file())
                  for files in ds.files]
        raise DataError(f"{' or '.join(str(data_dir / raw.path) for raw in firsts)} not found: "
                        f"put one of them there (data set {ds.name})")
    for files in ds.files:
        if all(raw.urls for raw in files.values()):
            return {role: _fetch(raw, None) for role, raw in files.items()}
    paths = ", ".join(raw.path for raw in ds.files[0].values())
    raise DataError(f"data set {ds.name} has no download: point --data-dir (or FWBENCH_DATA_DIR) "
                    f"at a folder holding {paths}")


def _shipped(raw: RawFile, folder: Path, ds: DataSet) -> tuple[Path, str]:
    path = folder / raw.path
    if not path.is_file():
        raise DataError(f"shipped file {path} of data set {ds.name} is missing: reinstall "
                        f"{'fwbench' if ds.source == 'built-in' else 'its package (' + ds.source + ')'}")
    return path, verify(path, raw.sha256)


def _fetch(raw: RawFile, data_dir: Path | None) -> tuple[Path, str]:
    if data_dir is not None:
        path = data_dir / raw.path
        if not path.is_file():
            raise DataError(f"{path} not found: put the file there or drop --data-dir to download it")
        return path, verify(path, raw.sha256)
    return _download(raw), raw.sha256  # pooch verified the hash


# ---------------------------------------------------------------------- decoding


def read_idx(path: Path) -> np.ndarray:
    """Decode a (gzipped) IDX file: magic 2051 images [n, rows, cols] or 2049 labels [n]."""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: not a readable IDX file ({exc})") from None
    if len(data) < 8:
        raise DataError(f"{path}: too short for an IDX header")
    magic, n = struct.unpack(">II", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        shape, offset = (n, rows, cols), 16
    elif magic == 2049:
        shape, offset = (n,), 8
    else:
        raise DataError(f"{path}: bad IDX magic number {magic}")
    size = int(np.prod(shape))
    if len(data) - offset != size:
        raise DataError(f"{path}: expected {size} bytes of data, found {len(data) - offset}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(shape)


TOKEN_RE = re.compile(spec.IMDB_TOKEN_RE)


def tokenize(text: str) -> list[str]:
    """Lowercase, remove ``<br />``, tokens by ``[a-z0-9']+``."""
    return TOKEN_RE.findall(text.lower().replace("<br />", " "))


def build_vocab(token_lists: list[list[str]], size: int = spec.IMDB_VOCAB) -> dict[str, int]:
    """The ``size - 2`` most frequent tokens (ties alphabetical) -> ids 2.., 0 pad, 1 OOV."""
    counts = Counter(tok for toks in token_lists for tok in toks)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: size - 2]
    return {tok: i + 2 for i, (tok, _) in enumerate(ranked)}


def encode(tokens: list[str], vocab: dict[str, int], maxlen: int = spec.IMDB_MAXLEN) -> np.ndarray:
    """Ids of the last ``maxlen`` tokens, pre-padded with 0."""
    ids = [vocab.get(t, 1) for t in tokens][-maxlen:]
    out = np.zeros(maxlen, np.int32)
    if ids:
        out[maxlen - len(ids) :] = ids
    return out


LABELS = {"neg": 0, "pos": 1}
_TAR_MEMBER = re.compile(r"^aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt$")


def read_imdb_csv(path: Path) -> list[tuple[str, str, int, str]]:
    """Rows (split, label, id, text) of a labeled CSV ``split,label,id,rating,text``."""
    csv.field_size_limit(1 << 24)
    rows = []
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header != ["split", "label", "id", "rating", "text"]:
                raise DataError(f"{path}: header {header} is not split,label,id,rating,text")
            for rec in reader:
                split, label, ident, _rating, text = rec
                if split not in ("train", "test") or label not in LABELS:
                    raise DataError(f"{path}: bad row {rec[:4]}")
                rows.append((split, label, int(ident), text))
    except (OSError, EOFError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise DataError(f"{path}: unreadable IMDB CSV ({exc})") from None
    return rows


def read_imdb_tar(path: Path) -> list[tuple[str, str, int, str]]:
    """Rows (split, label, id, text) of the official ``aclImdb_v1.tar.gz``, read in place."""
    rows = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for m in tar:
                parts = Path(m.name).parts
                if m.name.startswith(("/", "\\")) or ".." in parts:
                    raise DataError(f"{path}: member {m.name!r} would extract outside its folder; "
                                    "refusing this archive")
                match = _TAR_MEMBER.match(m.name)
                if not match or not m.isfile():
                    continue
                text = tar.extractfile(m).read().decode("utf-8")  # type: ignore[union-attr]
                rows.append((match[1], match[2], int(match[3]), text))
    except (OSError, EOFError, tarfile.TarError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: unreadable archive ({exc})") from None
    return rows


def _imdb_arrays(rows: list[tuple[str, str, int, str]]) -> dict[str, np.ndarray]:
    # Canonical order (split, pos before neg, id) whatever the source's order.
    rows = sorted(rows, key=lambda r: (r[0] != "train", r[1] != "pos", r[2]))
    train = [r for r in rows if r[0] == "train"]
    test = [r for r in rows if r[0] == "test"]
    if not train or not test:
        raise DataError("IMDB data has no train or no test reviews")
    train_tokens = [tokenize(r[3]) for r in train]
    vocab = build_vocab(train_tokens)
    x_train = np.stack([encode(t, vocab) for t in train_tokens])
    x_test = np.stack([encode(tokenize(r[3]), vocab) for r in test])
    return {
        "x_train": x_train,
        "y_train": np.array([LABELS[r[1]] for r in train], np.int32),
        "x_test": x_test,
        "y_test": np.array([LABELS[r[1]] for r in test], np.int32),
        "vocab": np.array(sorted(vocab, key=vocab.get)),
    }


def _mnist_arrays(files: dict[str, Path]) -> Arrays:
    arrays = {role: read_idx(path) for role, path in files.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"MNIST {split}: image and label counts differ")
    return {
        "x_train": arrays["train_images"],
        "y_train": arrays["train_labels"].astype(np.int32),
        "x_test": arrays["test_images"],
        "y_test": arrays["test_labels"].astype(np.int32),
    }


def _imdb_decode(files: dict[str, Path]) -> Arrays:
    (role, path), = files.items()
    return _imdb_arrays(read_imdb_csv(path) if role == "csv" else read_imdb_tar(path))


SPLITS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(files: dict[str, Path]) -> Arrays:
    """Decode a data set stored as one ``.npz`` (role ``arrays``) holding ``x_train``,
    ``y_train``, ``x_test``, ``y_test`` (and any other arrays, kept): no pickles."""
    (path,) = files.values()
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz without pickles ({exc})") from None
    missing = [k for k in SPLITS if k not in arrays]
    if missing:
        raise DataError(f"{path}: no {', '.join(missing)} (a data set .npz holds {', '.join(SPLITS)})")
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if len(x) != len(y) or y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: y_{split} must be integer labels, one per example of x_{split}")
        arrays[f"y_{split}"] = y.astype(np.int32)
    return arrays


def npz_dataset(name: str, file: RawFile, folder: Path | None = None,
                sample: RawFile | None = None, sample_folder: Path | None = None,
                description: str = "") -> DataSet:
    """A data set that is one ``.npz`` of ``x_train``, ``y_train``, ``x_test``, ``y_test``:
    shipped in ``folder``, or found in the data folder / downloaded from ``file.urls``."""
    return DataSet(name, ({"arrays": file},), read_npz, folder,
                   {"arrays": sample} if sample else None, sample_folder, description)


def _sample_files(files: dict[str, RawFile]) -> dict[str, RawFile]:
    """The shipped sample's copies of ``files`` (checksums from harness/sample/SHA256SUMS)."""
    manifest = _sample_manifest()
    return {role: RawFile(raw.path, manifest.get(raw.path, "")) for role, raw in files.items()}


DATASETS: dict[str, DataSet] = {  # the built-ins; plugins add theirs (harness/catalog/tasks.py)
    "mnist": DataSet("mnist", (MNIST_FILES,), _mnist_arrays, None, _sample_files(MNIST_FILES),
                     SAMPLE_DIR, "MNIST handwritten digits, 60,000 + 10,000 28x28 uint8 images"),
    "imdb": DataSet("imdb", ({"csv": IMDB_CSV}, {"tar": IMDB_TAR}), _imdb_decode, None,
                    _sample_files({"csv": IMDB_CSV}), SAMPLE_DIR,
                    f"IMDB reviews, 25,000 + 25,000, as the last {spec.IMDB_MAXLEN} token ids "
                    f"of a {spec.IMDB_VOCAB:,}-word vocabulary"),
}


# ------------------------------------------------------------------------ caching


def prepare(ds: DataSet, profile: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached decoded data set ``ds`` (built on first use). Runs in the runner.
    A plugin's data set is found by name with ``catalog.tasks.dataset``."""
    from filelock import FileLock

    files = locate(ds, profile, data_dir_from_env(data_dir))
    parts = [ds.name, PREP_VERSION] + ([] if ds.source == "built-in" else [ds.source])
    key = hashlib.sha256(
        "|".join(parts + [f"{r}={h}" for r, (_, h) in sorted(files.items())]).encode()
    ).hexdigest()[:16]
    out = cache_dir() / "prepared" / f"{ds.name}-{key}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.is_file():
            return out
        arrays = ds.decode({role: path for role, (path, _) in files.items()})
        missing = [k for k in SPLITS if k not in arrays]
        if missing:
            raise DataError(f"data set {ds.name}: its decoder gave no {', '.join(missing)}")
        tmp = out.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, out)
    return out


def load_prepared(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _mnist_scaled(x: np.ndarray) -> np.ndarray:
    return (x.astype(np.float32) / 255.0)[:, None, :, :]


def _mnist_lenet(x: np.ndarray) -> np.ndarray:
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).astype(np.float32)
    return ((x / 255.0 - 0.1307) / 0.3081).astype(np.float32)[:, None, :, :]


def _mnist_rows(x: np.ndarray) -> np.ndarray:
    """The image /255 as a sequence: 28 time steps (rows) of 28 pixels, [N, 28, 28]."""
    return (x.astype(np.float32) / 255.0).reshape(len(x), 28, 28)


PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mnist_scaled": _mnist_scaled,
    "mnist_lenet": _mnist_lenet,
    "mnist_rows": _mnist_rows,
    "imdb_sequences": lambda x: x.astype(np.int32),
}


def task_arrays(task: spec.Task, prepared: dict[str, np.ndarray],
                f: Callable[[np.ndarray], np.ndarray]) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test ready for the task's first layer: ``f`` is the task's
    preprocessing (``catalog.tasks.preprocessing``); checked against ``task.input_shape`` and
    ``task.input_dtype``."""
    out = {
        "x_train": np.ascontiguousarray(f(prepared["x_train"])),
        "y_train": prepared["y_train"].astype(np.int32),
        "x_test": np.ascontiguousarray(f(prepared["x_test"])),
        "y_test": prepared["y_test"].astype(np.int32),
    }
    for split in ("train", "test"):
        x = out[f"x_{split}"]
        if x.shape[1:] != tuple(task.input_shape) or x.dtype != np.dtype(task.input_dtype):
            raise DataError(f"task {task.name}: preprocessing {task.preprocessing!r} gives x_{split} "
                            f"examples {x.shape[1:]} {x.dtype}, the task declares "
                            f"{tuple(task.input_shape)} {task.input_dtype}")
        if len(x) != len(out[f"y_{split}"]):
            raise DataError(f"task {task.name}: preprocessing {task.preprocessing!r} changed the "
                            f"number of {split} examples")
        labels = out[f"y_{split}"]
        if len(labels) and not 0 <= labels.min() <= labels.max() < task.num_classes:
            raise DataError(f"task {task.name}: {split} labels outside 0..{task.num_classes - 1}")
    return out


def write_sample(src: Path, dst: Path, mnist_train: int, mnist_test: int, imdb_train: int,
                 imdb_test: int, seed: int = 0) -> None:
    """Build the shipped sample from the real files (used by scripts/make_sample.py)."""
    rng = np.random.default_rng(seed)
    files = {role: _fetch(raw, src) for role, raw in MNIST_FILES.items()}
    arrays = {role: read_idx(path) for role, (path, _) in files.items()}
    for split, n in (("train", mnist_train), ("test", mnist_test)):
        idx = np.sort(rng.choice(len(arrays[f"{split}_labels"]), n, replace=False))
        for kind, magic in (("images", 2051), ("labels", 2049)):
            a = arrays[f"{split}_{kind}"][idx]
            header = struct.pack(">II", magic, n) + (struct.pack(">II", 28, 28) if kind == "images" else b"")
            raw = MNIST_FILES[f"{split}_{kind}"]
            (dst / raw.path).parent.mkdir(parents=True, exist_ok=True)
            with gzip.GzipFile(dst / raw.path, "wb", compresslevel=9, mtime=0) as f:
                f.write(header + a.tobytes())
    rows = read_imdb_csv(_fetch(IMDB_CSV, src)[0])
    chosen = []
    for split, n in (("train", imdb_train), ("test", imdb_test)):
        for label in ("pos", "neg"):
            group = [r for r in rows if r[0] == split and r[1] == label]
            pick = np.sort(rng.choice(len(group), n // 2, replace=False))
            chosen += [group[i] for i in pick]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["split", "label", "id", "rating", "text"])
    ratings = {}  # the CSV reader drops ratings; re-read them for the sample rows
    with gzip.open(_fetch(IMDB_CSV, src)[0], "rt", encoding="utf-8", newline="") as f:
        for rec in csv.reader(f):
            ratings[(rec[0], rec[1], rec[2])] = rec[3]
    for split, label, ident, text in chosen:
        w.writerow([split, label, ident, ratings[(split, label, str(ident))], text])
    (dst / IMDB_CSV.path).parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(dst / IMDB_CSV.path, "wb", compresslevel=9, mtime=0) as f:
        f.write(buf.getvalue().encode("utf-8"))
    paths = [raw.path for raw in MNIST_FILES.values()] + [IMDB_CSV.path]
    (dst / "SHA256SUMS").write_text("".join(f"{sha256_file(dst / p)}  {p}\n" for p in paths))
