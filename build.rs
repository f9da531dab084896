//! Generates the gRPC server and client code from `proto/`, and the file
//! descriptor set that server reflection serves.
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, so a machine with only
//! Rust installed builds portcullis without installing anything else.

use std::{env, path::PathBuf};

/// Messages that carry a secret (password, token, key). Their generated
/// `Debug` is dropped; `src/grpc/redact.rs` writes one that prints `<redacted>`.
const SECRET_MESSAGES: &[&str] = &[
    ".portcullis.v1.LoginRequest",
    ".portcullis.v1.AdminLoginRequest",
    ".portcullis.v1.IssuedSession",
    ".portcullis.v1.MfaChallenge",
    ".portcullis.v1.RefreshSessionRequest",
    ".portcullis.v1.LogoutRequest",
    ".portcullis.v1.ValidateTokenRequest",
    ".portcullis.v1.HttpCredential",
    ".portcullis.v1.CreateUserRequest",
    ".portcullis.v1.ChangePasswordRequest",
    ".portcullis.v1.SetPasswordRequest",
    ".portcullis.v1.CreateApiKeyResponse",
    ".portcullis.v1.RotateApiKeyResponse",
    ".portcullis.v1.VerifyMfaRequest",
    ".portcullis.v1.SendMfaCodeRequest",
    ".portcullis.v1.EnrollTotpResponse",
    ".portcullis.v1.ConfirmTotpRequest",
    ".portcullis.v1.ConfirmTotpResponse",
    ".portcullis.v1.ConfirmEmailMfaRequest",
    ".portcullis.v1.ConfirmEmailMfaResponse",
    ".portcullis.v1.DisableMfaRequest",
    ".portcullis.v1.RegenerateRecoveryCodesResponse",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        "proto/portcullis/v1/common.proto",
        "proto/portcullis/v1/auth_service.proto",
        "proto/portcullis/v1/user_service.proto",
        "proto/portcullis/v1/key_service.proto",
        "proto/portcullis/v1/audit_service.proto",
    ];

    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("portcullis_descriptor.bin"))
        .skip_debug(SECRET_MESSAGES)
        .compile_with_config(
            config,
            &protos.map(PathBuf::from),
            &[PathBuf::from("proto"), protoc_bin_vendored::include_path()?],
        )?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
