//! Lockout counts failures, not attempts in flight: each account gets a
//! count of attempts reserved and not yet decided (`attempts_in_flight`)
//! and when the last was reserved (`attempts_reserved_at`), so a correct
//! password can release its reservation while parallel guesses stay
//! bounded. `failed_attempts` from now on counts decided failures only.

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
            integer(Attempts::AttemptsInFlight).default(0).to_owned(),
            timestamp_with_time_zone_null(Attempts::AttemptsReservedAt),
        ] {
            manager.alter_table(Table::alter().table(Users::Table).add_column(column).to_owned()).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [Attempts::AttemptsInFlight, Attempts::AttemptsReservedAt] {
            manager.alter_table(Table::alter().table(Users::Table).drop_column(column).to_owned()).await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Attempts {
    AttemptsInFlight,
    AttemptsReservedAt,
}
