"""client networks on clicks and opens, the events per bot-rule reason, clicks by client and time

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0004'
down_revision: Union[str, None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    with op.batch_alter_table('hotclicks_click') as batch:
        batch.add_column(sa.Column('network', sa.String(length=64), nullable=True))
    op.create_index('ix_hotclicks_click_ip_clicked_at', 'hotclicks_click', ['ip', 'clicked_at'])
    with op.batch_alter_table('hotclicks_open') as batch:
        batch.add_column(sa.Column('network', sa.String(length=64), nullable=True))
    op.create_table('hotclicks_reason_stats',
    sa.Column('execution_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('source', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.String(length=100), nullable=False),
    sa.Column('events', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['hotclicks_execution.id'], name=op.f('fk_hotclicks_reason_stats_execution_id_hotclicks_execution')),
    sa.PrimaryKeyConstraint('execution_id', 'source', 'reason', name=op.f('pk_hotclicks_reason_stats'))
    )
    # The reasons of the rows folded already (those above the watermarks are read live).
    op.execute(
        "INSERT INTO hotclicks_reason_stats (execution_id, source, reason, events) "
        "SELECT t.execution_id, 'click', c.machine_reason, COUNT(*) FROM hotclicks_click c "
        "JOIN hotclicks_tracked_url t ON t.id = c.tracked_url_id "
        "WHERE c.machine_reason IS NOT NULL AND c.id <= COALESCE("
        "(SELECT watermark FROM hotclicks_rollup_state WHERE name = 'click'), 0) "
        "GROUP BY t.execution_id, c.machine_reason"
    )
    op.execute(
        "INSERT INTO hotclicks_reason_stats (execution_id, source, reason, events) "
        "SELECT g.execution_id, 'open', o.machine_reason, COUNT(*) FROM hotclicks_open o "
        "JOIN hotclicks_message g ON g.id = o.message_id "
        "WHERE o.machine_reason IS NOT NULL AND o.id <= COALESCE("
        "(SELECT watermark FROM hotclicks_rollup_state WHERE name = 'open'), 0) "
        "GROUP BY g.execution_id, o.machine_reason"
    )


def downgrade() -> None:
    op.drop_table('hotclicks_reason_stats')
    with op.batch_alter_table('hotclicks_open') as batch:
        batch.drop_column('network')
    op.drop_index('ix_hotclicks_click_ip_clicked_at', table_name='hotclicks_click')
    with op.batch_alter_table('hotclicks_click') as batch:
        batch.drop_column('network')
