"""API keys, the credit ledger, open reservations and the request log.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the types in schema.py as of this revision: a migration must not change when
# the application's types do later.
_AutoId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_Timestamp = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("secret_sha256", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("balance_nanocredits", sa.BigInteger(), nullable=False),
        sa.Column("allowed_models", sa.JSON(), nullable=False),
        sa.Column("requests_per_minute", sa.Integer(), nullable=True),
        sa.Column("tokens_per_minute", sa.Integer(), nullable=True),
        sa.Column("max_concurrent_requests", sa.Integer(), nullable=True),
        sa.Column("reveal_model_names", sa.Boolean(), nullable=False),
        sa.Column("admin", sa.Boolean(), nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("revoked_at", _Timestamp, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("secret_sha256", name=op.f("uq_api_keys_secret_sha256")),
    )
    op.create_table(
        "credit_ledger",
        sa.Column("id", _AutoId, autoincrement=True, nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_nanocredits", sa.BigInteger(), nullable=False),
        sa.Column("reservation_id", sa.String(36), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("note", sa.String(200), nullable=True),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.CheckConstraint(
            "kind IN ('top_up', 'reservation', 'release', 'settlement')", name=op.f("ck_credit_ledger_kind")
        ),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_credit_ledger_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_ledger")),
        sa.UniqueConstraint("reservation_id", "kind", name=op.f("uq_credit_ledger_reservation_id_kind")),
    )
    op.create_index(op.f("ix_credit_ledger_key_id_id"), "credit_ledger", ["key_id", "id"])
    op.create_table(
        "open_reservations",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("amount_nanocredits", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.ForeignKeyConstraint(
            ["key_id"], ["api_keys.id"], name=op.f("fk_open_reservations_key_id_api_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_open_reservations")),
    )
    op.create_index(op.f("ix_open_reservations_holder"), "open_reservations", ["holder"])
    op.create_index(op.f("ix_open_reservations_created_at"), "open_reservations", ["created_at"])
    op.create_table(
        "request_log",
        sa.Column("id", _AutoId, autoincrement=True, nullable=False),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("created_at", _Timestamp, nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("customer_identifier", sa.String(256), nullable=False),
        sa.Column("request_metadata", sa.JSON(), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("category", sa.String(50), nullable=False),
        sa.Column("difficulty", sa.Float(), nullable=True),
        sa.Column("preference", sa.String(20), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_nanocredits", sa.BigInteger(), nullable=False),
        sa.Column("latency", sa.Float(), nullable=True),
        sa.Column("time_to_first_token", sa.Float(), nullable=True),
        sa.Column("routing_time", sa.Float(), nullable=True),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("error_reason", sa.String(64), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("fallbacks_used", sa.JSON(), nullable=False),
        sa.Column("cached", sa.Boolean(), nullable=False),
        sa.Column("request_proto", sa.LargeBinary(), nullable=True),
        sa.Column("completions", sa.JSON(), nullable=True),
        sa.Column("log_disabled", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["key_id"], ["api_keys.id"], name=op.f("fk_request_log_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_log")),
    )
    op.create_index(op.f("ix_request_log_key_id_created_at"), "request_log", ["key_id", "created_at"])
    op.create_index(op.f("ix_request_log_created_at"), "request_log", ["created_at"])
    op.create_index(op.f("ix_request_log_request_id"), "request_log", ["request_id"])


def downgrade() -> None:
    op.drop_table("request_log")
    op.drop_table("open_reservations")
    op.drop_table("credit_ledger")
    op.drop_table("api_keys")
