//! Users get a kind: `human` (logs in with a password) or `service` (a
//! program's identity that owns API keys and has no password).

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
            .alter_table(
                Table::alter()
                    .table(Users::Table)
                    .add_column(string_len(UserKind::Kind, 16).default("human"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.alter_table(Table::alter().table(Users::Table).drop_column(UserKind::Kind).to_owned()).await
    }
}

#[derive(DeriveIden)]
enum UserKind {
    Kind,
}
