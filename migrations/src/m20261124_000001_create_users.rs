//! Users: normalised unique email, argon2id PHC hash, role, disabled flag,
//! per-user session lifetime.

// The schema helpers are a vocabulary; listing each one adds nothing.
#[allow(clippy::wildcard_imports)]
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Users::Table)
                    .col(big_pk_auto(Users::Id))
                    .col(string_len_uniq(Users::Email, 254))
                    .col(string_null(Users::PasswordHash))
                    .col(string_len(Users::Role, 32))
                    .col(boolean(Users::Disabled).default(false))
                    .col(big_integer_null(Users::SessionLifetimeSecs))
                    .col(timestamp_with_time_zone(Users::CreatedAt))
                    .col(timestamp_with_time_zone(Users::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(Users::Table).to_owned()).await
    }
}

#[derive(DeriveIden)]
pub(crate) enum Users {
    Table,
    Id,
    Email,
    PasswordHash,
    Role,
    Disabled,
    SessionLifetimeSecs,
    CreatedAt,
    UpdatedAt,
}
