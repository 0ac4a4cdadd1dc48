//! `crablet postgres --data-dir DIR`: the cluster in the foreground, for the
//! test harness and the load tester.

use std::fs;
use std::io::{self, Write as _};
use std::path::Path;

use super::{io_error, EmbeddedError, EmbeddedPostgres, DATABASE};

/// Foreground mode for `crablet postgres --data-dir DIR`: start, print two lines
/// to stdout (flushed), `DATABASE_URL=<connection_string("crablet")>` first and
/// `ADMIN_DATABASE_URL=<admin_connection_string("postgres")>` second, then block
/// until stdin reaches EOF or SIGINT/SIGTERM arrives, then stop (as a holder: the
/// server stops if no other crablet uses it). With `remove_data_dir`, the data
/// directory is deleted after a stop that stopped the server.
///
/// Used by the test harness and the load tester, which keep the pipe to its stdin
/// open and so the cluster dies with them. Call it outside any async runtime: it
/// builds its own small one to wait for signals.
pub fn run_foreground(data_dir: &Path, remove_data_dir: bool) -> Result<(), EmbeddedError> {
    let mut pg = EmbeddedPostgres::start(data_dir)?;
    let mut stdout = io::stdout().lock();
    writeln!(stdout, "DATABASE_URL={}", pg.connection_string(DATABASE))
        .and_then(|()| {
            writeln!(
                stdout,
                "ADMIN_DATABASE_URL={}",
                pg.admin_connection_string("postgres")
            )
        })
        .and_then(|()| stdout.flush())
        .map_err(|e| io_error(e, "writing DATABASE_URL to stdout".to_owned()))?;
    drop(stdout);
    let reason = wait_for_shutdown()?;
    log::info!("{reason}: shutting down");
    let stopped = pg.stop()?;
    if remove_data_dir && stopped {
        let dir = pg.data_dir().to_path_buf();
        fs::remove_dir_all(&dir).map_err(|e| io_error(e, format!("removing {}", dir.display())))?;
        log::info!("removed {}", dir.display());
    }
    Ok(())
}

/// Blocks until stdin reaches EOF, SIGINT or SIGTERM, and says which.
fn wait_for_shutdown() -> Result<&'static str, EmbeddedError> {
    use tokio::signal::unix::{signal, SignalKind};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| io_error(e, "building the signal runtime".to_owned()))?;
    runtime.block_on(async {
        let listen = |kind, name: &str| {
            signal(kind).map_err(|e| io_error(e, format!("listening for {name}")))
        };
        let mut sigint = listen(SignalKind::interrupt(), "SIGINT")?;
        let mut sigterm = listen(SignalKind::terminate(), "SIGTERM")?;
        let (eof_tx, eof_rx) = tokio::sync::oneshot::channel();
        // A plain thread: tokio's stdin would keep the runtime from shutting down
        // while a read is blocked. The thread dies with the process.
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
            let _ = eof_tx.send(());
        });
        Ok(tokio::select! {
            _ = eof_rx => "stdin closed",
            _ = sigint.recv() => "SIGINT",
            _ = sigterm.recv() => "SIGTERM",
        })
    })
}
