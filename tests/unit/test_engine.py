"""tasks.common.engine without a cluster: settings, the environment override, the in-process executor
and the ordering/partitioning contract every stage relies on."""

from __future__ import annotations

import pytest

from tasks.common import engine
from tasks.common.errors import UserError
from tasks.common.params import ParamsError, load_engine, validate_file


def test_engine_section_is_validated_and_loaded(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("engine:\n  address: tcp://10.0.0.5:8786\n  workers: 3\n  in_process_below: 7\n")
    cfg = load_engine(params)
    assert (cfg.address, cfg.workers, cfg.in_process_below, cfg.partition_size) == ("tcp://10.0.0.5:8786", 3, 7, 512)

    params.write_text("engine:\n  adress: tcp://x:1\n")
    with pytest.raises(ParamsError, match=r"engine\.adress: Extra inputs"):
        validate_file(params)
    params.write_text("engine:\n  address: host:8786\n")
    with pytest.raises(ParamsError, match=r"engine\.address: .*tcp://host:8786"):
        load_engine(params)
    params.write_text("engine:\n  workers: 0\n")
    with pytest.raises(ParamsError, match=r"engine\.workers"):
        load_engine(params)


def test_validating_a_params_file_puts_its_engine_in_force(tmp_path, monkeypatch):
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    params = tmp_path / "params.yaml"
    params.write_text("engine:\n  in_process_below: 42\n")
    with engine.configured(engine.EngineParams()):
        validate_file(params)
        assert engine.current().in_process_below == 42
    assert load_engine(tmp_path / "params.yaml").address is None


def test_environment_overrides_the_address(monkeypatch):
    with engine.configured(engine.EngineParams(address="tcp://a:1")):
        monkeypatch.setenv(engine.ADDRESS_ENV, "tcp://b:2")
        assert engine.current().address == "tcp://b:2"
        monkeypatch.setenv(engine.ADDRESS_ENV, "b:2")
        with pytest.raises(UserError, match="tcp://host:8786"):
            engine.current()
        monkeypatch.delenv(engine.ADDRESS_ENV)
        assert engine.current().address == "tcp://a:1"


def test_small_data_runs_in_process_in_order():
    cfg = engine.EngineParams(partition_size=3, in_process_below=100, address="tcp://nowhere:1")
    with engine.session(10, cfg) as eng:  # small data: the address is never contacted
        assert eng.kind == "in-process" and eng.client is None and not eng.running_cluster
        parts = list(eng.map_partitions(_tag, list(range(10)), "x"))
    assert parts == [["x0", "x1", "x2"], ["x3", "x4", "x5"], ["x6", "x7", "x8"], ["x9"]]


def test_in_process_executor_has_the_client_interface():
    executor = engine.InProcess()
    futures = executor.map(pow, [2, 3], [3, 2])
    assert executor.gather(futures) == [8, 9]
    assert executor.submit(_tag, [1], "y", pure=False).result() == ["y1"]


def test_local_cluster_is_sized_to_the_settings():
    kwargs = engine.local_cluster_kwargs(engine.EngineParams(workers=3, memory_limit="1GiB"))
    assert kwargs["n_workers"] == 3 and kwargs["threads_per_worker"] == 1 and kwargs["processes"] is True
    assert kwargs["memory_limit"] == "1GiB"
    assert engine.local_cluster_kwargs(engine.EngineParams())["n_workers"] == engine.usable_cpus()


def test_cli_run_takes_a_cluster_address():
    from flows.cli import build_parser

    args = build_parser().parse_args(["run", "--cluster", "tcp://10.0.0.5:8786"])
    assert args.cluster == "tcp://10.0.0.5:8786"
    assert build_parser().parse_args(["run"]).cluster is None


def _tag(items, prefix):
    return [f"{prefix}{i}" for i in items]
