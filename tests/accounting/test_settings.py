"""Where the state layer finds its database."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from services.router.accounting.settings import DATABASE_URL_ENV, AccountingSettings, default_database_url


def test_a_plain_path_in_the_environment_is_the_sqlite_url_of_that_file(monkeypatch, tmp_path):
    # `switchyard up` and `switchyard keys` read the variable without the settings class.
    monkeypatch.setenv(DATABASE_URL_ENV, str(tmp_path / "state.db"))
    url = make_url(default_database_url())
    assert (url.get_backend_name(), url.database) == ("sqlite", str(tmp_path / "state.db"))
    assert AccountingSettings().database_url == default_database_url()


def test_a_url_in_the_environment_is_used_as_given(monkeypatch):
    monkeypatch.setenv(DATABASE_URL_ENV, "postgresql+asyncpg://router@db/switchyard")
    assert default_database_url() == "postgresql+asyncpg://router@db/switchyard"
