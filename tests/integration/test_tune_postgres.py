"""`imgcls tune`'s study on the MLflow database server: with MLflow on PostgreSQL the study goes to the
same server and database, in its own schema (both keep an `alembic_version` table), and a second
opening resumes it while MLflow keeps working on the same database. A real PostgreSQL cluster."""

from __future__ import annotations

import mlflow
import pytest

from tasks.tuning.space import TuneParams
from tasks.tuning.study import POSTGRES_SCHEMA, make_storage, open_study, storage_url
from tests.integration import prod_servers as ps

MISSING = ps.missing_requirements()
pytestmark = [pytest.mark.skipif(MISSING is not None, reason=MISSING or ""), pytest.mark.timeout(300)]


def test_study_shares_the_mlflow_database_in_its_own_schema():
    with ps.postgres_cluster(("mlflow",)) as pg:
        uri = pg.url("mlflow", driver="postgresql+psycopg")
        client = mlflow.MlflowClient(uri)
        first = client.create_experiment("before-tune")  # MLflow's tables and alembic_version in `public`

        url = storage_url(uri)
        assert url == uri  # the same server and database
        tune = TuneParams(study_name="pg")
        study = open_study(tune, make_storage(url))
        study.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=2)
        again = open_study(tune, make_storage(url))  # another invocation resumes it
        again.optimize(lambda trial: trial.suggest_float("x", 0.0, 1.0), n_trials=1)
        assert len(open_study(tune, make_storage(url)).trials) == 3

        tables = set(
            pg.query(
                "mlflow",
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_name IN ('alembic_version', 'trials', 'experiments')",
            )
        )
        assert tables == {
            ("public", "alembic_version"),
            ("public", "experiments"),
            (POSTGRES_SCHEMA, "alembic_version"),
            (POSTGRES_SCHEMA, "trials"),
        }
        # MLflow still opens its store (its schema revision untouched) and sees what it had
        reopened = mlflow.MlflowClient(uri)
        assert reopened.get_experiment(first).name == "before-tune"
        reopened.create_experiment("after-tune")
