"""the device family of each click, and clicks per tracked URL and device family

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


def downgrade() -> None:
    op.drop_table('hotclicks_device_stats')
    with op.batch_alter_table('hotclicks_click') as batch:
        batch.drop_column('device')
