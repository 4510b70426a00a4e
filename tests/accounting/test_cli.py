"""`switchyard keys create|list|revoke|top-up` and the key `switchyard up --api-key` makes."""

from __future__ import annotations

import argparse

import pytest

from services.router.accounting.cli import AMPLE_CREDITS, ensure_api_key, register


def keys_cli(capsys, *argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="switchyard")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["keys", *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_key_is_created_listed_topped_up_and_revoked(database_url, capsys):
    db = ("--database", database_url)
    code, out, err = keys_cli(
        capsys,
        "create",
        *db,
        "--name",
        "ci-bot",
        "--credits",
        "12.5",
        "--rpm",
        "60",
        "--tpm",
        "5000",
        "--max-concurrent",
        "3",
        "--allowed-model",
        "acme/large",
        "--allowed-model",
        "acme/small",
        "--reveal-model-names",
    )
    assert code == 0
    secret = out.strip()
    assert (
        secret.startswith("sy-") and "\n" not in secret
    )  # alone on stdout: KEY=$(switchyard keys create ...)
    assert "shown only now" in err
    key_id = err.split()[1]

    code, out, _ = keys_cli(capsys, "list", *db)
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith(key_id))
    for shown in (
        "ci-bot",
        secret[:11] + "…",
        "12.500000",
        "60",
        "5000",
        "3",
        "acme/large,acme/small",
        "reveal-names",
    ):
        assert shown in line
    assert secret not in out

    code, out, _ = keys_cli(capsys, "top-up", *db, key_id, "0.5")
    assert (code, out.strip()) == (0, f"{key_id} now has 13.000000 credits")

    code, out, _ = keys_cli(capsys, "revoke", *db, key_id)
    assert code == 0
    assert key_id not in keys_cli(capsys, "list", *db)[1]
    assert key_id in keys_cli(capsys, "list", *db, "--all")[1]


def test_mistakes_are_reported_without_a_traceback(database_url, capsys):
    code, _, err = keys_cli(capsys, "top-up", "--database", database_url, "key_missing", "1")
    assert (code, err.strip()) == (1, "error: No key with id 'key_missing'.")
    code, _, err = keys_cli(capsys, "create", "--database", database_url, "--name", "x", "--rpm", "0")
    assert code == 1 and "requests_per_minute" in err


def test_ensure_api_key_makes_an_ample_admin_key_once(database_url, capsys):
    key_id = ensure_api_key("sy-local-dev-key-0123456789", database_url=database_url)
    assert ensure_api_key("sy-local-dev-key-0123456789", database_url=database_url) == key_id
    _, out, _ = keys_cli(capsys, "list", "--database", database_url)
    rows = [row for row in out.splitlines() if row.startswith("key_")]
    assert len(rows) == 1
    assert f"{AMPLE_CREDITS:.6f}" in rows[0] and "admin" in rows[0]
    # Model names stay redacted for it, as the seeds' routers answer by default.
    assert "reveal-names" not in rows[0]


def test_the_switchyard_command_has_the_keys_subcommands(database_url, capsys):
    from services.cli import main

    assert main(["keys", "list", "--database", database_url]) == 0
    assert capsys.readouterr().out.startswith("ID")
    with pytest.raises(SystemExit):
        main(["keys", "frobnicate"])
