//! Second factors: TOTP secrets (encrypted at rest) with the last accepted
//! step, one-time email codes and recovery codes (hashed), per-user MFA flags
//! and failed-attempt count, and the attempt count of pending logins.

// The schema helpers are a vocabulary; listing each one adds nothing.
#[allow(clippy::wildcard_imports)]
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261124_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in [
            boolean(Names::MfaTotp).default(false),
            boolean(Names::MfaEmail).default(false),
            integer(Names::FailedAttempts).default(0),
        ] {
            manager.alter_table(Table::alter().table(Users::Table).add_column(column).to_owned()).await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Names::Sessions)
                    .add_column(integer(Names::MfaAttempts).default(0))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Names::TotpSecrets)
                    .col(big_integer(Names::UserId).primary_key())
                    .col(blob(Names::SecretSealed))
                    .col(boolean(Names::Confirmed).default(false))
                    .col(big_integer_null(Names::LastStep))
                    .col(timestamp_with_time_zone(Names::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_totp_secrets_user")
                            .from(Names::TotpSecrets, Names::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Names::MfaCodes)
                    .col(big_pk_auto(Names::Id))
                    .col(big_integer(Names::UserId))
                    .col(big_integer_null(Names::SessionId))
                    .col(string_len(Names::Purpose, 16))
                    .col(binary_len(Names::CodeHash, 32))
                    .col(integer(Names::Attempts).default(0))
                    .col(timestamp_with_time_zone(Names::CreatedAt))
                    .col(timestamp_with_time_zone(Names::ExpiresAt))
                    .col(timestamp_with_time_zone_null(Names::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_mfa_codes_user")
                            .from(Names::MfaCodes, Names::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_mfa_codes_user_purpose")
                    .table(Names::MfaCodes)
                    .col(Names::UserId)
                    .col(Names::Purpose)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Names::RecoveryCodes)
                    .col(big_pk_auto(Names::Id))
                    .col(big_integer(Names::UserId))
                    .col(binary_len(Names::CodeHash, 32))
                    .col(timestamp_with_time_zone_null(Names::UsedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_recovery_codes_user")
                            .from(Names::RecoveryCodes, Names::UserId)
                            .to(Users::Table, Users::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_recovery_codes_user_hash")
                    .table(Names::RecoveryCodes)
                    .col(Names::UserId)
                    .col(Names::CodeHash)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Names::RecoveryCodes, Names::MfaCodes, Names::TotpSecrets] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Names {
    Sessions,
    MfaAttempts,
    MfaTotp,
    MfaEmail,
    FailedAttempts,
    TotpSecrets,
    MfaCodes,
    RecoveryCodes,
    Id,
    UserId,
    SessionId,
    SecretSealed,
    Confirmed,
    LastStep,
    Purpose,
    CodeHash,
    Attempts,
    CreatedAt,
    ExpiresAt,
    UsedAt,
}
