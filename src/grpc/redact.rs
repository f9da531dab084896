//! `Debug` for the generated messages that carry secrets. `build.rs` drops
//! their derived `Debug`; these print every field but the secret ones, so a
//! request logged by accident shows no password, token or key.

use std::fmt::{Debug, Formatter, Result};

use crate::proto::v1 as pb;

const REDACTED: &str = "<redacted>";

impl Debug for pb::LoginRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .field("captcha", &self.captcha.as_ref().map(|c| c.vendor))
            .field("bypass_captcha", &self.bypass_captcha)
            .field("client", &self.client)
            .field("session_lifetime", &self.session_lifetime)
            .finish()
    }
}

impl Debug for pb::IssuedSession {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("IssuedSession")
            .field("token", &REDACTED)
            .field("expire_time", &self.expire_time)
            .field("session_id", &self.session_id)
            .field("user", &self.user)
            .finish()
    }
}

impl Debug for pb::MfaChallenge {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("MfaChallenge")
            .field("mfa_token", &REDACTED)
            .field("methods", &self.methods)
            .field("expire_time", &self.expire_time)
            .finish()
    }
}

impl Debug for pb::RefreshSessionRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("RefreshSessionRequest").field("token", &REDACTED).finish()
    }
}

impl Debug for pb::LogoutRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("LogoutRequest").field("token", &REDACTED).finish()
    }
}

impl Debug for pb::ValidateTokenRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("ValidateTokenRequest")
            .field("credential", &self.credential)
            .field("required_scopes", &self.required_scopes)
            .finish()
    }
}

impl Debug for pb::validate_token_request::Credential {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        match self {
            Self::Token(_) => f.write_str("Token(<redacted>)"),
            Self::Http(http) => f.debug_tuple("Http").field(http).finish(),
        }
    }
}

impl Debug for pb::HttpCredential {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        // Header names only: values and the query may hold the credential.
        let mut names: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("HttpCredential").field("header_names", &names).field("query", &REDACTED).finish()
    }
}

impl Debug for pb::CreateUserRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("CreateUserRequest")
            .field("email", &self.email)
            .field("password", &REDACTED)
            .field("role", &self.role)
            .field("session_lifetime", &self.session_lifetime)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Debug for pb::ChangePasswordRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("ChangePasswordRequest")
            .field("current_password", &REDACTED)
            .field("new_password", &REDACTED)
            .finish()
    }
}

impl Debug for pb::SetPasswordRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("SetPasswordRequest")
            .field("user_id", &self.user_id)
            .field("new_password", &REDACTED)
            .finish()
    }
}

impl Debug for pb::CreateApiKeyResponse {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("CreateApiKeyResponse")
            .field("api_key", &self.api_key)
            .field("key", &REDACTED)
            .finish()
    }
}

impl Debug for pb::RotateApiKeyResponse {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("RotateApiKeyResponse")
            .field("api_key", &self.api_key)
            .field("key", &REDACTED)
            .field("previous", &self.previous)
            .finish()
    }
}

/// Messages whose every field but the method is secret.
macro_rules! redact_all {
    ($($message:ident),* $(,)?) => {$(
        impl Debug for pb::$message {
            fn fmt(&self, f: &mut Formatter<'_>) -> Result {
                f.write_str(concat!(stringify!($message), " { <redacted> }"))
            }
        }
    )*};
}

redact_all!(
    SendMfaCodeRequest,
    EnrollTotpResponse,
    ConfirmTotpRequest,
    ConfirmTotpResponse,
    ConfirmEmailMfaRequest,
    ConfirmEmailMfaResponse,
    RegenerateRecoveryCodesResponse,
);

impl Debug for pb::VerifyMfaRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("VerifyMfaRequest")
            .field("mfa_token", &REDACTED)
            .field("code", &REDACTED)
            .field("method", &self.method)
            .finish()
    }
}

impl Debug for pb::DisableMfaRequest {
    fn fmt(&self, f: &mut Formatter<'_>) -> Result {
        f.debug_struct("DisableMfaRequest")
            .field("password", &REDACTED)
            .field("code", &REDACTED)
            .field("method", &self.method)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let secret = "hunter2-very-secret";
        let shown = [
            format!(
                "{:?}",
                pb::LoginRequest { email: "a@b.c".into(), password: secret.into(), ..Default::default() }
            ),
            format!("{:?}", pb::IssuedSession { token: secret.into(), ..Default::default() }),
            format!("{:?}", pb::MfaChallenge { mfa_token: secret.into(), ..Default::default() }),
            format!("{:?}", pb::RefreshSessionRequest { token: secret.into() }),
            format!("{:?}", pb::LogoutRequest { token: secret.into() }),
            format!(
                "{:?}",
                pb::ValidateTokenRequest {
                    credential: Some(pb::validate_token_request::Credential::Token(secret.into())),
                    required_scopes: vec![],
                }
            ),
            format!(
                "{:?}",
                pb::HttpCredential {
                    headers: [("authorization".to_owned(), format!("Bearer {secret}"))].into(),
                    query: format!("token={secret}"),
                }
            ),
            format!("{:?}", pb::CreateUserRequest { password: secret.into(), ..Default::default() }),
            format!(
                "{:?}",
                pb::ChangePasswordRequest { current_password: secret.into(), new_password: secret.into() }
            ),
            format!("{:?}", pb::SetPasswordRequest { user_id: 1, new_password: secret.into() }),
        ];
        for line in shown {
            assert!(!line.contains(secret), "secret in {line}");
            assert!(line.contains(REDACTED), "nothing redacted in {line}");
        }
    }
}
