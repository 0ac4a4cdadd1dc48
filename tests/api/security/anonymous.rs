//! Serving without tokens: a non-loopback listen address is refused unless
//! anonymous access is allowed explicitly, and the compose stack, which
//! runs without tokens, publishes crablet on loopback only.

use std::path::Path;

use crablet::app::{AppError, Application};
use crablet::auth::Scope;

use super::{token, READER};
use crate::helpers::{fresh_database, settings_for};

#[actix_rt::test]
async fn a_non_loopback_listen_without_tokens_is_refused_unless_anonymous_is_allowed() {
    let database = fresh_database().await;
    let mut settings = settings_for(&database);
    settings.listen = "0.0.0.0:0".into();
    let refused = Application::build(settings.clone()).await;
    match refused {
        Err(e @ AppError::Anonymous { .. }) => {
            assert!(e.to_string().contains("auth.allow_anonymous"), "{e}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("served 0.0.0.0 without tokens"),
    }

    let mut anonymous = settings.clone();
    anonymous.auth.allow_anonymous = true;
    let app = Application::build(anonymous)
        .await
        .expect("allowed explicitly");
    stop(app).await;

    let mut with_tokens = settings.clone();
    with_tokens.auth.tokens = vec![token("ci", READER, &[Scope::Read], None)];
    let app = Application::build(with_tokens)
        .await
        .expect("tokens make it safe");
    stop(app).await;

    // Loopback without tokens stays as it always was.
    let app = Application::build(settings_for(&database))
        .await
        .expect("loopback");
    stop(app).await;
}

/// Runs `app` and stops it at once.
async fn stop(app: Application) {
    let handle = app.handle();
    let running = actix_rt::spawn(app.run_until_stopped());
    handle.stop(false).await;
    let _ = running.await;
}

#[test]
fn the_compose_stack_publishes_crablet_on_loopback_only_and_says_it_runs_without_tokens() {
    let compose =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docker-compose.yml"))
            .expect("compose");
    assert!(compose.contains("CRABLET_AUTH__ALLOW_ANONYMOUS: \"true\""));
    assert!(compose.contains("- \"127.0.0.1:8080:8080\""));
    assert!(!compose.contains("- \"8080:8080\""));
}
