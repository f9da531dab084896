//! Outgoing email for one-time codes: SMTP through lettre, a development-only
//! transport that writes codes to the log, or nothing (the email method is
//! then unavailable).

use lettre::{
    AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor, message::Mailbox,
    transport::smtp::authentication::Credentials,
};

use crate::config::{Config, ConfigError, MailTransport, SmtpTls};

/// How codes are delivered.
pub enum Mailer {
    /// No email: the email method cannot be enrolled or used.
    Disabled,
    /// Codes are written to the log. For development only: anyone who reads
    /// the log can complete a login.
    Log,
    /// A real SMTP server.
    Smtp {
        /// The connection pool.
        transport: AsyncSmtpTransport<Tokio1Executor>,
        /// The sender.
        from: Mailbox,
    },
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mailer::Disabled => "Mailer::Disabled",
            Mailer::Log => "Mailer::Log",
            Mailer::Smtp { .. } => "Mailer::Smtp",
        })
    }
}

/// Sending failed.
#[derive(Debug, thiserror::Error)]
#[error("email could not be sent: {0}")]
pub struct MailError(String);

impl Mailer {
    /// Builds the transport the configuration names, and says at start-up
    /// what that means for the email method.
    ///
    /// # Errors
    /// A bad SMTP host or sender address; the message names the setting.
    pub fn from_config(config: &Config) -> Result<Self, ConfigError> {
        match config.mail_transport {
            MailTransport::Off => {
                tracing::info!("email MFA is unavailable: no SMTP is configured (mail_transport = off)");
                Ok(Mailer::Disabled)
            }
            MailTransport::Log => {
                tracing::warn!(
                    "mail_transport = log: one-time codes are written to the log; never use this in production"
                );
                Ok(Mailer::Log)
            }
            MailTransport::Smtp => {
                let host = config.smtp_host.as_str();
                if host.is_empty() {
                    return Err(ConfigError::from_message(
                        "smtp_host: must be set when mail_transport = smtp",
                    ));
                }
                let mut builder = match config.smtp_tls {
                    SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(host),
                    SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(host),
                    SmtpTls::None => Ok(AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)),
                }
                .map_err(|e| ConfigError::from_message(format!("smtp_host: {e}")))?
                .port(config.smtp_port);
                if !config.smtp_username.is_empty() {
                    builder = builder.credentials(Credentials::new(
                        config.smtp_username.clone(),
                        config.smtp_password.clone(),
                    ));
                }
                let from = config
                    .smtp_from
                    .parse::<Mailbox>()
                    .map_err(|e| ConfigError::from_message(format!("smtp_from: {e}")))?;
                tracing::info!(host, port = config.smtp_port, "email MFA codes are sent over SMTP");
                Ok(Mailer::Smtp { transport: builder.build(), from })
            }
        }
    }

    /// Whether codes can be delivered at all.
    #[must_use]
    pub fn is_enabled(&self) -> bool {
        !matches!(self, Mailer::Disabled)
    }

    /// Sends a one-time `code` to `to`.
    ///
    /// # Errors
    /// The transport is disabled, the address is unusable, or the server
    /// refused the message.
    pub async fn send_code(&self, to: &str, code: &str, minutes: i64) -> Result<(), MailError> {
        let body = format!(
            "Your portcullis verification code is {code}\r\n\r\nIt expires in {minutes} minutes. \
             If you did not ask for it, someone may know your password: change it.\r\n"
        );
        match self {
            Mailer::Disabled => Err(MailError("no mail transport is configured".into())),
            Mailer::Log => {
                // Deliberately logs the code: the development transport.
                tracing::warn!(to, code, "mail_transport = log: one-time code (development only)");
                Ok(())
            }
            Mailer::Smtp { transport, from } => {
                let to = to.parse::<Mailbox>().map_err(|e| MailError(e.to_string()))?;
                let message = Message::builder()
                    .from(from.clone())
                    .to(to)
                    .subject("Your portcullis verification code")
                    .body(body)
                    .map_err(|e| MailError(e.to_string()))?;
                transport.send(message).await.map(|_| ()).map_err(|e| MailError(e.to_string()))
            }
        }
    }
}
