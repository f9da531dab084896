//! Domain errors as gRPC statuses, through the one error table
//! ([`crate::errors`]): `Error` → `Problem` → `Status`.

use tonic::Status;

use crate::{domain::Error, errors::Problem};

/// Converts a domain error to the status the client sees.
#[must_use]
pub fn to_status(err: Error) -> Status {
    Status::from(Problem::from(err))
}
