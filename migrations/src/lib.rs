//! Database migrations for portcullis, run by `portcullis migrate` and on
//! start-up of `portcullis serve`. Each migration is one file named
//! `mYYYYMMDD_HHMMSS_<verb>_<noun>.rs`; applied migrations are never edited.

pub use sea_orm_migration::prelude::*;

mod m20261124_000001_create_users;
mod m20261124_000002_create_sessions;
mod m20261124_000003_add_user_kind;
mod m20261124_000004_create_api_keys;
mod m20261124_000005_create_mfa;
mod m20261124_000006_create_audit_and_limits;
mod m20261203_000001_add_attempts_in_flight;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261124_000001_create_users::Migration),
            Box::new(m20261124_000002_create_sessions::Migration),
            Box::new(m20261124_000003_add_user_kind::Migration),
            Box::new(m20261124_000004_create_api_keys::Migration),
            Box::new(m20261124_000005_create_mfa::Migration),
            Box::new(m20261124_000006_create_audit_and_limits::Migration),
            Box::new(m20261203_000001_add_attempts_in_flight::Migration),
        ]
    }
}
