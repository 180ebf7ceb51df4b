"""the device family of each click, clicks per tracked URL and device family, figures per
recipient domain

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-13
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0005'
down_revision: Union[str, None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('hotclicks_click') as batch:
        batch.add_column(sa.Column('device', sa.String(length=10), nullable=True))
    op.create_table('hotclicks_device_stats',
    sa.Column('tracked_url_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('device', sa.String(length=10), nullable=False),
    sa.Column('clicks', sa.BigInteger(), nullable=False),
    sa.Column('machine_clicks', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['tracked_url_id'], ['hotclicks_tracked_url.id'], name=op.f('fk_hotclicks_device_stats_tracked_url_id_hotclicks_tracked_url')),
    sa.PrimaryKeyConstraint('tracked_url_id', 'device', name=op.f('pk_hotclicks_device_stats'))
    )
    # The clicks folded already were recorded before the family was read: "unknown". Taken from
    # the links' own aggregates, so clicks removed by a retention purge stay counted too.
    op.execute(
        "INSERT INTO hotclicks_device_stats (tracked_url_id, device, clicks, machine_clicks) "
        "SELECT tracked_url_id, 'unknown', clicks, machine_clicks FROM hotclicks_link_stats "
        "WHERE clicks + machine_clicks > 0"
    )
    op.create_table('hotclicks_domain_stats',
    sa.Column('execution_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('domain', sa.String(length=320), nullable=False),
    sa.Column('messages', sa.BigInteger(), nullable=False),
    sa.Column('openers', sa.BigInteger(), nullable=False),
    sa.Column('clickers', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['hotclicks_execution.id'], name=op.f('fk_hotclicks_domain_stats_execution_id_hotclicks_execution')),
    sa.PrimaryKeyConstraint('execution_id', 'domain', name=op.f('pk_hotclicks_domain_stats'))
    )
    op.create_index('ix_hotclicks_message_execution_id_status', 'hotclicks_message', ['execution_id', 'status'], unique=False)
    # The messages folded already, and the openers and clickers of the folded opens and clicks.
    find = "strpos" if op.get_bind().dialect.name == "postgresql" else "instr"
    domain = f"LOWER(SUBSTR(r.address, {find}(r.address, '@') + 1))"
    op.execute(
        "INSERT INTO hotclicks_domain_stats (execution_id, domain, messages, openers, clickers) "
        f"SELECT g.execution_id, {domain}, "
        "SUM(CASE WHEN g.status <> 'suppressed' AND g.id <= COALESCE("
        "(SELECT watermark FROM hotclicks_rollup_state WHERE name = 'message'), 0) THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN s.opens > 0 THEN 1 ELSE 0 END), SUM(CASE WHEN s.clicks > 0 THEN 1 ELSE 0 END) "
        "FROM hotclicks_message g JOIN hotclicks_recipient r ON r.id = g.recipient_id "
        "LEFT JOIN hotclicks_message_stats s ON s.message_id = g.id "
        f"GROUP BY g.execution_id, {domain}"
    )


def downgrade() -> None:
    op.drop_table('hotclicks_domain_stats')
    op.drop_index('ix_hotclicks_message_execution_id_status', table_name='hotclicks_message')
    op.drop_table('hotclicks_device_stats')
    with op.batch_alter_table('hotclicks_click') as batch:
        batch.drop_column('device')
