"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-23
"""

from typing import Sequence, Union

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: Union[str, None] = None
branch_labels: Union[str, Sequence[str], None] = ('hotclicks',)
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    op.create_table('hotclicks_delivery',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('code', sa.String(length=200), nullable=False),
    sa.Column('type', sa.Enum('one-off', 'recurring', 'transactional', name='hotclicks_delivery_type', native_enum=False, length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_delivery')),
    sa.UniqueConstraint('code', name=op.f('uq_hotclicks_delivery_code'))
    )
    op.create_table('hotclicks_recipient',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=True),
    sa.Column('tracking_opt_out', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_recipient')),
    sa.UniqueConstraint('address', name=op.f('uq_hotclicks_recipient_address'))
    )
    with op.batch_alter_table('hotclicks_recipient', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_recipient_external_id'), ['external_id'], unique=False)

    op.create_table('hotclicks_relay_counter',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_relay_counter')),
    sa.UniqueConstraint('day', 'name', name=op.f('uq_hotclicks_relay_counter_day_name'))
    )
    op.create_table('hotclicks_test_profile',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('address', sa.String(length=320), nullable=False),
    sa.Column('attributes', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_test_profile')),
    sa.UniqueConstraint('address', name=op.f('uq_hotclicks_test_profile_address')),
    sa.UniqueConstraint('name', name=op.f('uq_hotclicks_test_profile_name'))
    )
    op.create_table('hotclicks_execution',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('delivery_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('key', sa.String(length=400), nullable=False),
    sa.Column('run_key', sa.String(length=200), nullable=True),
    sa.Column('period', sa.String(length=20), nullable=True),
    sa.Column('version', sa.String(length=200), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_message_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['delivery_id'], ['hotclicks_delivery.id'], name=op.f('fk_hotclicks_execution_delivery_id_hotclicks_delivery')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_execution')),
    sa.UniqueConstraint('delivery_id', 'key', name=op.f('uq_hotclicks_execution_delivery_id_key'))
    )
    with op.batch_alter_table('hotclicks_execution', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_execution_delivery_id'), ['delivery_id'], unique=False)

    op.create_table('hotclicks_content_variant',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('execution_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('signature', sa.String(length=64), nullable=False),
    sa.Column('html', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('sample_source', sa.String(length=20), nullable=False),
    sa.Column('test_profile_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['hotclicks_execution.id'], name=op.f('fk_hotclicks_content_variant_execution_id_hotclicks_execution')),
    sa.ForeignKeyConstraint(['test_profile_id'], ['hotclicks_test_profile.id'], name=op.f('fk_hotclicks_content_variant_test_profile_id_hotclicks_test_profile')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_content_variant')),
    sa.UniqueConstraint('execution_id', 'signature', name=op.f('uq_hotclicks_content_variant_execution_id_signature'))
    )
    with op.batch_alter_table('hotclicks_content_variant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_content_variant_execution_id'), ['execution_id'], unique=False)

    op.create_table('hotclicks_tracked_url',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('execution_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('part', sa.String(length=10), nullable=False),
    sa.Column('link_key', sa.Text(), nullable=False),
    sa.Column('key_digest', sa.String(length=64), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['execution_id'], ['hotclicks_execution.id'], name=op.f('fk_hotclicks_tracked_url_execution_id_hotclicks_execution')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_tracked_url')),
    sa.UniqueConstraint('execution_id', 'part', 'key_digest', name=op.f('uq_hotclicks_tracked_url_execution_id_part_key_digest'))
    )
    with op.batch_alter_table('hotclicks_tracked_url', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_tracked_url_execution_id'), ['execution_id'], unique=False)

    op.create_table('hotclicks_message',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('execution_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('recipient_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('variant_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('status', sa.Enum('queued', 'sent', 'deferred', 'failed', 'suppressed', name='hotclicks_message_status', native_enum=False, length=20), nullable=False),
    sa.Column('status_reply', sa.Text(), nullable=True),
    sa.Column('message_id_header', sa.String(length=998), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['execution_id'], ['hotclicks_execution.id'], name=op.f('fk_hotclicks_message_execution_id_hotclicks_execution')),
    sa.ForeignKeyConstraint(['recipient_id'], ['hotclicks_recipient.id'], name=op.f('fk_hotclicks_message_recipient_id_hotclicks_recipient')),
    sa.ForeignKeyConstraint(['variant_id'], ['hotclicks_content_variant.id'], name=op.f('fk_hotclicks_message_variant_id_hotclicks_content_variant')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_message'))
    )
    with op.batch_alter_table('hotclicks_message', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_message_execution_id'), ['execution_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_hotclicks_message_recipient_id'), ['recipient_id'], unique=False)

    op.create_table('hotclicks_click',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('tracked_url_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('clicked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('user_agent', sa.String(length=500), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('is_machine', sa.Boolean(), nullable=False),
    sa.Column('machine_reason', sa.String(length=100), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['hotclicks_message.id'], name=op.f('fk_hotclicks_click_message_id_hotclicks_message')),
    sa.ForeignKeyConstraint(['tracked_url_id'], ['hotclicks_tracked_url.id'], name=op.f('fk_hotclicks_click_tracked_url_id_hotclicks_tracked_url')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_click'))
    )
    with op.batch_alter_table('hotclicks_click', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_click_message_id'), ['message_id'], unique=False)
        batch_op.create_index('ix_hotclicks_click_tracked_url_id_message_id', ['tracked_url_id', 'message_id'], unique=False)

    op.create_table('hotclicks_open',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('user_agent', sa.String(length=500), nullable=True),
    sa.Column('ip', sa.String(length=64), nullable=True),
    sa.Column('is_machine', sa.Boolean(), nullable=False),
    sa.Column('machine_reason', sa.String(length=100), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['hotclicks_message.id'], name=op.f('fk_hotclicks_open_message_id_hotclicks_message')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_open'))
    )
    with op.batch_alter_table('hotclicks_open', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_open_message_id'), ['message_id'], unique=False)

    op.create_table('hotclicks_opt_out',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('recipient_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('source', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['hotclicks_message.id'], name=op.f('fk_hotclicks_opt_out_message_id_hotclicks_message')),
    sa.ForeignKeyConstraint(['recipient_id'], ['hotclicks_recipient.id'], name=op.f('fk_hotclicks_opt_out_recipient_id_hotclicks_recipient')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_opt_out'))
    )
    with op.batch_alter_table('hotclicks_opt_out', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_opt_out_recipient_id'), ['recipient_id'], unique=False)

    op.create_table('hotclicks_relay_incident',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('message_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('message_id_header', sa.String(length=998), nullable=True),
    sa.Column('mail_from', sa.String(length=320), nullable=True),
    sa.Column('recipients', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['message_id'], ['hotclicks_message.id'], name=op.f('fk_hotclicks_relay_incident_message_id_hotclicks_message')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_hotclicks_relay_incident'))
    )
    with op.batch_alter_table('hotclicks_relay_incident', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hotclicks_relay_incident_at'), ['at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('hotclicks_relay_incident', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_relay_incident_at'))

    op.drop_table('hotclicks_relay_incident')
    with op.batch_alter_table('hotclicks_opt_out', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_opt_out_recipient_id'))

    op.drop_table('hotclicks_opt_out')
    with op.batch_alter_table('hotclicks_open', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_open_message_id'))

    op.drop_table('hotclicks_open')
    with op.batch_alter_table('hotclicks_click', schema=None) as batch_op:
        batch_op.drop_index('ix_hotclicks_click_tracked_url_id_message_id')
        batch_op.drop_index(batch_op.f('ix_hotclicks_click_message_id'))

    op.drop_table('hotclicks_click')
    with op.batch_alter_table('hotclicks_message', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_message_recipient_id'))
        batch_op.drop_index(batch_op.f('ix_hotclicks_message_execution_id'))

    op.drop_table('hotclicks_message')
    with op.batch_alter_table('hotclicks_tracked_url', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_tracked_url_execution_id'))

    op.drop_table('hotclicks_tracked_url')
    with op.batch_alter_table('hotclicks_content_variant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_content_variant_execution_id'))

    op.drop_table('hotclicks_content_variant')
    with op.batch_alter_table('hotclicks_execution', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_execution_delivery_id'))

    op.drop_table('hotclicks_execution')
    op.drop_table('hotclicks_test_profile')
    op.drop_table('hotclicks_relay_counter')
    with op.batch_alter_table('hotclicks_recipient', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hotclicks_recipient_external_id'))

    op.drop_table('hotclicks_recipient')
    op.drop_table('hotclicks_delivery')
