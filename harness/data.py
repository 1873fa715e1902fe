"""Data: locate and verify the raw files, decode, tokenize, cache, preprocess per task.

Raw files come from ``--data-dir`` / ``FWBENCH_DATA_DIR`` (a folder laid out like
``mnist/<idx files>`` and ``imdb/aclImdb_v1_labeled.csv.gz`` or ``imdb/aclImdb_v1.tar.gz``),
otherwise they are downloaded once from the official sources by pooch into the user cache,
with pinned checksums. The ``smoke`` profile uses the sample shipped in ``harness/sample``.
Every file is checked against its sha256 before use; nothing falls back silently.

Decoded data sets (uint8 MNIST images, int32 IMDB token ids) are cached as ``.npz`` keyed
by the checksums of their inputs, so a second run does not re-tokenize. The cheap per-task
preprocessing (scaling, padding) is done by the worker, inside its timed data phase.
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

from . import spec
from .errors import DataError

PREP_VERSION = "1"  # bump when decoding or tokenization changes: invalidates the cache
SAMPLE_DIR = Path(__file__).parent / "sample"


@dataclass(frozen=True)
class RawFile:
    path: str  # relative to the data folder
    sha256: str
    urls: tuple[str, ...] = ()


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
    out = {}
    for line in (SAMPLE_DIR / "SHA256SUMS").read_text().splitlines():
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


def locate(dataset: str, profile: str, data_dir: Path | None) -> dict[str, tuple[Path, str]]:
    """role -> (verified path, sha256) of the raw files of ``dataset`` for ``profile``."""
    if spec.PROFILE_INFO[profile].sample_data:
        manifest = _sample_manifest()
        wanted = {
            "mnist": {k: f.path for k, f in MNIST_FILES.items()},
            "imdb": {"csv": IMDB_CSV.path},
        }[dataset]
        out = {}
        for role, rel in wanted.items():
            path = SAMPLE_DIR / rel
            if not path.is_file():
                raise DataError(f"shipped sample file {path} is missing: reinstall fwbench")
            out[role] = (path, verify(path, manifest[rel]))
        return out
    if dataset == "mnist":
        return {role: _fetch(raw, data_dir) for role, raw in MNIST_FILES.items()}
    if dataset == "imdb":
        if data_dir is not None:
            for raw, role in ((IMDB_CSV, "csv"), (IMDB_TAR, "tar")):
                if (data_dir / raw.path).is_file():
                    return {role: _fetch(raw, data_dir)}
            raise DataError(
                f"{data_dir / IMDB_CSV.path} or {data_dir / IMDB_TAR.path} not found: put the "
                "IMDB labeled CSV or the official aclImdb_v1.tar.gz there"
            )
        return {"tar": _fetch(IMDB_TAR, None)}
    raise DataError(f"unknown data set {dataset!r}")


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


def _mnist_arrays(files: dict[str, tuple[Path, str]]) -> dict[str, np.ndarray]:
    arrays = {role: read_idx(path) for role, (path, _) in files.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise DataError(f"MNIST {split}: image and label counts differ")
    return {
        "x_train": arrays["train_images"],
        "y_train": arrays["train_labels"].astype(np.int32),
        "x_test": arrays["test_images"],
        "y_test": arrays["test_labels"].astype(np.int32),
    }


# ------------------------------------------------------------------------ caching


def prepare(dataset: str, profile: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Path of the cached decoded data set (built on first use). Runs in the runner."""
    from filelock import FileLock

    files = locate(dataset, profile, data_dir_from_env(data_dir))
    key = hashlib.sha256(
        "|".join([dataset, PREP_VERSION] + [f"{r}={h}" for r, (_, h) in sorted(files.items())])
        .encode()
    ).hexdigest()[:16]
    out = cache_dir() / "prepared" / f"{dataset}-{key}.npz"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if out.is_file():
            return out
        if dataset == "mnist":
            arrays = _mnist_arrays(files)
        else:
            (role, (path, _)), = files.items()
            arrays = _imdb_arrays(read_imdb_csv(path) if role == "csv" else read_imdb_tar(path))
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


PREPROCESS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "mnist_scaled": _mnist_scaled,
    "mnist_lenet": _mnist_lenet,
    "imdb_sequences": lambda x: x.astype(np.int32),
}


def task_arrays(task: spec.Task, prepared: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """x_train, y_train, x_test, y_test ready for the task's first layer."""
    f = PREPROCESS[task.preprocessing]
    return {
        "x_train": np.ascontiguousarray(f(prepared["x_train"])),
        "y_train": prepared["y_train"].astype(np.int32),
        "x_test": np.ascontiguousarray(f(prepared["x_test"])),
        "y_test": prepared["y_test"].astype(np.int32),
    }


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
