//! A small SMTP server on loopback that accepts every message and keeps it,
//! so tests read emailed codes from a real SMTP conversation.

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::TcpListener,
    sync::{Mutex, Notify},
};

/// One delivered message.
#[derive(Clone, Debug)]
pub struct Mail {
    pub to: Vec<String>,
    pub data: String,
}

/// The listener and what it received.
pub struct SmtpSink {
    pub port: u16,
    mails: Arc<Mutex<Vec<Mail>>>,
    arrived: Arc<Notify>,
}

impl SmtpSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mails = Arc::new(Mutex::new(Vec::new()));
        let arrived = Arc::new(Notify::new());
        let (store, notify) = (Arc::clone(&mails), Arc::clone(&arrived));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (store, notify) = (Arc::clone(&store), Arc::clone(&notify));
                tokio::spawn(async move {
                    let _ = converse(stream, store, notify).await;
                });
            }
        });
        Self { port, mails, arrived }
    }

    /// Waits (at most 10 s) for a message to `to` and returns the first run
    /// of eight digits in it; removes the message.
    pub async fn code_for(&self, to: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let notified = self.arrived.notified();
            {
                let mut mails = self.mails.lock().await;
                if let Some(i) = mails.iter().position(|m| m.to.iter().any(|t| t.contains(to))) {
                    let mail = mails.remove(i);
                    return eight_digits(&mail.data).unwrap_or_else(|| panic!("no code in {}", mail.data));
                }
            }
            assert!(tokio::time::timeout_at(deadline, notified).await.is_ok(), "no email to {to} arrived");
        }
    }

    /// How many messages arrived and were not taken yet.
    pub async fn waiting(&self) -> usize {
        self.mails.lock().await.len()
    }
}

fn eight_digits(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    (0..bytes.len().saturating_sub(7)).find_map(|i| {
        let window = &bytes[i..i + 8];
        let bounded = (i == 0 || !bytes[i - 1].is_ascii_digit())
            && bytes.get(i + 8).is_none_or(|b| !b.is_ascii_digit());
        (bounded && window.iter().all(u8::is_ascii_digit))
            .then(|| String::from_utf8_lossy(window).into_owned())
    })
}

async fn converse(
    stream: tokio::net::TcpStream,
    store: Arc<Mutex<Vec<Mail>>>,
    notify: Arc<Notify>,
) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 localhost test SMTP\r\n").await?;
    let mut to = Vec::new();
    while let Some(line) = lines.next_line().await? {
        let verb = line.split_whitespace().next().unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => write.write_all(b"250-localhost\r\n250 8BITMIME\r\n").await?,
            "MAIL" | "NOOP" => write.write_all(b"250 OK\r\n").await?,
            "RSET" => {
                to.clear();
                write.write_all(b"250 OK\r\n").await?;
            }
            "RCPT" => {
                to.push(line.clone());
                write.write_all(b"250 OK\r\n").await?;
            }
            "DATA" => {
                write.write_all(b"354 go ahead\r\n").await?;
                let mut data = String::new();
                while let Some(line) = lines.next_line().await? {
                    if line == "." {
                        break;
                    }
                    data.push_str(&line);
                    data.push('\n');
                }
                store.lock().await.push(Mail { to: std::mem::take(&mut to), data });
                notify.notify_waiters();
                write.write_all(b"250 queued\r\n").await?;
            }
            "QUIT" => {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            }
            _ => write.write_all(b"502 not implemented\r\n").await?,
        }
    }
    Ok(())
}
