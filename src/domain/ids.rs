//! Typed ids: a [`UserId`], a [`SessionId`] and a [`KeyId`] are all `i64`s
//! in the database and on the wire, but never interchangeable in a
//! signature. The edges wrap the integers they receive (`grpc::convert`),
//! the store wraps the integers it reads; the rules only pass them on.
//!
//! An id says which table a number belongs to, not that such a row exists
//! or that the number is valid: a client can send `-3`, and the rules that
//! take ids from clients check them (`must be a positive user id`).
//!
//! Imports nothing: the store may import this module.

macro_rules! id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(i64);

        impl $name {
            /// Wraps a number read from the wire or the database.
            #[must_use]
            pub const fn new(raw: i64) -> Self {
                Self(raw)
            }

            /// The number, for the wire, the database and log fields.
            #[must_use]
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl From<$name> for i64 {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id! {
    /// A user account's id (people and service accounts alike).
    UserId
}

id! {
    /// A session's id; a pending login is a session too.
    SessionId
}

id! {
    /// An API key's id.
    KeyId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_show_and_give_back_their_number() {
        let id = UserId::new(42);
        assert_eq!(id.to_string(), "42");
        assert_eq!(i64::from(id), 42);
        assert_eq!(SessionId::new(-3).get(), -3);
        assert_eq!(format!("key:{}", KeyId::new(7)), "key:7");
    }
}
