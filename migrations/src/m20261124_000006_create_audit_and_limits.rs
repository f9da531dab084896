//! Abuse protection and audit: the append-only audit log, shared rate-limit
//! counters, and per-account lockout state.

// The schema helpers are a vocabulary; listing each one adds nothing.
#[allow(clippy::wildcard_imports)]
use sea_orm_migration::{prelude::*, schema::*};

use crate::m20261124_000001_create_users::Users;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            timestamp_with_time_zone_null(Names::LockedUntil),
            integer(Names::Lockouts).default(0).to_owned(),
        ] {
            manager.alter_table(Table::alter().table(Users::Table).add_column(column).to_owned()).await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(Names::RateLimits)
                    .col(string_len(Names::Key, 320).primary_key())
                    .col(big_integer(Names::WindowStart))
                    .col(integer(Names::Hits))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Names::AuditEvents)
                    .col(big_pk_auto(Names::Id))
                    .col(timestamp_with_time_zone(Names::At))
                    .col(string_len(Names::Action, 48))
                    .col(string_len(Names::Outcome, 16))
                    .col(string_len(Names::Actor, 64))
                    .col(string_len(Names::Subject, 320))
                    .col(string_len(Names::ClientIp, 64))
                    .col(string_len(Names::UserAgent, 512))
                    .col(string_len(Names::RequestId, 128))
                    .col(string_len(Names::Detail, 512))
                    .col(big_integer(Names::Count).default(1))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("ix_audit_at", Names::At),
            ("ix_audit_subject", Names::Subject),
            ("ix_audit_actor", Names::Actor),
            ("ix_audit_request", Names::RequestId),
        ] {
            manager
                .create_index(Index::create().name(name).table(Names::AuditEvents).col(column).to_owned())
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [Names::AuditEvents, Names::RateLimits] {
            manager.drop_table(Table::drop().table(table).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Names {
    LockedUntil,
    Lockouts,
    RateLimits,
    Key,
    WindowStart,
    Hits,
    AuditEvents,
    Id,
    At,
    Action,
    Outcome,
    Actor,
    Subject,
    ClientIp,
    UserAgent,
    RequestId,
    Detail,
    Count,
}
