//! A small SMTP server for tests: plain SMTP on 127.0.0.1 (no TLS), speaking enough of the
//! protocol for a real client (EHLO/HELO, AUTH PLAIN and LOGIN, MAIL FROM, RCPT TO, DATA, RSET,
//! NOOP, QUIT), recording every message it accepts. It can refuse the first transactions with a
//! temporary error, and require a user name and password.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::wait_until;

/// One message the server accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMail {
    /// The envelope sender (`MAIL FROM`).
    pub mail_from: String,
    /// The envelope recipients (`RCPT TO`).
    pub rcpt_to: Vec<String>,
    /// The user the client logged in as, if it did.
    pub user: Option<String>,
    /// The message as sent after `DATA`, dot-unstuffed, with CRLF line ends.
    pub data: String,
}

impl ReceivedMail {
    /// A top-level header's value, unfolded (`None` when absent).
    pub fn header(&self, name: &str) -> Option<String> {
        header(&split_head(&self.data).0, name)
    }

    /// The decoded body of the first MIME part whose content type starts with `content_type`
    /// (`text/plain`, `text/html`), searching nested multiparts.
    pub fn part(&self, content_type: &str) -> Option<String> {
        find_part(&self.data, content_type)
    }
}

/// What the server does.
#[derive(Default)]
struct Script {
    /// Transactions (MAIL FROM) refused with `451` before one is accepted.
    refuse_first: usize,
    /// The user name and password a client must log in with (AUTH is then offered and
    /// required).
    login: Option<(String, String)>,
}

struct Shared {
    script: Script,
    transactions: AtomicUsize,
    received: Mutex<Vec<ReceivedMail>>,
    refused: AtomicUsize,
}

/// An SMTP server on a free local port, running until dropped.
pub struct SmtpServer {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl SmtpServer {
    /// A server that accepts every message.
    pub async fn start() -> Self {
        Self::start_scripted(Script::default()).await
    }

    /// A server that answers the first `count` transactions `451` (try again later).
    pub async fn refusing_first(count: usize) -> Self {
        Self::start_scripted(Script {
            refuse_first: count,
            ..Script::default()
        })
        .await
    }

    /// A server that requires logging in with `user` and `password`, and answers the first
    /// `refuse_first` transactions `451`.
    pub async fn with_login(user: &str, password: &str, refuse_first: usize) -> Self {
        Self::start_scripted(Script {
            refuse_first,
            login: Some((user.to_owned(), password.to_owned())),
        })
        .await
    }

    async fn start_scripted(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("the SMTP server binds a local port");
        let port = listener.local_addr().expect("a local address").port();
        let shared = Arc::new(Shared {
            script,
            transactions: AtomicUsize::new(0),
            received: Mutex::new(Vec::new()),
            refused: AtomicUsize::new(0),
        });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let _ = session(stream, &shared).await;
                });
            }
        });
        Self { port, shared, task }
    }

    /// The port it listens on (host 127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every message accepted so far.
    pub fn received(&self) -> Vec<ReceivedMail> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// How many transactions were refused with `451`.
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Waits until at least `count` messages were accepted, and returns them all.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<ReceivedMail> {
        wait_until(&format!("{count} e-mail(s)"), timeout, || async {
            let received = self.received();
            (received.len() >= count).then_some(received)
        })
        .await
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    write
        .write_all(b"220 localhost test SMTP ready\r\n")
        .await?;
    let mut user: Option<String> = None;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to = Vec::new();
    loop {
        let mut line = String::new();
        if lines.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let verb = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" => {
                let auth = if shared.script.login.is_some() {
                    "250-AUTH PLAIN LOGIN\r\n"
                } else {
                    ""
                };
                format!("250-localhost\r\n{auth}250-8BITMIME\r\n250 SMTPUTF8\r\n")
            }
            "HELO" => "250 localhost\r\n".to_owned(),
            "AUTH" => {
                let mut words = line.split_whitespace().skip(1);
                let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                let (name, password) = match mechanism.as_str() {
                    "PLAIN" => {
                        let initial = match words.next() {
                            Some(initial) => initial.to_owned(),
                            None => {
                                write.write_all(b"334 \r\n").await?;
                                read_line(&mut lines).await?
                            }
                        };
                        let decoded = decode(&initial);
                        let mut fields = decoded.split('\0').skip(1);
                        (
                            fields.next().unwrap_or_default().to_owned(),
                            fields.next().unwrap_or_default().to_owned(),
                        )
                    }
                    "LOGIN" => {
                        let name = match words.next() {
                            Some(initial) => decode(initial),
                            None => {
                                write.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                                decode(&read_line(&mut lines).await?)
                            }
                        };
                        write.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                        (name, decode(&read_line(&mut lines).await?))
                    }
                    _ => (String::new(), String::new()),
                };
                if shared.script.login.as_ref() == Some(&(name.clone(), password)) {
                    user = Some(name);
                    "235 2.7.0 authenticated\r\n".to_owned()
                } else {
                    "535 5.7.8 authentication failed\r\n".to_owned()
                }
            }
            "MAIL" => {
                let number = shared.transactions.fetch_add(1, Ordering::SeqCst);
                if shared.script.login.is_some() && user.is_none() {
                    "530 5.7.0 authentication required\r\n".to_owned()
                } else if number < shared.script.refuse_first {
                    shared.refused.fetch_add(1, Ordering::SeqCst);
                    "451 4.3.0 try again later\r\n".to_owned()
                } else {
                    mail_from = Some(address(line));
                    rcpt_to.clear();
                    "250 2.1.0 ok\r\n".to_owned()
                }
            }
            "RCPT" if mail_from.is_some() => {
                rcpt_to.push(address(line));
                "250 2.1.5 ok\r\n".to_owned()
            }
            "DATA" if mail_from.is_some() && !rcpt_to.is_empty() => {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    let mut line = String::new();
                    if lines.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    let line = line.strip_prefix('.').unwrap_or(&line);
                    data.push_str(line);
                }
                shared
                    .received
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(ReceivedMail {
                        mail_from: mail_from.take().unwrap_or_default(),
                        rcpt_to: std::mem::take(&mut rcpt_to),
                        user: user.clone(),
                        data,
                    });
                "250 2.0.0 queued\r\n".to_owned()
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                "250 2.0.0 ok\r\n".to_owned()
            }
            "NOOP" => "250 2.0.0 ok\r\n".to_owned(),
            "QUIT" => {
                write.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            "RCPT" | "DATA" => "503 5.5.1 bad sequence of commands\r\n".to_owned(),
            _ => "502 5.5.2 command not implemented\r\n".to_owned(),
        };
        write.write_all(reply.as_bytes()).await?;
    }
}

async fn read_line(
    lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<String> {
    let mut line = String::new();
    lines.read_line(&mut line).await?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

fn decode(text: &str) -> String {
    STANDARD
        .decode(text.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .unwrap_or_default()
}

/// The address between `<` and `>` in `MAIL FROM:<a@b>` or `RCPT TO:<a@b>`.
fn address(line: &str) -> String {
    line.split_once('<')
        .and_then(|(_, rest)| rest.split_once('>'))
        .map(|(address, _)| address.to_owned())
        .unwrap_or_default()
}

/// The header block and the body of a message or part.
fn split_head(text: &str) -> (String, String) {
    let text = text.replace("\r\n", "\n");
    match text.split_once("\n\n") {
        Some((head, body)) => (head.to_owned(), body.to_owned()),
        None => (text, String::new()),
    }
}

/// A header's unfolded value from a header block.
fn header(head: &str, name: &str) -> Option<String> {
    let mut unfolded: Vec<String> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = unfolded.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            unfolded.push(line.to_owned());
        }
    }
    unfolded.into_iter().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

fn find_part(text: &str, content_type: &str) -> Option<String> {
    let (head, body) = split_head(text);
    let kind = header(&head, "content-type").unwrap_or_else(|| "text/plain".to_owned());
    if kind.to_ascii_lowercase().starts_with("multipart/") {
        let boundary = kind
            .split(';')
            .find_map(|p| p.trim().strip_prefix("boundary="))?
            .trim_matches('"')
            .to_owned();
        let delimiter = format!("--{boundary}");
        return body
            .split(&delimiter)
            .skip(1)
            .take_while(|part| !part.starts_with("--"))
            .find_map(|part| find_part(part.trim_start_matches('\n'), content_type));
    }
    if !kind.to_ascii_lowercase().starts_with(content_type) {
        return None;
    }
    let encoding = header(&head, "content-transfer-encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let body = body.trim_end_matches('\n');
    Some(match encoding.as_str() {
        "base64" => {
            let joined: String = body.split_whitespace().collect();
            String::from_utf8_lossy(&STANDARD.decode(joined).unwrap_or_default()).into_owned()
        }
        "quoted-printable" => quoted_printable(body),
        _ => body.to_owned(),
    })
}

fn quoted_printable(text: &str) -> String {
    let joined = text.replace("=\n", "");
    let bytes = joined.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'='
            && i + 2 < bytes.len()
            && let Ok(byte) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
