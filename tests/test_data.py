import csv
import gzip
import io
import struct
import tarfile

import numpy as np
import pytest

from fwbench.harness import data, spec
from fwbench.harness.errors import DataError


def write_idx(path, array, magic):
    header = struct.pack(">II", magic, len(array))
    if magic == 2051:
        header += struct.pack(">II", *array.shape[1:])
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_images_and_labels(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    write_idx(tmp_path / "i.gz", imgs, 2051)
    write_idx(tmp_path / "l.gz", np.arange(5), 2049)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "i.gz"), imgs)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "l.gz"), np.arange(5))


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path):
    write_idx(tmp_path / "bad.gz", np.arange(5), 1234)
    with pytest.raises(DataError, match="magic"):
        data.read_idx(tmp_path / "bad.gz")
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(struct.pack(">IIII", 2051, 5, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="expected 3920 bytes"):
        data.read_idx(tmp_path / "short.gz")


def test_tokenizer():
    assert data.tokenize("It's GREAT!<br /><br />10/10, don't miss") == \
        ["it's", "great", "10", "10", "don't", "miss"]
    assert data.tokenize("a<br />b") == ["a", "b"]  # <br /> separates words


def test_vocab_ties_alphabetical_and_reserved_ids():
    vocab = data.build_vocab([["b", "a", "c", "c"], ["a", "b", "d"]], size=5)
    # counts: a 2, b 2, c 2, d 1 -> 3 words fit (ids 2..4), ties broken alphabetically
    assert vocab == {"a": 2, "b": 3, "c": 4}


def test_encode_keeps_last_tokens_and_prepads():
    vocab = {"a": 2, "b": 3}
    np.testing.assert_array_equal(data.encode(["a", "x", "b"], vocab, maxlen=5), [0, 0, 2, 1, 3])
    np.testing.assert_array_equal(data.encode(["a", "b", "a", "b"], vocab, maxlen=2), [2, 3])
    np.testing.assert_array_equal(data.encode([], vocab, maxlen=3), [0, 0, 0])


def test_checksum_mismatch_names_the_file(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"hello")
    with pytest.raises(DataError, match="x.bin: checksum mismatch"):
        data.verify(f, "0" * 64)


def test_flipped_byte_in_data_dir_is_refused(tmp_path):
    for raw in data.MNIST_FILES.values():
        src = data.SAMPLE_DIR / raw.path
        (tmp_path / raw.path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / raw.path).write_bytes(src.read_bytes())
    target = tmp_path / data.MNIST_FILES["test_labels"].path
    b = bytearray(target.read_bytes())
    b[100] ^= 0xFF
    target.write_bytes(bytes(b))
    with pytest.raises(DataError, match="checksum mismatch"):
        data.prepare(data.DATASETS["mnist"], "quick", tmp_path)


def test_missing_file_in_data_dir(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz not found"):
        data.prepare(data.DATASETS["mnist"], "quick", tmp_path)
    with pytest.raises(DataError, match="aclImdb_v1.tar.gz not found"):
        data.prepare(data.DATASETS["imdb"], "quick", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        data.prepare(data.DATASETS["imdb"], "quick", tmp_path / "nope")


def _tar_with(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, text in members.items():
            payload = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_tar_and_csv_give_the_same_data(tmp_path):
    reviews = {("train", "pos", 0): "Great film<br />loved it", ("train", "neg", 0): "bad bad film",
               ("test", "pos", 3): "great!", ("test", "neg", 1): "awful film, bad"}
    _tar_with(tmp_path / "a.tar.gz", {f"aclImdb/{s}/{lab}/{i}_8.txt": t for (s, lab, i), t in reviews.items()}
              | {"aclImdb/README": "readme", "aclImdb/imdb.vocab": "x"})
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["split", "label", "id", "rating", "text"])
    for (s, lab, i), t in reversed(list(reviews.items())):
        w.writerow([s, lab, i, 8, t])
    with gzip.open(tmp_path / "a.csv.gz", "wt") as f:
        f.write(buf.getvalue())
    a = data._imdb_arrays(data.read_imdb_tar(tmp_path / "a.tar.gz"))
    b = data._imdb_arrays(data.read_imdb_csv(tmp_path / "a.csv.gz"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    np.testing.assert_array_equal(a["y_train"], [1, 0])  # pos first, then neg
    assert list(a["vocab"][:3]) == ["bad", "film", "great"]


def test_tar_member_outside_its_folder_is_refused(tmp_path):
    _tar_with(tmp_path / "evil.tar.gz", {"aclImdb/train/pos/0_9.txt": "ok", "../../etc/evil": "x"})
    with pytest.raises(DataError, match="outside its folder"):
        data.read_imdb_tar(tmp_path / "evil.tar.gz")


def test_csv_with_wrong_header_is_refused(tmp_path):
    with gzip.open(tmp_path / "x.csv.gz", "wt") as f:
        f.write("a,b\n1,2\n")
    with pytest.raises(DataError, match="header"):
        data.read_imdb_csv(tmp_path / "x.csv.gz")


def test_sample_prepare_is_cached_and_not_retokenized(monkeypatch):
    first = data.prepare(data.DATASETS["imdb"], "smoke")
    monkeypatch.setattr(data, "tokenize", lambda text: pytest.fail("re-tokenized a cached data set"))
    assert data.prepare(data.DATASETS["imdb"], "smoke") == first
    arrays = data.load_prepared(first)
    assert arrays["x_train"].shape == (1500, spec.IMDB_MAXLEN) and arrays["x_test"].shape == (500, 200)
    assert arrays["x_train"].max() < spec.IMDB_VOCAB and (arrays["y_train"] == 1).sum() == 750


def test_task_preprocessing():
    prepared = data.load_prepared(data.prepare(data.DATASETS["mnist"], "smoke"))
    mlp = data.task_arrays(spec.TASKS["mlp"], prepared, data.PREPROCESS["mnist_scaled"])
    lenet = data.task_arrays(spec.TASKS["lenet"], prepared, data.PREPROCESS["mnist_lenet"])
    assert mlp["x_train"].shape == (3000, 1, 28, 28) and mlp["x_train"].dtype == np.float32
    assert 0 <= mlp["x_train"].min() and mlp["x_train"].max() == 1.0
    assert lenet["x_train"].shape == (3000, 1, 32, 32)
    assert np.allclose(lenet["x_train"][:, :, :2, :], -0.1307 / 0.3081)  # zero padding, normalized
    np.testing.assert_allclose(lenet["x_train"][:, 0, 2:30, 2:30],
                               (mlp["x_train"][:, 0] - 0.1307) / 0.3081, rtol=1e-5, atol=1e-6)


def test_real_mnist_matches_its_published_counts(real_data_dir):
    arrays = data.load_prepared(data.prepare(data.DATASETS["mnist"], "quick", real_data_dir))
    assert arrays["x_train"].shape == (60000, 28, 28) and arrays["x_test"].shape == (10000, 28, 28)
    assert list(np.bincount(arrays["y_test"])) == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.slow
def test_real_imdb(real_data_dir):
    arrays = data.load_prepared(data.prepare(data.DATASETS["imdb"], "quick", real_data_dir))
    assert arrays["x_train"].shape == (25000, 200) and arrays["x_test"].shape == (25000, 200)
    assert (arrays["y_train"] == 1).sum() == 12500 and (arrays["y_test"] == 0).sum() == 12500
    assert len(arrays["vocab"]) == spec.IMDB_VOCAB - 2 and list(arrays["vocab"][:3]) == ["the", "and", "a"]
