//! Sessions: one row per login, found by the SHA-256 of its current token or,
//! during the refresh grace, of its previous one.

// The schema helpers are a vocabulary; listing each one adds nothing.
#[allow(clippy::wildcard_imports)]
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261124_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Sessions::Table)
                    .col(big_pk_auto(Sessions::Id))
                    .col(big_integer(Sessions::UserId))
                    .col(binary_len_uniq(Sessions::TokenHash, 32))
                    .col(binary_len_null(Sessions::PreviousTokenHash, 32))
                    .col(timestamp_with_time_zone_null(Sessions::PreviousValidUntil))
                    .col(string_len(Sessions::State, 16))
                    .col(big_integer(Sessions::LifetimeSecs))
                    .col(timestamp_with_time_zone(Sessions::CreatedAt))
                    .col(timestamp_with_time_zone(Sessions::LastSeenAt))
                    .col(timestamp_with_time_zone(Sessions::ExpiresAt))
                    .col(timestamp_with_time_zone(Sessions::AbsoluteExpiresAt))
                    .col(string_len(Sessions::Ip, 64))
                    .col(string_len(Sessions::UserAgent, 512))
                    .col(string_len(Sessions::DeviceLabel, 128))
                    .col(string_len(Sessions::AuthMethods, 128))
                    .col(timestamp_with_time_zone_null(Sessions::RevokedAt))
                    .col(string_len_null(Sessions::RevokeReason, 32))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_sessions_user")
                            .from(Sessions::Table, Sessions::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_sessions_previous_token_hash")
                    .table(Sessions::Table)
                    .col(Sessions::PreviousTokenHash)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_sessions_user_state")
                    .table(Sessions::Table)
                    .col(Sessions::UserId)
                    .col(Sessions::State)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Sessions::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum Sessions {
    Table,
    Id,
    UserId,
    TokenHash,
    PreviousTokenHash,
    PreviousValidUntil,
    State,
    LifetimeSecs,
    CreatedAt,
    LastSeenAt,
    ExpiresAt,
    AbsoluteExpiresAt,
    Ip,
    UserAgent,
    DeviceLabel,
    AuthMethods,
    RevokedAt,
    RevokeReason,
}
