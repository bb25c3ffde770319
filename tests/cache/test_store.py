"""Reading commands take a URL: what they read is fetched once into the local content-addressed store
(MTKD_CACHE_HOME), verified, and reused; only the teachers and splits read move; distill from s3:// equals
distill from the local cache and records where it came from."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from helpers.moto_s3 import moto_server, point_s3_at
from helpers.reference import build_teacherless_cache
from mtkd_cache.cache.manifest import load_manifest
from mtkd_cache.cache.sharing import push
from mtkd_cache.cache.store import HOME_VARIABLE, fetch, store_home
from mtkd_cache.distillation.runs import DistillConfig, distill
from mtkd_cache.distillation.strategies import StrategyConfig
from mtkd_cache.distillation.training import TrainConfig
from mtkd_cache.errors import CacheIntegrityError
from mtkd_cache.hashing import sha256_bytes
from mtkd_cache.layout import MANIFEST_NAME, RUN_CONFIG
from mtkd_cache_cli.app import app

runner = CliRunner()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def local_cache(assets, tmp_path_factory):
    return build_teacherless_cache(assets, tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def moto_endpoint():
    pytest.importorskip("s3fs")
    with moto_server("mtkd") as endpoint:
        yield endpoint


@pytest.fixture
def s3(moto_endpoint, monkeypatch, tmp_path):
    import s3fs

    point_s3_at(moto_endpoint, monkeypatch, tmp_path)
    monkeypatch.setenv(HOME_VARIABLE, str(tmp_path / "store-home"))
    yield s3fs.S3FileSystem()
    s3fs.S3FileSystem.clear_instance_cache()


def _config(cache, out, assets) -> DistillConfig:
    return DistillConfig(cache=cache, student="bilstm:embed=16,hidden=16", tokenizer=str(assets["bert"]), out=out,
                         strategy=StrategyConfig("expert"), expert_split="validation",
                         train=TrainConfig(epochs=1, learning_rate=1e-3, device="cpu"))


def test_distill_from_s3_equals_distill_from_the_local_cache(local_cache, s3, assets, tmp_path, request):
    url = f"s3://mtkd/{request.node.name}/cache"
    push(local_cache, url)
    here = distill(_config(local_cache, tmp_path / "local-run", assets))
    there = distill(_config(url, tmp_path / "url-run", assets))
    assert there.report.accuracy == here.report.accuracy and there.report.macro_f1 == here.report.macro_f1
    assert [r.train_loss for r in there.train.history] == [r.train_loss for r in here.train.history]
    recorded = json.loads((tmp_path / "url-run" / RUN_CONFIG).read_text())
    assert recorded["cache_url"] == url
    assert recorded["manifest_sha256"] == sha256_bytes(s3.cat_file(f"mtkd/{request.node.name}/cache/{MANIFEST_NAME}"))
    assert recorded["fingerprint"] == json.loads((tmp_path / "local-run" / RUN_CONFIG).read_text())["fingerprint"]
    assert store_home() == tmp_path / "store-home" and (store_home() / "shards").is_dir()

    # report --ensemble scores on the cache the first run names: here the URL, from the local store
    ensemble = runner.invoke(app, ["report", str(tmp_path / "url-run"), str(tmp_path / "local-run"), "--ensemble",
                                   "--device", "cpu"])
    assert ensemble.exit_code == 0, ensemble.output
    assert "ensemble of 2 students on 'test'" in " ".join(ensemble.stdout.split())

    again = fetch(url, None, ("train", "validation", "test"))  # a second command reading the same: 0 bytes move
    assert (again.shards_moved, again.bytes_moved) == (0, 0)
    result = runner.invoke(app, ["experts", url, "--split", "validation", "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["experts"]) == {"politics", "sports", "tech"}


def test_only_the_teachers_and_splits_read_are_fetched(local_cache, s3, request):
    url = f"s3://mtkd/{request.node.name}/cache"
    push(local_cache, url)
    manifest = load_manifest(local_cache)
    fetched = fetch(url, ("bert",), ("train",))
    wanted = [r for r in manifest.shards if r.split == "train" and r.teacher in (None, "bert")]
    assert fetched.shards_moved == len(wanted) and fetched.bytes_moved == sum(r.bytes for r in wanted)
    assert not (fetched.path / "outputs" / "distil").exists() and not (fetched.path / "inputs" / "test").exists()
    more = fetch(url, ("bert", "distil"), ("train",))  # the next command needs distil too: only distil moves
    assert more.bytes_moved == sum(r.bytes for r in manifest.shards if r.split == "train" and r.teacher == "distil")


def test_a_corrupted_remote_shard_is_refused_by_name_and_never_stored(local_cache, s3, request):
    url = f"s3://mtkd/{request.node.name}/cache"
    push(local_cache, url)
    bad = load_manifest(local_cache).shards_of("train", "distil")[0]
    key = f"mtkd/{request.node.name}/cache/{bad.path}"
    data = bytearray(s3.cat_file(key))
    data[len(data) // 2] ^= 0xFF
    s3.pipe_file(key, bytes(data))
    with pytest.raises(CacheIntegrityError) as raised:
        fetch(url, ("distil",), ("train",))
    assert f"{url}/{bad.path} is corrupt" in str(raised.value)
    assert not (store_home() / "shards" / bad.sha256[:2] / bad.sha256).exists()
    result = runner.invoke(app, ["verify", url])  # after the fetch's progress line, one error line
    assert result.exit_code == 2 and "Traceback" not in result.output
    [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"{url}/{bad.path} is corrupt" in error
    from mtkd_cache.cache.reader import open_cache

    intact = fetch(url, ("bert",), ("train",))  # what is intact still reads
    assert open_cache(intact.path).teacher_outputs("train", ["bert"]).logits.shape[1] == 1


def test_sweep_reads_a_url(local_cache, s3, assets, tmp_path, request):
    url = f"s3://mtkd/{request.node.name}/cache"
    push(local_cache, url)
    result = runner.invoke(app, ["sweep", url, "--student", "bilstm:embed=16,hidden=16", "--tokenizer", str(assets["bert"]),
                                 "--out", str(tmp_path / "sweep"), "--strategy", "average", "--epochs", "1",
                                 "--device", "cpu", "--expert-split", "validation", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "1 run(s) trained" in result.stdout and (tmp_path / "sweep" / "leaderboard.md").exists()
