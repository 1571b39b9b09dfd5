//! `drydock reload`: ask the running daemon to re-read its configuration and
//! wait for its verdict. The unit's `ExecReload=` runs it, so `systemctl
//! reload drydock` fails (non-zero, with the reason) when the daemon refuses
//! the new files, instead of reporting a signal as delivered.
//!
//! The daemon listens on a Unix stream socket in its run directory
//! ([`socket_path`]); the request is one line (`reload`), the answer one JSON
//! line (`{"ok": bool, "message": "..."}`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::Cli;
use crate::config::Settings;

/// The one request the socket understands.
pub(crate) const REQUEST: &str = "reload";

/// Longest wait for the daemon's answer (systemd's own ExecReload timeout
/// is 90 s by default; the daemon answers once its current step yields).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(80);

pub(crate) fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("control.sock")
}

/// The daemon's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Verdict {
    pub ok: bool,
    pub message: String,
}

/// One reload asked for on the socket; answer it with [`Request::answer`].
pub(crate) struct Request {
    reply: oneshot::Sender<Verdict>,
}

impl Request {
    pub(crate) fn answer(self, verdict: Verdict) {
        let _ = self.reply.send(verdict);
    }
}

/// Binds the control socket (replacing a stale one) and forwards each
/// well-formed request to the returned channel.
pub(crate) fn listen(run_dir: &Path) -> std::io::Result<mpsc::Receiver<Request>> {
    std::fs::create_dir_all(run_dir)?;
    let path = socket_path(run_dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(serve(conn, tx.clone()));
        }
    });
    Ok(rx)
}

async fn serve(conn: UnixStream, requests: mpsc::Sender<Request>) {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read).take(256);
    let verdict = match reader.read_line(&mut line).await {
        Ok(_) if line.trim() == REQUEST => {
            let (reply, answer) = oneshot::channel();
            if requests.send(Request { reply }).await.is_err() {
                Verdict {
                    ok: false,
                    message: "the daemon is shutting down".into(),
                }
            } else {
                answer.await.unwrap_or(Verdict {
                    ok: false,
                    message: "the daemon stopped before answering".into(),
                })
            }
        }
        Ok(_) => Verdict {
            ok: false,
            message: format!("unknown request {:?} (expected {REQUEST:?})", line.trim()),
        },
        Err(e) => Verdict {
            ok: false,
            message: format!("reading the request: {e}"),
        },
    };
    if let Ok(mut text) = serde_json::to_string(&verdict) {
        text.push('\n');
        let _ = write.write_all(text.as_bytes()).await;
    }
}

/// Sends one reload request to the daemon listening in `run_dir`.
pub(crate) async fn request(run_dir: &Path) -> anyhow::Result<Verdict> {
    let path = socket_path(run_dir);
    let mut conn = UnixStream::connect(&path).await.with_context(|| {
        format!(
            "connecting to the daemon at {} (is drydock.service running?)",
            path.display()
        )
    })?;
    conn.write_all(format!("{REQUEST}\n").as_bytes())
        .await
        .with_context(|| format!("sending the reload request to {}", path.display()))?;
    let mut answer = String::new();
    tokio::time::timeout(
        ANSWER_TIMEOUT,
        BufReader::new(conn).take(64 * 1024).read_line(&mut answer),
    )
    .await
    .with_context(|| format!("no answer from the daemon within {ANSWER_TIMEOUT:?}"))?
    .with_context(|| format!("reading the daemon's answer from {}", path.display()))?;
    serde_json::from_str(answer.trim())
        .with_context(|| format!("the daemon's answer is not understood: {:?}", answer.trim()))
}

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The daemon's run directory (default: `[node] run-dir` of the configuration).
    #[arg(long, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
}

/// `[node] run-dir` from the files as they are, even when the merged
/// configuration is invalid (a bad file is the very case to report): the
/// last `node.run-dir` string in merge order, else the default.
fn run_dir_leniently(cli: &Cli) -> PathBuf {
    if let Ok(s) = cli.load_settings() {
        return s.node.run_dir;
    }
    let (path, explicit) = cli.config_path();
    let mut run_dir = Settings::default().node.run_dir;
    for file in crate::config::config_files(&path, explicit).unwrap_or_default() {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        if let Ok(value) = text.parse::<toml::Table>()
            && let Some(dir) = value
                .get("node")
                .and_then(|n| n.get("run-dir"))
                .and_then(|d| d.as_str())
        {
            run_dir = PathBuf::from(dir);
        }
    }
    run_dir
}

pub(crate) async fn run(cli: &Cli, args: &Args) -> anyhow::Result<ExitCode> {
    let run_dir = match &args.run_dir {
        Some(dir) => dir.clone(),
        None => run_dir_leniently(cli),
    };
    let verdict = request(&run_dir).await?;
    if verdict.ok {
        println!("drydock: {}", verdict.message);
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("drydock: reload refused: {}", verdict.message);
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_daemons_verdict_reaches_the_client() {
        let dir = tempfile::tempdir().unwrap();
        let mut requests = listen(dir.path()).unwrap();
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(r) = requests.recv().await {
                n += 1;
                r.answer(Verdict {
                    ok: n == 1,
                    message: format!("answer {n}"),
                });
            }
        });
        let first = request(dir.path()).await.unwrap();
        assert_eq!(
            first,
            Verdict {
                ok: true,
                message: "answer 1".into()
            }
        );
        let second = request(dir.path()).await.unwrap();
        assert!(!second.ok);
        assert_eq!(second.message, "answer 2");
    }

    #[tokio::test]
    async fn unknown_requests_are_refused_and_a_missing_daemon_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = request(dir.path()).await.unwrap_err();
        assert!(format!("{err:#}").contains("control.sock"), "{err:#}");

        let _requests = listen(dir.path()).unwrap();
        let mut conn = UnixStream::connect(socket_path(dir.path())).await.unwrap();
        conn.write_all(b"shutdown\n").await.unwrap();
        let mut answer = String::new();
        BufReader::new(conn).read_line(&mut answer).await.unwrap();
        let v: Verdict = serde_json::from_str(answer.trim()).unwrap();
        assert!(!v.ok);
        assert!(v.message.contains("unknown request"), "{}", v.message);
    }
}
