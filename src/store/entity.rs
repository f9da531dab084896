//! sea-orm entities, one module per table. The schema itself is defined by
//! the migrations in `migrations/`.

pub mod users {
    //! The `users` table.
    use sea_orm::entity::prelude::*;

    /// A row of `users`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "users")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        #[sea_orm(unique)]
        pub email: String,
        pub password_hash: Option<String>,
        pub role: String,
        pub disabled: bool,
        pub session_lifetime_secs: Option<i64>,
        pub created_at: DateTimeUtc,
        pub updated_at: DateTimeUtc,
        pub kind: String,
        pub mfa_totp: bool,
        pub mfa_email: bool,
        pub failed_attempts: i32,
        pub locked_until: Option<DateTimeUtc>,
        pub lockouts: i32,
        pub attempts_in_flight: i32,
        pub attempts_reserved_at: Option<DateTimeUtc>,
    }

    /// Relations of `users`.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        /// A user's sessions.
        #[sea_orm(has_many = "super::sessions::Entity")]
        Sessions,
    }

    impl Related<super::sessions::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Sessions.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod sessions {
    //! The `sessions` table.
    use sea_orm::entity::prelude::*;

    /// A row of `sessions`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "sessions")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub user_id: i64,
        #[sea_orm(unique)]
        pub token_hash: Vec<u8>,
        pub previous_token_hash: Option<Vec<u8>>,
        pub previous_valid_until: Option<DateTimeUtc>,
        pub state: String,
        pub lifetime_secs: i64,
        pub created_at: DateTimeUtc,
        pub last_seen_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub absolute_expires_at: DateTimeUtc,
        pub ip: String,
        pub user_agent: String,
        pub device_label: String,
        pub auth_methods: String,
        pub revoked_at: Option<DateTimeUtc>,
        pub revoke_reason: Option<String>,
        pub mfa_attempts: i32,
    }

    /// Relations of `sessions`.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        /// The session's user.
        #[sea_orm(
            belongs_to = "super::users::Entity",
            from = "Column::UserId",
            to = "super::users::Column::Id",
            on_delete = "Cascade"
        )]
        User,
    }

    impl Related<super::users::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::User.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod api_keys {
    //! The `api_keys` table.
    use sea_orm::entity::prelude::*;

    /// A row of `api_keys`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "api_keys")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub owner_id: i64,
        pub name: String,
        #[sea_orm(unique)]
        pub key_hash: Vec<u8>,
        pub display_prefix: String,
        pub environment: String,
        /// Space-separated (scopes contain no spaces).
        #[sea_orm(column_type = "Text")]
        pub scopes: String,
        pub created_at: DateTimeUtc,
        pub expires_at: Option<DateTimeUtc>,
        pub last_used_at: Option<DateTimeUtc>,
        pub revoked_at: Option<DateTimeUtc>,
        pub rotated_from_id: Option<i64>,
    }

    /// Relations of `api_keys`.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {
        /// The key's owner.
        #[sea_orm(
            belongs_to = "super::users::Entity",
            from = "Column::OwnerId",
            to = "super::users::Column::Id",
            on_delete = "Cascade"
        )]
        Owner,
    }

    impl Related<super::users::Entity> for Entity {
        fn to() -> RelationDef {
            Relation::Owner.def()
        }
    }

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod totp_secrets {
    //! The `totp_secrets` table: one TOTP secret per user, sealed.
    use sea_orm::entity::prelude::*;

    /// A row of `totp_secrets`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "totp_secrets")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub user_id: i64,
        pub secret_sealed: Vec<u8>,
        pub confirmed: bool,
        pub last_step: Option<i64>,
        pub created_at: DateTimeUtc,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod mfa_codes {
    //! The `mfa_codes` table: emailed one-time codes, hashed.
    use sea_orm::entity::prelude::*;

    /// A row of `mfa_codes`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "mfa_codes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub user_id: i64,
        pub session_id: Option<i64>,
        pub purpose: String,
        pub code_hash: Vec<u8>,
        pub attempts: i32,
        pub created_at: DateTimeUtc,
        pub expires_at: DateTimeUtc,
        pub used_at: Option<DateTimeUtc>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod recovery_codes {
    //! The `recovery_codes` table: single-use codes, hashed.
    use sea_orm::entity::prelude::*;

    /// A row of `recovery_codes`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "recovery_codes")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub user_id: i64,
        pub code_hash: Vec<u8>,
        pub used_at: Option<DateTimeUtc>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod audit_events {
    //! The `audit_events` table: append-only.
    use sea_orm::entity::prelude::*;

    /// A row of `audit_events`.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "audit_events")]
    pub struct Model {
        #[sea_orm(primary_key)]
        pub id: i64,
        pub at: DateTimeUtc,
        pub action: String,
        pub outcome: String,
        pub actor: String,
        pub subject: String,
        pub client_ip: String,
        pub user_agent: String,
        pub request_id: String,
        pub detail: String,
        pub count: i64,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
