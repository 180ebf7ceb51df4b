"""relay accounts and test profiles' copies

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: Union[str, None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('hotclicks_relay_account',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('login', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_relay_account')),
    sa.UniqueConstraint('login', name=op.f('uq_hotclicks_relay_account_login'))
    )
    op.create_table('hotclicks_profile_copy',
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('execution_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('test_profile_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['hotclicks_execution.id'], name=op.f('fk_hotclicks_profile_copy_execution_id_hotclicks_execution')),
    sa.ForeignKeyConstraint(['message_id'], ['hotclicks_message.id'], name=op.f('fk_hotclicks_profile_copy_message_id_hotclicks_message')),
    sa.ForeignKeyConstraint(['test_profile_id'], ['hotclicks_test_profile.id'], name=op.f('fk_hotclicks_profile_copy_test_profile_id_hotclicks_test_profile')),
    sa.PrimaryKeyConstraint('message_id', name=op.f('pk_hotclicks_profile_copy'))
    )
    with op.batch_alter_table('hotclicks_profile_copy', schema=None) as batch_op:
        batch_op.create_index('ix_hotclicks_profile_copy_execution_id_test_profile_id', ['execution_id', 'test_profile_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('hotclicks_profile_copy', schema=None) as batch_op:
        batch_op.drop_index('ix_hotclicks_profile_copy_execution_id_test_profile_id')

    op.drop_table('hotclicks_profile_copy')
    op.drop_table('hotclicks_relay_account')
