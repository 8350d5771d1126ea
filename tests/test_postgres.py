"""A run whose evaluations live in a real PostgreSQL server (started locally by `pgserver`, a test dependency)."""

import json

import pytest
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.store import RunDir
from tests.conftest import write_experiment

pytestmark = pytest.mark.slow
pgserver = pytest.importorskip("pgserver")


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory):
    server = pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    try:
        yield server.get_uri().replace("postgresql://", "postgresql+psycopg2://")
    finally:
        server.cleanup()


def test_search_on_postgres_then_resume_and_status(tmp_path, tiny_zoo, tiny_task_dir, postgres_url):
    exp = write_experiment(tmp_path / "exp.yaml", tiny_task_dir, baselines={"enabled": False},
                           optimizer={"type": "cma", "generations": 2, "popsize": 3})
    cli = CliRunner()
    result = cli.invoke(app, ["run", str(exp), "--run-dir", str(tmp_path / "run"), "--db", postgres_url])
    assert result.exit_code == 0, result.stderr
    assert not (tmp_path / "run" / "run.db").exists()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["db"].startswith("postgresql+psycopg2://")
    store = RunDir.open(tmp_path / "run").store()
    try:
        assert store.engine.dialect.name == "postgresql"
        evals = store.evaluations("search")
        assert len(evals) == 6 and all(e.status == "ok" for e in evals)
        assert store.last_snapshot().phase == "told"
    finally:
        store.close()
    result = cli.invoke(app, ["resume", str(tmp_path / "run")])
    assert result.exit_code == 0 and "search already complete (6 evaluations stored)" in result.stdout
    result = cli.invoke(app, ["status", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["evaluations"]["done"] == 6
